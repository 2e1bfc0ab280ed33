//! The task that reads the monitors' ring buffer: each event decoded,
//! placed (process, instance, tool), written as a `clawos::event` record
//! and given to the rules; alerts written as `clawos::alert` records and
//! acted on.

use super::instances::Instances;
use super::rules::{Alert, Detector, Level, Seen, Who};
use super::{LostCounter, Stats};
use aya::maps::{MapData, RingBuf};
use clawos_ebpf_types as t;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Decode one ring buffer record.
pub fn decode(bytes: &[u8]) -> Option<t::Event> {
    if bytes.len() < std::mem::size_of::<t::Event>() {
        return None;
    }
    // SAFETY: at least size_of::<Event>() bytes; Event is plain old data
    // (integers and byte arrays, every bit pattern valid), read unaligned.
    #[allow(unsafe_code)]
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<t::Event>()) })
}

/// The operations an event stands for: a summary its repeats, any other
/// event itself.
fn operations(e: &t::Event) -> u64 {
    u64::from(e.repeats.max(1))
}

/// The destination of a connect event, if it was IPv4 or IPv6.
fn destination(e: &t::Event) -> Option<(IpAddr, u16)> {
    match e.family {
        2 => {
            let a = [e.addr[0], e.addr[1], e.addr[2], e.addr[3]];
            Some((IpAddr::V4(Ipv4Addr::from(a)), e.port))
        }
        10 => Some((IpAddr::V6(Ipv6Addr::from(e.addr)), e.port)),
        _ => None,
    }
}

pub(super) struct Reader {
    pub(super) detector: Detector,
    pub(super) instances: Arc<Instances>,
    pub(super) stats: Arc<Stats>,
    pub(super) lost: Arc<LostCounter>,
    pub(super) reported_lost: u64,
    pub(super) daemon: u32,
    pub(super) launcher: u32,
}

impl Reader {
    pub(super) fn check_lost(&mut self) {
        let now = self.lost.get();
        if now > self.reported_lost {
            tracing::warn!(
                target: "clawos::event",
                lost = now - self.reported_lost,
                lost_total = now,
                "ring buffer full: operations lost (counted by the kernel)"
            );
            self.reported_lost = now;
        }
    }

    pub(super) fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            self.handle(&item);
        }
    }

    fn handle(&mut self, bytes: &[u8]) {
        let Some(e) = decode(bytes) else {
            tracing::error!(target: "clawos::event", bytes = bytes.len(), "short record on the ring buffer");
            return;
        };
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        let repeats = e.repeats;
        self.stats
            .operations
            .fetch_add(operations(&e), Ordering::Relaxed);
        let group = self.instances.group(e.group);
        let who = if e.pid == self.daemon {
            Who::Daemon
        } else if e.pid == self.launcher {
            Who::Launcher
        } else if group.is_some() {
            Who::Worker
        } else {
            Who::Other
        };
        let instance = match (&group, who) {
            (Some(g), _) => Some(g.instance),
            (None, Who::Daemon) => self.instances.served_by(e.tid, e.ts_ns),
            _ => None,
        };
        let path_len = (e.path_len as usize).min(t::PATH_BYTES);
        let path = String::from_utf8_lossy(&e.path[..path_len]).into_owned();
        let dest = if e.op == t::OP_CONNECT {
            destination(&e)
        } else {
            None
        };
        let tool = group.as_ref().and_then(|g| g.tool.clone()).or_else(|| {
            instance
                .and_then(|i| self.instances.instance(i))
                .and_then(|g| g.tool)
        });
        let op = t::op_name(e.op);
        let level = if e.op == t::OP_ACCESS || repeats > 0 {
            tracing::Level::DEBUG
        } else {
            tracing::Level::INFO
        };
        let recorded = match level {
            tracing::Level::DEBUG => {
                tracing::enabled!(target: "clawos::event", tracing::Level::DEBUG)
            }
            _ => tracing::enabled!(target: "clawos::event", tracing::Level::INFO),
        };
        let instance_field = instance.map_or_else(|| "-".to_owned(), |i| i.to_string());
        let detail = if !recorded {
            String::new()
        } else if repeats > 0 {
            // A summary: the same operation again, on a file its first
            // event named (by inode).
            match e.op {
                t::OP_OPEN => format!("ino={} mode={} repeats={repeats}", e.ino, mode(e.arg)),
                _ => format!("ino={} mask={} repeats={repeats}", e.ino, mask(e.arg)),
            }
        } else {
            match e.op {
                t::OP_OPEN => format!("path={path:?} mode={}", mode(e.arg)),
                t::OP_ACCESS => format!("ino={} mask={}", e.ino, mask(e.arg)),
                t::OP_SOCKET => {
                    format!("family={} type={} protocol={}", e.family, e.arg, e.protocol)
                }
                t::OP_CONNECT => match dest {
                    Some((ip, port)) => format!("dest={ip} port={port}"),
                    None => format!("family={}", e.family),
                },
                t::OP_EXEC => format!("path={path:?}"),
                t::OP_CLONE => format!("flags={:#x}", e.arg),
                _ => String::new(),
            }
        };
        // Reads and writes, and summaries of repeats, are debug records
        // (RUST_LOG=clawos::event=debug shows them).
        macro_rules! record {
            ($level:ident) => {
                tracing::$level!(
                    target: "clawos::event",
                    op,
                    who = who.name(),
                    instance = %instance_field,
                    tool = tool.as_deref().unwrap_or("-"),
                    pid = e.pid,
                    tid = e.tid,
                    verdict = e.verdict,
                    "{op} {detail}"
                )
            };
        }
        if recorded {
            if level == tracing::Level::DEBUG {
                record!(debug);
            } else {
                record!(info);
            }
        }
        // The rules judge operations as first seen. A summary only counts
        // repeats of one already judged, and has no path; the one at a
        // thread's end comes after its instance ended by nature.
        if repeats > 0 {
            return;
        }
        let seen = Seen {
            op: e.op,
            ts_ns: e.ts_ns,
            pid: e.pid,
            tid: e.tid,
            who,
            group: e.group,
            instance,
            running_ns: group.as_ref().and_then(|g| g.running_ns),
            ended_ns: group.as_ref().and_then(|g| g.ended_ns),
            path,
            dest,
            verdict: e.verdict,
        };
        for alert in self.detector.check(&seen) {
            self.raise(alert, tool.as_deref());
        }
    }

    fn raise(&self, alert: Alert, tool: Option<&str>) {
        *self
            .stats
            .alerts
            .lock()
            .unwrap()
            .entry(alert.rule.clone())
            .or_default() += 1;
        let killed = alert.kill && self.kill(alert.instance);
        let instance = alert
            .instance
            .map_or_else(|| "-".to_owned(), |i| i.to_string());
        let tool = tool.unwrap_or("-");
        macro_rules! alert {
            ($level:ident, $name:literal) => {
                tracing::$level!(
                    target: "clawos::alert",
                    rule = %alert.rule,
                    level = $name,
                    instance = %instance,
                    tool,
                    killed,
                    evidence = %alert.evidence,
                    "ALERT {}: {}", alert.rule, alert.evidence
                )
            };
        }
        match alert.level {
            Level::Error => alert!(error, "error"),
            Level::Warn => alert!(warn, "warn"),
        }
    }

    /// Kill a running instance (its cgroup.kill); true if done.
    fn kill(&self, instance: Option<u64>) -> bool {
        let Some(g) = instance.and_then(|i| self.instances.instance(i)) else {
            return false;
        };
        if g.ended_ns.is_some() {
            return false;
        }
        match std::fs::write(g.dir.join("cgroup.kill"), "1") {
            Ok(()) => {
                self.stats.kills.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::error!(target: "clawos::alert", instance = g.instance, "cannot kill the instance: {e}");
                false
            }
        }
    }
}

/// `f_mode` as r/w letters.
fn mode(m: u64) -> String {
    let mut s = String::new();
    if m & 1 != 0 {
        s.push('r');
    }
    if m & 2 != 0 {
        s.push('w');
    }
    if s.is_empty() {
        s.push('-');
    }
    s
}

/// A `MAY_*` mask as words.
fn mask(m: u64) -> &'static str {
    const MAY_WRITE: u64 = 2;
    const MAY_READ: u64 = 4;
    const MAY_APPEND: u64 = 8;
    if m & (MAY_WRITE | MAY_APPEND) != 0 {
        "write"
    } else if m & MAY_READ != 0 {
        "read"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_to_events() {
        let mut e: t::Event = decode(&[0u8; std::mem::size_of::<t::Event>()]).unwrap();
        e.op = t::OP_CONNECT;
        e.family = 2;
        e.port = 5432;
        e.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(destination(&e), Some(("127.0.0.1".parse().unwrap(), 5432)));
        e.family = 1;
        assert_eq!(destination(&e), None);
        assert!(decode(&[0u8; 8]).is_none());
    }

    #[test]
    fn a_summary_stands_for_its_repeats() {
        let mut e: t::Event = decode(&[0u8; std::mem::size_of::<t::Event>()]).unwrap();
        e.op = t::OP_ACCESS;
        assert_eq!(operations(&e), 1);
        e.repeats = 19_999;
        assert_eq!(operations(&e), 19_999);
    }

    #[test]
    fn modes_and_masks_read_as_words() {
        assert_eq!(mode(1), "r");
        assert_eq!(mode(3), "rw");
        assert_eq!(mask(4), "read");
        assert_eq!(mask(2), "write");
        assert_eq!(mask(8), "write");
    }
}
