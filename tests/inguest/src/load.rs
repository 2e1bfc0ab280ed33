//! The load part of `clawos-guest-bench`: N clients each sending the same
//! work back to back for a fixed time, in the booted appliance, for the
//! sandboxed path (requests over the daemon's socket, one connection per
//! client) and for its peers (a process per run: `crun run`, `wasmtime
//! run`). Per window: runs/s, latency percentiles, errors by code, and the
//! memory of the daemon and of its workers, sampled from /proc and the
//! instance cgroups while the clients run.

use clawos_bridge::error::Code;
use clawos_bridge::ipc::client::Client;
use clawos_bridge::ipc::proto::{Request, RunRequest};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the instance cgroups are.
pub const BRIDGE_CGROUP: &str = "/sys/fs/cgroup/clawos";
/// How long a client waits after its first EAGAIN (the daemon's answer
/// past `max_concurrent_runs`) before it asks again; each further EAGAIN
/// for the same run doubles the pause, up to [`EAGAIN_PAUSE_MAX`], less a
/// jitter of up to half so that the clients do not ask in step. Asking
/// again every 5 ms, 8 waiting clients cost the daemon about a quarter of its
/// throughput under TCG (docs/ipc.md).
const EAGAIN_PAUSE: Duration = Duration::from_millis(5);
const EAGAIN_PAUSE_MAX: Duration = Duration::from_millis(80);

/// The pause before the `attempt`th retry (1 = after the first EAGAIN) of
/// client `c`.
fn eagain_pause(c: usize, attempt: u32) -> Duration {
    let full = EAGAIN_PAUSE
        .saturating_mul(1 << attempt.saturating_sub(1).min(5))
        .min(EAGAIN_PAUSE_MAX);
    // A cheap spread, different per client and attempt: up to half off.
    let spread = (c as u64 * 7919 + u64::from(attempt) * 104_729) % 1000;
    full.saturating_sub(full / 2 * spread as u32 / 1000)
}

/// What each client does, back to back.
#[derive(Clone)]
pub enum Work {
    /// A run request over the daemon's socket; each client's `{client}`
    /// in an argument becomes its number.
    Run {
        socket: PathBuf,
        request: RunRequest,
    },
    /// A process per run; `{run}` in an argument becomes a name unique to
    /// the run.
    Process { argv: Vec<String> },
}

/// One window of N clients.
#[derive(Debug, Default)]
pub struct Window {
    pub clients: usize,
    pub elapsed: Duration,
    /// Latencies of the runs that succeeded.
    pub latencies: Vec<Duration>,
    /// Answers other than success, by name (EAGAIN included).
    pub errors: BTreeMap<String, u64>,
    /// Peaks over the window, KiB: the daemon's RSS, the sum of the RSS
    /// of the processes in instance cgroups, and the sum of the instance
    /// cgroups' `memory.current`.
    pub daemon_rss_kib: u64,
    pub workers_rss_kib: u64,
    pub workers_charged_kib: u64,
}

impl Window {
    pub fn runs_per_s(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile of the latencies, ms (0 with no run).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        quantile(&self.latencies, q)
    }

    pub fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            return "0".to_owned();
        }
        let parts: Vec<String> = self
            .errors
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        parts.join(", ")
    }

    /// Errors other than EAGAIN.
    pub fn hard_errors(&self) -> u64 {
        self.errors
            .iter()
            .filter(|(k, _)| k.as_str() != "EAGAIN")
            .map(|(_, v)| v)
            .sum()
    }
}

/// The `q` quantile of `samples`, ms (0 with none).
pub fn quantile(samples: &[Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut s = samples.to_vec();
    s.sort_unstable();
    s[((s.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3
}

/// N clients doing `work` back to back for `time`; the daemon (`daemon`
/// pid) and the instance cgroups are sampled meanwhile.
pub fn window(work: &Work, clients: usize, time: Duration, daemon: u32) -> Window {
    let stop = Arc::new(AtomicBool::new(false));
    let peaks = Arc::new(Mutex::new((0u64, 0u64, 0u64)));
    let sampler = {
        let (stop, peaks) = (stop.clone(), peaks.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let d = rss_kib(daemon);
                let (w, c) = workers_kib();
                let mut p = peaks.lock().unwrap();
                *p = (p.0.max(d), p.1.max(w), p.2.max(c));
                drop(p);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let started = Instant::now();
    let deadline = started + time;
    let results: Vec<(Vec<Duration>, BTreeMap<String, u64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| s.spawn(move || client(work, c, deadline)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let (daemon_rss_kib, workers_rss_kib, workers_charged_kib) = *peaks.lock().unwrap();
    let mut w = Window {
        clients,
        elapsed,
        daemon_rss_kib,
        workers_rss_kib,
        workers_charged_kib,
        ..Window::default()
    };
    for (lat, errs) in results {
        w.latencies.extend(lat);
        for (k, v) in errs {
            *w.errors.entry(k).or_default() += v;
        }
    }
    w
}

fn client(work: &Work, c: usize, deadline: Instant) -> (Vec<Duration>, BTreeMap<String, u64>) {
    let mut lat = Vec::new();
    let mut errs: BTreeMap<String, u64> = BTreeMap::new();
    match work {
        Work::Run { socket, request } => {
            let mut request = request.clone();
            for a in &mut request.args {
                *a = a.replace("{client}", &c.to_string());
            }
            let request = Request::Run(request);
            let mut conn = match Client::connect(socket) {
                Ok(conn) => conn,
                Err(f) => {
                    errs.insert(format!("connect: {}", f.code), 1);
                    return (lat, errs);
                }
            };
            // A run's latency is the client's: from its first request to
            // its answer, the pauses after EAGAIN included.
            let mut first: Option<Instant> = None;
            let mut attempt = 0u32;
            while Instant::now() < deadline {
                let t = *first.get_or_insert_with(Instant::now);
                match conn.request(&request) {
                    Ok(r) if r.code == Code::Success => {
                        lat.push(t.elapsed());
                        (first, attempt) = (None, 0);
                    }
                    Ok(r) if r.code == Code::Eagain => {
                        *errs.entry(r.code.name().to_owned()).or_default() += 1;
                        attempt += 1;
                        std::thread::sleep(eagain_pause(c, attempt));
                    }
                    Ok(r) => {
                        *errs.entry(r.code.name().to_owned()).or_default() += 1;
                        (first, attempt) = (None, 0);
                    }
                    Err(f) => {
                        *errs.entry(format!("transport {}", f.code)).or_default() += 1;
                        (first, attempt) = (None, 0);
                        match Client::connect(socket) {
                            Ok(again) => conn = again,
                            Err(_) => break,
                        }
                    }
                }
            }
        }
        Work::Process { argv } => {
            let mut i = 0u64;
            while Instant::now() < deadline {
                i += 1;
                let argv: Vec<String> = argv
                    .iter()
                    .map(|a| a.replace("{run}", &format!("{c}-{i}")))
                    .collect();
                let t = Instant::now();
                let status = Command::new(&argv[0])
                    .args(&argv[1..])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                match status {
                    Ok(s) if s.success() => lat.push(t.elapsed()),
                    Ok(s) => *errs.entry(format!("exit {s}")).or_default() += 1,
                    Err(e) => *errs.entry(format!("spawn {e}")).or_default() += 1,
                }
            }
        }
    }
    (lat, errs)
}

/// `VmRSS` of `pid`, KiB (0 if gone).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(&format!("/proc/{pid}/status"), "VmRSS:")
}

fn status_kib(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The instance cgroups now.
pub fn instance_cgroups() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(BRIDGE_CGROUP)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("instance-"))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// The processes in `dir` and the groups below it.
pub fn procs_below(dir: &Path) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(procs_below(&e.path()));
        }
    }
    out
}

/// `memory.current` of the cgroup at `dir`, KiB.
pub fn charged_kib(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("memory.current"))
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .map_or(0, |b| b / 1024)
}

/// Sum over the instance cgroups: the RSS of their processes and what
/// the kernel charges them, KiB.
fn workers_kib() -> (u64, u64) {
    let mut rss = 0;
    let mut charged = 0;
    for dir in instance_cgroups() {
        charged += charged_kib(&dir);
        rss += procs_below(&dir).into_iter().map(rss_kib).sum::<u64>();
    }
    (rss, charged)
}

/// `Pss` and private (clean + dirty) memory of `pid`, KiB
/// (/proc/PID/smaps_rollup).
pub fn pss_private_kib(pid: u32) -> (u64, u64) {
    let path = format!("/proc/{pid}/smaps_rollup");
    let pss = status_kib(&path, "Pss:");
    let private = status_kib(&path, "Private_Clean:") + status_kib(&path, "Private_Dirty:");
    (pss, private)
}

/// What the daemon's `run ended` records of a window say.
pub struct Phases {
    /// Runs recorded.
    pub runs: usize,
    /// Of those, runs that found a ready worker.
    pub pooled: usize,
    /// The median of each phase, µs, by field name.
    pub medians: Vec<(&'static str, u64)>,
}

/// The phases of the daemon's `run ended` records in `log` (the text it
/// wrote during a window), for `tool`.
pub fn phases(log: &str, tool: &str) -> Option<Phases> {
    const FIELDS: [&str; 7] = [
        "run_us",
        "worker_us",
        "setup_us",
        "call_us",
        "reap_us",
        "cleanup_us",
        "spare",
    ];
    let mut values: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut runs = 0;
    let mut pooled = 0;
    let of_tool = |l: &str| {
        l.split_whitespace()
            .any(|f| f.strip_prefix("tool=").map(|v| v.trim_matches('"')) == Some(tool))
    };
    for line in log
        .lines()
        .filter(|l| l.contains("run ended") && of_tool(l))
    {
        runs += 1;
        for field in line.split_whitespace() {
            let Some((k, v)) = field.split_once('=') else {
                continue;
            };
            let Some(name) = FIELDS.iter().find(|f| **f == k) else {
                continue;
            };
            if *name == "spare" {
                pooled += usize::from(v == "true");
            } else if let Ok(v) = v.parse() {
                values.entry(name).or_default().push(v);
            }
        }
    }
    if runs == 0 {
        return None;
    }
    let medians = FIELDS[..6]
        .iter()
        .map(|f| {
            let mut v = values.remove(f).unwrap_or_default();
            v.sort_unstable();
            (*f, v.get(v.len() / 2).copied().unwrap_or(0))
        })
        .collect();
    Some(Phases {
        runs,
        pooled,
        medians,
    })
}
