//! P1.5, the per-instance limits: one data file (`config/limits.toml`,
//! installed as `/etc/clawos/limits.toml`) whose text is also the built-in
//! default, loaded and range-checked at start.

use super::{ConfigError, MIB};
use serde::Deserialize;
use std::path::Path;

/// The repository's limits file: the defaults.
pub const BUILT_IN: &str = include_str!("../../../config/limits.toml");

/// What every instance's cgroup gets.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InstanceLimits {
    /// `memory.max`, bytes.
    pub memory_max: u64,
    /// `memory.swap.max`, bytes.
    pub memory_swap_max: u64,
    /// `memory.oom.group`.
    pub memory_oom_group: bool,
    /// `cpu.max`: quota and period, µs.
    pub cpu_max: [u64; 2],
    /// `pids.max`.
    pub pids_max: u64,
}

impl Default for InstanceLimits {
    fn default() -> InstanceLimits {
        InstanceLimits::parse(BUILT_IN, Path::new("<built-in limits>"))
            .expect("the repository's config/limits.toml is valid (unit-tested)")
    }
}

impl InstanceLimits {
    /// `path` if it exists, else the built-in limits.
    pub fn load_or_built_in(path: &Path) -> Result<InstanceLimits, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => InstanceLimits::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(InstanceLimits::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parse and check `text`, naming `path` in errors.
    pub fn parse(text: &str, path: &Path) -> Result<InstanceLimits, ConfigError> {
        let l: InstanceLimits = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let bad = |field: &'static str, value: u64, reason: &str| ConfigError::Invalid {
            field,
            value: value.to_string(),
            reason: reason.to_owned(),
        };
        if l.memory_max < 16 * MIB || !l.memory_max.is_multiple_of(4096) {
            return Err(bad(
                "limits.memory_max",
                l.memory_max,
                "must be at least 16 MiB and whole 4 KiB pages",
            ));
        }
        let [quota, period] = l.cpu_max;
        if !(1_000..=1_000_000).contains(&period) {
            return Err(bad(
                "limits.cpu_max",
                period,
                "the period must be 1000-1000000 µs",
            ));
        }
        if quota < 1_000 || quota > period * 1024 {
            return Err(bad(
                "limits.cpu_max",
                quota,
                "the quota must be at least 1000 µs and at most 1024 periods",
            ));
        }
        if !(4..=1 << 22).contains(&l.pids_max) {
            return Err(bad(
                "limits.pids_max",
                l.pids_max,
                "must be 4-4194304 (a worker has a few threads)",
            ));
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_file_is_p15() {
        let l = InstanceLimits::default();
        assert_eq!(
            l,
            InstanceLimits {
                memory_max: 256 * MIB,
                memory_swap_max: 0,
                memory_oom_group: true,
                cpu_max: [50_000, 1_000_000],
                pids_max: 32,
            }
        );
    }

    #[test]
    fn out_of_range_values_are_refused_by_name() {
        let cases = [
            (
                BUILT_IN.replace("memory_max = 268435456", "memory_max = 4096"),
                "limits.memory_max",
            ),
            (
                BUILT_IN.replace("[50000, 1000000]", "[50000, 10]"),
                "limits.cpu_max",
            ),
            (
                BUILT_IN.replace("[50000, 1000000]", "[10, 1000000]"),
                "limits.cpu_max",
            ),
            (
                BUILT_IN.replace("pids_max = 32", "pids_max = 1"),
                "limits.pids_max",
            ),
            (format!("{BUILT_IN}\nextra = 1\n"), "unknown field"),
        ];
        for (text, want) in cases {
            let e = InstanceLimits::parse(&text, Path::new("t"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn a_missing_file_means_the_built_in_limits() {
        let l = InstanceLimits::load_or_built_in(Path::new("/nonexistent/limits.toml")).unwrap();
        assert_eq!(l, InstanceLimits::default());
    }
}
