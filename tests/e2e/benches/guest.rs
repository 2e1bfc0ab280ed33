//! `make bench`, its guest part: boots the appliance with
//! `clawos-guest-bench`, the wasmtime CLI (the bridge's wasmtime version,
//! `scripts/wasmtime-cli.sh`, path in `CLAWOS_WASMTIME_CLI`) and Debian's
//! crun on an extra initramfs, and prints what the benchmark measured there:
//! a sandboxed invocation (cold and warm) against `wasmtime run` of the
//! same `.cwasm` and `crun run` of `/bin/true`, in the same guest and run;
//! then the load part, N clients at once, with a PostgreSQL server started
//! on this host's loopback and reached by the guest through QEMU's
//! `guestfwd` (user networking, `restrict=on`).
//!
//! `CLAWOS_BENCH_ARGS` adds arguments to `clawos-guest-bench` (CI's smoke
//! pass: few samples, short windows).

use clawos_e2e::{Boot, Disk, Guest, Net, Overlay, free_port, release_binary};
use clawos_tool_artifacts::postgres::Postgres;
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
    // The guest's address for the PostgreSQL server, forwarded here.
    const PG_ADDR: &str = "10.0.2.100";
    let pg = Postgres::start(free_port());
    let net = Net {
        api_port: free_port(),
        // A relay per connection: the load part's clients connect at once.
        guestfwd: vec![format!("each:{PG_ADDR}:5432={}", pg.port)],
    };
    let disk = Disk::fresh();
    let mut g = Guest::boot_net("bench", Boot::Fast, &disk, Some(&overlay), &net);
    // The sample hostio has no network grant: the bench's PostgreSQL case
    // needs this one.
    g.sh_ok(&format!(
        "clawosctl grant hostio net={PG_ADDR}:5432 >/dev/null"
    ));
    let extra = std::env::var("CLAWOS_BENCH_ARGS").unwrap_or_default();
    let out = g.sh_within(
        &format!("clawos-guest-bench --pg {PG_ADDR}:5432 {extra} 2>&1"),
        Duration::from_secs(3600),
    );
    print!("{}", out.text);
    if out.code != 0 {
        print!("{}", g.sh("tail -40 /run/clawos/daemon.log").text);
        g.fail(&format!("clawos-guest-bench exited with {}", out.code));
    }
    g.poweroff();
}
