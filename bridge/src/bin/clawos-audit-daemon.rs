//! The test-only audit build of `clawos-wasm-daemon` (`make seccomp-audit`):
//! the same source, compiled as a second binary whose seccomp filters log
//! where the daemon's would kill (`CARGO_BIN_NAME` tells them apart). Never
//! in the image.

#[path = "clawos-wasm-daemon.rs"]
mod daemon;

fn main() -> anyhow::Result<()> {
    daemon::main()
}
