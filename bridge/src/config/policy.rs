//! The policy sections of the configuration: ClawFS, devices, egress and the
//! delegated cgroup subtree. Each knob is documented in config/daemon.toml
//! and docs/policy.md with its default.

use super::{ConfigError, InstanceLimits, MIB, invalid, range};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// ClawFS: where each tool's files live, and the filesystem quotas.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClawfsPolicy {
    /// Root of ClawFS; each tool sees only `<root>/<tool>/`. None means
    /// `<state_dir>/clawfs`, so installed tools and their data share a partition.
    pub root: Option<PathBuf>,
    /// Open files and directories per instance (WASM_RESOURCE_LIMIT).
    pub max_open_files: u32,
    /// Bytes an instance may write, growth by truncate included (QUOTA_EXCEEDED).
    pub max_write_bytes: u64,
    /// Bytes one tool's tree may hold, across all its runs and whatever
    /// wrote them (an ext4 project quota; QUOTA_EXCEEDED past it).
    pub quota_bytes: u64,
    /// Files, directories and symlinks one tool's tree may hold, its root
    /// included (the project quota's inode limit).
    pub quota_inodes: u64,
    /// Largest single read or write; longer reads return this much, longer
    /// writes accept this much.
    pub max_io_bytes: u32,
    /// Owners `chown` may give files, besides the daemon's own uid.
    pub chown_uids: Vec<u32>,
    /// Groups `chown` may give files, besides the daemon's own gid.
    pub chown_gids: Vec<u32>,
    /// Directory entries scanned to prove that every link of a multiply
    /// linked file lies inside the tool's root; past it the file is refused.
    pub max_link_scan: u32,
}

/// One device a tool may open by name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeviceRule {
    /// The name tools use: lower-case letters, digits, `-` and `_`.
    pub name: String,
    /// The device node.
    pub path: PathBuf,
    /// Whether tools may open it for writing.
    #[serde(default)]
    pub write: bool,
}

/// The device allow-list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DevicePolicy {
    /// Devices by name; everything else is EPERM.
    pub allow: Vec<DeviceRule>,
    /// Largest single read or write on a device.
    pub max_io_bytes: u32,
}

/// One egress rule: destination network and ports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    /// Destination network, e.g. "10.0.0.0/8" or "::/0".
    pub cidr: IpNet,
    /// Destination TCP ports.
    pub ports: Vec<u16>,
}

/// The egress proxy's policy.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkPolicy {
    /// Names a tool may resolve or connect to by name: exact, or "*.suffix"
    /// for names under a domain. Others are refused before any lookup.
    pub allow_names: Vec<String>,
    /// Destinations allowed after resolution (POLICY_DENIED otherwise).
    pub allow: Vec<EgressRule>,
    /// Connections an instance may open in one run (QUOTA_EXCEEDED).
    pub max_connections: u32,
    /// Bytes an instance may send and receive in one run (QUOTA_EXCEEDED).
    pub max_bytes: u64,
    /// Connect timeout (ETIMEOUT).
    pub connect_timeout_ms: u64,
    /// Longest a send or receive waits (ETIMEOUT); never past the CPU budget.
    pub io_timeout_ms: u64,
    /// Hostname reported to tools; empty means the kernel's.
    pub hostname: String,
    /// Where allowed names are looked up first (hosts file syntax).
    pub hosts_file: PathBuf,
    /// The DNS servers for the other names: its `nameserver` lines, read
    /// when the daemon starts. Queries go over TCP to port 53 only.
    pub resolv_conf: PathBuf,
}

/// The cgroup v2 subtree the bridge delegates to instances.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CgroupPolicy {
    /// The bridge's own subtree on a cgroup2 mount; each instance gets
    /// `<root>/instance-<id>` as its delegated subtree.
    pub root: PathBuf,
    /// Groups an instance may create.
    pub max_groups: u32,
    /// Deepest group below the instance's subtree.
    pub max_depth: u32,
    /// P1.5, the instance subtree's own limits and the ceiling for its
    /// groups: from the limits file (`Config::limits_file`), not this table.
    #[serde(skip)]
    pub instance: InstanceLimits,
}

impl Default for ClawfsPolicy {
    fn default() -> ClawfsPolicy {
        ClawfsPolicy {
            root: None,
            max_open_files: 64,
            max_write_bytes: 256 * MIB,
            quota_bytes: 64 * MIB,
            quota_inodes: 4096,
            max_io_bytes: 4 * MIB as u32,
            chown_uids: Vec::new(),
            chown_gids: Vec::new(),
            max_link_scan: 100_000,
        }
    }
}

impl Default for DevicePolicy {
    fn default() -> DevicePolicy {
        let rule = |name: &str, write| DeviceRule {
            name: name.to_owned(),
            path: PathBuf::from(format!("/dev/{name}")),
            write,
        };
        DevicePolicy {
            allow: vec![
                rule("null", true),
                rule("zero", false),
                rule("urandom", false),
            ],
            max_io_bytes: MIB as u32,
        }
    }
}

impl Default for NetworkPolicy {
    fn default() -> NetworkPolicy {
        let any = |cidr: &str| EgressRule {
            cidr: cidr.parse().expect("a valid literal network"),
            ports: vec![5432],
        };
        NetworkPolicy {
            allow_names: vec!["localhost".to_owned()],
            allow: vec![any("0.0.0.0/0"), any("::/0")],
            max_connections: 16,
            max_bytes: 64 * MIB,
            connect_timeout_ms: 5_000,
            io_timeout_ms: 30_000,
            hostname: String::new(),
            hosts_file: PathBuf::from("/etc/hosts"),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
        }
    }
}

impl Default for CgroupPolicy {
    fn default() -> CgroupPolicy {
        CgroupPolicy {
            root: PathBuf::from("/sys/fs/cgroup/clawos"),
            max_groups: 16,
            max_depth: 4,
            instance: InstanceLimits::default(),
        }
    }
}

/// A device name or a host name pattern: letters, digits, `-`, `_`, `.`.
fn is_plain_name(name: &str, extra: &[char]) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(&c))
}

/// Check the policy sections.
pub(super) fn validate(
    fs: &ClawfsPolicy,
    dev: &DevicePolicy,
    net: &NetworkPolicy,
    cg: &CgroupPolicy,
) -> Result<(), ConfigError> {
    if let Some(root) = &fs.root
        && !root.is_absolute()
    {
        return Err(invalid(
            "clawfs.root",
            root.display(),
            "must be an absolute path",
        ));
    }
    range("clawfs.max_open_files", fs.max_open_files.into(), 1, 65_536)?;
    range("clawfs.max_write_bytes", fs.max_write_bytes, 0, 1 << 50)?;
    range("clawfs.quota_bytes", fs.quota_bytes, MIB, 1 << 50)?;
    range("clawfs.quota_inodes", fs.quota_inodes, 16, u32::MAX.into())?;
    range("clawfs.max_io_bytes", fs.max_io_bytes.into(), 1, 64 * MIB)?;
    range(
        "clawfs.max_link_scan",
        fs.max_link_scan.into(),
        1,
        10_000_000,
    )?;
    range("devices.max_io_bytes", dev.max_io_bytes.into(), 1, 64 * MIB)?;
    for (i, rule) in dev.allow.iter().enumerate() {
        if !is_plain_name(&rule.name, &['-', '_']) || rule.name.len() > 64 {
            return Err(invalid(
                "devices.allow.name",
                format!("{:?} (entry {i})", rule.name),
                "must be 1-64 of a-z, 0-9, '-' and '_'",
            ));
        }
        if !is_device_path(&rule.path) {
            return Err(invalid(
                "devices.allow.path",
                format!("{:?}", rule.path),
                "must be a path under /dev/ of a-z, A-Z, 0-9, '.', '_', '-', ':', '+' and '@' (no '.' or '..' component): it is bound into workers and named in their AppArmor rules",
            ));
        }
        if dev.allow[..i].iter().any(|r| r.name == rule.name) {
            return Err(invalid("devices.allow.name", &rule.name, "is listed twice"));
        }
    }
    for name in &net.allow_names {
        let bare = name.strip_prefix("*.").unwrap_or(name);
        if !is_plain_name(bare, &['-', '.']) {
            return Err(invalid(
                "network.allow_names",
                format!("{name:?}"),
                "must be a lower-case host name or \"*.\" and a domain",
            ));
        }
    }
    for rule in &net.allow {
        if rule.ports.is_empty() || rule.ports.contains(&0) {
            return Err(invalid(
                "network.allow.ports",
                format!("{:?} for {}", rule.ports, rule.cidr),
                "must list ports between 1 and 65535",
            ));
        }
    }
    range(
        "network.max_connections",
        net.max_connections.into(),
        0,
        65_536,
    )?;
    range("network.max_bytes", net.max_bytes, 0, 1 << 50)?;
    range(
        "network.connect_timeout_ms",
        net.connect_timeout_ms,
        1,
        600_000,
    )?;
    range("network.io_timeout_ms", net.io_timeout_ms, 1, 3_600_000)?;
    if !net.hostname.is_empty() && !is_plain_name(&net.hostname, &['-', '.']) {
        return Err(invalid(
            "network.hostname",
            format!("{:?}", net.hostname),
            "must be a lower-case host name",
        ));
    }
    if !cg.root.is_absolute() {
        return Err(invalid(
            "cgroup.root",
            cg.root.display(),
            "must be an absolute path",
        ));
    }
    range("cgroup.max_groups", cg.max_groups.into(), 0, 4096)?;
    range("cgroup.max_depth", cg.max_depth.into(), 1, 32)?;
    Ok(())
}

/// A device path the worker's mount tree and AppArmor rules can carry:
/// `/dev/` and plain components, at most 255 bytes.
pub fn is_device_path(path: &std::path::Path) -> bool {
    let Some(text) = path.to_str() else {
        return false;
    };
    let Some(rest) = text.strip_prefix("/dev/") else {
        return false;
    };
    text.len() <= 255
        && rest.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-:+@".contains(&b))
        })
}
