//! The pool of ready workers through the real daemon: it fills to its
//! size, refills after runs, replaces a ready worker that died without ever
//! handing it a run, and ends every ready worker at shutdown. The workers
//! are read back from the kernel: the daemon's children in a pid namespace
//! of their own (the launcher is its child too, in the daemon's).

mod common;

use clawos_bridge::error::Code;
use clawos_bridge::ipc::proto::{Body, Request};
use clawos_bridge::sandbox::PoolStatus;
use common::TestDaemon;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn pool(d: &TestDaemon) -> PoolStatus {
    match d.request(&Request::Status).body {
        Body::Status(s) => s.workers,
        other => panic!("status answered {other:?}"),
    }
}

/// The daemon's children that are workers: `NSpid` has two entries (the
/// worker's own pid namespace), and they have not exited.
fn workers(daemon: u32) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::trim)
                .unwrap_or("")
                .to_owned()
        };
        let own_ns = field("NSpid:").split_whitespace().count() == 2;
        let live = !field("State:").starts_with('Z');
        if field("PPid:") == daemon.to_string() && own_ns && live {
            out.insert(pid);
        }
    }
    out
}

/// Wait until the pool holds `n` live ready workers, none of them behind
/// the launcher's loads, and the daemon has exactly `n` worker children
/// (nothing of a finished run left): them.
fn full(d: &TestDaemon, n: u32) -> BTreeSet<u32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = pool(d);
        let w = workers(d.pid());
        if p.ready == n && p.behind == 0 && w.len() == n as usize {
            return w;
        }
        assert!(
            Instant::now() < deadline,
            "the pool did not fill to {n}: {p:?}, worker children {w:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn echo_ok(d: &TestDaemon, what: &str) -> u64 {
    let (r, out) = d.run_with(clawos_bridge::ipc::proto::RunRequest {
        name: "echo".into(),
        args: vec![],
        input: what.as_bytes().to_vec(),
        env: vec![],
        timeout_ms: None,
    });
    assert_eq!(r.code, Code::Success, "{}", r.message);
    assert_eq!(out.output, what.as_bytes());
    out.instance_id
}

#[test]
fn the_pool_fills_refills_and_is_ended_at_shutdown() {
    let mut d = TestDaemon::with_config("[sandbox]\nready_workers = 3\n");
    d.install_ok("echo");
    full(&d, 3);
    assert_eq!(pool(&d).size, 3);
    // No ready worker has echo loaded yet (the launcher loads a tool when a
    // run first needs it): the first run makes its own worker, and the
    // pool is then renewed with workers that have echo.
    echo_ok(&d, "first");
    let p = pool(&d);
    assert_eq!((p.hits, p.misses), (0, 1), "{p:?}");
    let first = full(&d, 3);
    // Runs that arrive at a full pool each take a ready worker.
    for i in 0..3 {
        echo_ok(&d, &format!("run {i}"));
        full(&d, 3);
    }
    let p = pool(&d);
    assert_eq!((p.hits, p.misses), (3, 1), "{p:?}");
    // Back to back: each run takes a ready worker while there is one; the
    // pool makes others, and is full again after.
    for i in 0..6 {
        echo_ok(&d, &format!("back to back {i}"));
    }
    let p = pool(&d);
    assert_eq!(p.hits + p.misses, 10, "{p:?}");
    let after = full(&d, 3);
    assert_ne!(after, first, "served workers were replaced");
    // Shutdown ends every ready worker, and says so.
    assert!(d.stop().success(), "log:\n{}", d.log());
    let log = d.log_when(|l| l.contains("shutdown complete"), Duration::from_secs(10));
    assert!(
        log.contains("shutdown complete ready_workers_ended=3"),
        "log:\n{log}"
    );
    for pid in after {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "ready worker {pid} outlived the daemon"
        );
    }
}

#[test]
fn a_dead_ready_worker_is_replaced_and_never_handed_a_run() {
    let d = TestDaemon::with_config("[sandbox]\nready_workers = 3\n");
    d.install_ok("echo");
    echo_ok(&d, "warm");
    let ready = full(&d, 3);
    // Every ready worker dies (the test started this daemon, so they are
    // its own processes); once the kernel has made them zombies, a run must
    // still succeed: no dead worker is handed a run.
    for &pid in &ready {
        let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready.iter().any(|p| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }) {
        assert!(Instant::now() < deadline, "the killed workers did not die");
        std::thread::sleep(Duration::from_millis(10));
    }
    for i in 0..4 {
        echo_ok(&d, &format!("after the kill {i}"));
    }
    let refilled = full(&d, 3);
    assert!(
        refilled.is_disjoint(&ready),
        "a dead worker is still counted ready: {refilled:?} {ready:?}"
    );
    let p = pool(&d);
    assert_eq!(p.died, 3, "each dead worker was found and replaced: {p:?}");
    assert!(
        d.log()
            .matches("a ready worker died while it waited")
            .count()
            == 3,
        "log:\n{}",
        d.log()
    );
}

#[test]
fn ready_workers_is_checked_against_concurrent_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("daemon.toml");
    std::fs::write(
        &config,
        "[ipc]\nmax_concurrent_runs = 4\n[sandbox]\nready_workers = 5\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::daemon_binary())
        .arg("--config")
        .arg(&config)
        .arg("--dev-allow-missing-layers")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sandbox.ready_workers = 5") && err.contains("between 0 and 4"),
        "{err}"
    );
}
