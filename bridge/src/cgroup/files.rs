//! The cgroup v2 interface files the bridge reads and writes, parsed and
//! formatted in one place: `memory.max`, `cpu.max`, `pids.max`,
//! `cgroup.controllers` and `/proc/<pid>/cgroup`.

use crate::error::{Code, Failure};

/// Smallest CFS bandwidth period and quota the kernel takes, µs.
pub const MIN_CPU_US: u64 = 1_000;
/// Largest CFS bandwidth period, µs.
pub const MAX_CPU_PERIOD_US: u64 = 1_000_000;

/// A limit that may be "max".
pub fn parse_max(file: &str, text: &str) -> Result<Option<u64>, Failure> {
    match text.trim() {
        "max" => Ok(None),
        v => v.parse().map(Some).map_err(|_| {
            Failure::new(
                Code::Eio,
                format!("{file}: cannot parse {v:?} as a number or \"max\""),
            )
        }),
    }
}

/// Format a limit that may be "max".
pub fn format_max(value: Option<u64>) -> String {
    value.map_or_else(|| "max".to_owned(), |v| v.to_string())
}

/// `cpu.max`: "$QUOTA $PERIOD", where the quota may be "max".
pub fn parse_cpu_max(file: &str, text: &str) -> Result<(Option<u64>, u64), Failure> {
    let mut parts = text.split_whitespace();
    let bad = || {
        Failure::new(
            Code::Eio,
            format!(
                "{file}: cannot parse {:?} as \"$QUOTA $PERIOD\"",
                text.trim()
            ),
        )
    };
    let quota = parse_max(file, parts.next().ok_or_else(bad)?)?;
    let period = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok((quota, period))
}

/// Format `cpu.max`.
pub fn format_cpu_max(quota: Option<u64>, period: u64) -> String {
    format!("{} {period}", format_max(quota))
}

/// Check a CPU limit the kernel would take: period 1 ms to 1 s, quota at least 1 ms.
pub fn check_cpu(quota: Option<u64>, period: u64) -> Result<(), Failure> {
    if !(MIN_CPU_US..=MAX_CPU_PERIOD_US).contains(&period) {
        return Err(Failure::new(
            Code::InvalidArgument,
            format!("cpu period {period} µs is outside {MIN_CPU_US}..={MAX_CPU_PERIOD_US}"),
        ));
    }
    if let Some(q) = quota
        && q < MIN_CPU_US
    {
        return Err(Failure::new(
            Code::InvalidArgument,
            format!("cpu quota {q} µs is below the kernel's minimum of {MIN_CPU_US}"),
        ));
    }
    Ok(())
}

/// Does a CPU limit allow more than another? Compares quota/period; "max" is infinite.
pub fn cpu_exceeds(child: (Option<u64>, u64), parent: (Option<u64>, u64)) -> bool {
    match (child.0, parent.0) {
        (_, None) => false,
        (None, Some(_)) => true,
        // child.q / child.p > parent.q / parent.p, without division.
        (Some(cq), Some(pq)) => {
            u128::from(cq) * u128::from(parent.1) > u128::from(pq) * u128::from(child.1)
        }
    }
}

/// The controllers listed in `cgroup.controllers`.
pub fn controllers(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

/// The cgroup v2 path of a process from `/proc/<pid>/cgroup` (the "0::" line).
pub fn proc_cgroup_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The value of `key` in a flat-keyed file such as `memory.events`
/// ("oom_kill 3" lines).
pub fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_finds_the_exact_key() {
        let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 1\n";
        assert_eq!(flat_keyed(events, "oom_kill"), Some(1));
        assert_eq!(flat_keyed(events, "oom"), Some(1));
        assert_eq!(flat_keyed(events, "max"), Some(12));
        assert_eq!(flat_keyed(events, "oom_group"), None);
    }

    #[test]
    fn limits_parse_and_format_round_trip() {
        assert_eq!(parse_max("m", "max\n").unwrap(), None);
        assert_eq!(parse_max("m", "268435456\n").unwrap(), Some(268_435_456));
        assert_eq!(parse_max("m", "-1").unwrap_err().code, Code::Eio);
        assert_eq!(format_max(None), "max");
        assert_eq!(format_max(Some(32)), "32");
        assert_eq!(
            parse_cpu_max("c", "50000 1000000\n").unwrap(),
            (Some(50_000), 1_000_000)
        );
        assert_eq!(parse_cpu_max("c", "max 100000").unwrap(), (None, 100_000));
        assert!(parse_cpu_max("c", "max").is_err());
        assert!(parse_cpu_max("c", "1 2 3").is_err());
        assert_eq!(format_cpu_max(Some(50_000), 1_000_000), "50000 1000000");
    }

    #[test]
    fn cpu_limits_are_checked_and_compared_as_ratios() {
        assert_eq!(
            check_cpu(Some(500), 100_000).unwrap_err().code,
            Code::InvalidArgument
        );
        assert_eq!(
            check_cpu(None, 999).unwrap_err().code,
            Code::InvalidArgument
        );
        assert_eq!(
            check_cpu(None, 2_000_000).unwrap_err().code,
            Code::InvalidArgument
        );
        check_cpu(Some(1_000), 1_000_000).unwrap();
        // 5% of a CPU against 10%: fine; 20%: too much; unlimited: too much.
        let parent = (Some(100_000), 1_000_000);
        assert!(!cpu_exceeds((Some(5_000), 100_000), parent));
        assert!(cpu_exceeds((Some(20_000), 100_000), parent));
        assert!(cpu_exceeds((None, 100_000), parent));
        assert!(!cpu_exceeds((None, 100_000), (None, 100_000)));
    }

    #[test]
    fn proc_cgroup_lines_are_read() {
        assert_eq!(
            proc_cgroup_path("0::/clawos/instance-3/a\n"),
            Some("/clawos/instance-3/a")
        );
        assert_eq!(proc_cgroup_path("12:pids:/x\n1:name=systemd:/y\n"), None);
        assert_eq!(
            controllers("cpuset cpu io memory pids\n"),
            ["cpuset", "cpu", "io", "memory", "pids"]
        );
    }
}
