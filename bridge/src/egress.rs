//! The egress proxy's policy: which names a tool may look up and which
//! resolved addresses and ports it may reach. Names are checked before any
//! lookup (so resolution is no side channel), and every address the lookup
//! returns is checked again, so a name cannot smuggle a connection to a
//! destination the rules do not allow. The daemon opens the connections;
//! tools only ever hold handles to them. Lookups are the daemon's own
//! ([`Resolver`]: the hosts file, then DNS over TCP to the servers of
//! `network.resolv_conf`), never the C library's.

use crate::config::NetworkPolicy;
use crate::error::{Code, Failure};
use crate::resolver::Resolver;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The policy, compiled from the configuration.
#[derive(Debug, Clone)]
pub struct Egress {
    policy: NetworkPolicy,
    resolver: Resolver,
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
        Egress { policy, resolver }
    }

    /// The proxy for `policy`, looking names up with `resolver`.
    pub fn with_resolver(policy: NetworkPolicy, resolver: Resolver) -> Egress {
        Egress { policy, resolver }
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
    pub fn name_allowed(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.policy
            .allow_names
            .iter()
            .any(|rule| match rule.strip_prefix("*.") {
                Some(domain) => {
                    name.len() > domain.len() + 1 && name.ends_with(&format!(".{domain}"))
                }
                None => *rule == name,
            })
    }

    /// May a connection go to `ip`:`port`? IPv4-mapped IPv6 addresses are
    /// checked as the IPv4 address they are.
    pub fn destination_allowed(&self, ip: IpAddr, port: u16) -> bool {
        let ip = ip.to_canonical();
        self.policy
            .allow
            .iter()
            .any(|r| r.cidr.contains(&ip) && r.ports.contains(&port))
    }

    /// Is `ip` inside any rule's network, on any port?
    fn address_allowed(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.policy.allow.iter().any(|r| r.cidr.contains(&ip))
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
                "{host:?} resolves only to addresses outside the egress allow-list ({all:?})"
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
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if !self.name_allowed(host) {
            return Err(denied(format!(
                "name {host:?} is not in network.allow_names; it was not looked up"
            )));
        }
        self.resolver.lookup_before(host, deadline)
    }

    /// Connect to `host`:`port` for a tool: resolve (policy-checked), keep
    /// the destinations the rules allow, try each within `timeout`.
    pub fn connect(&self, host: &str, port: u16, timeout: Duration) -> Result<TcpStream, Failure> {
        // One deadline for the lookup and every candidate together.
        let deadline = std::time::Instant::now() + timeout;
        let candidates: Vec<SocketAddr> = self
            .lookup(host, deadline)?
            .into_iter()
            .filter(|ip| self.destination_allowed(*ip, port))
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        if candidates.is_empty() {
            return Err(denied(format!(
                "connection to {host:?} port {port} is outside the egress allow-list"
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
        assert!(e.destination_allowed("127.0.0.1".parse().unwrap(), 5432));
        assert!(e.destination_allowed("2001:db8::1".parse().unwrap(), 5432));
        for port in [22, 80, 443, 5433, 6379] {
            assert!(
                !e.destination_allowed("127.0.0.1".parse().unwrap(), port),
                "{port}"
            );
        }
        assert!(e.name_allowed("localhost"));
        assert!(!e.name_allowed("example.com"));
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
