//! Who an event belongs to. The kernel reports a task's cgroup; the
//! sandbox tells this table which instance each cgroup is, when the
//! instance started running its tool and when it ended, and which daemon
//! thread is serving which instance (the egress proxy connects on an
//! instance's behalf from that thread).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};

/// One instance's cgroup.
#[derive(Debug, Clone)]
pub struct Group {
    /// Instance id.
    pub instance: u64,
    /// The instance cgroup's directory (its `cgroup.kill`).
    pub dir: PathBuf,
    /// The tool, once a run has taken the instance.
    pub tool: Option<String>,
    /// CLOCK_MONOTONIC ns when the tool's code could first run (the worker
    /// was ready: mounts, capabilities and filter in place).
    pub running_ns: Option<u64>,
    /// CLOCK_MONOTONIC ns when the worker was reaped.
    pub ended_ns: Option<u64>,
}

/// A daemon thread serving one instance over `[from, to)`.
#[derive(Debug, Clone, Copy)]
struct Serving {
    instance: u64,
    from_ns: u64,
    to_ns: u64,
}

/// What the sandbox tells the monitor.
#[derive(Debug, Default)]
pub struct Instances {
    groups: Mutex<HashMap<u64, Group>>,
    threads: Mutex<HashMap<u32, Vec<Serving>>>,
}

/// Ended instances kept for late events, and spans kept per thread.
const KEEP_ENDED: usize = 4096;
const KEEP_SPANS: usize = 64;

static INSTANCES: LazyLock<Arc<Instances>> = LazyLock::new(Arc::default);

/// The process's table of instances.
pub fn instances() -> Arc<Instances> {
    INSTANCES.clone()
}

/// CLOCK_MONOTONIC now, ns: the clock of `bpf_ktime_get_ns`.
///
/// Through libc, not rustix: rustix's first clock call looks for the vDSO
/// with `prctl(PR_GET_AUXV)`, which the daemon's seccomp filter refuses
/// (SIGSYS) once installed.
#[allow(unsafe_code)]
pub fn now_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The calling thread's id.
pub fn tid() -> u32 {
    rustix::thread::gettid().as_raw_nonzero().get() as u32
}

impl Instances {
    /// An instance cgroup was made at `dir` (its inode is the cgroup id).
    pub fn created(&self, instance: u64, dir: PathBuf) {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(&dir) else {
            return;
        };
        let mut groups = self.groups.lock().unwrap();
        if groups.len() >= KEEP_ENDED {
            groups.retain(|_, g| g.ended_ns.is_none());
        }
        groups.insert(
            meta.ino(),
            Group {
                instance,
                dir,
                tool: None,
                running_ns: None,
                ended_ns: None,
            },
        );
    }

    fn update(&self, instance: u64, f: impl FnOnce(&mut Group)) {
        if let Some(g) = self
            .groups
            .lock()
            .unwrap()
            .values_mut()
            .find(|g| g.instance == instance)
        {
            f(g);
        }
    }

    /// The instance's worker is ready to run `tool`.
    pub fn running(&self, instance: u64, tool: &str) {
        let now = now_ns();
        self.update(instance, |g| {
            g.tool = Some(tool.to_owned());
            g.running_ns = Some(now);
        });
    }

    /// The instance's worker was reaped: nothing of it should act again.
    pub fn ended(&self, instance: u64) {
        let now = now_ns();
        self.update(instance, |g| g.ended_ns = Some(now));
    }

    /// The group with cgroup id `id`.
    pub fn group(&self, id: u64) -> Option<Group> {
        self.groups.lock().unwrap().get(&id).cloned()
    }

    /// The group of instance `instance`.
    pub fn instance(&self, instance: u64) -> Option<Group> {
        self.groups
            .lock()
            .unwrap()
            .values()
            .find(|g| g.instance == instance)
            .cloned()
    }

    /// The calling thread serves `instance` until the guard drops.
    pub fn serve(self: &Arc<Self>, instance: u64) -> ServingGuard {
        let tid = tid();
        let mut threads = self.threads.lock().unwrap();
        let spans = threads.entry(tid).or_default();
        if spans.len() >= KEEP_SPANS {
            spans.remove(0);
        }
        spans.push(Serving {
            instance,
            from_ns: now_ns(),
            to_ns: u64::MAX,
        });
        ServingGuard {
            instances: self.clone(),
            tid,
        }
    }

    /// The instance daemon thread `tid` was serving at `ts_ns`.
    pub fn served_by(&self, tid: u32, ts_ns: u64) -> Option<u64> {
        self.threads
            .lock()
            .unwrap()
            .get(&tid)?
            .iter()
            .rev()
            .find(|s| s.from_ns <= ts_ns && ts_ns < s.to_ns)
            .map(|s| s.instance)
    }
}

/// Ends a thread's service of an instance.
#[derive(Debug)]
pub struct ServingGuard {
    instances: Arc<Instances>,
    tid: u32,
}

impl Drop for ServingGuard {
    fn drop(&mut self) {
        let now = now_ns();
        if let Some(s) = self
            .instances
            .threads
            .lock()
            .unwrap()
            .get_mut(&self.tid)
            .and_then(|v| v.last_mut())
        {
            s.to_ns = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_serves_an_instance_only_while_the_guard_lives() {
        let r = Arc::new(Instances::default());
        let before = now_ns();
        let guard = r.serve(7);
        let during = now_ns();
        assert_eq!(r.served_by(tid(), during), Some(7));
        drop(guard);
        let after = now_ns() + 1;
        assert_eq!(r.served_by(tid(), after), None);
        assert_eq!(r.served_by(tid(), before.saturating_sub(1)), None);
        assert_eq!(r.served_by(tid() + 1, during), None);
    }

    #[test]
    fn groups_are_found_by_cgroup_inode_and_track_their_run() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let r = Instances::default();
        r.created(3, dir.path().to_owned());
        let ino = std::fs::metadata(dir.path()).unwrap().ino();
        let g = r.group(ino).unwrap();
        assert_eq!((g.instance, g.running_ns, g.ended_ns), (3, None, None));
        r.running(3, "hello");
        r.ended(3);
        let g = r.instance(3).unwrap();
        assert_eq!(g.tool.as_deref(), Some("hello"));
        assert!(g.running_ns.unwrap() <= g.ended_ns.unwrap());
    }
}
