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
//!
//! Then the load part: what an idle ready worker costs, and N clients
//! (`--clients`) each sending the same work back to back for
//! `--load-secs`: `noop`; `hostio fs-bench` (a 64 KiB ClawFS write and
//! read, each client its own file); with `--pg`, `hostio pg-bench` (one
//! PostgreSQL `SELECT 1` through the egress proxy); and, the same way,
//! `crun run` of `/bin/true` and `wasmtime run` of noop's `.cwasm`. Per
//! window: runs/s, p50/p99/max, errors, and the memory of the daemon and of
//! the workers; the daemon's phases of each run at N=1 and N=8; whether
//! anything was left behind; and the goals of the load benchmark.

use clap::Parser;
use clawos_bridge::config::Config;
use clawos_bridge::error::Code;
use clawos_bridge::ipc::client::Client;
use clawos_bridge::ipc::proto::{Request, RunRequest};
use clawos_inguest::load::{self, Window, Work};
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
    /// Seconds each load window lasts.
    #[arg(long, default_value_t = 10)]
    load_secs: u64,
    /// The numbers of concurrent clients of the load part.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    clients: Vec<usize>,
    /// A PostgreSQL server (trust auth) for the load part's query case,
    /// HOST:PORT as the guest reaches it.
    #[arg(long)]
    pg: Option<String>,
    /// The daemon's log (its `run ended` records give the phases).
    #[arg(long, default_value = "/run/clawos/daemon.log")]
    daemon_log: PathBuf,
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
    let (warm_p50, _) = percentiles(warm.clone());
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
    drop(client);
    let wasmtime_argv: Vec<String> = std::iter::once(cli.wasmtime.display().to_string())
        .chain(
            wasmtime
                .get_args()
                .map(|a| a.to_string_lossy().into_owned()),
        )
        .collect();
    let crun_argv = vec![
        cli.crun.display().to_string(),
        "run".to_owned(),
        "--no-pivot".to_owned(),
        "--bundle".to_owned(),
        bundle.display().to_string(),
        "clawos-load-{run}".to_owned(),
    ];
    load_part(&cli, &config, warm_p50, wasmtime_argv, crun_argv);
}

/// The daemon's status.
fn status(config: &Config) -> clawos_bridge::ipc::proto::DaemonStatus {
    let mut c = Client::connect(&config.socket).unwrap_or_else(|f| die(&f.message));
    match c.request(&Request::Status) {
        Ok(r) => match r.body {
            clawos_bridge::ipc::proto::Body::Status(s) => s,
            other => die(&format!("status answered {other:?}")),
        },
        Err(f) => die(&f.message),
    }
}

/// Wait (up to 60 s) until the pool is full again and no instance cgroup
/// but the ready workers' is left: the state between windows.
fn settled(config: &Config) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let w = status(config).workers;
        let groups = load::instance_cgroups();
        if w.ready == w.size && groups.len() == w.size as usize {
            return w.size as usize;
        }
        if Instant::now() > deadline {
            die(&format!(
                "the daemon did not settle: {w:?}, {} instance cgroups",
                groups.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The daemon's log from byte `from` on.
fn log_since(path: &Path, from: u64) -> String {
    use std::io::{Read, Seek};
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.seek(std::io::SeekFrom::Start(from));
        let _ = f.read_to_string(&mut text);
    }
    text
}

fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn load_part(
    cli: &Cli,
    config: &Config,
    warm_p50: Duration,
    wasmtime: Vec<String>,
    crun: Vec<String>,
) {
    let daemon = status(config).pid;
    // --- what an idle ready worker costs -----------------------------------
    let size = settled(config);
    let groups = load::instance_cgroups();
    let charged: u64 = groups.iter().map(|g| load::charged_kib(g)).sum();
    let procs: Vec<u32> = groups.iter().flat_map(|g| load::procs_below(g)).collect();
    let rss: u64 = procs.iter().map(|p| load::rss_kib(*p)).sum();
    let (pss, private) = procs
        .iter()
        .map(|p| load::pss_private_kib(*p))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let per = |kib: u64| kib as f64 / procs.len().max(1) as f64;
    println!();
    println!(
        "idle ready workers: {size} (pool size), {} processes; per worker: kernel charge (memory.current) {:.0} KiB, RSS {:.0} KiB (Pss {:.0} KiB, private {:.0} KiB); daemon RSS {} KiB",
        procs.len(),
        per(charged),
        per(rss),
        per(pss),
        per(private),
        load::rss_kib(daemon)
    );
    let clawfs_hostio = config.clawfs_root().join("hostio");
    let files_before = listing(&clawfs_hostio);

    // --- the load windows ---------------------------------------------------
    let time = Duration::from_secs(cli.load_secs.max(1));
    let run = |args: &[&str], tool: &str| Work::Run {
        socket: config.socket.clone(),
        request: RunRequest {
            name: tool.to_owned(),
            args: args.iter().map(|a| a.to_string()).collect(),
            input: Vec::new(),
            env: Vec::new(),
            timeout_ms: None,
        },
    };
    let mut cases: Vec<(String, Option<&str>, Work)> = vec![
        (
            format!("sandboxed {}", cli.tool),
            Some(cli.tool.as_str()),
            run(&[], &cli.tool),
        ),
        (
            "sandboxed hostio: 64 KiB ClawFS write+read".to_owned(),
            Some("hostio"),
            run(&["fs-bench", "65536", "load-{client}.dat"], "hostio"),
        ),
    ];
    if let Some(pg) = &cli.pg {
        // One query first: a server the guest cannot reach is named here,
        // not found as a window of errors.
        let mut c = Client::connect(&config.socket).unwrap_or_else(|f| die(&f.message));
        let probe = Request::Run(RunRequest {
            name: "hostio".to_owned(),
            args: vec!["pg-bench".to_owned(), pg.clone(), "1".to_owned()],
            input: Vec::new(),
            env: Vec::new(),
            timeout_ms: Some(5000),
        });
        match c.request(&probe) {
            Ok(r) if r.code == Code::Success => {}
            Ok(r) => die(&format!("PostgreSQL at {pg}: {} {}", r.code, r.message)),
            Err(f) => die(&format!("PostgreSQL at {pg}: {}", f.message)),
        }
        cases.push((
            "sandboxed hostio: PostgreSQL SELECT 1".to_owned(),
            Some("hostio"),
            run(&["pg-bench", pg, "1"], "hostio"),
        ));
    }
    cases.push((
        "wasmtime run, noop .cwasm".to_owned(),
        None,
        Work::Process { argv: wasmtime },
    ));
    cases.push((
        "crun run, /bin/true".to_owned(),
        None,
        Work::Process { argv: crun },
    ));
    println!();
    println!(
        "load: {} s per window; max_concurrent_runs {} (past it the daemon answers EAGAIN, and the client asks again after 5 ms, doubling to 80 ms, jittered; latency counts from its first request); guest load average before: {}",
        time.as_secs(),
        config.ipc.max_concurrent_runs,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "{:<44} {:>3} {:>8} {:>8} {:>8} {:>8}  {:>9} {:>9} {:>9}  errors",
        "case", "N", "runs/s", "p50 ms", "p99 ms", "max ms", "daemon", "workers", "charged"
    );
    let mut results: Vec<(String, Window)> = Vec::new();
    let mut phases: Vec<String> = Vec::new();
    for (name, tool, work) in &cases {
        for &n in &cli.clients {
            settled(config);
            let from = log_len(&cli.daemon_log);
            let w = load::window(work, n, time, daemon);
            println!(
                "{name:<44} {n:>3} {:>8.1} {:>8.1} {:>8.1} {:>8.1}  {:>5.1} MiB {:>5.1} MiB {:>5.1} MiB  {}",
                w.runs_per_s(),
                w.quantile_ms(0.5),
                w.quantile_ms(0.99),
                w.quantile_ms(1.0),
                mib(w.daemon_rss_kib),
                mib(w.workers_rss_kib),
                mib(w.workers_charged_kib),
                w.errors_text()
            );
            if let Some(tool) = tool
                && (n == 1 || n == 8)
            {
                settled(config);
                let log = log_since(&cli.daemon_log, from);
                if let Some(load::Phases {
                    runs,
                    pooled,
                    medians,
                }) = load::phases(&log, tool)
                {
                    let parts: Vec<String> = medians
                        .iter()
                        .map(|(k, v)| {
                            format!("{} {:.2} ms", k.trim_end_matches("_us"), *v as f64 / 1e3)
                        })
                        .collect();
                    phases.push(format!(
                        "{name}, N={n}: {runs} runs, {pooled} found a ready worker; medians: {}",
                        parts.join(", ")
                    ));
                }
            }
            results.push((name.clone(), w));
        }
    }
    println!();
    println!(
        "where a sandboxed run's time goes (the daemon's `run ended` records; run = worker + setup + call, from the daemon taking the request to its answer; reap and cleanup come after the answer):"
    );
    for p in &phases {
        println!("  {p}");
    }

    // --- nothing left behind ------------------------------------------------
    let size = settled(config);
    let groups = load::instance_cgroups();
    let procs: usize = groups.iter().map(|g| load::procs_below(g).len()).sum();
    let files_after = listing(&clawfs_hostio);
    let containers = Command::new(&cli.crun)
        .arg("list")
        .arg("-q")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(usize::MAX);
    println!();
    println!(
        "left behind: {} instance cgroups holding {procs} processes (the {size} ready workers), hostio's ClawFS files {} (before: {}), crun containers {containers}",
        groups.len(),
        files_after.len(),
        files_before.len()
    );
    let clean =
        groups.len() == size && procs == size && files_after == files_before && containers == 0;

    // --- the goals ----------------------------------------------------------
    let find = |case: &str, n: usize| {
        results
            .iter()
            .find(|(c, w)| c == case && w.clients == n)
            .map(|(_, w)| w)
    };
    let noop = format!("sandboxed {}", cli.tool);
    let crun_case = "crun run, /bin/true";
    let mut goals: Vec<(String, bool)> = Vec::new();
    if let Some(w1) = find(&noop, 1) {
        let r = w1.quantile_ms(0.5) / (warm_p50.as_secs_f64() * 1e3);
        goals.push((
            format!("back-to-back warm runs at N=1: p50 {:.2}x an isolated warm run (goal: within 1.25x)", r),
            r <= 1.25,
        ));
        if let Some(w2) = find(&noop, 2) {
            let r = w2.runs_per_s() / w1.runs_per_s();
            goals.push((
                format!("runs/s at N=2: {r:.2}x N=1 (goal: at least 1.7x)"),
                r >= 1.7,
            ));
        }
    }
    let peak = cli
        .clients
        .iter()
        .filter_map(|n| find(&noop, *n))
        .map(Window::runs_per_s)
        .fold(0.0, f64::max);
    if let Some(w16) = find(&noop, 16) {
        let flat = w16.runs_per_s() / peak;
        goals.push((
            format!(
                "throughput past the vCPUs: N=16 {flat:.2}x the best N (goal: flat, at least 0.8x)"
            ),
            flat >= 0.8,
        ));
        let r = w16.quantile_ms(0.99) / w16.quantile_ms(0.5);
        goals.push((
            format!("p99 at N=16: {r:.2}x its p50 (goal: within 4x)"),
            r <= 4.0,
        ));
    }
    for n in [1, 8] {
        if let (Some(ours), Some(theirs)) = (find(&noop, n), find(crun_case, n)) {
            let r = ours.runs_per_s() / theirs.runs_per_s();
            goals.push((
                format!("runs/s against crun at N={n}: {r:.1}x (goal: at least 20x)"),
                r >= 20.0,
            ));
        }
    }
    let hard: u64 = results.iter().map(|(_, w)| w.hard_errors()).sum();
    goals.push((
        format!("every request answered, errors other than EAGAIN: {hard}"),
        hard == 0,
    ));
    goals.push(("nothing left behind".to_owned(), clean));
    println!();
    for (what, met) in &goals {
        println!("goal {}: {what}", if *met { "met" } else { "NOT met" });
    }
    println!(
        "guest load average after: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    if hard != 0 || !clean {
        die("the load part had errors or left something behind");
    }
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
