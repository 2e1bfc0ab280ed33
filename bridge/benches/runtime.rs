//! `cargo bench --bench runtime` (or `make bench`): the bridge's costs next
//! to bare wasmtime on the same engine configuration, in the same run.
//!
//! Parts 1 and 2 are the engine's and the host interface's cost alone,
//! measured in this process: no worker, no cgroup, no seccomp, no monitors.
//! They are not what a user's run costs; part 3 and the guest benchmark
//! (`tests/e2e/benches/guest.rs`) are.
//!
//! 1. instantiate + call `run` of a precompiled tool (pooling allocator):
//!    the bridge's `Runtime::run` (store, limits, WASI context, log capture,
//!    outcome) against a bare `Store<()>` and the same typed call;
//! 2. one WIT host call round trip (`system.get-pid`), from the difference
//!    between runs making N calls and none, against a bare `func_wrap`;
//! 3. the sandboxed path on this development host: the daemon with
//!    `--dev-allow-missing-layers` (each run in its own worker, in new
//!    namespaces, under seccomp; a development host has no cgroup v2,
//!    AppArmor, BPF LSM or project quotas, so those layers are off here and
//!    on in the guest benchmark): `clawosctl run hello` as a process, and
//!    the same request from an in-process client.
//!
//! Prints median and p99 per case and the ratio to the bare figure.

#![allow(unsafe_code)]

use clawos_bridge::config::Config;
use clawos_bridge::ipc::client::Client;
use clawos_bridge::ipc::proto::{Request, RunRequest};
use clawos_bridge::runtime::{RunInput, Runtime};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wasmtime::Store;
use wasmtime::component::{Component, Linker};

fn stats(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort_unstable();
    let p = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (p(0.5), p(0.99))
}

fn time<F: FnMut()>(iterations: usize, mut f: F) -> Vec<Duration> {
    for _ in 0..iterations / 10 {
        f();
    }
    (0..iterations)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

fn row(case: &str, (median, p99): (Duration, Duration), bare: Option<Duration>) {
    let ratio = bare.map_or(String::new(), |b| {
        format!("{:.2}x bare", median.as_secs_f64() / b.as_secs_f64())
    });
    println!(
        "{case:<52} median {:>10.1?}  p99 {:>10.1?}  {ratio}",
        median, p99
    );
}

fn precompiled(runtime: &Runtime, dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let cwasm = runtime
        .precompile(&clawos_tool_artifacts::bytes(name))
        .expect("precompile");
    let path = dir.join(format!("{name}.cwasm"));
    std::fs::write(&path, cwasm).unwrap();
    path
}

fn bare_component(runtime: &Runtime, path: &std::path::Path) -> Component {
    // SAFETY: the artifact was written just above by `precompile` of this engine.
    unsafe { Component::deserialize_file(runtime.engine(), path) }.expect("deserialize")
}

fn bare_store(runtime: &Runtime) -> Store<()> {
    let mut store = Store::new(runtime.engine(), ());
    store.set_epoch_deadline(u64::MAX / 2);
    store
}

fn main() {
    let iterations: usize = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    if std::env::var_os("BENCH_ONLY").is_some() {
        // Under a profiler: one pooling-allocator slot, so that its address
        // space reservation fits (valgrind refuses the default 8 slots').
        config.ipc.max_concurrent_runs = 1;
    }
    let runtime = Runtime::new(&config).expect("runtime");
    println!(
        "clawos bridge benchmarks ({iterations} iterations; wasmtime 50, pooling allocator, portable x86-64-v2 code)\n\
         parts 1-2: in-process engine and host-call cost (no worker, cgroup, seccomp or monitors)\n"
    );

    // 1. instantiate + call of a precompiled tool.
    let spinner = precompiled(&runtime, dir.path(), "spinner");
    let ours = runtime.load_artifact(&spinner).unwrap();
    let input = RunInput {
        args: vec!["1".into()],
        ..RunInput::default()
    };
    let component = bare_component(&runtime, &spinner);
    let mut linker = Linker::<()>::new(runtime.engine());
    linker.define_unknown_imports_as_traps(&component).unwrap();
    let bare =
        clawos_bridge::host::ToolPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
    let args = vec!["1".to_string()];
    let bare_stats = stats(time(iterations, || {
        let mut store = bare_store(&runtime);
        let tool = bare.instantiate(&mut store).unwrap();
        tool.call_run(&mut store, &args, &[]).unwrap().unwrap();
    }));
    let ours_stats = stats(time(iterations, || {
        let out = runtime.run("spinner", &ours, input.clone());
        assert_eq!(
            out.code,
            clawos_bridge::error::Code::Success,
            "{}",
            out.message
        );
    }));
    row(
        "in-process instantiate+call, bare wasmtime",
        bare_stats,
        None,
    );
    row(
        "in-process instantiate+call, Runtime::run",
        ours_stats,
        Some(bare_stats.0),
    );

    // `BENCH_ONLY=instantiate`: part 1 alone, for a profiler
    // (`valgrind --tool=callgrind`, docs/benchmarks.md).
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "instantiate") {
        return;
    }

    // 2. host call round trip.
    let calls: u32 = 200_000;
    let exerciser = precompiled(&runtime, dir.path(), "exerciser");
    let ours = runtime.load_artifact(&exerciser).unwrap();
    let component = bare_component(&runtime, &exerciser);
    let mut linker = Linker::<()>::new(runtime.engine());
    linker
        .instance("clawos:bridge/system@0.1.0")
        .unwrap()
        .func_wrap("get-pid", |_, ()| Ok((std::process::id(),)))
        .unwrap();
    linker.define_unknown_imports_as_traps(&component).unwrap();
    let bare =
        clawos_bridge::host::ToolPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
    let per_call = |f: &mut dyn FnMut(u32)| {
        let reps = 15;
        let zero = stats(time(reps, || f(0))).0;
        let many = stats(time(reps, || f(calls))).0;
        (many.saturating_sub(zero)).as_nanos() as f64 / f64::from(calls)
    };
    let bare_ns = per_call(&mut |n| {
        let mut store = bare_store(&runtime);
        let tool = bare.instantiate(&mut store).unwrap();
        tool.call_run(&mut store, &["calls".into(), n.to_string()], &[])
            .unwrap()
            .unwrap();
    });
    let ours_ns = per_call(&mut |n| {
        let out = runtime.run(
            "exerciser",
            &ours,
            RunInput {
                args: vec!["calls".into(), n.to_string()],
                ..RunInput::default()
            },
        );
        assert_eq!(
            out.code,
            clawos_bridge::error::Code::Success,
            "{}",
            out.message
        );
    });
    println!(
        "{:<52} {bare_ns:>8.1} ns",
        "in-process host call, bare func_wrap"
    );
    println!(
        "{:<52} {ours_ns:>8.1} ns  {:.2}x bare",
        "in-process host call, system.get-pid",
        ours_ns / bare_ns
    );

    // 3. end to end over the socket.
    let socket = dir.path().join("bench.sock");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_clawos-wasm-daemon"))
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        // A development host lacks cgroup v2, AppArmor, BPF LSM and project
        // quotas; each run still gets its own worker, namespaces and
        // seccomp filters.
        .arg("--dev-allow-missing-layers")
        .stderr(Stdio::piped())
        .spawn()
        .expect("daemon");
    let mut lines = BufReader::new(daemon.stderr.take().unwrap()).lines();
    let ready = lines.find(|l| {
        l.as_ref()
            .is_ok_and(|l| l.contains(clawos_bridge::daemon::READY_MARKER))
    });
    ready
        .expect("daemon exited before it was ready")
        .expect("daemon log");
    std::thread::spawn(move || lines.for_each(drop));
    let hello = clawos_tool_artifacts::path("hello");
    let ctl = env!("CARGO_BIN_EXE_clawosctl");
    let ok = Command::new(ctl)
        .arg("--socket")
        .arg(&socket)
        .args(["install", "hello"])
        .arg(&hello)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let request = Request::Run(RunRequest {
        name: "hello".into(),
        args: vec![],
        input: vec![],
        env: vec![],
        timeout_ms: None,
    });
    let mut client = Client::connect(&socket).unwrap();
    let in_process = stats(time(iterations, || {
        assert_eq!(
            client.request(&request).unwrap().code,
            clawos_bridge::error::Code::Success
        );
    }));
    let spawned = stats(time(iterations.min(300), || {
        let out = Command::new(ctl)
            .arg("--socket")
            .arg(&socket)
            .args(["run", "hello"])
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"hello, world\n");
    }));
    println!(
        "\npart 3: the sandboxed path on this host (a worker per run; no cgroup v2, AppArmor, BPF LSM or quotas here)"
    );
    row("sandboxed run hello, socket round trip", in_process, None);
    row("sandboxed `clawosctl run hello` (a process)", spawned, None);
    let pid = rustix::process::Pid::from_raw(daemon.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    daemon.wait().unwrap();
}
