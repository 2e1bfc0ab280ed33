//! The process sandbox: one worker process per instance (layers 5b-5d and
//! the namespaces), made by a launcher the daemon forks at start.
//!
//! | process | threads | seccomp | made by |
//! |---|---|---|---|
//! | daemon | many (tokio) | `daemon.toml`: no process creation | init |
//! | launcher | one | `launcher.toml`: clone3 and the workers' setup | the daemon's fork, before its first thread |
//! | worker | a few (tool, epoch clock, WASI's reactor) | `worker.toml`, the tightest | the launcher's clone3, ahead of its run |
//!
//! [`Sandbox::run`] is the daemon's side of one instance: it takes a
//! worker made ahead in its instance cgroup from the pool of ready workers
//! (or has the launcher make one), sends it its tool and input, answers the
//! worker's egress and cgroup requests under the daemon's policy, returns
//! the outcome, then reaps the worker through its pidfd and removes the
//! cgroup while the pool is refilled. See docs/sandbox.md.

mod broker;
pub mod channel;
mod compile;
pub mod launcher;
mod pool;
mod supervisor;
pub mod sys;
pub mod worker;

pub use channel::Layers;

/// Where a worker sees its tool's ClawFS directory, in its own root
/// (`worker::mount_tree`).
pub const WORKER_CLAWFS: &str = "/clawfs";
pub use pool::PoolStatus;
pub use supervisor::{Sandbox, detect_layers};
