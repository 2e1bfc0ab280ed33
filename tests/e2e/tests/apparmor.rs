//! AppArmor (layer 5d) in the booted appliance: both profiles loaded in
//! enforce mode with every rule enforced by the running kernel, the daemon
//! confined by its profile, every sample tool running without a single
//! denial, the kernel refusing what the profiles refuse (as
//! `clawos-wasm-daemon --check-confinement` reports it, including the worker
//! rehearsal), and init refusing to start the daemon when its profile is not
//! in enforce mode. Profiles: `image/apparmor.d`; docs/apparmor.md.

use clawos_e2e::{Boot, Disk, Guest, Output, repo};
use regex::Regex;
use serial_test::serial;
use std::time::Instant;

const DAEMON: &str = "clawos-wasm-daemon";
const WORKER: &str = "clawos-worker";

fn out(code: i32, text: &str) -> Output {
    Output {
        code,
        text: text.to_owned(),
    }
}

fn boot(name: &str) -> (Guest, Disk) {
    let disk = Disk::fresh();
    (Guest::boot(name, Boot::Fast, &disk), disk)
}

/// The pid init started the daemon as, from its readiness marker.
fn daemon_pid(g: &Guest) -> u32 {
    let re = Regex::new(r"clawos: ready \(daemon pid (\d+),").unwrap();
    let caps = re
        .captures(g.console())
        .expect("no daemon pid in the readiness marker");
    caps[1].parse().unwrap()
}

/// Each `apparmor="DENIED"` line of `dmesg` as "profile operation object"
/// (object: the path, pids as N, or the socket's family and type).
fn denials(dmesg: &str) -> Vec<String> {
    let field = |line: &str, key: &str| {
        Regex::new(&format!(r#" {key}="([^"]*)""#))
            .unwrap()
            .captures(line)
            .map(|c| c[1].to_owned())
    };
    let pids = Regex::new(r"/[0-9]+/").unwrap();
    dmesg
        .lines()
        .filter(|l| l.contains("apparmor=\"DENIED\""))
        .map(|l| {
            let object = match field(l, "name") {
                Some(name) => pids.replace_all(&name, "/N/").into_owned(),
                None => format!(
                    "{} {}",
                    field(l, "family").unwrap_or_default(),
                    field(l, "sock_type").unwrap_or_default()
                ),
            };
            format!(
                "{} {} {object}",
                field(l, "profile").unwrap_or_default(),
                field(l, "operation").unwrap_or_default()
            )
        })
        .collect()
}

#[test]
#[serial]
fn profiles_are_loaded_in_enforce_mode_and_confine_the_daemon() {
    let (mut g, _disk) = boot("apparmor-profiles");
    assert!(
        g.console()
            .contains("clawos: apparmor: loaded 3 profile(s)"),
        "init did not report loading the three profiles"
    );
    assert_eq!(
        g.sh("sort /sys/kernel/security/apparmor/profiles"),
        out(
            0,
            "clawos-launcher (enforce)\nclawos-wasm-daemon (enforce)\nclawos-worker (enforce)\n"
        )
    );
    // The parser, against the running kernel's features: no rule of either
    // profile would go unenforced (init loads them with the same option).
    for p in [DAEMON, "clawos-launcher", WORKER] {
        assert_eq!(
            g.sh(&format!(
                "apparmor_parser --config-file=/dev/null -Q -K --Werror=rule-not-enforced /etc/apparmor.d/{p} 2>&1"
            )),
            out(0, ""),
            "{p}"
        );
    }
    // The daemon init started runs under its profile, and so does every
    // process of that name; init and the console are not confined.
    let pid = daemon_pid(&g);
    assert_eq!(
        g.sh(&format!("cat /proc/{pid}/attr/current")),
        out(0, "clawos-wasm-daemon (enforce)\n")
    );
    assert_eq!(
        g.sh("for p in $(pidof clawos-wasm-daemon); do cat /proc/$p/attr/current; done | sort -u"),
        // The daemon, its launcher (a fork, in its own profile) and the
        // spare worker (a clone of the launcher, its profile stacked).
        out(
            0,
            "clawos-launcher (enforce)\nclawos-launcher//&clawos-worker (enforce)\nclawos-wasm-daemon (enforce)\n"
        )
    );
    assert_eq!(
        g.sh("cat /proc/1/attr/current /proc/self/attr/current"),
        out(0, "unconfined\nunconfined\n")
    );
    // The worker profile can be entered (an unconfined process may change
    // to any profile) and then confines: its label reads back, /etc/shadow
    // and any exec are refused. Shell builtins only after the change.
    assert_eq!(
        g.sh(
            "sh -c 'echo -n \"changeprofile clawos-worker\" > /proc/self/attr/current; \
             read l < /proc/self/attr/current; echo \"$l\"; \
             read x < /etc/shadow; echo \"shadow $?\"; \
             /bin/true; echo \"exec $?\"' 2>&1"
        ),
        out(
            0,
            "clawos-worker (enforce)\n\
             sh: can't open /etc/shadow: Permission denied\n\
             shadow 1\n\
             sh: /bin/true: Permission denied\n\
             exec 126\n"
        )
    );
    g.poweroff();
}

#[test]
#[serial]
fn tools_run_without_denials_and_the_kernel_refuses_what_the_profiles_refuse() {
    let (mut g, _disk) = boot("apparmor-confinement");
    // Every audit line reaches dmesg (kauditd prints through
    // printk_ratelimit, 10 lines per 5 s by default, dropping the rest).
    g.sh_ok("echo 0 > /proc/sys/kernel/printk_ratelimit");
    let denied = "dmesg | grep -c 'apparmor=\"DENIED\"'";
    assert_eq!(
        g.sh(denied),
        out(1, "0\n"),
        "denials while the daemon started"
    );

    // The sample tools under the profile: the filesystem, device, network
    // (localhost refused) and cgroup interfaces, limits and failures.
    clawos_e2e::run_sample_tools(&mut g);
    // Install (precompile, stage, rename) and remove, in the guest.
    assert_eq!(
        g.sh(
            "clawosctl install hello2 /var/lib/clawos/tools/hello/component.wasm >/dev/null \
             && clawosctl run hello2 again 2>/dev/null && clawosctl remove hello2 >/dev/null; echo $?"
        ),
        out(0, "hello, again\n0\n")
    );
    assert_eq!(
        g.sh(denied),
        out(1, "0\n"),
        "{}",
        g.sh("dmesg | grep apparmor=").text
    );

    // What the kernel answers the confined binary; the tool directory the
    // rehearsal binds is the first by name that the runs above created.
    let started = Instant::now();
    let check = g.sh("clawos-wasm-daemon --check-confinement");
    eprintln!(
        "e2e: apparmor-confinement: --check-confinement took {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        check,
        out(
            0,
            "label: clawos-wasm-daemon (enforce)\n\
             /etc/shadow: EACCES (denied)\n\
             /etc/passwd: EACCES (denied)\n\
             /root: EACCES (denied)\n\
             /var/lib/clawos/clawfs: ok\n\
             socket inet stream: ok\n\
             socket inet dgram: EACCES (denied)\n\
             socket netlink raw: EACCES (denied)\n\
             worker: change_profile clawos-worker after no_new_privs: EPERM (refused)\n\
             worker: a tool directory under /var/lib/clawos/clawfs: ok\n\
             worker: change_profile clawos-worker: ok\n\
             worker: label: clawos-worker (enforce)\n\
             worker: /etc/shadow: EACCES (denied)\n\
             worker: change_profile clawos-wasm-daemon: EACCES (denied)\n\
             worker: socket inet stream: ok\n\
             worker: socket inet dgram: EACCES (denied)\n\
             worker: socket netlink raw: EACCES (denied)\n\
             worker: unshare(CLONE_NEWNS): ok\n\
             worker: mount --make-rprivate /: ok\n\
             worker: mount tmpfs on /run: EACCES (denied)\n\
             worker: mount tmpfs on /tmp: ok\n\
             worker: mkdir /tmp/clawfs: ok\n\
             worker: mkdir /tmp/dev: ok\n\
             worker: mkdir /tmp/proc: ok\n\
             worker: create /tmp/dev/null: ok\n\
             worker: create /tmp/dev/zero: ok\n\
             worker: create /tmp/dev/urandom: ok\n\
             worker: bind /var/lib/clawos/clawfs/echo on /tmp/clawfs: ok\n\
             worker: bind /dev/null on /tmp/dev/null: ok\n\
             worker: bind /dev/zero on /tmp/dev/zero: ok\n\
             worker: bind /dev/urandom on /tmp/dev/urandom: ok\n\
             worker: mount proc (subset=pid) on /tmp/proc: ok\n\
             worker: chdir /tmp: ok\n\
             worker: mount --move /tmp /: ok\n\
             worker: chroot .: ok\n\
             worker: chdir /: ok\n\
             worker: /clawfs (list): ok\n\
             worker: /dev/null (open rw): ok\n\
             worker: /dev/zero (open r): ok\n\
             worker: /dev/urandom (open r): ok\n\
             worker: /proc/self/status (read): ok\n\
             confinement: ok (41 checks)\n"
        )
    );
    // Exactly the refusals above reached the kernel log, each once (the
    // no_new_privs refusal is not an AppArmor denial and is not logged),
    // and no audit line was lost.
    let dmesg = g.sh_ok("dmesg");
    assert_eq!(
        denials(&dmesg),
        [
            "clawos-wasm-daemon open /etc/shadow",
            "clawos-wasm-daemon open /etc/passwd",
            "clawos-wasm-daemon open /root/",
            "clawos-wasm-daemon create inet dgram",
            "clawos-wasm-daemon create netlink raw",
            "clawos-worker open /etc/shadow",
            "clawos-worker open /proc/N/task/N/attr/current",
            "clawos-worker open /proc/N/task/N/attr/apparmor/current",
            "clawos-worker create inet dgram",
            "clawos-worker create netlink raw",
            "clawos-worker mount /run/",
        ]
    );
    assert!(
        !dmesg.contains("audit_lost") && !dmesg.contains("callbacks suppressed"),
        "audit lines were dropped:\n{dmesg}"
    );
    // The check left the daemon (another process) serving.
    assert_eq!(
        g.sh("clawosctl run hello 2>/dev/null"),
        out(0, "hello, world\n")
    );
    g.poweroff();
}

#[test]
#[serial]
fn init_refuses_to_start_the_daemon_unless_its_profile_is_enforced() {
    // An extra initramfs replaces the daemon's profile with the same rules
    // in complain mode (which logs but allows everything).
    let profile = std::fs::read_to_string(repo().join("image/apparmor.d").join(DAEMON)).unwrap();
    let header = "profile clawos-wasm-daemon /usr/bin/clawos-wasm-daemon {";
    assert!(profile.contains(header));
    let complain = profile.replace(
        header,
        "profile clawos-wasm-daemon /usr/bin/clawos-wasm-daemon flags=(complain) {",
    );
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc/apparmor.d")).unwrap();
    std::fs::write(tree.join("etc/apparmor.d").join(DAEMON), complain).unwrap();
    let cpio = dir.path().join("overlay.cpio");
    clawos_e2e::etc_cpio(&tree, &cpio);

    let disk = Disk::fresh();
    let mut g = Guest::boot_overlay(
        "apparmor-complain",
        &disk,
        &cpio,
        "not starting clawos-wasm-daemon",
    );
    assert!(
        g.console().contains(
            "clawos: FAILED: AppArmor profile clawos-wasm-daemon is not loaded in enforce mode"
        ),
        "no FAILED line naming the profile"
    );
    assert_eq!(
        g.sh("grep clawos-wasm-daemon /sys/kernel/security/apparmor/profiles"),
        out(0, "clawos-wasm-daemon (complain)\n")
    );
    assert_eq!(g.sh("pidof clawos-wasm-daemon"), out(1, ""));
    assert_eq!(g.sh("test -e /run/clawos/bridge.sock"), out(1, ""));
    g.poweroff();
}
