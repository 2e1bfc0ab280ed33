//! What a run produced, and the P1.7 code for every way a run can end:
//! sandbox traps raised by the bridge, wasmtime traps, WASI exit, handle
//! faults caught by the component ABI, and count limits.

use crate::error::Code;
use crate::host::SandboxTrap;
use crate::host::logging::LogLine;
use serde::{Deserialize, Serialize};
use wasmtime::Trap;

/// The result of one run, as the daemon returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOutcome {
    /// SUCCESS, or why the run failed.
    pub code: Code,
    /// What happened, naming the limit or trap involved; empty on success.
    pub message: String,
    /// The status the tool passed to `system.exit` or WASI `exit`.
    pub exit_status: Option<u8>,
    /// The `ok` value of `run`.
    pub output: Vec<u8>,
    /// What the tool wrote to WASI stdout.
    pub stdout: Vec<u8>,
    /// What the tool wrote to WASI stderr.
    pub stderr: Vec<u8>,
    /// Log lines kept for the response.
    pub logs: Vec<LogLine>,
    /// Log lines dropped by the rate or byte limit.
    pub logs_dropped: u64,
    /// The instance's id (as in the daemon's `[WASM]` log lines).
    pub instance_id: u64,
    /// Time to instantiate, microseconds.
    pub instantiate_us: u64,
    /// Time in `run`, microseconds.
    pub run_us: u64,
    /// Most linear plus host memory held at once, bytes.
    pub memory_peak: u64,
}

/// How a run ended, when it did not return from `run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// The run's code.
    pub code: Code,
    /// Set when the tool asked to exit.
    pub exit_status: Option<u8>,
    /// What happened.
    pub message: String,
}

/// How the component ABI (wasmtime 50, `vm/component/handle_table.rs` and
/// `resources.rs`) reports a handle the tool may not use: never given or
/// already dropped, a handle of another resource type (a file used as a
/// memory region), a borrow where an own is needed, an owned resource
/// dropped while lent. Each is INVALID_HANDLE.
const HANDLE_FAULTS: [&str; 5] = [
    "unknown handle index",
    "used with the wrong type",
    "is not a resource",
    "is not an own resource",
    "cannot remove owned resource while borrowed",
];

/// Classify `err`, raised while instantiating or running a tool.
/// `deadline` is the code an epoch interrupt means for this run:
/// WASM_CPU_DEADLINE, or ETIMEOUT when the client's own timeout was shorter.
pub fn classify(err: &wasmtime::Error, deadline: Code) -> Ending {
    // The error chain without wasmtime's multi-line wasm backtrace.
    let message = err
        .chain()
        .map(ToString::to_string)
        .filter(|e| !e.starts_with("error while executing at wasm backtrace"))
        .collect::<Vec<_>>()
        .join(": ");
    let ending = |code| Ending {
        code,
        exit_status: None,
        message: message.clone(),
    };
    if let Some(trap) = err.downcast_ref::<SandboxTrap>() {
        return match trap {
            SandboxTrap::Exit(status) => Ending {
                code: Code::Success,
                exit_status: Some(*status),
                message: String::new(),
            },
            SandboxTrap::Deadline { .. } => ending(deadline),
            other => ending(other.code()),
        };
    }
    if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        let status = u8::try_from(exit.0).unwrap_or(u8::MAX);
        return Ending {
            code: Code::Success,
            exit_status: Some(status),
            message: String::new(),
        };
    }
    if let Some(trap) = err.downcast_ref::<Trap>() {
        return ending(match trap {
            Trap::Interrupt | Trap::OutOfFuel => deadline,
            Trap::UnreachableCodeReached => Code::Epanic,
            Trap::AllocationTooLarge => Code::WasmMemoryLimit,
            _ => Code::WasmTrap,
        });
    }
    if err
        .downcast_ref::<wasmtime::component::ResourceTableError>()
        .is_some()
    {
        return ending(Code::InvalidHandle);
    }
    // The component ABI checks handles before any host code sees them and
    // reports a forged or stale one as "unknown handle index N"; count limits
    // are reported as "resource limit exceeded: ..." (wasmtime 50 wording,
    // pinned by the tests in bridge/tests).
    let root = err.root_cause().to_string();
    if HANDLE_FAULTS.iter().any(|f| root.contains(f)) {
        return ending(Code::InvalidHandle);
    }
    if root.starts_with("resource limit exceeded")
        || root.starts_with("cannot allocate another handle")
        || root.starts_with("cannot lend resource")
    {
        return ending(Code::WasmResourceLimit);
    }
    if root.contains("concurrent") && root.contains("limit") {
        return ending(Code::Eagain);
    }
    ending(Code::WasmTrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_traps() {
        let e = wasmtime::Error::new(SandboxTrap::MemoryLimit {
            limit: 1,
            linear: 2,
            host: 0,
        });
        assert_eq!(
            classify(&e, Code::WasmCpuDeadline).code,
            Code::WasmMemoryLimit
        );
        let e = wasmtime::Error::new(SandboxTrap::Deadline { budget_ms: 5 });
        assert_eq!(classify(&e, Code::Etimeout).code, Code::Etimeout);
        let e = wasmtime::Error::new(SandboxTrap::Exit(7));
        let end = classify(&e, Code::WasmCpuDeadline);
        assert_eq!((end.code, end.exit_status), (Code::Success, Some(7)));
    }

    #[test]
    fn wasi_exit() {
        let e = wasmtime::Error::new(wasmtime_wasi::I32Exit(1));
        let end = classify(&e, Code::WasmCpuDeadline);
        assert_eq!((end.code, end.exit_status), (Code::Success, Some(1)));
    }

    #[test]
    fn every_handle_fault_of_the_component_abi_is_206() {
        for fault in [
            "unknown handle index 16777200",
            "handle index 1 used with the wrong type, expected guest-defined but found host-defined",
            "index 3 is not a resource",
            "index 3 is not an own resource",
            "cannot remove owned resource while borrowed",
        ] {
            let e = wasmtime::Error::msg(fault);
            assert_eq!(
                classify(&e, Code::WasmCpuDeadline).code,
                Code::InvalidHandle,
                "{fault}"
            );
        }
        for limit in [
            "cannot allocate another handle: store handle limit exceeded",
            "cannot lend resource: too many active lends",
        ] {
            let e = wasmtime::Error::msg(limit);
            assert_eq!(
                classify(&e, Code::WasmCpuDeadline).code,
                Code::WasmResourceLimit,
                "{limit}"
            );
        }
    }

    #[test]
    fn wasmtime_traps() {
        let cases = [
            (Trap::Interrupt, Code::WasmCpuDeadline),
            (Trap::UnreachableCodeReached, Code::Epanic),
            (Trap::MemoryOutOfBounds, Code::WasmTrap),
            (Trap::IntegerDivisionByZero, Code::WasmTrap),
            (Trap::StackOverflow, Code::WasmTrap),
        ];
        for (trap, code) in cases {
            let e = wasmtime::Error::new(trap);
            assert_eq!(classify(&e, Code::WasmCpuDeadline).code, code, "{trap:?}");
        }
        let e = wasmtime::Error::new(Trap::Interrupt);
        assert_eq!(classify(&e, Code::Etimeout).code, Code::Etimeout);
    }

    #[test]
    fn messages_from_the_component_abi() {
        let e = wasmtime::format_err!("unknown handle index 12345");
        assert_eq!(
            classify(&e, Code::WasmCpuDeadline).code,
            Code::InvalidHandle
        );
        let e = wasmtime::format_err!("resource limit exceeded: instance count too high at 33");
        assert_eq!(
            classify(&e, Code::WasmCpuDeadline).code,
            Code::WasmResourceLimit
        );
        let e = wasmtime::Error::new(wasmtime::component::ResourceTableError::NotPresent);
        assert_eq!(
            classify(&e, Code::WasmCpuDeadline).code,
            Code::InvalidHandle
        );
    }
}
