//! The remote API: the daemon's socket protocol (docs/ipc.md) over TCP
//! inside TLS 1.3, for the agent platform and operators elsewhere on the
//! network (docs/remote.md). Every client is authenticated by a
//! certificate from a CA in `remote.client_ca`; there is no other way in.
//! A connection takes one of `remote.max_connections` handshake slots at
//! accept, before any byte is read (at most [`HANDSHAKES_PER_ADDRESS`] of
//! them per client address), and must finish the handshake within
//! `remote.handshake_timeout_ms`; then it trades that slot for one of
//! `remote.max_connections` session slots, so that clients without a
//! certificate never hold a place an authenticated client needs. After the
//! handshake, frames have the same limits as on the Unix socket. Refusals
//! are logged at most [`REFUSALS_LOGGED`] a minute, with a count of the
//! rest, so that nobody can fill the log by knocking.

pub mod keys;
pub mod tls;

use crate::config::RemoteConfig;
use crate::error::{Code, Failure};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Handshakes one client address may have in flight at once.
pub const HANDSHAKES_PER_ADDRESS: u32 = 4;
/// Refused connections logged one by one per minute; the rest are counted.
pub const REFUSALS_LOGGED: u32 = 20;

/// A remote client after its handshake.
#[derive(Debug, Clone)]
pub struct RemotePeer {
    /// Its address.
    pub addr: SocketAddr,
    /// Its certificate's identity ([`tls::identity`]).
    pub identity: String,
}

/// The remote API's listener. Dropping it closes the port; connections in
/// flight keep their [`Gate`].
pub struct Listener {
    tcp: TcpListener,
    gate: Arc<Gate>,
    addr: SocketAddr,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.addr)
            .finish()
    }
}

/// What a connection passes through: the TLS acceptor and the slots.
pub struct Gate {
    acceptor: TlsAcceptor,
    handshakes: Arc<Semaphore>,
    sessions: Arc<Semaphore>,
    per_address: Mutex<HashMap<IpAddr, u32>>,
    max: u32,
    timeout: Duration,
    refusals: Refusals,
}

/// An accepted connection holding its handshake slot.
pub struct Accepted {
    tcp: TcpStream,
    addr: SocketAddr,
    gate: Arc<Gate>,
    slot: OwnedSemaphorePermit,
    address: AddressSlot,
}

/// One of the handshakes in flight from an address; given back when dropped.
struct AddressSlot {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self
            .gate
            .per_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// An authenticated connection, holding its session slot.
pub struct Session {
    /// The TLS stream.
    pub stream: TlsStream<TcpStream>,
    /// Who it is.
    pub peer: RemotePeer,
    /// Its session slot, given back when dropped.
    pub slot: OwnedSemaphorePermit,
}

impl Listener {
    /// Load the keys and listen as `config` says; `None` when `listen` is
    /// empty. A key that cannot be loaded or an address that cannot be
    /// bound stops the daemon, naming it.
    pub async fn bind(config: &RemoteConfig) -> Result<Option<Listener>, Failure> {
        let Some(addr) = config
            .address()
            .map_err(|e| Failure::new(Code::InvalidArgument, e.to_string()))?
        else {
            return Ok(None);
        };
        let server = tls::server_config(&config.certificate, &config.key, &config.client_ca)
            .map_err(|f| Failure::new(f.code, format!("remote API: {}", f.message)))?;
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|e| Failure::io(format_args!("remote API: cannot listen on {addr}"), &e))?;
        let addr = tcp.local_addr().unwrap_or(addr);
        let slots = config.max_connections as usize;
        Ok(Some(Listener {
            tcp,
            gate: Arc::new(Gate {
                acceptor: TlsAcceptor::from(server),
                handshakes: Arc::new(Semaphore::new(slots)),
                sessions: Arc::new(Semaphore::new(slots)),
                per_address: Mutex::new(HashMap::new()),
                max: config.max_connections,
                timeout: Duration::from_millis(config.handshake_timeout_ms),
                refusals: Refusals::default(),
            }),
            addr,
        }))
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next connection that gets a handshake slot. Others are closed at
    /// once, before any byte is read.
    pub async fn accept(&self) -> std::io::Result<Accepted> {
        let gate = &self.gate;
        loop {
            let (tcp, addr) = self.tcp.accept().await?;
            let Ok(slot) = gate.handshakes.clone().try_acquire_owned() else {
                gate.refused(
                    addr,
                    "closed at accept: every handshake slot is taken (remote.max_connections)",
                );
                continue;
            };
            {
                let mut map = gate.per_address.lock().unwrap_or_else(|p| p.into_inner());
                let n = map.entry(addr.ip()).or_insert(0);
                if *n >= HANDSHAKES_PER_ADDRESS {
                    drop(map);
                    gate.refused(
                        addr,
                        &format!("closed at accept: {HANDSHAKES_PER_ADDRESS} handshakes from this address are in flight"),
                    );
                    continue;
                }
                *n += 1;
            }
            return Ok(Accepted {
                tcp,
                addr,
                gate: gate.clone(),
                slot,
                address: AddressSlot {
                    gate: gate.clone(),
                    ip: addr.ip(),
                },
            });
        }
    }
}

impl Accepted {
    /// Complete the TLS handshake within the handshake timeout and take a
    /// session slot. A client without a valid certificate, too slow, or
    /// finding every session slot taken, is logged and dropped.
    pub async fn handshake(self) -> Option<Session> {
        let Accepted {
            tcp,
            addr,
            gate,
            slot,
            address,
        } = self;
        let _ = tcp.set_nodelay(true);
        let accepted = tokio::time::timeout(gate.timeout, gate.acceptor.accept(tcp)).await;
        // The handshake is over, whichever way: its slots go back.
        drop((slot, address));
        let stream = match accepted {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                gate.refused(addr, &format!("TLS handshake failed: {e}"));
                return None;
            }
            Err(_) => {
                gate.refused(
                    addr,
                    &format!("no TLS handshake within {} ms", gate.timeout.as_millis()),
                );
                return None;
            }
        };
        // The verifier required a certificate; without one there is no handshake.
        let identity = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(tls::identity)?;
        let Ok(slot) = gate.sessions.clone().try_acquire_owned() else {
            gate.refused(
                addr,
                &format!(
                    "{identity}: {} remote sessions are open (remote.max_connections)",
                    gate.max
                ),
            );
            return None;
        };
        tracing::info!(peer = %addr, client = %identity, "remote client connected");
        Some(Session {
            stream,
            peer: RemotePeer { addr, identity },
            slot,
        })
    }
}

impl Gate {
    fn refused(&self, addr: SocketAddr, why: &str) {
        if self.refusals.log("remote connections") {
            tracing::warn!(peer = %addr, "remote connection refused: {why}");
        }
    }
}

/// A budget of log lines per minute for refusals ([`REFUSALS_LOGGED`]).
#[derive(Debug, Default)]
pub struct Refusals {
    state: Mutex<(Option<Instant>, u32, u64)>,
}

enum Admit {
    /// Log this one, saying first how many were not.
    Log { suppressed: u64 },
    /// Count it only.
    Quiet,
}

impl Refusals {
    /// Whether to log this refusal; the first logged in a new minute is
    /// preceded by a line saying how many `what` were refused and not
    /// logged in the last.
    pub fn log(&self, what: &str) -> bool {
        match self.admit() {
            Admit::Log { suppressed } => {
                if suppressed > 0 {
                    tracing::warn!(
                        suppressed,
                        "{suppressed} more {what} were refused in the last minute and not logged"
                    );
                }
                true
            }
            Admit::Quiet => false,
        }
    }

    fn admit(&self) -> Admit {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (start, logged, suppressed) = &mut *st;
        let now = Instant::now();
        if start.is_none_or(|s| now.duration_since(s) >= Duration::from_secs(60)) {
            let was = std::mem::take(suppressed);
            *start = Some(now);
            *logged = 1;
            return Admit::Log { suppressed: was };
        }
        if *logged < REFUSALS_LOGGED {
            *logged += 1;
            Admit::Log { suppressed: 0 }
        } else {
            *suppressed += 1;
            Admit::Quiet
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_up_to_the_budget_then_counted() {
        let r = Refusals::default();
        for _ in 0..REFUSALS_LOGGED {
            assert!(matches!(r.admit(), Admit::Log { suppressed: 0 }));
        }
        for _ in 0..5 {
            assert!(matches!(r.admit(), Admit::Quiet));
        }
        // A new minute logs again and says how many were not.
        r.state.lock().unwrap().0 = Some(Instant::now() - Duration::from_secs(61));
        assert!(matches!(r.admit(), Admit::Log { suppressed: 5 }));
    }
}
