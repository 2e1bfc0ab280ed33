//! Every call the seccomp policy files refuse, made under the real compiled
//! filter by `clawos-seccomp-probe`: it must die of SIGSYS or get the
//! configured errno. Allowed work still runs under each filter.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

const PROBE: &str = env!("CARGO_BIN_EXE_clawos-seccomp-probe");

fn probe(args: &[&str]) -> std::process::Output {
    Command::new(PROBE)
        .args(args)
        .output()
        .expect("run clawos-seccomp-probe")
}

#[test]
fn every_refused_call_is_killed_or_gets_its_errno() {
    let list = probe(&["--list"]);
    assert!(list.status.success());
    let lines = String::from_utf8(list.stdout).unwrap();
    let mut checked = 0;
    for line in lines.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let [kind, syscall, args, expect] = f[..] else {
            panic!("bad vector line {line:?}")
        };
        let mut argv = vec![kind, syscall];
        argv.extend(args.split(','));
        let out = probe(&argv);
        let stdout = String::from_utf8_lossy(&out.stdout);
        match expect.strip_prefix("errno:") {
            Some(errno) => {
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "{line}: {:?} {stdout}",
                    out.status
                );
                assert_eq!(stdout.trim(), format!("errno {errno}"), "{line}");
            }
            None => {
                assert_eq!(expect, "SIGSYS");
                assert_eq!(
                    out.status.signal(),
                    Some(libc::SIGSYS),
                    "{line}: not killed by SIGSYS: {:?}, stdout {stdout:?}, stderr {:?}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        checked += 1;
    }
    assert!(checked > 100, "only {checked} vectors");
    eprintln!("{checked} refused calls checked under the real filters");
}

#[test]
fn allowed_work_runs_under_every_filter() {
    for kind in ["daemon", "launcher", "worker"] {
        let out = probe(&["--allowed", kind]);
        assert!(
            out.status.success(),
            "{kind}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("allowed calls work under the"));
    }
}

#[test]
fn an_allowed_call_returns_and_a_filtered_argument_is_refused() {
    // getpid is allowed everywhere; socket(AF_UNIX) is the daemon's, but
    // socket(AF_PACKET) is not.
    let out = probe(&["daemon", "getpid"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("returned "),
        "{out:?}"
    );
    let out = probe(&["daemon", "socket", "AF_UNIX", "SOCK_STREAM", "0"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("returned "),
        "{out:?}"
    );
    let out = probe(&["daemon", "socket", "AF_PACKET", "SOCK_RAW", "0"]);
    assert_eq!(out.status.signal(), Some(libc::SIGSYS));
    // A worker gets ENOSYS for clone3 and keeps running.
    let out = probe(&["worker", "clone3"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("errno {}", libc::ENOSYS)
    );
}

#[test]
fn digests_are_stable_and_distinct() {
    let d: Vec<String> = ["daemon", "launcher", "worker"]
        .iter()
        .map(|k| String::from_utf8(probe(&["--digest", k]).stdout).unwrap())
        .collect();
    assert_eq!(
        d[0],
        String::from_utf8(probe(&["--digest", "daemon"]).stdout).unwrap()
    );
    assert!(
        d[0] != d[1] && d[1] != d[2] && d[0].trim().len() == 64,
        "{d:?}"
    );
}
