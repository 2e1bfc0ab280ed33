//! The daemon in the appliance: up at boot with the sample tools installed
//! and precompiled on the data partition, and `clawosctl` in the guest gets
//! exact outputs and exit codes (P1.7 codes for failed runs).

use clawos_e2e::{Boot, Disk, Guest, Output};
use serial_test::serial;

fn out(code: i32, text: &str) -> Output {
    Output {
        code,
        text: text.to_owned(),
    }
}

#[test]
#[serial]
fn sample_tools_run_in_the_guest_with_exact_results() {
    let disk = Disk::fresh();
    let mut g = Guest::boot("tools", Boot::Fast, &disk);
    assert_eq!(
        g.sh("ls -1 /var/lib/clawos/tools"),
        out(
            0,
            "echo\nexerciser\nhello\nhostio\nmemgrow\nmisbehave\nnoop\nprobe\nspinner\n"
        )
    );
    // Installed at build time, precompiled for the portable target: the
    // guest loads the shipped .cwasm (no recompile message in its log).
    assert_eq!(
        g.sh("ls -1 /var/lib/clawos/tools/hello"),
        out(0, "component.cwasm\ncomponent.wasm\ntool.toml\n")
    );
    assert_eq!(
        g.sh("grep -c recompil /run/clawos/daemon.log"),
        out(1, "0\n")
    );
    clawos_e2e::run_sample_tools(&mut g);
    assert_eq!(
        g.sh(clawos_e2e::INSTANCE_CGROUPS_LEFT),
        out(0, "1 clawos-launcher//&clawos-worker (enforce)\n"),
        "the instance's cgroup is removed when it ends"
    );
    // P1.7 codes as clawosctl's exit status.
    assert_eq!(g.sh("clawosctl run no-such-tool 2>/dev/null").code, 202);
    // The daemon kept serving through all of that.
    assert_eq!(
        g.sh("clawosctl run hello 2>/dev/null"),
        out(0, "hello, world\n")
    );
    g.poweroff();
}
