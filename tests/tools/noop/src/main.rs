//! Does nothing and succeeds: the tool counterpart of `/bin/true`, for the
//! guest benchmark. It exports the tool world's `run` and, being a binary,
//! WASI's `wasi:cli/run` too, and imports nothing of the bridge, so the
//! same `.cwasm` starts in the bridge and under `wasmtime run`.

use clawos_tool::{Guest, export, types::ErrorCode};

struct Noop;

impl Guest for Noop {
    fn run(_args: Vec<String>, _input: Vec<u8>) -> Result<Vec<u8>, ErrorCode> {
        Ok(Vec::new())
    }
}

export!(Noop);

fn main() {}
