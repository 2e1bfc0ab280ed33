//! Where grants and secrets are kept: `<state_dir>/grants/<tool>.toml` and
//! `<state_dir>/secrets/<tool>.toml`, each 0600 in a 0700 directory of
//! the daemon's state (the data partition, in the appliance), so the
//! daemon's user alone reads them. Each file is written new and renamed
//! into place: a crash leaves the old one or the new one.
//!
//! A tool without a grants file was installed before grants existed: the
//! registry gives it [`Grants::legacy`] and writes that down
//! ([`crate::registry::ToolRegistry::open`]).

use super::{Grants, MAX_ENTRIES};
use crate::error::{Code, Failure};
use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A tool's secrets, by name. Its `Debug` shows names only.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secrets(pub BTreeMap<String, String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// The grants and secrets of every tool.
#[derive(Debug)]
pub struct GrantStore {
    grants: PathBuf,
    secrets: PathBuf,
}

fn io(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Failure {
    move |e| Failure::io(context, &e)
}

impl GrantStore {
    /// The store under `state_dir` (its directories made 0700).
    pub fn open(state_dir: &Path) -> Result<GrantStore, Failure> {
        let store = GrantStore {
            grants: state_dir.join("grants"),
            secrets: state_dir.join("secrets"),
        };
        for dir in [&store.grants, &store.secrets] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(format_args!("cannot create {}", dir.display())))?;
        }
        Ok(store)
    }

    fn grants_path(&self, tool: &str) -> PathBuf {
        self.grants.join(format!("{tool}.toml"))
    }

    fn secrets_path(&self, tool: &str) -> PathBuf {
        self.secrets.join(format!("{tool}.toml"))
    }

    /// The grants of `tool`; `None` if it has no grants file.
    pub fn load(&self, tool: &str) -> Result<Option<Grants>, Failure> {
        let path = self.grants_path(tool);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Failure::io(
                    format_args!("cannot read {}", path.display()),
                    &e,
                ));
            }
        };
        toml::from_str(&text).map(Some).map_err(|e| {
            Failure::new(
                Code::Einternal,
                format!("{} is not a grants file: {e}", path.display()),
            )
        })
    }

    /// Write the grants of `tool`.
    pub fn save(&self, tool: &str, grants: &Grants) -> Result<(), Failure> {
        let mut stored = grants.clone();
        // Secret names are the secrets file's.
        stored.secrets.clear();
        let text = toml::to_string(&stored)
            .map_err(|e| Failure::new(Code::Einternal, format!("cannot encode grants: {e}")))?;
        replace(&self.grants_path(tool), text.as_bytes())
    }

    /// The secrets of `tool` (none without a file).
    pub fn secrets(&self, tool: &str) -> Result<Secrets, Failure> {
        let path = self.secrets_path(tool);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Secrets::default()),
            Err(e) => {
                return Err(Failure::io(
                    format_args!("cannot read {}", path.display()),
                    &e,
                ));
            }
        };
        // The parser's message could quote a value: say only where.
        toml::from_str(&text).map_err(|e| {
            Failure::new(
                Code::Einternal,
                format!(
                    "{} is not a secrets file (at byte {:?})",
                    path.display(),
                    e.span().map(|s| s.start)
                ),
            )
        })
    }

    /// Store secret `key` of `tool` (`None`: delete it). False if deleting
    /// one that was not there.
    pub fn set_secret(&self, tool: &str, key: &str, value: Option<&str>) -> Result<bool, Failure> {
        let mut secrets = self.secrets(tool)?;
        let changed = match value {
            Some(v) => {
                if !secrets.0.contains_key(key) && secrets.0.len() >= MAX_ENTRIES {
                    return Err(Failure::new(
                        Code::QuotaExceeded,
                        format!("tool {tool:?} holds {MAX_ENTRIES} secrets already"),
                    ));
                }
                secrets.0.insert(key.to_owned(), v.to_owned());
                true
            }
            None => secrets.0.remove(key).is_some(),
        };
        if changed {
            let text = toml::to_string(&secrets)
                .map_err(|_| Failure::new(Code::Einternal, "cannot encode the secrets file"))?;
            replace(&self.secrets_path(tool), text.as_bytes())?;
        }
        Ok(changed)
    }

    /// Forget `tool`'s grants and secrets (it was removed).
    pub fn remove(&self, tool: &str) -> Result<(), Failure> {
        for path in [self.grants_path(tool), self.secrets_path(tool)] {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Failure::io(
                        format_args!("cannot remove {}", path.display()),
                        &e,
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Write `bytes` to `path` through a new 0600 file renamed over it.
fn replace(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    let fresh = path.with_extension("toml.new");
    let _ = std::fs::remove_file(&fresh);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&fresh)
        .map_err(io(format_args!("cannot create {}", fresh.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(format_args!("cannot write {}", fresh.display())))?;
    std::fs::rename(&fresh, path).map_err(io(format_args!("cannot write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::Grant;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn grants_and_secrets_survive_a_new_store_and_are_the_daemon_s_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = GrantStore::open(dir.path()).unwrap();
        assert_eq!(store.load("a").unwrap(), None);
        let mut g = Grants::default();
        g.apply(Grant::parse("net=10.0.0.0/8:5432").unwrap());
        g.apply(Grant::parse("env=MODE=fast").unwrap());
        store.save("a", &g).unwrap();
        assert!(store.set_secret("a", "TOKEN", Some("s3cret")).unwrap());
        let again = GrantStore::open(dir.path()).unwrap();
        assert_eq!(again.load("a").unwrap(), Some(g));
        assert_eq!(again.secrets("a").unwrap().0["TOKEN"], "s3cret");
        assert_eq!(again.secrets("b").unwrap(), Secrets::default());
        for (d, f) in [("grants", "a.toml"), ("secrets", "a.toml")] {
            let dmode = std::fs::metadata(dir.path().join(d))
                .unwrap()
                .permissions()
                .mode();
            let fmode = std::fs::metadata(dir.path().join(d).join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!((dmode & 0o777, fmode & 0o777), (0o700, 0o600), "{d}/{f}");
        }
        assert!(!format!("{:?}", again.secrets("a").unwrap()).contains("s3cret"));
        assert!(again.set_secret("a", "TOKEN", None).unwrap());
        assert!(!again.set_secret("a", "TOKEN", None).unwrap());
        again.remove("a").unwrap();
        assert_eq!(again.load("a").unwrap(), None);
        again.remove("a").unwrap();
    }

    #[test]
    fn secrets_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = GrantStore::open(dir.path()).unwrap();
        for i in 0..MAX_ENTRIES {
            store.set_secret("t", &format!("K{i}"), Some("v")).unwrap();
        }
        let e = store.set_secret("t", "ONE_MORE", Some("v")).unwrap_err();
        assert_eq!(e.code, Code::QuotaExceeded);
        // Replacing one is not one more.
        store.set_secret("t", "K0", Some("w")).unwrap();
    }
}
