//! The store data of one tool instance, and the narrow view each WIT
//! interface gets of it.

use crate::config::DevicePolicy;
use crate::host::Handles;
use crate::host::cgroup::{CgroupState, CgroupView};
use crate::host::device::DeviceView;
use crate::host::filesystem::{FilesystemView, FsState};
use crate::host::logging::LogSink;
use crate::host::memory::{MemoryAccount, MemoryView, SharedRegions};
use crate::host::network::{NetState, NetworkView};
use crate::host::system::{Env, InstanceInfo, SystemView};
use std::sync::Arc;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Everything one instance owns. Dropped with its store when the run ends.
pub struct Instance {
    pub(crate) handles: Handles,
    pub(crate) account: MemoryAccount,
    pub(crate) wasi: WasiCtx,
    pub(crate) env: Env,
    pub(crate) log: LogSink,
    pub(crate) info: InstanceInfo,
    pub(crate) shared: Arc<SharedRegions>,
    /// What lies outside the instance's process (shared regions' memory).
    pub(crate) outside: Arc<dyn crate::outside::Outside>,
    pub(crate) fs: FsState,
    pub(crate) net: NetState,
    pub(crate) cg: CgroupState,
    pub(crate) devices: Arc<DevicePolicy>,
}

impl Instance {
    pub(crate) fn logging_view(&mut self) -> &mut LogSink {
        &mut self.log
    }

    pub(crate) fn system_view(&mut self) -> SystemView<'_> {
        SystemView {
            env: &mut self.env,
            info: &self.info,
        }
    }

    pub(crate) fn memory_view(&mut self) -> MemoryView<'_> {
        MemoryView {
            handles: &mut self.handles,
            account: &mut self.account,
            shared: &self.shared,
            outside: &*self.outside,
            tool: &self.info.tool,
        }
    }

    pub(crate) fn filesystem_view(&mut self) -> FilesystemView<'_> {
        FilesystemView {
            handles: &mut self.handles,
            fs: &mut self.fs,
        }
    }

    pub(crate) fn network_view(&mut self) -> NetworkView<'_> {
        NetworkView {
            handles: &mut self.handles,
            net: &mut self.net,
        }
    }

    pub(crate) fn cgroup_view(&mut self) -> CgroupView<'_> {
        CgroupView {
            handles: &mut self.handles,
            cg: &mut self.cg,
        }
    }

    pub(crate) fn device_view(&mut self) -> DeviceView<'_> {
        DeviceView {
            handles: &mut self.handles,
            policy: &self.devices,
            who: &self.info.tool,
        }
    }
}

impl WasiView for Instance {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.handles.table,
        }
    }
}
