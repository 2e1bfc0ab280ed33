//! Feeds arbitrary UTF-8 text to the operator's configuration parsers
//! (`clawos_bridge::config`): `Config::parse` (the daemon's TOML file) and
//! `InstanceLimits::parse` (the P1.5 limits file). Neither may panic; a
//! config that parses passes `validate` again and yields its frame limit,
//! its remote address and its wasmtime configuration without a panic. Note:
//! `Config::parse` reads the file named by `limits_file` (missing means the
//! built-in limits), so an input naming a real file makes the run read it.
#![no_main]

use clawos_bridge::config::{Config, InstanceLimits};
use clawos_bridge::runtime::engine_config;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/fuzz/daemon.toml");
    if let Ok(config) = Config::parse(text, path) {
        config.validate().expect("a parsed config validates again");
        let _ = config.max_frame_bytes();
        let _ = config.clawfs_root();
        let _ = config.remote.address();
        let _ = engine_config(&config);
    }
    let _ = InstanceLimits::parse(text, Path::new("/fuzz/limits.toml"));
});
