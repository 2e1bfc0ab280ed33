//! The launcher: a single-threaded process forked by the daemon before it
//! starts any thread. It holds the engine and the tools it has loaded, and
//! on each [`Spawn`] clones one worker with `clone3` into new user, pid,
//! net and mnt namespaces, into the instance's prepared cgroup, with
//! `CLONE_PARENT` so the daemon is the worker's parent and reaps it
//! through the pidfd the launcher hands back. No exec: the worker is a
//! copy of the launcher with its tools already loaded. Workers are made
//! ahead of their run (the daemon keeps a pool ready), so a worker learns its
//! tool afterwards and loads it itself only if the launcher had not.

use super::channel::{self, Spawn, Spawned};
use super::sys;
use super::worker;
use crate::apparmor::{self, LAUNCHER_PROFILE};
use crate::error::{Code, Failure};
use crate::runtime::{Prepared, Runtime};
use crate::seccomp::{Kind, Program};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A loaded tool, valid while its artifact file is unchanged.
struct Loaded {
    modified: Option<SystemTime>,
    prepared: Prepared,
}

/// The tools the launcher has loaded, by artifact path; each worker has a
/// copy of them as they were when it was cloned.
#[derive(Default)]
pub struct Artifacts {
    loaded: HashMap<PathBuf, Loaded>,
}

impl Artifacts {
    /// The tool at `artifact`, loaded once and again when the file changes.
    pub fn get(&mut self, rt: &Runtime, artifact: &Path) -> Result<&Prepared, Failure> {
        let modified = std::fs::metadata(artifact).and_then(|m| m.modified()).ok();
        let fresh = self
            .loaded
            .get(artifact)
            .is_some_and(|l| l.modified == modified);
        if !fresh {
            let prepared = rt.load_artifact(artifact)?;
            self.loaded
                .insert(artifact.to_owned(), Loaded { modified, prepared });
        }
        Ok(&self.loaded[artifact].prepared)
    }
}

/// The launcher's loop, until the daemon closes `control`; never returns.
pub fn main(control: OwnedFd, mut rt: Runtime, apparmor: bool) -> ! {
    let code = match sys::keep_only_stdio_and(control)
        .and_then(|control| confine(apparmor).map(|()| control))
        .and_then(|control| run(&control, &mut rt))
    {
        Ok(()) => 0,
        Err(f) => {
            tracing::error!("launcher stopped: {}", f.message);
            1
        }
    };
    sys::exit_now(code)
}

/// Enter the launcher's AppArmor profile: it holds the capabilities for
/// cloning workers, which the daemon's profile does not.
fn confine(apparmor: bool) -> Result<(), Failure> {
    if !apparmor {
        return Ok(());
    }
    apparmor::change_profile(LAUNCHER_PROFILE)
        .and_then(|()| apparmor::require_confined(LAUNCHER_PROFILE))
        .map_err(|f| {
            Failure::new(
                f.code,
                format!("sandbox layer apparmor (launcher): {}", f.message),
            )
        })
}

fn run(control: &OwnedFd, rt: &mut Runtime) -> Result<(), Failure> {
    // Both filters are compiled before either is installed: the launcher's
    // own filter has no business with the policy parser afterwards.
    let worker_filter = Kind::Worker.policy()?.compile()?;
    let own = Kind::Launcher.policy()?.compile()?;
    own.install().map_err(|f| {
        Failure::new(
            f.code,
            format!("sandbox layer seccomp (launcher): {}", f.message),
        )
    })?;
    tracing::info!(kind = "launcher", instructions = own.bytes.len() / 8, sha256 = %own.digest(), "seccomp filter installed");
    tracing::info!(kind = "worker", instructions = worker_filter.bytes.len() / 8, sha256 = %worker_filter.digest(), "seccomp filter ready for workers");
    let mut tools = Artifacts::default();
    while let Some((spawn, fds)) = channel::recv::<Spawn>(control.as_fd())? {
        let reply = match spawn_worker(&spawn, fds, rt, &mut tools, &worker_filter, control) {
            Ok((pid, pidfd)) => {
                channel::send(control.as_fd(), &Spawned::Worker(pid), &[pidfd.as_fd()])
            }
            Err(f) => channel::send(control.as_fd(), &Spawned::Refused(f.code, f.message), &[]),
        };
        reply?;
    }
    Ok(())
}

fn spawn_worker(
    spawn: &Spawn,
    fds: Vec<OwnedFd>,
    rt: &mut Runtime,
    tools: &mut Artifacts,
    filter: &Program,
    control: &OwnedFd,
) -> Result<(i32, OwnedFd), Failure> {
    let mut fds = fds.into_iter();
    let channel = fds
        .next()
        .ok_or_else(|| Failure::new(Code::Eproto, "spawn without a channel"))?;
    let cgroup = fds.next();
    if spawn.layers.cgroup != cgroup.is_some() {
        return Err(Failure::new(
            Code::Eproto,
            "spawn: the cgroup layer is on but the instance's cgroup directory did not arrive (or the reverse)",
        ));
    }
    if let Some(artifact) = &spawn.preload {
        // A tool that cannot be loaded is the run's business: its worker
        // tries again and reports the failure as the run's outcome.
        if let Err(f) = tools.get(rt, artifact) {
            tracing::warn!(artifact = %artifact.display(), "cannot preload: {}", f.message);
        }
    }
    let (go_read, go_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Failure::new(Code::SandboxSetupFailed, format!("pipe: {e}")))?;
    let flags = (libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWNS
        | libc::CLONE_PARENT) as u64;
    match sys::clone3(flags, cgroup.as_ref().map(|c| c.as_fd()))? {
        None => {
            // The worker. Nothing of the launcher's conversation is its business.
            drop((go_write, cgroup));
            sys::close_in_child(control.as_fd());
            worker::main(spawn, channel, go_read, rt, tools, filter)
        }
        Some(child) => {
            drop(go_read);
            map_ids(child.pid)?;
            rustix::io::write(&go_write, b"g").map_err(|e| {
                Failure::new(
                    Code::SandboxSetupFailed,
                    format!("start worker {}: {e}", child.pid),
                )
            })?;
            Ok((child.pid, child.pidfd))
        }
    }
}

/// Map uid and gid 0 in the worker's user namespace to 0 outside: its
/// ClawFS files stay root's, while it holds no capability anywhere once
/// its setup is done (docs/sandbox.md says why not an unprivileged uid).
pub fn map_ids(pid: i32) -> Result<(), Failure> {
    for map in ["uid_map", "gid_map"] {
        let path = format!("/proc/{pid}/{map}");
        std::fs::write(&path, "0 0 1\n").map_err(|e| {
            Failure::new(
                Code::SandboxSetupFailed,
                format!("sandbox layer user namespace: write {path}: {e}"),
            )
        })?;
    }
    Ok(())
}
