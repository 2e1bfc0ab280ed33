//! The filesystem, device, network and cgroup interfaces through the real
//! daemon: the hostio sample tool uses every function (against a real
//! PostgreSQL for the network), and the escape suite makes one hostile
//! attempt per run with the probe tool, checking the exact P1.7 code and
//! that nothing outside the tool's root was read, written or created.

mod common;

use clawos_bridge::error::Code;
use clawos_bridge::ipc::proto::RunRequest;
use clawos_tool_artifacts::postgres::{self, Postgres};
use common::TestDaemon;
use serial_test::serial;
use std::fs;
use std::path::{Path, PathBuf};

/// A daemon with probe installed, a secret beside the ClawFS root (another
/// tool's directory) and one outside ClawFS altogether.
struct Suite {
    d: TestDaemon,
    root: PathBuf,
    secrets: Vec<PathBuf>,
}

const SECRET: &[u8] = b"secret bytes";

/// The loopback's PostgreSQL port, named (the default allow-list never
/// reaches the loopback).
const LOOPBACK_PG: &str = "[network]\nallow = [{ cidr = \"127.0.0.0/8\", ports = [5432] }]\n";

impl Suite {
    fn new() -> Suite {
        Suite::with_config("")
    }

    fn with_config(config: &str) -> Suite {
        let d = TestDaemon::with_config(config);
        d.install_with_everything("probe");
        // The tool's root exists once it has run.
        let (r, _) = d.run("probe", &["stat", ""]);
        assert_eq!(r.code, Code::Success, "{}", r.message);
        let root = d.state.join("clawfs/probe");
        assert!(root.is_dir(), "{}", root.display());
        let other = d.state.join("clawfs/other");
        fs::create_dir_all(&other).unwrap();
        let secrets = vec![d.dir.path().join("secret"), other.join("secret")];
        for s in &secrets {
            fs::write(s, SECRET).unwrap();
        }
        Suite { d, root, secrets }
    }

    /// Run probe with `args` and `input`; returns its output line.
    fn probe_with(&self, args: &[&str], input: &[u8]) -> String {
        let mut all = vec!["probe"];
        all.extend_from_slice(args);
        let (r, out) = self.d.run_with(RunRequest {
            name: "probe".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            input: input.to_vec(),
            env: vec![],
            timeout_ms: None,
        });
        assert_eq!(
            r.code,
            Code::Success,
            "{all:?}: {}\n{}",
            r.message,
            self.d.log()
        );
        String::from_utf8(out.output).unwrap().trim_end().to_owned()
    }

    fn probe(&self, args: &[&str]) -> String {
        self.probe_with(args, b"")
    }

    /// Expect `args` to be refused with `code`.
    fn refused(&self, args: &[&str], code: Code) {
        let got = self.probe_with(args, b"overwritten!");
        let want = format!("err {}", code.value());
        assert!(
            got.starts_with(&want),
            "{args:?}: expected {want} ({code}), got {got:?}"
        );
        self.intact();
    }

    /// Nothing outside the root changed: the secrets hold their bytes and
    /// no new entry appeared beside the root or the daemon's files.
    fn intact(&self) {
        for s in &self.secrets {
            assert_eq!(fs::read(s).unwrap(), SECRET, "{} changed", s.display());
        }
        let names = |dir: &Path| -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&self.d.state.join("clawfs")), ["other", "probe"]);
        assert_eq!(names(&self.d.state.join("clawfs/other")), ["secret"]);
        assert!(
            names(self.d.dir.path()).iter().all(|n| [
                "bridge.sock",
                "daemon.toml",
                "secret",
                "state"
            ]
            .contains(&n.as_str())),
            "{:?}",
            names(self.d.dir.path())
        );
    }
}

#[test]
#[serial(postgres)]
fn hostio_uses_every_function_against_a_real_postgres() {
    let pg = Postgres::start(postgres::PORT);
    let d = TestDaemon::with_config(LOOPBACK_PG);
    d.install_with_everything("hostio");
    let v2 = clawos_bridge::cgroup::cgroup2_mounted();
    let cgroup = if v2 {
        "cgroup=available"
    } else {
        "cgroup=unavailable"
    };
    let pg_arg = format!("pg=127.0.0.1:{}", pg.port);
    let (r, out) = d.run("hostio", &[cgroup, &pg_arg]);
    let text = String::from_utf8_lossy(&out.output);
    assert_eq!(
        r.code,
        Code::Success,
        "{}\n{text}\nlogs: {:?}\n{}",
        r.message,
        out.logs,
        d.log()
    );
    assert!(
        text.contains("ok postgres query: [\"42\", \"postgres\"] from 15"),
        "{text}"
    );
    let checks = if v2 { 37 } else { 32 };
    assert!(
        text.ends_with(&format!("all {checks} checks passed\n")),
        "{text}"
    );
    // The proxy logged the connection it opened and the ones it refused.
    let log = d.log();
    assert!(log.contains("egress connection opened"), "{log}");
    assert!(
        log.contains("\"127.0.0.1\" port 80 is outside the egress allow-list"),
        "{log}"
    );
    drop(pg);
}

#[test]
fn filesystem_escapes_are_refused() {
    let s = Suite::new();
    let planted_out = s.d.dir.path().join("secret");
    let abs = planted_out.to_str().unwrap();
    fs::create_dir(s.root.join("a")).unwrap();
    // `..` chains and absolute paths, for every kind of call.
    for p in [
        "../other/secret",
        "../../secret",
        "a/../../other/secret",
        "./../probe/../other/secret",
    ] {
        s.refused(&["read", p], Code::PolicyDenied);
        s.refused(&["write", p], Code::PolicyDenied);
        s.refused(&["stat", p], Code::PolicyDenied);
        s.refused(&["chmod", p, "777"], Code::PolicyDenied);
        s.refused(&["truncate", p, "0"], Code::PolicyDenied);
        s.refused(&["unlink", p], Code::PolicyDenied);
    }
    s.refused(&["read", abs], Code::PolicyDenied);
    s.refused(&["write", "/etc/clawos-escape"], Code::PolicyDenied);
    s.refused(&["mkdir", "../escaped", "493"], Code::PolicyDenied);
    s.refused(&["opendir", ".."], Code::PolicyDenied);
    // Symlinks made by the tool, through the interface and through WASI
    // (whose paths are the same, from "/").
    for (target, link) in [
        (abs, "abs-link"),
        ("../other/secret", "rel-link"),
        ("../..", "wsdir"),
        ("..", "up"),
        ("../../secret", "a/rel-link"),
        ("x/../../..", "a/rel-link"),
    ] {
        s.refused(&["symlink", target, link], Code::PolicyDenied);
        s.refused(&["wasi-symlink", target, link], Code::Eperm);
        assert!(
            fs::symlink_metadata(s.root.join(link)).is_err(),
            "{link} made"
        );
    }
    // A symlink on the way to the link does not fool the check: `s -> .`
    // puts `s/l` in the root itself, where `../x` leads out.
    assert_eq!(s.probe(&["symlink", ".", "s"]), "ok");
    s.refused(&["symlink", "../x", "s/l"], Code::PolicyDenied);
    s.refused(&["wasi-symlink", "../x", "s/l"], Code::Eperm);
    assert!(fs::symlink_metadata(s.root.join("l")).is_err());
    // Inside the root, both make them.
    assert_eq!(s.probe(&["symlink", "../a", "a/self"]), "ok");
    assert_eq!(s.probe(&["wasi-symlink", "../a", "a/self2"]), "ok");
    assert_eq!(s.probe(&["wasi-symlink", "a", "to-a"]), "ok");
    // Symlinks planted from outside.
    std::os::unix::fs::symlink(&planted_out, s.root.join("planted-abs")).unwrap();
    std::os::unix::fs::symlink("../other/secret", s.root.join("planted-rel")).unwrap();
    std::os::unix::fs::symlink("/", s.root.join("planted-slash")).unwrap();
    for p in ["planted-abs", "planted-rel", "planted-slash/etc/passwd"] {
        s.refused(&["read", p], Code::PolicyDenied);
        s.refused(&["write", p], Code::PolicyDenied);
        s.refused(&["append", p], Code::PolicyDenied);
        s.refused(&["chmod", p, "777"], Code::PolicyDenied);
    }
    s.refused(
        &["write", "planted-slash/tmp/clawos-escape"],
        Code::PolicyDenied,
    );
    // Hard links: made by the tool to a file outside, and planted.
    s.refused(&["link", "../other/secret", "mine"], Code::PolicyDenied);
    fs::hard_link(&planted_out, s.root.join("planted-hard")).unwrap();
    fs::hard_link(s.secrets[1].as_path(), s.root.join("planted-hard-2")).unwrap();
    for p in ["planted-hard", "planted-hard-2"] {
        s.refused(&["read", p], Code::PolicyDenied);
        s.refused(&["write", p], Code::PolicyDenied);
        s.refused(&["append", p], Code::PolicyDenied);
        s.refused(&["stat", p], Code::PolicyDenied);
        s.refused(&["truncate", p, "0"], Code::PolicyDenied);
        s.refused(&["chmod", p, "666"], Code::PolicyDenied);
        s.refused(&["link", p, "again"], Code::PolicyDenied);
        s.refused(&["wasi-link", p, "again"], Code::Eperm);
        s.refused(&["wasi-link", p, "a/again"], Code::Eperm);
        assert!(!s.root.join("again").exists() && !s.root.join("a/again").exists());
    }
    // The root itself keeps its mode and owner, however it is named.
    for p in ["", ".", "a/..", "a/../.", "to-a/.."] {
        s.refused(&["chmod", p, "777"], Code::PolicyDenied);
        s.refused(&["chown", p, "0", "0"], Code::PolicyDenied);
    }
    // WASI has no chmod: std's set_permissions fails, whatever it names.
    assert!(s.probe(&["wasi-chmod", "/"]).starts_with("err "));
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&s.root).unwrap().permissions())
            & 0o7777,
        0o700
    );
    // Rename out of the root, or of a file outside into it.
    assert_eq!(s.probe_with(&["write", "mine.txt"], b"mine"), "ok 4");
    s.refused(&["rename", "mine.txt", "../moved"], Code::PolicyDenied);
    s.refused(&["rename", "../other/secret", "stolen"], Code::PolicyDenied);
    s.refused(
        &["rename", "mine.txt", "planted-slash/tmp/moved"],
        Code::PolicyDenied,
    );
    // setuid/setgid through chmod, and owners beyond policy.
    s.refused(&["chmod", "mine.txt", "4755"], Code::Eperm);
    s.refused(&["chmod", "mine.txt", "2755"], Code::Eperm);
    s.refused(&["chown", "mine.txt", "4242", "0"], Code::Eperm);
    s.refused(&["chown", "mine.txt", "0", "4242"], Code::Eperm);
    let mode = fs::metadata(s.root.join("mine.txt")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o7000,
        0
    );
    // Forged handles trap; the run's code says so.
    let (r, _) = s.d.run("probe", &["forge-file"]);
    assert_eq!(r.code, Code::InvalidHandle, "{}", r.message);
    s.intact();
    s.d.assert_serving();
}

#[test]
fn devices_are_opened_by_allow_listed_name_only() {
    let s = Suite::new();
    assert_eq!(
        s.probe(&["device", "null", "w"]),
        "ok DeviceKind::Character 1:3"
    );
    assert_eq!(
        s.probe(&["device", "urandom"]),
        "ok DeviceKind::Character 1:9"
    );
    for name in [
        "/dev/mem",
        "mem",
        "kmem",
        "/dev/null",
        "../../dev/null",
        "sda",
        "vda",
        "port",
    ] {
        s.refused(&["device", name], Code::Eperm);
    }
    s.refused(&["device", "zero", "w"], Code::Eperm);
    // A device node planted in ClawFS is not opened as a file either (the
    // numbers of /dev/zero: opening it has no side effect, so the refusal
    // seen is ClawFS's own, through the interface and through WASI).
    rustix::fs::mknodat(
        rustix::fs::CWD,
        s.root.join("planted-dev").as_path(),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 5),
    )
    .unwrap();
    s.refused(&["read", "planted-dev"], Code::PolicyDenied);
    s.refused(&["wasi-read", "/planted-dev"], Code::Eperm);
    // A planted FIFO would block an open: refused before it.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        s.root.join("planted-fifo").as_path(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o666),
        0,
    )
    .unwrap();
    s.refused(&["read", "planted-fifo"], Code::PolicyDenied);
    s.refused(&["wasi-read", "/planted-fifo"], Code::Eperm);
}

#[test]
fn egress_is_postgres_only_and_resolution_is_policed() {
    let s = Suite::new();
    for port in ["80", "22", "443", "5433", "6379"] {
        s.refused(&["connect", "127.0.0.1", port], Code::PolicyDenied);
        s.refused(&["connect", "localhost", port], Code::PolicyDenied);
    }
    s.refused(&["connect", "example.com", "5432"], Code::PolicyDenied);
    s.refused(&["resolve", "example.com"], Code::PolicyDenied);
    s.refused(&["resolve", "exfil.attacker.example"], Code::PolicyDenied);
    // localhost is allowed as a name, but its addresses are the loopback,
    // which no default rule names: however the address is spelt.
    s.refused(&["resolve", "localhost"], Code::PolicyDenied);
    for host in [
        "localhost",
        "127.0.0.1",
        "127.1",
        "2130706433",
        "0177.0.0.1",
        "::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "169.254.169.254",
    ] {
        s.refused(&["connect", host, "5432"], Code::PolicyDenied);
    }
    let named = Suite::with_config(LOOPBACK_PG);
    assert_eq!(named.probe(&["resolve", "localhost"]), "ok 1 addresses");
    // WASI sockets are not linked to the network: no socket of the tool's own.
    // (WASI's access-denied, EACCES, which the probe reports as EPERM.)
    s.refused(&["wasi-connect", "127.0.0.1", "5432"], Code::Eperm);
    let log = s.d.log();
    assert!(
        log.contains("\"exfil.attacker.example\" is not in network.allow_names"),
        "{log}"
    );
}

#[test]
#[serial(postgres)]
fn closed_connections_and_quotas_answer_their_codes() {
    let pg = Postgres::start(postgres::PORT);
    let s = Suite::with_config(
        "[clawfs]\nmax_open_files = 3\nmax_write_bytes = 10\n[network]\nmax_connections = 0\nallow = [{ cidr = \"127.0.0.0/8\", ports = [5432] }]\n",
    );
    // Handles: the fourth open file is over the limit.
    assert_eq!(s.probe(&["open-files", "f"]), "err 105 after 3");
    // WASI descriptors count against the same limit.
    let got = s.probe(&["wasi-open-files", "g"]);
    assert!(
        got.starts_with("err 201") && got.ends_with("after 3"),
        "{got}"
    );
    // Bytes written: 10 per instance; the first 10 are accepted.
    assert_eq!(s.probe_with(&["write", "q"], b"0123456789abc"), "ok 10");
    assert_eq!(s.probe_with(&["write", "q"], b"0123456789"), "ok 10");
    s.refused(&["truncate", "q", "1000"], Code::QuotaExceeded);
    // A write far past the end is charged for the gap it makes.
    s.refused(&["sparse", "s", "1000000"], Code::QuotaExceeded);
    // Connections: none allowed by this config.
    s.refused(&["connect", "127.0.0.1", "5432"], Code::QuotaExceeded);
    drop(s);
    let d = TestDaemon::with_config(LOOPBACK_PG);
    d.install_with_everything("probe");
    let (r, out) = d.run("probe", &["closed-conn", "127.0.0.1", &pg.port.to_string()]);
    assert_eq!(r.code, Code::Success, "{}", r.message);
    assert_eq!(String::from_utf8_lossy(&out.output), "err 206\n");
}

#[test]
fn wasi_file_io_is_confined_to_the_same_root() {
    let s = Suite::new();
    fs::create_dir(s.root.join("sub")).unwrap();
    // Ordinary std::fs works inside the root, which is the guest's "/".
    assert_eq!(s.probe_with(&["wasi-write", "notes.txt"], b"kept"), "ok");
    assert_eq!(fs::read(s.root.join("notes.txt")).unwrap(), b"kept");
    assert_eq!(s.probe(&["wasi-read", "/notes.txt"]), "ok kept");
    assert_eq!(s.probe(&["wasi-mkdir", "dir"]), "ok");
    assert_eq!(
        s.probe(&["wasi-rename", "notes.txt", "dir/notes.txt"]),
        "ok"
    );
    assert_eq!(s.probe(&["wasi-readdir", "dir"]), "ok 1 entries");
    // Truncation on open, deferred past the checks, still happens.
    assert_eq!(s.probe(&["wasi-trunc", "dir/notes.txt"]), "ok");
    assert_eq!(fs::metadata(s.root.join("dir/notes.txt")).unwrap().len(), 0);
    // The same escapes, through WASI: EPERM (WASI's not-permitted).
    for p in ["../other/secret", "../../secret", "sub/../../other/secret"] {
        s.refused(&["wasi-read", p], Code::Eperm);
        s.refused(&["wasi-write", p], Code::Eperm);
        s.refused(&["wasi-stat", p], Code::Eperm);
        s.refused(&["wasi-mkdir", p], Code::Eperm);
    }
    // An absolute path names a file in the tool's own root, not the host's.
    s.refused(&["wasi-read", "/etc/passwd"], Code::Enoent);
    s.refused(&["wasi-read", s.secrets[0].to_str().unwrap()], Code::Enoent);
    s.refused(&["wasi-link", "../other/secret", "hard"], Code::Eperm);
    s.refused(&["wasi-rename", "dir/notes.txt", "../moved"], Code::Eperm);
    std::os::unix::fs::symlink(&s.secrets[0], s.root.join("planted-abs")).unwrap();
    std::os::unix::fs::symlink("../other/secret", s.root.join("planted-rel")).unwrap();
    fs::hard_link(&s.secrets[1], s.root.join("planted-hard")).unwrap();
    for p in ["planted-abs", "planted-rel", "planted-hard"] {
        s.refused(&["wasi-read", p], Code::Eperm);
        s.refused(&["wasi-open-read", p], Code::Eperm);
        s.refused(&["wasi-write", p], Code::Eperm);
        s.refused(&["wasi-trunc", p], Code::Eperm);
        s.refused(&["wasi-append", p], Code::Eperm);
    }
    let log = s.d.log();
    assert!(log.contains("wasi open refused"), "{log}");
}

/// Ordinary WASI writes at the end and at an offset work in the sandboxed
/// worker: `append(true)` becomes `pwritev2(RWF_APPEND)` in the worker, a
/// system call its seccomp filter once lacked (the worker died, 204).
#[test]
fn wasi_appends_work_in_the_sandboxed_worker() {
    let s = Suite::new();
    fs::write(s.root.join("log.txt"), b"one\n").unwrap();
    assert_eq!(s.probe_with(&["wasi-append", "log.txt"], b"two\n"), "ok");
    assert_eq!(s.probe_with(&["wasi-append", "log.txt"], b"three\n"), "ok");
    assert_eq!(
        fs::read(s.root.join("log.txt")).unwrap(),
        b"one\ntwo\nthree\n"
    );
    s.intact();
}
