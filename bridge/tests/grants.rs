//! Per-tool grants through the real daemon: a new tool holds no network
//! destination, device or secret; grants and revokes take effect on the
//! next run, are checked against the config's ceilings, survive a restart,
//! and a tool from before grants keeps the config's policy. Secrets reach
//! their tool's runs only, and no log line or `--json` answer. (The
//! kernel's side, and the proxy with PostgreSQL in the booted appliance:
//! tests/e2e/tests/network.rs and monitor.rs.)

mod common;

use clawos_bridge::error::Code;
use clawos_bridge::grants::Grants;
use clawos_bridge::ipc::proto::{Body, ComponentSource, Request, RunRequest};
use common::TestDaemon;
use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Stdio};

const SECRET: &str = "pg-pass-7f3a9c1e";

/// A daemon whose ceiling is the loopback on `port`.
fn daemon(port: u16) -> TestDaemon {
    TestDaemon::with_config(&format!(
        "[network]\nallow = [{{ cidr = \"127.0.0.0/8\", ports = [{port}] }}]\n"
    ))
}

fn install(d: &TestDaemon, name: &str, grants: &[&str], requested: bool) -> Code {
    let r = d.request(&Request::Install {
        name: name.into(),
        source: ComponentSource::Bytes(clawos_tool_artifacts::bytes("probe")),
        replace: false,
        kept_data: Default::default(),
        grants: grants.iter().map(|g| g.to_string()).collect(),
        grant_requested: requested,
    });
    if r.code != Code::Success {
        eprintln!("install {name}: {} {}", r.code, r.message);
    }
    r.code
}

fn installed(d: &TestDaemon, name: &str, grants: &[&str], requested: bool) {
    assert_eq!(
        install(d, name, grants, requested),
        Code::Success,
        "{}",
        d.log()
    );
}

/// `name` (the probe) run with `args` and `env`: its output line.
fn probe(d: &TestDaemon, name: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let (r, out) = d.run_with(RunRequest {
        name: name.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        input: vec![],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        timeout_ms: None,
    });
    assert_eq!(
        r.code,
        Code::Success,
        "{args:?}: {}\n{}",
        r.message,
        d.log()
    );
    String::from_utf8(out.output).unwrap().trim_end().to_owned()
}

fn grant(d: &TestDaemon, name: &str, add: &[&str], remove: &[&str]) -> (Code, String) {
    let r = d.request(&Request::Grant {
        name: name.into(),
        add: add.iter().map(|g| g.to_string()).collect(),
        remove: remove.iter().map(|g| g.to_string()).collect(),
    });
    (r.code, r.message)
}

fn shown(d: &TestDaemon, name: &str) -> Grants {
    match d.request(&Request::Show { name: name.into() }).body {
        Body::Tool(t) => t.grants.expect("show answers the grants"),
        other => panic!("show {name}: {other:?}"),
    }
}

#[test]
fn a_new_tool_reaches_nothing_until_granted_and_a_revoke_holds_from_the_next_run() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let d = daemon(listener.local_addr().unwrap().port());
    installed(&d, "t", &[], false);
    assert_eq!(shown(&d, "t"), Grants::default());
    // Deny by default: the proxy refuses, and says why.
    assert_eq!(
        probe(&d, "t", &["connect", "127.0.0.1", &port], &[]),
        "err 200"
    );
    assert_eq!(probe(&d, "t", &["resolve", "localhost"], &[]), "err 200");
    assert_eq!(probe(&d, "t", &["device", "null", "w"], &[]), "err 4");
    assert_eq!(probe(&d, "t", &["device", "urandom"], &[]), "err 4");
    assert!(
        d.log()
            .contains("outside the egress allow-list or not granted to this tool"),
        "{}",
        d.log()
    );
    // Granted: the next run connects and opens.
    let net = format!("net=127.0.0.1:{port}");
    let (code, msg) = grant(&d, "t", &[&net, "name=localhost", "device=urandom"], &[]);
    assert_eq!(code, Code::Success, "{msg}");
    assert_eq!(probe(&d, "t", &["connect", "127.0.0.1", &port], &[]), "ok");
    assert_eq!(probe(&d, "t", &["connect", "localhost", &port], &[]), "ok");
    assert_eq!(
        probe(&d, "t", &["device", "urandom"], &[]),
        "ok DeviceKind::Character 1:9"
    );
    // Read-only as granted, and still nothing else.
    assert_eq!(probe(&d, "t", &["device", "urandom", "w"], &[]), "err 4");
    assert_eq!(probe(&d, "t", &["device", "null", "w"], &[]), "err 4");
    assert_eq!(
        probe(&d, "t", &["connect", "127.0.0.2", &port], &[]),
        "err 200"
    );
    // Another tool of the same component has none of it.
    installed(&d, "u", &[], false);
    assert_eq!(
        probe(&d, "u", &["connect", "127.0.0.1", &port], &[]),
        "err 200"
    );
    // Revoked: the next run is refused again.
    let (code, msg) = grant(&d, "t", &[], &[&net]);
    assert_eq!(code, Code::Success, "{msg}");
    assert_eq!(
        probe(&d, "t", &["connect", "127.0.0.1", &port], &[]),
        "err 200"
    );
    let log = d.log();
    assert!(
        log.contains("grant given") && log.contains("grant revoked"),
        "{log}"
    );
    assert!(
        log.contains("by=uid 0")
            || log.contains(&format!("by=uid {}", rustix::process::getuid().as_raw())),
        "{log}"
    );
    drop(listener);
}

#[test]
fn grants_above_the_ceilings_or_malformed_change_nothing() {
    let d = daemon(5432);
    installed(&d, "t", &["net=127.0.0.1:5432"], false);
    let before = shown(&d, "t");
    for (add, remove, code, why) in [
        (
            &["net=10.0.0.0/8:5432"][..],
            &[][..],
            Code::PolicyDenied,
            "not within network.allow",
        ),
        (
            &["net=127.0.0.1:22"],
            &[],
            Code::PolicyDenied,
            "not within network.allow",
        ),
        (
            &["name=example.org"],
            &[],
            Code::PolicyDenied,
            "network.allow_names",
        ),
        (
            &["device=mem"],
            &[],
            Code::PolicyDenied,
            "not in devices.allow",
        ),
        (&["device=zero:rw"], &[], Code::PolicyDenied, "read-only"),
        (&["memory=100G"], &[], Code::PolicyDenied, "memory"),
        (
            &["cpu-budget-ms=99999999"],
            &[],
            Code::PolicyDenied,
            "sandbox.cpu_budget_ms",
        ),
        (
            &["net=127.0.0.1"],
            &[],
            Code::InvalidArgument,
            "NETWORK:PORT",
        ),
        (
            &["device=null", "bogus=1"],
            &[],
            Code::InvalidArgument,
            "unknown kind",
        ),
        (
            &[],
            &["net=127.0.0.2:5432"],
            Code::InvalidArgument,
            "does not hold",
        ),
    ] {
        let (got, msg) = grant(&d, "t", add, remove);
        assert_eq!(got, code, "{add:?} {remove:?}: {msg}");
        assert!(msg.contains(why), "{add:?}: {msg}");
        assert_eq!(shown(&d, "t"), before, "{add:?} changed the grants");
    }
    assert_eq!(
        grant(&d, "nope", &["device=null"], &[]).0,
        Code::ToolNotFound
    );
    // An install above the ceilings installs nothing.
    assert_eq!(
        install(&d, "v", &["net=10.0.0.0/8:5432"], false),
        Code::PolicyDenied
    );
    assert_eq!(
        d.request(&Request::Show { name: "v".into() }).code,
        Code::ToolNotFound
    );
}

#[test]
fn grant_requested_grants_what_the_component_asks_and_no_more() {
    let d = daemon(5432);
    // Shown at install, granted only on request.
    installed(&d, "plain", &[], false);
    let r = d.request(&Request::Show {
        name: "plain".into(),
    });
    let Body::Tool(info) = r.body else { panic!() };
    let asked = info.requested.expect("the probe carries a request");
    assert!(asked.secrets.contains("PROBE_TOKEN"), "{asked:?}");
    assert_eq!(info.grants.unwrap(), Grants::default());
    installed(&d, "asked", &[], true);
    let g = shown(&d, "asked");
    assert_eq!(g.names, ["localhost"]);
    assert_eq!(g.net, asked.net);
    assert_eq!(g.devices.len(), 1);
    assert!(g.devices[0].write);
    // A secret asked for is a name to set, not a value: none is stored.
    assert!(g.secrets.is_empty());
    assert_eq!(
        probe(&d, "asked", &["device", "null", "w"], &[]),
        "ok DeviceKind::Character 1:3"
    );
    // A request above the ceilings is refused as a whole.
    let low =
        TestDaemon::with_config("[network]\nallow = [{ cidr = \"10.0.0.0/8\", ports = [5432] }]\n");
    assert_eq!(install(&low, "asked", &[], true), Code::PolicyDenied);
}

#[test]
fn a_secret_reaches_its_tool_only_and_no_log_or_answer() {
    let d = daemon(5432);
    installed(&d, "owner", &["env=MODE=granted"], false);
    installed(&d, "other", &[], false);
    // Stored through clawosctl, the value on standard input.
    let mut ctl = Command::new(common::CTL)
        .args(["secret", "set", "owner", "PROBE_TOKEN"])
        .env("CLAWOS_SOCKET", &d.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    ctl.stdin
        .take()
        .unwrap()
        .write_all(format!("{SECRET}\n").as_bytes())
        .unwrap();
    let out = ctl.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("secrets:   PROBE_TOKEN (values are never shown)"),
        "{text}"
    );
    assert!(!text.contains(SECRET), "{text}");
    // Its runs read it, through system.get-env and WASI; the client's
    // environment cannot replace it, and does replace an env grant.
    assert_eq!(
        probe(&d, "owner", &["env", "PROBE_TOKEN"], &[]),
        format!("ok {SECRET}")
    );
    assert_eq!(
        probe(&d, "owner", &["wasi-env", "PROBE_TOKEN"], &[]),
        format!("ok {SECRET}")
    );
    assert_eq!(
        probe(
            &d,
            "owner",
            &["env", "PROBE_TOKEN"],
            &[("PROBE_TOKEN", "forged")]
        ),
        format!("ok {SECRET}")
    );
    assert_eq!(probe(&d, "owner", &["env", "MODE"], &[]), "ok granted");
    assert_eq!(
        probe(&d, "owner", &["env", "MODE"], &[("MODE", "client")]),
        "ok client"
    );
    // No other tool sees it.
    assert_eq!(probe(&d, "other", &["env", "PROBE_TOKEN"], &[]), "none");
    assert_eq!(
        probe(&d, "other", &["wasi-env", "PROBE_TOKEN"], &[]),
        "none"
    );
    // show and --json show its name, never its value.
    let json = d.ctl(&["--json", "show", "owner"]);
    let json = String::from_utf8_lossy(&json.stdout);
    assert!(
        json.contains("PROBE_TOKEN") && !json.contains(SECRET),
        "{json}"
    );
    let list = d.ctl(&["--json", "list"]);
    assert!(!String::from_utf8_lossy(&list.stdout).contains(SECRET));
    // Nor is it in the daemon's log, nor in the file any other user can read.
    let log = d.log();
    assert!(
        log.contains("secret stored") && !log.contains(SECRET),
        "{log}"
    );
    let stored = d.state.join("secrets/owner.toml");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Deleted: the next run has none.
    let r = d.request(&Request::Secret {
        name: "owner".into(),
        key: "PROBE_TOKEN".into(),
        value: None,
    });
    assert_eq!(r.code, Code::Success, "{}", r.message);
    assert_eq!(probe(&d, "owner", &["env", "PROBE_TOKEN"], &[]), "none");
    // Bad names and unknown tools are refused.
    for (name, key, code) in [
        ("owner", "1BAD", Code::InvalidArgument),
        ("owner", "A=B", Code::InvalidArgument),
        ("nope", "A", Code::ToolNotFound),
    ] {
        let r = d.request(&Request::Secret {
            name: name.into(),
            key: key.into(),
            value: Some("v".into()),
        });
        assert_eq!(r.code, code, "{name} {key}: {}", r.message);
    }
}

#[test]
fn grants_survive_a_restart_and_a_tool_from_before_grants_keeps_the_config_s_policy() {
    let config = "[network]\nallow = [{ cidr = \"127.0.0.0/8\", ports = [5432] }]\n";
    let d = TestDaemon::with_config(config);
    installed(&d, "kept", &["net=127.0.0.1:5432", "storage=2M"], false);
    installed(&d, "old", &[], false);
    let kept = shown(&d, "kept");
    let old_none = shown(&d, "old");
    let (dir, state) = d.into_state();
    let d = TestDaemon::start_in(dir, state, config);
    assert_eq!(shown(&d, "kept"), kept);
    assert_eq!(shown(&d, "old"), old_none);
    assert!(
        !d.log().contains("tool installed before per-tool grants"),
        "{}",
        d.log()
    );
    // The state as a daemon from before grants left it: no grants
    // directory (and an upgrade cut short: a grants.new beside it). Every
    // tool keeps the config's policy.
    let (dir, state) = d.into_state();
    std::fs::remove_dir_all(state.join("grants")).unwrap();
    std::fs::create_dir(state.join("grants.new")).unwrap();
    std::fs::write(state.join("grants.new/old.toml"), "names = [\"x\"]\n").unwrap();
    let d = TestDaemon::start_in(dir, state, config);
    let old = shown(&d, "old");
    assert_eq!(shown(&d, "kept"), old);
    assert_eq!(old.names, ["localhost"]);
    assert_eq!(old.net.len(), 1);
    assert_eq!(old.net[0].cidr.to_string(), "127.0.0.0/8");
    let devices: Vec<&str> = old.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(devices, ["null", "zero", "urandom"]);
    assert_eq!(
        probe(&d, "old", &["device", "null", "w"], &[]),
        "ok DeviceKind::Character 1:3"
    );
    assert!(
        d.log().contains("tool installed before per-tool grants"),
        "{}",
        d.log()
    );
    assert!(d.state.join("grants/old.toml").is_file());
    assert!(!d.state.join("grants.new").exists());
    // Written down: the next start does not warn again. Once grants are
    // in, a tool without a grants file (an install cut short, the file
    // deleted) gets none, never the config's whole policy.
    // And a tool directory whose record names another tool (whose grants
    // and secrets it would get) is not loaded.
    let (dir, state) = d.into_state();
    std::fs::remove_file(state.join("grants/old.toml")).unwrap();
    std::fs::create_dir(state.join("tools/forged")).unwrap();
    for f in std::fs::read_dir(state.join("tools/kept")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, state.join("tools/forged").join(f.file_name().unwrap())).unwrap();
    }
    let d = TestDaemon::start_in(dir, state, config);
    assert_eq!(
        d.request(&Request::Show {
            name: "forged".into()
        })
        .code,
        Code::ToolNotFound
    );
    assert!(
        d.log()
            .contains("names the tool \"kept\", not its directory's name"),
        "{}",
        d.log()
    );
    assert_eq!(shown(&d, "kept"), old);
    assert_eq!(shown(&d, "old"), old_none);
    assert_eq!(probe(&d, "old", &["device", "null", "w"], &[]), "err 4");
    let log = d.log();
    assert!(
        !log.contains("tool installed before per-tool grants"),
        "{log}"
    );
    assert!(log.contains("tool without a grants file"), "{log}");
    // A removed tool's grants leave with it.
    let r = d.request(&Request::Remove {
        name: "kept".into(),
        keep_data: false,
    });
    assert_eq!(r.code, Code::Success);
    assert!(!d.state.join("grants/kept.toml").exists());
    // And a secret left under the name (a remove cut short) goes to no
    // tool installed under it later.
    std::fs::write(
        d.state.join("secrets/kept.toml"),
        "PROBE_TOKEN = \"left\"\n",
    )
    .unwrap();
    installed(&d, "kept", &[], false);
    assert_eq!(probe(&d, "kept", &["env", "PROBE_TOKEN"], &[]), "none");
    assert!(shown(&d, "kept").secrets.is_empty());
}

#[test]
fn a_run_s_whole_environment_is_bounded_by_the_config_of_now() {
    let config = "[sandbox]\nmax_env_entries = 4\n";
    let d = TestDaemon::with_config(config);
    installed(&d, "t", &["env=A=1", "env=B=2", "env=C=3"], false);
    let r = d.request(&Request::Secret {
        name: "t".into(),
        key: "S".into(),
        value: Some("hidden-9b2c".into()),
    });
    assert_eq!(r.code, Code::Success, "{}", r.message);
    // Four in all: the run starts.
    assert_eq!(
        probe(&d, "t", &["env", "S"], &[("A", "x")]),
        "ok hidden-9b2c"
    );
    // Five: refused, saying where they came from, quoting no value.
    let r = d.request(&Request::Run(RunRequest {
        name: "t".into(),
        args: vec!["env".into(), "S".into()],
        input: vec![],
        env: vec![("X".into(), "y".into())],
        timeout_ms: None,
    }));
    assert_eq!(r.code, Code::QuotaExceeded, "{}", r.message);
    assert_eq!(
        r.message,
        "the run's environment has 5 variables (3 granted, 1 from the request, 1 secrets); sandbox.max_env_entries is 4"
    );
    // The config lowered after the grant: every run of the tool is refused
    // until it is revoked.
    let (dir, state) = d.into_state();
    let d = TestDaemon::start_in(dir, state, "[sandbox]\nmax_env_entries = 3\n");
    let r = d.request(&Request::Run(RunRequest {
        name: "t".into(),
        args: vec!["env".into(), "S".into()],
        input: vec![],
        env: vec![],
        timeout_ms: None,
    }));
    assert_eq!(r.code, Code::QuotaExceeded, "{}", r.message);
    let (code, msg) = grant(&d, "t", &[], &["env=C"]);
    assert_eq!(code, Code::Success, "{msg}");
    assert_eq!(probe(&d, "t", &["env", "A"], &[]), "ok 1");
    // A value longer than ipc.max_arg_bytes lowered since (the secret's
    // 11 bytes past 8): refused, naming the variable, not its value.
    let (dir, state) = d.into_state();
    let d = TestDaemon::start_in(
        dir,
        state,
        "[sandbox]\nmax_env_entries = 3\n[ipc]\nmax_arg_bytes = 8\n",
    );
    let r = d.request(&Request::Run(RunRequest {
        name: "t".into(),
        args: vec!["env".into(), "A".into()],
        input: vec![],
        env: vec![],
        timeout_ms: None,
    }));
    assert_eq!(r.code, Code::QuotaExceeded, "{}", r.message);
    assert_eq!(
        r.message,
        "the value of environment variable \"S\" is longer than ipc.max_arg_bytes (8)"
    );
    assert!(!d.log().contains("hidden-9b2c"), "{}", d.log());
}
