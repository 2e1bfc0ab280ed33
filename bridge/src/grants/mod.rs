//! Per-tool grants: what one installed tool may reach besides its own
//! ClawFS tree. Deny by default: a tool installed now has no network
//! destination, no device and no secret, and the config's defaults for its
//! storage quota, CPU budget and memory. The operator grants the rest
//! (`clawosctl install --grant`, `grant`, `revoke`); the daemon's config
//! holds the ceilings no grant can exceed ([`Ceilings`]), checked when a
//! grant is given and again at every run, so a ceiling lowered later wins.
//!
//! A grant is written `KIND=VALUE` ([`Grant::parse`]):
//! `name=db.example.org`, `name=*.example.org`, `net=10.0.0.0/8:5432,5433`,
//! `net=127.0.0.1:5432`, `device=null:rw`, `device=urandom`,
//! `storage=32MiB`, `inodes=1000`, `cpu-budget-ms=2000`, `memory=64MiB`,
//! `env=NAME=VALUE`. Secrets are stored apart ([`store`]).

pub mod request;
pub mod store;

use crate::config::{Config, DevicePolicy, EgressRule, NetworkPolicy};
use crate::egress::rule_covers;
use crate::error::{Code, Failure};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Longest grant or revoke as text (`clawosctl --grant`, the API).
pub const MAX_GRANT_TEXT: usize = 4096;
/// Most entries of each list in one tool's grants (names, networks,
/// devices, environment variables, secrets).
pub const MAX_ENTRIES: usize = 64;

/// One device a tool may open.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceGrant {
    /// The device's name in `devices.allow`.
    pub name: String,
    /// Whether the tool may open it for writing.
    #[serde(default)]
    pub write: bool,
}

/// What one tool is granted (or, in a component's request, asks for).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Grants {
    /// Names the tool may look up and connect to by name: exact, or
    /// `*.domain` for names below it.
    pub names: Vec<String>,
    /// Destinations: networks and their ports.
    pub net: Vec<EgressRule>,
    /// Devices by name.
    pub devices: Vec<DeviceGrant>,
    /// Bytes its ClawFS tree may hold; unset: `clawfs.quota_bytes`.
    pub storage_bytes: Option<u64>,
    /// Files, directories and links its tree may hold; unset: `clawfs.quota_inodes`.
    pub storage_inodes: Option<u64>,
    /// CPU budget of one run, ms; unset: `sandbox.cpu_budget_ms`.
    pub cpu_budget_ms: Option<u64>,
    /// Memory of one run, bytes; unset: `sandbox.memory_limit_bytes`.
    pub memory_bytes: Option<u64>,
    /// Environment variables every run starts with.
    pub env: BTreeMap<String, String>,
    /// Secrets, by name: in a request, the ones the tool needs; in
    /// `show`, the ones stored for it. Never a value.
    pub secrets: BTreeSet<String>,
}

/// One grant, as given at install or by `grant`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Grant {
    /// A name pattern.
    Name(String),
    /// A network and ports.
    Net(EgressRule),
    /// A device.
    Device(DeviceGrant),
    /// The storage quota, bytes.
    StorageBytes(u64),
    /// The storage quota, inodes.
    StorageInodes(u64),
    /// The CPU budget, ms.
    CpuBudgetMs(u64),
    /// The memory limit, bytes.
    MemoryBytes(u64),
    /// An environment variable.
    Env(String, String),
}

/// One revoke: `name=X`, `net=CIDR:PORTS` (those ports of that network),
/// `net` (every name and network), `device=NAME`, `devices`, `env=NAME`,
/// `env`, and `storage`, `inodes`, `cpu-budget-ms`, `memory` (back to the
/// default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Revoke {
    /// A name pattern.
    Name(String),
    /// Ports of a network.
    Net(EgressRule),
    /// Every name and network.
    AllNet,
    /// A device.
    Device(String),
    /// Every device.
    AllDevices,
    /// The storage quota (bytes) back to the default.
    StorageBytes,
    /// The storage quota (inodes) back to the default.
    StorageInodes,
    /// The CPU budget back to the default.
    CpuBudgetMs,
    /// The memory limit back to the default.
    MemoryBytes,
    /// An environment variable.
    Env(String),
    /// Every environment variable.
    AllEnv,
}

fn bad(text: &str, why: impl fmt::Display) -> Failure {
    Failure::new(
        Code::InvalidArgument,
        format!("grant {:?}: {why}", shorten(text)),
    )
}

/// `text` cut to 80 characters, for messages.
fn shorten(text: &str) -> String {
    text.chars().take(80).collect()
}

/// A size in bytes: a number with an optional K, M, G, KiB, MiB or GiB.
pub fn parse_size(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let scale: u64 = match unit {
        "" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// An environment variable's name: what POSIX shells take.
pub(crate) fn env_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A device name, as `devices.allow` has them.
fn device_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A host name pattern: lower-case name, or `*.` and a domain.
fn name_ok(name: &str) -> bool {
    let bare = name.strip_prefix("*.").unwrap_or(name);
    !bare.is_empty()
        && bare.len() <= 253
        && !bare.starts_with('.')
        && !bare.ends_with('.')
        && !bare.contains("..")
        && bare
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// `CIDR:PORT[,PORT...]`, the address as `a.b.c.d`, `a.b.c.d/n`, `[v6]`,
/// `v6/n` or `[v6]/n`.
fn parse_net(text: &str, value: &str) -> Result<EgressRule, Failure> {
    let (net, ports) = value
        .rsplit_once(':')
        .ok_or_else(|| bad(text, "write net=NETWORK:PORT[,PORT...]"))?;
    let net = net.replace(['[', ']'], "");
    let cidr: IpNet = match net.parse::<IpNet>() {
        Ok(c) => c,
        Err(_) => match net.parse::<std::net::IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => return Err(bad(text, "not a network (a.b.c.d/n or v6/n) or address")),
        },
    };
    if cidr.trunc() != cidr {
        return Err(bad(
            text,
            format_args!("{cidr} has host bits set: write {}", cidr.trunc()),
        ));
    }
    let mut list = Vec::new();
    for p in ports.split(',') {
        match p.parse::<u16>() {
            Ok(p) if p != 0 => list.push(p),
            _ => return Err(bad(text, "ports must be numbers between 1 and 65535")),
        }
    }
    list.sort_unstable();
    list.dedup();
    Ok(EgressRule { cidr, ports: list })
}

impl Grant {
    /// Parse `KIND=VALUE`; a malformed one is INVALID_ARGUMENT naming it.
    pub fn parse(text: &str) -> Result<Grant, Failure> {
        if text.len() > MAX_GRANT_TEXT {
            return Err(bad(
                text,
                format_args!("longer than {MAX_GRANT_TEXT} bytes"),
            ));
        }
        let (kind, value) = text
            .split_once('=')
            .ok_or_else(|| bad(text, "write KIND=VALUE"))?;
        let size = |what: &str| {
            parse_size(value).filter(|n| *n > 0).ok_or_else(|| {
                bad(
                    text,
                    format_args!("{what} must be a positive size (bytes, or with K, M, G)"),
                )
            })
        };
        let number = || {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(text, "must be a positive number"))
        };
        Ok(match kind {
            "name" => {
                if !name_ok(value) {
                    return Err(bad(
                        text,
                        "must be a lower-case host name or \"*.\" and a domain",
                    ));
                }
                Grant::Name(value.to_owned())
            }
            "net" => Grant::Net(parse_net(text, value)?),
            "device" => {
                let (name, mode) = value.split_once(':').unwrap_or((value, "ro"));
                let write = match mode {
                    "ro" => false,
                    "rw" => true,
                    _ => {
                        return Err(bad(
                            text,
                            "write device=NAME, device=NAME:ro or device=NAME:rw",
                        ));
                    }
                };
                if !device_name_ok(name) {
                    return Err(bad(text, "a device name is 1-64 of a-z, 0-9, '-' and '_'"));
                }
                Grant::Device(DeviceGrant {
                    name: name.to_owned(),
                    write,
                })
            }
            "storage" => Grant::StorageBytes(size("storage")?),
            "inodes" => Grant::StorageInodes(number()?),
            "cpu-budget-ms" => Grant::CpuBudgetMs(number()?),
            "memory" => Grant::MemoryBytes(size("memory")?),
            "env" => {
                let (name, v) = value
                    .split_once('=')
                    .ok_or_else(|| bad(text, "write env=NAME=VALUE"))?;
                if !env_name_ok(name) {
                    return Err(bad(
                        text,
                        "an environment name is letters, digits and '_', not starting with a digit",
                    ));
                }
                if v.contains('\0') {
                    return Err(bad(text, "the value holds a NUL byte"));
                }
                Grant::Env(name.to_owned(), v.to_owned())
            }
            _ => {
                return Err(bad(
                    text,
                    "unknown kind: name, net, device, storage, inodes, cpu-budget-ms, memory or env",
                ));
            }
        })
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Name(n) => write!(f, "name={n}"),
            Grant::Net(r) => write!(f, "net={}", net_text(r)),
            Grant::Device(d) => {
                write!(f, "device={}:{}", d.name, if d.write { "rw" } else { "ro" })
            }
            Grant::StorageBytes(n) => write!(f, "storage={n}"),
            Grant::StorageInodes(n) => write!(f, "inodes={n}"),
            Grant::CpuBudgetMs(n) => write!(f, "cpu-budget-ms={n}"),
            Grant::MemoryBytes(n) => write!(f, "memory={n}"),
            // The value is the operator's: logged by name only.
            Grant::Env(n, _) => write!(f, "env={n}"),
        }
    }
}

/// `CIDR:PORTS` of a rule.
pub fn net_text(r: &EgressRule) -> String {
    let ports: Vec<String> = r.ports.iter().map(u16::to_string).collect();
    format!("{}:{}", r.cidr, ports.join(","))
}

impl Revoke {
    /// Parse a revoke (see [`Revoke`]).
    pub fn parse(text: &str) -> Result<Revoke, Failure> {
        if text.len() > MAX_GRANT_TEXT {
            return Err(bad(
                text,
                format_args!("longer than {MAX_GRANT_TEXT} bytes"),
            ));
        }
        Ok(match text {
            "net" => Revoke::AllNet,
            "devices" => Revoke::AllDevices,
            "env" => Revoke::AllEnv,
            "storage" => Revoke::StorageBytes,
            "inodes" => Revoke::StorageInodes,
            "cpu-budget-ms" => Revoke::CpuBudgetMs,
            "memory" => Revoke::MemoryBytes,
            _ => match text.split_once('=') {
                Some(("env", name)) if env_name_ok(name) => Revoke::Env(name.to_owned()),
                Some(("device", name)) if device_name_ok(name) => Revoke::Device(name.to_owned()),
                _ => match Grant::parse(text)? {
                    Grant::Name(n) => Revoke::Name(n),
                    Grant::Net(r) => Revoke::Net(r),
                    _ => {
                        return Err(bad(
                            text,
                            "revoke name=, net=, net, device=, devices, env=, env, storage, inodes, cpu-budget-ms or memory",
                        ));
                    }
                },
            },
        })
    }
}

impl fmt::Display for Revoke {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Revoke::Name(n) => write!(f, "name={n}"),
            Revoke::Net(r) => write!(f, "net={}", net_text(r)),
            Revoke::AllNet => f.write_str("net"),
            Revoke::Device(d) => write!(f, "device={d}"),
            Revoke::AllDevices => f.write_str("devices"),
            Revoke::StorageBytes => f.write_str("storage"),
            Revoke::StorageInodes => f.write_str("inodes"),
            Revoke::CpuBudgetMs => f.write_str("cpu-budget-ms"),
            Revoke::MemoryBytes => f.write_str("memory"),
            Revoke::Env(n) => write!(f, "env={n}"),
            Revoke::AllEnv => f.write_str("env"),
        }
    }
}

impl Grants {
    /// Add `grant` (a network's ports join those already granted for it).
    pub fn apply(&mut self, grant: Grant) {
        match grant {
            Grant::Name(n) => {
                if !self.names.contains(&n) {
                    self.names.push(n);
                }
            }
            Grant::Net(rule) => match self.net.iter_mut().find(|r| r.cidr == rule.cidr) {
                Some(r) => {
                    r.ports.extend(rule.ports);
                    r.ports.sort_unstable();
                    r.ports.dedup();
                }
                None => self.net.push(rule),
            },
            Grant::Device(d) => {
                self.devices.retain(|x| x.name != d.name);
                self.devices.push(d);
                self.devices.sort();
            }
            Grant::StorageBytes(n) => self.storage_bytes = Some(n),
            Grant::StorageInodes(n) => self.storage_inodes = Some(n),
            Grant::CpuBudgetMs(n) => self.cpu_budget_ms = Some(n),
            Grant::MemoryBytes(n) => self.memory_bytes = Some(n),
            Grant::Env(k, v) => {
                self.env.insert(k, v);
            }
        }
    }

    /// Take `revoke` away; false if there was nothing to take.
    pub fn revoke(&mut self, revoke: &Revoke) -> bool {
        let before = self.clone();
        match revoke {
            Revoke::Name(n) => self.names.retain(|x| x != n),
            Revoke::Net(rule) => {
                for r in self.net.iter_mut().filter(|r| r.cidr == rule.cidr) {
                    r.ports.retain(|p| !rule.ports.contains(p));
                }
                self.net.retain(|r| !r.ports.is_empty());
            }
            Revoke::AllNet => {
                self.names.clear();
                self.net.clear();
            }
            Revoke::Device(d) => self.devices.retain(|x| &x.name != d),
            Revoke::AllDevices => self.devices.clear(),
            Revoke::StorageBytes => self.storage_bytes = None,
            Revoke::StorageInodes => self.storage_inodes = None,
            Revoke::CpuBudgetMs => self.cpu_budget_ms = None,
            Revoke::MemoryBytes => self.memory_bytes = None,
            Revoke::Env(n) => {
                self.env.remove(n);
            }
            Revoke::AllEnv => self.env.clear(),
        }
        *self != before
    }

    /// Every grant this holds, one by one (secrets aside), in the order
    /// `apply` takes them.
    pub fn items(&self) -> Vec<Grant> {
        let mut out: Vec<Grant> = self.names.iter().cloned().map(Grant::Name).collect();
        out.extend(self.net.iter().cloned().map(Grant::Net));
        out.extend(self.devices.iter().cloned().map(Grant::Device));
        out.extend(self.storage_bytes.map(Grant::StorageBytes));
        out.extend(self.storage_inodes.map(Grant::StorageInodes));
        out.extend(self.cpu_budget_ms.map(Grant::CpuBudgetMs));
        out.extend(self.memory_bytes.map(Grant::MemoryBytes));
        out.extend(
            self.env
                .iter()
                .map(|(k, v)| Grant::Env(k.clone(), v.clone())),
        );
        out
    }

    /// The first list holding more than [`MAX_ENTRIES`], with its length.
    pub fn too_many(&self) -> Option<(&'static str, usize)> {
        [
            ("names", self.names.len()),
            ("networks", self.net.len()),
            ("devices", self.devices.len()),
            ("environment variables", self.env.len()),
            ("secrets", self.secrets.len()),
        ]
        .into_iter()
        .find(|&(_, n)| n > MAX_ENTRIES)
    }

    /// Refuse what [`Grant::parse`] would not take (INVALID_ARGUMENT
    /// naming it): grants read from elsewhere (a component's request) hold
    /// only what an operator could have typed. Zero limits included: a
    /// quota of 0 would be no quota at all.
    pub fn validate(&self) -> Result<(), Failure> {
        let refuse = |what: String| {
            Err(Failure::new(
                Code::InvalidArgument,
                format!("grant {}: not a valid grant", what.escape_debug()),
            ))
        };
        for n in &self.names {
            if !name_ok(n) {
                return refuse(format!("name={}", shorten(n)));
            }
        }
        for r in &self.net {
            if r.cidr.trunc() != r.cidr || r.ports.is_empty() || r.ports.contains(&0) {
                return refuse(format!("net={}", net_text(r)));
            }
        }
        for d in &self.devices {
            if !device_name_ok(&d.name) {
                return refuse(format!("device={}", shorten(&d.name)));
            }
        }
        for (what, v) in [
            ("storage", self.storage_bytes),
            ("inodes", self.storage_inodes),
            ("cpu-budget-ms", self.cpu_budget_ms),
            ("memory", self.memory_bytes),
        ] {
            if v == Some(0) {
                return refuse(format!("{what}=0"));
            }
        }
        for (k, v) in &self.env {
            if !env_name_ok(k) || v.contains('\0') {
                return refuse(format!("env={}", shorten(k)));
            }
        }
        for k in &self.secrets {
            if !env_name_ok(k) {
                return refuse(format!("secret {}", shorten(k)));
            }
        }
        Ok(())
    }

    /// What a tool installed before grants existed had: the config's whole
    /// network and device policy, and its defaults for the rest.
    pub fn legacy(config: &Config) -> Grants {
        Grants {
            names: config.network.allow_names.clone(),
            net: config.network.allow.clone(),
            devices: config
                .devices
                .allow
                .iter()
                .map(|d| DeviceGrant {
                    name: d.name.clone(),
                    write: d.write,
                })
                .collect(),
            ..Grants::default()
        }
    }
}

/// The config's ceilings, which no grant may exceed.
#[derive(Debug, Clone)]
pub struct Ceilings {
    /// `network.allow_names` and `network.allow`.
    pub network: NetworkPolicy,
    /// `devices.allow`.
    pub devices: DevicePolicy,
    /// `clawfs.quota_bytes`.
    pub storage_bytes: u64,
    /// `clawfs.quota_inodes`.
    pub storage_inodes: u64,
    /// `sandbox.cpu_budget_ms`.
    pub cpu_budget_ms: u64,
    /// `sandbox.memory_limit_bytes`, and never above P1.5's `memory.max`.
    pub memory_bytes: u64,
    /// A run's memory when none is granted: `sandbox.memory_limit_bytes`
    /// (as before grants; where it is above `memory.max`, the cgroup's
    /// limit is the one that bites).
    pub default_memory_bytes: u64,
    /// `sandbox.max_env_entries`.
    pub env_entries: usize,
    /// `ipc.max_arg_bytes`: longest environment value.
    pub env_bytes: usize,
}

/// Does the ceiling pattern `ceiling` allow every name `pattern` allows?
fn name_covered(ceiling: &str, pattern: &str) -> bool {
    match ceiling.strip_prefix("*.") {
        None => ceiling == pattern,
        Some(domain) => {
            let bare = pattern.strip_prefix("*.").unwrap_or(pattern);
            bare.ends_with(&format!(".{domain}")) || (pattern.starts_with("*.") && bare == domain)
        }
    }
}

fn denied(message: String) -> Failure {
    Failure::new(Code::PolicyDenied, message)
}

impl Ceilings {
    /// The ceilings of `config`.
    pub fn of(config: &Config) -> Ceilings {
        Ceilings {
            network: config.network.clone(),
            devices: config.devices.clone(),
            storage_bytes: config.clawfs.quota_bytes,
            storage_inodes: config.clawfs.quota_inodes,
            cpu_budget_ms: config.sandbox.cpu_budget_ms,
            memory_bytes: config
                .sandbox
                .memory_limit_bytes
                .min(config.cgroup.instance.memory_max),
            default_memory_bytes: config.sandbox.memory_limit_bytes,
            env_entries: config.sandbox.max_env_entries as usize,
            env_bytes: config.ipc.max_arg_bytes as usize,
        }
    }

    /// POLICY_DENIED, naming the first grant of `grants` above a ceiling.
    pub fn check(&self, grants: &Grants) -> Result<(), Failure> {
        grants.validate()?;
        if let Some((what, n)) = grants.too_many() {
            return Err(denied(format!(
                "{n} {what} granted; a tool may hold {MAX_ENTRIES}"
            )));
        }
        for n in &grants.names {
            if !self.network.allow_names.iter().any(|c| name_covered(c, n)) {
                return Err(denied(format!(
                    "name {n:?} is not within network.allow_names ({:?})",
                    self.network.allow_names
                )));
            }
        }
        for r in &grants.net {
            for p in &r.ports {
                if !self
                    .network
                    .allow
                    .iter()
                    .any(|c| c.ports.contains(p) && rule_covers(&c.cidr, &r.cidr))
                {
                    return Err(denied(format!(
                        "net {}:{p} is not within network.allow (a loopback, link-local or other special range needs a rule inside it)",
                        r.cidr
                    )));
                }
            }
        }
        // What the kernel's per-instance check holds (32 pairs): the run's
        // destinations as the ceilings of now make them.
        crate::monitor::grants::check_fits(&intersect(&grants.net, &self.network.allow))?;
        for d in &grants.devices {
            match self.devices.allow.iter().find(|r| r.name == d.name) {
                None => {
                    return Err(denied(format!(
                        "device {:?} is not in devices.allow",
                        d.name
                    )));
                }
                Some(r) if d.write && !r.write => {
                    return Err(denied(format!(
                        "device {:?} is read-only in devices.allow",
                        d.name
                    )));
                }
                Some(_) => {}
            }
        }
        let above = |what: &str, got: Option<u64>, max: u64, key: &str| match got {
            Some(n) if n > max => Err(denied(format!("{what} {n} is above {key} ({max})"))),
            _ => Ok(()),
        };
        above(
            "storage",
            grants.storage_bytes,
            self.storage_bytes,
            "clawfs.quota_bytes",
        )?;
        above(
            "inodes",
            grants.storage_inodes,
            self.storage_inodes,
            "clawfs.quota_inodes",
        )?;
        above(
            "cpu-budget-ms",
            grants.cpu_budget_ms,
            self.cpu_budget_ms,
            "sandbox.cpu_budget_ms",
        )?;
        above(
            "memory",
            grants.memory_bytes,
            self.memory_bytes,
            "sandbox.memory_limit_bytes or P1.5 memory.max",
        )?;
        if grants.env.len() > self.env_entries {
            return Err(denied(format!(
                "{} environment variables granted; sandbox.max_env_entries is {}",
                grants.env.len(),
                self.env_entries
            )));
        }
        if let Some((k, _)) = grants.env.iter().find(|(_, v)| v.len() > self.env_bytes) {
            return Err(denied(format!(
                "the value of env {k} is longer than ipc.max_arg_bytes ({})",
                self.env_bytes
            )));
        }
        Ok(())
    }

    /// What of `grants` a run gets now: every grant as given, bounded by
    /// the ceilings as they are (a config lowered after the grant wins).
    pub fn effective(&self, grants: &Grants) -> Effective {
        let devices = self
            .devices
            .allow
            .iter()
            .filter_map(|rule| {
                let g = grants.devices.iter().find(|d| d.name == rule.name)?;
                let mut rule = rule.clone();
                rule.write &= g.write;
                Some(rule)
            })
            .collect();
        Effective {
            names: grants.names.clone(),
            net: intersect(&grants.net, &self.network.allow),
            devices: DevicePolicy {
                allow: devices,
                max_io_bytes: self.devices.max_io_bytes,
            },
            storage: (
                grants
                    .storage_bytes
                    .unwrap_or(u64::MAX)
                    .min(self.storage_bytes),
                grants
                    .storage_inodes
                    .unwrap_or(u64::MAX)
                    .min(self.storage_inodes),
            ),
            cpu_budget_ms: grants
                .cpu_budget_ms
                .unwrap_or(u64::MAX)
                .min(self.cpu_budget_ms),
            memory_bytes: grants
                .memory_bytes
                .map_or(self.default_memory_bytes, |m| m.min(self.memory_bytes)),
            env: grants.env.clone(),
        }
    }
}

/// The destinations both `granted` and `ceiling` hold, as the proxy judges
/// them ([`rule_covers`]: an address of a loopback, link-local or other
/// special range is reached only by a rule inside that range). For each
/// pair of rules, on the ports both name: the granted network if the
/// ceiling's reaches all of it, the ceiling's if the grant reaches all of
/// that, else nothing (two CIDR networks overlap only when one holds the
/// other). A pair another pair of the result already reaches is left out,
/// so a grant within the ceilings comes out no longer than it went in.
/// What the run's proxy and the kernel's per-instance check are given, so
/// that a ceiling lowered after a grant holds there too.
fn intersect(granted: &[EgressRule], ceiling: &[EgressRule]) -> Vec<EgressRule> {
    let mut pairs: Vec<(IpNet, u16)> = Vec::new();
    for g in granted {
        for c in ceiling {
            let cidr = if rule_covers(&c.cidr, &g.cidr) {
                g.cidr
            } else if rule_covers(&g.cidr, &c.cidr) {
                c.cidr
            } else {
                continue;
            };
            for &p in g.ports.iter().filter(|p| c.ports.contains(p)) {
                if !pairs.contains(&(cidr, p)) {
                    pairs.push((cidr, p));
                }
            }
        }
    }
    let kept: Vec<(IpNet, u16)> = pairs
        .iter()
        .copied()
        .filter(|&(cidr, p)| {
            !pairs
                .iter()
                .any(|&(other, q)| q == p && other != cidr && rule_covers(&other, &cidr))
        })
        .collect();
    let mut out: Vec<EgressRule> = Vec::new();
    for (cidr, p) in kept {
        match out.iter_mut().find(|r| r.cidr == cidr) {
            Some(r) => {
                r.ports.push(p);
                r.ports.sort_unstable();
            }
            None => out.push(EgressRule {
                cidr,
                ports: vec![p],
            }),
        }
    }
    out
}

/// What one run of a tool is given.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effective {
    /// Name patterns it may look up (within `network.allow_names`).
    pub names: Vec<String>,
    /// Destinations (within `network.allow`).
    pub net: Vec<EgressRule>,
    /// The devices it may open, as `devices.allow` names them.
    pub devices: DevicePolicy,
    /// Its tree's quota: bytes, inodes.
    pub storage: (u64, u64),
    /// CPU budget of a run, ms.
    pub cpu_budget_ms: u64,
    /// Memory of a run, bytes.
    pub memory_bytes: u64,
    /// Environment variables granted.
    pub env: BTreeMap<String, String>,
}

impl fmt::Debug for Effective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Effective")
            .field("names", &self.names)
            .field("net", &self.net)
            .field("devices", &self.devices.allow)
            .field("storage", &self.storage)
            .field("cpu_budget_ms", &self.cpu_budget_ms)
            .field("memory_bytes", &self.memory_bytes)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests;
