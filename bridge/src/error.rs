//! P1.7 error codes: the one numeric vocabulary shared by tools (the WIT
//! `error-code` enum), the IPC protocol and `clawosctl`'s exit status.
//! `docs/error-codes.md` is the table; [`Code::ALL`] is the same table in Rust
//! and a test checks the two agree.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A P1.7 code. The discriminant is the wire value.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(into = "u16", try_from = "u16")]
#[repr(u16)]
pub enum Code {
    /// The request or run succeeded.
    #[default]
    Success = 0,
    /// Temporarily unavailable (a queue or pool is full); retry later.
    Eagain = 1,
    /// The host's I/O failed.
    Eio = 2,
    /// No such file, name, variable or entry.
    Enoent = 3,
    /// The operation is not permitted for this caller.
    Eperm = 4,
    /// Malformed request or frame.
    Eproto = 5,
    /// The caller's deadline passed.
    Etimeout = 6,
    /// A bug in the bridge; always logged.
    Einternal = 7,
    /// The tool (or a host function) panicked.
    Epanic = 8,
    /// The tool trapped (other than `unreachable`, which is [`Code::Epanic`]).
    WasmTrap = 100,
    /// The instance's memory limit (linear plus host regions) was reached.
    WasmMemoryLimit = 101,
    /// The instance's CPU budget (epoch deadline) was spent.
    WasmCpuDeadline = 102,
    /// The bytes are not a valid component for this engine.
    WasmInvalidComponent = 103,
    /// The component imports something the bridge does not provide.
    WasmLinkError = 104,
    /// A table, instance, handle or other sandbox count limit was reached.
    WasmResourceLimit = 105,
    /// The bridge's policy forbids this.
    PolicyDenied = 200,
    /// A per-instance quota (bytes, handles, entries, log lines) is spent.
    QuotaExceeded = 201,
    /// No tool by that name is installed.
    ToolNotFound = 202,
    /// A sandbox layer could not be set up.
    SandboxSetupFailed = 203,
    /// The instance was killed (OOM, daemon shutdown, kill request).
    InstanceKilled = 204,
    /// The interface is not available in this build of the bridge.
    InterfaceUnavailable = 205,
    /// The handle is unknown, stale or of the wrong kind.
    InvalidHandle = 206,
    /// A tool by that name is already installed.
    ToolExists = 207,
    /// An argument is out of range or badly formed.
    InvalidArgument = 208,
    /// The peer speaks an IPC protocol version this daemon does not.
    UnsupportedVersion = 209,
}

impl Code {
    /// Every code, in wire order.
    pub const ALL: [Code; 25] = [
        Code::Success,
        Code::Eagain,
        Code::Eio,
        Code::Enoent,
        Code::Eperm,
        Code::Eproto,
        Code::Etimeout,
        Code::Einternal,
        Code::Epanic,
        Code::WasmTrap,
        Code::WasmMemoryLimit,
        Code::WasmCpuDeadline,
        Code::WasmInvalidComponent,
        Code::WasmLinkError,
        Code::WasmResourceLimit,
        Code::PolicyDenied,
        Code::QuotaExceeded,
        Code::ToolNotFound,
        Code::SandboxSetupFailed,
        Code::InstanceKilled,
        Code::InterfaceUnavailable,
        Code::InvalidHandle,
        Code::ToolExists,
        Code::InvalidArgument,
        Code::UnsupportedVersion,
    ];

    /// The wire value.
    pub fn value(self) -> u16 {
        self as u16
    }

    /// The code with wire value `value`, if there is one.
    pub fn from_value(value: u16) -> Option<Code> {
        Code::ALL.iter().copied().find(|c| c.value() == value)
    }

    /// The symbolic name used in logs, docs and `clawosctl` output.
    pub fn name(self) -> &'static str {
        match self {
            Code::Success => "SUCCESS",
            Code::Eagain => "EAGAIN",
            Code::Eio => "EIO",
            Code::Enoent => "ENOENT",
            Code::Eperm => "EPERM",
            Code::Eproto => "EPROTO",
            Code::Etimeout => "ETIMEOUT",
            Code::Einternal => "EINTERNAL",
            Code::Epanic => "EPANIC",
            Code::WasmTrap => "WASM_TRAP",
            Code::WasmMemoryLimit => "WASM_MEMORY_LIMIT",
            Code::WasmCpuDeadline => "WASM_CPU_DEADLINE",
            Code::WasmInvalidComponent => "WASM_INVALID_COMPONENT",
            Code::WasmLinkError => "WASM_LINK_ERROR",
            Code::WasmResourceLimit => "WASM_RESOURCE_LIMIT",
            Code::PolicyDenied => "POLICY_DENIED",
            Code::QuotaExceeded => "QUOTA_EXCEEDED",
            Code::ToolNotFound => "TOOL_NOT_FOUND",
            Code::SandboxSetupFailed => "SANDBOX_SETUP_FAILED",
            Code::InstanceKilled => "INSTANCE_KILLED",
            Code::InterfaceUnavailable => "INTERFACE_UNAVAILABLE",
            Code::InvalidHandle => "INVALID_HANDLE",
            Code::ToolExists => "TOOL_EXISTS",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::UnsupportedVersion => "UNSUPPORTED_VERSION",
        }
    }

    /// `clawosctl`'s exit status for this code: every wire value fits in a
    /// byte, so the status is the value itself.
    pub fn exit_status(self) -> u8 {
        u8::try_from(self.value()).expect("every P1.7 value is below 256")
    }

    /// The code for an I/O error, by errno where there is one.
    pub fn from_io(err: &std::io::Error) -> Code {
        use std::io::ErrorKind as K;
        if let Some(errno) = err.raw_os_error() {
            let e = rustix::io::Errno::from_raw_os_error(errno);
            return match e {
                rustix::io::Errno::AGAIN | rustix::io::Errno::INTR => Code::Eagain,
                rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR => Code::Enoent,
                rustix::io::Errno::PERM | rustix::io::Errno::ACCESS | rustix::io::Errno::ROFS => {
                    Code::Eperm
                }
                rustix::io::Errno::PROTO | rustix::io::Errno::BADMSG => Code::Eproto,
                rustix::io::Errno::TIMEDOUT => Code::Etimeout,
                rustix::io::Errno::NOSPC
                | rustix::io::Errno::DQUOT
                | rustix::io::Errno::MFILE
                | rustix::io::Errno::NFILE => Code::QuotaExceeded,
                rustix::io::Errno::INVAL
                | rustix::io::Errno::NAMETOOLONG
                | rustix::io::Errno::EXIST
                | rustix::io::Errno::NOTEMPTY
                | rustix::io::Errno::ISDIR => Code::InvalidArgument,
                rustix::io::Errno::BADF => Code::InvalidHandle,
                _ => Code::Eio,
            };
        }
        match err.kind() {
            K::WouldBlock | K::Interrupted => Code::Eagain,
            K::NotFound => Code::Enoent,
            K::PermissionDenied | K::ReadOnlyFilesystem => Code::Eperm,
            K::InvalidData | K::UnexpectedEof => Code::Eproto,
            K::TimedOut => Code::Etimeout,
            K::InvalidInput | K::AlreadyExists | K::DirectoryNotEmpty | K::IsADirectory => {
                Code::InvalidArgument
            }
            K::StorageFull | K::QuotaExceeded | K::OutOfMemory => Code::QuotaExceeded,
            _ => Code::Eio,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.value())
    }
}

impl From<Code> for u16 {
    fn from(code: Code) -> u16 {
        code.value()
    }
}

impl TryFrom<u16> for Code {
    type Error = String;
    fn try_from(value: u16) -> Result<Code, String> {
        Code::from_value(value).ok_or_else(|| format!("{value} is not a P1.7 code"))
    }
}

/// An error that crosses to a tool or a client: a code and a message naming
/// what was involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Failure {
    /// The P1.7 code.
    pub code: Code,
    /// Lower-case, names the path, tool, field or limit involved.
    pub message: String,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// An I/O failure: the code from the errno and `context` before the cause.
    pub fn io(context: impl fmt::Display, err: &std::io::Error) -> Failure {
        Failure::new(Code::from_io(err), format!("{context}: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_are_the_p17_table() {
        let expected: &[(u16, &str)] = &[
            (0, "SUCCESS"),
            (1, "EAGAIN"),
            (2, "EIO"),
            (3, "ENOENT"),
            (4, "EPERM"),
            (5, "EPROTO"),
            (6, "ETIMEOUT"),
            (7, "EINTERNAL"),
            (8, "EPANIC"),
            (100, "WASM_TRAP"),
            (101, "WASM_MEMORY_LIMIT"),
            (102, "WASM_CPU_DEADLINE"),
            (103, "WASM_INVALID_COMPONENT"),
            (104, "WASM_LINK_ERROR"),
            (105, "WASM_RESOURCE_LIMIT"),
            (200, "POLICY_DENIED"),
            (201, "QUOTA_EXCEEDED"),
            (202, "TOOL_NOT_FOUND"),
            (203, "SANDBOX_SETUP_FAILED"),
            (204, "INSTANCE_KILLED"),
            (205, "INTERFACE_UNAVAILABLE"),
            (206, "INVALID_HANDLE"),
            (207, "TOOL_EXISTS"),
            (208, "INVALID_ARGUMENT"),
            (209, "UNSUPPORTED_VERSION"),
        ];
        let got: Vec<(u16, &str)> = Code::ALL.iter().map(|c| (c.value(), c.name())).collect();
        assert_eq!(got, expected);
        for code in Code::ALL {
            assert_eq!(Code::from_value(code.value()), Some(code));
            assert_eq!(u16::from(code.exit_status()), code.value());
        }
        assert_eq!(Code::from_value(9), None);
        assert_eq!(Code::from_value(106), None);
        assert_eq!(Code::from_value(210), None);
    }

    #[test]
    fn docs_table_lists_every_code() {
        let doc = include_str!("../../docs/error-codes.md");
        for code in Code::ALL {
            let row = format!("| {} | `{}` |", code.value(), code.name());
            assert!(
                doc.contains(&row),
                "docs/error-codes.md lacks the row starting {row:?}"
            );
        }
    }

    #[test]
    fn io_errors_map_by_errno() {
        let cases = [
            (rustix::io::Errno::AGAIN, Code::Eagain),
            (rustix::io::Errno::NOENT, Code::Enoent),
            (rustix::io::Errno::NOTDIR, Code::Enoent),
            (rustix::io::Errno::PERM, Code::Eperm),
            (rustix::io::Errno::ACCESS, Code::Eperm),
            (rustix::io::Errno::ROFS, Code::Eperm),
            (rustix::io::Errno::PROTO, Code::Eproto),
            (rustix::io::Errno::TIMEDOUT, Code::Etimeout),
            (rustix::io::Errno::NOSPC, Code::QuotaExceeded),
            (rustix::io::Errno::MFILE, Code::QuotaExceeded),
            (rustix::io::Errno::INVAL, Code::InvalidArgument),
            (rustix::io::Errno::BADF, Code::InvalidHandle),
            (rustix::io::Errno::IO, Code::Eio),
            (rustix::io::Errno::XDEV, Code::Eio),
        ];
        for (errno, code) in cases {
            let err = std::io::Error::from_raw_os_error(errno.raw_os_error());
            assert_eq!(Code::from_io(&err), code, "{errno:?}");
        }
    }

    #[test]
    fn io_errors_without_errno_map_by_kind() {
        use std::io::{Error, ErrorKind as K};
        let cases = [
            (K::NotFound, Code::Enoent),
            (K::PermissionDenied, Code::Eperm),
            (K::UnexpectedEof, Code::Eproto),
            (K::InvalidData, Code::Eproto),
            (K::TimedOut, Code::Etimeout),
            (K::WouldBlock, Code::Eagain),
            (K::InvalidInput, Code::InvalidArgument),
            (K::Other, Code::Eio),
        ];
        for (kind, code) in cases {
            assert_eq!(Code::from_io(&Error::new(kind, "x")), code, "{kind:?}");
        }
    }

    #[test]
    fn serde_uses_the_wire_value() {
        let bytes = postcard::to_allocvec(&Code::WasmCpuDeadline).unwrap();
        let back: u16 = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, 102);
        let bad = postcard::to_allocvec(&150u16).unwrap();
        assert!(postcard::from_bytes::<Code>(&bad).is_err());
    }
}
