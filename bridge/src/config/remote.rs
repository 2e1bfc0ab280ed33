//! `[remote]`: the remote API, the socket protocol over TCP with TLS 1.3.
//! Every client shows a certificate issued by a CA in `client_ca`; there is
//! no other way in and no switch for one. Empty `listen` serves no remote API.

use super::{ConfigError, invalid, range};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The remote API's listener, keys and limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// Address and port to serve on ("0.0.0.0:7443"); empty: no remote API.
    pub listen: String,
    /// The daemon's certificate chain (PEM, leaf first).
    pub certificate: PathBuf,
    /// The daemon's private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// The CAs whose client certificates are accepted (PEM, one or more).
    pub client_ca: PathBuf,
    /// Remote connections served at once, besides the Unix socket's.
    pub max_connections: u32,
    /// Longest a client may take to complete the TLS handshake.
    pub handshake_timeout_ms: u64,
}

impl Default for RemoteConfig {
    fn default() -> RemoteConfig {
        RemoteConfig {
            listen: String::new(),
            certificate: PathBuf::from("/var/lib/clawos/tls/server.pem"),
            key: PathBuf::from("/var/lib/clawos/tls/server.key"),
            client_ca: PathBuf::from("/var/lib/clawos/tls/clients-ca.pem"),
            max_connections: 16,
            handshake_timeout_ms: 10_000,
        }
    }
}

impl RemoteConfig {
    /// The address to listen on, if the remote API is served.
    pub fn address(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        self.listen.parse().map(Some).map_err(|_| {
            invalid(
                "remote.listen",
                format_args!("{:?}", self.listen),
                "must be an address and port, e.g. \"0.0.0.0:7443\" or \"[::]:7443\", or empty",
            )
        })
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.address()?;
        range(
            "remote.max_connections",
            self.max_connections.into(),
            1,
            4096,
        )?;
        range(
            "remote.handshake_timeout_ms",
            self.handshake_timeout_ms,
            100,
            600_000,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_is_an_address_or_empty() {
        let mut r = RemoteConfig::default();
        assert_eq!(r.address().unwrap(), None);
        r.listen = "0.0.0.0:7443".into();
        assert_eq!(r.address().unwrap(), Some("0.0.0.0:7443".parse().unwrap()));
        r.listen = "[::]:7443".into();
        assert!(r.validate().is_ok());
        for bad in ["7443", "localhost:7443", "0.0.0.0", "0.0.0.0:70000"] {
            r.listen = bad.into();
            let err = r.validate().unwrap_err().to_string();
            assert!(err.contains("remote.listen"), "{bad}: {err}");
        }
    }
}
