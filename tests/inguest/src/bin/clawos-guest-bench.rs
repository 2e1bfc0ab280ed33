//! `clawos-guest-bench`: in the booted appliance, the cost of one sandboxed
//! tool invocation against its peers, in the same guest and run (`make
//! bench` boots the image with this program, wasmtime and crun on an extra
//! initramfs; test-only, never in the image).
//!
//! Cases, each timed from the request (or the process start) to the result:
//! 1. sandboxed, cold: a request to an idle daemon right after the tool's
//!    artifact changed, so its worker loads the `.cwasm` again; a new worker
//!    in a new instance cgroup with every layer (the daemon's spare);
//! 2. sandboxed, warm: the same with the tool already loaded (still a new
//!    cgroup and a new worker with every layer: every run gets one);
//! 3. sandboxed, back to back: warm requests with no pause, so a run often
//!    finds the next spare still being made and makes its own worker;
//! 4. `wasmtime run` of the same `.cwasm` (a process per run);
//! 5. `crun run` of an OCI bundle whose process is `/bin/true`.
//!
//! Cases 1, 2, 4 and 5 leave the guest idle for 300 ms before each sample
//! (the daemon makes its next spare worker meanwhile), as between a
//! platform's requests.
//!
//! Prints p50 and p99 of each and the ratios to the cold sandboxed p50.

use clap::Parser;
use clawos_bridge::config::Config;
use clawos_bridge::error::Code;
use clawos_bridge::ipc::client::Client;
use clawos_bridge::ipc::proto::{Request, RunRequest};
use clawos_inguest::matrix::DAEMON_CONFIG;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

#[derive(Parser)]
#[command(
    name = "clawos-guest-bench",
    about = "Time a sandboxed tool invocation against `wasmtime run` of the same .cwasm and crun running /bin/true, in this guest (test-only: never in the image)"
)]
struct Cli {
    /// Samples per case.
    #[arg(long, default_value_t = 30)]
    samples: usize,
    /// The tool (a WASI command as well, such as noop).
    #[arg(long, default_value = "noop")]
    tool: String,
    /// The wasmtime CLI.
    #[arg(long, default_value = "/usr/bin/wasmtime")]
    wasmtime: PathBuf,
    /// The container runtime.
    #[arg(long, default_value = "/usr/bin/crun")]
    crun: PathBuf,
    /// Where the OCI bundle is made.
    #[arg(long, default_value = "/run/clawos-bench")]
    work: PathBuf,
}

/// How long the guest is left idle before each sample (not for case 3).
const IDLE: Duration = Duration::from_millis(300);

fn die(what: &str) -> ! {
    eprintln!("clawos-guest-bench: {what}");
    std::process::exit(1)
}

/// p50 and p99 of `samples`.
fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort_unstable();
    let p = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (p(0.5), p(0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Run `cmd` once, failing with its output if it does not exit 0.
fn time_command(cmd: &mut Command) -> Duration {
    let started = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| die(&format!("cannot start {cmd:?}: {e}")));
    let took = started.elapsed();
    if !out.status.success() {
        die(&format!(
            "{cmd:?} exited with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    took
}

/// An OCI bundle running `/bin/true` (busybox) in new pid, net, mount, ipc
/// and uts namespaces, read-only root: what a container runtime is
/// typically asked to do.
fn bundle(work: &Path) -> PathBuf {
    let dir = work.join("bundle");
    let bin = dir.join("rootfs/bin");
    for d in [&bin, &dir.join("rootfs/proc"), &dir.join("rootfs/dev")] {
        std::fs::create_dir_all(d).unwrap_or_else(|e| die(&format!("{}: {e}", d.display())));
    }
    std::fs::copy("/bin/busybox", bin.join("true"))
        .unwrap_or_else(|e| die(&format!("copy /bin/busybox: {e}")));
    let config = r#"{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false,
    "user": {"uid": 0, "gid": 0},
    "args": ["/bin/true"],
    "env": ["PATH=/bin"],
    "cwd": "/",
    "capabilities": {
      "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"],
      "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"],
      "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"]
    },
    "noNewPrivileges": true
  },
  "root": {"path": "rootfs", "readonly": true},
  "hostname": "bench",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
  ],
  "linux": {
    "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
    "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
    "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
  }
}
"#;
    std::fs::write(dir.join("config.json"), config)
        .unwrap_or_else(|e| die(&format!("config.json: {e}")));
    dir
}

fn main() {
    let cli = Cli::parse();
    let n = cli.samples.max(2);
    let config = Config::load(Path::new(DAEMON_CONFIG)).unwrap_or_else(|e| die(&e.to_string()));
    let artifact = config
        .state_dir
        .join("tools")
        .join(&cli.tool)
        .join("component.cwasm");
    if !artifact.is_file() {
        die(&format!(
            "{} is missing: is {} installed?",
            artifact.display(),
            cli.tool
        ));
    }
    let mut client = Client::connect(&config.socket).unwrap_or_else(|f| die(&f.message));
    let request = Request::Run(RunRequest {
        name: cli.tool.clone(),
        args: Vec::new(),
        input: Vec::new(),
        env: Vec::new(),
        timeout_ms: None,
    });
    let mut run = || {
        let started = Instant::now();
        let response = client.request(&request).unwrap_or_else(|f| die(&f.message));
        let took = started.elapsed();
        if response.code != Code::Success {
            die(&format!(
                "run {}: {} {}",
                cli.tool, response.code, response.message
            ));
        }
        took
    };

    let idle = || std::thread::sleep(IDLE);
    // Cold: a new modification time makes the artifact a version no
    // process has loaded.
    let cold: Vec<Duration> = (0..n)
        .map(|i| {
            let when = SystemTime::now() + Duration::from_secs(i as u64 + 1);
            std::fs::File::options()
                .append(true)
                .open(&artifact)
                .and_then(|f| f.set_modified(when))
                .unwrap_or_else(|e| die(&format!("touch {}: {e}", artifact.display())));
            idle();
            run()
        })
        .collect();
    run();
    let warm: Vec<Duration> = (0..n)
        .map(|_| {
            idle();
            run()
        })
        .collect();
    let back_to_back: Vec<Duration> = (0..n).map(|_| run()).collect();

    let mut wasmtime = Command::new(&cli.wasmtime);
    // The bridge's engine settings that the artifact records (epoch
    // interruption, no concurrency support); a deadline as long as the
    // bridge's CPU budget.
    wasmtime
        .args([
            "run",
            "--allow-precompiled",
            "-W",
            "epoch-interruption=y,concurrency-support=n,timeout=10s",
        ])
        .arg(&artifact);
    time_command(&mut wasmtime);
    let wasmtime_runs: Vec<Duration> = (0..n)
        .map(|_| {
            idle();
            time_command(&mut wasmtime)
        })
        .collect();

    let bundle = bundle(&cli.work);
    let mut crun_runs = Vec::new();
    for i in 0..=n {
        let mut crun = Command::new(&cli.crun);
        // --no-pivot: the appliance runs from its initramfs, which
        // pivot_root refuses; crun then moves the root and chroots, as the
        // bridge's workers do.
        crun.args(["run", "--no-pivot", "--bundle"])
            .arg(&bundle)
            .arg(format!("clawos-bench-{i}"));
        idle();
        let took = time_command(&mut crun);
        if i > 0 {
            crun_runs.push(took);
        }
    }

    let (cold_p50, _) = percentiles(cold.clone());
    println!(
        "guest benchmark: {n} samples per case, tool {} ({} bytes of .cwasm)",
        cli.tool,
        std::fs::metadata(&artifact).map_or(0, |m| m.len())
    );
    println!(
        "{:<58} {:>10} {:>10} {:>18}",
        "case", "p50 ms", "p99 ms", "p50 / cold p50"
    );
    let cases = [
        (
            "sandboxed, cold (tool loaded again, new worker, all layers)",
            cold,
        ),
        (
            "sandboxed, warm (tool loaded, new worker, all layers)",
            warm,
        ),
        ("sandboxed, warm, back to back (no pause)", back_to_back),
        ("wasmtime run of the same .cwasm", wasmtime_runs),
        ("crun run, /bin/true", crun_runs),
    ];
    for (case, samples) in cases {
        let (p50, p99) = percentiles(samples);
        println!(
            "{case:<58} {:>10.2} {:>10.2} {:>17.1}x",
            ms(p50),
            ms(p99),
            p50.as_secs_f64() / cold_p50.as_secs_f64()
        );
    }
}
