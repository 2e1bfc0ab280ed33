//! The cgroup v2 subtree delegated to one instance: `<root>/instance-<id>`.
//! A tool names groups relative to it (`a`, `a/b`) and reaches them through
//! handles; names are checked against a strict alphabet (no `.`, so no `..`
//! and no clash with interface files), so a group can only ever be a
//! directory below the delegation. A child's memory, CPU and pids limits
//! never exceed its ancestors' within the delegation, and only processes
//! already inside it can be moved between its groups.
//!
//! The instance's own processes live in the reserved leaf `main` (cgroup v2
//! lets only leaves hold processes once controllers are enabled below).
//! Every write goes through [`Delegation::write`], which reads the value back.

pub mod files;

use crate::config::{CgroupPolicy, InstanceLimits};
use crate::error::{Code, Failure};
use files::{check_cpu, cpu_exceeds, format_cpu_max, format_max, parse_cpu_max, parse_max};
use std::path::{Path, PathBuf};

/// Where cgroup2 is mounted in the appliance.
pub const CGROUP2_MOUNT: &str = "/sys/fs/cgroup";
/// The leaf holding the instance's own processes.
pub const MAIN_LEAF: &str = "main";
/// Controllers the bridge needs and enables below its root.
pub const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// `statfs` magic of cgroup2 (linux/magic.h).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// The page size `memory.max` is rounded to (x86_64; the read-back in
/// [`write_file`] would catch a kernel that rounds differently).
const PAGE: u64 = 4096;
/// How long removing an instance waits for its killed processes to go.
const KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest group name component.
const MAX_NAME: usize = 64;

/// A group, by its path relative to the delegation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    rel: String,
}

impl Group {
    /// The group `rel`, as a delegation named it (the broker's replies).
    pub fn named(rel: String) -> Group {
        Group { rel }
    }

    /// The group's path relative to the delegation, e.g. "a/b".
    pub fn name(&self) -> &str {
        &self.rel
    }
}

/// One instance's delegated subtree.
#[derive(Debug)]
pub struct Delegation {
    mount: PathBuf,
    dir: PathBuf,
    proc: PathBuf,
    max_groups: u32,
    max_depth: u32,
    created: u32,
    /// Remove the subtree when dropped (the bridge made it).
    owned: bool,
}

fn io(what: impl std::fmt::Display, e: std::io::Error) -> Failure {
    Failure::io(what, &e)
}

impl Delegation {
    /// A delegation at `dir` below the cgroup2 `mount`, with `/proc` at
    /// `proc`; nothing is created. Unit tests point these at fixtures.
    pub fn at(mount: PathBuf, dir: PathBuf, proc: PathBuf, policy: &CgroupPolicy) -> Delegation {
        Delegation {
            mount,
            dir,
            proc,
            max_groups: policy.max_groups,
            max_depth: policy.max_depth,
            created: 0,
            owned: false,
        }
    }

    /// Create instance `id`'s subtree under `policy.root` on the real cgroup2
    /// mount. Without cgroup v2 and its memory, cpu and pids controllers this
    /// fails with INTERFACE_UNAVAILABLE and says which is missing.
    pub fn create(policy: &CgroupPolicy, id: u64) -> Result<Delegation, Failure> {
        Delegation::create_named(policy, &format!("instance-{id}"), &policy.instance)
    }

    /// Create the subtree of compile `id` (`compile-<id>`), where a
    /// component is validated and compiled under `limits`.
    pub fn create_compile(
        policy: &CgroupPolicy,
        id: u64,
        limits: &InstanceLimits,
    ) -> Result<Delegation, Failure> {
        Delegation::create_named(policy, &format!("compile-{id}"), limits)
    }

    fn create_named(
        policy: &CgroupPolicy,
        name: &str,
        limits: &InstanceLimits,
    ) -> Result<Delegation, Failure> {
        available(policy)?;
        let mount = Path::new(CGROUP2_MOUNT);
        let parent = policy.root.parent().unwrap_or(mount);
        let enable = CONTROLLERS.map(|c| format!("+{c}")).join(" ");
        let setup = |e: Failure| Failure::new(Code::SandboxSetupFailed, e.message);
        if !policy.root.is_dir() {
            std::fs::create_dir(&policy.root)
                .or_else(|e| if policy.root.is_dir() { Ok(()) } else { Err(e) })
                .map_err(|e| setup(io(format_args!("mkdir {}", policy.root.display()), e)))?;
        }
        write_file(&parent.join("cgroup.subtree_control"), &enable).map_err(setup)?;
        write_file(&policy.root.join("cgroup.subtree_control"), &enable).map_err(setup)?;
        let dir = policy.root.join(name);
        let mut d = Delegation::at(
            mount.to_owned(),
            dir.clone(),
            PathBuf::from("/proc"),
            policy,
        );
        d.owned = true;
        if dir.exists() {
            // Left by a daemon that crashed (instance ids restart with the daemon).
            tracing::warn!(cgroup = %dir.display(), "removing a stale instance cgroup");
            d.remove_all();
        }
        std::fs::create_dir(&dir)
            .map_err(|e| setup(io(format_args!("mkdir {}", dir.display()), e)))?;
        std::fs::create_dir(dir.join(MAIN_LEAF))
            .map_err(|e| setup(io(format_args!("mkdir {}/{MAIN_LEAF}", dir.display()), e)))?;
        write_file(&dir.join("cgroup.subtree_control"), &enable).map_err(setup)?;
        d.set_limits(limits).map_err(setup)?;
        Ok(d)
    }

    /// Write the subtree's own limits, the ceiling for its groups.
    pub fn set_limits(&self, limits: &InstanceLimits) -> Result<(), Failure> {
        let [quota, period] = limits.cpu_max;
        // No swap: memory.max is the instance's whole memory. The file
        // exists only on kernels built with swap (CONFIG_SWAP).
        write_file(
            &self.dir.join("memory.swap.max"),
            &limits.memory_swap_max.to_string(),
        )?;
        // An OOM kill takes the whole instance, never half of it.
        write_file(
            &self.dir.join("memory.oom.group"),
            if limits.memory_oom_group { "1" } else { "0" },
        )?;
        write_file(&self.dir.join("memory.max"), &limits.memory_max.to_string())?;
        write_file(
            &self.dir.join("cpu.max"),
            &format_cpu_max(Some(quota), period),
        )?;
        write_file(&self.dir.join("pids.max"), &limits.pids_max.to_string())
    }

    /// The delegation's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lift the instance's `cpu.max` once its worker has been killed, so
    /// that its exit (tearing down its memory) is not throttled: with the
    /// 5% quota spent by the run, a dead worker took hundreds of ms to go
    /// under TCG. Only for a worker that can run no more code of its own.
    pub fn unthrottle_killed(&self) -> Result<(), Failure> {
        std::fs::write(self.dir.join("cpu.max"), "max").map_err(|e| {
            io(
                format_args!("write max to {}/cpu.max", self.dir.display()),
                e,
            )
        })
    }

    /// Check a group name and return its components.
    pub fn check_name<'n>(&self, name: &'n str) -> Result<Vec<&'n str>, Failure> {
        let parts: Vec<&str> = name.split('/').collect();
        let bad = |why: &str| {
            Failure::new(
                Code::InvalidArgument,
                format!("cgroup name {name:?}: {why}"),
            )
        };
        if name.is_empty() {
            return Err(bad("empty: name a group below the instance's subtree"));
        }
        if parts.len() > self.max_depth as usize {
            return Err(bad(&format!(
                "deeper than cgroup.max_depth = {}",
                self.max_depth
            )));
        }
        for p in &parts {
            let ok = !p.is_empty()
                && p.len() <= MAX_NAME
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !ok {
                return Err(bad("each component is 1-64 of a-z, 0-9, '-' and '_'"));
            }
        }
        if parts[0] == MAIN_LEAF {
            return Err(Failure::new(
                Code::PolicyDenied,
                format!(
                    "cgroup name {name:?}: {MAIN_LEAF} holds the instance itself and is not the tool's"
                ),
            ));
        }
        Ok(parts)
    }

    fn path(&self, g: &Group) -> PathBuf {
        self.dir.join(&g.rel)
    }

    /// Create the group `name` (its parent must exist).
    pub fn create_group(&mut self, name: &str) -> Result<Group, Failure> {
        self.check_name(name)?;
        if self.created >= self.max_groups {
            return Err(Failure::new(
                Code::QuotaExceeded,
                format!(
                    "cgroup quota of {} groups per instance reached",
                    self.max_groups
                ),
            ));
        }
        let g = Group {
            rel: name.to_owned(),
        };
        std::fs::create_dir(self.path(&g)).map_err(|e| {
            let code = match e.kind() {
                std::io::ErrorKind::AlreadyExists => Code::InvalidArgument,
                _ => Code::from_io(&e),
            };
            Failure::new(code, format!("cannot create cgroup {name:?}: {e}"))
        })?;
        self.created += 1;
        Ok(g)
    }

    /// Open the existing group `name`.
    pub fn open_group(&self, name: &str) -> Result<Group, Failure> {
        self.check_name(name)?;
        let g = Group {
            rel: name.to_owned(),
        };
        if !self.path(&g).is_dir() {
            return Err(Failure::new(
                Code::Enoent,
                format!("no cgroup {name:?} in this instance"),
            ));
        }
        Ok(g)
    }

    /// Remove the group `name`: it must have no children and no processes.
    pub fn delete_group(&mut self, name: &str) -> Result<(), Failure> {
        let g = self.open_group(name)?;
        std::fs::remove_dir(self.path(&g)).map_err(|e| {
            let code = match e.raw_os_error() {
                Some(libc_ebusy)
                    if libc_ebusy == rustix::io::Errno::BUSY.raw_os_error()
                        || libc_ebusy == rustix::io::Errno::NOTEMPTY.raw_os_error() =>
                {
                    Code::InvalidArgument
                }
                _ => Code::from_io(&e),
            };
            Failure::new(
                code,
                format!("cannot delete cgroup {name:?} (children or processes left?): {e}"),
            )
        })?;
        self.created = self.created.saturating_sub(1);
        Ok(())
    }

    /// Write `value` to `file` of `g` and read it back.
    pub fn write(&self, g: &Group, file: &str, value: &str) -> Result<(), Failure> {
        write_file(&self.path(g).join(file), value)
    }

    fn read(&self, dir: &Path, file: &str) -> Result<String, Failure> {
        let path = dir.join(file);
        std::fs::read_to_string(&path).map_err(|e| io(format_args!("read {}", path.display()), e))
    }

    /// Directories from `g`'s parent up to the delegation itself.
    fn ancestors(&self, g: &Group) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut rel = Path::new(&g.rel).parent();
        while let Some(r) = rel {
            out.push(self.dir.join(r));
            if r.as_os_str().is_empty() {
                break;
            }
            rel = r.parent();
        }
        out
    }

    /// `memory.max` of `g`.
    pub fn memory_max(&self, g: &Group) -> Result<Option<u64>, Failure> {
        parse_max("memory.max", &self.read(&self.path(g), "memory.max")?)
    }

    /// Set `memory.max`, rounded down to a page as the kernel does; never
    /// above an ancestor's.
    pub fn set_memory_max(&self, g: &Group, bytes: Option<u64>) -> Result<(), Failure> {
        let bytes = bytes.map(|b| b - b % PAGE);
        for dir in self.ancestors(g) {
            if let Some(limit) = parse_max("memory.max", &self.read(&dir, "memory.max")?)?
                && bytes.is_none_or(|b| b > limit)
            {
                return Err(exceeds(
                    g,
                    "memory.max",
                    format_max(bytes),
                    limit.to_string(),
                ));
            }
        }
        self.write(g, "memory.max", &format_max(bytes))
    }

    /// `cpu.max` of `g` as (quota, period).
    pub fn cpu_max(&self, g: &Group) -> Result<(Option<u64>, u64), Failure> {
        parse_cpu_max("cpu.max", &self.read(&self.path(g), "cpu.max")?)
    }

    /// Set `cpu.max`; never a larger share of a CPU than an ancestor's.
    pub fn set_cpu_max(&self, g: &Group, quota: Option<u64>, period: u64) -> Result<(), Failure> {
        check_cpu(quota, period)?;
        for dir in self.ancestors(g) {
            let parent = parse_cpu_max("cpu.max", &self.read(&dir, "cpu.max")?)?;
            if cpu_exceeds((quota, period), parent) {
                return Err(exceeds(
                    g,
                    "cpu.max",
                    format_cpu_max(quota, period),
                    format_cpu_max(parent.0, parent.1),
                ));
            }
        }
        self.write(g, "cpu.max", &format_cpu_max(quota, period))
    }

    /// `pids.max` of `g`.
    pub fn pids_max(&self, g: &Group) -> Result<Option<u64>, Failure> {
        parse_max("pids.max", &self.read(&self.path(g), "pids.max")?)
    }

    /// Set `pids.max`; never above an ancestor's.
    pub fn set_pids_max(&self, g: &Group, max: Option<u64>) -> Result<(), Failure> {
        for dir in self.ancestors(g) {
            if let Some(limit) = parse_max("pids.max", &self.read(&dir, "pids.max")?)?
                && max.is_none_or(|m| m > limit)
            {
                return Err(exceeds(g, "pids.max", format_max(max), limit.to_string()));
            }
        }
        self.write(g, "pids.max", &format_max(max))
    }

    /// The delegation-relative group `pid` is in, or a refusal if it is not
    /// inside this delegation.
    fn group_of(&self, pid: u32) -> Result<String, Failure> {
        let text = std::fs::read_to_string(self.proc.join(pid.to_string()).join("cgroup"))
            .map_err(|e| Failure::new(Code::Enoent, format!("no process {pid}: {e}")))?;
        let path = files::proc_cgroup_path(&text).ok_or_else(|| {
            Failure::new(Code::Eio, format!("process {pid} has no cgroup v2 path"))
        })?;
        let abs = self.mount.join(path.trim_start_matches('/'));
        match abs.strip_prefix(&self.dir) {
            Ok(rel) => Ok(rel.to_string_lossy().into_owned()),
            Err(_) => Err(Failure::new(
                Code::PolicyDenied,
                format!("process {pid} is not one of this instance's tasks (it is in {path})"),
            )),
        }
    }

    /// Move `pid`, a task of this instance, into `g`.
    pub fn add_process(&self, g: &Group, pid: u32) -> Result<(), Failure> {
        self.group_of(pid)?;
        write_procs(&self.path(g), pid)
    }

    /// Move `pid` out of `g` back to the instance's own leaf.
    pub fn remove_process(&self, g: &Group, pid: u32) -> Result<(), Failure> {
        if self.group_of(pid)? != g.rel {
            return Err(Failure::new(
                Code::InvalidArgument,
                format!("process {pid} is not in cgroup {:?}", g.rel),
            ));
        }
        write_procs(&self.dir.join(MAIN_LEAF), pid)
    }

    /// Kill whatever still runs in the delegation, then remove every group
    /// below it, deepest first, then the delegation.
    fn remove_all(&self) {
        // cgroup.kill (5.14+) takes every process below, but asynchronously:
        // a group with live tasks cannot be removed, so wait (bounded) until
        // cgroup.events says nothing is left.
        if std::fs::write(self.dir.join("cgroup.kill"), "1").is_ok() {
            let deadline = std::time::Instant::now() + KILL_WAIT;
            while populated(&self.dir) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        fn remove(dir: &Path) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        remove(&e.path());
                    }
                }
            }
            if let Err(e) = std::fs::remove_dir(dir) {
                tracing::warn!(cgroup = %dir.display(), "cannot remove instance cgroup: {e}");
            }
        }
        remove(&self.dir);
    }
}

impl Drop for Delegation {
    fn drop(&mut self) {
        if self.owned {
            self.remove_all();
        }
    }
}

/// Can instances get cgroups: cgroup v2 mounted at [`CGROUP2_MOUNT`] with
/// the memory, cpu and pids controllers available above `policy.root`?
/// The error says what is missing (INTERFACE_UNAVAILABLE).
pub fn available(policy: &CgroupPolicy) -> Result<(), Failure> {
    let mount = Path::new(CGROUP2_MOUNT);
    let unavailable = |why: String| Failure::new(Code::InterfaceUnavailable, why);
    let fs = rustix::fs::statfs(mount)
        .map_err(|e| unavailable(format!("cannot statfs {CGROUP2_MOUNT}: {e}")))?;
    check_mount(fs.f_type as i64, mount)?;
    let parent = policy.root.parent().unwrap_or(mount);
    let available = std::fs::read_to_string(parent.join("cgroup.controllers")).map_err(|e| {
        unavailable(format!(
            "cannot read {}/cgroup.controllers: {e}",
            parent.display()
        ))
    })?;
    let have = files::controllers(&available);
    if let Some(missing) = CONTROLLERS.iter().find(|c| !have.contains(c)) {
        return Err(unavailable(format!(
            "controller {missing} is not available in {}: instances need memory, cpu and pids",
            parent.display()
        )));
    }
    Ok(())
}

/// Remove instance cgroups a previous daemon left (it crashed, or was
/// killed): their ids restart with the daemon.
pub fn remove_stale(policy: &CgroupPolicy) {
    let Ok(entries) = std::fs::read_dir(&policy.root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if (name.starts_with("instance-") || name.starts_with("compile-")) && e.path().is_dir() {
            tracing::warn!(cgroup = %e.path().display(), "removing a stale cgroup");
            let mut d = Delegation::at(CGROUP2_MOUNT.into(), e.path(), "/proc".into(), policy);
            d.owned = true;
        }
    }
}

/// Does the cgroup at `dir` (or a group below) still hold a process?
fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .is_ok_and(|t| files::flat_keyed(&t, "populated") != Some(0))
}

/// `oom_kill` of the cgroup at `dir` (memory.events): how many of its
/// processes the OOM killer took.
pub fn oom_kills(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("memory.events")).ok()?;
    files::flat_keyed(&text, "oom_kill")
}

/// Is cgroup v2 mounted at [`CGROUP2_MOUNT`]?
pub fn cgroup2_mounted() -> bool {
    rustix::fs::statfs(CGROUP2_MOUNT)
        .is_ok_and(|fs| check_mount(fs.f_type, Path::new(CGROUP2_MOUNT)).is_ok())
}

/// Refuse a mount whose filesystem magic is not cgroup2's.
fn check_mount(magic: i64, mount: &Path) -> Result<(), Failure> {
    if magic == CGROUP2_SUPER_MAGIC {
        return Ok(());
    }
    Err(Failure::new(
        Code::InterfaceUnavailable,
        format!(
            "{} is not a cgroup2 mount (filesystem magic {magic:#x}; a cgroup v1 or hybrid host): the cgroup interface needs cgroup v2",
            mount.display()
        ),
    ))
}

fn exceeds(g: &Group, file: &str, asked: String, limit: String) -> Failure {
    Failure::new(
        Code::PolicyDenied,
        format!(
            "{file} {asked} for cgroup {:?} exceeds its parent's {limit}",
            g.rel
        ),
    )
}

/// Move `pid` into the group at `dir` (one `cgroup.procs` write; the kernel
/// reports the move, so there is nothing to read back).
fn write_procs(dir: &Path, pid: u32) -> Result<(), Failure> {
    let path = dir.join("cgroup.procs");
    std::fs::write(&path, pid.to_string())
        .map_err(|e| io(format_args!("write {pid} to {}", path.display()), e))
}

/// The one cgroup write helper: write `value` to `path`, then read it back.
/// A file that reads back a different value (the kernel rounded or refused
/// it silently) is an error naming both.
pub fn write_file(path: &Path, value: &str) -> Result<(), Failure> {
    std::fs::write(path, value)
        .map_err(|e| io(format_args!("write {value:?} to {}", path.display()), e))?;
    if path
        .file_name()
        .is_some_and(|n| n == "cgroup.subtree_control")
    {
        // Reads back as the enabled set, without "+".
        let now = std::fs::read_to_string(path)
            .map_err(|e| io(format_args!("read {}", path.display()), e))?;
        let have = files::controllers(&now);
        if let Some(c) = value
            .split_whitespace()
            .map(|c| c.trim_start_matches('+'))
            .find(|c| !have.contains(c))
        {
            return Err(Failure::new(
                Code::Eio,
                format!(
                    "{}: controller {c} is not enabled after writing {value:?}",
                    path.display()
                ),
            ));
        }
        return Ok(());
    }
    let back = std::fs::read_to_string(path)
        .map_err(|e| io(format_args!("read back {}", path.display()), e))?;
    if back.trim() != value.trim() {
        return Err(Failure::new(
            Code::Eio,
            format!(
                "{}: wrote {value:?} but it reads back {:?}",
                path.display(),
                back.trim()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
