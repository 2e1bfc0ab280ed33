//! What an instance reaches beyond its own process: egress connections and
//! its delegated cgroup subtree. An instance worker has neither a route out
//! (its network namespace holds only `lo`) nor the cgroup filesystem (its
//! mount namespace holds only its ClawFS subtree), so in the daemon both go
//! through [`crate::sandbox`]'s broker, which applies the same policy here
//! and hands back connected sockets. [`Direct`] does the same work in the
//! calling process, for benchmarks and unit tests of the host interfaces.

use crate::cgroup::Delegation;
use crate::config::CgroupPolicy;
use crate::egress::Egress;
use crate::error::Failure;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::time::Duration;

/// The outside world as the host interfaces see it.
pub trait Outside: Send + Sync + std::fmt::Debug {
    /// The addresses of `name`, if the egress policy allows looking it up.
    fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, Failure>;
    /// A connection to `host`:`port`, if the egress policy allows it.
    fn connect(&self, host: &str, port: u16, timeout: Duration) -> Result<TcpStream, Failure>;
    /// One call on the instance's cgroup delegation.
    fn cgroup(&self, call: CgroupCall) -> Result<CgroupReply, Failure>;
    /// The memory of the region `name` that the live instances of this
    /// instance's tool share, `size` bytes: a sealed memfd ([`sealed_memfd`])
    /// to map. `None` where instances share one process, whose own buffer
    /// serves them.
    fn shared_region(&self, name: &str, size: u64) -> Result<Option<OwnedFd>, Failure>;
}

/// A new memfd of `size` zero bytes whose size can never change
/// (F_SEAL_GROW, F_SEAL_SHRINK, then F_SEAL_SEAL), so a mapping of it can
/// never lose its pages under a reader (SIGBUS) or grow past its account.
pub fn sealed_memfd(size: u64) -> Result<OwnedFd, Failure> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let io = |what: &str, e: rustix::io::Errno| {
        Failure::io(format_args!("shared region: {what}"), &e.into())
    };
    let fd = rustix::fs::memfd_create(
        "clawos-shared",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(|e| io("memfd_create", e))?;
    rustix::fs::ftruncate(&fd, size).map_err(|e| io("ftruncate", e))?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL)
        .map_err(|e| io("seal", e))?;
    Ok(fd)
}

/// A call of the cgroup interface, with groups named relative to the
/// instance's delegation and pids as the instance sees them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CgroupCall {
    /// Create a group.
    Create(String),
    /// Open an existing group.
    Open(String),
    /// Delete an empty group.
    Delete(String),
    /// Move one of the instance's processes into a group.
    AddProcess(String, u32),
    /// Move a process back to the instance's own leaf.
    RemoveProcess(String, u32),
    /// Read `memory.max`.
    MemoryMax(String),
    /// Write `memory.max`.
    SetMemoryMax(String, Option<u64>),
    /// Read `cpu.max`.
    CpuMax(String),
    /// Write `cpu.max`: quota and period.
    SetCpuMax(String, Option<u64>, u64),
    /// Read `pids.max`.
    PidsMax(String),
    /// Write `pids.max`.
    SetPidsMax(String, Option<u64>),
}

/// The answer to a [`CgroupCall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupReply {
    /// A group, by its name relative to the delegation.
    Group(String),
    /// Done, nothing to return.
    Done,
    /// A limit, `None` for "max".
    Limit(Option<u64>),
    /// A CPU limit: quota (`None` for "max") and period.
    Cpu(Option<u64>, u64),
}

impl CgroupCall {
    /// Carry out the call on `d`; `pid` maps a pid as the instance sees it
    /// to the pid in the delegation's pid namespace.
    pub fn apply(
        self,
        d: &mut Delegation,
        mut pid: impl FnMut(u32) -> Result<u32, Failure>,
    ) -> Result<CgroupReply, Failure> {
        use CgroupCall as C;
        use CgroupReply as R;
        let group = |d: &Delegation, name: &str| d.open_group(name);
        Ok(match self {
            C::Create(name) => R::Group(d.create_group(&name)?.name().to_owned()),
            C::Open(name) => R::Group(d.open_group(&name)?.name().to_owned()),
            C::Delete(name) => d.delete_group(&name).map(|()| R::Done)?,
            C::AddProcess(g, p) => d.add_process(&group(d, &g)?, pid(p)?).map(|()| R::Done)?,
            C::RemoveProcess(g, p) => d
                .remove_process(&group(d, &g)?, pid(p)?)
                .map(|()| R::Done)?,
            C::MemoryMax(g) => R::Limit(d.memory_max(&group(d, &g)?)?),
            C::SetMemoryMax(g, v) => d.set_memory_max(&group(d, &g)?, v).map(|()| R::Done)?,
            C::CpuMax(g) => {
                let (quota, period) = d.cpu_max(&group(d, &g)?)?;
                R::Cpu(quota, period)
            }
            C::SetCpuMax(g, q, p) => d.set_cpu_max(&group(d, &g)?, q, p).map(|()| R::Done)?,
            C::PidsMax(g) => R::Limit(d.pids_max(&group(d, &g)?)?),
            C::SetPidsMax(g, v) => d.set_pids_max(&group(d, &g)?, v).map(|()| R::Done)?,
        })
    }
}

/// The outside reached from this process: egress connections made here,
/// and a delegation created on the first cgroup call and removed with this
/// value. Pids are this process's own.
#[derive(Debug)]
pub struct Direct {
    egress: Egress,
    cgroup: CgroupPolicy,
    instance: u64,
    delegation: Mutex<Option<Delegation>>,
}

impl Direct {
    /// The outside of instance `instance` under these policies.
    pub fn new(egress: Egress, cgroup: CgroupPolicy, instance: u64) -> Direct {
        Direct {
            egress,
            cgroup,
            instance,
            delegation: Mutex::new(None),
        }
    }
}

impl Outside for Direct {
    fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, Failure> {
        self.egress.resolve(name)
    }

    fn connect(&self, host: &str, port: u16, timeout: Duration) -> Result<TcpStream, Failure> {
        self.egress.connect(host, port, timeout)
    }

    fn cgroup(&self, call: CgroupCall) -> Result<CgroupReply, Failure> {
        let mut slot = self.delegation.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(Delegation::create(&self.cgroup, self.instance)?);
        }
        call.apply(slot.as_mut().expect("set above"), Ok)
    }

    fn shared_region(&self, _name: &str, _size: u64) -> Result<Option<OwnedFd>, Failure> {
        Ok(None)
    }
}
