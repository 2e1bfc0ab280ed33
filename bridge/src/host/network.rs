//! `clawos:bridge/network`: the egress proxy's tool side. The daemon opens
//! each connection after [`crate::egress`] allows it (through
//! [`Outside::connect`]) and the instance holds the socket; the tool holds
//! a handle. Connections and bytes per instance are quotas,
//! and no send or receive waits past the instance's CPU budget.

use super::wit_network::{Host, HostConnection, IpAddress};
use super::{ErrorCode, Handles, refuse};
use crate::config::NetworkPolicy;
use crate::error::{Code, Failure};
use crate::outside::Outside;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{HasData, Resource};

/// Largest single receive.
const MAX_RECEIVE: u32 = 1 << 20;

/// A proxied connection; `None` once closed.
#[derive(Debug)]
pub struct Connection {
    stream: Option<TcpStream>,
    peer: SocketAddr,
}

/// One instance's network state.
#[derive(Debug)]
pub struct NetState {
    policy: Arc<NetworkPolicy>,
    outside: Arc<dyn Outside>,
    connections: u32,
    bytes: u64,
    deadline: Instant,
    who: String,
}

impl NetState {
    /// State for an instance of `who` whose budget ends at `deadline`.
    pub fn new(
        policy: Arc<NetworkPolicy>,
        outside: Arc<dyn Outside>,
        deadline: Instant,
        who: String,
    ) -> NetState {
        NetState {
            policy,
            outside,
            connections: 0,
            bytes: 0,
            deadline,
            who,
        }
    }

    /// The time a blocking call may take: the configured timeout, never
    /// past the budget.
    fn wait(&self, configured_ms: u64) -> Result<Duration, Failure> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::new(
                Code::Etimeout,
                "the instance's cpu budget is spent",
            ));
        }
        Ok(left.min(Duration::from_millis(configured_ms)))
    }

    fn charge(&mut self, n: u64) -> Result<(), Failure> {
        let max = self.policy.max_bytes;
        if self.bytes + n > max {
            return Err(Failure::new(
                Code::QuotaExceeded,
                format!("network quota of {max} bytes per instance is spent"),
            ));
        }
        self.bytes += n;
        Ok(())
    }
}

/// The view the network interface gets.
pub struct NetworkView<'a> {
    /// The instance's handles.
    pub handles: &'a mut Handles,
    /// Its network state.
    pub net: &'a mut NetState,
}

/// Marker for the network interface's view.
pub struct NetworkHost;

impl HasData for NetworkHost {
    type Data<'a> = NetworkView<'a>;
}

type R<T> = wasmtime::Result<Result<T, ErrorCode>>;

fn wit_ip(ip: IpAddr) -> IpAddress {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            IpAddress::Ipv4((a, b, c, d))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddress::Ipv6((s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]))
        }
    }
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

impl NetworkView<'_> {
    fn answer<T>(&self, op: &str, r: Result<T, Failure>) -> R<T> {
        Ok(r.map_err(|f| refuse("network", op, &self.net.who, f)))
    }

    fn open(&mut self, host: &str, port: u16) -> Result<Resource<Connection>, Failure> {
        let policy = &self.net.policy;
        if self.net.connections >= policy.max_connections {
            return Err(Failure::new(
                Code::QuotaExceeded,
                format!(
                    "connection quota of {} per instance is spent",
                    policy.max_connections
                ),
            ));
        }
        let wait = self.net.wait(policy.connect_timeout_ms)?;
        let stream = self.net.outside.connect(host, port, wait)?;
        let peer = stream
            .peer_addr()
            .map_err(|e| Failure::io("peer address of a new connection", &e))?;
        self.net.connections += 1;
        tracing::info!(tool = %self.net.who, %peer, host, "egress connection opened");
        self.handles
            .push(Connection {
                stream: Some(stream),
                peer,
            })
            .map_err(|code| Failure::new(code.into(), "handle limit reached"))
    }

    fn stream(
        &mut self,
        handle: &Resource<Connection>,
    ) -> Result<(&mut TcpStream, SocketAddr), Failure> {
        let c = self.handles.table.get_mut(handle).map_err(|e| {
            Failure::new(super::table_error(&e).into(), "unknown connection handle")
        })?;
        let peer = c.peer;
        match c.stream.as_mut() {
            Some(s) => Ok((s, peer)),
            None => Err(Failure::new(
                Code::InvalidHandle,
                format!("connection to {peer} is closed"),
            )),
        }
    }

    fn send_bytes(&mut self, handle: &Resource<Connection>, data: &[u8]) -> Result<u32, Failure> {
        let wait = self.net.wait(self.net.policy.io_timeout_ms)?;
        self.net.charge(data.len() as u64)?;
        let (s, peer) = self.stream(handle)?;
        let sent = s.set_write_timeout(Some(wait)).and_then(|()| s.write(data));
        let n = match sent {
            Ok(n) => n,
            Err(e) if timed_out(&e) => {
                return Err(Failure::new(
                    Code::Etimeout,
                    format!("send to {peer} timed out"),
                ));
            }
            Err(e) => return Err(Failure::io(format_args!("send to {peer}"), &e)),
        };
        self.net.bytes -= (data.len() - n) as u64;
        Ok(n as u32)
    }

    fn receive_bytes(
        &mut self,
        handle: &Resource<Connection>,
        max: u32,
    ) -> Result<Vec<u8>, Failure> {
        let wait = self.net.wait(self.net.policy.io_timeout_ms)?;
        let want = max.min(MAX_RECEIVE) as u64;
        let left = self.net.policy.max_bytes.saturating_sub(self.net.bytes);
        if want > 0 && left == 0 {
            self.net.charge(1)?;
        }
        let (s, peer) = self.stream(handle)?;
        let mut buf = vec![0; want.min(left) as usize];
        let got = s
            .set_read_timeout(Some(wait))
            .and_then(|()| s.read(&mut buf));
        let n = match got {
            Ok(n) => n,
            Err(e) if timed_out(&e) => {
                return Err(Failure::new(
                    Code::Etimeout,
                    format!("receive from {peer} timed out"),
                ));
            }
            Err(e) => return Err(Failure::io(format_args!("receive from {peer}"), &e)),
        };
        buf.truncate(n);
        self.net.charge(n as u64)?;
        Ok(buf)
    }
}

impl Host for NetworkView<'_> {
    fn socket(&mut self, host: String, port: u16) -> R<Resource<Connection>> {
        let r = self.open(&host, port);
        self.answer("socket", r)
    }

    fn resolve(&mut self, name: String) -> R<Vec<IpAddress>> {
        let r = self
            .net
            .outside
            .resolve(&name)
            .map(|ips| ips.into_iter().map(wit_ip).collect());
        self.answer("resolve", r)
    }

    fn gethostname(&mut self) -> R<String> {
        let configured = &self.net.policy.hostname;
        let name = if configured.is_empty() {
            rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned()
        } else {
            configured.clone()
        };
        Ok(Ok(name))
    }
}

impl HostConnection for NetworkView<'_> {
    fn send(&mut self, handle: Resource<Connection>, data: Vec<u8>) -> R<u32> {
        let r = self.send_bytes(&handle, &data);
        self.answer("connection.send", r)
    }

    fn receive(&mut self, handle: Resource<Connection>, max: u32) -> R<Vec<u8>> {
        let r = self.receive_bytes(&handle, max);
        self.answer("connection.receive", r)
    }

    fn close(&mut self, handle: Resource<Connection>) -> R<()> {
        let r = self.stream(&handle).map(|(_, peer)| peer).and_then(|peer| {
            let c = self.handles.table.get_mut(&handle).map_err(|e| {
                Failure::new(super::table_error(&e).into(), "unknown connection handle")
            })?;
            c.stream = None;
            tracing::debug!(tool = %self.net.who, %peer, "egress connection closed");
            Ok(())
        });
        self.answer("connection.close", r)
    }

    fn drop(&mut self, handle: Resource<Connection>) -> wasmtime::Result<()> {
        self.handles.delete(handle)?;
        Ok(())
    }
}
