//! Name lookups for the egress proxy without the system resolver: the hosts
//! file, then DNS over TCP (RFC 7766) to the `nameserver`s of resolv.conf.
//! glibc's getaddrinfo uses UDP sockets and ioctls that the daemon's seccomp
//! allow-list lacks; this module uses only what `TcpStream` uses (socket,
//! connect, setsockopt for the timeouts, read, write, close) and
//! `std::fs::read`, and the appliance's policy lets the daemon reach port 53
//! over TCP. No threads and no UDP: a lookup is one A and one AAAA query
//! pipelined on one connection per server, the servers tried in turn. One
//! deadline bounds the whole lookup; each server gets an equal share of what
//! is left, so a silent first server does not use up the time of the next.
//! DNS messages are built and parsed by hickory-proto and resolv.conf by
//! resolv-conf; this module only checks that each reply answers its question.

use crate::error::{Code, Failure};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use resolv_conf::{ParseError, ScopedIp};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The DNS port; resolv.conf cannot name another.
const DNS_PORT: u16 = 53;
/// Servers taken from resolv.conf: glibc's MAXNS.
const MAX_SERVERS: usize = 3;
/// Addresses one lookup returns at most; more only lengthen the proxy's
/// connect loop.
const MAX_ADDRESSES: usize = 32;
/// CNAME records followed inside one answer section at most.
const MAX_CNAME_DEPTH: usize = 8;
/// RFC 1035's limits, in the dotted text form without the final dot.
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Name lookups for the egress proxy: the hosts file, then DNS over TCP.
#[derive(Debug, Clone)]
pub struct Resolver {
    hosts: PathBuf,
    servers: Vec<SocketAddr>,
    timeout: Duration,
    /// The resolv.conf the servers came from, for messages; `None` for
    /// [`Resolver::with_servers`].
    resolv_conf: Option<PathBuf>,
}

impl Resolver {
    /// `hosts`: a hosts file (e.g. /etc/hosts), read at every lookup (missing = empty).
    /// `resolv_conf`: read once here; its first three `nameserver` lines
    /// (glibc's MAXNS) are the servers, port 53. An IPv6 server with a
    /// `%scope` suffix is skipped with a warning (a scope name would need an
    /// interface lookup). A missing file means no servers. `options` are
    /// ignored (glibc ignores the ones it does not know too); any other line
    /// resolv-conf cannot parse, including an unknown directive (a misspelt
    /// `nameserver` would silently lose a server), is INVALID_ARGUMENT.
    /// `timeout`: bounds one whole lookup (all servers, connect+send+receive together; one deadline).
    pub fn from_files(
        hosts: &Path,
        resolv_conf: &Path,
        timeout: Duration,
    ) -> Result<Resolver, Failure> {
        let servers = match std::fs::read(resolv_conf) {
            Ok(bytes) => parse_resolv_conf(resolv_conf, &bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Failure::io(format!("cannot read {resolv_conf:?}"), &e)),
        };
        Ok(Resolver {
            hosts: hosts.to_path_buf(),
            servers,
            timeout,
            resolv_conf: Some(resolv_conf.to_path_buf()),
        })
    }

    /// For tests and explicit configuration: these servers (any port).
    pub fn with_servers(hosts: PathBuf, servers: Vec<SocketAddr>, timeout: Duration) -> Resolver {
        Resolver {
            hosts,
            servers,
            timeout,
            resolv_conf: None,
        }
    }

    /// The DNS servers lookups go to.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// The addresses of `name` (already policy-checked by the caller; may
    /// end with '.'): the hosts file's (canonical name or alias, ASCII
    /// case-insensitive, in file order) if it has the name, else the first
    /// server's answer (A addresses, then AAAA). Duplicates are removed, at
    /// most 32 are returned. NXDOMAIN or an answer without addresses is
    /// ENOENT; a server that fails (SERVFAIL, REFUSED, a bad reply, a
    /// connection error) passes the lookup to the next; the last failure is
    /// returned (EIO for a bad reply, the errno's code for I/O, ETIMEOUT when
    /// the deadline passed).
    pub fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, Failure> {
        self.lookup_inner(name)
    }

    /// [`Resolver::lookup`], ending by `deadline` if that comes before the
    /// resolver's own timeout (a run's time left).
    pub fn lookup_before(&self, name: &str, deadline: Instant) -> Result<Vec<IpAddr>, Failure> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left >= self.timeout {
            return self.lookup_inner(name);
        }
        let sooner = Resolver {
            timeout: left,
            ..self.clone()
        };
        sooner.lookup_inner(name)
    }

    fn lookup_inner(&self, name: &str) -> Result<Vec<IpAddr>, Failure> {
        // A timeout too large for the clock (Duration::MAX) waits a year.
        let start = Instant::now();
        let deadline = start
            .checked_add(self.timeout)
            .or_else(|| start.checked_add(Duration::from_secs(365 * 24 * 3600)))
            .unwrap_or(start);
        let bare = check_name(name)?;
        let from_hosts = self.hosts_lookup(bare)?;
        if !from_hosts.is_empty() {
            return Ok(from_hosts);
        }
        if self.servers.is_empty() {
            let source = match &self.resolv_conf {
                Some(path) => format!("no nameserver in {path:?}"),
                None => "the resolver was given none".to_string(),
            };
            return Err(Failure::new(
                Code::Enoent,
                format!(
                    "name {name:?} is not in the hosts file {:?} and no dns server is configured ({source})",
                    self.hosts
                ),
            ));
        }
        let qname = Name::from_ascii(format!("{bare}.")).map_err(|_| {
            Failure::new(
                Code::InvalidArgument,
                format!("{name:?} is not a valid dns name"),
            )
        })?;
        self.ask_servers(name, &qname, deadline)
    }

    /// The hosts file's addresses for `bare` (no final dot).
    fn hosts_lookup(&self, bare: &str) -> Result<Vec<IpAddr>, Failure> {
        match std::fs::read(&self.hosts) {
            Ok(bytes) => Ok(hosts_addresses(&bytes, bare)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Failure::io(
                format!("cannot read the hosts file {:?}", self.hosts),
                &e,
            )),
        }
    }

    /// Each server in turn until one answers, inside `deadline`.
    fn ask_servers(
        &self,
        name: &str,
        qname: &Name,
        deadline: Instant,
    ) -> Result<Vec<IpAddr>, Failure> {
        let mut last: Option<(SocketAddr, ServerError)> = None;
        for (i, server) in self.servers.iter().copied().enumerate() {
            let now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                break;
            }
            // An equal share of what is left for this and the servers after it.
            let servers_left = u32::try_from(self.servers.len().saturating_sub(i))
                .unwrap_or(u32::MAX)
                .max(1);
            let server_deadline = now.checked_add(left / servers_left).unwrap_or(deadline);
            match ask_server(server, name, qname, server_deadline) {
                Ok(Answer::Found(addresses)) => return Ok(addresses),
                Ok(Answer::NxDomain) => {
                    return Err(Failure::new(
                        Code::Enoent,
                        format!("name {name:?} not found (NXDOMAIN from {server})"),
                    ));
                }
                Ok(Answer::NoAddresses) => {
                    return Err(Failure::new(
                        Code::Enoent,
                        format!(
                            "name {name:?} has no addresses (no A or AAAA records from {server})"
                        ),
                    ));
                }
                Err(e) => {
                    tracing::debug!(%server, "dns lookup of {name:?} failed: {e:?}");
                    last = Some((server, e));
                }
            }
        }
        Err(match last {
            Some((_, ServerError::Io(failure))) => failure,
            Some((server, ServerError::Reply(reason))) => Failure::new(
                Code::Eio,
                format!(
                    "no dns server answered the lookup of {name:?} ({} tried); the last, {server}, {reason}",
                    self.servers.len()
                ),
            ),
            Some((server, ServerError::Timeout)) => Failure::new(
                Code::Etimeout,
                format!(
                    "lookup of {name:?} timed out after {:?} (last server tried: {server})",
                    self.timeout
                ),
            ),
            None => Failure::new(
                Code::Etimeout,
                format!(
                    "lookup of {name:?} timed out after {:?} before any dns server was asked",
                    self.timeout
                ),
            ),
        })
    }
}

/// What one server said about the name.
#[derive(Debug)]
enum Answer {
    /// Addresses (A then AAAA, deduplicated, at most [`MAX_ADDRESSES`]).
    Found(Vec<IpAddr>),
    /// NXDOMAIN.
    NxDomain,
    /// NOERROR for both queries, without an address.
    NoAddresses,
}

/// Why one server gave no answer; the lookup goes on to the next.
#[derive(Debug)]
enum ServerError {
    /// Its share of the deadline passed.
    Timeout,
    /// Connecting, sending or receiving failed (the failure names the server).
    Io(Failure),
    /// Its reply is unusable: the text completes "the last, <server>, ...".
    Reply(String),
}

/// What one reply said.
#[derive(Debug)]
enum Outcome {
    /// NOERROR, with these addresses (maybe none).
    Addresses(Vec<IpAddr>),
    /// NXDOMAIN.
    NxDomain,
    /// Another response code, as "replied SERVFAIL".
    Failed(String),
}

/// `name` without its final dot, if it is a host name: 1 to 253 characters
/// of labels of 1 to 63 letters, digits, '-' or '_'.
fn check_name(name: &str) -> Result<&str, Failure> {
    let bad = |why: String| Failure::new(Code::InvalidArgument, why);
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.len() > MAX_NAME_LEN {
        return Err(bad(format!(
            "a host name of {} bytes is longer than {MAX_NAME_LEN}",
            bare.len()
        )));
    }
    if bare.is_empty() {
        return Err(bad(format!("{name:?} is not a host name: it is empty")));
    }
    for label in bare.split('.') {
        if label.is_empty() {
            return Err(bad(format!(
                "{name:?} is not a host name: it has an empty label"
            )));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(bad(format!(
                "{name:?} is not a host name: a label is longer than {MAX_LABEL_LEN}"
            )));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(format!(
                "{name:?} is not a host name: only ASCII letters, digits, '-' and '_' are allowed"
            )));
        }
    }
    Ok(bare)
}

/// The addresses a hosts file gives `bare`, in file order. Lines are
/// "address name [alias...]" with '#' comments; a line whose address does
/// not parse (or is not UTF-8) is skipped, as glibc does.
fn hosts_addresses(bytes: &[u8], bare: &str) -> Vec<IpAddr> {
    let mut found = Vec::new();
    for line in bytes.split(|b| *b == b'\n') {
        let line = line.split(|b| *b == b'#').next().unwrap_or_default();
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let mut words = line.split_ascii_whitespace();
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        if words.any(|w| w.strip_suffix('.').unwrap_or(w).eq_ignore_ascii_case(bare)) {
            push_unique(&mut found, [ip]);
        }
    }
    found
}

/// The servers of a resolv.conf: the first [`MAX_SERVERS`] nameserver lines.
fn parse_resolv_conf(path: &Path, bytes: &[u8]) -> Result<Vec<SocketAddr>, Failure> {
    let (config, errors) = resolv_conf::Config::parse_with_errors(bytes);
    if let Some((line, what)) = errors.iter().find_map(|e| refusal(e, bytes)) {
        return Err(Failure::new(
            Code::InvalidArgument,
            format!("{path:?} line {line}: {what}"),
        ));
    }
    let mut servers = Vec::new();
    for server in config.nameservers.iter().take(MAX_SERVERS) {
        match server {
            ScopedIp::V4(ip) => servers.push(SocketAddr::new(IpAddr::V4(*ip), DNS_PORT)),
            ScopedIp::V6(ip, None) => servers.push(SocketAddr::new(IpAddr::V6(*ip), DNS_PORT)),
            ScopedIp::V6(ip, Some(scope)) => tracing::warn!(
                "{path:?}: nameserver {ip}%{scope:?} is skipped: scoped addresses are not supported"
            ),
        }
    }
    Ok(servers)
}

/// The 1-based line and what is wrong, for a resolv.conf error that refuses
/// the file; `None` for an error in `options`, which are ignored.
fn refusal(error: &ParseError, bytes: &[u8]) -> Option<(usize, String)> {
    // resolv-conf counts lines from 0.
    let directive = |line: usize| -> String {
        let text = bytes
            .split(|b| *b == b'\n')
            .nth(line)
            .and_then(|l| std::str::from_utf8(l).ok())
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_default();
        text.chars().take(32).collect()
    };
    let (line, what) = match error {
        ParseError::InvalidOption(_) | ParseError::InvalidOptionValue(_) => return None,
        ParseError::InvalidUtf8(line, _) => (*line, "not UTF-8".to_string()),
        ParseError::InvalidValue(line) => {
            (*line, format!("{:?} lacks a valid value", directive(*line)))
        }
        ParseError::InvalidDirective(line) => {
            (*line, format!("unknown directive {:?}", directive(*line)))
        }
        ParseError::InvalidIp(line, _) => (
            *line,
            format!(
                "{:?} has a value that is not an IP address",
                directive(*line)
            ),
        ),
        ParseError::ExtraData(line) => (
            *line,
            format!("extra words after the {:?} value", directive(*line)),
        ),
    };
    Some((line.saturating_add(1), what))
}

/// One A and one AAAA query for `qname` to `server`, pipelined on one
/// connection, answered before `deadline`.
fn ask_server(
    server: SocketAddr,
    name: &str,
    qname: &Name,
    deadline: Instant,
) -> Result<Answer, ServerError> {
    let io_error = |what: &str, e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ServerError::Timeout,
        _ => ServerError::Io(Failure::io(
            format!("dns server {server}: {what} for {name:?}"),
            &e,
        )),
    };
    let id_a = random_id();
    let mut id_aaaa = random_id();
    if id_aaaa == id_a {
        id_aaaa = id_a ^ 1;
    }
    let mut queries = Vec::new();
    for (id, rtype) in [(id_a, RecordType::A), (id_aaaa, RecordType::AAAA)] {
        let bytes = query(id, qname, rtype)
            .to_vec()
            .ok()
            .filter(|b| b.len() <= usize::from(u16::MAX))
            .ok_or_else(|| {
                ServerError::Io(Failure::new(
                    Code::Einternal,
                    format!("cannot encode a dns query for {name:?}"),
                ))
            })?;
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        queries.extend_from_slice(&len.to_be_bytes());
        queries.extend_from_slice(&bytes);
    }

    let mut stream = TcpStream::connect_timeout(&server, time_left(deadline)?)
        .map_err(|e| io_error("connect", e))?;
    stream
        .set_write_timeout(Some(time_left(deadline)?))
        .map_err(|e| io_error("send", e))?;
    stream
        .write_all(&queries)
        .map_err(|e| io_error("send", e))?;

    let mut a = None;
    let mut aaaa = None;
    while a.is_none() || aaaa.is_none() {
        let reply = read_frame(&mut stream, deadline).map_err(|e| match e {
            FrameError::Closed => {
                ServerError::Reply("closed the connection before answering".to_string())
            }
            FrameError::Io(e) => io_error("receive", e),
            FrameError::Timeout => ServerError::Timeout,
        })?;
        let message = Message::from_vec(&reply)
            .map_err(|_| ServerError::Reply("sent a malformed reply".to_string()))?;
        let (slot, rtype) = if message.id() == id_a && a.is_none() {
            (&mut a, RecordType::A)
        } else if message.id() == id_aaaa && aaaa.is_none() {
            (&mut aaaa, RecordType::AAAA)
        } else {
            return Err(ServerError::Reply(
                "sent a reply whose id matches no query".to_string(),
            ));
        };
        *slot = Some(check_reply(&message, qname, rtype).map_err(ServerError::Reply)?);
    }
    match (a, aaaa) {
        (Some(a), Some(aaaa)) => combine(a, aaaa).map_err(ServerError::Reply),
        _ => Err(ServerError::Reply("sent too few replies".to_string())),
    }
}

/// A query for `qname`'s `rtype` records, class IN, recursion desired.
fn query(id: u16, qname: &Name, rtype: RecordType) -> Message {
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(qname.clone(), rtype));
    message
}

/// What `reply`, whose id is that of the `rtype` query, says; `Err` is the
/// reason it is unusable.
fn check_reply(reply: &Message, qname: &Name, rtype: RecordType) -> Result<Outcome, String> {
    if reply.message_type() != MessageType::Response {
        return Err("sent a query instead of a reply (QR clear)".to_string());
    }
    if reply.op_code() != OpCode::Query {
        return Err("sent a reply with another opcode".to_string());
    }
    if reply.truncated() {
        return Err("sent a truncated reply (TC set)".to_string());
    }
    let code = reply.response_code();
    match code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        ResponseCode::ServFail => return Ok(Outcome::Failed("replied SERVFAIL".to_string())),
        ResponseCode::Refused => return Ok(Outcome::Failed("replied REFUSED".to_string())),
        other => {
            return Ok(Outcome::Failed(format!(
                "replied with response code {}",
                u16::from(other)
            )));
        }
    }
    match reply.queries() {
        [q] if q.name() == qname && q.query_type() == rtype && q.query_class() == DNSClass::IN => {}
        _ => return Err("sent a reply to another question".to_string()),
    }
    if code == ResponseCode::NXDomain {
        return Ok(Outcome::NxDomain);
    }
    Ok(Outcome::Addresses(addresses(reply.answers(), qname, rtype)))
}

/// The `rtype` addresses in `answers` owned by `qname` or by a CNAME target
/// reached from it (at most [`MAX_CNAME_DEPTH`] steps), in section order.
fn addresses(answers: &[Record], qname: &Name, rtype: RecordType) -> Vec<IpAddr> {
    let mut owners: Vec<&Name> = vec![qname];
    let mut current = qname;
    for _ in 0..MAX_CNAME_DEPTH {
        let target = answers.iter().find_map(|r| match r.data() {
            RData::CNAME(cname) if r.dns_class() == DNSClass::IN && r.name() == current => {
                Some(&cname.0)
            }
            _ => None,
        });
        match target {
            Some(target) if !owners.contains(&target) => {
                owners.push(target);
                current = target;
            }
            _ => break,
        }
    }
    let mut found = Vec::new();
    let matching = answers
        .iter()
        .filter(|r| r.dns_class() == DNSClass::IN && owners.contains(&r.name()))
        .filter_map(|r| match (r.data(), rtype) {
            (RData::A(a), RecordType::A) => Some(IpAddr::V4(a.0)),
            (RData::AAAA(aaaa), RecordType::AAAA) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        });
    push_unique(&mut found, matching);
    found
}

/// The server's answer from the A and the AAAA reply: addresses from either
/// win; else NXDOMAIN from either; else NOERROR from both is "no
/// addresses"; else the failure (`Err`, the reason).
fn combine(a: Outcome, aaaa: Outcome) -> Result<Answer, String> {
    let mut found = Vec::new();
    for outcome in [&a, &aaaa] {
        if let Outcome::Addresses(addresses) = outcome {
            push_unique(&mut found, addresses.iter().copied());
        }
    }
    if !found.is_empty() {
        return Ok(Answer::Found(found));
    }
    match (a, aaaa) {
        (Outcome::NxDomain, _) | (_, Outcome::NxDomain) => Ok(Answer::NxDomain),
        (Outcome::Addresses(_), Outcome::Addresses(_)) => Ok(Answer::NoAddresses),
        (Outcome::Failed(reason), _) | (_, Outcome::Failed(reason)) => Err(reason),
    }
}

/// Append the addresses not yet in `list`, up to [`MAX_ADDRESSES`].
fn push_unique(list: &mut Vec<IpAddr>, addresses: impl IntoIterator<Item = IpAddr>) {
    for ip in addresses {
        if list.len() >= MAX_ADDRESSES {
            return;
        }
        if !list.contains(&ip) {
            list.push(ip);
        }
    }
}

/// Why a reply frame could not be read.
#[derive(Debug)]
enum FrameError {
    /// The server closed the connection first.
    Closed,
    /// The deadline passed.
    Timeout,
    /// Reading failed.
    Io(io::Error),
}

/// One reply: its 2-byte length, then exactly that many bytes.
fn read_frame(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; 2];
    read_full(stream, &mut prefix, deadline)?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    read_full(stream, &mut body, deadline)?;
    Ok(body)
}

/// Fill `buf` from `stream` before `deadline`; each read waits at most for
/// what is left of it.
fn read_full(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<(), FrameError> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(FrameError::Timeout);
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(FrameError::Io)?;
        match stream.read(rest) {
            Ok(0) => return Err(FrameError::Closed),
            Ok(n) => filled = filled.saturating_add(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(FrameError::Timeout);
            }
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(())
}

/// What is left before `deadline`, or [`ServerError::Timeout`].
fn time_left(deadline: Instant) -> Result<Duration, ServerError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(ServerError::Timeout)
    } else {
        Ok(left)
    }
}

/// A query id an off-path attacker cannot guess: std's randomly keyed
/// SipHash (its keys come from getrandom, which the daemon already allows
/// for hash seeds) over a counter and the time. hickory-proto keeps its own
/// random source private.
fn random_id() -> u16 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    let [b0, b1, ..] = hasher.finish().to_le_bytes();
    u16::from_le_bytes([b0, b1])
}

#[cfg(test)]
mod tests;
