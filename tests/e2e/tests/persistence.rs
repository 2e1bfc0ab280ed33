//! ClawFS is a real partition: what the guest writes to it before a clean
//! reboot is there after it, and so is a change to the installed tools.

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
    g.poweroff();
}
