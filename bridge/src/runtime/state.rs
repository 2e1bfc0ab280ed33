//! The store data of one tool instance, and the narrow view each WIT
//! interface gets of it.

use crate::host::Handles;
use crate::host::logging::LogSink;
use crate::host::memory::{MemoryAccount, MemoryView, SharedRegions};
use crate::host::system::{Env, InstanceInfo, SystemView};
use crate::host::unavailable::UnavailableView;
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
            tool: &self.info.tool,
        }
    }

    pub(crate) fn unavailable_view(&mut self) -> UnavailableView<'_> {
        UnavailableView {
            handles: &mut self.handles,
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
