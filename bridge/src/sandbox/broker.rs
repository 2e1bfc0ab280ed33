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
}

impl<'a> Serve<'a> {
    /// Answer the worker `worker` (pid in the daemon's namespace) with
    /// `egress` and its instance's `delegation`.
    pub(super) fn new(
        egress: &'a Egress,
        delegation: Option<&'a mut Delegation>,
        worker: i32,
    ) -> Serve<'a> {
        Serve {
            egress,
            delegation,
            pids: PidMap::new(worker),
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
            other => refused(Failure::new(
                Code::Eproto,
                format!("unexpected request {}", kind(&other)),
            )),
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
}
