//! The socket protocol against the real daemon: malformed, truncated,
//! oversized and wrong-version frames each get one EPROTO (or 209) answer and
//! the daemon keeps serving; peer credentials; bounded runs; shutdown.

mod common;

use clawos_bridge::error::Code;
use clawos_bridge::ipc::client::Client;
use clawos_bridge::ipc::frame;
use clawos_bridge::ipc::proto::{Body, Request, RunRequest};
use common::TestDaemon;
use std::time::Duration;

fn status_frame() -> Vec<u8> {
    frame::encode(&Request::Status.encode())
}

#[test]
fn bad_magic_is_eproto_and_closes_only_that_connection() {
    let d = TestDaemon::start();
    let mut c = d.client();
    let mut f = status_frame();
    f[..4].copy_from_slice(b"HTTP");
    c.send_raw(&f).unwrap();
    let r = c.receive().unwrap();
    assert_eq!(r.code, Code::Eproto);
    assert!(r.message.starts_with("bad magic"), "{}", r.message);
    // That connection is closed: nothing after a bad header is trusted.
    assert!(
        c.request(&Request::Status).is_err(),
        "the connection still answers after a bad header"
    );
    d.assert_serving();
}

#[test]
fn truncated_frame_is_eproto_with_sizes() {
    let d = TestDaemon::start();
    let mut c = d.client();
    let mut f = frame::header(100).to_vec();
    f.extend_from_slice(&[0; 10]);
    c.send_raw(&f).unwrap();
    c.shutdown_write().unwrap();
    let r = c.receive().unwrap();
    assert_eq!(r.code, Code::Eproto);
    assert_eq!(r.message, "truncated frame: expected 100 bytes, got 10");
    // A header cut short.
    let mut c = d.client();
    c.send_raw(b"CLAW\0").unwrap();
    c.shutdown_write().unwrap();
    let r = c.receive().unwrap();
    assert_eq!(
        (r.code, r.message.as_str()),
        (Code::Eproto, "truncated frame: expected 12 bytes, got 5")
    );
    d.assert_serving();
}

#[test]
fn oversized_frame_is_refused_before_reading_it() {
    let d = TestDaemon::with_config(
        "[ipc]\nmax_component_bytes = 2048\nmax_input_bytes = 1024\nmax_args = 4\nmax_arg_bytes = 64\n",
    );
    let mut c = d.client();
    c.send_raw(&frame::header(50 << 20)).unwrap();
    let r = c.receive().unwrap();
    assert_eq!(r.code, Code::Eproto);
    assert!(
        r.message
            .starts_with("frame payload of 52428800 bytes exceeds the"),
        "{}",
        r.message
    );
    d.assert_serving();
}

#[test]
fn oversized_field_is_eproto_naming_it_and_the_connection_goes_on() {
    let d = TestDaemon::with_config("[ipc]\nmax_input_bytes = 1024\n");
    let mut c = d.client();
    let run = Request::Run(RunRequest {
        name: "hello".into(),
        args: vec![],
        input: vec![0; 1025],
        env: vec![],
        timeout_ms: None,
    });
    let r = c.request(&run).unwrap();
    assert_eq!(
        (r.code, r.message.as_str()),
        (
            Code::Eproto,
            "field run.input is 1025 bytes; the limit is 1024"
        )
    );
    // Same connection: the frame boundary was intact, so it keeps serving.
    assert_eq!(c.request(&Request::Status).unwrap().code, Code::Success);
}

#[test]
fn undecodable_payload_is_eproto_and_the_connection_goes_on() {
    let d = TestDaemon::start();
    let mut c = d.client();
    c.send_raw(&frame::encode(&[0xff; 40])).unwrap();
    let r = c.receive().unwrap();
    assert_eq!(r.code, Code::Eproto);
    assert!(
        r.message.starts_with("undecodable request (40 bytes)"),
        "{}",
        r.message
    );
    assert_eq!(c.request(&Request::List).unwrap().code, Code::Success);
    let Body::Status(s) = c.request(&Request::Status).unwrap().body else {
        panic!()
    };
    assert_eq!(s.protocol_errors, 1);
}

#[test]
fn other_protocol_version_is_209() {
    let d = TestDaemon::start();
    let mut c = d.client();
    let mut f = status_frame();
    f[4..6].copy_from_slice(&1u16.to_be_bytes());
    c.send_raw(&f).unwrap();
    let r = c.receive().unwrap();
    assert_eq!(r.code, Code::UnsupportedVersion);
    assert!(
        r.message.contains("version 1 is not supported"),
        "{}",
        r.message
    );
    d.assert_serving();
}

#[test]
fn several_requests_on_one_connection_get_one_answer_each() {
    let d = TestDaemon::start();
    d.install_ok("hello");
    let mut c = d.client();
    let mut batch = Vec::new();
    for _ in 0..5 {
        batch.extend(frame::encode(&Request::List.encode()));
    }
    c.send_raw(&batch).unwrap();
    c.shutdown_write().unwrap();
    for _ in 0..5 {
        let r = c.receive().unwrap();
        assert_eq!(r.code, Code::Success);
        assert!(matches!(r.body, Body::Tools(ref t) if t.len() == 1));
    }
    assert!(c.receive().is_err(), "a sixth answer");
}

/// `clawosctl status` as uid/gid 65534, with the socket opened to everyone
/// so that the daemon's own credential check is what decides.
fn status_as_nobody(d: &TestDaemon) -> std::process::Output {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::process::Command::new(common::CTL)
        .args(["status"])
        .env("CLAWOS_SOCKET", &d.socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap()
}

#[test]
fn peers_other_than_root_the_owner_or_allowed_groups_get_eperm() {
    let out = status_as_nobody(&TestDaemon::start());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("uid 65534 (gid 65534) may not use this socket"),
        "{stderr}"
    );
    // An allowed group gets in.
    let out = status_as_nobody(&TestDaemon::with_config("allowed_gids = [65534]\n"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("clawos-wasm-daemon 0.1.0"));
}

#[test]
fn runs_past_the_concurrency_bound_get_eagain() {
    let d = TestDaemon::with_config(
        "[ipc]\nmax_concurrent_runs = 1\n[sandbox]\ncpu_budget_ms = 20000\n",
    );
    d.install_ok("spinner");
    d.install_ok("hello");
    std::thread::scope(|s| {
        let long = s.spawn(|| {
            d.run_with(RunRequest {
                name: "spinner".into(),
                args: vec![],
                input: vec![],
                env: vec![],
                timeout_ms: Some(3000),
            })
            .0
            .code
        });
        // Wait until the spinner holds the only run slot.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let Body::Status(st) = d.request(&Request::Status).body else {
                panic!()
            };
            if st.runs_in_flight == 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the spinner never started"
            );
            std::thread::yield_now();
        }
        let hello = Request::Run(RunRequest {
            name: "hello".into(),
            args: vec![],
            input: vec![],
            env: vec![],
            timeout_ms: None,
        });
        let r = d.request(&hello);
        assert_eq!(r.code, Code::Eagain, "{}", r.message);
        assert!(r.message.contains("max_concurrent_runs"), "{}", r.message);
        assert_eq!(long.join().unwrap(), Code::Etimeout);
    });
    let (r, _) = d.run("hello", &[]);
    assert_eq!(r.code, Code::Success);
}

#[test]
fn sigterm_stops_cleanly_and_removes_the_socket() {
    let mut d = TestDaemon::start();
    let status = d.stop();
    assert!(status.success(), "{status:?}\n{}", d.log());
    assert!(!d.socket.exists());
    assert!(d.log().contains("SIGTERM received"));
    assert!(d.log().contains("shutdown complete"));
    assert_eq!(Client::connect(&d.socket).unwrap_err().code, Code::Enoent);
}
