//! Builds the sample tools in tests/tools for wasm32-wasip2 with the same
//! toolchain as this build, and tells the library where they are.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let root = manifest
        .join("../..")
        .canonicalize()
        .expect("repository root");
    let tools = root.join("tests/tools");
    for watched in ["tests/tools", "sdk", "bridge/wit"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    // Two checkouts sharing one target directory share this crate's build
    // (cargo hashes a workspace member by its path inside the workspace),
    // and the paths watched above are the checkout that ran it last: the
    // Makefile names the checkout, so that building from another one runs
    // this again; and each checkout's tools build in a directory of their
    // own, whose sources are that checkout's.
    println!("cargo:rerun-if-env-changed=CLAWOS_CHECKOUT");
    let checkout = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        root.hash(&mut h);
        h.finish()
    };
    let target_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join(format!("target-{checkout:016x}"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&tools)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    // The outer build's flags and target are for the host; the tools build
    // for wasm32-wasip2 with their own profile.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("cannot run cargo to build the sample tools");
    assert!(
        status.success(),
        "building the sample tools in {} for wasm32-wasip2 failed ({status}); is the wasm32-wasip2 target installed (rust-toolchain.toml lists it)?",
        tools.display()
    );
    println!(
        "cargo:rustc-env=CLAWOS_TOOLS_DIR={}",
        target_dir.join("wasm32-wasip2/release").display()
    );
}
