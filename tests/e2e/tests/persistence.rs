//! ClawFS is a real partition: what the guest writes to it before a clean
//! reboot is there after it, and so are a change to the installed tools
//! and a tool's grants and secrets. On
//! a disk larger than the image it grows to fill the disk at first boot.

use clawos_e2e::{Boot, Disk, Guest};
use serial_test::serial;

#[test]
#[serial]
fn data_written_before_a_reboot_is_there_after_it() {
    let disk = Disk::fresh();
    let token = format!("e2e-{}-{}", std::process::id(), disk.image().display());
    let mut g = Guest::boot("persist-1", Boot::Fast, &disk);
    assert_eq!(
        g.sh_ok("grep ' /var/lib/clawos ' /proc/mounts | cut -d' ' -f2-3"),
        "/var/lib/clawos ext4\n"
    );
    g.sh_ok(&format!(
        "mkdir -p /var/lib/clawos/e2e && echo '{token}' > /var/lib/clawos/e2e/token"
    ));
    assert_eq!(g.sh("clawosctl remove echo >/dev/null 2>&1").code, 0);
    // So are a tool's grants and secrets.
    g.sh_ok("clawosctl grant probe device=urandom env=MODE=kept >/dev/null");
    g.sh_ok("echo 'persisted-secret' | clawosctl secret set probe PROBE_TOKEN >/dev/null");
    g.poweroff();

    let mut g = Guest::boot("persist-2", Boot::Fast, &disk);
    assert_eq!(
        g.sh_ok("cat /var/lib/clawos/e2e/token"),
        format!("{token}\n")
    );
    assert_eq!(g.sh("clawosctl run echo 2>/dev/null").code, 202);
    assert_eq!(
        g.sh_ok("clawosctl run hello again 2>/dev/null"),
        "hello, again\n"
    );
    assert_eq!(
        g.sh_ok("clawosctl show probe | grep -E '^  (granted|env|secrets):'"),
        "  granted:   device=urandom:ro env=MODE\n  env:       MODE=kept\n  secrets:   PROBE_TOKEN (values are never shown)\n"
    );
    assert_eq!(
        g.sh_ok("clawosctl run probe env PROBE_TOKEN 2>/dev/null; clawosctl run probe device urandom 2>/dev/null"),
        "ok persisted-secret\nok DeviceKind::Character 1:9\n"
    );
    g.poweroff();
}

#[test]
#[serial]
fn the_data_partition_grows_to_fill_a_larger_disk_at_first_boot() {
    const GIB: u64 = 1 << 30;
    let disk = Disk::fresh();
    disk.grow_to(2 * GIB);
    let mut g = Guest::boot("grow-1", Boot::Fast, &disk);
    // 2 GiB less the ESP (1 + 64 MiB from the start) and the backup GPT.
    let sectors = 2 * GIB / 512 - 34 - (2048 + 64 * 2048) + 1;
    assert!(
        g.console().contains(&format!(
            "clawos: data partition /dev/vda2 grown from 256 MiB to {} MiB",
            (sectors * 512) >> 20
        )),
        "{}",
        g.console()
    );
    assert_eq!(
        g.sh_ok("cat /sys/class/block/vda2/size"),
        format!("{sectors}\n")
    );
    // The mounted ext4 grew with it, online, and kept its files.
    let df = g.sh_ok("df -k /var/lib/clawos | tail -n 1");
    let total_kib: u64 = df.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(total_kib > 1900 * 1024 && total_kib <= sectors / 2, "{df}");
    assert_eq!(
        g.sh_ok("clawosctl run hello grown 2>/dev/null"),
        "hello, grown\n"
    );
    // The space is usable: 1 GiB more than the image's partition held.
    g.sh_ok("dd if=/dev/zero of=/var/lib/clawos/big bs=1M count=1024 2>/dev/null && sync && rm /var/lib/clawos/big");
    g.poweroff();
    // The host's own tools agree with the table the guest wrote.
    let verify = std::process::Command::new("sgdisk")
        .arg("-v")
        .arg(disk.image())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && text.contains("No problems found"),
        "{text}"
    );
    // Later boots find nothing to do.
    let g = Guest::boot("grow-2", Boot::Fast, &disk);
    assert!(
        g.console()
            .contains("clawos: data partition fills its disk"),
        "{}",
        g.console()
    );
    g.poweroff();
}
