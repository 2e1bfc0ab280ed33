//! `clawos:bridge/system`: system information, clocks, sleep bounded by the
//! CPU budget, the instance's own environment, pids and `exit`.

use super::wit_system::{Clock, Host, SystemInfo, Timestamp};
use super::{ErrorCode, SandboxTrap};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};
use wasmtime::component::HasData;

/// What an instance knows about itself.
#[derive(Debug, Clone)]
pub struct InstanceInfo {
    /// Name the tool was installed under.
    pub tool: String,
    /// Unique per daemon run.
    pub id: u64,
    /// When the instance's CPU budget runs out.
    pub deadline: Instant,
    /// The budget, for messages.
    pub budget_ms: u64,
}

/// The instance's own environment: never the daemon's. Its `Debug`
/// shows names only (secrets are values here).
#[derive(Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
    max_entries: usize,
    max_bytes: usize,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.vars.keys()).finish()
    }
}

impl Env {
    /// An environment holding `vars`, with room for `max_entries` entries of
    /// at most `max_bytes` per name or value.
    pub fn new(
        vars: impl IntoIterator<Item = (String, String)>,
        max_entries: u32,
        max_bytes: u32,
    ) -> Env {
        Env {
            vars: vars.into_iter().collect(),
            max_entries: max_entries as usize,
            max_bytes: max_bytes as usize,
        }
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Set or remove `name`.
    pub fn set(&mut self, name: String, value: Option<String>) -> Result<(), ErrorCode> {
        if name.is_empty() || name.contains(['=', '\0']) || name.len() > self.max_bytes {
            return Err(ErrorCode::InvalidArgument);
        }
        match value {
            None => {
                self.vars.remove(&name);
            }
            Some(value) => {
                if value.contains('\0') || value.len() > self.max_bytes {
                    return Err(ErrorCode::InvalidArgument);
                }
                if !self.vars.contains_key(&name) && self.vars.len() >= self.max_entries {
                    return Err(ErrorCode::QuotaExceeded);
                }
                self.vars.insert(name, value);
            }
        }
        Ok(())
    }
}

/// The system interface's view of an instance.
pub struct SystemView<'a> {
    /// The instance's environment.
    pub env: &'a mut Env,
    /// Who the instance is and its deadline.
    pub info: &'a InstanceInfo,
}

/// Marker for the system interface's view.
pub struct SystemHost;

impl HasData for SystemHost {
    type Data<'a> = SystemView<'a>;
}

fn timestamp(d: Duration) -> Timestamp {
    Timestamp {
        seconds: d.as_secs(),
        nanoseconds: d.subsec_nanos(),
    }
}

impl Host for SystemView<'_> {
    fn get_info(&mut self) -> wasmtime::Result<SystemInfo> {
        let uname = rustix::system::uname();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(SystemInfo {
            bridge_version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel: format!(
                "{} {}",
                uname.sysname().to_string_lossy(),
                uname.release().to_string_lossy()
            ),
            machine: uname.machine().to_string_lossy().into_owned(),
            cpus: u32::try_from(cpus).unwrap_or(u32::MAX),
            tool_name: self.info.tool.clone(),
            instance_id: self.info.id,
        })
    }

    fn get_time(&mut self, clock: Clock) -> wasmtime::Result<Timestamp> {
        Ok(match clock {
            Clock::Realtime => timestamp(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default(),
            ),
            Clock::Monotonic => {
                let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
                Timestamp {
                    seconds: t.tv_sec as u64,
                    nanoseconds: t.tv_nsec as u32,
                }
            }
        })
    }

    fn sleep(&mut self, nanoseconds: u64) -> wasmtime::Result<Result<(), ErrorCode>> {
        let wanted = Duration::from_nanos(nanoseconds);
        let left = self.info.deadline.saturating_duration_since(Instant::now());
        if wanted > left {
            std::thread::sleep(left);
            return Err(SandboxTrap::Deadline {
                budget_ms: self.info.budget_ms,
            }
            .into());
        }
        std::thread::sleep(wanted);
        Ok(Ok(()))
    }

    fn get_env(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self.env.get(&name).map(str::to_owned))
    }

    fn set_env(
        &mut self,
        name: String,
        value: Option<String>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        Ok(self.env.set(name, value))
    }

    fn get_pid(&mut self) -> wasmtime::Result<u32> {
        Ok(std::process::id())
    }

    fn get_ppid(&mut self) -> wasmtime::Result<u32> {
        Ok(std::os::unix::process::parent_id())
    }

    fn exit(&mut self, code: u8) -> wasmtime::Result<()> {
        Err(SandboxTrap::Exit(code).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_is_the_instances_own() {
        const NAME: &str = "CLAWOS_ENV_PROBE";
        assert!(
            std::env::var_os(NAME).is_none(),
            "{NAME} set in the test environment"
        );
        let mut env = Env::new([("A".to_owned(), "1".to_owned())], 2, 64);
        assert_eq!(env.get("A"), Some("1"));
        env.set(NAME.to_owned(), Some("2".to_owned())).unwrap();
        assert_eq!(env.get(NAME), Some("2"));
        assert!(
            std::env::var_os(NAME).is_none(),
            "set-env reached the process environment"
        );
        assert_eq!(
            env.set("C".to_owned(), Some("3".to_owned())),
            Err(ErrorCode::QuotaExceeded)
        );
        env.set("A".to_owned(), Some("9".to_owned())).unwrap();
        env.set("A".to_owned(), None).unwrap();
        assert_eq!(env.get("A"), None);
    }

    #[test]
    fn env_refuses_bad_names_and_values() {
        let mut env = Env::new([], 10, 8);
        for name in ["", "A=B", "A\0", "123456789"] {
            assert_eq!(
                env.set(name.to_owned(), Some("v".to_owned())),
                Err(ErrorCode::InvalidArgument),
                "{name:?}"
            );
        }
        assert_eq!(
            env.set("A".to_owned(), Some("123456789".to_owned())),
            Err(ErrorCode::InvalidArgument)
        );
        assert_eq!(
            env.set("A".to_owned(), Some("a\0".to_owned())),
            Err(ErrorCode::InvalidArgument)
        );
    }
}
