//! Installing, listing, removing and reloading tools, refusing broken
//! components with their codes, and `clawosctl` end to end.

mod common;

use clawos_bridge::error::Code;
use clawos_bridge::ipc::proto::{Body, ComponentSource, KeptData, Request};
use common::TestDaemon;

fn install_bytes(
    d: &TestDaemon,
    name: &str,
    bytes: Vec<u8>,
) -> clawos_bridge::ipc::proto::Response {
    d.request(&Request::Install {
        name: name.into(),
        source: ComponentSource::Bytes(bytes),
        replace: false,
        kept_data: Default::default(),
        grants: vec![],
        grant_requested: false,
    })
}

#[test]
fn broken_components_are_refused_with_their_codes() {
    let d = TestDaemon::start();
    // Not wasm at all.
    let r = install_bytes(&d, "junk", b"\x7fELF not a component".to_vec());
    assert_eq!(r.code, Code::WasmInvalidComponent, "{}", r.message);
    // A core module, not a component.
    let r = install_bytes(&d, "core", wat::parse_str("(module)").unwrap());
    assert_eq!(r.code, Code::WasmInvalidComponent, "{}", r.message);
    // A truncated component.
    let mut hello = clawos_tool_artifacts::bytes("hello");
    hello.truncate(hello.len() / 2);
    let r = install_bytes(&d, "half", hello);
    assert_eq!(r.code, Code::WasmInvalidComponent, "{}", r.message);
    // Imports an interface the bridge does not provide.
    let missing = wat::parse_str(
        r#"(component (import "clawos:bridge/teleport@0.1.0" (instance (export "beam" (func)))))"#,
    )
    .unwrap();
    let r = install_bytes(&d, "missing", missing);
    assert_eq!(r.code, Code::WasmLinkError, "{}", r.message);
    assert!(r.message.contains("teleport"), "{}", r.message);
    // Links, but does not export `run`.
    let r = install_bytes(&d, "empty", wat::parse_str("(component)").unwrap());
    assert_eq!(r.code, Code::WasmLinkError, "{}", r.message);
    // Nothing of the refused installs is left behind.
    let Body::Tools(tools) = d.request(&Request::List).body else {
        panic!()
    };
    assert!(tools.is_empty(), "{tools:?}");
    let leftovers: Vec<_> = std::fs::read_dir(d.state.join("tools")).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    d.assert_serving();
}

#[test]
fn names_exists_not_found_replace_and_remove() {
    let d = TestDaemon::start();
    let r = d.request(&Request::Install {
        name: "../etc".into(),
        source: ComponentSource::Bytes(vec![]),
        replace: false,
        kept_data: Default::default(),
        grants: vec![],
        grant_requested: false,
    });
    assert_eq!(r.code, Code::InvalidArgument, "{}", r.message);
    d.install_ok("hello");
    let r = d.install("hello");
    assert_eq!(r.code, Code::ToolExists, "{}", r.message);
    let r = d.request(&Request::Install {
        name: "hello".into(),
        source: ComponentSource::Bytes(clawos_tool_artifacts::bytes("echo")),
        replace: true,
        kept_data: Default::default(),
        grants: vec![],
        grant_requested: false,
    });
    assert_eq!(r.code, Code::Success, "{}", r.message);
    let (r, out) = d.run("hello", &["now", "echo"]);
    assert_eq!(
        (r.code, out.output.as_slice()),
        (Code::Success, &b"now echo"[..])
    );
    let r = d.request(&Request::Remove {
        name: "hello".into(),
        keep_data: false,
    });
    assert_eq!(r.code, Code::Success);
    assert!(!d.state.join("tools/hello").exists());
    let r = d.request(&Request::Remove {
        name: "hello".into(),
        keep_data: false,
    });
    assert_eq!(r.code, Code::ToolNotFound);
    let r = d.request(&Request::Run(clawos_bridge::ipc::proto::RunRequest {
        name: "hello".into(),
        args: vec![],
        input: vec![],
        env: vec![],
        timeout_ms: None,
    }));
    assert_eq!(r.code, Code::ToolNotFound, "{}", r.message);
}

#[test]
fn tools_survive_a_restart_and_stale_artifacts_are_recompiled() {
    let d = TestDaemon::start();
    d.install_ok("hello");
    let (dir, state) = d.into_state();
    // An artifact this engine cannot load is rebuilt from the component.
    std::fs::write(state.join("tools/hello/component.cwasm"), b"garbage").unwrap();
    let mut d = TestDaemon::start_in(dir, state, "");
    let Body::Tools(tools) = d.request(&Request::List).body else {
        panic!()
    };
    assert_eq!(
        tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["hello"]
    );
    let (r, out) = d.run("hello", &["again"]);
    assert_eq!(
        (r.code, out.output.as_slice()),
        (Code::Success, &b"hello, again\n"[..])
    );
    assert!(d.log().contains("recompiling from the component"));
    d.stop();
}

#[test]
fn install_by_path_is_root_only_and_works_for_root() {
    let d = TestDaemon::start();
    let path = clawos_tool_artifacts::path("hello");
    let r = d.request(&Request::Install {
        name: "hello".into(),
        source: ComponentSource::Path(path.to_string_lossy().into_owned()),
        replace: false,
        kept_data: Default::default(),
        grants: vec![],
        grant_requested: false,
    });
    // The tests run as root (the appliance's daemon does too).
    assert_eq!(
        rustix::process::geteuid().as_raw(),
        0,
        "these tests run as root"
    );
    assert_eq!(r.code, Code::Success, "{}", r.message);
    let r = d.request(&Request::Install {
        name: "nope".into(),
        source: ComponentSource::Path("/nonexistent.wasm".into()),
        replace: false,
        kept_data: Default::default(),
        grants: vec![],
        grant_requested: false,
    });
    assert_eq!(r.code, Code::Enoent, "{}", r.message);
}

#[test]
fn clawosctl_end_to_end() {
    let d = TestDaemon::start();
    let hello = clawos_tool_artifacts::path("hello");
    let out = d.ctl(&["install", "hello", hello.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("hello  sha256:"));

    let out = d.ctl(&["run", "hello", "ClawOS"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"hello, ClawOS\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "[info] greeting ClawOS\n"
    );

    let out = d.ctl(&["--json", "run", "hello"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], 0);
    assert_eq!(v["name"], "SUCCESS");
    assert_eq!(v["body"]["output"], "hello, world\n");

    let out = d.ctl(&["run", "missing"]);
    assert_eq!(out.status.code(), Some(202));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TOOL_NOT_FOUND (202)"));

    let misbehave = clawos_tool_artifacts::path("misbehave");
    d.ctl(&["install", "misbehave", misbehave.to_str().unwrap()]);
    assert_eq!(
        d.ctl(&["run", "misbehave", "exit", "42"]).status.code(),
        Some(42)
    );
    assert_eq!(
        d.ctl(&["run", "misbehave", "forge-handle"]).status.code(),
        Some(206)
    );

    let out = d.ctl(&["list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("hello") && text.contains("misbehave"),
        "{text}"
    );
    let out = d.ctl(&["--json", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["body"]["tools"], 2);
    assert_eq!(v["body"]["memory_limit_bytes"], 268435456u64);
    assert_eq!(d.ctl(&["remove", "hello"]).status.code(), Some(0));
    assert_eq!(d.ctl(&["run", "hello"]).status.code(), Some(202));

    let out = d.ctl(&["run", "misbehave", "--env", "NOEQUALS"]);
    assert_eq!(out.status.code(), Some(208));
    let out = std::process::Command::new(common::CTL)
        .args(["--socket", "/nonexistent/sock", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is clawos-wasm-daemon running?"));
}

fn assert_help_mentions(binary: &str, words: &[&str]) {
    let out = std::process::Command::new(binary)
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for word in words {
        assert!(text.contains(word), "{binary} --help lacks {word}:\n{text}");
    }
}

#[test]
fn help_says_what_each_binary_does() {
    assert_help_mentions(
        common::CTL,
        &[
            "install",
            "list",
            "run",
            "remove",
            "status",
            "--json",
            "Exit status",
        ],
    );
    assert_help_mentions(
        common::DAEMON,
        &[
            "--config",
            "--socket",
            "--state-dir",
            "--check-config",
            "SIGTERM",
        ],
    );
}

#[test]
fn a_bad_config_stops_the_daemon_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    let refused = |text: &str| {
        std::fs::write(&cfg, text).unwrap();
        let out = std::process::Command::new(common::DAEMON)
            .arg("--config")
            .arg(&cfg)
            .arg("--check-config")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused("[sandbox]\nmemory_limit_bytes = 12\n");
    assert!(err.contains("sandbox.memory_limit_bytes = 12"), "{err}");
    let err = refused("disable_sandbox = true\n");
    assert!(err.contains("disable_sandbox"), "{err}");
}

/// Run tool `name` (the probe) with `args` and `input`; its one line.
fn probe(d: &TestDaemon, name: &str, args: &[&str], input: &[u8]) -> String {
    let (r, out) = d.run_with(clawos_bridge::ipc::proto::RunRequest {
        name: name.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        input: input.to_vec(),
        env: vec![],
        timeout_ms: None,
    });
    assert_eq!(r.code, Code::Success, "{args:?}: {}", r.message);
    String::from_utf8_lossy(&out.output).trim_end().to_owned()
}

fn install_with(
    d: &TestDaemon,
    name: &str,
    tool: &str,
    replace: bool,
    kept_data: KeptData,
) -> clawos_bridge::ipc::proto::Response {
    d.request(&Request::Install {
        name: name.into(),
        source: ComponentSource::Bytes(clawos_tool_artifacts::bytes(tool)),
        replace,
        kept_data,
        grants: vec![],
        grant_requested: false,
    })
}

fn remove(d: &TestDaemon, name: &str, keep_data: bool) {
    let r = d.request(&Request::Remove {
        name: name.into(),
        keep_data,
    });
    assert_eq!(r.code, Code::Success, "{}", r.message);
}

#[test]
fn a_tools_data_leaves_with_it_and_never_passes_silently_to_another_component() {
    let d = TestDaemon::start();
    let data = d.state.join("clawfs/t");
    let ok =
        |r: clawos_bridge::ipc::proto::Response| assert_eq!(r.code, Code::Success, "{}", r.message);

    // Removed: the data goes too; the next tool of the name starts empty.
    ok(install_with(&d, "t", "probe", false, KeptData::Refuse));
    assert_eq!(probe(&d, "t", &["write", "secret.txt"], b"s3cret"), "ok 6");
    remove(&d, "t", false);
    assert!(!data.exists());
    ok(install_with(&d, "t", "probe", false, KeptData::Refuse));
    assert_eq!(probe(&d, "t", &["read", "secret.txt"], b""), "err 3");

    // Replaced (an upgrade): the data stays with the name.
    assert_eq!(probe(&d, "t", &["write", "secret.txt"], b"s3cret"), "ok 6");
    ok(install_with(&d, "t", "probe", true, KeptData::Refuse));
    assert_eq!(probe(&d, "t", &["read", "secret.txt"], b""), "ok s3cret");

    // Kept: the same component gets it back...
    remove(&d, "t", true);
    assert!(data.join("secret.txt").exists());
    ok(install_with(&d, "t", "probe", false, KeptData::Refuse));
    assert_eq!(probe(&d, "t", &["read", "secret.txt"], b""), "ok s3cret");
    // ...another component only if the operator says so.
    remove(&d, "t", true);
    let r = install_with(&d, "t", "hello", false, KeptData::Refuse);
    assert_eq!(r.code, Code::ToolExists, "{}", r.message);
    assert!(
        r.message
            .starts_with("ClawFS data of a removed tool (component sha256 ")
            && r.message.contains("--adopt-data")
            && r.message.contains("--discard-data"),
        "{}",
        r.message
    );
    assert!(data.join("secret.txt").exists());
    // (A probe built otherwise is another component: the probe with one
    // more custom section stands in for it.)
    let other = {
        let mut b = clawos_tool_artifacts::bytes("probe");
        let name = b"another-build";
        let mut payload = vec![name.len() as u8];
        payload.extend_from_slice(name);
        payload.push(b'1');
        b.push(0);
        b.push(payload.len() as u8);
        b.extend_from_slice(&payload);
        b
    };
    let install_other = |kept_data| {
        d.request(&Request::Install {
            name: "t".into(),
            source: ComponentSource::Bytes(other.clone()),
            replace: false,
            kept_data,
            grants: vec![],
            grant_requested: false,
        })
    };
    assert_eq!(install_other(KeptData::Refuse).code, Code::ToolExists);
    ok(install_other(KeptData::Adopt));
    assert_eq!(probe(&d, "t", &["read", "secret.txt"], b""), "ok s3cret");
    // Discarded at install: gone before the new tool's first run, even
    // for the very component that kept it.
    remove(&d, "t", true);
    ok(install_with(&d, "t", "probe", false, KeptData::Discard));
    assert_eq!(probe(&d, "t", &["read", "secret.txt"], b""), "err 3");

    // Data that no record explains (left by an older daemon) is refused too.
    remove(&d, "t", false);
    std::fs::create_dir_all(d.state.join("clawfs/old")).unwrap();
    std::fs::write(d.state.join("clawfs/old/secret.txt"), b"x").unwrap();
    let r = install_with(&d, "old", "probe", false, KeptData::Refuse);
    assert_eq!(r.code, Code::ToolExists, "{}", r.message);
    assert!(r.message.contains("(component unknown)"), "{}", r.message);

    // A removed tool's links cannot make the delete leave its root.
    std::fs::write(d.state.join("outside.txt"), b"keep me").unwrap();
    ok(install_with(&d, "t", "probe", false, KeptData::Refuse));
    assert_eq!(probe(&d, "t", &["mkdir", "d", "448"], b""), "ok");
    std::os::unix::fs::symlink("../../outside.txt", data.join("d/link")).unwrap();
    std::os::unix::fs::symlink(d.state.join("tools"), data.join("tools")).unwrap();
    remove(&d, "t", false);
    assert!(!data.exists());
    assert_eq!(
        std::fs::read(d.state.join("outside.txt")).unwrap(),
        b"keep me"
    );
    assert!(d.state.join("tools").is_dir());
    // Nothing of the tool's data or records is left behind.
    let left: Vec<_> = std::fs::read_dir(d.state.join("clawfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("old")]);
    d.assert_serving();
}

#[test]
fn clawosctl_keeps_adopts_and_discards_data() {
    let d = TestDaemon::start();
    let data = d.state.join("clawfs/t");
    let probe_wasm = clawos_tool_artifacts::path("probe");
    let hello_wasm = clawos_tool_artifacts::path("hello");
    let ok = |args: &[&str]| {
        let o = d.ctl(args);
        assert!(o.status.success(), "{args:?}: {o:?}");
    };
    ok(&["install", "t", probe_wasm.to_str().unwrap()]);
    assert_eq!(probe(&d, "t", &["write", "f"], b"x"), "ok 1");
    ok(&["remove", "--keep-data", "t"]);
    assert!(data.join("f").exists());
    let o = d.ctl(&["install", "t", hello_wasm.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(207), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--adopt-data"),
        "{o:?}"
    );
    ok(&[
        "install",
        "--discard-data",
        "t",
        hello_wasm.to_str().unwrap(),
    ]);
    assert!(!data.exists());
    ok(&["remove", "t"]);
}
