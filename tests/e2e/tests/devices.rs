//! Allow-listed devices reach the workers of tools, proven on a real virtio
//! block device (a second QEMU disk): a name not on the list is EPERM; a
//! listed one is bound into the worker's tree and opens read-only unless
//! the list says `write = true`, in the bridge and in the worker's
//! generated AppArmor rules; a tool's write on a writable grant reaches the
//! disk.

use clawos_e2e::{Disk, Guest};
use serial_test::serial;
use std::io::{Read, Seek, SeekFrom, Write};

const PATTERN: &str = "CLAWOS-DEVICE-PATTERN";

fn probe(g: &mut Guest, args: &str) -> String {
    g.sh_ok(&format!("clawosctl run probe {args} 2>/dev/null"))
}

#[test]
#[serial]
fn an_allow_listed_block_device_is_reachable_read_only_unless_writable() {
    let mut scratch = tempfile::NamedTempFile::new().unwrap();
    scratch.as_file().set_len(8 << 20).unwrap();
    scratch.write_all(PATTERN.as_bytes()).unwrap();
    scratch.flush().unwrap();
    let disk = Disk::fresh();
    let mut g = Guest::boot_with_disks("devices", &disk, &[scratch.path()]);
    let dev = g.sh_ok("cat /sys/class/block/vdb/dev");
    let dev = dev.trim();
    // Runs get 2 minutes rather than 10 s: at 5% of a TCG CPU beside
    // another guest (CI), a trivial run once spent its 10 s (102).
    g.restart_daemon_with(
        "/^\\[sandbox\\]/,/^\\[/ s/^cpu_budget_ms = [0-9]*/cpu_budget_ms = 120000/",
        "cpu_budget_ms = 120000",
        "the test gives runs 2 minutes",
    );
    // Not on the list: refused, whatever the node.
    assert_eq!(probe(&mut g, "device scratch"), "err 4\n");

    // Listed read-only.
    g.restart_daemon_with(
        r#"/^    { name = "urandom", path = "\/dev\/urandom" },$/a\    { name = "scratch", path = "/dev/vdb" },"#,
        r#"{ name = "scratch", path = "/dev/vdb" },"#,
        "the test lists the scratch disk read-only",
    );
    assert_eq!(
        g.sh_ok("grep -x '  /dev/vdb r,' /etc/apparmor.d/clawos.d/devices"),
        "  /dev/vdb r,\n"
    );
    // Listed, but not granted to the tool: refused all the same (the
    // worker's tree holds only the nodes granted to its tool).
    assert_eq!(probe(&mut g, "device scratch"), "err 4\n");
    g.sh_ok("clawosctl grant probe device=scratch >/dev/null");
    assert_eq!(
        probe(&mut g, "device scratch"),
        format!("ok DeviceKind::Block {dev}\n")
    );
    assert_eq!(
        probe(&mut g, &format!("device-read scratch {}", PATTERN.len())),
        format!("ok {PATTERN}\n")
    );
    // A write: refused for the name (EPERM, read-only by policy), and on a
    // handle opened read-only.
    assert_eq!(probe(&mut g, "device-write scratch x"), "err 4\n");
    assert_eq!(probe(&mut g, "device-write-ro scratch"), "err 4\n");

    // Listed writable under a second name.
    g.restart_daemon_with(
        r#"/^    { name = "scratch", path = "\/dev\/vdb" },$/a\    { name = "scratch-rw", path = "/dev/vdb", write = true },"#,
        r#"{ name = "scratch-rw", path = "/dev/vdb", write = true },"#,
        "the test lists the scratch disk writable",
    );
    assert_eq!(
        g.sh_ok("grep -x '  /dev/vdb rw,' /etc/apparmor.d/clawos.d/devices"),
        "  /dev/vdb rw,\n"
    );
    // The grant survived the restart; the writable name is granted now.
    g.sh_ok("clawosctl grant probe device=scratch-rw:rw >/dev/null");
    assert_eq!(
        probe(&mut g, "device-write scratch-rw WRITTEN-BY-TOOL"),
        "ok 15\n"
    );
    assert_eq!(
        probe(&mut g, "device-read scratch 15"),
        "ok WRITTEN-BY-TOOL\n"
    );
    // The read-only name stays read-only.
    assert_eq!(probe(&mut g, "device-write scratch x"), "err 4\n");
    g.poweroff();

    // The write reached the disk.
    let mut head = [0u8; 15];
    let mut f = std::fs::File::open(scratch.path()).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"WRITTEN-BY-TOOL");
}
