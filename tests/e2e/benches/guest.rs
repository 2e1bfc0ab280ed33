//! `make bench`, its guest part: boots the appliance with
//! `clawos-guest-bench`, the wasmtime CLI (the bridge's wasmtime version,
//! `scripts/wasmtime-cli.sh`, path in `CLAWOS_WASMTIME_CLI`) and Debian's
//! crun on an extra initramfs, and prints what the benchmark measured there:
//! a sandboxed invocation (cold and warm) against `wasmtime run` of the
//! same `.cwasm` and `crun run` of `/bin/true`, in the same guest and run.

use clawos_e2e::{Disk, Guest, Overlay, release_binary};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn main() {
    let wasmtime = std::env::var_os("CLAWOS_WASMTIME_CLI")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .expect("CLAWOS_WASMTIME_CLI must name the wasmtime CLI: run `make bench`");
    let crun = Command::new("sh")
        .args(["-c", "command -v crun"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .expect("crun is missing: install crun (scripts/setup.sh does)");
    let overlay = Overlay::new(&[
        (
            release_binary("clawos-guest-bench"),
            "usr/bin/clawos-guest-bench",
        ),
        (wasmtime, "usr/bin/wasmtime"),
        (crun, "usr/bin/crun"),
    ]);
    let disk = Disk::fresh();
    let mut g = Guest::boot_with("bench", &disk, &overlay);
    let out = g.sh_within("clawos-guest-bench 2>&1", Duration::from_secs(1800));
    print!("{}", out.text);
    // Where a sandboxed run's time goes, from the daemon's own records.
    print!(
        "{}",
        g.sh("grep 'run ended' /run/clawos/daemon.log | tail -8")
            .text
    );
    if out.code != 0 {
        g.fail(&format!("clawos-guest-bench exited with {}", out.code));
    }
    g.poweroff();
}
