//! TLS for the remote API (rustls, ring): TLS 1.3 only, on both ends.
//! The daemon requires a client certificate that chains to one of its
//! client CAs, is within its validity and allows clientAuth
//! (rustls' `WebPkiClientVerifier`); clawosctl checks the daemon's
//! certificate against the CA it is given and the name it connects to.

use crate::error::{Code, Failure};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

/// Largest PEM file read (a chain of a few certificates is a few KiB).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// The crypto provider both ends use.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, Failure> {
    let cannot = |e: &std::io::Error| {
        Failure::io(format_args!("cannot read the {what} {}", path.display()), e)
    };
    let file = std::fs::File::open(path).map_err(|e| cannot(&e))?;
    let mut buf = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| cannot(&e))?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(Failure::new(
            Code::InvalidArgument,
            format!(
                "the {what} {} is larger than {MAX_PEM_BYTES} bytes",
                path.display()
            ),
        ));
    }
    Ok(buf)
}

fn bad_pem(path: &Path, what: &str, why: impl std::fmt::Display) -> Failure {
    Failure::new(
        Code::InvalidArgument,
        format!("the {what} {} is not usable: {why}", path.display()),
    )
}

/// Every certificate in the PEM file `path` (at least one).
pub fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, Failure> {
    let pem = read_pem(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(path, what, format_args!("bad PEM ({e})")))?;
    if certs.is_empty() {
        return Err(bad_pem(path, what, "no CERTIFICATE block in it"));
    }
    Ok(certs)
}

/// The private key in the PEM file `path`.
pub fn private_key(path: &Path, what: &str) -> Result<PrivateKeyDer<'static>, Failure> {
    let pem = read_pem(path, what)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| bad_pem(path, what, format_args!("no private key in it ({e})")))
}

/// The CAs in `path` as a root store.
fn roots(path: &Path, what: &str) -> Result<Arc<RootCertStore>, Failure> {
    let mut store = RootCertStore::empty();
    for cert in certificates(path, what)? {
        store
            .add(cert)
            .map_err(|e| bad_pem(path, what, format_args!("not a CA certificate ({e})")))?;
    }
    Ok(Arc::new(store))
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(Code::InvalidArgument, format!("{what}: {e}"))
}

/// The daemon's TLS configuration: TLS 1.3, its certificate and key, and a
/// client certificate from `client_ca` required of every client.
pub fn server_config(
    certificate: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<Arc<ServerConfig>, Failure> {
    let chain = certificates(certificate, "server certificate")?;
    let key = private_key(key, "server key")?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(client_ca, "client CA file")?,
        provider(),
    )
    .build()
    .map_err(|e| tls_error("the client CA file", e))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error("TLS 1.3", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls_error("the server certificate and key", e))?;
    // No session resumption: every connection shows its certificate.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// clawosctl's TLS configuration: TLS 1.3, the daemon's CA, and the
/// client's own certificate and key when given.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, Failure> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error("TLS 1.3", e))?
        .with_root_certificates(roots(ca, "CA file")?);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                certificates(cert, "client certificate")?,
                private_key(key, "client key")?,
            )
            .map_err(|e| tls_error("the client certificate and key", e))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Who a client certificate names, for logs: its subject's common name
/// (escaped: the client chose it) and the start of its SHA-256.
pub fn identity(cert: &CertificateDer<'_>) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(cert.as_ref());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let cn = x509_parser::parse_x509_certificate(cert.as_ref())
        .ok()
        .and_then(|(_, c)| {
            c.subject()
                .iter_common_name()
                .next()
                .and_then(|n| n.as_str().ok().map(str::to_owned))
        });
    match cn {
        Some(cn) => format!("CN={} sha256:{hex}", cn.escape_debug()),
        None => format!("(no common name) sha256:{hex}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::keys;

    #[test]
    fn files_that_are_not_keys_are_refused_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        keys::init(dir, &["localhost".to_owned()], "c1", 1).unwrap();
        let p = |f: &str| dir.join(f);
        assert!(server_config(&p("server.pem"), &p("server.key"), &p("clients-ca.pem")).is_ok());
        assert!(client_config(&p("ca.pem"), Some((&p("c1.pem"), &p("c1.key")))).is_ok());
        std::fs::write(p("junk.pem"), "root:x:0:0\n").unwrap();
        for (cert, key, ca) in [
            ("junk.pem", "server.key", "clients-ca.pem"),
            ("server.pem", "junk.pem", "clients-ca.pem"),
            ("server.pem", "server.key", "junk.pem"),
            ("server.pem", "server.key", "missing.pem"),
        ] {
            let e = server_config(&p(cert), &p(key), &p(ca)).unwrap_err();
            let bad = [cert, key, ca]
                .into_iter()
                .find(|f| f.starts_with("junk") || f.starts_with("missing"))
                .unwrap();
            assert!(e.message.contains(bad), "{}", e.message);
            assert!(!e.message.contains("root:x"), "{}", e.message);
        }
        // The key of another certificate.
        let e = server_config(&p("server.pem"), &p("c1.key"), &p("clients-ca.pem")).unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
    }

    #[test]
    fn identity_is_the_escaped_common_name_and_a_digest() {
        let ca = keys::new_ca("test CA", 1).unwrap();
        let (from, until) = keys::validity(1);
        let c = keys::issue(&ca, keys::Role::Client("ops\n1"), from, until).unwrap();
        let der = CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap();
        let id = identity(&der);
        assert!(id.starts_with("CN=ops\\n1 sha256:"), "{id}");
        assert_eq!(id.len(), "CN=ops\\n1 sha256:".len() + 16, "{id}");
    }
}
