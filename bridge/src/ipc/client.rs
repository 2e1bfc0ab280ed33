//! A blocking client for the daemon, used by `clawosctl`, the tests and the
//! benchmarks: over its Unix socket, or over the remote API (TLS 1.3 with
//! a client certificate, docs/remote.md).

use super::frame;
use super::proto::{Request, Response};
use crate::error::{Code, Failure};
use crate::remote::tls;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Largest response the client reads (a run's outcome holds output,
/// stdout, stderr and logs, each bounded by the daemon's limits).
pub const MAX_RESPONSE: u64 = 256 << 20;

/// How long a remote connection may take to be made.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

enum Transport {
    Unix(UnixStream),
    Tls(Box<TlsStream>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Unix(_) => "Unix",
            Transport::Tls(_) => "Tls",
        })
    }
}

/// Where and how to reach a daemon over the remote API.
#[derive(Debug, Clone)]
pub struct Remote {
    /// `HOST:PORT` (a name, an IPv4 address or `[IPv6]`).
    pub address: String,
    /// The CA that issued the daemon's certificate.
    pub ca: PathBuf,
    /// This client's certificate and key; `None` offers none (the daemon
    /// refuses such a client).
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name the daemon's certificate must carry; `None`: the host of
    /// `address`.
    pub server_name: Option<String>,
}

impl Remote {
    /// `tls://HOST:PORT` as an address; anything else is INVALID_ARGUMENT.
    pub fn parse_url(url: &str) -> Result<String, Failure> {
        let bad = |why: &str| {
            Failure::new(
                Code::InvalidArgument,
                format!("--connect {url:?}: {why}; expected tls://HOST:PORT"),
            )
        };
        let rest = url
            .strip_prefix("tls://")
            .ok_or_else(|| bad("not a tls:// URL"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        if host.is_empty() || host.contains('/') {
            return Err(bad("no host"));
        }
        port.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port is not 1-65535"))?;
        Ok(rest.to_owned())
    }

    fn host(&self) -> &str {
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(h, _)| h);
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }
}

/// A connection to the daemon.
#[derive(Debug)]
pub struct Client {
    stream: Transport,
}

impl Client {
    /// Connect to the daemon at `socket`.
    pub fn connect(socket: &Path) -> Result<Client, Failure> {
        let stream = UnixStream::connect(socket).map_err(|e| {
            Failure::io(
                format_args!(
                    "cannot connect to the daemon at {} (is clawos-wasm-daemon running?)",
                    socket.display()
                ),
                &e,
            )
        })?;
        Ok(Client {
            stream: Transport::Unix(stream),
        })
    }

    /// Connect to a daemon's remote API and complete the TLS handshake.
    pub fn connect_remote(remote: &Remote) -> Result<Client, Failure> {
        let identity = remote
            .identity
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        let config = tls::client_config(&remote.ca, identity)?;
        let name = remote.server_name.as_deref().unwrap_or(remote.host());
        let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).map_err(|_| {
            Failure::new(
                Code::InvalidArgument,
                format!("{name:?} is not a DNS name or IP address the daemon's certificate could carry"),
            )
        })?;
        let cannot = |e: &std::io::Error| {
            Failure::io(format_args!("cannot connect to {}", remote.address), e)
        };
        let addrs: Vec<_> = remote
            .address
            .to_socket_addrs()
            .map_err(|e| cannot(&e))?
            .collect();
        let mut last = None;
        let mut tcp = None;
        for addr in &addrs {
            match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = match (tcp, last) {
            (Some(t), _) => t,
            (None, Some(e)) => return Err(cannot(&e)),
            (None, None) => {
                return Err(Failure::new(
                    Code::Enoent,
                    format!("{} has no address", remote.address),
                ));
            }
        };
        let _ = tcp.set_nodelay(true);
        let conn = rustls::ClientConnection::new(Arc::clone(&config), server_name)
            .map_err(|e| Failure::new(Code::InvalidArgument, format!("TLS: {e}")))?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        // Complete the handshake now (within CONNECT_TIMEOUT), so that a
        // refused certificate is reported as such and not as a failed first
        // request. An alert from the daemon is a refusal (EPERM); a closed
        // connection or a timeout is the I/O failure it is.
        let _ = stream.sock.set_read_timeout(Some(CONNECT_TIMEOUT));
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| refusal(e, format_args!("TLS handshake with {}", remote.address)))?;
        }
        let _ = stream.sock.set_read_timeout(None);
        Ok(Client {
            stream: Transport::Tls(Box::new(stream)),
        })
    }

    /// Send `request` and wait for its response.
    pub fn request(&mut self, request: &Request) -> Result<Response, Failure> {
        match self.send_raw(&frame::encode(&request.encode())) {
            Ok(()) => self.receive(),
            // A daemon that refuses a connection answers at once, before
            // the request, and closes: the answer is waiting to be read.
            Err(sent) => match self.receive() {
                Ok(answer) => Ok(answer),
                Err(_) => Err(sent),
            },
        }
    }

    /// Send raw bytes (tests use this for malformed frames).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let sent = match &mut self.stream {
            Transport::Unix(s) => s.write_all(bytes),
            Transport::Tls(s) => s.write_all(bytes).and_then(|()| s.flush()),
        };
        sent.map_err(|e| Failure::io("cannot send to the daemon", &e))
    }

    /// Close the sending half, so the daemon sees the end of the stream.
    pub fn shutdown_write(&mut self) -> Result<(), Failure> {
        let done = match &mut self.stream {
            Transport::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            Transport::Tls(s) => {
                s.conn.send_close_notify();
                s.flush()
                    .and_then(|()| s.sock.shutdown(std::net::Shutdown::Write))
            }
        };
        done.map_err(|e| Failure::io("cannot shut down the connection", &e))
    }

    /// Read one response.
    pub fn receive(&mut self) -> Result<Response, Failure> {
        let payload = match &mut self.stream {
            Transport::Unix(s) => frame::read_blocking(s, MAX_RESPONSE),
            Transport::Tls(s) => frame::read_blocking(&mut Refusals(s), MAX_RESPONSE),
        };
        match payload? {
            Some(payload) => Response::decode(&payload),
            None => Err(Failure::new(
                Code::Eproto,
                "the daemon closed the connection without a response",
            )),
        }
    }
}

/// `e` from a TLS stream as a failure: an alert from the daemon, or a
/// certificate of the daemon's that does not verify, is EPERM.
fn refusal(e: std::io::Error, context: std::fmt::Arguments<'_>) -> Failure {
    match refused_by_tls(&e) {
        Some(why) => Failure::new(Code::Eperm, format!("{context}: {why}")),
        None => Failure::io(context, &e),
    }
}

/// Why the daemon refused this client, if `e` says it did: an alert it
/// sent, or its certificate not verifying.
fn refused_by_tls(e: &std::io::Error) -> Option<String> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(format!(
            "the daemon refused this client's TLS connection ({alert:?})"
        )),
        tls @ rustls::Error::InvalidCertificate(_) => Some(tls.to_string()),
        _ => None,
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Say goodbye properly, so the daemon sees a clean end of stream.
        if let Transport::Tls(s) = &mut self.stream {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
    }
}

/// Reads a TLS stream, reporting an alert from the daemon as the refusal it
/// is (EPERM). Under TLS 1.3 the daemon checks the client's certificate
/// after the client's side of the handshake is done, so its refusal
/// arrives on the first read.
struct Refusals<'a>(&'a mut TlsStream);

impl std::io::Read for Refusals<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf).map_err(|e| match refused_by_tls(&e) {
            Some(why) => std::io::Error::new(std::io::ErrorKind::PermissionDenied, why),
            None => e,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_tls_host_port() {
        assert_eq!(
            Remote::parse_url("tls://127.0.0.1:7443").unwrap(),
            "127.0.0.1:7443"
        );
        assert_eq!(
            Remote::parse_url("tls://[::1]:7443/").unwrap(),
            "[::1]:7443"
        );
        assert_eq!(
            Remote::parse_url("tls://appliance.lan:1").unwrap(),
            "appliance.lan:1"
        );
        for bad in [
            "127.0.0.1:7443",
            "http://h:1",
            "tls://h",
            "tls://:1",
            "tls://h:0",
            "tls://h:x",
            "tls://h:1/path",
        ] {
            assert_eq!(
                Remote::parse_url(bad).unwrap_err().code,
                Code::InvalidArgument,
                "{bad}"
            );
        }
        let r = |a: &str| Remote {
            address: a.into(),
            ca: PathBuf::new(),
            identity: None,
            server_name: None,
        };
        assert_eq!(r("[::1]:7443").host(), "::1");
        assert_eq!(r("appliance.lan:1").host(), "appliance.lan");
    }
}
