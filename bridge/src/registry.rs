//! Installed tools. Each lives in `<state_dir>/tools/<name>/`: the component
//! as given (`component.wasm`), its precompiled artifact (`component.cwasm`)
//! and `tool.toml`. Installs are staged in a temporary directory and renamed
//! into place, so a crash never leaves a half-installed tool; at start every
//! tool is loaded again, and an artifact the engine can no longer load (a
//! new wasmtime, another CPU target) is recompiled from its component.
//!
//! A tool's ClawFS data, `<clawfs>/<name>/`, leaves with it: `remove`
//! deletes it unless asked to keep it, and kept data is recorded as the
//! removed component's (`tools/.kept/<name>.toml`), so that the next tool
//! installed under that name gets it only if it is the same component or
//! the operator says so ([`KeptData`]).

use crate::clawfs::quota::{Quotas, StorageUse};
use crate::error::{Code, Failure};
use crate::grants::store::{GrantStore, Secrets};
use crate::grants::{Ceilings, Effective, Grant, Grants, Revoke};
use crate::ipc::proto::KeptData;
use crate::runtime::{Prepared, Runtime};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// Longest tool name.
pub const MAX_NAME: usize = 64;
const COMPONENT: &str = "component.wasm";
const ARTIFACT: &str = "component.cwasm";
const META: &str = "tool.toml";
/// Records of kept data, in the tools directory (never a tool's name).
const KEPT: &str = ".kept";
/// Data being deleted, in the ClawFS root (never a tool's name): a delete
/// cut short is finished at the next start.
const REMOVED: &str = ".removed-";

/// Whose ClawFS data is kept under a name nobody has installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeptRecord {
    /// sha256 of the removed tool's component.
    sha256: String,
    /// When it was removed, seconds since the Unix epoch.
    removed_at: u64,
}

/// What the registry knows of an installed tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolInfo {
    /// The name it was installed under.
    pub name: String,
    /// sha256 of the component bytes, hex.
    pub sha256: String,
    /// Size of the component, bytes.
    pub component_bytes: u64,
    /// Size of the precompiled artifact, bytes.
    pub artifact_bytes: u64,
    /// When it was installed, seconds since the Unix epoch.
    pub installed_at: u64,
    /// What its ClawFS tree holds against its quota (in `list` answers
    /// where ClawFS has quotas; never stored).
    #[serde(default)]
    pub storage: Option<StorageUse>,
    /// What the component asks for (its `clawos-grants` section), if
    /// anything.
    #[serde(default)]
    pub requested: Option<Grants>,
    /// What it is granted, secret names included (in answers; never
    /// stored here: `grants::store`).
    #[serde(default)]
    pub grants: Option<Grants>,
}

/// An installed tool, linked and ready to instantiate.
pub struct InstalledTool {
    /// Its metadata.
    pub info: ToolInfo,
    /// Its linked component.
    pub prepared: Prepared,
}

/// How an install's bytes become an artifact: validated and compiled.
pub type Compile<'a> = dyn Fn(&[u8]) -> Result<Vec<u8>, Failure> + 'a;

/// The set of installed tools.
pub struct ToolRegistry {
    dir: PathBuf,
    /// The ClawFS root: tool `t`'s data is `<data>/t/`.
    data: PathBuf,
    tools: RwLock<BTreeMap<String, Arc<InstalledTool>>>,
    installing: Mutex<()>,
    /// Held while a tool's data directory is made for a run or taken away
    /// by a remove, so that a run never brings back a removed tool's data.
    /// Holds the names whose project got its limits (the tool's grant,
    /// within the config's) in this daemon's life, and which: they are set
    /// once per start and again when the grant changes.
    data_lock: Mutex<HashMap<String, (u64, u64)>>,
    /// Per-tool storage quotas, where ClawFS enforces them.
    quotas: Option<Quotas>,
    /// Every tool's grants and secrets, on disk.
    store: GrantStore,
    /// Every tool's grants, by name.
    grants: RwLock<BTreeMap<String, Grants>>,
    /// What no grant may exceed.
    ceilings: Ceilings,
}

/// What an install may do besides adding a tool, and what it grants
/// besides what a replaced tool had.
#[derive(Debug, Clone, Default)]
pub struct InstallChoices {
    /// Replace a tool of that name.
    pub replace: bool,
    /// What to do with ClawFS data a removed tool left under the name.
    pub kept_data: KeptData,
    /// Grants given with the install.
    pub grants: Vec<Grant>,
    /// Grant what the component asks for, too.
    pub requested: bool,
}

/// Refuse names that are not `[a-z0-9][a-z0-9_-]{0,63}`; a name is a
/// directory name in the state directory, so this is also what keeps it there.
pub fn validate_name(name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && (b == b'-' || b == b'_'))
        });
    if ok {
        Ok(())
    } else {
        Err(Failure::new(
            Code::InvalidArgument,
            format!(
                "invalid tool name {name:?}: use 1-{MAX_NAME} of a-z, 0-9, '-' and '_', starting with a letter or digit"
            ),
        ))
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn io(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Failure {
    move |e| Failure::io(context, &e)
}

impl ToolRegistry {
    /// Open (creating it 0700) the registry under `state_dir` and load every
    /// tool; tools' data is in the ClawFS root `data`, each tool's tree
    /// bounded by `quota` (bytes, inodes) when given.
    ///
    /// In a state from before grants, each tool is given `legacy` (the
    /// config's policy as it was: [`Grants::legacy`]), written down once.
    pub fn open(
        state_dir: &Path,
        data: &Path,
        runtime: &Runtime,
        quota: Option<(u64, u64)>,
        ceilings: Ceilings,
        legacy: &Grants,
    ) -> Result<ToolRegistry, Failure> {
        let dir = state_dir.join("tools");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(format_args!(
                "cannot create state directory {}",
                dir.display()
            )))?;
        std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format_args!("cannot restrict {}", state_dir.display())))?;
        let quotas = match quota {
            Some((bytes, inodes)) => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(data)
                    .map_err(io(format_args!(
                        "cannot create the ClawFS root {}",
                        data.display()
                    )))?;
                Some(Quotas::open(data, bytes, inodes)?)
            }
            None => None,
        };
        let mut registry = ToolRegistry {
            dir,
            data: data.to_owned(),
            tools: RwLock::new(BTreeMap::new()),
            installing: Mutex::new(()),
            data_lock: Mutex::new(HashMap::new()),
            quotas,
            store: GrantStore::open(state_dir, ceilings.env_bytes)?,
            grants: RwLock::new(BTreeMap::new()),
            ceilings,
        };
        registry.load_all(runtime)?;
        registry.load_grants(legacy)?;
        registry.finish_deletes();
        Ok(registry)
    }

    fn load_all(&self, runtime: &Runtime) -> Result<(), Failure> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(io(format_args!("cannot list {}", self.dir.display())))?;
        let mut tools = self.tools.write().map_err(|_| poisoned())?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == KEPT {
                continue;
            }
            if name.starts_with(".staging-") || name.starts_with(".old-") {
                let _ = std::fs::remove_dir_all(entry.path());
                continue;
            }
            if validate_name(&name).is_err() {
                tracing::warn!(path = %entry.path().display(), "ignoring a directory that is not a tool name");
                continue;
            }
            match load_one(runtime, &entry.path()) {
                Ok(tool) => {
                    tracing::info!(tool = %name, sha256 = %tool.info.sha256, "tool loaded");
                    tools.insert(name, Arc::new(tool));
                }
                Err(e) => {
                    tracing::error!(tool = %name, code = %e.code, "tool not loaded: {}", e.message)
                }
            }
        }
        Ok(())
    }

    /// Validate and precompile `bytes` with `compile` (the daemon's does it
    /// in a process of its own, `Sandbox::compile`), then link and store
    /// them as tool `name`.
    pub fn install(
        &self,
        runtime: &Runtime,
        compile: &Compile<'_>,
        name: &str,
        bytes: &[u8],
        given: &InstallChoices,
        who: &str,
    ) -> Result<ToolInfo, Failure> {
        let (replace, kept_data) = (given.replace, given.kept_data);
        validate_name(name)?;
        let requested = crate::grants::request::requested(bytes)?;
        let _one_at_a_time = self.installing.lock().map_err(|_| poisoned())?;
        let installed = self
            .tools
            .read()
            .map_err(|_| poisoned())?
            .contains_key(name);
        if installed && !replace {
            return Err(Failure::new(
                Code::ToolExists,
                format!("tool {name:?} is already installed (use replace)"),
            ));
        }
        // An upgrade keeps what the tool was granted; a new tool starts
        // with nothing. Checked against the ceilings before the compile.
        let mut grants = match installed {
            true => self.grants_of(name)?,
            false => Grants::default(),
        };
        if given.requested {
            for g in requested.items() {
                grants.apply(g);
            }
        }
        for g in &given.grants {
            grants.apply(g.clone());
        }
        self.ceilings.check(&grants)?;
        let sha256 = sha256_hex(bytes);
        // An installed tool's data is its own, and stays with the name when
        // it is replaced. Otherwise data under the name was left by a
        // removed tool: settled before the compile, applied after it.
        let kept = if installed {
            None
        } else {
            self.kept_data(name, &sha256, kept_data)?
        };
        let artifact = compile(bytes)?;
        let staging = self.dir.join(format!(".staging-{name}"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(io(format_args!("cannot create {}", staging.display())))?;
        let staged = (|| {
            let info = ToolInfo {
                name: name.to_owned(),
                sha256: sha256.clone(),
                component_bytes: bytes.len() as u64,
                artifact_bytes: artifact.len() as u64,
                installed_at: now_secs(),
                storage: None,
                requested: (requested != Grants::default()).then(|| requested.clone()),
                grants: None,
            };
            write(&staging.join(COMPONENT), bytes)?;
            write(&staging.join(ARTIFACT), &artifact)?;
            let meta = toml::to_string(&info).map_err(|e| {
                Failure::new(Code::Einternal, format!("cannot encode tool metadata: {e}"))
            })?;
            write(&staging.join(META), meta.as_bytes())?;
            let prepared = runtime.load_artifact(&staging.join(ARTIFACT))?;
            Ok::<_, Failure>(InstalledTool { info, prepared })
        })();
        let tool = match staged {
            Ok(tool) => tool,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        if let Some(choice) = kept {
            self.settle_kept_data(name, choice)?;
        }
        // The grants first: a tool in place always has its grants file
        // (one without, after a crash, is given none). A name not
        // installed starts clean: no secret a removed tool left behind.
        if !installed {
            self.store.remove(name)?;
        }
        self.store.save(name, &grants)?;
        let target = self.dir.join(name);
        let old = self.dir.join(format!(".old-{name}"));
        let placed = (|| {
            if target.exists() {
                std::fs::rename(&target, &old)
                    .map_err(io(format_args!("cannot move {} aside", target.display())))?;
            }
            std::fs::rename(&staging, &target).map_err(io(format_args!(
                "cannot move {} into place",
                target.display()
            )))
        })();
        if let Err(e) = placed {
            // What the operator is told failed leaves the grants as they were.
            let _ = std::fs::remove_dir_all(&staging);
            let _ = match installed {
                true => self.store.save(name, &self.grants_of(name)?),
                false => self.store.remove(name),
            };
            return Err(e);
        }
        let _ = std::fs::remove_dir_all(&old);
        let mut info = tool.info.clone();
        self.tools
            .write()
            .map_err(|_| poisoned())?
            .insert(name.to_owned(), Arc::new(tool));
        self.grants
            .write()
            .map_err(|_| poisoned())?
            .insert(name.to_owned(), grants.clone());
        tracing::info!(tool = %name, sha256 = %info.sha256, bytes = info.component_bytes, by = %who, "tool installed");
        log_grants(name, who, "installed with grants", &grants);
        if info.requested.is_some() && !given.requested {
            tracing::info!(tool = %name, requested = %describe(&requested), "the component asks for grants it was not given (install --grant-requested, or clawosctl grant)");
        }
        info.grants = Some(self.shown_grants(name, grants)?);
        Ok(info)
    }

    /// Load every tool's grants. In a state from before grants, each tool
    /// is given `legacy` and that is written down; after, a tool without a
    /// grants file is given none.
    fn load_grants(&mut self, legacy: &Grants) -> Result<(), Failure> {
        let names: Vec<String> = self
            .tools
            .read()
            .map_err(|_| poisoned())?
            .keys()
            .cloned()
            .collect();
        let legacy_fits = self.ceilings.check(legacy);
        let upgrading = self.store.upgrading();
        let mut all = BTreeMap::new();
        for name in names {
            let grants = match self.store.load(&name)? {
                Some(g) => g,
                None if upgrading => {
                    if let Err(f) = &legacy_fits {
                        return Err(Failure::new(
                            Code::SandboxSetupFailed,
                            format!(
                                "tool {name:?} was installed before per-tool grants and would get the config's network and device policy, which a tool's grants cannot hold ({}): narrow network.allow or devices.allow, or remove the tool",
                                f.message
                            ),
                        ));
                    }
                    self.store.save(&name, legacy)?;
                    tracing::warn!(tool = %name, grants = %describe(legacy), "tool installed before per-tool grants: given the config's network and device policy as its grants (clawosctl show, revoke)");
                    legacy.clone()
                }
                None => {
                    let none = Grants::default();
                    self.store.save(&name, &none)?;
                    tracing::warn!(tool = %name, "tool without a grants file (an install or remove cut short, or the file deleted): given no grants (clawosctl grant)");
                    none
                }
            };
            all.insert(name, grants);
        }
        self.store.finish_upgrade()?;
        *self.grants.write().map_err(|_| poisoned())? = all;
        Ok(())
    }

    /// The grants of installed tool `name`.
    fn grants_of(&self, name: &str) -> Result<Grants, Failure> {
        Ok(self
            .grants
            .read()
            .map_err(|_| poisoned())?
            .get(name)
            .cloned()
            .unwrap_or_default())
    }

    /// `grants` with the names of `name`'s stored secrets, for answers.
    fn shown_grants(&self, name: &str, mut grants: Grants) -> Result<Grants, Failure> {
        grants.secrets = self.store.secrets(name)?.0.into_keys().collect();
        Ok(grants)
    }

    /// Installed tool `name` with its grants and secret names (`show`).
    pub fn show(&self, name: &str) -> Result<ToolInfo, Failure> {
        let tool = self.get(name)?;
        let mut info = tool.info.clone();
        info.storage = self.storage(name);
        info.grants = Some(self.shown_grants(name, self.grants_of(name)?)?);
        Ok(info)
    }

    /// Grant `add` and take `remove` from tool `name`, as `who`; the new
    /// grants must be within the ceilings. Runs from now on get them.
    pub fn change_grants(
        &self,
        name: &str,
        add: &[Grant],
        remove: &[Revoke],
        who: &str,
    ) -> Result<ToolInfo, Failure> {
        validate_name(name)?;
        let _one_at_a_time = self.installing.lock().map_err(|_| poisoned())?;
        self.get(name)?;
        let mut grants = self.grants_of(name)?;
        for g in add {
            grants.apply(g.clone());
        }
        let mut missing = Vec::new();
        for r in remove {
            if !grants.revoke(r) {
                missing.push(r.to_string());
            }
        }
        if !missing.is_empty() {
            return Err(Failure::new(
                Code::InvalidArgument,
                format!(
                    "tool {name:?} does not hold {}; nothing was changed",
                    missing.join(", ")
                ),
            ));
        }
        self.ceilings.check(&grants)?;
        self.store.save(name, &grants)?;
        self.grants
            .write()
            .map_err(|_| poisoned())?
            .insert(name.to_owned(), grants.clone());
        for g in add {
            tracing::info!(tool = %name, by = %who, grant = %g, "grant given");
        }
        for r in remove {
            tracing::info!(tool = %name, by = %who, revoke = %r, "grant revoked");
        }
        self.show(name)
    }

    /// Store secret `key` of tool `name` (`None`: delete it), as `who`.
    /// The value is never logged.
    pub fn set_secret(
        &self,
        name: &str,
        key: &str,
        value: Option<&str>,
        who: &str,
    ) -> Result<ToolInfo, Failure> {
        validate_name(name)?;
        let _one_at_a_time = self.installing.lock().map_err(|_| poisoned())?;
        self.get(name)?;
        if !crate::grants::env_name_ok(key) {
            return Err(Failure::new(
                Code::InvalidArgument,
                format!(
                    "secret name {:?}: letters, digits and '_', not starting with a digit",
                    key.chars().take(80).collect::<String>()
                ),
            ));
        }
        if let Some(v) = value
            && (v.len() > self.ceilings.env_bytes || v.contains('\0'))
        {
            return Err(Failure::new(
                Code::InvalidArgument,
                format!(
                    "secret {key}: a value is at most {} bytes (ipc.max_arg_bytes), without NUL",
                    self.ceilings.env_bytes
                ),
            ));
        }
        if !self.store.set_secret(name, key, value)? {
            return Err(Failure::new(
                Code::InvalidArgument,
                format!("tool {name:?} has no secret {key}"),
            ));
        }
        match value {
            Some(_) => tracing::info!(tool = %name, by = %who, secret = %key, "secret stored"),
            None => tracing::info!(tool = %name, by = %who, secret = %key, "secret deleted"),
        }
        self.show(name)
    }

    /// Where the precompiled artifact of tool `name` is (the sandbox's
    /// launcher loads it from there).
    pub fn artifact(&self, name: &str) -> PathBuf {
        self.dir.join(name).join(ARTIFACT)
    }

    /// The installed tool `name`, or TOOL_NOT_FOUND.
    pub fn get(&self, name: &str) -> Result<Arc<InstalledTool>, Failure> {
        validate_name(name)?;
        self.tools
            .read()
            .map_err(|_| poisoned())?
            .get(name)
            .cloned()
            .ok_or_else(|| {
                Failure::new(
                    Code::ToolNotFound,
                    format!("no tool named {name:?} is installed"),
                )
            })
    }

    /// The ClawFS directory of `tool` for a run, made (0700) if missing, as
    /// long as `tool` is still what is installed under its name: a run that
    /// waited through a remove gets TOOL_NOT_FOUND, one that waited through
    /// a replace by another component EAGAIN.
    ///
    /// With it, what the run is given: the tool's grants within the
    /// ceilings as they are now (a revoke holds from here), and its secrets,
    /// read under the same check, so that they are `tool`'s own.
    pub fn prepare_run(
        &self,
        tool: &Arc<InstalledTool>,
    ) -> Result<(PathBuf, Effective, Secrets), Failure> {
        let name = &tool.info.name;
        // Held to the end: a remove, which a new tool under the name (and
        // its secrets) must wait for, takes it too.
        let mut quota_set = self.data_lock.lock().map_err(|_| poisoned())?;
        match self.tools.read().map_err(|_| poisoned())?.get(name) {
            None => {
                return Err(Failure::new(
                    Code::ToolNotFound,
                    format!("tool {name:?} was removed while this run waited"),
                ));
            }
            Some(now) if now.info.sha256 != tool.info.sha256 => {
                return Err(Failure::new(
                    Code::Eagain,
                    format!("tool {name:?} was replaced while this run waited; run it again"),
                ));
            }
            Some(_) => {}
        }
        let dir = self.data.join(name);
        match std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
        {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(Failure::new(
                    Code::SandboxSetupFailed,
                    format!("cannot create the ClawFS directory {}: {e}", dir.display()),
                ));
            }
            _ => {}
        }
        // Checked at every run (a directory made again by hand is labelled
        // again); the limits (the tool's grant within the config's) are set
        // once per start, so that the config's apply, and again when the
        // grant changes.
        if let Some(quotas) = &self.quotas {
            let limits = self.ceilings.effective(&self.grants_of(name)?).storage;
            let set = quota_set.get(name) != Some(&limits);
            let (project, labelled) = quotas.assign(&dir, limits, set)?;
            if labelled {
                tracing::info!(tool = %name, project, "storage quota set: the tool's tree is a project of its own");
            }
            quota_set.insert(name.clone(), limits);
        }
        let effective = self.ceilings.effective(&self.grants_of(name)?);
        Ok((dir, effective, self.store.secrets(name)?))
    }

    /// What tool `name`'s tree holds against its quota: None without
    /// quotas, or before the tool's first run.
    pub fn storage(&self, name: &str) -> Option<StorageUse> {
        let quotas = self.quotas.as_ref()?;
        quotas
            .usage(&self.data.join(name))
            .inspect_err(|f| tracing::warn!(tool = %name, "{}", f.message))
            .ok()
            .flatten()
    }

    /// Every installed tool, by name.
    pub fn list(&self) -> Vec<ToolInfo> {
        self.tools
            .read()
            .map(|t| t.values().map(|t| t.info.clone()).collect())
            .unwrap_or_default()
    }

    /// The ClawFS partition's use, where it has quotas.
    pub fn clawfs_status(&self) -> Option<crate::clawfs::quota::ClawfsStatus> {
        let quotas = self.quotas.as_ref()?;
        let tools_bytes = self
            .list()
            .iter()
            .filter_map(|t| self.storage(&t.name))
            .map(|u| u.bytes)
            .sum();
        quotas
            .status(tools_bytes)
            .inspect_err(|f| tracing::warn!("{}", f.message))
            .ok()
    }

    /// Every installed tool with what its tree holds.
    pub fn list_with_storage(&self) -> Vec<ToolInfo> {
        let mut tools = self.list();
        for t in &mut tools {
            t.storage = self.storage(&t.name);
        }
        tools
    }

    /// Remove the tool called `name` and, unless `keep_data`, its ClawFS
    /// data (kept data is recorded as this component's). Runs in flight
    /// keep their instance.
    pub fn remove(&self, name: &str, keep_data: bool) -> Result<ToolInfo, Failure> {
        validate_name(name)?;
        let _one_at_a_time = self.installing.lock().map_err(|_| poisoned())?;
        let tool = self
            .tools
            .read()
            .map_err(|_| poisoned())?
            .get(name)
            .cloned()
            .ok_or_else(|| {
                Failure::new(
                    Code::ToolNotFound,
                    format!("no tool named {name:?} is installed"),
                )
            })?;
        // The data first (kept and recorded, or moved out of every tool's
        // reach), so that a failure there changes nothing; the tool leaves
        // the registry under the same lock, so no run makes its directory
        // again afterwards (`prepare_run`).
        let data = self.data.join(name);
        let doomed = {
            let mut quota_set = self.data_lock.lock().map_err(|_| poisoned())?;
            quota_set.remove(name);
            let doomed = match keep_data {
                true if data.is_dir() => {
                    self.record_kept(name, &tool.info.sha256)?;
                    None
                }
                true => None,
                false => self.take_data(name)?,
            };
            self.tools.write().map_err(|_| poisoned())?.remove(name);
            doomed
        };
        // Its grants and secrets before its files: a tool installed under
        // this name later starts with nothing, whatever happens below.
        self.grants.write().map_err(|_| poisoned())?.remove(name);
        self.store.remove(name)?;
        let path = self.dir.join(name);
        std::fs::remove_dir_all(&path)
            .map_err(io(format_args!("cannot remove {}", path.display())))?;
        match (keep_data, doomed) {
            (true, _) if data.is_dir() => {
                tracing::info!(tool = %name, data = %data.display(), "tool removed; its data is kept")
            }
            (_, Some(doomed)) => {
                finish_delete(name, &doomed);
                tracing::info!(tool = %name, "tool removed with its data");
            }
            _ => tracing::info!(tool = %name, "tool removed; it had no data"),
        }
        Ok(tool.info.clone())
    }

    /// What an install of a new tool `name` (component `sha256`) does with
    /// data left under the name: `None` if there is none or it is this
    /// component's; the choice to apply; TOOL_EXISTS when refused.
    fn kept_data(
        &self,
        name: &str,
        sha256: &str,
        choice: KeptData,
    ) -> Result<Option<KeptData>, Failure> {
        let data = self.data.join(name);
        let record = self.kept_record(name);
        if !data.is_dir() {
            // A record without data (deleted by hand) is stale.
            return Ok(record.map(|_| KeptData::Discard));
        }
        let owner = record.as_ref().map(|r| r.sha256.as_str());
        if choice == KeptData::Discard {
            return Ok(Some(KeptData::Discard));
        }
        if owner == Some(sha256) {
            return Ok(Some(KeptData::Adopt));
        }
        if choice == KeptData::Refuse {
            let whose = match owner {
                Some(sha) => format!("a removed tool (component sha256 {sha})"),
                None => "an earlier tool of this name (component unknown)".to_owned(),
            };
            return Err(Failure::new(
                Code::ToolExists,
                format!(
                    "ClawFS data of {whose} is kept in {}; install with adopt-data (clawosctl --adopt-data) to give it to this component, or discard-data (--discard-data) to delete it first",
                    data.display()
                ),
            ));
        }
        Ok(Some(choice))
    }

    /// Apply an install's choice about data kept under `name`.
    fn settle_kept_data(&self, name: &str, choice: KeptData) -> Result<(), Failure> {
        match choice {
            KeptData::Discard => {
                let doomed = {
                    let mut quota_set = self.data_lock.lock().map_err(|_| poisoned())?;
                    quota_set.remove(name);
                    self.take_data(name)?
                };
                if let Some(doomed) = doomed {
                    finish_delete(name, &doomed);
                    tracing::info!(tool = %name, "kept data discarded at install");
                }
            }
            KeptData::Adopt | KeptData::Refuse => {
                tracing::info!(tool = %name, data = %self.data.join(name).display(), "kept data adopted at install");
            }
        }
        let record = self.dir.join(KEPT).join(format!("{name}.toml"));
        match std::fs::remove_file(&record) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Failure::io(
                format_args!("cannot remove {}", record.display()),
                &e,
            )),
            _ => Ok(()),
        }
    }

    fn kept_record(&self, name: &str) -> Option<KeptRecord> {
        let path = self.dir.join(KEPT).join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&path).ok()?;
        match toml::from_str(&text) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(path = %path.display(), "unreadable record of kept data, taken as of an unknown component: {e}");
                None
            }
        }
    }

    fn record_kept(&self, name: &str, sha256: &str) -> Result<(), Failure> {
        let dir = self.dir.join(KEPT);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(format_args!("cannot create {}", dir.display())))?;
        let record = KeptRecord {
            sha256: sha256.to_owned(),
            removed_at: now_secs(),
        };
        let text = toml::to_string(&record).map_err(|e| {
            Failure::new(
                Code::Einternal,
                format!("cannot encode a kept-data record: {e}"),
            )
        })?;
        let path = dir.join(format!("{name}.toml"));
        let fresh = dir.join(format!(".{name}.toml.new"));
        let _ = std::fs::remove_file(&fresh);
        write(&fresh, text.as_bytes())?;
        std::fs::rename(&fresh, &path).map_err(io(format_args!("cannot write {}", path.display())))
    }

    /// Move `<data>/<name>/` out of every tool's reach (a name no tool can
    /// have), to be deleted: where it went, or `None` if there was no data.
    fn take_data(&self, name: &str) -> Result<Option<PathBuf>, Failure> {
        let data = self.data.join(name);
        let doomed = self.data.join(format!("{REMOVED}{name}-{}", now_nanos()));
        match std::fs::rename(&data, &doomed) {
            Ok(()) => Ok(Some(doomed)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Failure::io(
                format_args!(
                    "cannot delete the data of tool {name:?}, {}",
                    data.display()
                ),
                &e,
            )),
        }
    }

    /// Finish deletes cut short (a crash, or a run that kept writing).
    fn finish_deletes(&self) {
        let Ok(entries) = std::fs::read_dir(&self.data) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(REMOVED)
                && let Err(e) = std::fs::remove_dir_all(entry.path())
            {
                tracing::warn!(path = %entry.path().display(), "cannot delete a removed tool's data: {e}");
            }
        }
    }
}

/// Delete data taken out of reach, without following any link the tool
/// made in it. Whatever a run still in flight writes there meanwhile is
/// deleted at the next start.
fn finish_delete(name: &str, doomed: &Path) {
    if let Err(e) = std::fs::remove_dir_all(doomed) {
        tracing::warn!(tool = %name, path = %doomed.display(), "the tool's data is out of reach but not yet deleted (at the next start): {e}");
    }
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Grants as one line for the log (environment values and secrets left out).
pub fn describe(grants: &Grants) -> String {
    let items: Vec<String> = grants.items().iter().map(ToString::to_string).collect();
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(" ")
    }
}

fn log_grants(name: &str, who: &str, what: &str, grants: &Grants) {
    tracing::info!(tool = %name, by = %who, grants = %describe(grants), "{what}");
}

fn poisoned() -> Failure {
    Failure::new(
        Code::Einternal,
        "registry lock poisoned by an earlier panic",
    )
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format_args!("cannot create {}", path.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(format_args!("cannot write {}", path.display())))
}

use std::os::unix::fs::OpenOptionsExt;

/// Load the tool in `dir`, recompiling its artifact if this engine cannot load it.
fn load_one(runtime: &Runtime, dir: &Path) -> Result<InstalledTool, Failure> {
    let meta_path = dir.join(META);
    let text = std::fs::read_to_string(&meta_path)
        .map_err(io(format_args!("cannot read {}", meta_path.display())))?;
    let mut info: ToolInfo = toml::from_str(&text).map_err(|e| {
        Failure::new(
            Code::WasmInvalidComponent,
            format!("invalid {}: {e}", meta_path.display()),
        )
    })?;
    info.storage = None;
    // Its grants and secrets are found by this name: it must be the
    // directory's.
    if dir.file_name() != Some(std::ffi::OsStr::new(&info.name)) {
        return Err(Failure::new(
            Code::WasmInvalidComponent,
            format!(
                "{} names the tool {:?}, not its directory's name",
                meta_path.display(),
                info.name.chars().take(80).collect::<String>()
            ),
        ));
    }
    let artifact = dir.join(ARTIFACT);
    match runtime.load_artifact(&artifact) {
        Ok(prepared) => Ok(InstalledTool { info, prepared }),
        Err(e) if e.code == Code::WasmInvalidComponent => {
            tracing::warn!(path = %artifact.display(), "artifact does not load ({}); recompiling from the component", e.message);
            let component = dir.join(COMPONENT);
            let bytes = std::fs::read(&component)
                .map_err(io(format_args!("cannot read {}", component.display())))?;
            if sha256_hex(&bytes) != info.sha256 {
                return Err(Failure::new(
                    Code::WasmInvalidComponent,
                    format!("{} does not match its recorded sha256", component.display()),
                ));
            }
            let compiled = runtime.precompile(&bytes)?;
            let fresh = dir.join(".component.cwasm.new");
            let _ = std::fs::remove_file(&fresh);
            write(&fresh, &compiled)?;
            std::fs::rename(&fresh, &artifact)
                .map_err(io(format_args!("cannot replace {}", artifact.display())))?;
            info.artifact_bytes = compiled.len() as u64;
            let prepared = runtime.load_artifact(&artifact)?;
            Ok(InstalledTool { info, prepared })
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_stay_in_the_state_directory() {
        for ok in ["hello", "a", "echo-2", "x_y", &"a".repeat(64)] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "..",
            ".",
            "a/b",
            "Hello",
            "-x",
            "_x",
            "a b",
            "é",
            &"a".repeat(65),
            "a\0",
        ] {
            let e = validate_name(bad).unwrap_err();
            assert_eq!(e.code, Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn sha256_is_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
