//! `clawos-wasm-daemon --check-confinement`: ask the kernel, not the
//! profile text. The process (confined by `clawos-wasm-daemon` because it was
//! started by its path) opens what its profile must refuse (`/etc/shadow`,
//! `/etc/passwd`, `/root`) and what it must allow (the ClawFS root), makes
//! the one socket type it may and two it may not, then rehearses a worker's
//! profile change and mounts ([`super::rehearsal`]).
//! One line per probe with what the kernel answered; the check passes only
//! if every answer is the expected one, the refusals being exactly EACCES.

use super::{DAEMON_PROFILE, Label, current_label, rehearsal};
use rustix::net::{AddressFamily, SocketType};
use std::path::Path;

/// Paths the daemon's profile must refuse although the daemon runs as root.
pub const SENSITIVE: [&str; 3] = ["/etc/shadow", "/etc/passwd", "/root"];

/// What a probe must get from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Success.
    Ok,
    /// This errno (EACCES: an AppArmor denial; EPERM: a refusal).
    Errno(rustix::io::Errno),
}

/// One probe: a line saying what the kernel answered, and whether that was
/// the expected answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `<what>: <answer>`, e.g. `/etc/shadow: EACCES (denied)`.
    pub line: String,
    /// The answer was the expected one.
    pub passed: bool,
}

impl Outcome {
    /// The outcome of a call that answered `got` where `expect` was due.
    pub fn of(what: &str, expect: Expect, got: Result<(), rustix::io::Errno>) -> Outcome {
        let line = match (expect, got) {
            (Expect::Ok, Ok(())) => format!("{what}: ok"),
            (Expect::Ok, Err(e)) => format!("{what}: {} (expected ok)", errno_name(e)),
            (Expect::Errno(want), Ok(())) => {
                format!("{what}: ok (expected {})", errno_name(want))
            }
            (Expect::Errno(want), Err(e)) if e == want => {
                let why = if e == rustix::io::Errno::ACCESS {
                    "denied"
                } else {
                    "refused"
                };
                format!("{what}: {} ({why})", errno_name(e))
            }
            (Expect::Errno(want), Err(e)) => {
                format!("{what}: {} (expected {})", errno_name(e), errno_name(want))
            }
        };
        Outcome {
            line,
            passed: match (expect, got) {
                (Expect::Ok, r) => r.is_ok(),
                (Expect::Errno(want), r) => r == Err(want),
            },
        }
    }

    /// The outcome of an I/O call, by its errno (an error without one
    /// counts as EIO).
    pub fn of_io(what: &str, expect: Expect, got: std::io::Result<()>) -> Outcome {
        Outcome::of(what, expect, got.map_err(|e| errno_of(&e)))
    }

    /// The thread's label, which must be `profile (enforce)`.
    pub fn label(what: &str, got: Result<String, String>, profile: &str) -> Outcome {
        match got {
            Ok(text) => {
                let passed = Label::parse(&text).is_some_and(|l| l.is_enforced(profile));
                let line = if passed {
                    format!("{what}: {text}")
                } else {
                    format!("{what}: {text} (expected {profile} (enforce))")
                };
                Outcome { line, passed }
            }
            Err(e) => Outcome {
                line: format!("{what}: unreadable: {e} (expected {profile} (enforce))"),
                passed: false,
            },
        }
    }
}

/// The errno of an I/O error; EIO if it has none.
pub fn errno_of(e: &std::io::Error) -> rustix::io::Errno {
    e.raw_os_error()
        .map_or(rustix::io::Errno::IO, rustix::io::Errno::from_raw_os_error)
}

/// `EACCES`, `EPERM`, ...: the symbolic name of the errnos a probe can meet.
pub fn errno_name(e: rustix::io::Errno) -> String {
    use rustix::io::Errno as E;
    let name = match e {
        E::ACCESS => "EACCES",
        E::PERM => "EPERM",
        E::NOENT => "ENOENT",
        E::NOTDIR => "ENOTDIR",
        E::ISDIR => "EISDIR",
        E::INVAL => "EINVAL",
        E::BUSY => "EBUSY",
        E::EXIST => "EEXIST",
        E::NOSYS => "ENOSYS",
        E::IO => "EIO",
        E::LOOP => "ELOOP",
        E::ROFS => "EROFS",
        E::NOTEMPTY => "ENOTEMPTY",
        E::XDEV => "EXDEV",
        _ => return format!("errno {}", e.raw_os_error()),
    };
    name.to_owned()
}

/// Every line of a check, and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// In order: the label, the daemon's probes, the worker rehearsal.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// Every probe got the expected answer.
    pub fn passed(&self) -> bool {
        !self.outcomes.is_empty() && self.outcomes.iter().all(|o| o.passed)
    }

    /// The lines to print, the last being the verdict.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.outcomes.iter().map(|o| o.line.clone()).collect();
        let failed = self.outcomes.iter().filter(|o| !o.passed).count();
        lines.push(if self.passed() {
            format!("confinement: ok ({} checks)", self.outcomes.len())
        } else {
            format!(
                "confinement: FAILED ({failed} of {} checks)",
                self.outcomes.len()
            )
        });
        lines
    }
}

/// Open `path` for reading, as a file (a directory opens too).
pub fn open_read(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path).map(drop)
}

/// List the directory `path` (open, then read every entry).
pub fn list_dir(path: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(path)? {
        entry?;
    }
    Ok(())
}

/// The sockets probed: (what, family, type, allowed). Both profiles allow
/// TCP and refuse every other inet type and every other family.
pub fn socket_probes() -> [(&'static str, AddressFamily, SocketType, Expect); 3] {
    let denied = Expect::Errno(rustix::io::Errno::ACCESS);
    [
        (
            "socket inet stream",
            AddressFamily::INET,
            SocketType::STREAM,
            Expect::Ok,
        ),
        (
            "socket inet dgram",
            AddressFamily::INET,
            SocketType::DGRAM,
            denied,
        ),
        (
            "socket netlink raw",
            AddressFamily::NETLINK,
            SocketType::RAW,
            denied,
        ),
    ]
}

/// Create (and close) a socket.
pub fn make_socket(family: AddressFamily, kind: SocketType) -> Result<(), rustix::io::Errno> {
    rustix::net::socket(family, kind, None).map(drop)
}

/// The whole check, in the calling process: its label, [`SENSITIVE`]
/// refused, `clawfs_root` listed, the sockets of [`socket_probes`], then the
/// worker rehearsal (in threads of their own; this thread keeps its label).
pub fn run(clawfs_root: &Path, devices: &[crate::config::DeviceRule]) -> Report {
    let mut outcomes = vec![Outcome::label(
        "label",
        current_label().map_err(|f| f.message),
        DAEMON_PROFILE,
    )];
    for path in SENSITIVE {
        outcomes.push(Outcome::of_io(
            path,
            Expect::Errno(rustix::io::Errno::ACCESS),
            open_read(Path::new(path)),
        ));
    }
    outcomes.push(Outcome::of_io(
        &clawfs_root.display().to_string(),
        Expect::Ok,
        list_dir(clawfs_root),
    ));
    for (what, family, kind, expect) in socket_probes() {
        outcomes.push(Outcome::of(what, expect, make_socket(family, kind)));
    }
    outcomes.extend(rehearsal::run(clawfs_root, devices));
    Report { outcomes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::io::Errno;

    #[test]
    fn refusals_must_be_the_expected_errno() {
        let denied = Expect::Errno(Errno::ACCESS);
        assert_eq!(
            Outcome::of("/etc/shadow", denied, Err(Errno::ACCESS)),
            Outcome {
                line: "/etc/shadow: EACCES (denied)".into(),
                passed: true
            }
        );
        assert_eq!(
            Outcome::of("/etc/shadow", denied, Ok(())),
            Outcome {
                line: "/etc/shadow: ok (expected EACCES)".into(),
                passed: false
            }
        );
        // A missing file proves nothing about the profile.
        assert_eq!(
            Outcome::of("/etc/shadow", denied, Err(Errno::NOENT)),
            Outcome {
                line: "/etc/shadow: ENOENT (expected EACCES)".into(),
                passed: false
            }
        );
        assert_eq!(
            Outcome::of("x", Expect::Errno(Errno::PERM), Err(Errno::PERM)),
            Outcome {
                line: "x: EPERM (refused)".into(),
                passed: true
            }
        );
    }

    #[test]
    fn allowed_probes_must_succeed() {
        assert_eq!(
            Outcome::of("/var/lib/clawos/clawfs", Expect::Ok, Ok(())),
            Outcome {
                line: "/var/lib/clawos/clawfs: ok".into(),
                passed: true
            }
        );
        assert_eq!(
            Outcome::of("/var/lib/clawos/clawfs", Expect::Ok, Err(Errno::ACCESS)),
            Outcome {
                line: "/var/lib/clawos/clawfs: EACCES (expected ok)".into(),
                passed: false
            }
        );
        let io = std::io::Error::other("no errno");
        assert_eq!(
            Outcome::of_io("p", Expect::Ok, Err(io)).line,
            "p: EIO (expected ok)"
        );
        assert_eq!(errno_name(Errno::from_raw_os_error(200)), "errno 200");
    }

    #[test]
    fn labels_must_be_the_profile_in_enforce_mode() {
        let ok = Outcome::label(
            "label",
            Ok("clawos-wasm-daemon (enforce)".into()),
            DAEMON_PROFILE,
        );
        assert_eq!(ok.line, "label: clawos-wasm-daemon (enforce)");
        assert!(ok.passed);
        let other = Outcome::label("label", Ok("unconfined".into()), DAEMON_PROFILE);
        assert_eq!(
            other.line,
            "label: unconfined (expected clawos-wasm-daemon (enforce))"
        );
        assert!(!other.passed);
        let err = Outcome::label("label", Err("apparmor: no".into()), DAEMON_PROFILE);
        assert_eq!(
            err.line,
            "label: unreadable: apparmor: no (expected clawos-wasm-daemon (enforce))"
        );
        assert!(!err.passed);
    }

    #[test]
    fn the_verdict_counts_failures_and_needs_probes() {
        let pass = |line: &str| Outcome {
            line: line.into(),
            passed: true,
        };
        let fail = |line: &str| Outcome {
            line: line.into(),
            passed: false,
        };
        let r = Report {
            outcomes: vec![pass("a: ok"), pass("b: EACCES (denied)")],
        };
        assert!(r.passed());
        assert_eq!(
            r.lines(),
            ["a: ok", "b: EACCES (denied)", "confinement: ok (2 checks)"]
        );
        let r = Report {
            outcomes: vec![pass("a: ok"), fail("b: ok (expected EACCES)")],
        };
        assert!(!r.passed());
        assert_eq!(
            r.lines().last().unwrap(),
            "confinement: FAILED (1 of 2 checks)"
        );
        assert!(!Report { outcomes: vec![] }.passed());
    }

    #[test]
    fn probes_answer_with_the_kernels_errno() {
        let dir = tempfile::tempdir().unwrap();
        list_dir(dir.path()).unwrap();
        open_read(dir.path()).unwrap();
        let missing = dir.path().join("missing");
        assert_eq!(errno_of(&open_read(&missing).unwrap_err()), Errno::NOENT);
        std::fs::write(&missing, b"x").unwrap();
        assert_eq!(errno_of(&list_dir(&missing).unwrap_err()), Errno::NOTDIR);
    }

    #[test]
    fn an_unconfined_process_fails_the_check() {
        // Here (the development host, or any process not started as the
        // confined binary) the label is not the daemon's: never a pass.
        let dir = tempfile::tempdir().unwrap();
        let report = run(dir.path(), &crate::config::DevicePolicy::default().allow);
        if current_label().is_ok_and(|l| l.starts_with(DAEMON_PROFILE)) {
            return;
        }
        assert!(!report.passed());
        assert!(report.outcomes[0].line.starts_with("label: "));
        assert!(!report.outcomes[0].passed);
        assert_eq!(
            report
                .lines()
                .last()
                .unwrap()
                .split(' ')
                .take(2)
                .collect::<Vec<_>>(),
            ["confinement:", "FAILED"]
        );
    }
}
