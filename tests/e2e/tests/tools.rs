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
            "echo\nexerciser\nhello\nhostio\nmemgrow\nmisbehave\nspinner\n"
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
    assert_eq!(
        g.sh("clawosctl run hello ClawOS 2>/dev/null"),
        out(0, "hello, ClawOS\n")
    );
    assert_eq!(
        g.sh("printf 'from the console' | clawosctl run echo --stdin 2>/dev/null"),
        out(0, "from the console")
    );
    // The exerciser checks that it got exactly this environment variable.
    let exerciser = g.sh(
        "clawosctl run --env GREETING=from-request exerciser >/tmp/ex 2>/dev/null; \
         echo status=$?; tail -n 1 /tmp/ex",
    );
    assert_eq!(exerciser, out(0, "status=0\nall 19 checks passed\n"));
    // The filesystem, device, network and cgroup interfaces on the real
    // kernel: ClawFS on the data partition, and the cgroup interface with
    // cgroup v2, which the development host does not have.
    // 35 checks: every function of the four interfaces, with the cgroup
    // ones really creating, limiting and deleting groups.
    let hostio = g.sh(
        "clawosctl run hostio cgroup=available >/tmp/hio 2>/tmp/hio.err; \
         echo status=$?; tail -n 1 /tmp/hio",
    );
    assert_eq!(
        hostio,
        out(0, "status=0\nall 35 checks passed\n"),
        "{}",
        g.sh("cat /tmp/hio /tmp/hio.err").text
    );
    assert_eq!(
        g.sh("ls /sys/fs/cgroup/clawos | grep -c instance-"),
        out(1, "0\n"),
        "the instance's cgroup is removed when it ends"
    );
    // P1.7 codes as clawosctl's exit status.
    assert_eq!(g.sh("clawosctl run no-such-tool 2>/dev/null").code, 202);
    assert_eq!(g.sh("clawosctl run memgrow 16 2>/dev/null").code, 101);
    assert_eq!(
        g.sh("clawosctl run memgrow 16 128 2>/dev/null"),
        out(0, "grew to 128 MiB\n")
    );
    assert_eq!(
        g.sh("clawosctl run misbehave forge-handle 2>/dev/null")
            .code,
        206
    );
    assert_eq!(
        g.sh("clawosctl run --timeout 500 spinner 2>/dev/null").code,
        6
    );
    // The daemon kept serving through all of that.
    assert_eq!(
        g.sh("clawosctl run hello 2>/dev/null"),
        out(0, "hello, world\n")
    );
    g.poweroff();
}
