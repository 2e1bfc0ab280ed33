//! The process sandbox: one worker process per instance (layers 5b-5d and
//! the namespaces), made by a launcher the daemon forks at start.
//!
//! | process | threads | seccomp | made by |
//! |---|---|---|---|
//! | daemon | many (tokio) | `daemon.toml`: no process creation | init |
//! | launcher | one | `launcher.toml`: clone3 and the workers' setup | the daemon's fork, before its first thread |
//! | worker | two (tool, epoch clock) | `worker.toml`, the tightest | the launcher's clone3 |
//!
//! [`Sandbox::run`] is the daemon's side of one instance: it prepares the
//! instance cgroup, asks the launcher for a worker, answers the worker's
//! egress and cgroup requests under the daemon's policy, reaps it through
//! its pidfd and removes the cgroup. See docs/sandbox.md.

pub mod launcher;
pub mod proto;
mod supervisor;
pub mod sys;
pub mod worker;

pub use proto::Layers;
pub use supervisor::{Sandbox, detect_layers};
