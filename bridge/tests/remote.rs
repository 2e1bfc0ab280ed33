//! The remote API against the real daemon on this host: TLS 1.3 on
//! 127.0.0.1 with certificates made by `clawosctl keys`; clawosctl
//! --connect does what it does on the socket; clients without a valid
//! certificate are refused while a good one is served; frame and
//! connection limits hold before anything large is read.

mod common;

use clawos_bridge::daemon::READY_MARKER;
use clawos_bridge::error::Code;
use clawos_bridge::ipc::client::{Client, Remote};
use clawos_bridge::ipc::frame;
use clawos_bridge::ipc::proto::{Body, ComponentSource, Request};
use clawos_bridge::remote::keys;
use common::{CTL, TestDaemon};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

struct Appliance {
    daemon: TestDaemon,
    keys: PathBuf,
    url: String,
}

fn start(extra: &str) -> Appliance {
    let keys_dir = tempfile::tempdir().unwrap().keep();
    let out = Command::new(CTL)
        .args(["keys", "init"])
        .arg(&keys_dir)
        .args(["--client", "ops-1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "keys init: {out:?}");
    let k = |f: &str| keys_dir.join(f).display().to_string();
    let config = format!(
        "[remote]\nlisten = \"127.0.0.1:0\"\ncertificate = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n{extra}",
        k("server.pem"),
        k("server.key"),
        k("clients-ca.pem")
    );
    let daemon = TestDaemon::with_config(&config);
    let log = daemon.log();
    let url = log
        .lines()
        .find(|l| l.contains(READY_MARKER))
        .expect("the ready line")
        .split_whitespace()
        .find_map(|w| w.strip_prefix("remote="))
        .expect("remote= in the ready line")
        .to_owned();
    Appliance {
        daemon,
        keys: keys_dir,
        url,
    }
}

impl Appliance {
    fn key(&self, f: &str) -> PathBuf {
        self.keys.join(f)
    }

    /// clawosctl --connect with the client `who` (its .pem and .key in the keys directory).
    fn ctl_as(&self, who: &str, args: &[&str]) -> Output {
        Command::new(CTL)
            .arg("--connect")
            .arg(&self.url)
            .arg("--ca")
            .arg(self.key("ca.pem"))
            .arg("--cert")
            .arg(self.key(&format!("{who}.pem")))
            .arg("--key")
            .arg(self.key(&format!("{who}.key")))
            // Nothing may fall back to the socket.
            .env("CLAWOS_SOCKET", "/nonexistent/bridge.sock")
            .args(args)
            .output()
            .unwrap()
    }

    fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_as("ops-1", args)
    }

    fn remote(&self, who: Option<(&Path, &Path)>) -> Remote {
        Remote {
            address: Remote::parse_url(&self.url).unwrap(),
            ca: self.key("ca.pem"),
            identity: who.map(|(c, k)| (c.to_owned(), k.to_owned())),
            server_name: None,
        }
    }

    fn client(&self) -> Client {
        Client::connect_remote(&self.remote(Some((&self.key("ops-1.pem"), &self.key("ops-1.key")))))
            .expect("remote connect")
    }

    fn assert_serving_remotely(&self) {
        let r = self.client().request(&Request::Status).unwrap();
        assert_eq!(r.code, Code::Success, "{}", r.message);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn clawosctl_connect_does_everything_the_socket_does() {
    let a = start("");
    let hello = clawos_tool_artifacts::path("hello");
    let hello = hello.to_str().unwrap();
    let out = a.ctl(&["install", "hello", hello]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).starts_with("hello  sha256:"), "{out:?}");
    let out = a.ctl(&["list"]);
    assert!(text(&out.stdout).starts_with("hello "), "{out:?}");
    let out = a.ctl(&["run", "hello", "remote"]);
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "hello, remote\n".to_owned()),
        "{out:?}"
    );
    // Input and environment travel too.
    let input = a.daemon.dir.path().join("input");
    std::fs::write(&input, b"echoed over TLS").unwrap();
    a.ctl(&[
        "install",
        "echo",
        clawos_tool_artifacts::path("echo").to_str().unwrap(),
    ]);
    let out = a.ctl(&["run", "--input", input.to_str().unwrap(), "echo"]);
    assert_eq!(text(&out.stdout), "echoed over TLS", "{out:?}");
    let out = a.ctl(&["--json", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(v["body"]["tools"], 2, "{v}");
    // The same code and exit status as on the socket.
    let out = a.ctl(&["--json", "run", "missing"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["code"].as_u64(), out.status.code()),
        (Some(202), Some(202)),
        "{v}"
    );
    // Reading a path on the appliance is not for remote clients.
    let out = a.ctl(&["--json", "install", "--by-path", "byp", hello]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], 200, "{v}");
    let out = a.ctl(&["remove", "hello"]);
    assert!(out.status.success(), "{out:?}");
    let out = a.ctl(&["run", "hello"]);
    assert_eq!(out.status.code(), Some(202), "{out:?}");
    // Every remote request is logged with the client's certificate.
    let log = a.daemon.log_when(
        |l| l.matches("remote request").count() >= 10,
        Duration::from_secs(10),
    );
    let logged: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("remote request"))
        .collect();
    // One record per clawosctl call above, each its request's, none
    // "malformed" (clawosctl ends its connections with close_notify).
    assert_eq!(logged.len(), 10, "{log}");
    assert!(!log.contains("malformed"), "{log}");
    for l in &logged {
        assert!(l.contains("client=CN=ops-1 sha256:"), "{l}");
    }
    assert!(
        logged
            .iter()
            .any(|l| l.contains("request=\"install\"") && l.contains("code=SUCCESS")),
        "{log}"
    );
}

/// What the daemon answers a client presenting `cert`/`key` (none: no
/// certificate): the error of its first request.
fn refused(a: &Appliance, identity: Option<(&Path, &Path)>) -> clawos_bridge::error::Failure {
    match Client::connect_remote(&a.remote(identity)) {
        Err(f) => f,
        Ok(mut c) => c
            .request(&Request::List)
            .expect_err("the daemon answered a client it must refuse"),
    }
}

#[test]
fn clients_without_a_valid_certificate_are_refused_and_the_daemon_keeps_serving() {
    let a = start("");
    let scratch = tempfile::tempdir().unwrap();
    let write = |name: &str, issued: &keys::Issued| {
        let (c, k) = (
            scratch.path().join(format!("{name}.pem")),
            scratch.path().join(format!("{name}.key")),
        );
        std::fs::write(&c, &issued.cert_pem).unwrap();
        std::fs::write(&k, &issued.key_pem).unwrap();
        (c, k)
    };
    // No certificate.
    let f = refused(&a, None);
    assert_eq!(f.code, Code::Eperm, "{}", f.message);
    assert!(f.message.contains("refused"), "{}", f.message);
    a.assert_serving_remotely();
    // A certificate from another CA.
    let other = keys::new_ca("another CA", 1).unwrap();
    let (from, until) = keys::validity(1);
    let stranger = keys::issue(&other, keys::Role::Client("ops-1"), from, until).unwrap();
    let (c, k) = write("stranger", &stranger);
    let f = refused(&a, Some((&c, &k)));
    assert_eq!(f.code, Code::Eperm, "{}", f.message);
    a.assert_serving_remotely();
    // An expired certificate from the right CA.
    let ca = keys::Issued {
        cert_pem: std::fs::read_to_string(a.key("ca.pem")).unwrap(),
        key_pem: std::fs::read_to_string(a.key("ca.key")).unwrap(),
    };
    let day = time::Duration::days(1);
    let now = time::OffsetDateTime::now_utc();
    let expired = keys::issue(&ca, keys::Role::Client("ops-1"), now - day * 30, now - day).unwrap();
    let (c, k) = write("expired", &expired);
    let f = refused(&a, Some((&c, &k)));
    assert_eq!(f.code, Code::Eperm, "{}", f.message);
    // The daemon's own certificate is not a client certificate (serverAuth only).
    let f = refused(&a, Some((&a.key("server.pem"), &a.key("server.key"))));
    assert_eq!(f.code, Code::Eperm, "{}", f.message);
    a.assert_serving_remotely();
    let log = a.daemon.log_when(
        |l| {
            l.matches("remote connection refused: TLS handshake failed")
                .count()
                >= 4
        },
        Duration::from_secs(10),
    );
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("remote connection refused: TLS handshake failed"))
        .collect();
    assert_eq!(refusals.len(), 4, "{log}");
    assert!(
        refusals[0].contains("peer sent no certificates"),
        "{}",
        refusals[0]
    );
    assert!(refusals[1].contains("UnknownIssuer"), "{}", refusals[1]);
    assert!(
        refusals[2].contains("certificate expired"),
        "{}",
        refusals[2]
    );
    // A client the daemon does not trust also cannot make the client trust
    // another server: clawosctl checks the daemon's name and CA.
    let mut wrong_name = a.remote(Some((&a.key("ops-1.pem"), &a.key("ops-1.key"))));
    wrong_name.server_name = Some("not-the-appliance".into());
    let f = Client::connect_remote(&wrong_name).unwrap_err();
    assert_eq!(f.code, Code::Eperm, "{}", f.message);
    assert!(f.message.contains("not valid for name"), "{}", f.message);
}

#[test]
fn remote_frames_and_sessions_have_the_socket_limits() {
    let a = start("max_connections = 2\n");
    // A header announcing more than the largest frame is answered before
    // any of it is read, and the connection is closed.
    let mut c = a.client();
    let mut header = frame::header(0);
    header[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    c.send_raw(&header).unwrap();
    let r = c.receive().unwrap();
    assert_eq!(r.code, Code::Eproto, "{}", r.message);
    assert!(r.message.contains("exceeds"), "{}", r.message);
    drop(c);
    // Two idle clients hold both session slots (once the first
    // connection's slot is back); a third is refused after its handshake;
    // the Unix socket still serves.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let idle = loop {
        let (x, y) = (a.client(), a.client());
        let mut third = a.client();
        match third.request(&Request::Status) {
            Err(f) => break ([x, y], f),
            Ok(_) => assert!(
                std::time::Instant::now() < deadline,
                "a third session was served with max_connections = 2"
            ),
        }
    };
    let (idle, f) = idle;
    assert!(
        matches!(f.code, Code::Eproto | Code::Eio),
        "{}: {}",
        f.code,
        f.message
    );
    a.daemon.assert_serving();
    let log = a.daemon.log_when(
        |l| l.contains(": 2 remote sessions are open (remote.max_connections)"),
        Duration::from_secs(10),
    );
    assert!(
        log.contains("CN=ops-1 sha256:")
            && log.contains(": 2 remote sessions are open (remote.max_connections)"),
        "{log}"
    );
    drop(idle);
    // Slots come back when clients leave.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match a.client().request(&Request::Status) {
            Ok(r) if r.code == Code::Success => break,
            other => assert!(std::time::Instant::now() < deadline, "{other:?}"),
        }
    }
    // Install sends the component's bytes over the connection.
    let mut c = a.client();
    let r = c
        .request(&Request::Install {
            name: "hello".into(),
            source: ComponentSource::Bytes(clawos_tool_artifacts::bytes("hello")),
            replace: false,
            kept_data: Default::default(),
            grants: vec![],
            grant_requested: false,
        })
        .unwrap();
    assert!(matches!(r.body, Body::Tool(_)), "{}", r.message);
}

/// Whether the daemon closed `s` (end of stream or reset) within `wait`.
fn closed_within(s: &mut std::net::TcpStream, wait: std::time::Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn unauthenticated_connections_hold_little_for_little_time_and_are_logged_sparingly() {
    let a = start("max_connections = 8\nhandshake_timeout_ms = 1000\n");
    let addr = Remote::parse_url(&a.url).unwrap();
    // Four silent connections from one address: a fifth from it is closed
    // at accept, before the daemon reads a byte.
    let mut silent: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    // Nothing the daemon says shows that it has accepted them (an accept
    // reads nothing and logs nothing): give its accept loop a moment to
    // take them out of the backlog before the fifth arrives.
    std::thread::sleep(Duration::from_millis(200));
    let mut fifth = std::net::TcpStream::connect(&addr).unwrap();
    assert!(closed_within(&mut fifth, Duration::from_millis(800)));
    // The silent ones are closed when their handshake time is up.
    for s in &mut silent {
        assert!(closed_within(s, Duration::from_secs(5)));
    }
    a.assert_serving_remotely();
    let log = a.daemon.log_when(
        |l| {
            l.matches("remote connection refused: no TLS handshake within 1000 ms")
                .count()
                >= 4
        },
        Duration::from_secs(10),
    );
    assert!(
        log.contains("remote connection refused: closed at accept: 4 handshakes from this address are in flight"),
        "{log}"
    );
    assert_eq!(
        log.matches("remote connection refused: no TLS handshake within 1000 ms")
            .count(),
        4,
        "{log}"
    );
    // A flood of refusals: at most REFUSALS_LOGGED lines a minute.
    let held: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    // As above: the four held connections must be accepted first.
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..40 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        assert!(closed_within(&mut s, Duration::from_millis(800)));
    }
    drop(held);
    let budget = clawos_bridge::remote::REFUSALS_LOGGED as usize;
    // Wait for the budget to be logged, then a little longer for a line
    // past it that must not come.
    a.daemon.log_when(
        |l| l.matches("remote connection refused").count() >= budget,
        Duration::from_secs(10),
    );
    let log = a.daemon.log_when(|_| false, Duration::from_millis(300));
    assert_eq!(
        log.matches("remote connection refused").count(),
        budget,
        "{log}"
    );
}

#[test]
fn a_remote_api_without_its_keys_stops_the_daemon_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("daemon.toml");
    std::fs::write(
        &config,
        "[remote]\nlisten = \"127.0.0.1:0\"\ncertificate = \"/nonexistent/server.pem\"\n",
    )
    .unwrap();
    let out = Command::new(common::DAEMON)
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--dev-allow-missing-layers")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("remote API: cannot read the server certificate /nonexistent/server.pem"),
        "{err}"
    );
}
