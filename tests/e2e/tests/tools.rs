//! The daemon in the appliance: up at boot with the sample tools installed
//! and precompiled on the data partition, and `clawosctl` in the guest gets
//! exact outputs and exit codes (P1.7 codes for failed runs).

use clawos_e2e::{Boot, Disk, Guest, Output};
use serial_test::serial;
use std::time::{Duration, Instant};

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
        out(0, "8 8 clawos-launcher//&clawos-worker (enforce)\n"),
        "the instance's cgroup is removed when it ends"
    );
    cgroup_processes_move_between_the_instance_s_groups(&mut g);
    // P1.7 codes as clawosctl's exit status.
    assert_eq!(g.sh("clawosctl run no-such-tool 2>/dev/null").code, 202);
    // The daemon kept serving through all of that.
    assert_eq!(
        g.sh("clawosctl run hello 2>/dev/null"),
        out(0, "hello, world\n")
    );
    g.poweroff();
}

/// `cgroup.add-process` and `remove-process` on the instance's own process:
/// the probe moves itself into a group it made and back, and at each step
/// the kernel's cgroup.procs files say where the worker is.
fn cgroup_processes_move_between_the_instance_s_groups(g: &mut Guest) {
    const ROOT: &str = "/var/lib/clawos/clawfs/probe";
    let wait = |g: &mut Guest, file: &str| {
        let deadline = Instant::now() + Duration::from_secs(90);
        while g.sh(&format!("test -e {ROOT}/{file}")).code != 0 {
            if Instant::now() > deadline {
                let why = g.sh("cat /tmp/dance; tail -5 /run/clawos/daemon.log").text;
                g.fail(&format!("the probe never wrote {file}: {why}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let procs = |g: &mut Guest, path: &str| -> Vec<String> {
        g.sh_ok(&format!("cat /sys/fs/cgroup/clawos/{path}/cgroup.procs"))
            .lines()
            .map(str::to_owned)
            .collect()
    };
    g.sh_ok(&format!(
        "rm -f {ROOT}/moved {ROOT}/back {ROOT}/go-back {ROOT}/done; \
         (clawosctl run probe cgroup-dance moved >/tmp/dance 2>&1; echo status=$? >>/tmp/dance) & true"
    ));
    wait(g, "moved");
    // In the group: its cgroup file names it, and the instance's own leaf
    // no longer lists it.
    let pid = g.sh_ok("cat /sys/fs/cgroup/clawos/instance-*/moved/cgroup.procs");
    let pid = pid.trim().to_owned();
    assert!(
        !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()),
        "one process in the group: {pid:?}"
    );
    let cgroup = g.sh_ok(&format!("cat /proc/{pid}/cgroup"));
    let instance = cgroup
        .trim()
        .strip_prefix("0::/clawos/")
        .and_then(|p| p.strip_suffix("/moved"))
        .unwrap_or_else(|| panic!("worker {pid} is in {cgroup:?}"))
        .to_owned();
    assert!(instance.starts_with("instance-"), "{instance}");
    assert!(!procs(g, &format!("{instance}/main")).contains(&pid));
    // And back.
    g.sh_ok(&format!("touch {ROOT}/go-back"));
    wait(g, "back");
    assert!(procs(g, &format!("{instance}/moved")).is_empty());
    assert!(procs(g, &format!("{instance}/main")).contains(&pid));
    assert_eq!(
        g.sh_ok(&format!("cat /proc/{pid}/cgroup")).trim(),
        format!("0::/clawos/{instance}/main")
    );
    g.sh_ok(&format!("touch {ROOT}/done"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let dance = loop {
        let text = g.sh_ok("cat /tmp/dance");
        if text.contains("status=") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // A second remove is refused: the process is not in the group (208).
    let want = "again=Some(208)\nstatus=0\n";
    assert!(
        dance.starts_with("ok pid=") && dance.ends_with(want),
        "{dance:?}"
    );
    g.sh_ok(&format!(
        "rm -f {ROOT}/moved {ROOT}/back {ROOT}/go-back {ROOT}/done"
    ));
}
