//! The daemon's configuration: one TOML file, unknown keys refused, every
//! value range-checked at start. `config/daemon.toml` in the repository is the
//! documented default; a missing file means these defaults.

mod limits;
mod policy;
mod remote;

pub use limits::InstanceLimits;
pub use remote::RemoteConfig;

pub use policy::{
    CgroupPolicy, ClawfsPolicy, DevicePolicy, DeviceRule, EgressRule, NetworkPolicy, is_device_path,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// 1 MiB, for readable defaults.
const MIB: u64 = 1 << 20;
/// Linear memory grows in 64 KiB wasm pages.
const WASM_PAGE: u64 = 64 * 1024;

/// Errors loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (including unknown keys).
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A value is out of its range.
    #[error("invalid config value {field} = {value}: {reason}")]
    Invalid {
        /// Dotted key of the value.
        field: &'static str,
        /// The value as given.
        value: String,
        /// The range it must be in.
        reason: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Unix socket the daemon listens on.
    pub socket: PathBuf,
    /// Where installed tools (component and precompiled artifact) are kept.
    pub state_dir: PathBuf,
    /// Groups whose members may use the socket, besides root and the daemon's own user.
    pub allowed_gids: Vec<u32>,
    /// Log format: "text" or "json".
    pub log_format: LogFormat,
    /// Which records are written (tracing-subscriber EnvFilter syntax);
    /// RUST_LOG, when set, replaces it.
    pub log_filter: String,
    /// IPC limits.
    pub ipc: IpcLimits,
    /// Per-instance WASM sandbox limits (layer 5a).
    pub sandbox: SandboxLimits,
    /// Engine settings.
    pub engine: EngineConfig,
    /// ClawFS root and filesystem quotas.
    pub clawfs: ClawfsPolicy,
    /// Devices tools may open by name.
    pub devices: DevicePolicy,
    /// The egress proxy's allow-lists and quotas.
    pub network: NetworkPolicy,
    /// The cgroup subtree delegated to instances.
    pub cgroup: CgroupPolicy,
    /// The P1.5 limits file; missing means the built-in limits (the
    /// repository's config/limits.toml).
    pub limits_file: PathBuf,
    /// The eBPF monitors (layer 4).
    pub monitor: MonitorConfig,
    /// The remote API (TLS 1.3, client certificates).
    pub remote: RemoteConfig,
    /// Where installs are validated and compiled.
    pub compile: CompileLimits,
}

/// An install's validation and compilation runs in a process of its own,
/// in a cgroup with these limits: a compile that goes over is killed and
/// the install answered WASM_RESOURCE_LIMIT (105); the daemon's memory is
/// not touched.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CompileLimits {
    /// `memory.max` of the compile's cgroup, bytes (no swap).
    pub memory_max: u64,
    /// `cpu.max`: quota and period, µs.
    pub cpu_max: [u64; 2],
    /// `pids.max`: the compiler's threads.
    pub pids_max: u64,
    /// Wall time a compile may take, ms.
    pub timeout_ms: u64,
    /// Largest compiled artifact, bytes.
    pub max_artifact_bytes: u64,
}

impl Default for CompileLimits {
    fn default() -> CompileLimits {
        CompileLimits {
            memory_max: 512 * MIB,
            cpu_max: [100_000, 100_000],
            pids_max: 64,
            timeout_ms: 120_000,
            max_artifact_bytes: 192 * MIB,
        }
    }
}

impl CompileLimits {
    /// The cgroup limits of a compile.
    pub fn cgroup(&self) -> InstanceLimits {
        InstanceLimits {
            memory_max: self.memory_max,
            memory_swap_max: 0,
            memory_oom_group: true,
            cpu_max: self.cpu_max,
            pids_max: self.pids_max,
        }
    }
}

/// The eBPF monitors: the object the daemon loads and its rules file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// The monitors' eBPF object (built from ebpf/programs).
    pub object: PathBuf,
    /// The anomaly rules (config/monitor-rules.toml in the repository).
    pub rules_file: PathBuf,
}

impl Default for MonitorConfig {
    fn default() -> MonitorConfig {
        MonitorConfig {
            object: PathBuf::from("/usr/lib/clawos/clawos-monitor.o"),
            rules_file: PathBuf::from("/etc/clawos/monitor-rules.toml"),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Limits on the IPC socket: every field of every request has one.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IpcLimits {
    /// Connections open at once. When full, the connection that has
    /// waited longest for a request is closed for a new one; only when
    /// every one is being served is a new one answered EAGAIN.
    pub max_connections: u32,
    /// Connections one uid may hold of `max_connections` (the same rule
    /// within its share); more than `max_connections` means all of them.
    pub max_connections_per_uid: u32,
    /// Bytes of request frames the daemon reads or serves at once, over
    /// all connections; a frame that does not fit is answered EAGAIN
    /// before it is read. At least the largest frame.
    pub max_request_bytes_in_flight: u64,
    /// Runs in flight at once; more are answered EAGAIN. Also sizes the pooling allocator.
    pub max_concurrent_runs: u32,
    /// Largest component accepted by install.
    pub max_component_bytes: u64,
    /// Largest run input (stdin bytes).
    pub max_input_bytes: u64,
    /// Most arguments to a run.
    pub max_args: u32,
    /// Largest single argument, environment name or value.
    pub max_arg_bytes: u32,
    /// Longest a peer may take to send one whole frame.
    pub frame_timeout_ms: u64,
    /// How long in-flight runs may finish after SIGTERM.
    pub shutdown_grace_ms: u64,
}

/// Per-instance sandbox limits. Exceeding each gives its own P1.7 code.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxLimits {
    /// Linear memory plus host regions, bytes (WASM_MEMORY_LIMIT).
    pub memory_limit_bytes: u64,
    /// Wall-clock budget of one invocation, ms (WASM_CPU_DEADLINE).
    pub cpu_budget_ms: u64,
    /// Core instances per component instance (WASM_RESOURCE_LIMIT).
    pub max_core_instances: u32,
    /// Tables per component instance (WASM_RESOURCE_LIMIT).
    pub max_tables: u32,
    /// Elements per table (WASM_RESOURCE_LIMIT).
    pub max_table_elements: u32,
    /// Linear memories per component instance (WASM_RESOURCE_LIMIT).
    pub max_memories: u32,
    /// Live handles (resources) per instance (WASM_RESOURCE_LIMIT).
    pub max_handles: u32,
    /// Largest output, and largest captured stdout and stderr, bytes.
    pub max_output_bytes: u64,
    /// Longest log line; longer lines are truncated.
    pub max_log_line_bytes: u32,
    /// Log lines per second per instance (token bucket rate).
    pub log_lines_per_second: u32,
    /// Log lines an instance may burst before the rate applies.
    pub log_burst: u32,
    /// Log bytes per run kept for the response; the rest is dropped and counted.
    pub max_log_bytes: u64,
    /// Entries in an instance's environment (QUOTA_EXCEEDED).
    pub max_env_entries: u32,
    /// Workers kept ready ahead of their runs, each in its instance cgroup
    /// with every layer applied; unset: `ipc.max_concurrent_runs`, fewer
    /// where the machine's memory is small ([`SandboxLimits::pool_size`]).
    pub ready_workers: Option<u32>,
}

/// Engine settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Which CPU precompiled artifacts target; see docs/precompiled-target.md.
    pub cpu: CpuTarget,
    /// Epoch tick, ms: the granularity of the CPU budget.
    pub epoch_tick_ms: u64,
}

/// The compilation target of `.cwasm` artifacts.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CpuTarget {
    /// x86-64-v2 (Nehalem: SSE4.2, POPCNT, CMPXCHG16B) on x86_64: loads on
    /// QEMU `-cpu max` under TCG and on every x86_64 server since 2009.
    #[default]
    Portable,
    /// Every feature of the CPU the daemon runs on: fastest code, artifacts
    /// that may not load elsewhere.
    Native,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            socket: PathBuf::from("/run/clawos/bridge.sock"),
            state_dir: PathBuf::from("/var/lib/clawos"),
            allowed_gids: Vec::new(),
            log_format: LogFormat::Text,
            log_filter: "info".into(),
            ipc: IpcLimits::default(),
            sandbox: SandboxLimits::default(),
            engine: EngineConfig::default(),
            clawfs: ClawfsPolicy::default(),
            devices: DevicePolicy::default(),
            network: NetworkPolicy::default(),
            cgroup: CgroupPolicy::default(),
            limits_file: PathBuf::from("/etc/clawos/limits.toml"),
            monitor: MonitorConfig::default(),
            remote: RemoteConfig::default(),
            compile: CompileLimits::default(),
        }
    }
}

impl Default for IpcLimits {
    fn default() -> IpcLimits {
        IpcLimits {
            max_connections: 64,
            max_connections_per_uid: 16,
            max_request_bytes_in_flight: 256 * MIB,
            max_concurrent_runs: 8,
            max_component_bytes: 64 * MIB,
            max_input_bytes: 16 * MIB,
            max_args: 256,
            max_arg_bytes: 64 * 1024,
            frame_timeout_ms: 30_000,
            shutdown_grace_ms: 10_000,
        }
    }
}

impl Default for SandboxLimits {
    fn default() -> SandboxLimits {
        SandboxLimits {
            memory_limit_bytes: 256 * MIB,
            cpu_budget_ms: 10_000,
            max_core_instances: 32,
            max_tables: 16,
            max_table_elements: 100_000,
            max_memories: 4,
            max_handles: 1024,
            max_output_bytes: 4 * MIB,
            max_log_line_bytes: 4096,
            log_lines_per_second: 100,
            log_burst: 200,
            max_log_bytes: MIB,
            max_env_entries: 128,
            ready_workers: None,
        }
    }
}

/// What one idle ready worker may cost the machine, for sizing the
/// default pool: a bound above what the kernel charges one in the
/// appliance (`make bench` prints it; docs/sandbox.md#the-pool-of-ready-workers).
pub const IDLE_WORKER_BYTES: u64 = 4 * MIB;

impl SandboxLimits {
    /// How many workers the daemon keeps ready: `ready_workers` if set,
    /// else one per concurrent run, as many as fit in 1/16 of `mem_total`
    /// bytes at [`IDLE_WORKER_BYTES`] each (one at least).
    pub fn pool_size(&self, max_concurrent_runs: u32, mem_total: u64) -> usize {
        match self.ready_workers {
            Some(n) => n as usize,
            None => {
                let fit = (mem_total / 16 / IDLE_WORKER_BYTES).max(1);
                u64::from(max_concurrent_runs).min(fit) as usize
            }
        }
    }

    /// The largest outcome a run can have: output, stdout and stderr at
    /// `max_output_bytes` each, the kept logs, and a MiB for the rest (the
    /// message, counters and framing). The daemon reads no larger message
    /// from a worker.
    pub fn max_outcome_bytes(&self) -> u64 {
        3 * self.max_output_bytes + self.max_log_bytes + MIB
    }
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            cpu: CpuTarget::Portable,
            epoch_tick_ms: 10,
        }
    }
}

impl Config {
    /// Load and validate `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parse and validate `text`, naming `path` in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.cgroup.instance = InstanceLimits::load_or_built_in(&config.limits_file)?;
        config.validate()?;
        Ok(config)
    }

    /// Check every value against its range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ipc = &self.ipc;
        let sb = &self.sandbox;
        range("ipc.max_connections", ipc.max_connections.into(), 1, 4096)?;
        range(
            "ipc.max_connections_per_uid",
            ipc.max_connections_per_uid.into(),
            1,
            4096,
        )?;
        range(
            "ipc.max_request_bytes_in_flight",
            ipc.max_request_bytes_in_flight,
            self.max_frame_bytes(),
            // One permit a byte in a tokio semaphore, whose limit is
            // usize::MAX >> 3; and one frame's permits are a u32.
            4096 * MIB,
        )?;
        range(
            "ipc.max_concurrent_runs",
            ipc.max_concurrent_runs.into(),
            1,
            1024,
        )?;
        range(
            "ipc.max_component_bytes",
            ipc.max_component_bytes,
            1024,
            1024 * MIB,
        )?;
        range("ipc.max_input_bytes", ipc.max_input_bytes, 0, 1024 * MIB)?;
        range("ipc.max_args", ipc.max_args.into(), 0, 65_536)?;
        range("ipc.max_arg_bytes", ipc.max_arg_bytes.into(), 1, 16 * MIB)?;
        range("ipc.frame_timeout_ms", ipc.frame_timeout_ms, 100, 3_600_000)?;
        range("ipc.shutdown_grace_ms", ipc.shutdown_grace_ms, 0, 3_600_000)?;
        range(
            "sandbox.memory_limit_bytes",
            sb.memory_limit_bytes,
            MIB,
            4096 * MIB,
        )?;
        if !sb.memory_limit_bytes.is_multiple_of(WASM_PAGE) {
            return Err(invalid(
                "sandbox.memory_limit_bytes",
                sb.memory_limit_bytes,
                "must be a multiple of the 65536-byte wasm page",
            ));
        }
        range("sandbox.cpu_budget_ms", sb.cpu_budget_ms, 1, 3_600_000)?;
        range(
            "sandbox.max_core_instances",
            sb.max_core_instances.into(),
            1,
            1000,
        )?;
        range("sandbox.max_tables", sb.max_tables.into(), 1, 1000)?;
        range(
            "sandbox.max_table_elements",
            sb.max_table_elements.into(),
            1,
            10_000_000,
        )?;
        range("sandbox.max_memories", sb.max_memories.into(), 1, 100)?;
        range("sandbox.max_handles", sb.max_handles.into(), 1, 1_000_000)?;
        range(
            "sandbox.max_output_bytes",
            sb.max_output_bytes,
            0,
            1024 * MIB,
        )?;
        range(
            "sandbox.max_log_line_bytes",
            sb.max_log_line_bytes.into(),
            16,
            MIB,
        )?;
        range(
            "sandbox.log_lines_per_second",
            sb.log_lines_per_second.into(),
            1,
            1_000_000,
        )?;
        range("sandbox.log_burst", sb.log_burst.into(), 1, 1_000_000)?;
        range("sandbox.max_log_bytes", sb.max_log_bytes, 0, 1024 * MIB)?;
        if let Some(n) = sb.ready_workers {
            range(
                "sandbox.ready_workers",
                n.into(),
                0,
                ipc.max_concurrent_runs.into(),
            )?;
        }
        range(
            "sandbox.max_env_entries",
            sb.max_env_entries.into(),
            0,
            65_536,
        )?;
        range("engine.epoch_tick_ms", self.engine.epoch_tick_ms, 1, 1000)?;
        if !self.socket.is_absolute() {
            return Err(invalid(
                "socket",
                self.socket.display(),
                "must be an absolute path",
            ));
        }
        if !self.state_dir.is_absolute() {
            return Err(invalid(
                "state_dir",
                self.state_dir.display(),
                "must be an absolute path",
            ));
        }
        let c = &self.compile;
        range(
            "compile.memory_max",
            c.memory_max,
            16 * MIB,
            64 * 1024 * MIB,
        )?;
        range("compile.cpu_max[1]", c.cpu_max[1], 1000, 1_000_000)?;
        range("compile.cpu_max[0]", c.cpu_max[0], 1000, 64 * c.cpu_max[1])?;
        range("compile.pids_max", c.pids_max, 2, 4096)?;
        range("compile.timeout_ms", c.timeout_ms, 100, 3_600_000)?;
        range(
            "compile.max_artifact_bytes",
            c.max_artifact_bytes,
            MIB,
            // A worker's message is at most 256 MiB (sandbox::channel).
            192 * MIB,
        )?;
        self.remote.validate()?;
        policy::validate(&self.clawfs, &self.devices, &self.network, &self.cgroup)
    }

    /// The ClawFS root: `clawfs.root`, or `<state_dir>/clawfs`.
    pub fn clawfs_root(&self) -> PathBuf {
        self.clawfs
            .root
            .clone()
            .unwrap_or_else(|| self.state_dir.join("clawfs"))
    }

    /// The largest frame the daemon reads: the largest request (an install
    /// or a run) plus room for the other fields.
    pub fn max_frame_bytes(&self) -> u64 {
        let args = u64::from(self.ipc.max_args) * (u64::from(self.ipc.max_arg_bytes) + 8);
        self.ipc
            .max_component_bytes
            .max(self.ipc.max_input_bytes + 2 * args)
            + MIB
    }
}

fn invalid(field: &'static str, value: impl std::fmt::Display, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        field,
        value: value.to_string(),
        reason: reason.to_owned(),
    }
}

fn range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            field,
            value,
            &format!("must be between {min} and {max}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn repository_default_file_equals_built_in_defaults() {
        let text = include_str!("../../../config/daemon.toml");
        assert_eq!(parse(text).unwrap(), Config::default());
    }

    #[test]
    fn the_pool_is_one_worker_per_concurrent_run_within_memory() {
        let c = Config::default();
        let gib = 1024 * MIB;
        // 1 GiB (the e2e guest): 8 fit in 64 MiB at 4 MiB each.
        assert_eq!(c.sandbox.pool_size(8, gib), 8);
        assert_eq!(c.sandbox.pool_size(64, gib), 16);
        assert_eq!(c.sandbox.pool_size(8, 256 * MIB), 4);
        assert_eq!(c.sandbox.pool_size(8, 0), 1);
        let c = parse("[sandbox]\nready_workers = 0\n").unwrap();
        assert_eq!(c.sandbox.pool_size(8, gib), 0);
        let c = parse("[ipc]\nmax_concurrent_runs = 32\n[sandbox]\nready_workers = 32\n").unwrap();
        assert_eq!(c.sandbox.pool_size(32, 256 * MIB), 32);
        let err = parse("[sandbox]\nready_workers = 9\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sandbox.ready_workers = 9") && err.contains("between 0 and 8"),
            "{err}"
        );
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.sandbox.memory_limit_bytes, 256 * MIB);
        assert_eq!(c.socket, PathBuf::from("/run/clawos/bridge.sock"));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = parse("[sandbox]\nmemory_limit = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("memory_limit"), "{err}");
        let err = parse("no_sandbox = true\n").unwrap_err().to_string();
        assert!(err.contains("no_sandbox"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let err = parse("[sandbox]\nmemory_limit_bytes = 1000\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sandbox.memory_limit_bytes = 1000"), "{err}");
        let err = parse("[sandbox]\nmemory_limit_bytes = 1048577\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("wasm page"), "{err}");
        let err = parse("[ipc]\nmax_concurrent_runs = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ipc.max_concurrent_runs = 0"), "{err}");
        let err = parse("socket = \"relative.sock\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("absolute"), "{err}");
        let err = parse("[[devices.allow]]\nname = \"/dev/mem\"\npath = \"/dev/mem\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("devices.allow.name"), "{err}");
        // Device paths are bound into workers and named in AppArmor rules.
        for bad in [
            "/dev",
            "/dev/",
            "/dev/../etc/shadow",
            "/dev/./null",
            "/dev//null",
            "/etc/passwd",
            "dev/null",
            "/dev/sd*",
            "/dev/a b",
            "/dev/x,",
            "/dev/{a,b}",
        ] {
            let err = parse(&format!(
                "[[devices.allow]]\nname = \"d\"\npath = \"{bad}\"\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains("devices.allow.path"), "{bad}: {err}");
        }
        for good in [
            "/dev/vdb",
            "/dev/disk/by-id/virtio-scratch",
            "/dev/nvme0n1p1",
        ] {
            parse(&format!(
                "[[devices.allow]]\nname = \"d\"\npath = \"{good}\"\n"
            ))
            .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        let err = parse("[[network.allow]]\ncidr = \"10.0.0.0/8\"\nports = [0]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("network.allow.ports"), "{err}");
        let err = parse("[network]\nallow_names = [\"Evil Name\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("network.allow_names"), "{err}");
        let err = parse("[[network.allow]]\ncidr = \"10.0.0.300/8\"\nports = [5432]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cidr"), "{err}");
    }

    #[test]
    fn policy_defaults_match_the_documented_ones() {
        let c = Config::default();
        let names: Vec<_> = c.devices.allow.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["null", "zero", "urandom"]);
        assert!(
            c.devices
                .allow
                .iter()
                .all(|d| d.write == (d.name == "null"))
        );
        assert!(c.network.allow.iter().all(|r| r.ports == [5432]));
        assert_eq!(c.clawfs_root(), PathBuf::from("/var/lib/clawos/clawfs"));
    }

    #[test]
    fn frame_limit_covers_the_largest_request() {
        let c = Config::default();
        assert!(c.max_frame_bytes() > c.ipc.max_component_bytes);
        assert!(c.max_frame_bytes() > c.ipc.max_input_bytes);
    }
}
