//! `clawos:bridge/cgroup`: the instance's delegated cgroup subtree
//! ([`crate::cgroup::Delegation`]), reached through [`Outside::cgroup`]
//! and removed with the instance. Groups are handles, never paths.

use super::wit_cgroup::{CpuLimit, Host, HostGroup};
use super::{ErrorCode, Handles, refuse};
use crate::cgroup::Group;
use crate::error::{Code, Failure};
use crate::outside::{CgroupCall, CgroupReply, Outside};
use std::sync::Arc;
use wasmtime::component::{HasData, Resource};

/// One instance's cgroup state.
#[derive(Debug)]
pub struct CgroupState {
    outside: Arc<dyn Outside>,
    who: String,
}

impl CgroupState {
    /// State for an instance of tool `who`; nothing is created yet.
    pub fn new(outside: Arc<dyn Outside>, who: String) -> CgroupState {
        CgroupState { outside, who }
    }
}

/// The view the cgroup interface gets.
pub struct CgroupView<'a> {
    /// The instance's handles.
    pub handles: &'a mut Handles,
    /// Its cgroup state.
    pub cg: &'a mut CgroupState,
}

/// Marker for the cgroup interface's view.
pub struct CgroupHost;

impl HasData for CgroupHost {
    type Data<'a> = CgroupView<'a>;
}

type R<T> = wasmtime::Result<Result<T, ErrorCode>>;

fn unexpected(reply: CgroupReply) -> Failure {
    Failure::new(
        Code::Einternal,
        format!("unexpected cgroup reply {reply:?}"),
    )
}

impl CgroupView<'_> {
    fn answer<T>(&self, op: &str, r: Result<T, Failure>) -> R<T> {
        Ok(r.map_err(|f| refuse("cgroup", op, &self.cg.who, f)))
    }

    fn call(&self, call: CgroupCall) -> Result<CgroupReply, Failure> {
        self.cg.outside.cgroup(call)
    }

    /// A call that names a new or existing group: push its handle.
    fn group(&mut self, call: CgroupCall) -> Result<Resource<Group>, Failure> {
        match self.call(call)? {
            CgroupReply::Group(name) => self
                .handles
                .push(Group::named(name))
                .map_err(|code| Failure::new(code.into(), "handle limit reached")),
            other => Err(unexpected(other)),
        }
    }

    /// The name of the group behind `handle`.
    fn name(&self, handle: &Resource<Group>) -> Result<String, Failure> {
        self.handles
            .table
            .get(handle)
            .map(|g| g.name().to_owned())
            .map_err(|e| Failure::new(super::table_error(&e).into(), "unknown cgroup handle"))
    }

    fn done(&self, call: CgroupCall) -> Result<(), Failure> {
        match self.call(call)? {
            CgroupReply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn limit(&self, call: CgroupCall) -> Result<Option<u64>, Failure> {
        match self.call(call)? {
            CgroupReply::Limit(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }
}

impl Host for CgroupView<'_> {
    fn create(&mut self, name: String) -> R<Resource<Group>> {
        let r = self.group(CgroupCall::Create(name));
        self.answer("create", r)
    }

    fn open(&mut self, name: String) -> R<Resource<Group>> {
        let r = self.group(CgroupCall::Open(name));
        self.answer("open", r)
    }

    fn delete(&mut self, name: String) -> R<()> {
        let r = self.done(CgroupCall::Delete(name));
        self.answer("delete", r)
    }

    fn add_process(&mut self, group: Resource<Group>, pid: u32) -> R<()> {
        let r = self
            .name(&group)
            .and_then(|g| self.done(CgroupCall::AddProcess(g, pid)));
        self.answer("add-process", r)
    }

    fn remove_process(&mut self, group: Resource<Group>, pid: u32) -> R<()> {
        let r = self
            .name(&group)
            .and_then(|g| self.done(CgroupCall::RemoveProcess(g, pid)));
        self.answer("remove-process", r)
    }

    fn get_memory_limit(&mut self, group: Resource<Group>) -> R<Option<u64>> {
        let r = self
            .name(&group)
            .and_then(|g| self.limit(CgroupCall::MemoryMax(g)));
        self.answer("get-memory-limit", r)
    }

    fn set_memory_limit(&mut self, group: Resource<Group>, bytes: Option<u64>) -> R<()> {
        let r = self
            .name(&group)
            .and_then(|g| self.done(CgroupCall::SetMemoryMax(g, bytes)));
        self.answer("set-memory-limit", r)
    }

    fn get_cpu_limit(&mut self, group: Resource<Group>) -> R<CpuLimit> {
        let r = self
            .name(&group)
            .and_then(|g| match self.call(CgroupCall::CpuMax(g))? {
                CgroupReply::Cpu(quota, period) => Ok(CpuLimit { quota, period }),
                other => Err(unexpected(other)),
            });
        self.answer("get-cpu-limit", r)
    }

    fn set_cpu_limit(&mut self, group: Resource<Group>, limit: CpuLimit) -> R<()> {
        let r = self
            .name(&group)
            .and_then(|g| self.done(CgroupCall::SetCpuMax(g, limit.quota, limit.period)));
        self.answer("set-cpu-limit", r)
    }

    fn get_pids_limit(&mut self, group: Resource<Group>) -> R<Option<u64>> {
        let r = self
            .name(&group)
            .and_then(|g| self.limit(CgroupCall::PidsMax(g)));
        self.answer("get-pids-limit", r)
    }

    fn set_pids_limit(&mut self, group: Resource<Group>, max: Option<u64>) -> R<()> {
        let r = self
            .name(&group)
            .and_then(|g| self.done(CgroupCall::SetPidsMax(g, max)));
        self.answer("set-pids-limit", r)
    }
}

impl HostGroup for CgroupView<'_> {
    fn drop(&mut self, handle: Resource<Group>) -> wasmtime::Result<()> {
        self.handles.delete(handle)?;
        Ok(())
    }
}
