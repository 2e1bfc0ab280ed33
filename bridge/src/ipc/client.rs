//! A blocking client for the daemon's socket, used by `clawosctl`, the tests
//! and the benchmarks.

use super::frame;
use super::proto::{Request, Response};
use crate::error::{Code, Failure};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Largest response the client reads (a run's outcome holds output,
/// stdout, stderr and logs, each bounded by the daemon's limits).
pub const MAX_RESPONSE: u64 = 256 << 20;

/// A connection to the daemon.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
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
        Ok(Client { stream })
    }

    /// Send `request` and wait for its response.
    pub fn request(&mut self, request: &Request) -> Result<Response, Failure> {
        self.send_raw(&frame::encode(&request.encode()))?;
        self.receive()
    }

    /// Send raw bytes (tests use this for malformed frames).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.stream
            .write_all(bytes)
            .map_err(|e| Failure::io("cannot send to the daemon", &e))
    }

    /// Close the sending half, so the daemon sees the end of the stream.
    pub fn shutdown_write(&mut self) -> Result<(), Failure> {
        self.stream
            .shutdown(std::net::Shutdown::Write)
            .map_err(|e| Failure::io("cannot shut down the connection", &e))
    }

    /// Read one response.
    pub fn receive(&mut self) -> Result<Response, Failure> {
        match frame::read_blocking(&mut self.stream, MAX_RESPONSE)? {
            Some(payload) => Response::decode(&payload),
            None => Err(Failure::new(
                Code::Eproto,
                "the daemon closed the connection without a response",
            )),
        }
    }
}
