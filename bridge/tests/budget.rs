//! The CPU budget is a minimum measured on the wall clock. Epoch ticks only
//! say when to look at it: a burst of ticks, as from a ticker catching up
//! after its worker was throttled by `cpu.max`, cannot end a run early.

use clawos_bridge::config::Config;
use clawos_bridge::error::Code;
use clawos_bridge::runtime::{RunInput, Runtime};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[test]
fn a_burst_of_ticks_does_not_end_a_run_before_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        state_dir: dir.path().join("state"),
        ..Config::default()
    };
    config.sandbox.cpu_budget_ms = 300;
    let runtime = Runtime::new(&config).expect("runtime");
    std::fs::create_dir_all(config.clawfs_root().join("spinner")).unwrap();
    let cwasm = runtime
        .precompile(&clawos_tool_artifacts::bytes("spinner"))
        .unwrap();
    let artifact = dir.path().join("spinner.cwasm");
    std::fs::write(&artifact, cwasm).unwrap();
    let tool = runtime.load_artifact(&artifact).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let ticks = std::thread::spawn({
        let (engine, stop) = (runtime.engine().clone(), stop.clone());
        move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                engine.increment_epoch();
                n += 1;
                std::thread::yield_now();
            }
            n
        }
    });
    let out = runtime.run("spinner", &tool, RunInput::default());
    stop.store(true, Ordering::Relaxed);
    let extra_ticks = ticks.join().unwrap();

    assert_eq!(out.code, Code::WasmCpuDeadline, "{}", out.message);
    let spent = out.instantiate_us + out.run_us;
    assert!(
        spent >= 300_000,
        "stopped after {spent} us with {extra_ticks} extra ticks"
    );
    // A burst: ten times the ticks the clock itself gives over the budget
    // (how many more depends on how busy the machine's cores are).
    let clock_ticks = 300 / config.engine.epoch_tick_ms;
    assert!(
        extra_ticks > 10 * clock_ticks,
        "only {extra_ticks} extra ticks, against {clock_ticks} from the clock"
    );
}
