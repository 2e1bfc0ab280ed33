//! The broker: how an instance reaches what lies outside its worker (its
//! egress connections and its cgroup delegation), both ends in one place.
//! In the worker, [`Broker`] is the host interfaces' [`Outside`]: each call
//! is a request on the worker's channel. In the daemon, [`Serve`] answers
//! those requests under the daemon's policy: the egress proxy resolves and
//! connects (by the run's deadline) and hands back the connected socket;
//! cgroup calls act on the instance's delegation, with pids translated from
//! the worker's pid namespace. `crate::outside` defines the interface and
//! its in-process implementation.

use super::channel::{self, FromWorker, ToWorker};
use crate::cgroup::Delegation;
use crate::egress::Egress;
use crate::error::{Code, Failure};
use crate::outside::{CgroupCall, CgroupReply, Outside};
use crate::runtime::outcome::RunOutcome;
use std::collections::HashMap;
use std::net::{IpAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The daemon's end: answers one instance's requests.
pub(super) struct Serve<'a> {
    egress: &'a Egress,
    delegation: Option<&'a mut Delegation>,
    pids: PidMap,
    shared: &'a SharedMemory,
    tool: &'a str,
    /// The shared regions this run holds (one hold each, however often it
    /// opens them), given back when it ends, and their bytes.
    held: HashMap<String, u64>,
}

impl<'a> Serve<'a> {
    /// Answer the worker `worker` (pid in the daemon's namespace) with
    /// `egress` and its instance's `delegation`.
    pub(super) fn new(
        egress: &'a Egress,
        delegation: Option<&'a mut Delegation>,
        worker: i32,
        shared: &'a SharedMemory,
        tool: &'a str,
    ) -> Serve<'a> {
        Serve {
            egress,
            delegation,
            pids: PidMap::new(worker),
            shared,
            tool,
            held: HashMap::new(),
        }
    }

    /// The answer to `request`, and the descriptor that rides with it,
    /// given by `deadline` (the run's).
    pub(super) fn answer(
        &mut self,
        request: FromWorker,
        deadline: Instant,
    ) -> (ToWorker, Option<OwnedFd>) {
        let refused = |f: Failure| (ToWorker::Refused(f.code, f.message), None);
        match request {
            FromWorker::Resolve(name) => match self.egress.resolve_before(&name, deadline) {
                Ok(ips) => (ToWorker::Resolved(ips), None),
                Err(f) => refused(f),
            },
            FromWorker::Connect {
                host,
                port,
                timeout_ms,
            } => {
                let wait = Duration::from_millis(timeout_ms)
                    .min(deadline.saturating_duration_since(Instant::now()));
                match self.egress.connect(&host, port, wait) {
                    Ok(stream) => (ToWorker::Connected, Some(OwnedFd::from(stream))),
                    Err(f) => refused(f),
                }
            }
            FromWorker::Cgroup(call) => match self.delegation.as_deref_mut() {
                Some(d) => {
                    let pids = &mut self.pids;
                    match call.apply(d, |p| pids.host(p)) {
                        Ok(r) => (ToWorker::Cgroup(r), None),
                        Err(f) => refused(f),
                    }
                }
                None => refused(Failure::new(
                    Code::InterfaceUnavailable,
                    "the cgroup interface needs cgroup v2, which this system lacks",
                )),
            },
            FromWorker::Shared { name, size } => match self.open_shared(name, size) {
                Ok(fd) => (ToWorker::SharedRegion, Some(fd)),
                Err(f) => refused(f),
            },
            other => refused(Failure::new(
                Code::Eproto,
                format!("unexpected request {}", kind(&other)),
            )),
        }
    }
}

impl Serve<'_> {
    /// A descriptor of the shared region `name`. A run holds each region
    /// once, at most [`MAX_SHARED_PER_RUN`] of them and at most the
    /// instance memory limit in all: the daemon does not rely on the
    /// worker's own account, which a tool that escaped WebAssembly owns.
    fn open_shared(&mut self, name: String, size: u64) -> Result<OwnedFd, Failure> {
        if let Some(held) = self.held.get(&name) {
            if *held != size {
                return Err(Failure::new(
                    Code::InvalidArgument,
                    format!("shared region {name:?} has {held} bytes, not {size}"),
                ));
            }
            return self.shared.descriptor(self.tool, &name);
        }
        if self.held.len() >= MAX_SHARED_PER_RUN {
            return Err(Failure::new(
                Code::QuotaExceeded,
                format!("a run holds at most {MAX_SHARED_PER_RUN} shared regions"),
            ));
        }
        let total = self.held.values().sum::<u64>().saturating_add(size);
        if total > self.shared.max_bytes {
            return Err(Failure::new(
                Code::WasmMemoryLimit,
                format!(
                    "the run's shared regions would hold {total} bytes, over the instance memory limit ({})",
                    self.shared.max_bytes
                ),
            ));
        }
        let fd = self.shared.open(self.tool, &name, size)?;
        self.held.insert(name, size);
        Ok(fd)
    }
}

impl Drop for Serve<'_> {
    fn drop(&mut self) {
        for name in self.held.keys() {
            self.shared.release(self.tool, name);
        }
    }
}

/// A message's kind, for messages that quote nothing of what it holds.
fn kind(msg: &FromWorker) -> &'static str {
    match msg {
        FromWorker::Ready => "ready",
        FromWorker::SetupFailed(..) => "setup-failed",
        FromWorker::Resolve(_) => "resolve",
        FromWorker::Connect { .. } => "connect",
        FromWorker::Cgroup(_) => "cgroup",
        FromWorker::Shared { .. } => "shared",
        FromWorker::Done(_) => "done",
        FromWorker::Compiled(_) => "compiled",
    }
}

/// The worker's outside: every call is a request to the daemon. `None`
/// once the outcome went.
#[derive(Debug)]
pub(super) struct Broker {
    channel: Mutex<Option<OwnedFd>>,
}

impl Broker {
    /// The broker of a worker whose channel to the daemon is `channel`.
    pub(super) fn new(channel: OwnedFd) -> Broker {
        Broker {
            channel: Mutex::new(Some(channel)),
        }
    }

    /// Send the run's outcome, once: the first of the run and the watchdog
    /// to finish wins; the other's outcome is dropped.
    pub(super) fn finish(&self, outcome: &RunOutcome) {
        let mut channel = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channel.take()
            && let Err(f) = channel::send(
                channel.as_fd(),
                &FromWorker::Done(Box::new(outcome.clone())),
                &[],
            )
        {
            tracing::error!("worker: cannot send the outcome: {}", f.message);
        }
    }

    fn ask(&self, request: FromWorker) -> Result<(ToWorker, Vec<OwnedFd>), Failure> {
        let channel = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        let Some(channel) = channel.as_ref() else {
            return Err(Failure::new(Code::Einternal, "the run is over"));
        };
        channel::send(channel.as_fd(), &request, &[])?;
        match channel::recv(channel.as_fd())? {
            Some((ToWorker::Refused(code, message), _)) => Err(Failure::new(code, message)),
            Some(reply) => Ok(reply),
            None => Err(Failure::new(
                Code::Einternal,
                "the daemon closed the sandbox channel",
            )),
        }
    }
}

fn unexpected(reply: ToWorker) -> Failure {
    Failure::new(
        Code::Eproto,
        format!("unexpected reply from the daemon: {reply:?}"),
    )
}

impl Outside for Broker {
    fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, Failure> {
        match self.ask(FromWorker::Resolve(name.to_owned()))? {
            (ToWorker::Resolved(ips), _) => Ok(ips),
            (other, _) => Err(unexpected(other)),
        }
    }

    fn connect(&self, host: &str, port: u16, timeout: Duration) -> Result<TcpStream, Failure> {
        let request = FromWorker::Connect {
            host: host.to_owned(),
            port,
            timeout_ms: timeout.as_millis() as u64,
        };
        match self.ask(request)? {
            (ToWorker::Connected, mut fds) if fds.len() == 1 => {
                Ok(TcpStream::from(fds.pop().expect("one descriptor")))
            }
            (other, _) => Err(unexpected(other)),
        }
    }

    fn cgroup(&self, call: CgroupCall) -> Result<CgroupReply, Failure> {
        match self.ask(FromWorker::Cgroup(call))? {
            (ToWorker::Cgroup(reply), _) => Ok(reply),
            (other, _) => Err(unexpected(other)),
        }
    }

    fn shared_region(&self, name: &str, size: u64) -> Result<Option<OwnedFd>, Failure> {
        let request = FromWorker::Shared {
            name: name.to_owned(),
            size,
        };
        match self.ask(request)? {
            (ToWorker::SharedRegion, mut fds) if fds.len() == 1 => Ok(fds.pop()),
            (other, _) => Err(unexpected(other)),
        }
    }
}

/// Most shared regions one run may hold: each is a descriptor the daemon
/// keeps while a run of the tool holds it.
pub const MAX_SHARED_PER_RUN: usize = 64;
/// Longest name of a shared region (as the memory interface checks).
const MAX_SHARED_NAME: usize = 64;

/// The daemon's shared regions: one sealed memfd per (tool, name), kept
/// while some live run of the tool holds it, so every worker of the tool
/// maps the same memory. Bounded by each run ([`Serve::open_shared`]): at
/// most [`MAX_SHARED_PER_RUN`] regions, `max_bytes` (the instance memory
/// limit) in all, so what the daemon keeps is at most the runs in flight
/// times the instance memory limit, however the workers behave.
#[derive(Debug)]
pub(super) struct SharedMemory {
    max_bytes: u64,
    map: Mutex<HashMap<(String, String), Held>>,
}

#[derive(Debug)]
struct Held {
    fd: OwnedFd,
    size: u64,
    holders: usize,
}

impl SharedMemory {
    pub(super) fn new(max_bytes: u64) -> SharedMemory {
        SharedMemory {
            max_bytes,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// A descriptor of region `name` of `tool`, made with `size` bytes if
    /// no run holds it; one more holder.
    fn open(&self, tool: &str, name: &str, size: u64) -> Result<OwnedFd, Failure> {
        if name.is_empty() || name.len() > MAX_SHARED_NAME {
            return Err(Failure::new(
                Code::InvalidArgument,
                format!("a shared region's name is 1-{MAX_SHARED_NAME} bytes"),
            ));
        }
        if size > self.max_bytes {
            return Err(Failure::new(
                Code::WasmMemoryLimit,
                format!(
                    "a shared region of {size} bytes is over the instance memory limit ({})",
                    self.max_bytes
                ),
            ));
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tool.to_owned(), name.to_owned());
        match map.get_mut(&key) {
            Some(h) if h.size != size => Err(Failure::new(
                Code::InvalidArgument,
                format!("shared region {name:?} has {} bytes, not {size}", h.size),
            )),
            Some(h) => {
                let fd = dup(&h.fd)?;
                h.holders += 1;
                Ok(fd)
            }
            None => {
                let held = crate::outside::sealed_memfd(size)?;
                let fd = dup(&held)?;
                map.insert(
                    key,
                    Held {
                        fd: held,
                        size,
                        holders: 1,
                    },
                );
                Ok(fd)
            }
        }
    }

    /// Another descriptor of a region the caller holds already.
    fn descriptor(&self, tool: &str, name: &str) -> Result<OwnedFd, Failure> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&(tool.to_owned(), name.to_owned())) {
            Some(h) => dup(&h.fd),
            None => Err(Failure::new(
                Code::Einternal,
                format!("shared region {name:?} is held but not known"),
            )),
        }
    }

    /// One holder fewer; the memory goes with the last.
    fn release(&self, tool: &str, name: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tool.to_owned(), name.to_owned());
        if let Some(h) = map.get_mut(&key) {
            h.holders = h.holders.saturating_sub(1);
            if h.holders == 0 {
                map.remove(&key);
            }
        }
    }

    /// Regions held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, Failure> {
    rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(|e| Failure::io("shared region: dup", &e.into()))
}

/// Pids as the instance sees them (its own pid namespace) to the daemon's.
struct PidMap {
    worker: i32,
    cache: HashMap<u32, u32>,
}

impl PidMap {
    fn new(worker: i32) -> PidMap {
        PidMap {
            worker,
            cache: HashMap::new(),
        }
    }

    /// The daemon's pid of the instance's task `pid`: one of the worker's
    /// threads by its `NSpid`; anything else is not the instance's.
    fn host(&mut self, pid: u32) -> Result<u32, Failure> {
        if let Some(h) = self.cache.get(&pid) {
            return Ok(*h);
        }
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.worker))
            .map_err(|e| Failure::io(format_args!("tasks of worker {}", self.worker), &e))?;
        for t in tasks.flatten() {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            if let Some((host, inner)) = parse_nspid(&status)
                && inner == pid
            {
                self.cache.insert(pid, host);
                return Ok(host);
            }
        }
        Err(Failure::new(
            Code::PolicyDenied,
            format!("process {pid} is not one of this instance's tasks"),
        ))
    }
}

/// The first and last pid of a `/proc/<pid>/status` `NSpid:` line: the pid
/// in the reader's namespace and in the task's own.
fn parse_nspid(status: &str) -> Option<(u32, u32)> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let ids: Vec<u32> = line
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    Some((*ids.first()?, *ids.last()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nspid_gives_outer_and_inner() {
        let status = "Name:\tclawos\nNSpid:\t4242\t1\nNSsid:\t1\n";
        assert_eq!(parse_nspid(status), Some((4242, 1)));
        assert_eq!(parse_nspid("NSpid:\t77\n"), Some((77, 77)));
        assert_eq!(parse_nspid("Name:\tx\n"), None);
    }

    #[test]
    fn shared_regions_live_while_a_run_holds_them() {
        let shared = SharedMemory::new(1 << 20);
        let a = shared.open("t", "r", 4096).unwrap();
        let b = shared.open("t", "r", 4096).unwrap();
        // The same memory: one file, two descriptors.
        let (sa, sb) = (
            rustix::fs::fstat(&a).unwrap(),
            rustix::fs::fstat(&b).unwrap(),
        );
        assert_eq!((sa.st_dev, sa.st_ino), (sb.st_dev, sb.st_ino));
        assert_eq!(sa.st_size, 4096);
        // Sealed: no one resizes it under a mapping.
        assert!(rustix::fs::ftruncate(&a, 1).is_err());
        assert_eq!(
            shared.open("t", "r", 8192).unwrap_err().code,
            Code::InvalidArgument
        );
        let other = shared.open("u", "r", 4096).unwrap();
        assert_ne!(rustix::fs::fstat(&other).unwrap().st_ino, sa.st_ino);
        assert_eq!(shared.len(), 2);
        shared.release("t", "r");
        assert_eq!(shared.len(), 2);
        shared.release("t", "r");
        shared.release("u", "r");
        assert_eq!(shared.len(), 0);
        // Bounds: the name, and the instance's memory limit.
        assert_eq!(
            shared.open("t", "", 1).unwrap_err().code,
            Code::InvalidArgument
        );
        let long = "n".repeat(65);
        assert_eq!(
            shared.open("t", &long, 1).unwrap_err().code,
            Code::InvalidArgument
        );
        assert_eq!(
            shared.open("t", "big", (1 << 20) + 1).unwrap_err().code,
            Code::WasmMemoryLimit
        );
        assert_eq!(shared.len(), 0);
    }

    #[test]
    fn a_run_holds_each_region_once_and_its_bytes_within_the_limit() {
        let egress = Egress::new(crate::config::NetworkPolicy::default());
        let shared = SharedMemory::new(1 << 20);
        let mut run = Serve::new(&egress, None, 0, &shared, "t");
        // Opened again and again (a tool that drops and reopens): one hold.
        for _ in 0..200 {
            run.open_shared("r".into(), 4096).unwrap();
        }
        assert_eq!(run.held.len(), 1);
        assert_eq!(
            run.open_shared("r".into(), 8192).unwrap_err().code,
            Code::InvalidArgument
        );
        // Bytes over all its regions: the instance memory limit.
        run.open_shared("big".into(), (1 << 20) - 4096).unwrap();
        assert_eq!(
            run.open_shared("more".into(), 1).unwrap_err().code,
            Code::WasmMemoryLimit
        );
        drop(run);
        assert_eq!(shared.len(), 0, "released when the run ends");
        // At most MAX_SHARED_PER_RUN distinct regions.
        let mut run = Serve::new(&egress, None, 0, &shared, "t");
        for i in 0..MAX_SHARED_PER_RUN {
            run.open_shared(format!("r{i}"), 1).unwrap();
        }
        assert_eq!(
            run.open_shared("one-more".into(), 1).unwrap_err().code,
            Code::QuotaExceeded
        );
        drop(run);
        assert_eq!(shared.len(), 0);
    }
}
