//! Layer 4: the eBPF LSM monitors (`ebpf/programs`), loaded by the daemon
//! at start, before its seccomp filter refuses `bpf()`.
//!
//! The programs see every file open, read and write, socket, connect,
//! execve and new task of the bridge's processes (the cgroup subtree
//! `cgroup.root`: daemon, launcher, workers), refuse execve and connects to
//! ports outside the egress allow-list in the kernel, and, for the daemon's
//! own connects, destinations outside the grant of the instance the
//! connecting thread serves ([`grants`]), and send events over
//! a ring buffer: one per operation, except repeats of a file operation,
//! which the kernel counts and sends as summaries (a thread's counts go out
//! at the latest as it ends: the `sched_process_exit` tracepoint program).
//! A task here turns each event into a
//! `clawos::event` record naming its instance, applies the anomaly rules
//! ([`rules`]) and raises `clawos::alert` records, killing the instance
//! where a rule says so. Events the ring buffer had no room for are
//! counted by the kernel and reported (`clawos::event` warnings and
//! `clawosctl status`).

pub mod grants;
pub mod instances;
pub mod layout;
mod reader;
pub mod rules;

use crate::config::Config;
use crate::egress::Egress;
use crate::error::{Code, Failure};
use aya::maps::{Map, MapData, RingBuf};
use aya::programs::{BtfTracePoint, Lsm, ProgramError, ProgramInfo};
use aya::{Btf, Ebpf, EbpfLoader};
use clawos_ebpf_types as t;
use instances::instances;
use rules::{Detector, RulesFile};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The kernel's list of active LSMs.
const LSM_LIST: &str = "/sys/kernel/security/lsm";
/// The running kernel's BTF.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// The reader drains the ring at least this often.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// `statfs` magic of a cgroup2 mount.
const CGROUP2_MAGIC: i64 = 0x6367_7270;

fn failed(what: impl std::fmt::Display) -> Failure {
    Failure::new(
        Code::SandboxSetupFailed,
        format!("sandbox layer ebpf: {what}"),
    )
}

/// Is BPF LSM active in this kernel? The monitors attach without error when
/// it is not, and then see nothing: this is the check that fails closed.
pub fn bpf_lsm_active() -> Result<(), Failure> {
    let list = std::fs::read_to_string(LSM_LIST)
        .map_err(|e| failed(format!("cannot read {LSM_LIST}: {e}")))?;
    if list.trim().split(',').any(|l| l == "bpf") {
        Ok(())
    } else {
        Err(failed(format!(
            "BPF LSM is not active ({LSM_LIST} lists {:?}; the kernel needs CONFIG_BPF_LSM and bpf in lsm=)",
            list.trim()
        )))
    }
}

/// A program as attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    /// The LSM hook or tracepoint (and program name).
    pub hook: String,
    /// The kernel's program id (as `bpftool prog` lists it).
    pub id: u32,
}

/// The monitors' figures, for `clawosctl status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorStatus {
    /// The programs, attached.
    pub programs: Vec<Attached>,
    /// Events received.
    pub events: u64,
    /// Operations those events stand for: one per event, and a summary's
    /// repeats (docs/monitor.md).
    #[serde(default)]
    pub operations: u64,
    /// Operations whose event the ring buffer had no room for (counted in
    /// the kernel).
    pub lost: u64,
    /// Alerts per rule (every rule listed, zero included).
    pub alerts: BTreeMap<String, u64>,
    /// Instances killed by a rule.
    pub kills: u64,
}

/// Counters shared by the reader task and status requests.
#[derive(Debug, Default)]
struct Stats {
    events: AtomicU64,
    operations: AtomicU64,
    kills: AtomicU64,
    alerts: Mutex<BTreeMap<String, u64>>,
}

/// The kernel's count of lost operations: the `LOST` map, memory-mapped.
struct LostCounter {
    map: std::ptr::NonNull<u64>,
    len: usize,
}

// SAFETY: a read-only shared mapping of one u64, read with atomic loads.
#[allow(unsafe_code)]
unsafe impl Send for LostCounter {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for LostCounter {}

impl LostCounter {
    fn map(fd: impl AsFd) -> Result<LostCounter, Failure> {
        let len = rustix::param::page_size();
        // SAFETY: a new shared read-only mapping of the map's one page; the
        // kernel keeps it valid until it is unmapped in Drop.
        #[allow(unsafe_code)]
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::SHARED,
                fd,
                0,
            )
        }
        .map_err(|e| failed(format!("cannot map the LOST counter: {e}")))?;
        Ok(LostCounter {
            map: std::ptr::NonNull::new(ptr.cast()).ok_or_else(|| failed("mmap returned null"))?,
            len,
        })
    }

    fn get(&self) -> u64 {
        // SAFETY: the mapping is live and 8-aligned (page-aligned); the
        // kernel updates it with atomic adds.
        #[allow(unsafe_code)]
        let atomic = unsafe { AtomicU64::from_ptr(self.map.as_ptr()) };
        atomic.load(Ordering::Relaxed)
    }
}

impl Drop for LostCounter {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        #[allow(unsafe_code)]
        let _ = unsafe { rustix::mm::munmap(self.map.as_ptr().cast(), self.len) };
    }
}

/// The loaded and attached monitors.
pub struct Monitor {
    /// Holds the programs and their links: dropping it detaches them.
    _ebpf: Ebpf,
    /// Taken by the reader task.
    reading: Mutex<Option<(RingBuf<MapData>, Detector)>>,
    lost: Arc<LostCounter>,
    programs: Vec<Attached>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("programs", &self.programs)
            .finish_non_exhaustive()
    }
}

/// The cgroup2 level of `dir` (0 for the mount's root) and its id.
fn cgroup_level(dir: &Path) -> Result<(i32, u64), Failure> {
    use std::os::unix::fs::MetadataExt;
    let id = std::fs::metadata(dir)
        .map_err(|e| failed(format!("{}: {e}", dir.display())))?
        .ino();
    let mut level = 0;
    let mut at = dir.to_path_buf();
    while let Some(parent) = at.parent().map(Path::to_path_buf) {
        let magic = rustix::fs::statfs(&parent).map(|s| s.f_type).unwrap_or(0);
        if magic != CGROUP2_MAGIC {
            break;
        }
        level += 1;
        at = parent;
    }
    Ok((level, id))
}

/// Where the kernel says how high thread ids go.
const PID_MAX: &str = "/proc/sys/kernel/pid_max";

/// Entries of the threads' tables (`RECENT` and `SERVING`, indexed by
/// thread id): the kernel's `pid_max` (thread ids are below it), at most
/// `RECENT_THREADS_MAX`. A thread with a greater id (`pid_max` above that,
/// or raised later) reports every file operation, and a run with network
/// grants it would serve fails (`grants::serve`): said once here. The
/// appliance's init keeps `pid_max` below it.
fn recent_threads() -> Result<u32, Failure> {
    let text = std::fs::read_to_string(PID_MAX)
        .map_err(|e| failed(format!("cannot read {PID_MAX}: {e}")))?;
    let max = text
        .trim()
        .parse::<u32>()
        .map_err(|e| failed(format!("{PID_MAX}: {:?} is not a number: {e}", text.trim())))?;
    if max > t::RECENT_THREADS_MAX {
        tracing::warn!(
            pid_max = max,
            "kernel.pid_max is above the {} thread ids the monitors' tables hold: a daemon thread above cannot serve a run with network grants (lower it: sysctl kernel.pid_max={})",
            t::RECENT_THREADS_MAX,
            t::RECENT_THREADS_MAX
        );
    }
    Ok(max.clamp(1, t::RECENT_THREADS_MAX))
}

/// The group the daemon runs in: `<root>/daemon`. It moves itself there
/// before it forks the launcher, so that both are in the subtree the
/// monitors watch (the cgroup v2 rule: no process in a group that has
/// children with controllers, so not `<root>` itself).
pub fn join_daemon_group(root: &Path) -> Result<(), Failure> {
    let dir = root.join("daemon");
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(failed(format!("cannot create {}: {e}", dir.display()))),
    }
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()).map_err(|e| {
        failed(format!(
            "cannot move the daemon into {}: {e}",
            dir.display()
        ))
    })
}

/// The DNS servers the daemon's lookups go to, for the kernel's egress
/// check: IPv4 as `::ffff:a.b.c.d`, and how many there are.
fn resolvers(config: &Config) -> Result<([[u8; 16]; t::MAX_RESOLVERS], u32), Failure> {
    // A resolv.conf that cannot be used gives no servers (the daemon logs it).
    let Ok(resolver) = Egress::resolver(&config.network) else {
        return Ok(([[0u8; 16]; t::MAX_RESOLVERS], 0));
    };
    let mut out = [[0u8; 16]; t::MAX_RESOLVERS];
    let mut n = 0;
    for s in resolver.servers() {
        if s.port() != t::DNS_PORT {
            continue;
        }
        if n == t::MAX_RESOLVERS {
            return Err(failed(format!(
                "{} names more than {} DNS servers",
                config.network.resolv_conf.display(),
                t::MAX_RESOLVERS
            )));
        }
        out[n] = match s.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        n += 1;
    }
    Ok((out, n as u32))
}

impl Monitor {
    /// Check the kernel, load the monitors with this daemon's settings,
    /// attach every program and map the ring buffer. Any failure names
    /// what was missing; the daemon does not start without them.
    pub fn load(config: &Config) -> Result<Monitor, Failure> {
        bpf_lsm_active()?;
        let raw = std::fs::read(VMLINUX_BTF)
            .map_err(|e| failed(format!("cannot read {VMLINUX_BTF}: {e}")))?;
        let layout = kernel_layout(&raw)?;
        let btf = Btf::parse(&raw, aya::Endianness::default())
            .map_err(|e| failed(format!("{VMLINUX_BTF}: {e}")))?;
        let rules = RulesFile::load(&config.monitor.rules_file).map_err(|f| failed(f.message))?;
        let (level, root_id) = cgroup_level(&config.cgroup.root)?;
        let mut ports = [0u16; t::MAX_PORTS];
        let mut n = 0;
        for p in config.network.allow.iter().flat_map(|r| r.ports.iter()) {
            if ports[..n].contains(p) {
                continue;
            }
            if n == t::MAX_PORTS {
                return Err(failed(format!(
                    "network.allow names more than {} ports; the kernel's egress check holds {}",
                    t::MAX_PORTS,
                    t::MAX_PORTS
                )));
            }
            ports[n] = *p;
            n += 1;
        }
        let (resolvers, resolver_count) = resolvers(config)?;
        let pid = std::process::id();
        let count = n as u32;
        let level_u32 = level as u32;
        let threads = recent_threads()?;
        // One grant slot per run in flight.
        let runs = config.ipc.max_concurrent_runs.max(1);
        let mut ebpf = EbpfLoader::new()
            .btf(&btf)
            .map_max_entries(t::MAP_RECENT, threads)
            .map_max_entries(t::MAP_SERVING, threads)
            .map_max_entries(t::MAP_GRANTS, runs)
            .override_global(t::GLOBAL_ROOT_CGROUP, &root_id, true)
            .override_global(t::GLOBAL_ROOT_LEVEL, &level_u32, true)
            .override_global(t::GLOBAL_DAEMON_PID, &pid, true)
            .override_global(t::GLOBAL_PORTS, &ports, true)
            .override_global(t::GLOBAL_PORT_COUNT, &count, true)
            .override_global(t::GLOBAL_RESOLVERS, &resolvers, true)
            .override_global(t::GLOBAL_RESOLVER_COUNT, &resolver_count, true)
            .override_global(t::GLOBAL_FIELD_OFFSETS, &layout.offsets, true)
            .load_file(&config.monitor.object)
            .map_err(|e| {
                failed(format!(
                    "cannot load {}: {}",
                    config.monitor.object.display(),
                    error_chain(&e)
                ))
            })?;
        let mut programs = Vec::new();
        // The thread-end tracepoint first: once a file hook has made a
        // thread's table, the program that sends its counts as the thread
        // ends is already there.
        for tracepoint in t::TRACEPOINTS {
            let program: &mut BtfTracePoint = program(&mut ebpf, tracepoint)?;
            program
                .load(tracepoint, &btf)
                .map_err(|e| refused(tracepoint, &e))?;
            program
                .attach()
                .map_err(|e| failed(format!("cannot attach {tracepoint}: {}", error_chain(&e))))?;
            programs.push(attached(tracepoint, program.info())?);
        }
        for hook in t::HOOKS {
            let program: &mut Lsm = program(&mut ebpf, hook)?;
            program.load(hook, &btf).map_err(|e| refused(hook, &e))?;
            program
                .attach()
                .map_err(|e| failed(format!("cannot attach {hook}: {}", error_chain(&e))))?;
            programs.push(attached(hook, program.info())?);
        }
        let ring = RingBuf::try_from(
            ebpf.take_map(t::MAP_EVENTS)
                .ok_or_else(|| failed("the object has no EVENTS map"))?,
        )
        .map_err(|e| failed(format!("EVENTS: {e}")))?;
        let lost = match ebpf.map(t::MAP_LOST) {
            Some(Map::Array(data)) => LostCounter::map(data.fd())?,
            _ => return Err(failed("the object has no LOST array")),
        };
        // Written through shared mappings from here on: the daemon's
        // seccomp filter refuses bpf() once installed.
        grants::map(&ebpf, threads, runs)?;
        let stats = Stats::default();
        let detector = Detector::new(rules, Egress::new(config.network.clone()));
        stats
            .alerts
            .lock()
            .unwrap()
            .extend(detector.names().into_iter().map(|n| (n, 0)));
        tracing::info!(
            programs = %programs.iter().map(|p| format!("{}={}", p.hook, p.id)).collect::<Vec<_>>().join(","),
            cgroup = %config.cgroup.root.display(),
            ports = ?&ports[..n],
            resolvers = ?Egress::resolver(&config.network).map(|r| r.servers().to_vec()).unwrap_or_default(),
            rules = %config.monitor.rules_file.display(),
            layout = ?layout.describe(),
            "ebpf monitors attached"
        );
        Ok(Monitor {
            _ebpf: ebpf,
            reading: Mutex::new(Some((ring, detector))),
            lost: Arc::new(lost),
            programs,
            stats: Arc::new(stats),
        })
    }

    /// The figures for `clawosctl status`.
    pub fn status(&self) -> MonitorStatus {
        MonitorStatus {
            programs: self.programs.clone(),
            events: self.stats.events.load(Ordering::Relaxed),
            operations: self.stats.operations.load(Ordering::Relaxed),
            lost: self.lost.get(),
            alerts: self.stats.alerts.lock().unwrap().clone(),
            kills: self.stats.kills.load(Ordering::Relaxed),
        }
    }

    /// Start the task that reads events (on the current tokio runtime).
    /// `launcher` is the launcher's pid.
    pub fn spawn_reader(&self, launcher: u32) -> Result<(), Failure> {
        let Some((ring, detector)) = self.reading.lock().unwrap().take() else {
            return Ok(());
        };
        // SAFETY: the RingBuf owns its map's descriptor until it drops, and
        // as_raw_fd always returns that one.
        #[allow(unsafe_code)]
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
        }
        .map_err(|e| failed(format!("cannot poll the ring buffer: {e}")))?;
        let mut reader = reader::Reader {
            detector,
            instances: instances(),
            stats: self.stats.clone(),
            lost: self.lost.clone(),
            reported_lost: 0,
            daemon: std::process::id(),
            launcher,
        };
        tokio::spawn(async move {
            let mut fd = fd;
            let mut lost_checked = std::time::Instant::now();
            loop {
                // Woken when a quarter of the ring waits (the programs ask
                // for no wake-up below that), and every DRAIN_EVERY anyway.
                match tokio::time::timeout(DRAIN_EVERY, fd.readable_mut()).await {
                    Ok(Ok(mut guard)) => {
                        reader.drain(guard.get_inner_mut());
                        guard.clear_ready();
                    }
                    Ok(Err(e)) => {
                        tracing::error!(target: "clawos::event", "ring buffer poll failed, monitoring stopped: {e}");
                        return;
                    }
                    Err(_) => reader.drain(fd.get_mut()),
                }
                if lost_checked.elapsed() >= Duration::from_secs(1) {
                    reader.check_lost();
                    lost_checked = std::time::Instant::now();
                }
            }
        });
        Ok(())
    }
}

/// Where the fields the programs read lie in the kernel whose BTF is `raw`;
/// a field it does not have, or has in another size or kind, is named in
/// the refusal.
fn kernel_layout(raw: &[u8]) -> Result<layout::Layout, Failure> {
    layout::Layout::resolve(raw).map_err(|errors| {
        failed(format!(
            "the monitors cannot read this kernel ({VMLINUX_BTF}): {}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })
}

/// The object's program `name`, as its kind.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, Failure>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| failed(format!("the object has no program {name}")))?
        .try_into()
        .map_err(|e| failed(format!("{name}: {e}")))
}

fn refused(name: &str, e: &ProgramError) -> Failure {
    failed(format!(
        "the kernel refused program {name}: {}",
        error_chain(e)
    ))
}

fn attached(name: &str, info: Result<ProgramInfo, ProgramError>) -> Result<Attached, Failure> {
    let id = info.map_err(|e| failed(format!("{name}: {e}")))?.id();
    Ok(Attached {
        hook: name.to_owned(),
        id,
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
