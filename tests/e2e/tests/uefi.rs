//! The disk image itself boots as deployed: OVMF (q35) finds
//! \EFI\BOOT\BOOTX64.EFI on its ESP, the EFI stub starts the kernel with
//! its built-in command line and initramfs, the network comes up by DHCP,
//! and the appliance serves its remote API. Its console offers no shell:
//! this test has none, and proves a command typed there is not run.

use clawos_e2e::{Boot, Disk, Guest, Net, clawosctl_remote, free_port};
use regex::Regex;
use serial_test::serial;
use std::time::Duration;

#[test]
#[serial]
fn uefi_disk_image_boots_to_a_ready_daemon_with_no_console_shell() {
    let disk = Disk::fresh();
    let port = free_port();
    let net = Net {
        api_port: port,
        guestfwd: Vec::new(),
    };
    let mut g = Guest::boot_net("uefi", Boot::Uefi, &disk, None, &net);
    let console = g.console().replace('\r', "");
    // Booted through UEFI: the kernel saw the EFI system table.
    assert!(console.contains("clawos: firmware: UEFI\n"), "{console}");
    // The built-in command line and nothing else: the kernel ignores what
    // a boot loader or the firmware passes (CONFIG_CMDLINE_OVERRIDE).
    let cmdline = Regex::new(r"Kernel command line: (.*)\n").unwrap();
    assert_eq!(
        &cmdline
            .captures(&console)
            .expect("the kernel's command line")[1],
        clawos_e2e::BUILT_IN_CMDLINE
    );
    assert!(
        console.contains(
            "clawos: console: no shell here; the appliance is managed over its remote API (docs/deploy.md)\n"
        ),
        "{console}"
    );
    // DHCP from QEMU's user network, before the daemon started.
    clawos_e2e::assert_qemu_dhcp(&console);
    // Whoever holds the console: what they type is echoed by the tty and
    // never run.
    g.type_line("echo $((6 * 7))-typed-on-the-console");
    let out = clawosctl_remote(port, &["run", "hello", "UEFI"]);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(0), "hello, UEFI\n"),
        "{out:?}"
    );
    g.read_for(Duration::from_secs(2));
    assert!(
        !g.console().contains("42-typed-on-the-console"),
        "the console ran a command:\n{}",
        g.console()
    );
}
