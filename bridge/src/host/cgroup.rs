//! `clawos:bridge/cgroup`: the instance's delegated cgroup subtree
//! ([`crate::cgroup::Delegation`]), created on the first call and removed
//! with the instance. Groups are handles, never paths.

use super::wit_cgroup::{CpuLimit, Host, HostGroup};
use super::{ErrorCode, Handles, refuse};
use crate::cgroup::{Delegation, Group};
use crate::config::CgroupPolicy;
use crate::error::Failure;
use std::sync::Arc;
use wasmtime::component::{HasData, Resource};

/// One instance's cgroup state.
#[derive(Debug)]
pub struct CgroupState {
    policy: Arc<CgroupPolicy>,
    instance: u64,
    delegation: Option<Delegation>,
    who: String,
}

impl CgroupState {
    /// State for instance `instance` of tool `who`; nothing is created yet.
    pub fn new(policy: Arc<CgroupPolicy>, instance: u64, who: String) -> CgroupState {
        CgroupState {
            policy,
            instance,
            delegation: None,
            who,
        }
    }

    fn delegation(&mut self) -> Result<&mut Delegation, Failure> {
        if self.delegation.is_none() {
            self.delegation = Some(Delegation::create(&self.policy, self.instance)?);
        }
        Ok(self.delegation.as_mut().expect("set above"))
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

impl CgroupView<'_> {
    fn answer<T>(&self, op: &str, r: Result<T, Failure>) -> R<T> {
        Ok(r.map_err(|f| refuse("cgroup", op, &self.cg.who, f)))
    }

    fn push(&mut self, g: Group) -> Result<Resource<Group>, Failure> {
        self.handles
            .push(g)
            .map_err(|code| Failure::new(code.into(), "handle limit reached"))
    }

    /// The group behind `handle` and the delegation.
    fn with<T>(
        &mut self,
        handle: &Resource<Group>,
        f: impl FnOnce(&Delegation, &Group) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let g = self
            .handles
            .table
            .get(handle)
            .map_err(|e| Failure::new(super::table_error(&e).into(), "unknown cgroup handle"))?
            .clone();
        f(self.cg.delegation()?, &g)
    }
}

impl Host for CgroupView<'_> {
    fn create(&mut self, name: String) -> R<Resource<Group>> {
        let r = self
            .cg
            .delegation()
            .and_then(|d| d.create_group(&name))
            .and_then(|g| self.push(g));
        self.answer("create", r)
    }

    fn open(&mut self, name: String) -> R<Resource<Group>> {
        let r = self
            .cg
            .delegation()
            .and_then(|d| d.open_group(&name))
            .and_then(|g| self.push(g));
        self.answer("open", r)
    }

    fn delete(&mut self, name: String) -> R<()> {
        let r = self.cg.delegation().and_then(|d| d.delete_group(&name));
        self.answer("delete", r)
    }

    fn add_process(&mut self, group: Resource<Group>, pid: u32) -> R<()> {
        let r = self.with(&group, |d, g| d.add_process(g, pid));
        self.answer("add-process", r)
    }

    fn remove_process(&mut self, group: Resource<Group>, pid: u32) -> R<()> {
        let r = self.with(&group, |d, g| d.remove_process(g, pid));
        self.answer("remove-process", r)
    }

    fn get_memory_limit(&mut self, group: Resource<Group>) -> R<Option<u64>> {
        let r = self.with(&group, |d, g| d.memory_max(g));
        self.answer("get-memory-limit", r)
    }

    fn set_memory_limit(&mut self, group: Resource<Group>, bytes: Option<u64>) -> R<()> {
        let r = self.with(&group, |d, g| d.set_memory_max(g, bytes));
        self.answer("set-memory-limit", r)
    }

    fn get_cpu_limit(&mut self, group: Resource<Group>) -> R<CpuLimit> {
        let r = self.with(&group, |d, g| {
            d.cpu_max(g)
                .map(|(quota, period)| CpuLimit { quota, period })
        });
        self.answer("get-cpu-limit", r)
    }

    fn set_cpu_limit(&mut self, group: Resource<Group>, limit: CpuLimit) -> R<()> {
        let r = self.with(&group, |d, g| d.set_cpu_max(g, limit.quota, limit.period));
        self.answer("set-cpu-limit", r)
    }

    fn get_pids_limit(&mut self, group: Resource<Group>) -> R<Option<u64>> {
        let r = self.with(&group, |d, g| d.pids_max(g));
        self.answer("get-pids-limit", r)
    }

    fn set_pids_limit(&mut self, group: Resource<Group>, max: Option<u64>) -> R<()> {
        let r = self.with(&group, |d, g| d.set_pids_max(g, max));
        self.answer("set-pids-limit", r)
    }
}

impl HostGroup for CgroupView<'_> {
    fn drop(&mut self, handle: Resource<Group>) -> wasmtime::Result<()> {
        self.handles.delete(handle)?;
        Ok(())
    }
}
