//! An install's compile in a process of its own: a worker cloned by the
//! launcher like a run's, with every layer but a ClawFS directory, in the
//! cgroup `compile-<id>` with the `[compile]` limits. The daemon sends it
//! the component's bytes and takes back the artifact; a compile that goes
//! over a limit is killed and its memory given back to the system, never
//! held by the daemon.

use super::channel::{self, FromWorker, ToWorker};
use super::supervisor::{Sandbox, Worker};
use crate::cgroup::{self, Delegation};
use crate::error::{Code, Failure};
use rustix::process::WaitIdStatus;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl Sandbox {
    /// Validate and compile a component in a worker of its own (every
    /// layer of a run's worker but a ClawFS directory), in the cgroup
    /// `compile-<id>` with the `[compile]` limits, by the compile's
    /// deadline: the artifact, or why not. A compile that goes over a
    /// limit is killed, its memory given back to the system, and answered
    /// WASM_RESOURCE_LIMIT (105); the daemon never holds a compiler's
    /// memory.
    pub fn compile(&self, bytes: &[u8]) -> Result<Vec<u8>, Failure> {
        let started = Instant::now();
        let id = self.next_instance.fetch_add(1, Ordering::Relaxed);
        let limits = self.compile.cgroup();
        let delegation = match self.layers.cgroup {
            true => Some(
                Delegation::create_compile(&self.cgroup, id, &limits).map_err(|f| {
                    Failure::new(
                        Code::SandboxSetupFailed,
                        format!("sandbox layer cgroup (compile): {}", f.message),
                    )
                })?,
            ),
            false => None,
        };
        let (worker, channel) = self.clone_worker(id, delegation.as_ref(), None)?;
        let deadline = started + Duration::from_millis(self.compile.timeout_ms);
        // A compiler that died while the bytes went says so below; one that
        // does not read them holds nobody past the deadline.
        let _ = channel.set_write_timeout(Some(deadline.saturating_duration_since(Instant::now())));
        let _ = channel::send(channel.as_fd(), &ToWorker::Compile(bytes.to_vec()), &[]);
        let max = u32::try_from(self.compile.max_artifact_bytes + (1 << 20)).unwrap_or(u32::MAX);
        let answer = channel::recv_within::<FromWorker>(channel.as_fd(), max, Some(deadline));
        drop(channel);
        let finished = matches!(answer, Ok(Some((FromWorker::Compiled(_), _))));
        let status = match finished {
            true => worker.reap_finished(delegation.as_ref()),
            false => worker.end(delegation.as_ref()),
        };
        let result = match answer {
            Ok(Some((FromWorker::Compiled(artifact), _))) => Ok(artifact),
            Ok(Some((FromWorker::SetupFailed(code, message), _))) => {
                Err(Failure::new(code, message))
            }
            Ok(Some((other, _))) => Err(Failure::new(
                Code::Eproto,
                format!("the compiler sent {other:?}"),
            )),
            Ok(None) | Err(_) if Instant::now() >= deadline => Err(Failure::new(
                Code::WasmResourceLimit,
                format!(
                    "compiling the component took longer than compile.timeout_ms = {}; the compiler was killed",
                    self.compile.timeout_ms
                ),
            )),
            Ok(None) | Err(_) => Err(self.compiler_died(&worker, status, delegation.as_ref())),
        };
        tracing::info!(
            compile = id,
            worker = worker.pid,
            bytes = bytes.len(),
            compile_us = started.elapsed().as_micros() as u64,
            code = %result.as_ref().map_or_else(|f| f.code, |_| Code::Success),
            "compile ended{}",
            result.as_ref().err().map_or(String::new(), |f| format!(": {}", f.message))
        );
        drop(delegation);
        result
    }

    /// Why a compiler ended without an answer.
    fn compiler_died(
        &self,
        worker: &Worker,
        status: Option<WaitIdStatus>,
        delegation: Option<&Delegation>,
    ) -> Failure {
        let oom = delegation
            .and_then(|d| cgroup::oom_kills(d.dir()))
            .unwrap_or(0);
        match status.as_ref().and_then(|s| s.terminating_signal()) {
            Some(sig) if sig == libc::SIGKILL && oom > 0 => Failure::new(
                Code::WasmResourceLimit,
                format!(
                    "compiling the component took more than compile.memory_max = {} bytes; the compiler was killed (memory.events oom_kill {oom})",
                    self.compile.memory_max
                ),
            ),
            Some(sig) if sig == libc::SIGSYS => Failure::new(
                Code::Einternal,
                format!(
                    "the compiler (worker {}) was killed by seccomp: it made a system call the worker filter forbids",
                    worker.pid
                ),
            ),
            Some(sig) => Failure::new(
                Code::SandboxSetupFailed,
                format!(
                    "the compiler (worker {}) was killed by signal {sig}",
                    worker.pid
                ),
            ),
            None => Failure::new(
                Code::SandboxSetupFailed,
                format!(
                    "the compiler (worker {}) exited without an answer",
                    worker.pid
                ),
            ),
        }
    }
}
