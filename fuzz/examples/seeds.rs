//! Writes the starting corpus of each fuzz target to `fuzz/seeds/<target>/`:
//! real messages made with the bridge's own types and encoders, the
//! repository's config files, and small components. Run it after a protocol
//! change (`cargo run --example seeds` in fuzz/) and commit what changes;
//! `scripts/fuzz.sh` copies these into the corpus it grows under the cache.

use clawos_bridge::config::Config;
use clawos_bridge::error::{Code, Failure};
use clawos_bridge::host::logging::LogLine;
use clawos_bridge::ipc::frame;
use clawos_bridge::ipc::proto::{
    Body, ComponentSource, DaemonStatus, Request, Response, RunRequest,
};
use clawos_bridge::outside::{CgroupCall, CgroupReply};
use clawos_bridge::registry::ToolInfo;
use clawos_bridge::runtime::RunInput;
use clawos_bridge::runtime::outcome::RunOutcome;
use clawos_bridge::sandbox::channel::{FromWorker, Layers, Setup, Spawn, Spawned, ToWorker};
use serde::Serialize;
use std::path::{Path, PathBuf};

fn requests() -> Vec<(&'static str, Request)> {
    vec![
        ("list", Request::List),
        ("status", Request::Status),
        (
            "remove",
            Request::Remove {
                name: "hello".into(),
                keep_data: false,
            },
        ),
        (
            "install-bytes",
            Request::Install {
                name: "hello".into(),
                source: ComponentSource::Bytes(empty_component()),
                replace: false,
                kept_data: Default::default(),
                grants: vec![],
                grant_requested: false,
            },
        ),
        (
            "install-path",
            Request::Install {
                name: "echo".into(),
                source: ComponentSource::Path("/var/lib/clawos/incoming/echo.wasm".into()),
                replace: true,
                kept_data: Default::default(),
                grants: vec![],
                grant_requested: false,
            },
        ),
        (
            "run",
            Request::Run(RunRequest {
                name: "echo".into(),
                args: vec!["--upper".into(), "x".into()],
                input: b"hello\n".to_vec(),
                env: vec![("LANG".into(), "C".into()), ("EMPTY".into(), String::new())],
                timeout_ms: Some(2_000),
            }),
        ),
    ]
}

fn responses() -> Vec<(&'static str, Response)> {
    let tool = ToolInfo {
        name: "hello".into(),
        sha256: "ab".repeat(32),
        component_bytes: 8,
        artifact_bytes: 4096,
        installed_at: 1_796_000_000,
        storage: Some(clawos_bridge::clawfs::quota::StorageUse {
            bytes: 8 << 20,
            inodes: 3,
            quota_bytes: 8 << 20,
            quota_inodes: 200,
        }),
    };
    vec![
        (
            "failure",
            Response::failure(&Failure::new(
                Code::Eproto,
                "field run.name is 65 bytes; the limit is 64",
            )),
        ),
        ("tool", Response::ok(Body::Tool(tool.clone()))),
        ("tools", Response::ok(Body::Tools(vec![tool]))),
        ("run", Response::ok(Body::Run(Box::new(outcome())))),
        (
            "status",
            Response::ok(Body::Status(DaemonStatus {
                version: "0.1.0".into(),
                protocol: frame::VERSION,
                pid: 1234,
                tools: 1,
                max_concurrent_runs: 8,
                ..DaemonStatus::default()
            })),
        ),
    ]
}

fn outcome() -> RunOutcome {
    RunOutcome {
        code: Code::WasmCpuDeadline,
        message: "cpu budget of 10000 ms spent".into(),
        exit_status: Some(3),
        output: b"out".to_vec(),
        stdout: b"stdout\n".to_vec(),
        stderr: b"stderr\n".to_vec(),
        logs: vec![LogLine {
            level: "info".into(),
            message: "started".into(),
        }],
        logs_dropped: 2,
        instance_id: 7,
        instantiate_us: 150,
        run_us: 9_000,
        memory_peak: 1 << 20,
    }
}

fn from_worker() -> Vec<(&'static str, FromWorker)> {
    vec![
        ("ready", FromWorker::Ready),
        (
            "setup-failed",
            FromWorker::SetupFailed(Code::SandboxSetupFailed, "seccomp: EINVAL".into()),
        ),
        ("resolve", FromWorker::Resolve("db.example".into())),
        (
            "connect",
            FromWorker::Connect {
                host: "127.0.0.1".into(),
                port: 5432,
                timeout_ms: 1_000,
            },
        ),
        (
            "cgroup-create",
            FromWorker::Cgroup(CgroupCall::Create("a/b".into())),
        ),
        (
            "cgroup-cpu",
            FromWorker::Cgroup(CgroupCall::SetCpuMax("a".into(), Some(50_000), 100_000)),
        ),
        ("done", FromWorker::Done(Box::new(outcome()))),
        (
            "compiled",
            FromWorker::Compiled(vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0]),
        ),
    ]
}

fn to_worker() -> Vec<(&'static str, ToWorker)> {
    vec![
        (
            "setup",
            ToWorker::Setup(Setup {
                tool: "hello".into(),
                artifact: "/var/lib/clawos/tools/hello/component.cwasm".into(),
                clawfs: "/var/lib/clawos/clawfs/hello".into(),
            }),
        ),
        (
            "input",
            ToWorker::Input(RunInput {
                args: vec!["a".into()],
                input: b"in".to_vec(),
                env: vec![("K".into(), "V".into())],
                timeout_ms: Some(500),
            }),
        ),
        (
            "resolved",
            ToWorker::Resolved(vec![
                "192.0.2.1".parse().unwrap(),
                "2001:db8::1".parse().unwrap(),
            ]),
        ),
        ("compile", ToWorker::Compile(empty_component())),
        ("connected", ToWorker::Connected),
        (
            "cgroup-cpu",
            ToWorker::Cgroup(CgroupReply::Cpu(None, 100_000)),
        ),
        (
            "refused",
            ToWorker::Refused(Code::Eperm, "egress to 10.0.0.1:22 refused".into()),
        ),
    ]
}

fn spawns() -> Vec<(&'static str, Spawn)> {
    vec![(
        "spawn",
        Spawn {
            instance: 42,
            layers: Layers {
                cgroup: true,
                apparmor: true,
                ebpf: false,
                storage_quota: true,
            },
            preload: Some(PathBuf::from("/var/lib/clawos/tools/hello/component.cwasm")),
        },
    )]
}

fn spawned() -> Vec<(&'static str, Spawned)> {
    vec![
        ("spawned", Spawned::Worker(4242)),
        (
            "spawn-refused",
            Spawned::Refused(Code::SandboxSetupFailed, "clone3: EPERM".into()),
        ),
    ]
}

/// A sandbox channel frame, as `sandbox::channel::send` writes one.
fn channel_frame(msg: &impl Serialize) -> Vec<u8> {
    let body = postcard::to_allocvec(msg).expect("seed messages encode");
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

/// The smallest component: the preamble alone.
fn empty_component() -> Vec<u8> {
    wasm_encoder::Component::new().finish()
}

/// A component holding one empty core module and an instance of it.
fn component_with_module() -> Vec<u8> {
    let mut c = wasm_encoder::Component::new();
    c.section(&wasm_encoder::ModuleSection(&wasm_encoder::Module::new()));
    let mut instances = wasm_encoder::InstanceSection::new();
    instances.instantiate(0, Vec::<(&str, wasm_encoder::ModuleArg)>::new());
    c.section(&instances);
    c.finish()
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn main() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = manifest.join("seeds");
    let _ = std::fs::remove_dir_all(&out);

    for (name, r) in requests() {
        write(&out, "request", &format!("request-{name}"), &r.encode());
        write(
            &out,
            "frame",
            &format!("request-{name}"),
            &frame::encode(&r.encode()),
        );
    }
    for (name, r) in responses() {
        write(&out, "request", &format!("response-{name}"), &r.encode());
        write(
            &out,
            "frame",
            &format!("response-{name}"),
            &frame::encode(&r.encode()),
        );
    }
    // Two frames back to back, for the stream readers.
    let mut two = frame::encode(&Request::List.encode());
    two.extend_from_slice(&frame::encode(&Request::Status.encode()));
    write(&out, "frame", "two-frames", &two);

    for (name, m) in from_worker() {
        write(
            &out,
            "worker_channel",
            &format!("from-worker-{name}"),
            &channel_frame(&m),
        );
    }
    for (name, m) in to_worker() {
        write(
            &out,
            "worker_channel",
            &format!("to-worker-{name}"),
            &channel_frame(&m),
        );
    }
    for (name, m) in spawns() {
        write(&out, "worker_channel", name, &channel_frame(&m));
    }
    for (name, m) in spawned() {
        write(&out, "worker_channel", name, &channel_frame(&m));
    }

    let config = manifest.join("../config");
    for file in ["daemon.toml", "limits.toml"] {
        let path = config.join(file);
        let text =
            std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        write(&out, "config", file, &text);
    }
    // The parsers' checks one at a time.
    write(
        &out,
        "config",
        "ipc",
        b"[ipc]\nmax_connections = 0\nmax_args = 65536\n",
    );
    write(
        &out,
        "config",
        "paths",
        b"socket = \"relative.sock\"\nlimits_file = \"/nonexistent/limits.toml\"\n",
    );
    let _ = Config::default();

    // install: the first byte picks the input (fuzz_targets/install.rs):
    // 0 raw bytes, 1 a core module, 2 a module in a component, 3 a component.
    let mut raw = vec![0u8];
    raw.extend_from_slice(&empty_component());
    write(&out, "install", "raw-empty-component", &raw);
    let mut raw = vec![0u8];
    raw.extend_from_slice(&component_with_module());
    write(&out, "install", "raw-component-with-module", &raw);
    // For the generated shapes, bytes for wasm-smith to read choices from.
    let pattern: Vec<u8> = (0u32..512)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (shape, name) in [
        (1u8, "module"),
        (2, "module-in-component"),
        (3, "component"),
    ] {
        let mut seed = vec![shape];
        seed.extend_from_slice(&pattern);
        write(&out, "install", &format!("smith-{name}"), &seed);
    }
    println!("seeds written to {}", out.display());
}
