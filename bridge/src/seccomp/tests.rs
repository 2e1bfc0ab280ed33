use super::*;

#[test]
fn every_builtin_policy_parses_and_compiles() {
    for kind in Kind::ALL {
        let p = kind
            .policy()
            .unwrap_or_else(|f| panic!("{}: {}", kind.name(), f.message));
        assert_eq!(p.default, Action::KillProcess, "{}", kind.name());
        let prog = p.compile().unwrap();
        assert!(
            !prog.bytes.is_empty() && prog.bytes.len() % 8 == 0,
            "{}",
            kind.name()
        );
        assert!(!p.deny.is_empty(), "{} names what it refuses", kind.name());
    }
}

#[test]
fn compiling_is_deterministic() {
    for kind in Kind::ALL {
        let p = kind.policy().unwrap();
        assert_eq!(
            p.compile().unwrap(),
            p.compile().unwrap(),
            "{}",
            kind.name()
        );
    }
}

#[test]
fn the_launcher_allows_everything_the_worker_does() {
    let launcher = Kind::Launcher.policy().unwrap();
    let worker = Kind::Worker.policy().unwrap();
    for rule in &worker.allow {
        assert!(
            launcher
                .allow
                .iter()
                .any(|r| r.syscalls == rule.syscalls && r.why == rule.why),
            "launcher lacks the worker's rule {:?}",
            rule.syscalls
        );
    }
}

#[test]
fn the_dangerous_calls_are_refused_by_every_kind() {
    let always = [
        "execve",
        "execveat",
        "fork",
        "vfork",
        "ptrace",
        "kexec_load",
        "reboot",
        "init_module",
        "bpf",
    ];
    for kind in Kind::ALL {
        let p = kind.policy().unwrap();
        for call in always {
            assert!(
                p.deny
                    .iter()
                    .any(|d| d.args.is_empty() && d.syscalls.iter().any(|s| s == call)),
                "{} does not list {call} as refused",
                kind.name()
            );
            assert!(
                !p.allow.iter().any(|a| a.syscalls.iter().any(|s| s == call)),
                "{} allows {call}",
                kind.name()
            );
        }
    }
    // Only the launcher may make processes, and mounts are the worker's
    // setup only (the launcher's filter carries them for it).
    for call in ["clone3", "mount", "pivot_root", "umount2"] {
        let allowed = |k: Kind| {
            k.policy()
                .unwrap()
                .allow
                .iter()
                .any(|a| a.syscalls.iter().any(|s| s == call))
        };
        assert!(!allowed(Kind::Daemon), "daemon allows {call}");
        assert!(!allowed(Kind::Worker), "worker allows {call}");
    }
}

#[test]
fn clone3_answers_enosys_where_threads_must_work() {
    for kind in [Kind::Daemon, Kind::Worker] {
        let p = kind.policy().unwrap();
        let d = p
            .deny
            .iter()
            .find(|d| d.syscalls.iter().any(|s| s == "clone3"))
            .unwrap();
        assert_eq!(
            p.deny_action(d),
            Action::Errno(libc::ENOSYS),
            "{}",
            kind.name()
        );
    }
}

#[test]
fn bad_policies_are_refused_with_the_reason() {
    let cases = [
        ("about = 'x'\ndefault = 'allow'", "must refuse"),
        (
            "about = 'x'\ndefault = 'kill_process'\n[[allow]]\nsyscalls = ['read']\nwhy = ''",
            "no why",
        ),
        (
            "about = 'x'\ndefault = 'kill_process'\n[[allow]]\nsyscalls = ['no_such_call']\nwhy = 'w'",
            "unknown syscall",
        ),
        ("about = 'x'\ndefault = 'errno:EBOGUS'", "unknown errno"),
        (
            "about = 'x'\ndefault = 'kill_process'\n[[allow]]\nsyscalls = ['read']\nwhy = 'w'\n[[deny]]\nsyscalls = ['read']\nwhy = 'w'",
            "both allowed and denied",
        ),
        (
            "about = 'x'\ndefault = 'kill_process'\n[[allow]]\nsyscalls = ['socket']\nwhy = 'w'\nargs = [{ index = 0, op = 'eq', value = 'AF_BOGUS' }]",
            "unknown constant",
        ),
        (
            "about = 'x'\ndefault = 'kill_process'\n[[allow]]\nsyscalls = ['socket']\nwhy = 'w'\nargs = [{ index = 6, op = 'eq', value = '1' }]",
            "past 5",
        ),
    ];
    for (text, want) in cases {
        let f = Policy::parse(text, "test").unwrap_err();
        assert_eq!(f.code, Code::SandboxSetupFailed);
        assert!(f.message.contains(want), "{text:?}: {}", f.message);
    }
}

#[test]
fn values_name_constants_and_numbers() {
    assert_eq!(
        consts::value("CLONE_VM|CLONE_THREAD").unwrap(),
        (libc::CLONE_VM | libc::CLONE_THREAD) as u64
    );
    assert_eq!(consts::value("0x10").unwrap(), 16);
    assert_eq!(consts::value("7").unwrap(), 7);
    assert!(consts::value("CLONE_BOGUS").is_err());
}

#[test]
fn probe_args_come_from_the_deny_entry() {
    let p = Kind::Daemon.policy().unwrap();
    let raw = p
        .deny
        .iter()
        .find(|d| d.args.len() == 2 && d.syscalls == ["socket"])
        .unwrap();
    assert_eq!(
        probe_args(raw),
        [libc::AF_INET as u64, libc::SOCK_RAW as u64, 0, 0, 0, 0]
    );
}

#[test]
fn the_export_memfd_is_sealed_against_exec_where_the_kernel_knows_how() {
    let fd = scratch_memfd().expect("memfd_create");
    let seals = rustix::fs::fcntl_get_seals(&fd).expect("F_GET_SEALS");
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    // MFD_NOEXEC_SEAL (Linux 6.3) adds F_SEAL_EXEC; before it the flag is
    // refused and the memfd is made without it.
    assert_eq!(
        seals.contains(rustix::fs::SealFlags::EXEC),
        version >= (6, 3),
        "kernel {release}: seals {seals:?}"
    );
}
