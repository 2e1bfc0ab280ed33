//! Host side of the WIT package `clawos:bridge` (bridge/wit): one `bindgen!`
//! call, one file per interface holding only its trait impls, and a narrow
//! view of the instance state per interface (as wasmtime-wasi's
//! `WasiCtxView`), so no interface can reach another's state.
//!
//! Guest-visible failures are `error-code` values; host bugs and sandbox
//! breaches (memory cap, deadline, `exit`) are traps ([`SandboxTrap`]).

pub mod cgroup;
pub mod device;
pub mod filesystem;
pub mod logging;
pub mod memory;
pub mod network;
pub mod system;
pub mod wasi_fs;

use crate::error::{Code, Failure};
use wasmtime::component::{HasData, Linker, ResourceTable};

mod generated {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "clawos:bridge/tool",
        imports: { default: trappable },
        with: {
            "clawos:bridge/memory.shared-region": crate::host::memory::Region,
            "clawos:bridge/filesystem.file": crate::host::filesystem::File,
            "clawos:bridge/filesystem.directory": crate::host::filesystem::Directory,
            "clawos:bridge/network.connection": crate::host::network::Connection,
            "clawos:bridge/cgroup.group": crate::cgroup::Group,
            "clawos:bridge/device.device": crate::host::device::Device,
        },
    });
}

pub use generated::clawos::bridge::types::ErrorCode;
pub use generated::clawos::bridge::{
    cgroup as wit_cgroup, device as wit_device, filesystem as wit_filesystem,
    logging as wit_logging, memory as wit_memory, network as wit_network, system as wit_system,
    types,
};
pub use generated::{Tool, ToolPre};

use crate::runtime::state::Instance;

/// A trap raised by a host function or the limiter; the runtime turns it into
/// the run's P1.7 code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxTrap {
    /// Linear memory would pass the instance's memory limit.
    #[error(
        "memory limit of {limit} bytes reached: linear memory would grow to {linear} bytes with {host} bytes of host regions"
    )]
    MemoryLimit {
        /// The instance's limit.
        limit: u64,
        /// Linear bytes the growth asked for.
        linear: u64,
        /// Host region bytes held.
        host: u64,
    },
    /// A table would grow past `max_table_elements`.
    #[error("table limit of {limit} elements reached: a table would grow to {desired}")]
    TableLimit {
        /// The limit.
        limit: u64,
        /// Elements asked for.
        desired: u64,
    },
    /// The CPU budget ran out inside a host call (`system.sleep`).
    #[error("cpu budget of {budget_ms} ms spent while sleeping")]
    Deadline {
        /// The budget.
        budget_ms: u64,
    },
    /// The tool called `system.exit`.
    #[error("tool exited with status {0}")]
    Exit(u8),
}

impl SandboxTrap {
    /// The run's code for this trap.
    pub fn code(&self) -> Code {
        match self {
            SandboxTrap::MemoryLimit { .. } => Code::WasmMemoryLimit,
            SandboxTrap::TableLimit { .. } => Code::WasmResourceLimit,
            SandboxTrap::Deadline { .. } => Code::WasmCpuDeadline,
            SandboxTrap::Exit(_) => Code::Success,
        }
    }
}

impl From<ErrorCode> for Code {
    fn from(e: ErrorCode) -> Code {
        match e {
            ErrorCode::Eagain => Code::Eagain,
            ErrorCode::Eio => Code::Eio,
            ErrorCode::Enoent => Code::Enoent,
            ErrorCode::Eperm => Code::Eperm,
            ErrorCode::Eproto => Code::Eproto,
            ErrorCode::Etimeout => Code::Etimeout,
            ErrorCode::Einternal => Code::Einternal,
            ErrorCode::Epanic => Code::Epanic,
            ErrorCode::WasmTrap => Code::WasmTrap,
            ErrorCode::WasmMemoryLimit => Code::WasmMemoryLimit,
            ErrorCode::WasmCpuDeadline => Code::WasmCpuDeadline,
            ErrorCode::WasmInvalidComponent => Code::WasmInvalidComponent,
            ErrorCode::WasmLinkError => Code::WasmLinkError,
            ErrorCode::WasmResourceLimit => Code::WasmResourceLimit,
            ErrorCode::PolicyDenied => Code::PolicyDenied,
            ErrorCode::QuotaExceeded => Code::QuotaExceeded,
            ErrorCode::ToolNotFound => Code::ToolNotFound,
            ErrorCode::SandboxSetupFailed => Code::SandboxSetupFailed,
            ErrorCode::InstanceKilled => Code::InstanceKilled,
            ErrorCode::InterfaceUnavailable => Code::InterfaceUnavailable,
            ErrorCode::InvalidHandle => Code::InvalidHandle,
            ErrorCode::ToolExists => Code::ToolExists,
            ErrorCode::InvalidArgument => Code::InvalidArgument,
            ErrorCode::UnsupportedVersion => Code::UnsupportedVersion,
        }
    }
}

impl TryFrom<Code> for ErrorCode {
    type Error = Code;
    /// Every code but SUCCESS, which is the `ok` arm of a WIT `result`.
    fn try_from(code: Code) -> Result<ErrorCode, Code> {
        Ok(match code {
            Code::Success => return Err(code),
            Code::Eagain => ErrorCode::Eagain,
            Code::Eio => ErrorCode::Eio,
            Code::Enoent => ErrorCode::Enoent,
            Code::Eperm => ErrorCode::Eperm,
            Code::Eproto => ErrorCode::Eproto,
            Code::Etimeout => ErrorCode::Etimeout,
            Code::Einternal => ErrorCode::Einternal,
            Code::Epanic => ErrorCode::Epanic,
            Code::WasmTrap => ErrorCode::WasmTrap,
            Code::WasmMemoryLimit => ErrorCode::WasmMemoryLimit,
            Code::WasmCpuDeadline => ErrorCode::WasmCpuDeadline,
            Code::WasmInvalidComponent => ErrorCode::WasmInvalidComponent,
            Code::WasmLinkError => ErrorCode::WasmLinkError,
            Code::WasmResourceLimit => ErrorCode::WasmResourceLimit,
            Code::PolicyDenied => ErrorCode::PolicyDenied,
            Code::QuotaExceeded => ErrorCode::QuotaExceeded,
            Code::ToolNotFound => ErrorCode::ToolNotFound,
            Code::SandboxSetupFailed => ErrorCode::SandboxSetupFailed,
            Code::InstanceKilled => ErrorCode::InstanceKilled,
            Code::InterfaceUnavailable => ErrorCode::InterfaceUnavailable,
            Code::InvalidHandle => ErrorCode::InvalidHandle,
            Code::ToolExists => ErrorCode::ToolExists,
            Code::InvalidArgument => ErrorCode::InvalidArgument,
            Code::UnsupportedVersion => ErrorCode::UnsupportedVersion,
        })
    }
}

/// The error code for a resource-table failure: a full table is a count
/// limit, anything else a handle the instance does not own.
pub fn table_error(err: &wasmtime::component::ResourceTableError) -> ErrorCode {
    match err {
        wasmtime::component::ResourceTableError::Full => ErrorCode::WasmResourceLimit,
        _ => ErrorCode::InvalidHandle,
    }
}

/// Turn a refused call into the code the tool gets, and log it: denials
/// by policy at warn (they are what an attacker's probing looks like),
/// internal errors at error, the rest at debug.
pub fn refuse(interface: &str, op: &str, tool: &str, f: Failure) -> ErrorCode {
    match f.code {
        Code::PolicyDenied | Code::Eperm => {
            tracing::warn!(tool, interface, op, code = %f.code, "denied: {}", f.message)
        }
        Code::Einternal => tracing::error!(tool, interface, op, "internal error: {}", f.message),
        _ => tracing::debug!(tool, interface, op, code = %f.code, "{}", f.message),
    }
    ErrorCode::try_from(f.code).unwrap_or(ErrorCode::Einternal)
}

/// Live handles an instance holds, against its `max_handles` limit.
#[derive(Debug)]
pub struct Handles {
    /// Every resource the instance holds.
    pub table: ResourceTable,
    live: u32,
    max: u32,
}

impl Handles {
    /// An empty table allowing `max` live handles.
    pub fn new(max: u32) -> Handles {
        Handles {
            table: ResourceTable::new(),
            live: 0,
            max,
        }
    }

    /// Push `value`, refusing with WASM_RESOURCE_LIMIT past the limit.
    pub fn push<T: Send + 'static>(
        &mut self,
        value: T,
    ) -> Result<wasmtime::component::Resource<T>, ErrorCode> {
        if self.live >= self.max {
            return Err(ErrorCode::WasmResourceLimit);
        }
        let handle = self.table.push(value).map_err(|e| table_error(&e))?;
        self.live += 1;
        Ok(handle)
    }

    /// Remove `handle`, returning its value.
    pub fn delete<T: 'static>(
        &mut self,
        handle: wasmtime::component::Resource<T>,
    ) -> Result<T, wasmtime::component::ResourceTableError> {
        let value = self.table.delete(handle)?;
        self.live -= 1;
        Ok(value)
    }

    /// Handles live now.
    pub fn live(&self) -> u32 {
        self.live
    }
}

/// Link every interface of the `tool` world, each with its narrow view, into `linker`.
pub fn add_to_linker(linker: &mut Linker<Instance>) -> wasmtime::Result<()> {
    generated::clawos::bridge::types::add_to_linker::<Instance, Unit>(linker, |_| Unit)?;
    generated::clawos::bridge::logging::add_to_linker::<Instance, logging::LoggingHost>(
        linker,
        |s| s.logging_view(),
    )?;
    generated::clawos::bridge::system::add_to_linker::<Instance, system::SystemHost>(
        linker,
        |s| s.system_view(),
    )?;
    generated::clawos::bridge::memory::add_to_linker::<Instance, memory::MemoryHost>(
        linker,
        |s| s.memory_view(),
    )?;
    generated::clawos::bridge::filesystem::add_to_linker::<Instance, filesystem::FilesystemHost>(
        linker,
        |s| s.filesystem_view(),
    )?;
    generated::clawos::bridge::network::add_to_linker::<Instance, network::NetworkHost>(
        linker,
        |s| s.network_view(),
    )?;
    generated::clawos::bridge::cgroup::add_to_linker::<Instance, cgroup::CgroupHost>(
        linker,
        |s| s.cgroup_view(),
    )?;
    generated::clawos::bridge::device::add_to_linker::<Instance, device::DeviceHost>(
        linker,
        |s| s.device_view(),
    )?;
    Ok(())
}

/// The view for the `types` interface, which has no functions.
pub struct Unit;

impl HasData for Unit {
    type Data<'a> = Unit;
}

impl types::Host for Unit {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_but_success_maps_to_the_wit_enum_and_back() {
        for code in Code::ALL {
            match ErrorCode::try_from(code) {
                Ok(wit) => assert_eq!(Code::from(wit), code),
                Err(c) => assert_eq!(c, Code::Success),
            }
        }
    }

    #[test]
    fn traps_map_to_their_codes() {
        assert_eq!(
            SandboxTrap::MemoryLimit {
                limit: 1,
                linear: 2,
                host: 0
            }
            .code(),
            Code::WasmMemoryLimit
        );
        assert_eq!(
            SandboxTrap::TableLimit {
                limit: 1,
                desired: 2
            }
            .code(),
            Code::WasmResourceLimit
        );
        assert_eq!(
            SandboxTrap::Deadline { budget_ms: 1 }.code(),
            Code::WasmCpuDeadline
        );
        assert_eq!(SandboxTrap::Exit(3).code(), Code::Success);
    }

    #[test]
    fn forged_and_stale_handles_are_refused_by_the_table() {
        use wasmtime::component::Resource;
        let mut handles = Handles::new(2);
        let a = handles.push(7u32).unwrap();
        let rep = a.rep();
        // A forged handle: an index the instance was never given.
        let forged: Resource<u32> = Resource::new_own(rep + 100);
        let err = handles.table.get(&forged).unwrap_err();
        assert_eq!(table_error(&err), ErrorCode::InvalidHandle);
        // A stale handle: deleted, then used again.
        assert_eq!(handles.delete(a).unwrap(), 7);
        let stale: Resource<u32> = Resource::new_own(rep);
        let err = handles.table.get(&stale).unwrap_err();
        assert_eq!(table_error(&err), ErrorCode::InvalidHandle);
        // A handle of the wrong kind.
        let b = handles.push(String::from("x")).unwrap();
        let wrong: Resource<u32> = Resource::new_own(b.rep());
        let err = handles.table.get(&wrong).unwrap_err();
        assert_eq!(table_error(&err), ErrorCode::InvalidHandle);
    }

    #[test]
    fn handle_limit_is_enforced() {
        let mut handles = Handles::new(2);
        let a = handles.push(1u8).unwrap();
        handles.push(2u8).unwrap();
        assert_eq!(handles.push(3u8).unwrap_err(), ErrorCode::WasmResourceLimit);
        handles.delete(a).unwrap();
        assert_eq!(handles.live(), 1);
        handles.push(4u8).unwrap();
    }
}
