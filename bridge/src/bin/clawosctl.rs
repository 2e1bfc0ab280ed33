//! `clawosctl`: the command-line client of clawos-wasm-daemon.

use clap::Parser;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(clawos_bridge::cli::main(clawos_bridge::cli::Cli::parse()))
}
