//! ClawOS WASM runtime bridge: the library behind `clawos-wasm-daemon` and
//! `clawosctl`.
//!
//! | module | what |
//! |---|---|
//! | [`error`] | the P1.7 codes |
//! | [`config`] | the daemon's TOML configuration |
//! | [`host`] | the WIT host interfaces |
//! | [`runtime`] | engine, precompilation, per-run sandbox limits |
//! | [`registry`] | installed tools on disk |
//! | [`sandbox`] | launcher and per-instance workers: namespaces, cgroup, AppArmor |
//! | [`seccomp`] | the syscall allow-lists (bridge/seccomp/*.toml) |
//! | [`ipc`] | the socket protocol: frames, messages, client |
//! | [`outside`] | egress and cgroup calls, direct or brokered |
//! | [`resolver`] | name lookups for the egress proxy: /etc/hosts, then DNS over TCP |
//! | [`remote`] | the remote API: TLS 1.3 with client certificates, and the keys for it |
//! | [`daemon`] | the server |
//! | [`cli`] | `clawosctl` |
//! | [`apparmor`] | AppArmor (layer 5d): labels, profile changes, the confinement check |

pub mod apparmor;
pub mod cgroup;
pub mod clawfs;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod datapart;
pub mod egress;
pub mod error;
pub mod escape;
pub mod grants;
pub mod host;
pub mod ipc;
pub mod monitor;
pub mod outside;
pub mod registry;
pub mod remote;
pub mod resolver;
pub mod runtime;
pub mod sandbox;
pub mod seccomp;
