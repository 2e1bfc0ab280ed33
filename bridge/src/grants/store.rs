//! Where grants and secrets are kept: `<state_dir>/grants/<tool>.toml` and
//! `<state_dir>/secrets/<tool>.toml`, each 0600 in a 0700 directory of
//! the daemon's state (the data partition, in the appliance), so the
//! daemon's user alone reads them. Each file is written new, synced and
//! renamed into place, then its directory synced: a crash leaves the old
//! one or the new one.
//!
//! A state without a `grants` directory is one from before grants: the
//! registry gives each tool [`Grants::legacy`], written into `grants.new`,
//! which is renamed to `grants` when every tool has its file
//! ([`GrantStore::finish_upgrade`]). Once `grants` is there, a tool
//! without a file (an install or a remove cut short, a file deleted by
//! hand) gets no grants at all, never the config's whole policy.

use super::{Grants, MAX_ENTRIES, MAX_GRANT_TEXT};
use crate::error::{Code, Failure};
use std::collections::BTreeMap;
use std::io::Read;
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
    state_dir: PathBuf,
    /// `grants`, or `grants.new` while upgrading a state from before grants.
    grants: PathBuf,
    secrets: PathBuf,
    upgrading: bool,
    /// Longest file read back: what the daemon can have written (every
    /// list full, every value as long as allowed and escaped).
    max_file_bytes: u64,
}

fn io(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Failure {
    move |e| Failure::io(context, &e)
}

fn make_dir(dir: &Path) -> Result<(), Failure> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(format_args!("cannot create {}", dir.display())))
}

/// Make what was renamed or removed in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), Failure> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format_args!("cannot sync {}", dir.display())))
}

impl GrantStore {
    /// The store under `state_dir` (its directories made 0700); values of
    /// environment variables and secrets are at most `max_value_bytes`.
    pub fn open(state_dir: &Path, max_value_bytes: usize) -> Result<GrantStore, Failure> {
        let grants = state_dir.join("grants");
        let upgrading = !grants.is_dir();
        let mut store = GrantStore {
            state_dir: state_dir.to_owned(),
            grants,
            secrets: state_dir.join("secrets"),
            upgrading,
            // Each value escaped (at most 6 bytes a byte, `\uXXXX`), each
            // other entry as long as a grant's text.
            max_file_bytes: (MAX_ENTRIES as u64)
                * (6 * max_value_bytes as u64 + 8 * MAX_GRANT_TEXT as u64)
                + 65536,
        };
        if upgrading {
            // Left by an upgrade cut short: begun again from nothing.
            store.grants = state_dir.join("grants.new");
            match std::fs::remove_dir_all(&store.grants) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Failure::io(
                        format_args!("cannot remove {}", store.grants.display()),
                        &e,
                    ));
                }
                _ => {}
            }
        }
        make_dir(&store.grants)?;
        make_dir(&store.secrets)?;
        Ok(store)
    }

    /// Is this a state from before grants (no `grants` directory)?
    pub fn upgrading(&self) -> bool {
        self.upgrading
    }

    /// The end of an upgrade: `grants.new`, holding every tool's file, becomes
    /// `grants`.
    pub fn finish_upgrade(&mut self) -> Result<(), Failure> {
        if !self.upgrading {
            return Ok(());
        }
        let done = self.state_dir.join("grants");
        sync_dir(&self.grants)?;
        std::fs::rename(&self.grants, &done)
            .map_err(io(format_args!("cannot rename {}", self.grants.display())))?;
        sync_dir(&self.state_dir)?;
        self.grants = done;
        self.upgrading = false;
        Ok(())
    }

    /// The text of `path`, if it is there, if not longer than the daemon
    /// writes.
    fn read(&self, path: &Path) -> Result<Option<String>, Failure> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Failure::io(
                    format_args!("cannot read {}", path.display()),
                    &e,
                ));
            }
        };
        let mut text = String::new();
        file.take(self.max_file_bytes + 1)
            .read_to_string(&mut text)
            .map_err(io(format_args!("cannot read {}", path.display())))?;
        if text.len() as u64 > self.max_file_bytes {
            return Err(Failure::new(
                Code::Einternal,
                format!(
                    "{} is longer than the daemon writes ({} bytes)",
                    path.display(),
                    self.max_file_bytes
                ),
            ));
        }
        Ok(Some(text))
    }

    fn grants_path(&self, tool: &str) -> PathBuf {
        self.grants.join(format!("{tool}.toml"))
    }

    fn secrets_path(&self, tool: &str) -> PathBuf {
        self.secrets.join(format!("{tool}.toml"))
    }

    /// The grants of `tool`; `None` if it has no grants file. A file that
    /// is not one the daemon writes (edited by hand) is refused, saying
    /// where and why but quoting none of it (it can hold environment
    /// values).
    pub fn load(&self, tool: &str) -> Result<Option<Grants>, Failure> {
        let path = self.grants_path(tool);
        let Some(text) = self.read(&path)? else {
            return Ok(None);
        };
        let bad = |why: String| {
            Failure::new(
                Code::Einternal,
                format!("{} is not a grants file: {why}", path.display()),
            )
        };
        let grants: Grants = toml::from_str(&text).map_err(|e| {
            bad(format!(
                "not TOML of grants (at byte {:?})",
                e.span().map(|s| s.start)
            ))
        })?;
        grants.validate().map_err(|f| bad(f.message))?;
        if let Some((what, n)) = grants.too_many() {
            return Err(bad(format!("{n} {what}; a tool may hold {MAX_ENTRIES}")));
        }
        Ok(Some(grants))
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
        let Some(text) = self.read(&path)? else {
            return Ok(Secrets::default());
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
    std::fs::rename(&fresh, path).map_err(io(format_args!("cannot write {}", path.display())))?;
    path.parent().map_or(Ok(()), sync_dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::Grant;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn grants_and_secrets_survive_a_new_store_and_are_the_daemon_s_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = GrantStore::open(dir.path(), 4096).unwrap();
        store.finish_upgrade().unwrap();
        assert_eq!(store.load("a").unwrap(), None);
        let mut g = Grants::default();
        g.apply(Grant::parse("net=10.0.0.0/8:5432").unwrap());
        g.apply(Grant::parse("env=MODE=fast").unwrap());
        store.save("a", &g).unwrap();
        assert!(store.set_secret("a", "TOKEN", Some("s3cret")).unwrap());
        let again = GrantStore::open(dir.path(), 4096).unwrap();
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
    fn a_grants_file_not_as_the_daemon_writes_it_is_refused_quoting_no_value() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = GrantStore::open(dir.path(), 4096).unwrap();
        store.finish_upgrade().unwrap();
        let path = dir.path().join("grants/t.toml");
        let many: Vec<String> = (0..=MAX_ENTRIES)
            .map(|i| format!("\"h{i}.example.org\""))
            .collect();
        for (text, why) in [
            // A quota of 0 would be no quota at all.
            ("storage_bytes = 0\n".to_owned(), "storage=0"),
            (
                "env = { \"1BAD\" = \"hidden-value\" }\n".to_owned(),
                "env=1BAD",
            ),
            (
                "env = { A = \"hidden-value\" }\nnames = [\"hidden-value\n".to_owned(),
                "at byte Some(",
            ),
            (
                "env = { A = \"hidden-value\" }\nunknown = 1\n".to_owned(),
                "at byte Some(",
            ),
            (
                format!("names = [{}]\n", many.join(",")),
                "65 names; a tool may hold 64",
            ),
            (
                format!("env = {{ A = \"{}\" }}\n", "hidden-value".repeat(400_000)),
                "longer than the daemon writes",
            ),
        ] {
            std::fs::write(&path, &text).unwrap();
            let e = store.load("t").unwrap_err();
            assert_eq!(e.code, Code::Einternal);
            assert!(e.message.contains(why), "{why}: {}", e.message);
            assert!(!e.message.contains("hidden-value"), "{}", e.message);
        }
        std::fs::write(&path, "storage_bytes = 1\n").unwrap();
        assert_eq!(store.load("t").unwrap().unwrap().storage_bytes, Some(1));
    }

    #[test]
    fn a_state_from_before_grants_is_upgraded_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        // Begun before: a grants.new left by an upgrade cut short.
        std::fs::create_dir(dir.path().join("grants.new")).unwrap();
        std::fs::write(dir.path().join("grants.new/b.toml"), "storage_bytes = 9\n").unwrap();
        let mut store = GrantStore::open(dir.path(), 4096).unwrap();
        assert!(store.upgrading());
        assert_eq!(store.load("b").unwrap(), None, "begun again from nothing");
        store.save("a", &Grants::default()).unwrap();
        // Not there until every tool has its file.
        assert!(!dir.path().join("grants").exists());
        store.finish_upgrade().unwrap();
        assert!(!store.upgrading());
        assert!(dir.path().join("grants/a.toml").is_file());
        assert!(!dir.path().join("grants.new").exists());
        assert_eq!(store.load("a").unwrap(), Some(Grants::default()));
        let again = GrantStore::open(dir.path(), 4096).unwrap();
        assert!(!again.upgrading());
        assert_eq!(again.load("a").unwrap(), Some(Grants::default()));
    }

    #[test]
    fn secrets_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = GrantStore::open(dir.path(), 4096).unwrap();
        store.finish_upgrade().unwrap();
        for i in 0..MAX_ENTRIES {
            store.set_secret("t", &format!("K{i}"), Some("v")).unwrap();
        }
        let e = store.set_secret("t", "ONE_MORE", Some("v")).unwrap_err();
        assert_eq!(e.code, Code::QuotaExceeded);
        // Replacing one is not one more.
        store.set_secret("t", "K0", Some("w")).unwrap();
    }
}
