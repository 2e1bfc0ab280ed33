//! The pool of ready workers. Each is cloned ahead of its run into its own
//! instance cgroup with every layer that does not depend on the tool
//! applied, and waits for its tool on its channel. A worker is a copy of
//! the launcher as it was when cloned, with the tools the launcher had
//! loaded then: a run takes the newest live worker that has its tool (this
//! version of its artifact) loaded. When none has, the run has the launcher
//! load the tool and make its own worker, as a run did before there was a
//! pool: a worker that loads its tool itself does so under its instance's
//! 5% of a CPU, which under TCG took most of a second.
//!
//! One thread refills the pool, one worker at a time, and only while fewer
//! runs are in flight than the machine has CPUs, so that a refill takes a
//! CPU no run is using. It keeps the pool's workers current: once the
//! launcher has loaded a tool, older workers lack it, and each is replaced
//! (oldest first) by one that has it. It also replaces a ready worker that
//! died (it is never handed a run: `take` checks each). At shutdown the pool
//! is drained: every ready worker is killed and reaped and its cgroup
//! removed.

use super::supervisor::{Sandbox, Spare};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::SystemTime;

/// How often the refiller looks for ready workers that died.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long the refiller waits after the launcher refused a worker.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What the pool has and has done, for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Workers ready now.
    pub ready: u32,
    /// Of those, workers made before the launcher loaded a tool they lack:
    /// they are being replaced.
    pub behind: u32,
    /// Workers the pool keeps ready.
    pub size: u32,
    /// Runs that found a ready worker.
    pub hits: u64,
    /// Runs that had to wait for a worker to be made.
    pub misses: u64,
    /// Ready workers found dead and replaced.
    pub died: u64,
}

pub(super) struct Pool {
    size: usize,
    /// CPUs of this machine: the refiller waits while as many runs are in
    /// flight.
    cpus: usize,
    state: Mutex<State>,
    changed: Condvar,
    refiller: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    /// Oldest first.
    ready: Vec<Spare>,
    /// The artifact the launcher loads before the next clone (the last
    /// run's), so the next worker has it loaded.
    preload: Option<PathBuf>,
    /// What the launcher was asked to load, by artifact: the version (its
    /// modification time) and the load's number. A worker cloned at load
    /// number `n` has every artifact whose number is `n` or less.
    loaded: HashMap<PathBuf, (Option<SystemTime>, u64)>,
    /// Loads so far.
    generation: u64,
    running: usize,
    stopping: bool,
    hits: u64,
    misses: u64,
    died: u64,
}

impl Pool {
    pub(super) fn new(size: usize) -> Pool {
        Pool {
            size,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            refiller: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start the refiller (once).
    pub(super) fn start(sandbox: &Arc<Sandbox>) {
        let pool = &sandbox.pool;
        let mut refiller = pool.refiller.lock().unwrap_or_else(|p| p.into_inner());
        if refiller.is_some() || pool.size == 0 {
            return;
        }
        let this = Arc::clone(sandbox);
        *refiller = Some(std::thread::spawn(move || refill(&this)));
    }

    /// The launcher is about to clone a worker, having loaded `preload`
    /// first: the load number the worker will have.
    pub(super) fn cloning(&self, preload: Option<&Path>) -> u64 {
        let version = preload.map(modified);
        let mut st = self.lock();
        if let (Some(path), Some(version)) = (preload, version)
            && st.loaded.get(path).map(|(v, _)| *v) != Some(version)
        {
            st.generation += 1;
            let n = st.generation;
            st.loaded.insert(path.to_owned(), (version, n));
        }
        st.generation
    }

    /// A run of `artifact` begins: the newest live ready worker that has
    /// this version of it loaded, if any. Dead ones found on the way are
    /// discarded; workers without it stay for other tools.
    pub(super) fn take(&self, artifact: &Path) -> Option<Spare> {
        let version = modified(artifact);
        let mut dead = Vec::new();
        let mut st = self.lock();
        st.running += 1;
        let want = st
            .loaded
            .get(artifact)
            .filter(|(v, _)| *v == version)
            .map(|(_, n)| *n);
        let mut found = None;
        let mut i = st.ready.len();
        while i > 0 {
            i -= 1;
            if !st.ready[i].alive() {
                dead.push(st.ready.remove(i));
                continue;
            }
            if want.is_some_and(|n| st.ready[i].loaded >= n) {
                found = Some(st.ready.remove(i));
                break;
            }
        }
        st.died += dead.len() as u64;
        match found {
            Some(_) => st.hits += 1,
            None => st.misses += 1,
        }
        drop(st);
        self.changed.notify_all();
        for spare in dead {
            tracing::warn!(instance = spare.id, "a ready worker died while it waited");
            spare.discard();
        }
        found
    }

    /// A run of `artifact` is over (its worker is being reaped).
    pub(super) fn run_ended(&self, artifact: &Path) {
        let mut st = self.lock();
        st.running = st.running.saturating_sub(1);
        if st.preload.as_deref() != Some(artifact) {
            st.preload = Some(artifact.to_owned());
        }
        drop(st);
        self.changed.notify_all();
    }

    pub(super) fn status(&self) -> PoolStatus {
        let st = self.lock();
        PoolStatus {
            ready: st.ready.len() as u32,
            behind: st.ready.iter().filter(|s| s.loaded < st.generation).count() as u32,
            size: self.size as u32,
            hits: st.hits,
            misses: st.misses,
            died: st.died,
        }
    }

    /// Stop refilling and end every ready worker (killed, reaped, its
    /// cgroup removed): how many there were.
    pub(super) fn drain(&self) -> usize {
        self.lock().stopping = true;
        self.changed.notify_all();
        let refiller = self
            .refiller
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handle) = refiller {
            let _ = handle.join();
        }
        let ready = std::mem::take(&mut self.lock().ready);
        let n = ready.len();
        for spare in ready {
            spare.discard();
        }
        n
    }
}

/// The refiller's loop, until the pool is drained.
fn refill(sandbox: &Sandbox) {
    let pool = &sandbox.pool;
    loop {
        let mut st = pool.lock();
        let preload = loop {
            if st.stopping {
                return;
            }
            let (live, dead): (Vec<_>, Vec<_>) = std::mem::take(&mut st.ready)
                .into_iter()
                .partition(Spare::alive);
            st.ready = live;
            if !dead.is_empty() {
                st.died += dead.len() as u64;
                drop(st);
                for spare in dead {
                    tracing::warn!(
                        instance = spare.id,
                        "a ready worker died while it waited; replacing it"
                    );
                    spare.discard();
                }
                st = pool.lock();
                continue;
            }
            // Workers made before the launcher's latest load lack a tool:
            // they count as missing, and make way for current ones.
            let current = st.generation;
            let fresh = st.ready.iter().filter(|s| s.loaded >= current).count();
            if fresh < pool.size && st.running < pool.cpus {
                break st.preload.clone();
            }
            st = pool
                .changed
                .wait_timeout(st, CHECK_EVERY)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        drop(st);
        match sandbox.make_spare(preload.as_deref()) {
            Ok(spare) => {
                let mut st = pool.lock();
                if st.stopping {
                    drop(st);
                    spare.discard();
                    return;
                }
                st.ready.push(spare);
                if st.ready.len() > pool.size {
                    // The oldest of those that lack a tool.
                    let current = st.generation;
                    let stale = st.ready.iter().position(|s| s.loaded < current);
                    let old = stale.map(|i| st.ready.remove(i));
                    drop(st);
                    if let Some(old) = old {
                        old.discard();
                    }
                }
            }
            Err(f) => {
                tracing::warn!("cannot prepare a ready worker: {}", f.message);
                let st = pool.lock();
                if !st.stopping {
                    drop(pool.changed.wait_timeout(st, RETRY_AFTER));
                }
            }
        }
    }
}

/// The version of an artifact: its modification time (as the launcher's
/// cache keys it).
fn modified(artifact: &Path) -> Option<SystemTime> {
    std::fs::metadata(artifact).and_then(|m| m.modified()).ok()
}
