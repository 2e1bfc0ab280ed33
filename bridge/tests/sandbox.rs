//! Each sample tool through the real daemon over its socket, and each WASM
//! sandbox limit (layer 5a) with its exact P1.7 code, the daemon still
//! serving afterwards.

mod common;

use clawos_bridge::error::Code;
use clawos_bridge::ipc::proto::RunRequest;
use common::TestDaemon;

fn req(name: &str, args: &[&str]) -> RunRequest {
    RunRequest {
        name: name.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        input: vec![],
        env: vec![],
        timeout_ms: None,
    }
}

#[test]
fn hello_greets_and_logs() {
    let d = TestDaemon::start();
    d.install_ok("hello");
    let (r, out) = d.run("hello", &["ClawOS"]);
    assert_eq!(r.code, Code::Success, "{}", r.message);
    assert_eq!(out.output, b"hello, ClawOS\n");
    assert_eq!(out.exit_status, None);
    assert_eq!(out.logs.len(), 1);
    assert_eq!(
        (out.logs[0].level.as_str(), out.logs[0].message.as_str()),
        ("info", "greeting ClawOS")
    );
    // The daemon's own log carries the line with the [WASM] prefix, tool and instance.
    d.wait_for(
        &format!("[WASM] hello#{}: greeting ClawOS", out.instance_id),
        std::time::Duration::from_secs(10),
    );
}

#[test]
fn echo_returns_input_through_run_and_through_wasi_stdin() {
    let d = TestDaemon::start();
    d.install_ok("echo");
    let input: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let (r, out) = d.run_with(RunRequest {
        input: input.clone(),
        ..req("echo", &[])
    });
    assert_eq!(r.code, Code::Success, "{}", r.message);
    assert_eq!(out.output, input);
    let (r, out) = d.run_with(RunRequest {
        input: b"via stdin".to_vec(),
        ..req("echo", &["--stdin", "--print", "tail"])
    });
    assert_eq!(r.code, Code::Success, "{}", r.message);
    assert_eq!(out.output, b"via stdintail");
    assert_eq!(out.stdout, b"via stdin");
}

#[test]
fn exerciser_checks_every_system_logging_and_memory_function() {
    let d = TestDaemon::start();
    d.install_ok("exerciser");
    let (r, out) = d.run_with(RunRequest {
        env: vec![("GREETING".into(), "from-request".into())],
        ..req("exerciser", &[])
    });
    let text = String::from_utf8_lossy(&out.output);
    assert_eq!(
        r.code,
        Code::Success,
        "{}\n{text}\nlogs: {:?}",
        r.message,
        out.logs
    );
    assert!(text.ends_with("all 19 checks passed\n"), "{text}");
    let levels: Vec<&str> = out.logs.iter().map(|l| l.level.as_str()).collect();
    assert_eq!(
        levels,
        [
            "trace", "debug", "info", "warn", "error", "debug", "info", "warn", "error"
        ]
    );
    // set-env in the tool changed only the instance's environment.
    assert!(std::env::var_os("SCRATCH").is_none());
    assert!(!d.log().contains("SCRATCH"));
}

#[test]
fn memory_cap_traps_with_101_and_the_daemon_keeps_serving() {
    let d = TestDaemon::start();
    d.install_ok("memgrow");
    d.install_ok("hello");
    let (r, out) = d.run("memgrow", &["16"]);
    assert_eq!(r.code, Code::WasmMemoryLimit, "{}", r.message);
    assert!(
        r.message.contains("memory limit of 268435456 bytes"),
        "{}",
        r.message
    );
    assert!(
        out.memory_peak <= 256 << 20 && out.memory_peak > 200 << 20,
        "peak {}",
        out.memory_peak
    );
    // Under the cap the same tool succeeds.
    let (r, out) = d.run("memgrow", &["16", "128"]);
    assert_eq!(r.code, Code::Success, "{}", r.message);
    assert_eq!(out.output, b"grew to 128 MiB\n");
    let (r, _) = d.run("hello", &[]);
    assert_eq!(r.code, Code::Success);
}

#[test]
fn host_regions_count_against_the_same_cap() {
    let d = TestDaemon::start();
    d.install_ok("memgrow");
    let (r, out) = d.run("memgrow", &["host", "16"]);
    assert_eq!(r.code, Code::Success, "{}", r.message);
    let text = String::from_utf8_lossy(&out.output);
    // 16 MiB regions on top of ~1 MiB of linear memory: the 16th does not fit.
    assert!(
        text.starts_with(
            "host regions refused at 240 MiB with ErrorCode { code: 9, name: \"wasm-memory-limit\""
        ),
        "{text}"
    );
    assert!(text.contains("limit 256 MiB"), "{text}");
}

#[test]
fn configured_memory_cap_is_applied() {
    let d = TestDaemon::with_config("[sandbox]\nmemory_limit_bytes = 33554432\n");
    d.install_ok("memgrow");
    let (r, out) = d.run("memgrow", &["4"]);
    assert_eq!(r.code, Code::WasmMemoryLimit, "{}", r.message);
    assert!(out.memory_peak <= 32 << 20, "{}", out.memory_peak);
}

#[test]
fn cpu_deadline_stops_a_spinner_with_102() {
    let d = TestDaemon::with_config("[sandbox]\ncpu_budget_ms = 300\n");
    d.install_ok("spinner");
    d.install_ok("hello");
    let (r, out) = d.run("spinner", &[]);
    assert_eq!(r.code, Code::WasmCpuDeadline, "{}", r.message);
    assert!(r.message.contains("cpu budget of 300 ms"), "{}", r.message);
    // The budget covers instantiation and `run`, and is never cut short.
    let spent = out.instantiate_us + out.run_us;
    assert!(spent >= 300_000, "stopped after {spent} us");
    // A short spin finishes within the budget.
    let (r, out) = d.run("spinner", &["1000"]);
    assert_eq!(r.code, Code::Success, "{}", r.message);
    assert!(out.output.starts_with(b"spun 1000 times"));
    let (r, _) = d.run("hello", &[]);
    assert_eq!(r.code, Code::Success);
}

#[test]
fn sleeping_past_the_budget_is_the_deadline_too() {
    let d = TestDaemon::with_config("[sandbox]\ncpu_budget_ms = 200\n");
    d.install_ok("misbehave");
    let (r, _) = d.run("misbehave", &["sleep", "5000"]);
    assert_eq!(r.code, Code::WasmCpuDeadline, "{}", r.message);
    let (r, out) = d.run("misbehave", &["sleep", "10"]);
    assert_eq!(r.code, Code::Success, "{}", r.message);
    assert_eq!(out.output, b"slept\n");
}

#[test]
fn client_timeout_shorter_than_the_budget_is_etimeout() {
    let d = TestDaemon::start();
    d.install_ok("spinner");
    let (r, _) = d.run_with(RunRequest {
        timeout_ms: Some(200),
        ..req("spinner", &[])
    });
    assert_eq!(r.code, Code::Etimeout, "{}", r.message);
    assert!(
        r.message.contains("client timeout of 200 ms"),
        "{}",
        r.message
    );
}

#[test]
fn forged_and_stale_handles_are_refused_with_206() {
    let d = TestDaemon::start();
    d.install_ok("misbehave");
    let (r, _) = d.run("misbehave", &["forge-handle"]);
    assert_eq!(r.code, Code::InvalidHandle, "{}", r.message);
    assert!(
        r.message.contains("unknown handle index 16777200"),
        "{}",
        r.message
    );
    let (r, _) = d.run("misbehave", &["stale-handle"]);
    assert_eq!(r.code, Code::InvalidHandle, "{}", r.message);
    d.assert_serving();
}

#[test]
fn handle_cap_is_105() {
    let d = TestDaemon::with_config("[sandbox]\nmax_handles = 10\n");
    d.install_ok("misbehave");
    let (r, out) = d.run("misbehave", &["handles"]);
    assert_eq!(r.code, Code::WasmResourceLimit, "{}", r.message);
    assert_eq!(out.logs[0].message, "refused after 10 handles");
}

#[test]
fn instance_count_cap_refuses_the_component_with_105() {
    // A Rust component has several core instances; a cap of one refuses it.
    let d = TestDaemon::with_config("[sandbox]\nmax_core_instances = 1\n");
    let r = d.install("hello");
    assert_eq!(r.code, Code::WasmResourceLimit, "{}", r.message);
    assert!(r.message.contains("core module instances"), "{}", r.message);
    d.assert_serving();
}

#[test]
fn table_element_cap_refuses_the_component_with_105() {
    let d = TestDaemon::with_config("[sandbox]\nmax_table_elements = 1\n");
    let r = d.install("hello");
    assert_eq!(r.code, Code::WasmResourceLimit, "{}", r.message);
    assert!(
        r.message.contains("exceeds the limit of 1"),
        "{}",
        r.message
    );
    d.assert_serving();
}

#[test]
fn panics_traps_exits_and_tool_errors_each_have_their_code() {
    let d = TestDaemon::start();
    d.install_ok("misbehave");
    let cases: &[(&[&str], Code, Option<u8>)] = &[
        (&["panic"], Code::Epanic, None),
        (&["trap"], Code::WasmTrap, None),
        (&["exit", "7"], Code::Success, Some(7)),
        (&["exit", "0"], Code::Success, Some(0)),
        (&["wasi-exit"], Code::Success, Some(1)),
        (&["error"], Code::PolicyDenied, None),
        (&["no-such-mode"], Code::InvalidArgument, None),
    ];
    for (args, code, status) in cases {
        let (r, out) = d.run("misbehave", args);
        assert_eq!(
            (r.code, out.exit_status),
            (*code, *status),
            "{args:?}: {}",
            r.message
        );
    }
    let (r, out) = d.run("misbehave", &["panic"]);
    assert!(r.message.contains("unreachable"), "{}", r.message);
    assert!(String::from_utf8_lossy(&out.stderr).contains("deliberate panic"));
    d.assert_serving();
}

#[test]
fn log_flood_is_rate_limited_and_counted() {
    let d = TestDaemon::with_config("[sandbox]\nlog_burst = 50\nlog_lines_per_second = 1\n");
    d.install_ok("misbehave");
    let (r, out) = d.run("misbehave", &["log-flood", "1000"]);
    assert_eq!(r.code, Code::Success, "{}", r.message);
    assert_eq!(out.logs.len() as u64 + out.logs_dropped, 1000);
    assert!(
        (50..=52).contains(&out.logs.len()),
        "{} lines kept",
        out.logs.len()
    );
}

#[test]
fn output_over_the_cap_is_201() {
    let d = TestDaemon::with_config("[sandbox]\nmax_output_bytes = 1000\n");
    d.install_ok("misbehave");
    let (r, out) = d.run("misbehave", &["output", "1000"]);
    assert_eq!((r.code, out.output.len()), (Code::Success, 1000));
    let (r, out) = d.run("misbehave", &["output", "1001"]);
    assert_eq!(r.code, Code::QuotaExceeded, "{}", r.message);
    assert!(out.output.is_empty());
}

#[test]
fn concurrent_runs_all_complete() {
    // 16 runs from one uid at once, plus room for the install's connection,
    // which the daemon may not have seen closed yet when they arrive (its
    // per-uid share is 16 by default).
    let d =
        TestDaemon::with_config("[ipc]\nmax_concurrent_runs = 16\nmax_connections_per_uid = 24\n");
    d.install_ok("echo");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let d = &d;
                s.spawn(move || {
                    let payload = format!("run {i}").into_bytes();
                    let (r, out) = d.run_with(RunRequest {
                        input: payload.clone(),
                        ..req("echo", &[])
                    });
                    assert_eq!(r.code, Code::Success, "{}", r.message);
                    assert_eq!(out.output, payload);
                    out.instance_id
                })
            })
            .collect();
        let mut ids: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 16, "every run had its own instance");
    });
    let status = d.request(&clawos_bridge::ipc::proto::Request::Status);
    let clawos_bridge::ipc::proto::Body::Status(s) = status.body else {
        panic!()
    };
    assert_eq!((s.runs_in_flight, s.runs_total, s.runs_failed), (0, 16, 0));
}

#[test]
fn concurrent_runs_of_a_tool_share_its_regions_and_no_one_else_does() {
    let d = std::sync::Arc::new(TestDaemon::start());
    d.install_ok("probe");
    let root = d.state.join("clawfs/probe");
    let meet = |d: &TestDaemon, size: &str| {
        let (r, out) = d.run("probe", &["shared-meet", "board", size]);
        assert_eq!(r.code, Code::Success, "{}", r.message);
        String::from_utf8_lossy(&out.output).trim_end().to_owned()
    };
    // Nobody holds "board" yet: the first run to open it finds zeros.
    assert_eq!(meet(&d, "4096"), "ok 000000");
    std::fs::remove_file(root.join("b-done")).unwrap();
    // One run holds it while another opens it: each sees the other's bytes
    // (two worker processes, one memory the daemon holds).
    let holder = {
        let d = d.clone();
        std::thread::spawn(move || d.run("probe", &["shared-hold", "board", "4096"]))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !root.join("a-ready").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the holder never wrote"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Another size while it is held: INVALID_ARGUMENT.
    let (r, out) = d.run("probe", &["shared-meet", "board", "8192"]);
    assert_eq!(r.code, Code::Success, "{}", r.message);
    assert_eq!(String::from_utf8_lossy(&out.output), "err 208\n");
    assert_eq!(meet(&d, "4096"), "ok from-a");
    let (r, out) = holder.join().unwrap();
    assert_eq!(r.code, Code::Success, "{}", r.message);
    assert_eq!(String::from_utf8_lossy(&out.output), "ok from-b\n");
    // Once no run holds it, it is gone: zeros again.
    for f in ["a-ready", "b-done"] {
        std::fs::remove_file(root.join(f)).unwrap();
    }
    assert_eq!(meet(&d, "4096"), "ok 000000");
    // Another tool's region of the same name is its own.
    std::fs::remove_file(root.join("b-done")).unwrap();
    let r = d.request(&clawos_bridge::ipc::proto::Request::Install {
        name: "probe2".into(),
        source: clawos_bridge::ipc::proto::ComponentSource::Bytes(clawos_tool_artifacts::bytes(
            "probe",
        )),
        replace: false,
        kept_data: Default::default(),
        grants: vec![],
        grant_requested: false,
    });
    assert_eq!(r.code, Code::Success, "{}", r.message);
    let (r, out) = d.run("probe2", &["shared-meet", "board", "4096"]);
    assert_eq!(r.code, Code::Success, "{}", r.message);
    assert_eq!(String::from_utf8_lossy(&out.output), "ok 000000\n");
    d.assert_serving();
}
