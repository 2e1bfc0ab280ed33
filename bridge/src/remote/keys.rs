//! `clawosctl keys`: the certificates the remote API needs, made with rcgen.
//! One CA issues the appliance's server certificate (extended key usage
//! serverAuth, the names clients connect to) and each client's certificate
//! (clientAuth, its name as the subject's common name, which the daemon's
//! logs show). Keys are ECDSA P-256. An operator with a PKI of their own
//! uses its files instead: the daemon and clawosctl read any PEM.

use crate::error::{Code, Failure};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy)]
pub enum Role<'a> {
    /// The daemon: these DNS names and IP addresses (the first is also the
    /// subject's common name).
    Server(&'a [String]),
    /// A client called this (the subject's common name).
    Client(&'a str),
}

/// The file names `clawosctl keys init` writes into its directory.
pub const CA: &str = "ca";
/// The daemon's certificate and key.
pub const SERVER: &str = "server";
/// The file the appliance reads its trusted client CAs from (a copy of
/// the CA's certificate).
pub const CLIENTS_CA: &str = "clients-ca.pem";

fn failed(what: &str, e: rcgen::Error) -> Failure {
    Failure::new(Code::InvalidArgument, format!("{what}: {e}"))
}

/// The validity of a certificate made now: from an hour ago (clocks of
/// client and appliance differ) for `days` days.
pub fn validity(days: u32) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (
        now - Duration::hours(1),
        now + Duration::days(i64::from(days)),
    )
}

/// A new CA called `name`, valid for `days`.
pub fn new_ca(name: &str, days: u32) -> Result<Issued, Failure> {
    let mut params = CertificateParams::new(Vec::new()).map_err(|e| failed("CA", e))?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params.not_before, params.not_after) = validity(days);
    let key = KeyPair::generate().map_err(|e| failed("CA key", e))?;
    let cert = params.self_signed(&key).map_err(|e| failed("CA", e))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A certificate for `role` issued by `ca`, valid from `not_before` to
/// `not_after`.
pub fn issue(
    ca: &Issued,
    role: Role<'_>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<Issued, Failure> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| failed("the CA's key", e))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)
        .map_err(|e| failed("the CA's certificate", e))?;
    let mut params = match role {
        Role::Server(names) => {
            let first = names.first().ok_or_else(|| {
                Failure::new(Code::InvalidArgument, "a server certificate needs a name")
            })?;
            let mut p =
                CertificateParams::new(names.to_vec()).map_err(|e| failed("server names", e))?;
            p.distinguished_name
                .push(DnType::CommonName, first.as_str());
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            p
        }
        Role::Client(name) => {
            let mut p = CertificateParams::new(Vec::new()).map_err(|e| failed("client", e))?;
            p.distinguished_name.push(DnType::CommonName, name);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            p
        }
    };
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate().map_err(|e| failed("key", e))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| failed("certificate", e))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Write `contents` to a new file `path` with `mode`; an existing file is
/// never replaced.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), Failure> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Failure::io(format_args!("cannot create {}", path.display()), &e))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Failure::io(format_args!("cannot write {}", path.display()), &e))
}

fn write_pair(dir: &Path, name: &str, issued: &Issued) -> Result<[PathBuf; 2], Failure> {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    for p in [&cert, &key] {
        if p.exists() {
            return Err(Failure::new(
                Code::ToolExists,
                format!("{} exists; keys are never overwritten", p.display()),
            ));
        }
    }
    write_new(&cert, &issued.cert_pem, 0o644)?;
    write_new(&key, &issued.key_pem, 0o600)?;
    Ok([cert, key])
}

fn check_client_name(name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok && !name.starts_with('.') && name != CA && name != SERVER {
        return Ok(());
    }
    Err(Failure::new(
        Code::InvalidArgument,
        format!(
            "client name {name:?}: 1-64 of a-z, A-Z, 0-9, '-', '_', '.', not starting with '.', not \"ca\" or \"server\""
        ),
    ))
}

/// Make `dir` (created 0700 if missing) hold a new CA (`ca.pem`, `ca.key`),
/// the daemon's certificate for `server_names` (`server.pem`,
/// `server.key`), `clients-ca.pem`, and a first client certificate
/// (`<client>.pem`, `<client>.key`). Returns the files written.
pub fn init(
    dir: &Path,
    server_names: &[String],
    client: &str,
    days: u32,
) -> Result<Vec<PathBuf>, Failure> {
    check_client_name(client)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Failure::io(format_args!("cannot create {}", dir.display()), &e))?;
    let ca_file = dir.join(format!("{CA}.pem"));
    if ca_file.exists() {
        return Err(Failure::new(
            Code::ToolExists,
            format!(
                "{} exists: this directory has a CA already (clawosctl keys client adds a client)",
                ca_file.display()
            ),
        ));
    }
    let ca = new_ca("ClawOS appliance CA", days)?;
    let (from, until) = validity(days);
    let server = issue(&ca, Role::Server(server_names), from, until)?;
    let mut written = Vec::new();
    written.extend(write_pair(dir, CA, &ca)?);
    written.extend(write_pair(dir, SERVER, &server)?);
    let clients_ca = dir.join(CLIENTS_CA);
    write_new(&clients_ca, &ca.cert_pem, 0o644)?;
    written.push(clients_ca);
    written.extend(add_client(dir, client, days)?);
    Ok(written)
}

/// Issue a certificate for client `name` from the CA in `dir`, into
/// `dir/<name>.pem` and `dir/<name>.key`.
pub fn add_client(dir: &Path, name: &str, days: u32) -> Result<Vec<PathBuf>, Failure> {
    check_client_name(name)?;
    let read = |file: &str| {
        let p = dir.join(file);
        std::fs::read_to_string(&p)
            .map_err(|e| Failure::io(format_args!("cannot read {}", p.display()), &e))
    };
    let ca = Issued {
        cert_pem: read(&format!("{CA}.pem"))?,
        key_pem: read(&format!("{CA}.key"))?,
    };
    let (from, until) = validity(days);
    let client = issue(&ca, Role::Client(name), from, until)?;
    Ok(write_pair(dir, name, &client)?.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_every_file_once_with_private_keys_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
        let written = init(&dir, &names, "platform", 30).unwrap();
        let mut got: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                "ca.key",
                "ca.pem",
                "clients-ca.pem",
                "platform.key",
                "platform.pem",
                "server.key",
                "server.pem"
            ]
        );
        use std::os::unix::fs::PermissionsExt;
        for p in &written {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            let want = if p.extension().unwrap() == "key" {
                0o600
            } else {
                0o644
            };
            assert_eq!(mode, want, "{}", p.display());
        }
        let again = init(&dir, &names, "platform", 30).unwrap_err();
        assert_eq!(again.code, Code::ToolExists);
        assert_eq!(
            add_client(&dir, "platform", 30).unwrap_err().code,
            Code::ToolExists
        );
        assert_eq!(add_client(&dir, "second", 30).unwrap().len(), 2);
        for bad in ["", "../x", ".hidden", "ca", "server", "a b"] {
            assert_eq!(
                add_client(&dir, bad, 1).unwrap_err().code,
                Code::InvalidArgument,
                "{bad:?}"
            );
        }
    }
}
