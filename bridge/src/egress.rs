//! The egress proxy's policy: which names a tool may look up and which
//! resolved addresses and ports it may reach. Names are checked before any
//! lookup (so resolution is no side channel), and every address the lookup
//! returns is checked again, so a name cannot smuggle a connection to a
//! destination the rules do not allow. The daemon opens the connections;
//! tools only ever hold handles to them. Lookups are the daemon's own
//! ([`Resolver`]: the hosts file, then DNS over TCP to the servers of
//! `network.resolv_conf`), never the C library's.

use crate::config::{EgressRule, NetworkPolicy};
use crate::error::{Code, Failure};
use crate::resolver::Resolver;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The policy, compiled from the configuration, and for a tool's run its
/// grants: a name or destination must then be both within the config's
/// allow-lists (the ceilings) and granted to the tool.
#[derive(Debug, Clone)]
pub struct Egress {
    policy: NetworkPolicy,
    resolver: Resolver,
    grant: Option<Arc<Granted>>,
}

/// A tool's network grants.
#[derive(Debug)]
struct Granted {
    names: Vec<String>,
    net: Vec<EgressRule>,
}

/// Does `name` (lower-case, no final dot) match one of `patterns` (exact,
/// or "*.domain" for names below it)?
fn name_matches(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|rule| match rule.strip_prefix("*.") {
        Some(domain) => name.len() > domain.len() + 1 && name.ends_with(&format!(".{domain}")),
        None => *rule == name,
    })
}

impl Egress {
    /// The proxy for `policy`. A resolv.conf that cannot be read as one
    /// gives no DNS servers here; the daemon refuses to start with it
    /// ([`Egress::resolver`] at start names what is wrong).
    pub fn new(policy: NetworkPolicy) -> Egress {
        let resolver = Egress::resolver(&policy).unwrap_or_else(|_| {
            Resolver::with_servers(
                policy.hosts_file.clone(),
                Vec::new(),
                lookup_timeout(&policy),
            )
        });
        Egress {
            policy,
            resolver,
            grant: None,
        }
    }

    /// The proxy for `policy`, looking names up with `resolver`.
    pub fn with_resolver(policy: NetworkPolicy, resolver: Resolver) -> Egress {
        Egress {
            policy,
            resolver,
            grant: None,
        }
    }

    /// This proxy for one tool's run: only the names and destinations
    /// granted to it, within this proxy's policy.
    pub fn granted(&self, names: Vec<String>, net: Vec<EgressRule>) -> Egress {
        Egress {
            policy: self.policy.clone(),
            resolver: self.resolver.clone(),
            grant: Some(Arc::new(Granted { names, net })),
        }
    }

    /// Why a name or destination the config allows was refused: the tool's grants.
    fn not_granted(&self) -> &'static str {
        if self.grant.is_some() {
            " or not granted to this tool"
        } else {
            ""
        }
    }

    /// The resolver `policy` describes: its hosts file and the DNS servers
    /// of its resolv.conf as they are now.
    pub fn resolver(policy: &NetworkPolicy) -> Result<Resolver, Failure> {
        Resolver::from_files(
            &policy.hosts_file,
            &policy.resolv_conf,
            lookup_timeout(policy),
        )
    }

    /// Is `ip`:`port` one of the DNS servers the daemon's lookups go to?
    pub fn is_resolver(&self, ip: IpAddr, port: u16) -> bool {
        let ip = ip.to_canonical();
        self.resolver
            .servers()
            .iter()
            .any(|s| s.ip().to_canonical() == ip && s.port() == port)
    }

    /// The policy.
    pub fn policy(&self) -> &NetworkPolicy {
        &self.policy
    }

    /// May `name` be looked up? Exact entries, or "*.domain" for names below it.
    /// For a tool's run, also granted to it.
    pub fn name_allowed(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        name_matches(&self.policy.allow_names, &name)
            && self
                .grant
                .as_ref()
                .is_none_or(|g| name_matches(&g.names, &name))
    }

    /// May a connection go to `ip`:`port`? IPv4-mapped IPv6 addresses are
    /// checked as the IPv4 address they are, and an address of a
    /// [`SPECIAL`] range only by a rule that names it ([`rule_reaches`]).
    /// For a tool's run, also granted to it.
    pub fn destination_allowed(&self, ip: IpAddr, port: u16) -> bool {
        let ip = ip.to_canonical();
        let reaches = |rules: &[EgressRule]| {
            rules
                .iter()
                .any(|r| rule_reaches(&r.cidr, ip) && r.ports.contains(&port))
        };
        reaches(&self.policy.allow) && self.grant.as_ref().is_none_or(|g| reaches(&g.net))
    }

    /// Is `ip` inside any rule's network, on any port (and granted)?
    fn address_allowed(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let reaches = |rules: &[EgressRule]| rules.iter().any(|r| rule_reaches(&r.cidr, ip));
        reaches(&self.policy.allow) && self.grant.as_ref().is_none_or(|g| reaches(&g.net))
    }

    /// The addresses of `host`: an address literal as itself, a name through
    /// the system resolver if the name is allowed. Addresses outside every
    /// rule are left out; none left is POLICY_DENIED.
    pub fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, Failure> {
        self.resolve_before(host, far_future())
    }

    /// [`Egress::resolve`], the lookup ending by `deadline` at the latest.
    pub fn resolve_before(&self, host: &str, deadline: Instant) -> Result<Vec<IpAddr>, Failure> {
        let all = self.lookup(host, deadline)?;
        let allowed: Vec<IpAddr> = all
            .iter()
            .copied()
            .filter(|ip| self.address_allowed(*ip))
            .collect();
        if allowed.is_empty() {
            return Err(denied(format!(
                "{host:?} resolves only to addresses outside the egress allow-list{} ({all:?}){}",
                self.not_granted(),
                special_note(&all)
            )));
        }
        Ok(allowed)
    }

    fn lookup(&self, host: &str, deadline: Instant) -> Result<Vec<IpAddr>, Failure> {
        if host.is_empty() || host.len() > 253 || host.contains('\0') {
            return Err(Failure::new(
                Code::InvalidArgument,
                format!("host {host:?} is not a host name or address"),
            ));
        }
        if let Some(ip) = address_literal(host) {
            return Ok(vec![ip]);
        }
        if !self.name_allowed(host) {
            return Err(denied(format!(
                "name {host:?} is not in network.allow_names{}; it was not looked up",
                self.not_granted()
            )));
        }
        self.resolver.lookup_before(host, deadline)
    }

    /// Connect to `host`:`port` for a tool: resolve (policy-checked), keep
    /// the destinations the rules allow, try each within `timeout`.
    pub fn connect(&self, host: &str, port: u16, timeout: Duration) -> Result<TcpStream, Failure> {
        // One deadline for the lookup and every candidate together.
        let deadline = std::time::Instant::now() + timeout;
        let all = self.lookup(host, deadline)?;
        let candidates: Vec<SocketAddr> = all
            .iter()
            .filter(|ip| self.destination_allowed(**ip, port))
            .map(|ip| SocketAddr::new(*ip, port))
            .collect();
        if candidates.is_empty() {
            return Err(denied(format!(
                "connection to {host:?} port {port} is outside the egress allow-list{}{}",
                self.not_granted(),
                special_note(&all)
            )));
        }
        let mut last = None;
        for addr in &candidates {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match TcpStream::connect_timeout(addr, left) {
                Ok(stream) => {
                    // Small request/response protocols (PostgreSQL) want no Nagle delay.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last = Some((addr, e)),
            }
        }
        match last {
            Some((addr, e)) => Err(Failure::io(format_args!("connect to {addr}"), &e)),
            None => Err(Failure::new(
                Code::Etimeout,
                format!("connect to {host:?} port {port}: no time left"),
            )),
        }
    }
}

/// Destinations that a rule reaches only if it names them: its network
/// lies inside the range (`127.0.0.0/8`, `169.254.169.254/32`), so that
/// `0.0.0.0/0` or `::/0` never opens the appliance's own loopback, the
/// link-local metadata addresses or a multicast group. IPv6 forms that
/// carry an IPv4 address to a translator or tunnel (IPv4-compatible,
/// NAT64, 6to4) are here too, so that `::/0` does not reach IPv4
/// destinations through them; the first match names the range.
pub const SPECIAL: &[(&str, &str)] = &[
    ("0.0.0.0/8", "unspecified"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
    ("::/96", "IPv4-compatible"),
    ("64:ff9b::/96", "NAT64"),
    ("64:ff9b:1::/48", "NAT64"),
    ("2002::/16", "6to4"),
    ("fec0::/10", "site-local"),
    ("fd00:ec2::254/128", "cloud metadata"),
];

/// The [`SPECIAL`] range `ip` (canonical) is in, and its kind.
pub fn special_range(ip: IpAddr) -> Option<(IpNet, &'static str)> {
    SPECIAL.iter().find_map(|(net, kind)| {
        let net: IpNet = net.parse().expect("a valid literal network");
        net.contains(&ip).then_some((net, *kind))
    })
}

/// Why a special address among `ips` was refused, for the message: empty
/// if none is special.
fn special_note(ips: &[IpAddr]) -> String {
    ips.iter()
        .find_map(|ip| {
            let ip = ip.to_canonical();
            special_range(ip).map(|(range, kind)| {
                format!("; {ip} is a {kind} address, reached only by a rule inside {range}")
            })
        })
        .unwrap_or_default()
}

/// Does `rule` reach `ip` (canonical)? Inside its network, and for a
/// special address only if the rule's whole network is inside that range.
fn rule_reaches(rule: &IpNet, ip: IpAddr) -> bool {
    rule.contains(&ip)
        && match special_range(ip) {
            None => true,
            Some((range, _)) => range.contains(rule),
        }
}

/// Does the rule `ceiling` reach every address the rule `net` reaches?
/// `net` inside its network, and for a `net` inside a [`SPECIAL`] range,
/// the ceiling inside that range too (as [`Egress::destination_allowed`]
/// judges each address).
pub fn rule_covers(ceiling: &IpNet, net: &IpNet) -> bool {
    if !ceiling.contains(net) {
        return false;
    }
    SPECIAL.iter().all(|(range, _)| {
        let range: IpNet = range.parse().expect("a valid literal network");
        // Addresses of a special range are reached only by a rule inside
        // it: a grant inside one needs a ceiling inside it too.
        !range.contains(net) || range.contains(ceiling)
    })
}

/// `host` as the address it is, if it is one: IPv6 (bracketed or not, a
/// zone index dropped) and IPv4 in every form `inet_aton` takes
/// (`127.1`, `2130706433`, `0177.0.0.1`, `0x7f.1`), so that no spelling
/// of an address is judged as anything else.
pub fn address_literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some((addr, _zone)) = bare.split_once('%')
        && let Ok(ip) = addr.parse::<std::net::Ipv6Addr>()
    {
        return Some(IpAddr::V6(ip));
    }
    inet_aton(bare).map(IpAddr::V4)
}

/// The IPv4 address `text` is in `inet_aton`'s forms: one to four parts,
/// each decimal, octal (leading 0) or hexadecimal (0x); the last fills
/// the bytes the others leave.
fn inet_aton(text: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        let (digits, radix) =
            if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
                (hex, 16)
            } else if part.len() > 1 && part.starts_with('0') {
                (&part[1..], 8)
            } else {
                (*part, 10)
            };
        if digits.is_empty() && radix != 16 {
            return None;
        }
        if !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        // "0x" alone is 0 to inet_aton.
        let value = if digits.is_empty() {
            0
        } else {
            u32::from_str_radix(digits, radix).ok()?
        };
        values.push(value);
    }
    let (last, first) = values.split_last()?;
    if first.iter().any(|v| *v > 255) {
        return None;
    }
    let last_bits = 8 * (4 - first.len() as u32);
    if last_bits < 32 && *last >= 1 << last_bits {
        return None;
    }
    let high = first
        .iter()
        .enumerate()
        .fold(0u32, |acc, (i, v)| acc | v << (24 - 8 * i as u32));
    Some(Ipv4Addr::from(high | last))
}

/// A deadline that never comes first (a year away).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// One lookup, all servers together, takes at most the connect timeout.
fn lookup_timeout(policy: &NetworkPolicy) -> Duration {
    Duration::from_millis(policy.connect_timeout_ms)
}

fn denied(message: String) -> Failure {
    Failure::new(Code::PolicyDenied, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EgressRule;

    fn egress(names: &[&str], rules: &[(&str, &[u16])]) -> Egress {
        Egress::new(NetworkPolicy {
            allow_names: names.iter().map(|n| n.to_string()).collect(),
            allow: rules
                .iter()
                .map(|(c, p)| EgressRule {
                    cidr: c.parse().unwrap(),
                    ports: p.to_vec(),
                })
                .collect(),
            ..NetworkPolicy::default()
        })
    }

    #[test]
    fn default_policy_is_postgres_only() {
        let e = Egress::new(NetworkPolicy::default());
        assert!(e.destination_allowed("192.0.2.7".parse().unwrap(), 5432));
        assert!(e.destination_allowed("2001:db8::1".parse().unwrap(), 5432));
        for port in [22, 80, 443, 5433, 6379] {
            assert!(
                !e.destination_allowed("192.0.2.7".parse().unwrap(), port),
                "{port}"
            );
        }
        assert!(e.name_allowed("localhost"));
        assert!(!e.name_allowed("example.com"));
    }

    #[test]
    fn special_destinations_need_a_rule_that_names_them() {
        let e = Egress::new(NetworkPolicy::default());
        for ip in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "0.1.2.3",
            "169.254.169.254",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::a9fe:a9fe",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::7f00:1",
            "2002:7f00:1::",
            "fec0::1",
            "fd00:ec2::254",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!e.destination_allowed(ip, 5432), "{ip}");
            assert!(!e.address_allowed(ip), "{ip}");
        }
        // Named: the range itself or a network inside it, on its ports.
        let e = egress(
            &[],
            &[
                ("0.0.0.0/0", &[5432]),
                ("127.0.0.0/8", &[5432]),
                ("169.254.169.254/32", &[80]),
                ("::1/128", &[5432]),
            ],
        );
        assert!(e.destination_allowed("127.0.0.1".parse().unwrap(), 5432));
        assert!(e.destination_allowed("::ffff:127.0.0.1".parse().unwrap(), 5432));
        assert!(e.destination_allowed("::1".parse().unwrap(), 5432));
        assert!(e.destination_allowed("169.254.169.254".parse().unwrap(), 80));
        assert!(!e.destination_allowed("169.254.169.254".parse().unwrap(), 5432));
        assert!(!e.destination_allowed("169.254.169.253".parse().unwrap(), 80));
        assert!(!e.destination_allowed("fe80::1".parse().unwrap(), 5432));
        // A rule wider than the range does not name it.
        let e = egress(&[], &[("64.0.0.0/2", &[5432]), ("96.0.0.0/3", &[5432])]);
        assert!(!e.destination_allowed("127.0.0.1".parse().unwrap(), 5432));
        assert!(e.destination_allowed("100.0.0.1".parse().unwrap(), 5432));
    }

    #[test]
    fn every_spelling_of_an_address_is_judged_as_that_address() {
        let v4 = |s: &str| Some(IpAddr::V4(s.parse().unwrap()));
        for (text, ip) in [
            ("127.0.0.1", v4("127.0.0.1")),
            ("127.1", v4("127.0.0.1")),
            ("127.0.1", v4("127.0.0.1")),
            ("2130706433", v4("127.0.0.1")),
            ("0x7f000001", v4("127.0.0.1")),
            ("0177.0.0.1", v4("127.0.0.1")),
            ("0x7f.1", v4("127.0.0.1")),
            ("017700000001", v4("127.0.0.1")),
            ("0", v4("0.0.0.0")),
            ("0x", v4("0.0.0.0")),
            ("169.254.43518", v4("169.254.169.254")),
            ("2852039166", v4("169.254.169.254")),
            ("[::1]", Some("::1".parse().unwrap())),
            ("fe80::1%eth0", Some("fe80::1".parse().unwrap())),
            ("::ffff:7f00:1", Some("::ffff:127.0.0.1".parse().unwrap())),
            ("256.0.0.1", None),
            ("1.2.3.4.5", None),
            ("1.2.65536", None),
            ("4294967296", None),
            ("08.0.0.1", None),
            ("1..2", None),
            ("db.internal", None),
            ("0x7g", None),
        ] {
            assert_eq!(address_literal(text), ip, "{text}");
        }
        let e = Egress::new(NetworkPolicy::default());
        for host in [
            "127.1",
            "2130706433",
            "0177.0.0.1",
            "0x7f.1",
            "[::1]",
            "0",
            "169.254.43518",
        ] {
            let err = e
                .connect(host, 5432, Duration::from_millis(100))
                .unwrap_err();
            assert_eq!(err.code, Code::PolicyDenied, "{host}: {}", err.message);
            assert!(
                err.message.contains("outside the egress allow-list"),
                "{}",
                err.message
            );
            assert_eq!(
                e.resolve(host).unwrap_err().code,
                Code::PolicyDenied,
                "{host}"
            );
        }
    }

    #[test]
    fn names_match_exactly_or_below_a_domain() {
        let e = egress(&["db.internal", "*.pg.example"], &[("10.0.0.0/8", &[5432])]);
        assert!(e.name_allowed("db.internal"));
        assert!(e.name_allowed("DB.internal."));
        assert!(!e.name_allowed("x.db.internal"));
        assert!(e.name_allowed("a.pg.example"));
        assert!(e.name_allowed("a.b.pg.example"));
        assert!(!e.name_allowed("pg.example"));
        assert!(!e.name_allowed("evilpg.example"));
    }

    #[test]
    fn disallowed_names_are_refused_before_any_lookup() {
        let e = egress(&["localhost"], &[("0.0.0.0/0", &[5432])]);
        let err = e.resolve("exfiltrate.attacker.example").unwrap_err();
        assert_eq!(err.code, Code::PolicyDenied);
        assert!(err.message.contains("not looked up"), "{}", err.message);
        assert_eq!(e.resolve("").unwrap_err().code, Code::InvalidArgument);
    }

    #[test]
    fn addresses_are_checked_after_resolution() {
        // localhost resolves, but only 10/8 is allowed.
        let e = egress(&["localhost"], &[("10.0.0.0/8", &[5432])]);
        assert_eq!(e.resolve("localhost").unwrap_err().code, Code::PolicyDenied);
        assert_eq!(
            e.connect("localhost", 5432, Duration::from_millis(100))
                .unwrap_err()
                .code,
            Code::PolicyDenied
        );
        // An IPv4-mapped address is the IPv4 address.
        assert!(!e.destination_allowed("::ffff:127.0.0.1".parse().unwrap(), 5432));
        assert!(e.destination_allowed("::ffff:10.1.2.3".parse().unwrap(), 5432));
        let e = egress(&["localhost"], &[("127.0.0.0/8", &[5432])]);
        assert_eq!(
            e.resolve("localhost").unwrap(),
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            e.connect("127.0.0.1", 80, Duration::from_millis(100))
                .unwrap_err()
                .code,
            Code::PolicyDenied
        );
    }
}
