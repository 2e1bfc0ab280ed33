//! The disk image itself boots: OVMF (q35) finds \EFI\BOOT\BOOTX64.EFI on
//! its ESP, the EFI stub starts the kernel with its built-in command line
//! and initramfs, and the appliance comes up on its data partition.

use clawos_e2e::{Boot, Disk, Guest};
use serial_test::serial;

#[test]
#[serial]
fn uefi_disk_image_boots_to_a_ready_daemon() {
    let disk = Disk::fresh();
    let mut g = Guest::boot("uefi", Boot::Uefi, &disk);
    // Booted through UEFI: the kernel sees the EFI system table.
    assert_eq!(g.sh("test -d /sys/firmware/efi").code, 0);
    // The built-in command line, and nothing from the firmware (the space
    // is where an appended firmware command line would start).
    assert_eq!(
        g.sh_ok("cat /proc/cmdline"),
        "console=tty0 console=ttyS0,115200 panic=10 \n"
    );
    assert_eq!(
        g.sh_ok("clawosctl run hello UEFI 2>/dev/null"),
        "hello, UEFI\n"
    );
    g.poweroff();
}
