//! The remote API: the daemon's socket protocol (docs/ipc.md) over TCP
//! inside TLS 1.3, for the agent platform and operators elsewhere on the
//! network (docs/remote.md). Every client is authenticated by a
//! certificate from a CA in `remote.client_ca`; there is no other way in.
//! A connection takes one of `remote.max_connections` slots at accept,
//! before the handshake, and must finish the handshake within
//! `remote.handshake_timeout_ms`; after it, frames have the same limits as
//! on the Unix socket.

pub mod keys;
pub mod tls;

use crate::config::RemoteConfig;
use crate::error::{Code, Failure};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A remote client after its handshake.
#[derive(Debug, Clone)]
pub struct RemotePeer {
    /// Its address.
    pub addr: SocketAddr,
    /// Its certificate's identity ([`tls::identity`]).
    pub identity: String,
}

/// The remote API's listener.
pub struct Listener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    slots: Arc<Semaphore>,
    max: u32,
    handshake: Duration,
    addr: SocketAddr,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.addr)
            .finish()
    }
}

/// An accepted connection holding its slot, before the handshake.
pub struct Accepted {
    tcp: TcpStream,
    addr: SocketAddr,
    slot: OwnedSemaphorePermit,
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
        Ok(Some(Listener {
            tcp,
            acceptor: TlsAcceptor::from(server),
            slots: Arc::new(Semaphore::new(config.max_connections as usize)),
            max: config.max_connections,
            handshake: Duration::from_millis(config.handshake_timeout_ms),
            addr,
        }))
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next connection that gets a slot. Connections beyond
    /// `max_connections` are closed at once, before any byte is read.
    pub async fn accept(&self) -> std::io::Result<Accepted> {
        loop {
            let (tcp, addr) = self.tcp.accept().await?;
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => return Ok(Accepted { tcp, addr, slot }),
                Err(_) => tracing::warn!(
                    peer = %addr,
                    "remote connection closed at accept: {} remote connections are open (remote.max_connections)",
                    self.max
                ),
            }
        }
    }

    /// Complete the TLS handshake of `accepted` within the handshake
    /// timeout. A client without a valid certificate, or too slow, is
    /// logged and dropped.
    pub async fn handshake(
        &self,
        accepted: Accepted,
    ) -> Option<(TlsStream<TcpStream>, RemotePeer, OwnedSemaphorePermit)> {
        let Accepted { tcp, addr, slot } = accepted;
        let _ = tcp.set_nodelay(true);
        let stream = match tokio::time::timeout(self.handshake, self.acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::warn!(peer = %addr, "remote connection refused: TLS handshake failed: {e}");
                return None;
            }
            Err(_) => {
                tracing::warn!(
                    peer = %addr,
                    "remote connection refused: no TLS handshake within {} ms",
                    self.handshake.as_millis()
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
        tracing::info!(peer = %addr, client = %identity, "remote client connected");
        Some((stream, RemotePeer { addr, identity }, slot))
    }
}
