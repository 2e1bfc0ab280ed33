//! `clawos-seccomp-probe`: proof that the compiled filters refuse what the
//! policy files deny. It installs a kind's built-in filter, the same bytes
//! the bridge process of that kind installs (`--digest` prints their
//! sha256, which the daemon also logs), and then makes one call; the test
//! that runs it checks for SIGSYS or the configured errno.

use super::{Action, Kind, Policy, consts, probe_args, syscall_number};
use crate::error::{Code, Failure};

/// One refused call to try: the kind, the call, its arguments, and what it
/// must get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vector {
    /// The process kind whose filter is installed.
    pub kind: Kind,
    /// The syscall name.
    pub syscall: String,
    /// Its arguments.
    pub args: [u64; 6],
    /// What the filter gives it.
    pub expect: Action,
}

impl Vector {
    /// One line: `kind syscall a0,a1,...,a5 expect`.
    pub fn line(&self) -> String {
        let args: Vec<String> = self.args.iter().map(|a| format!("{a:#x}")).collect();
        let expect = match self.expect {
            Action::KillProcess => "SIGSYS".to_owned(),
            Action::Errno(e) => format!("errno:{e}"),
            Action::Allow => "allow".to_owned(),
        };
        format!(
            "{} {} {} {expect}",
            self.kind.name(),
            self.syscall,
            args.join(",")
        )
    }
}

/// Every deny entry of every kind, one vector per syscall.
pub fn vectors() -> Result<Vec<Vector>, Failure> {
    let mut out = Vec::new();
    for kind in Kind::ALL {
        let p: Policy = kind.policy()?;
        for d in &p.deny {
            for call in &d.syscalls {
                out.push(Vector {
                    kind,
                    syscall: call.clone(),
                    args: probe_args(d),
                    expect: p.deny_action(d),
                });
            }
        }
    }
    Ok(out)
}

/// The sha256 of `kind`'s compiled filter, hex.
pub fn digest(kind: Kind) -> Result<String, Failure> {
    Ok(kind.policy()?.compile()?.digest())
}

/// Install `kind`'s filter and make `syscall` with `args` (numbers or
/// constant names). Returns what the call returned; a refused call that
/// kills never returns.
pub fn call(kind: Kind, syscall: &str, args: &[String]) -> Result<String, Failure> {
    let nr = syscall_number(syscall).ok_or_else(|| {
        Failure::new(
            Code::InvalidArgument,
            format!("unknown syscall {syscall:?}"),
        )
    })?;
    let mut raw = [0u64; 6];
    for (slot, a) in raw.iter_mut().zip(args) {
        *slot = consts::value(a).map_err(|e| Failure::new(Code::InvalidArgument, e))?;
    }
    kind.policy()?.compile()?.install()?;
    Ok(match crate::sandbox::sys::raw_syscall(nr, raw) {
        Ok(v) => format!("returned {v}"),
        Err(e) => format!("errno {e}"),
    })
}

/// Install `kind`'s filter and do what every bridge process does all day:
/// allocate, write, read the clock, ask its pid.
pub fn allowed(kind: Kind) -> Result<String, Failure> {
    kind.policy()?.compile()?.install()?;
    let v: Vec<u8> = (0..1 << 20).map(|i| i as u8).collect();
    let now = std::time::Instant::now();
    let pid = std::process::id();
    Ok(format!(
        "allowed calls work under the {} filter (pid {pid}, {} bytes, {:?})",
        kind.name(),
        v.len(),
        now.elapsed() < std::time::Duration::from_secs(60)
    ))
}
