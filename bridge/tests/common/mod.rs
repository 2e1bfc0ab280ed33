//! Test harness: the real daemon binary on a socket in a temporary
//! directory, waited for by its readiness line (never a sleep), stopped with
//! SIGTERM, its whole log printed when a test fails.

#![allow(dead_code)]

use clawos_bridge::daemon::READY_MARKER;
use clawos_bridge::error::Code;
use clawos_bridge::ipc::client::Client;
use clawos_bridge::ipc::proto::{Body, ComponentSource, Request, Response, RunRequest};
use clawos_bridge::runtime::outcome::RunOutcome;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

pub const DAEMON: &str = env!("CARGO_BIN_EXE_clawos-wasm-daemon");

/// The daemon the suites start: `clawos-wasm-daemon`, or the test-only
/// audit build of it when `make seccomp-audit` names that one in
/// `CLAWOS_TEST_DAEMON` (scripts/seccomp-audit.sh).
pub fn daemon_binary() -> PathBuf {
    std::env::var_os("CLAWOS_TEST_DAEMON").map_or_else(|| PathBuf::from(DAEMON), PathBuf::from)
}
pub const CTL: &str = env!("CARGO_BIN_EXE_clawosctl");

/// A running daemon.
pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub state: PathBuf,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    lines: Mutex<mpsc::Receiver<String>>,
}

impl TestDaemon {
    /// Start a daemon with the default configuration.
    pub fn start() -> TestDaemon {
        TestDaemon::with_config("")
    }

    /// Start a daemon with `config` (TOML) in a fresh directory.
    pub fn with_config(config: &str) -> TestDaemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("state");
        TestDaemon::start_in(dir, state, config)
    }

    /// Start a daemon in `dir` with state in `state` (to restart on the same state).
    pub fn start_in(dir: tempfile::TempDir, state: PathBuf, config: &str) -> TestDaemon {
        let socket = dir.path().join("bridge.sock");
        let config_path = dir.path().join("daemon.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new(daemon_binary())
            .arg("--config")
            .arg(&config_path)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state)
            .arg("--dev-allow-missing-layers")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn clawos-wasm-daemon");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let d = TestDaemon {
            dir,
            socket,
            state,
            child: Some(child),
            log,
            lines: Mutex::new(lines),
        };
        d.wait_for(READY_MARKER, Duration::from_secs(60));
        d
    }

    /// Wait for a log line containing `marker`; panics with the log after `timeout`.
    pub fn wait_for(&self, marker: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.lock().unwrap().recv_timeout(left) {
                Ok(line) if line.contains(marker) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "daemon never logged {marker:?} within {timeout:?}; log:\n{}",
                    self.log()
                ),
            }
        }
    }

    /// The log once `ready` holds of it (the daemon's lines reach this
    /// process through a pipe and a reader thread, a little after the
    /// daemon acted); the log as it is after `timeout` otherwise, for the
    /// caller's assertion to show.
    pub fn log_when(&self, ready: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let log = self.log();
            if ready(&log) || std::time::Instant::now() >= deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connect")
    }

    pub fn request(&self, req: &Request) -> Response {
        self.client().request(req).expect("request")
    }

    pub fn install(&self, name: &str) -> Response {
        self.request(&Request::Install {
            name: name.into(),
            source: ComponentSource::Bytes(clawos_tool_artifacts::bytes(name)),
            replace: false,
            kept_data: Default::default(),
            grants: vec![],
            grant_requested: false,
        })
    }

    /// Install `name` granted `grants` (`KIND=VALUE`).
    pub fn install_granted(&self, name: &str, grants: &[String]) -> Response {
        self.request(&Request::Install {
            name: name.into(),
            source: ComponentSource::Bytes(clawos_tool_artifacts::bytes(name)),
            replace: false,
            kept_data: Default::default(),
            grants: grants.to_vec(),
            grant_requested: false,
        })
    }

    /// Install `name` with every network destination and device this
    /// daemon's config allows: what every tool had before per-tool grants
    /// (suites of the interfaces themselves).
    pub fn install_with_everything(&self, name: &str) {
        let r = self.install_granted(name, &self.everything());
        assert_eq!(r.code, Code::Success, "install {name}: {}", r.message);
    }

    /// The config's whole network and device policy, as grants.
    pub fn everything(&self) -> Vec<String> {
        let config = clawos_bridge::config::Config::load(&self.dir.path().join("daemon.toml"))
            .expect("the test's config loads");
        clawos_bridge::grants::Grants::legacy(&config)
            .items()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    pub fn install_ok(&self, name: &str) {
        let r = self.install(name);
        assert_eq!(r.code, Code::Success, "install {name}: {}", r.message);
    }

    /// Run `name` with `args` and return the response and its outcome.
    pub fn run(&self, name: &str, args: &[&str]) -> (Response, RunOutcome) {
        self.run_with(RunRequest {
            name: name.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            input: vec![],
            env: vec![],
            timeout_ms: None,
        })
    }

    pub fn run_with(&self, req: RunRequest) -> (Response, RunOutcome) {
        let r = self.request(&Request::Run(req));
        let outcome = match &r.body {
            Body::Run(o) => (**o).clone(),
            other => panic!("run answered {} with {other:?}: {}", r.code, r.message),
        };
        (r, outcome)
    }

    /// Run clawosctl against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(CTL)
            .args(args)
            .env("CLAWOS_SOCKET", &self.socket)
            .output()
            .expect("run clawosctl")
    }

    /// The daemon still answers a status request.
    pub fn assert_serving(&self) {
        let r = self.request(&Request::Status);
        assert_eq!(
            r.code,
            Code::Success,
            "status after the previous request: {}",
            r.message
        );
    }

    /// SIGTERM the daemon and wait for it; its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        child.wait().unwrap()
    }

    /// Stop the daemon and hand back its directory and state, for a restart.
    pub fn into_state(mut self) -> (tempfile::TempDir, PathBuf) {
        assert!(
            self.stop().success(),
            "daemon did not exit cleanly; log:\n{}",
            self.log()
        );
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::rename(&self.state, &state).unwrap();
        (dir, state)
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- daemon log ----\n{}\n---- end of daemon log ----",
                self.log()
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
