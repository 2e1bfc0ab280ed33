//! Hostile tools in the sandboxed worker (the path users get): each way a
//! tool can call a host function wrongly has its exact code and no host
//! function panics, a tool blocked in WASI stops at its budget with the
//! budget's code, stdout past its cap is QUOTA_EXCEEDED, and a tool's log
//! lines cannot forge records of the daemon's log nor drive a terminal.

mod common;

use clawos_bridge::error::Code;
use clawos_bridge::ipc::proto::RunRequest;
use common::TestDaemon;
use std::time::{Duration, Instant};

#[test]
fn a_handle_of_another_type_is_206() {
    let d = TestDaemon::start();
    d.install_ok("misbehave");
    let (r, _) = d.run("misbehave", &["wrong-handle"]);
    assert_eq!(r.code, Code::InvalidHandle, "{}", r.message);
    assert!(
        r.message.contains("used with the wrong type"),
        "{}",
        r.message
    );
    d.assert_serving();
}

#[test]
fn allocating_u64_max_is_101_not_a_panic() {
    let d = TestDaemon::start();
    d.install_ok("misbehave");
    let (r, _) = d.run("misbehave", &["allocate-max"]);
    assert_eq!(r.code, Code::WasmMemoryLimit, "{}", r.message);
}

/// Every boundary argument of the memory and filesystem interfaces is
/// answered with a code, none by a panic; the ones the interface defines
/// are checked exactly.
#[test]
fn boundary_arguments_get_codes_and_never_a_panic() {
    let d = TestDaemon::start();
    d.install_ok("misbehave");
    let (r, out) = d.run("misbehave", &["extremes"]);
    assert_eq!(r.code, Code::Success, "{}", r.message);
    let text = String::from_utf8(out.output).unwrap();
    eprintln!("{text}");
    let answer = |call: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(call)
                    .and_then(|rest| rest.strip_prefix(" -> "))
            })
            .unwrap_or_else(|| panic!("no line for {call}: {text}"))
            .to_owned()
    };
    for size in [
        "18446744073709551615",
        "18446744073709551614",
        "9223372036854775807",
    ] {
        assert_eq!(answer(&format!("allocate({size})")), "err 101", "{text}");
    }
    assert_eq!(answer("allocate(0)"), "ok");
    assert_eq!(answer("region.read(18446744073709551615, 1)"), "err 208");
    assert_eq!(
        answer("region.write(18446744073709551615, 1 byte)"),
        "err 208"
    );
    assert_eq!(answer("region.write(16, 1 byte)"), "err 208");
    assert_eq!(answer("open(NUL)"), "err 208");
    // Every call answered; EPANIC (8) and EINTERNAL (7) are bugs.
    for l in text.lines() {
        assert!(l.ends_with(" -> ok") || l.contains(" -> err "), "{l}");
        assert!(
            !l.ends_with(" -> err 8") && !l.ends_with(" -> err 7"),
            "{l}\n{text}"
        );
    }
    assert!(text.lines().count() > 40, "{text}");
    d.assert_serving();
}

#[test]
fn a_tool_blocked_in_a_wasi_sleep_ends_at_its_budget_with_102() {
    let d = TestDaemon::with_config("[sandbox]\ncpu_budget_ms = 1000\n");
    d.install_ok("misbehave");
    let started = Instant::now();
    let (r, _) = d.run("misbehave", &["wasi-sleep", "30000"]);
    let took = started.elapsed();
    assert_eq!(r.code, Code::WasmCpuDeadline, "{}", r.message);
    assert!(
        r.message.contains("cpu budget of 1000 ms spent"),
        "{}",
        r.message
    );
    // At the budget, not at the daemon's wall-time backstop (budget + 5 s).
    assert!(
        took < Duration::from_millis(3000),
        "answered after {took:?}"
    );
    // A client timeout shorter than the budget: ETIMEOUT at it.
    let (r, _) = d.run_with(RunRequest {
        name: "misbehave".into(),
        args: vec!["wasi-sleep".into(), "30000".into()],
        input: vec![],
        env: vec![],
        timeout_ms: Some(300),
    });
    assert_eq!(r.code, Code::Etimeout, "{}", r.message);
    // A short sleep is fine.
    let (r, out) = d.run("misbehave", &["wasi-sleep", "10"]);
    assert_eq!(
        (r.code, out.output.as_slice()),
        (Code::Success, &b"slept\n"[..]),
        "{}",
        r.message
    );
}

#[test]
fn stdout_past_its_cap_is_201_with_the_cap_kept() {
    let d = TestDaemon::with_config("[sandbox]\nmax_output_bytes = 100000\n");
    d.install_ok("misbehave");
    let (r, out) = d.run("misbehave", &["stdout", "100000"]);
    assert_eq!(
        (r.code, out.stdout.len()),
        (Code::Success, 100_000),
        "{}",
        r.message
    );
    let (r, out) = d.run("misbehave", &["stdout", "100001"]);
    assert_eq!(r.code, Code::QuotaExceeded, "{}", r.message);
    assert!(
        r.message.contains("stdout past max_output_bytes = 100000"),
        "{}",
        r.message
    );
    assert_eq!(out.stdout.len(), 100_000);
}

#[test]
fn a_tools_log_lines_cannot_forge_records_or_drive_a_terminal() {
    let d = TestDaemon::start();
    d.install_ok("misbehave");
    let (r, out) = d.run("misbehave", &["log-inject"]);
    assert_eq!(r.code, Code::Success, "{}", r.message);
    // The response keeps the tool's text as it was.
    assert_eq!(
        out.logs[0].message,
        "first\nclawos-wasm-daemon ready on /run/forged.sock"
    );
    // Records name the instance: its id comes from the worker the run got
    // (the pool's workers are numbered as they are made).
    let prefix = format!("[WASM] misbehave#{}: ", out.instance_id);
    let third = d.wait_for(&format!("{prefix}third"), Duration::from_secs(10));
    let log = d.log();
    // Each line the tool logged is one record, starting with its prefix,
    // whatever escapes spell its controls (tracing's own, or the log
    // writer's for what tracing leaves).
    for l in log
        .lines()
        .filter(|l| l.contains("forged") || l.contains("third"))
    {
        assert!(l.contains(&prefix), "a record the tool forged: {l:?}");
    }
    assert!(
        !log.lines()
            .any(|l| l.starts_with("clawos-wasm-daemon ready on /run/forged.sock")),
        "{log}"
    );
    let raw = |c: char| c.is_control() && c != '\n' || matches!(c, '\u{2028}' | '\u{2029}');
    assert!(!log.chars().any(raw), "{log:?}");
    assert!(
        log.contains("first\\nclawos-wasm-daemon ready on /run/forged.sock"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("second\\r") && l.contains("52;c;Zm9yZ2Vk")),
        "{log}"
    );
    assert!(
        third.contains("third") && third.ends_with("end"),
        "{third:?}"
    );
    // clawosctl prints them escaped too (its stderr is a pipe here; log
    // lines are escaped wherever they go).
    let ctl = d.ctl(&["run", "misbehave", "log-inject"]);
    let stderr = String::from_utf8(ctl.stderr).unwrap();
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\r'),
        "{stderr:?}"
    );
    assert!(
        stderr.contains("[info] first\\nclawos-wasm-daemon ready"),
        "{stderr}"
    );
}
