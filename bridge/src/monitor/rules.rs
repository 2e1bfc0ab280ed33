//! Anomaly detection as data: the rules file (`config/monitor-rules.toml`,
//! installed as `/etc/clawos/monitor-rules.toml`) names what raises an
//! alert, at which level, and whether the offending instance is killed.
//! [`Detector::check`] applies the rules to one event; it is pure logic,
//! so the tests below drive it with made-up events.

use crate::egress::Egress;
use crate::error::{Code, Failure};
use clawos_ebpf_types as t;
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::Path;

/// The rules file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// The rules, in order.
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
}

/// What a rule looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum When {
    /// Any execve by a bridge process.
    Exec,
    /// A connect to an address and port outside `network.allow`, or one
    /// of the daemon's that the kernel refused as not granted to the
    /// instance its thread serves.
    Egress,
    /// An open of one of `paths` (a file, or a directory and all below it).
    OpenSensitive,
    /// An open by a running instance outside its ClawFS directory and `paths`.
    OpenOutsideClawfs,
    /// More than `max` new tasks from one group within `window_ms`.
    CloneBurst,
    /// Any event from an instance after its worker was reaped.
    AfterEnd,
}

/// An alert's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// A warning record.
    Warn,
    /// An error record.
    #[default]
    Error,
}

/// One rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Name, as alerts and `clawosctl status` give it.
    pub name: String,
    /// What it looks for.
    pub when: When,
    /// The alert's level.
    #[serde(default)]
    pub level: Level,
    /// Kill the offending instance (when the event belongs to one).
    #[serde(default)]
    pub kill: bool,
    /// open-sensitive: the paths; open-outside-clawfs: paths also allowed.
    #[serde(default)]
    pub paths: Vec<String>,
    /// clone-burst: most new tasks allowed within the window.
    #[serde(default)]
    pub max: u32,
    /// clone-burst: the window, ms.
    #[serde(default)]
    pub window_ms: u64,
}

impl RulesFile {
    /// Parse and check a rules file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<RulesFile, Failure> {
        let bad = |m: String| {
            Failure::new(
                Code::InvalidArgument,
                format!("rules file {}: {m}", origin.display()),
            )
        };
        let file: RulesFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut names = std::collections::HashSet::new();
        for r in &file.rules {
            if r.name.is_empty() || !names.insert(r.name.as_str()) {
                return Err(bad(format!(
                    "rule names must be unique and not empty ({:?})",
                    r.name
                )));
            }
            match r.when {
                When::OpenSensitive if r.paths.is_empty() => {
                    return Err(bad(format!(
                        "rule {:?}: open-sensitive needs paths",
                        r.name
                    )));
                }
                When::CloneBurst if r.max == 0 || r.window_ms == 0 => {
                    return Err(bad(format!(
                        "rule {:?}: clone-burst needs max and window_ms above 0",
                        r.name
                    )));
                }
                _ => {}
            }
            if let Some(p) = r.paths.iter().find(|p| !p.starts_with('/')) {
                return Err(bad(format!(
                    "rule {:?}: path {p:?} is not absolute",
                    r.name
                )));
            }
        }
        Ok(file)
    }

    /// Load the rules file at `path`.
    pub fn load(path: &Path) -> Result<RulesFile, Failure> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Failure::new(
                Code::InvalidArgument,
                format!("cannot read rules file {}: {e}", path.display()),
            )
        })?;
        RulesFile::parse(&text, path)
    }
}

/// Which bridge process an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// The daemon.
    Daemon,
    /// The launcher.
    Launcher,
    /// An instance's worker.
    Worker,
    /// A process in the bridge's subtree that is none of those.
    Other,
}

impl Who {
    /// Its name in records.
    pub fn name(self) -> &'static str {
        match self {
            Who::Daemon => "daemon",
            Who::Launcher => "launcher",
            Who::Worker => "worker",
            Who::Other => "other",
        }
    }
}

/// An event, decoded and placed.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `OP_*`.
    pub op: u32,
    /// CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    /// Process and thread.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// Which process.
    pub who: Who,
    /// The cgroup id one below the bridge's root (bursts are counted per group).
    pub group: u64,
    /// The instance it belongs to, if any.
    pub instance: Option<u64>,
    /// When that instance's tool could first run.
    pub running_ns: Option<u64>,
    /// When that instance's worker was reaped.
    pub ended_ns: Option<u64>,
    /// Path (open, exec).
    pub path: String,
    /// Destination (connect, inet).
    pub dest: Option<(IpAddr, u16)>,
    /// The kernel program's verdict (0 or -errno).
    pub verdict: i32,
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// The rule's name.
    pub rule: String,
    /// Its level.
    pub level: Level,
    /// Kill the instance?
    pub kill: bool,
    /// The instance, if the event belongs to one.
    pub instance: Option<u64>,
    /// What happened.
    pub evidence: String,
}

/// The rules applied to a stream of events.
#[derive(Debug)]
pub struct Detector {
    rules: Vec<Rule>,
    egress: Egress,
    /// clone-burst: per (rule, group), recent clone times and whether this
    /// burst was reported.
    bursts: HashMap<(usize, u64), (VecDeque<u64>, bool)>,
}

fn under(path: &str, prefix: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    path == p
        || path
            .strip_prefix(p)
            .is_some_and(|rest| rest.starts_with('/'))
        || p.is_empty()
}

fn refused(verdict: i32) -> &'static str {
    if verdict < 0 {
        "refused by the kernel"
    } else {
        "let through"
    }
}

impl Detector {
    /// A detector for `rules`, with `egress` the daemon's allow-list.
    pub fn new(rules: RulesFile, egress: Egress) -> Detector {
        Detector {
            rules: rules.rules,
            egress,
            bursts: HashMap::new(),
        }
    }

    /// The rules' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.rules.iter().map(|r| r.name.clone()).collect()
    }

    /// The alerts `e` raises, one per matching rule.
    pub fn check(&mut self, e: &Seen) -> Vec<Alert> {
        let mut alerts = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            let evidence = match r.when {
                When::Exec if e.op == t::OP_EXEC => Some(format!(
                    "execve of {:?} by the {} (pid {}), {}",
                    e.path,
                    e.who.name(),
                    e.pid,
                    refused(e.verdict)
                )),
                When::Egress if e.op == t::OP_CONNECT => match e.dest {
                    Some((ip, port))
                        if !self.egress.destination_allowed(ip, port)
                            && !(e.who == Who::Daemon && self.egress.is_resolver(ip, port)) =>
                    {
                        Some(format!(
                            "connect to {} port {port} by the {} (pid {}), outside the egress allow-list, {}",
                            ip,
                            e.who.name(),
                            e.pid,
                            refused(e.verdict)
                        ))
                    }
                    // Inside the allow-list, yet the kernel refused the
                    // daemon: not granted to the instance its thread serves
                    // (or it serves none). The proxy should never try it.
                    Some((ip, port))
                        if e.who == Who::Daemon
                            && e.verdict < 0
                            && !self.egress.is_resolver(ip, port) =>
                    {
                        Some(format!(
                            "connect to {ip} port {port} by the daemon (pid {}), not granted to {}, {}",
                            e.pid,
                            match e.instance {
                                Some(i) => format!("instance {i}, which its thread serves"),
                                None => "any instance: its thread serves none".to_owned(),
                            },
                            refused(e.verdict)
                        ))
                    }
                    _ => None,
                },
                When::OpenSensitive
                    if e.op == t::OP_OPEN && r.paths.iter().any(|p| under(&e.path, p)) =>
                {
                    Some(format!(
                        "open of {:?} by the {} (pid {})",
                        e.path,
                        e.who.name(),
                        e.pid
                    ))
                }
                When::OpenOutsideClawfs
                    if e.op == t::OP_OPEN
                        && e.who == Who::Worker
                        && e.running_ns.is_some_and(|r| e.ts_ns >= r)
                        && !under(&e.path, crate::sandbox::WORKER_CLAWFS)
                        && !r.paths.iter().any(|p| under(&e.path, p)) =>
                {
                    Some(format!(
                        "open of {:?} by a running instance, outside its ClawFS directory",
                        e.path
                    ))
                }
                When::CloneBurst if e.op == t::OP_CLONE => {
                    let window = r.window_ms * 1_000_000;
                    let (times, reported) = self.bursts.entry((i, e.group)).or_default();
                    while times.front().is_some_and(|&t0| t0 + window < e.ts_ns) {
                        times.pop_front();
                    }
                    times.push_back(e.ts_ns);
                    if times.len() <= r.max as usize {
                        *reported = false;
                        None
                    } else if *reported {
                        None
                    } else {
                        *reported = true;
                        Some(format!(
                            "{} new tasks within {} ms from the {} (pid {}), above {}",
                            times.len(),
                            r.window_ms,
                            e.who.name(),
                            e.pid,
                            r.max
                        ))
                    }
                }
                When::AfterEnd if e.ended_ns.is_some_and(|end| e.ts_ns > end) => Some(format!(
                    "{} by pid {} {} ms after the instance's worker was reaped",
                    t::op_name(e.op),
                    e.pid,
                    (e.ts_ns - e.ended_ns.unwrap_or(0)) / 1_000_000
                )),
                _ => None,
            };
            if let Some(evidence) = evidence {
                alerts.push(Alert {
                    rule: r.name.clone(),
                    level: r.level,
                    kill: r.kill,
                    instance: e.instance,
                    evidence,
                });
            }
        }
        alerts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn detector() -> Detector {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/monitor-rules.toml"
        ))
        .unwrap();
        let rules = RulesFile::parse(&text, Path::new("config/monitor-rules.toml")).unwrap();
        Detector::new(rules, Egress::new(Config::default().network))
    }

    fn seen(op: u32) -> Seen {
        Seen {
            op,
            ts_ns: 1_000_000_000,
            pid: 42,
            tid: 42,
            who: Who::Worker,
            group: 9,
            instance: Some(5),
            running_ns: Some(500_000_000),
            ended_ns: None,
            path: String::new(),
            dest: None,
            verdict: 0,
        }
    }

    fn rules_hit(d: &mut Detector, e: &Seen) -> Vec<String> {
        d.check(e).into_iter().map(|a| a.rule).collect()
    }

    #[test]
    fn the_shipped_rules_file_parses_and_names_every_kind() {
        let d = detector();
        let kinds: Vec<When> = d.rules.iter().map(|r| r.when).collect();
        for k in [
            When::Exec,
            When::Egress,
            When::OpenSensitive,
            When::OpenOutsideClawfs,
            When::CloneBurst,
            When::AfterEnd,
        ] {
            assert!(kinds.contains(&k), "{k:?} missing from {kinds:?}");
        }
    }

    #[test]
    fn exec_alerts_and_kills() {
        let mut d = detector();
        let mut e = seen(t::OP_EXEC);
        e.path = "/bin/sh".into();
        e.verdict = -1;
        let alerts = d.check(&e);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].rule, "exec");
        assert!(alerts[0].kill);
        assert_eq!(alerts[0].instance, Some(5));
        assert_eq!(
            alerts[0].evidence,
            "execve of \"/bin/sh\" by the worker (pid 42), refused by the kernel"
        );
    }

    #[test]
    fn egress_follows_the_allow_list() {
        let mut d = detector();
        let mut e = seen(t::OP_CONNECT);
        e.who = Who::Daemon;
        e.dest = Some(("192.0.2.7".parse().unwrap(), 80));
        assert_eq!(rules_hit(&mut d, &e), ["egress"]);
        e.dest = Some(("192.0.2.7".parse().unwrap(), 5432));
        assert!(rules_hit(&mut d, &e).is_empty());
        // The loopback is outside the default allow-list on any port, for
        // any bridge process, whatever the kernel's verdict.
        e.dest = Some(("127.0.0.1".parse().unwrap(), 5432));
        assert_eq!(rules_hit(&mut d, &e), ["egress"]);
        e.who = Who::Other;
        e.instance = None;
        e.verdict = 0;
        assert_eq!(rules_hit(&mut d, &e), ["egress"]);
        e.dest = None; // a Unix socket
        assert!(rules_hit(&mut d, &e).is_empty());
    }

    #[test]
    fn the_kernel_refusing_a_daemon_connect_inside_the_allow_list_is_an_egress_alert() {
        let mut d = detector();
        let mut e = seen(t::OP_CONNECT);
        e.who = Who::Daemon;
        e.dest = Some(("192.0.2.7".parse().unwrap(), 5432));
        // Let through: granted to the instance, nothing to say.
        assert!(rules_hit(&mut d, &e).is_empty());
        // Refused by the per-instance check.
        e.verdict = -1;
        let alerts = d.check(&e);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].rule, "egress");
        assert_eq!(
            alerts[0].evidence,
            "connect to 192.0.2.7 port 5432 by the daemon (pid 42), not granted to instance 5, which its thread serves, refused by the kernel"
        );
        e.instance = None;
        assert!(
            d.check(&e)[0]
                .evidence
                .contains("not granted to any instance: its thread serves none")
        );
        // Another process refused inside the allow-list is not this rule's.
        e.who = Who::Worker;
        assert!(rules_hit(&mut d, &e).is_empty());
    }

    #[test]
    fn only_the_daemon_may_reach_its_dns_servers_on_53() {
        let resolver = crate::resolver::Resolver::with_servers(
            "/nonexistent/hosts".into(),
            vec!["10.0.2.53:53".parse().unwrap()],
            std::time::Duration::from_secs(1),
        );
        let egress = Egress::with_resolver(Config::default().network, resolver);
        let mut d = detector();
        d.egress = egress;
        let mut e = seen(t::OP_CONNECT);
        e.who = Who::Daemon;
        e.dest = Some(("10.0.2.53".parse().unwrap(), 53));
        assert!(rules_hit(&mut d, &e).is_empty());
        e.dest = Some(("::ffff:10.0.2.53".parse().unwrap(), 53));
        assert!(rules_hit(&mut d, &e).is_empty());
        for (who, ip, port) in [
            (Who::Worker, "10.0.2.53", 53),
            (Who::Other, "10.0.2.53", 53),
            (Who::Daemon, "10.0.2.54", 53),
            (Who::Daemon, "10.0.2.53", 54),
        ] {
            e.who = who;
            e.dest = Some((ip.parse().unwrap(), port));
            assert_eq!(rules_hit(&mut d, &e), ["egress"], "{who:?} {ip}:{port}");
        }
    }

    #[test]
    fn opens_outside_clawfs_count_only_once_the_tool_runs() {
        let mut d = detector();
        let mut e = seen(t::OP_OPEN);
        e.path = "/clawfs/notes.txt".into();
        assert!(rules_hit(&mut d, &e).is_empty());
        e.path = "/clawfsx".into();
        assert_eq!(rules_hit(&mut d, &e), ["open-outside-clawfs"]);
        e.path = "/dev/urandom".into();
        assert!(rules_hit(&mut d, &e).is_empty());
        e.path = "/var/lib/clawos/tools/x/component.cwasm".into();
        e.ts_ns = 100; // before the worker was ready: its own setup
        assert!(rules_hit(&mut d, &e).is_empty());
        e.who = Who::Daemon;
        e.ts_ns = 1_000_000_000;
        assert!(rules_hit(&mut d, &e).is_empty());
    }

    #[test]
    fn sensitive_files_alert_for_any_bridge_process() {
        let mut d = detector();
        let mut e = seen(t::OP_OPEN);
        e.who = Who::Daemon;
        e.instance = None;
        e.path = "/etc/shadow".into();
        assert_eq!(rules_hit(&mut d, &e), ["sensitive-file"]);
        e.path = "/root/.ssh/id_ed25519".into();
        assert_eq!(rules_hit(&mut d, &e), ["sensitive-file"]);
        e.path = "/etc/shadowy".into();
        assert!(rules_hit(&mut d, &e).is_empty());
    }

    #[test]
    fn a_clone_burst_alerts_once_per_burst() {
        let mut d = detector();
        let max = d
            .rules
            .iter()
            .find(|r| r.when == When::CloneBurst)
            .unwrap()
            .max;
        let mut e = seen(t::OP_CLONE);
        let mut hits = 0;
        for i in 0..(max as u64 * 3) {
            e.ts_ns = 1_000_000_000 + i * 1000;
            hits += rules_hit(&mut d, &e).len();
        }
        assert_eq!(hits, 1);
        // Another group has its own count.
        e.group = 10;
        assert!(rules_hit(&mut d, &e).is_empty());
    }

    #[test]
    fn events_after_the_end_alert() {
        let mut d = detector();
        let mut e = seen(t::OP_ACCESS);
        e.ended_ns = Some(900_000_000);
        let alerts = d.check(&e);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].rule, "after-end");
        assert_eq!(
            alerts[0].evidence,
            "access by pid 42 100 ms after the instance's worker was reaped"
        );
        e.ts_ns = 800_000_000;
        assert!(d.check(&e).is_empty());
    }

    #[test]
    fn bad_rules_files_are_refused_with_the_reason() {
        let p = Path::new("r.toml");
        let err = |text: &str| RulesFile::parse(text, p).unwrap_err().message;
        assert!(err("[[rule]]\nname = \"x\"\nwhen = \"teleport\"\n").contains("unknown variant"));
        assert!(err("[[rule]]\nname = \"x\"\nwhen = \"open-sensitive\"\n").contains("needs paths"));
        assert!(
            err("[[rule]]\nname = \"x\"\nwhen = \"clone-burst\"\n").contains("max and window_ms")
        );
        assert!(
            err(
                "[[rule]]\nname = \"x\"\nwhen = \"exec\"\n[[rule]]\nname = \"x\"\nwhen = \"exec\"\n"
            )
            .contains("unique")
        );
        assert!(
            err("[[rule]]\nname = \"x\"\nwhen = \"open-sensitive\"\npaths = [\"etc\"]\n")
                .contains("not absolute")
        );
    }
}
