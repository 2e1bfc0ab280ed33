//! The sample tools of tests/tools, built for wasm32-wasip2 by this crate's
//! build script: paths and bytes for the tests and benchmarks; and a real
//! PostgreSQL server for the network tests ([`postgres`]).

pub mod postgres;

use std::path::PathBuf;

/// Every sample tool.
pub const ALL: [&str; 9] = [
    "hello",
    "echo",
    "memgrow",
    "spinner",
    "exerciser",
    "misbehave",
    "probe",
    "hostio",
    "noop",
];

/// Where the built components are.
pub const DIR: &str = env!("CLAWOS_TOOLS_DIR");

/// The component file of tool `name`.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(DIR).join(format!("{name}.wasm"))
}

/// The component bytes of tool `name`.
pub fn bytes(name: &str) -> Vec<u8> {
    let p = path(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("sample tool {} is missing: {e}", p.display()))
}
