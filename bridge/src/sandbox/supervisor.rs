//! The daemon's side of the sandbox: fork the launcher, keep a pool of
//! workers ready, each in its own prepared cgroup ([`super::pool`]), and
//! for each run give a ready worker its tool (or make a worker if none is
//! ready), serve the worker's requests, answer, then reap it and remove its
//! cgroup while the pool is refilled.

use super::broker::{Serve, SharedMemory};
use super::channel::{self, FromWorker, Layers, Setup, Spawn, Spawned, ToWorker};
use super::launcher;
use super::pool::{Pool, PoolStatus};
use super::sys;
use crate::cgroup::{self, Delegation, MAIN_LEAF};
use crate::config::{CgroupPolicy, CompileLimits, Config};
use crate::egress::Egress;
use crate::error::{Code, Failure};
use crate::grants::Effective;
use crate::monitor::instances::instances;
use crate::runtime::outcome::RunOutcome;
use crate::runtime::{RunInput, Runtime};
use rustix::process::{Signal, WaitId, WaitIdOptions, WaitIdStatus};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Wall time a worker gets beyond its CPU budget once set up before it is
/// killed: instantiation and the result's trip back.
const WALL_GRACE: Duration = Duration::from_secs(5);
/// Wall time a worker gets to set up: loading its tool, when the launcher
/// had not, runs under the instance's CPU quota (5% of a CPU).
const SETUP_LIMIT: Duration = Duration::from_secs(60);
/// How long a worker that sent its result may take to exit.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Which optional layers this system can apply. Seccomp and the namespaces
/// are always applied; cgroup v2 and AppArmor are required unless the loud
/// development flag allows them to be missing, and the appliance never
/// sets it. So are per-tool storage quotas on the filesystem of
/// `clawfs_root`.
pub fn detect_layers(
    policy: &CgroupPolicy,
    clawfs_root: &std::path::Path,
    allow_missing: bool,
) -> Result<Layers, Failure> {
    let cgroup = cgroup::available(policy);
    let quota = crate::clawfs::quota::require_enforced(clawfs_root);
    let apparmor = crate::apparmor::require_confined(crate::apparmor::DAEMON_PROFILE);
    // The monitors' cgroup filter needs the bridge's cgroup v2 subtree.
    let ebpf = cgroup
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|()| crate::monitor::bpf_lsm_active());
    let mut missing = Vec::new();
    if let Err(f) = &cgroup {
        missing.push(format!("cgroup v2 ({})", f.message));
    }
    if let Err(f) = &apparmor {
        missing.push(format!("apparmor ({})", f.message));
    }
    if let Err(f) = &ebpf {
        missing.push(format!("ebpf ({})", f.message));
    }
    if let Err(f) = &quota {
        missing.push(format!("storage quotas ({})", f.message));
    }
    if !missing.is_empty() {
        if !allow_missing {
            return Err(Failure::new(
                Code::SandboxSetupFailed,
                format!(
                    "sandbox layers missing, refusing to start: {}",
                    missing.join("; ")
                ),
            ));
        }
        for m in &missing {
            tracing::warn!(
                "--dev-allow-missing-layers: running WITHOUT the {m} layer; never do this in production"
            );
        }
    }
    Ok(Layers {
        cgroup: cgroup.is_ok(),
        apparmor: apparmor.is_ok(),
        ebpf: ebpf.is_ok(),
        storage_quota: quota.is_ok(),
    })
}

/// The daemon's handle on the launcher.
pub struct Sandbox {
    launcher: u32,
    control: Mutex<OwnedFd>,
    pub(super) layers: Layers,
    pub(super) cgroup: CgroupPolicy,
    egress: Egress,
    clawfs_root: PathBuf,
    pub(super) next_instance: AtomicU64,
    /// Workers made ahead of their runs.
    pub(super) pool: Pool,
    /// Workers that answered and are being reaped (their cgroups removed)
    /// in the background: shutdown waits for them.
    reaping: Arc<(Mutex<usize>, Condvar)>,
    /// The largest message a worker may send: its outcome with output,
    /// stdout, stderr and logs at their limits.
    max_message: u32,
    /// The limits of an install's compile.
    pub(super) compile: CompileLimits,
    /// Memory shared by the live runs of a tool (`memory.open-shared`).
    shared: SharedMemory,
}

/// A worker made ahead of its run: cloned into new namespaces and into its
/// instance cgroup, waiting for its tool on its channel. It never serves
/// more than one run.
pub(super) struct Spare {
    pub(super) id: u64,
    /// The launcher's load number when it was cloned ([`Pool::cloning`]).
    pub(super) loaded: u64,
    delegation: Option<Delegation>,
    worker: Worker,
    channel: UnixStream,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("layers", &self.layers)
            .finish()
    }
}

impl Sandbox {
    /// Fork the launcher, which takes a copy of `rt`. Must be called while
    /// the process has one thread.
    pub fn start(
        config: &Config,
        rt: Runtime,
        layers: Layers,
    ) -> Result<(Sandbox, Runtime), Failure> {
        if layers.cgroup {
            cgroup::remove_stale(&config.cgroup);
        }
        if layers.ebpf {
            // Before the fork: the launcher, and so every worker's parent,
            // is in the monitored subtree too.
            crate::monitor::join_daemon_group(&config.cgroup.root)?;
        }
        let (ours, theirs) = channel::channel()?;
        match sys::fork_single_threaded()? {
            None => {
                drop(ours);
                launcher::main(theirs.into(), rt, layers.apparmor)
            }
            Some(pid) => {
                tracing::info!(
                    launcher = pid.as_raw_nonzero().get(),
                    ?layers,
                    "sandbox launcher started"
                );
                let sandbox = Sandbox {
                    launcher: pid.as_raw_nonzero().get() as u32,
                    control: Mutex::new(ours.into()),
                    layers,
                    cgroup: config.cgroup.clone(),
                    egress: Egress::new(config.network.clone()),
                    clawfs_root: config.clawfs_root(),
                    next_instance: AtomicU64::new(1),
                    pool: Pool::new(
                        config
                            .sandbox
                            .pool_size(config.ipc.max_concurrent_runs, mem_total()),
                    ),
                    reaping: Arc::new((Mutex::new(0), Condvar::new())),
                    max_message: u32::try_from(config.sandbox.max_outcome_bytes())
                        .unwrap_or(u32::MAX),
                    compile: config.compile.clone(),
                    shared: SharedMemory::new(config.sandbox.memory_limit_bytes),
                };
                Ok((sandbox, rt))
            }
        }
    }

    /// The layers every worker gets.
    pub fn layers(&self) -> Layers {
        self.layers
    }

    /// The launcher's pid.
    pub fn launcher_pid(&self) -> u32 {
        self.launcher
    }

    /// Start filling the pool of ready workers (in the background).
    pub fn prepare(self: &Arc<Self>) {
        Pool::start(self);
    }

    /// The pool of ready workers, now.
    pub fn pool_status(&self) -> PoolStatus {
        self.pool.status()
    }

    /// At shutdown, once no run is in flight: end every ready worker and
    /// wait (up to `grace`) for the workers of finished runs to be reaped,
    /// so that no instance cgroup is left behind. Returns how many ready
    /// workers were ended and how many reaps were still running at the
    /// end of `grace`.
    pub fn shutdown(&self, grace: Duration) -> (usize, usize) {
        let drained = self.pool.drain();
        let (count, done) = &*self.reaping;
        let left = done
            .wait_timeout_while(
                count.lock().unwrap_or_else(|p| p.into_inner()),
                grace,
                |n| *n > 0,
            )
            .map_or(0, |(n, _)| *n);
        (drained, left)
    }

    /// A new worker in a new instance cgroup, waiting for its tool.
    pub(super) fn make_spare(&self, preload: Option<&Path>) -> Result<Spare, Failure> {
        let id = self.next_instance.fetch_add(1, Ordering::Relaxed);
        let delegation = match self.layers.cgroup {
            true => Some(Delegation::create(&self.cgroup, id).map_err(|f| {
                Failure::new(
                    Code::SandboxSetupFailed,
                    format!("sandbox layer cgroup: {}", f.message),
                )
            })?),
            false => None,
        };
        if let Some(d) = &delegation {
            instances().created(id, d.dir().to_owned());
        }
        let (worker, channel) = self.clone_worker(id, delegation.as_ref(), preload)?;
        Ok(Spare {
            id,
            loaded: worker.loaded,
            delegation,
            worker,
            channel,
        })
    }

    /// Have the launcher clone worker `id` into `delegation`'s leaf (with
    /// the cgroup layer), the launcher loading `preload` first: the worker
    /// and the daemon's end of its channel.
    pub(super) fn clone_worker(
        &self,
        id: u64,
        delegation: Option<&Delegation>,
        preload: Option<&Path>,
    ) -> Result<(Worker, UnixStream), Failure> {
        let leaf = match delegation {
            Some(d) => Some(open_dir(&d.dir().join(MAIN_LEAF))?),
            None => None,
        };
        let (channel, theirs) = channel::channel()?;
        let spawn = Spawn {
            instance: id,
            layers: self.layers,
            preload: preload.map(Path::to_owned),
        };
        let worker = self.spawn(&spawn, &theirs, leaf.as_ref())?;
        Ok((worker, channel))
    }

    /// Run `tool` (installed with artifact `artifact`) in a worker of its
    /// own: a ready one if the pool has one, else a new one. Returns once
    /// the outcome is known; a worker that delivered one is reaped and its
    /// cgroup removed afterwards, in the background.
    pub fn run(
        self: &Arc<Self>,
        tool: &str,
        artifact: &Path,
        input: RunInput,
        budget_ms: u64,
        grants: &Effective,
    ) -> RunOutcome {
        let started = Instant::now();
        let ready = self.pool.take(artifact);
        let had_spare = ready.is_some();
        let spare = match ready {
            Some(spare) => Ok(spare),
            None => self.make_spare(Some(artifact)),
        };
        let out = match spare {
            Ok(spare) => {
                let id = spare.id;
                let mut out = self.instance(
                    spare, tool, artifact, input, budget_ms, grants, started, had_spare,
                );
                out.instance_id = id;
                out
            }
            Err(f) => RunOutcome {
                code: f.code,
                message: f.message,
                ..RunOutcome::default()
            },
        };
        // The pool's next worker has this run's tool loaded.
        self.pool.run_ended(artifact);
        if out.code != Code::Success {
            tracing::info!(tool, instance = out.instance_id, code = %out.code, "run failed: {}", out.message);
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn instance(
        &self,
        spare: Spare,
        tool: &str,
        artifact: &Path,
        input: RunInput,
        budget_ms: u64,
        grants: &Effective,
        started: Instant,
        had_spare: bool,
    ) -> RunOutcome {
        let Spare {
            id,
            loaded,
            mut delegation,
            worker,
            channel,
        } = spare;
        // The kernel's connect check learns this run's destinations before
        // anything of the tool runs (and refuses every connect of this
        // thread once they are taken back). A run granted none is not
        // registered: the kernel refuses a thread that serves no instance.
        let kernel = (!grants.net.is_empty())
            .then(|| crate::monitor::grants::serve(id, &grants.net))
            .transpose();
        if let Err(f) = kernel
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|_| self.hand_over(&channel, tool, artifact, grants))
        {
            // Nothing of the tool ran: the run fails with the reason itself.
            Spare {
                id,
                loaded,
                delegation,
                worker,
                channel,
            }
            .discard();
            return RunOutcome {
                code: f.code,
                message: f.message,
                ..RunOutcome::default()
            };
        }
        let handed = Instant::now();
        let budget = Duration::from_millis(budget_ms);
        // Connects this thread makes for the worker are the instance's.
        let serving = instances().serve(id);
        let was_ready = std::cell::Cell::new(handed);
        let ready = || {
            was_ready.set(Instant::now());
            instances().running(id, tool)
        };
        let egress = self
            .egress
            .granted(grants.names.clone(), grants.net.clone());
        let talk = self.converse(
            &channel,
            Serve::new(&egress, delegation.as_mut(), worker.pid, &self.shared, tool),
            input,
            budget,
            &ready,
        );
        drop(serving);
        drop(kernel);
        drop(channel);
        let answered = Instant::now();
        let us = |from: Instant, to: Instant| to.duration_since(from).as_micros() as u64;
        match talk {
            Ok(Some(out)) => {
                let pid = worker.pid;
                let tool_name = tool.to_owned();
                let reaping = Reaping::begin(&self.reaping);
                let ready = was_ready.get();
                std::thread::spawn(move || {
                    // The outcome is delivered: nothing of the worker is
                    // needed.
                    let _ = worker.end(delegation.as_ref());
                    instances().ended(id);
                    let reaped = Instant::now();
                    drop(delegation);
                    drop(reaping);
                    tracing::info!(
                        tool = tool_name,
                        instance = id,
                        worker = pid,
                        spare = had_spare,
                        run_us = us(started, answered),
                        worker_us = us(started, handed),
                        setup_us = us(handed, ready),
                        call_us = us(ready, answered),
                        reap_us = us(answered, reaped),
                        cleanup_us = us(reaped, Instant::now()),
                        "run ended"
                    );
                });
                out
            }
            Ok(None) | Err(_) => {
                let status = worker.end(delegation.as_ref());
                instances().ended(id);
                let out = self.killed(&worker, status, talk.err(), delegation.as_ref());
                drop(delegation);
                tracing::info!(
                    tool,
                    instance = id,
                    worker = worker.pid,
                    spare = had_spare,
                    run_us = us(started, answered),
                    reap_us = us(answered, Instant::now()),
                    "run ended without an outcome from its worker"
                );
                out
            }
        }
    }

    /// Give a spare its tool: the worker learns what to load and which
    /// ClawFS directory to bind.
    fn hand_over(
        &self,
        channel: &UnixStream,
        tool: &str,
        artifact: &Path,
        grants: &Effective,
    ) -> Result<(), Failure> {
        // The registry made the tool's ClawFS directory when the run began
        // (`ToolRegistry::prepare_run`); it is gone only if the tool
        // was removed since, and it is never made again here.
        let clawfs = self.clawfs_root.join(tool);
        if !clawfs.is_dir() {
            return Err(Failure::new(
                Code::ToolNotFound,
                format!("tool {tool:?} was removed while this run waited: its ClawFS data is gone"),
            ));
        }
        let setup = Setup {
            tool: tool.to_owned(),
            artifact: artifact.to_owned(),
            clawfs,
            grants: grants.clone(),
        };
        channel::send(channel.as_fd(), &ToWorker::Setup(setup), &[])
    }

    /// Ask the launcher for a worker.
    pub(super) fn spawn(
        &self,
        spawn: &Spawn,
        channel: &UnixStream,
        leaf: Option<&OwnedFd>,
    ) -> Result<Worker, Failure> {
        let control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        // Under the launcher's lock: its loads and clones happen in this
        // order.
        let loaded = self.pool.cloning(spawn.preload.as_deref());
        let mut fds = vec![channel.as_fd()];
        fds.extend(leaf.map(|l| l.as_fd()));
        let gone = |f: Failure| {
            Failure::new(
                Code::SandboxSetupFailed,
                format!("the sandbox launcher is gone: {}", f.message),
            )
        };
        channel::send(control.as_fd(), spawn, &fds).map_err(gone)?;
        match channel::recv::<Spawned>(control.as_fd()).map_err(gone)? {
            Some((Spawned::Worker(pid), mut fds)) if fds.len() == 1 => Ok(Worker {
                pid,
                pidfd: fds.pop().expect("one descriptor"),
                loaded,
            }),
            Some((Spawned::Refused(code, message), _)) => Err(Failure::new(code, message)),
            Some((other, _)) => Err(Failure::new(
                Code::Einternal,
                format!("launcher answered {other:?}"),
            )),
            None => Err(Failure::new(
                Code::SandboxSetupFailed,
                "the sandbox launcher is gone",
            )),
        }
    }

    /// Serve the worker until it sends its outcome (`Some`) or its channel
    /// closes (`None`: it died, and the status says how).
    fn converse(
        &self,
        ch: &UnixStream,
        mut serve: Serve<'_>,
        input: RunInput,
        budget: Duration,
        ready: &dyn Fn(),
    ) -> Result<Option<RunOutcome>, Failure> {
        // Setup first (loading the tool if the launcher had not, under the
        // instance's CPU quota), then the run's own wall time.
        let deadline = std::cell::Cell::new(Instant::now() + SETUP_LIMIT);
        let phase = std::cell::Cell::new("setup");
        // A worker is not trusted: each message is bounded by what an
        // outcome can be, and must arrive whole by the phase's deadline,
        // however the worker spaces its bytes.
        let recv = || -> Result<Option<(FromWorker, Vec<OwnedFd>)>, Failure> {
            channel::recv_within(ch.as_fd(), self.max_message, Some(deadline.get())).map_err(|f| {
                if Instant::now() >= deadline.get() {
                    wall_time(phase.get())
                } else {
                    f
                }
            })
        };
        // The input goes at once, queued behind the setup: the worker
        // reads it once ready. If the worker could not set up, its
        // `SetupFailed` (waiting in our socket) says why, not the send.
        let sent = channel::send(ch.as_fd(), &ToWorker::Input(input), &[]);
        match recv()? {
            Some((FromWorker::Ready, _)) => {
                sent?;
                ready();
                deadline.set(Instant::now() + budget + WALL_GRACE);
                phase.set("run");
            }
            Some((FromWorker::SetupFailed(code, message), _)) => {
                return Err(Failure::new(code, message));
            }
            Some((other, _)) => {
                return Err(Failure::new(
                    Code::Eproto,
                    format!("worker sent {other:?} before ready"),
                ));
            }
            None => return Ok(None),
        }
        while let Some((msg, _)) = recv()? {
            let (reply, fd) = match msg {
                FromWorker::Done(out) => return Ok(Some(*out)),
                request => serve.answer(request, deadline.get()),
            };
            let fds: Vec<_> = fd.iter().map(|f| f.as_fd()).collect();
            channel::send(ch.as_fd(), &reply, &fds)?;
        }
        Ok(None)
    }

    /// The outcome of a worker that did not deliver one.
    fn killed(
        &self,
        worker: &Worker,
        status: Option<WaitIdStatus>,
        err: Option<Failure>,
        delegation: Option<&Delegation>,
    ) -> RunOutcome {
        let oom = delegation.and_then(|d| cgroup::oom_kills(d.dir()));
        let how = match status.as_ref().and_then(|s| s.terminating_signal()) {
            Some(sig) if sig == libc::SIGKILL && oom.is_some_and(|n| n > 0) => format!(
                "killed by the kernel's OOM killer: the instance's cgroup reached memory.max = {} bytes (memory.events oom_kill {})",
                self.cgroup.instance.memory_max,
                oom.unwrap_or(0)
            ),
            Some(sig) if sig == libc::SIGSYS => {
                "killed by seccomp (SIGSYS): it made a system call the worker filter forbids"
                    .to_owned()
            }
            Some(sig) => format!("killed by signal {sig}"),
            None => match status.as_ref().and_then(|s| s.exit_status()) {
                Some(code) => format!("exited with status {code} without a result"),
                None => "did not exit".to_owned(),
            },
        };
        let (code, message) = match err {
            Some(f) if f.code == Code::SandboxSetupFailed => (f.code, f.message),
            Some(f) => (
                Code::InstanceKilled,
                format!("worker {} {how} ({})", worker.pid, f.message),
            ),
            None => (Code::InstanceKilled, format!("worker {} {how}", worker.pid)),
        };
        RunOutcome {
            code,
            message,
            ..RunOutcome::default()
        }
    }
}

fn wall_time(phase: &str) -> Failure {
    Failure::new(
        Code::InstanceKilled,
        format!("the worker ran past its wall-time limit ({phase})"),
    )
}

fn open_dir(path: &Path) -> Result<OwnedFd, Failure> {
    use rustix::fs::{CWD, Mode, OFlags, openat};
    openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        Failure::new(
            Code::SandboxSetupFailed,
            format!("sandbox layer cgroup: open {}: {e}", path.display()),
        )
    })
}

impl Spare {
    /// Has it not exited yet?
    pub(super) fn alive(&self) -> bool {
        self.worker.alive()
    }

    /// Let a ready worker go unused: its channel closes, it is killed and
    /// reaped, its cgroup removed.
    pub(super) fn discard(self) {
        drop(self.channel);
        let _ = self.worker.end(self.delegation.as_ref());
        instances().ended(self.id);
        drop(self.delegation);
    }
}

/// One worker being reaped in the background; counted in
/// `Sandbox::reaping` from `begin` until dropped.
struct Reaping(Arc<(Mutex<usize>, Condvar)>);

impl Reaping {
    fn begin(count: &Arc<(Mutex<usize>, Condvar)>) -> Reaping {
        *count.0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Reaping(Arc::clone(count))
    }
}

impl Drop for Reaping {
    fn drop(&mut self) {
        let (count, done) = &*self.0;
        let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        done.notify_all();
    }
}

/// The machine's memory, bytes (`sysinfo`: no file to read, so nothing
/// for the daemon's AppArmor profile to allow).
fn mem_total() -> u64 {
    let info = rustix::system::sysinfo();
    info.totalram.saturating_mul(u64::from(info.mem_unit))
}

/// A live worker: the daemon is its parent (`CLONE_PARENT`).
pub(super) struct Worker {
    pub(super) pid: i32,
    pidfd: OwnedFd,
    /// The launcher's load number when it was cloned.
    loaded: u64,
}

impl Worker {
    /// Has it not exited yet?
    fn alive(&self) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &self.pidfd,
            rustix::event::PollFlags::IN,
        )];
        let now = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(0))
    }

    /// End the worker now and reap it: SIGKILL (harmless if it already
    /// exited), then its cgroup's `cpu.max` lifted, then the wait. Every
    /// thread has the fatal signal pending once the kill returns, so none
    /// runs its own code again; the lift only lets the exit itself run at
    /// full speed: a worker that spent its run's CPU share (a budget hit,
    /// a deadline, a fault) would otherwise exit at 5% of a CPU (reaping
    /// took a median 262 ms under TCG). Returns how it ended.
    pub(super) fn end(&self, delegation: Option<&Delegation>) -> Option<WaitIdStatus> {
        let _ = rustix::process::pidfd_send_signal(&self.pidfd, Signal::KILL);
        if let Some(d) = delegation {
            let _ = d.unthrottle_killed();
        }
        self.wait()
    }

    /// Wait for a worker that was asked to finish (a compiler that sent
    /// its artifact) for a short grace, then end it.
    pub(super) fn reap_finished(&self, delegation: Option<&Delegation>) -> Option<WaitIdStatus> {
        let mut fds = [rustix::event::PollFd::new(
            &self.pidfd,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::time::Timespec {
            tv_sec: EXIT_GRACE.as_secs() as i64,
            tv_nsec: 0,
        };
        let _ = rustix::event::poll(&mut fds, Some(&ts));
        self.end(delegation)
    }

    /// Wait for the worker's exit and collect it.
    fn wait(&self) -> Option<WaitIdStatus> {
        match rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED) {
            Ok(status) => status,
            Err(e) => {
                tracing::error!(worker = self.pid, "cannot reap the worker: {e}");
                None
            }
        }
    }
}
