//! seccomp-BPF (layer 5b): one allow-list per process kind, as data in
//! `bridge/seccomp/<kind>.toml`, compiled with libseccomp into the BPF
//! program that [`Program::install`] loads on every thread of the process
//! (`SECCOMP_FILTER_FLAG_TSYNC`). Each rule says why it is there.
//!
//! A file has a `default` action for every call it does not name, `[[allow]]`
//! rules (optionally with argument filters: all of a rule's filters must
//! hold, and any rule may match), and `[[deny]]` entries: calls refused on
//! purpose, with the action they get. The deny entries are also the test
//! vectors: the tests make each call, with the arguments the entry names,
//! under the compiled program and check that it is killed or gets the errno.

mod consts;
pub mod probe;

use crate::error::{Code, Failure};
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use serde::Deserialize;

/// Set only by the test-only `clawos-audit-daemon`: filters compiled in
/// this process (and its launcher and workers, which are its forks) log the
/// calls their lists do not name instead of killing for them.
static LOG_UNLISTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Make every filter compiled from now on log (`SECCOMP_RET_LOG`) the calls
/// its allow-list does not name instead of taking its default action, so a
/// run of the test suites shows every call the real filters would have
/// killed for, on paths where a kill would go unnoticed. Deny entries
/// with an errno keep it. For the audit build only (`make seccomp-audit`).
pub fn log_unlisted_calls() {
    LOG_UNLISTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// The kinds of bridge process, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The daemon: IPC, registry, egress proxy, broker; no process creation.
    Daemon,
    /// The launcher: clones workers and nothing else.
    Launcher,
    /// An instance worker: runs one tool.
    Worker,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Daemon, Kind::Launcher, Kind::Worker];

    /// The kind's name, as in its file name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Daemon => "daemon",
            Kind::Launcher => "launcher",
            Kind::Worker => "worker",
        }
    }

    /// The policy text built into the binary.
    pub fn text(self) -> &'static str {
        match self {
            Kind::Daemon => include_str!("../../seccomp/daemon.toml"),
            Kind::Launcher => include_str!("../../seccomp/launcher.toml"),
            Kind::Worker => include_str!("../../seccomp/worker.toml"),
        }
    }

    /// The kind by name.
    pub fn named(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The kind's built-in policy, parsed and checked, with the allow rules
    /// of the kinds it names in `also_allow` added.
    pub fn policy(self) -> Result<Policy, Failure> {
        let mut p = Policy::parse(self.text(), self.name())?;
        for other in std::mem::take(&mut p.also_allow) {
            let kind = Kind::named(&other).filter(|k| *k != self).ok_or_else(|| {
                invalid(
                    self.name(),
                    format!("also_allow names unknown kind {other:?}"),
                )
            })?;
            let extra = Policy::parse(kind.text(), kind.name())?;
            if !extra.also_allow.is_empty() {
                return Err(invalid(
                    self.name(),
                    format!("{other} has also_allow itself"),
                ));
            }
            p.allow.extend(extra.allow);
        }
        Ok(p)
    }
}

/// What a call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// It runs.
    Allow,
    /// The process is killed with SIGSYS.
    KillProcess,
    /// It fails with this errno and the process goes on.
    Errno(i32),
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Action, D::Error> {
        let s = String::deserialize(d)?;
        Action::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Action {
    fn parse(s: &str) -> Result<Action, String> {
        match s {
            "allow" => Ok(Action::Allow),
            "kill_process" => Ok(Action::KillProcess),
            _ => match s.strip_prefix("errno:") {
                Some(name) => consts::errno(name)
                    .map(Action::Errno)
                    .ok_or_else(|| format!("unknown errno {name:?}")),
                None => Err(format!(
                    "unknown action {s:?} (allow, kill_process or errno:NAME)"
                )),
            },
        }
    }

    fn scmp(self) -> ScmpAction {
        match self {
            Action::Allow => ScmpAction::Allow,
            Action::KillProcess => ScmpAction::KillProcess,
            Action::Errno(e) => ScmpAction::Errno(e),
        }
    }
}

/// A comparison of one syscall argument.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgFilter {
    /// Argument index, 0-5.
    pub index: u32,
    /// `eq`, `ne`, `lt`, `le`, `gt`, `ge` or `masked_eq`.
    pub op: String,
    /// A number or constants joined with `|` (e.g. "CLONE_VM|CLONE_THREAD").
    pub value: String,
    /// For `masked_eq`: the mask, in the same form.
    #[serde(default)]
    pub mask: Option<String>,
}

impl ArgFilter {
    fn value(&self) -> Result<u64, String> {
        consts::value(&self.value)
    }

    fn compare(&self) -> Result<ScmpArgCompare, String> {
        if self.index > 5 {
            return Err(format!("argument index {} is past 5", self.index));
        }
        let op = match self.op.as_str() {
            "eq" => ScmpCompareOp::Equal,
            "ne" => ScmpCompareOp::NotEqual,
            "lt" => ScmpCompareOp::Less,
            "le" => ScmpCompareOp::LessOrEqual,
            "gt" => ScmpCompareOp::Greater,
            "ge" => ScmpCompareOp::GreaterEqual,
            "masked_eq" => {
                let mask = self.mask.as_deref().ok_or("masked_eq needs a mask")?;
                ScmpCompareOp::MaskedEqual(consts::value(mask)?)
            }
            other => return Err(format!("unknown comparison {other:?}")),
        };
        Ok(ScmpArgCompare::new(self.index, op, self.value()?))
    }
}

/// One rule: these calls, under these argument filters, get `action`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Syscall names (x86_64).
    pub syscalls: Vec<String>,
    /// Why the rule exists.
    pub why: String,
    /// Filters that must all hold.
    #[serde(default)]
    pub args: Vec<ArgFilter>,
    /// For deny entries: the action (default: the policy's default).
    #[serde(default)]
    pub action: Option<Action>,
}

/// One process kind's policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// What the policy is for.
    pub about: String,
    /// The action for calls no rule names.
    pub default: Action,
    /// Kinds whose allow rules this policy includes: a process whose
    /// children run under their own filter on top of this one.
    #[serde(default)]
    pub also_allow: Vec<String>,
    /// Allowed calls.
    #[serde(default)]
    pub allow: Vec<Rule>,
    /// Calls refused on purpose (also the tests' vectors).
    #[serde(default)]
    pub deny: Vec<Rule>,
}

/// A compiled filter: the BPF instructions, 8 bytes each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The instructions as the kernel reads them (`struct sock_filter[]`).
    pub bytes: Vec<u8>,
}

fn invalid(name: &str, why: impl std::fmt::Display) -> Failure {
    Failure::new(
        Code::SandboxSetupFailed,
        format!("seccomp policy {name}: {why}"),
    )
}

impl Policy {
    /// Parse and check `text`, the policy called `name`.
    pub fn parse(text: &str, name: &str) -> Result<Policy, Failure> {
        let p: Policy = toml::from_str(text).map_err(|e| invalid(name, e))?;
        if p.default == Action::Allow {
            return Err(invalid(name, "the default action must refuse"));
        }
        for rule in p.allow.iter().chain(&p.deny) {
            if rule.why.trim().is_empty() {
                return Err(invalid(
                    name,
                    format!("rule {:?} says no why", rule.syscalls),
                ));
            }
            for call in &rule.syscalls {
                ScmpSyscall::from_name(call)
                    .map_err(|_| invalid(name, format!("unknown syscall {call:?}")))?;
            }
            for a in &rule.args {
                a.compare()
                    .map_err(|e| invalid(name, format!("{:?}: {e}", rule.syscalls)))?;
            }
        }
        for rule in &p.allow {
            if rule.action.is_some_and(|a| a != Action::Allow) {
                return Err(invalid(
                    name,
                    format!("allow rule {:?} has another action", rule.syscalls),
                ));
            }
        }
        for d in &p.deny {
            if d.action == Some(Action::Allow) {
                return Err(invalid(name, format!("deny entry {:?} allows", d.syscalls)));
            }
            for call in &d.syscalls {
                let unconditional = p
                    .allow
                    .iter()
                    .any(|a| a.args.is_empty() && a.syscalls.contains(call));
                if unconditional && d.args.is_empty() {
                    return Err(invalid(name, format!("{call} is both allowed and denied")));
                }
            }
        }
        Ok(p)
    }

    /// The action of deny entry `d`.
    pub fn deny_action(&self, d: &Rule) -> Action {
        d.action.unwrap_or(self.default)
    }

    /// Compile to BPF for x86_64 (calls from any other ABI, such as the
    /// 32-bit `int 0x80` one, get the default action).
    pub fn compile(&self) -> Result<Program, Failure> {
        let err = |what: &str, e: libseccomp::error::SeccompError| {
            Failure::new(Code::SandboxSetupFailed, format!("seccomp: {what}: {e}"))
        };
        let unlisted = match LOG_UNLISTED.load(std::sync::atomic::Ordering::SeqCst) {
            true => ScmpAction::Log,
            false => self.default.scmp(),
        };
        let mut ctx = ScmpFilterContext::new(unlisted).map_err(|e| err("new filter", e))?;
        ctx.set_act_badarch(unlisted)
            .map_err(|e| err("bad-arch action", e))?;
        ctx.add_arch(ScmpArch::Native).map_err(|e| err("arch", e))?;
        let rules = self
            .allow
            .iter()
            .map(|r| (r, Action::Allow))
            .chain(self.deny.iter().map(|r| (r, self.deny_action(r))));
        for (rule, action) in rules {
            // libseccomp refuses a rule whose action is the default: the
            // default already gives it (in the audit build, LOG: a call a
            // deny entry kills for is what the audit is there to show).
            if action == self.default {
                continue;
            }
            let cmps = rule
                .args
                .iter()
                .map(ArgFilter::compare)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Failure::new(Code::SandboxSetupFailed, e))?;
            for call in &rule.syscalls {
                let nr = ScmpSyscall::from_name(call).map_err(|e| err(call, e))?;
                ctx.add_rule_conditional(action.scmp(), nr, &cmps)
                    .map_err(|e| err(&format!("rule for {call}"), e))?;
            }
        }
        // libseccomp 2.5 exports to a descriptor only.
        let setup = |what: &str, e: std::io::Error| {
            Failure::new(Code::SandboxSetupFailed, format!("seccomp: {what}: {e}"))
        };
        let memfd = scratch_memfd().map_err(|e| setup("memfd_create", e.into()))?;
        ctx.export_bpf(&memfd).map_err(|e| err("export", e))?;
        let mut file = std::fs::File::from(memfd);
        std::io::Seek::rewind(&mut file).map_err(|e| setup("rewind", e))?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes).map_err(|e| setup("read back", e))?;
        Ok(Program { bytes })
    }
}

/// A memfd for data that is never executed. Kernels since 6.3 want that
/// said (`MFD_NOEXEC_SEAL`; without it or `MFD_EXEC` 6.6 warns, and
/// `vm.memfd_noexec = 2` refuses); older ones refuse the flag with EINVAL,
/// and there the memfd is made without it (it is only written and read
/// back).
fn scratch_memfd() -> rustix::io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{MemfdFlags, memfd_create};
    match memfd_create(
        "clawos-seccomp",
        MemfdFlags::CLOEXEC | MemfdFlags::NOEXEC_SEAL,
    ) {
        Err(rustix::io::Errno::INVAL) => memfd_create("clawos-seccomp", MemfdFlags::CLOEXEC),
        other => other,
    }
}

impl Program {
    /// The sha256 of the instructions, hex (logged at install; the probe
    /// prints the same).
    pub fn digest(&self) -> String {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(&self.bytes))
    }

    /// Load the program on every thread of this process (TSYNC); sets
    /// no_new_privs first, as the kernel requires of unprivileged callers.
    pub fn install(&self) -> Result<(), Failure> {
        crate::sandbox::sys::set_no_new_privs()?;
        crate::sandbox::sys::seccomp_install(&self.bytes)
    }
}

/// The syscall number of `name` on this architecture.
pub fn syscall_number(name: &str) -> Option<i32> {
    ScmpSyscall::from_name(name).ok().map(i32::from)
}

/// Argument values for making the call of deny entry `d`: each `eq` or
/// `masked_eq` filter's value at its index, zero elsewhere.
pub fn probe_args(d: &Rule) -> [u64; 6] {
    let mut args = [0u64; 6];
    for a in &d.args {
        if let ("eq" | "masked_eq", Ok(v)) = (a.op.as_str(), a.value()) {
            args[a.index as usize] = v;
        }
    }
    args
}

#[cfg(test)]
mod tests;
