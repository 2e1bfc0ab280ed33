//! Requests and responses, and the size limit on every field. A request is
//! decoded from a frame's payload and then validated field by field; a field
//! over its limit is refused with EPROTO and a message naming it.

use crate::config::IpcLimits;
use crate::error::{Code, Failure};
use crate::registry::{MAX_NAME, ToolInfo};
use crate::runtime::outcome::RunOutcome;
use serde::{Deserialize, Serialize};

/// Longest path in an install-by-path request.
pub const MAX_PATH: usize = 4096;
/// Most environment entries in a run request.
pub const MAX_ENV: usize = 128;
/// Longest client timeout, ms (one hour).
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// A client's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Validate, precompile and store a component as a tool.
    Install {
        /// The tool's name.
        name: String,
        /// The component.
        source: ComponentSource,
        /// Replace a tool of that name if there is one (its ClawFS data
        /// stays with the name: an upgrade).
        replace: bool,
        /// What to do with ClawFS data kept under that name by a removed
        /// tool of another component.
        kept_data: KeptData,
        /// Grants, as `KIND=VALUE` (`crate::grants::Grant::parse`).
        grants: Vec<String>,
        /// Grant what the component asks for, too (within the ceilings).
        grant_requested: bool,
    },
    /// Grant and revoke, in one change: all of it or nothing.
    Grant {
        /// The tool's name.
        name: String,
        /// Grants, as `KIND=VALUE`.
        add: Vec<String>,
        /// Revokes (`crate::grants::Revoke::parse`).
        remove: Vec<String>,
    },
    /// A tool with its grants and the names of its secrets.
    Show {
        /// The tool's name.
        name: String,
    },
    /// Store (or with no value, delete) a secret of a tool. Its value
    /// goes to that tool's runs only, as an environment variable.
    Secret {
        /// The tool's name.
        name: String,
        /// The secret's name: the variable runs see.
        key: String,
        /// The value; `None` deletes it.
        value: Option<SecretValue>,
    },
    /// List installed tools.
    List,
    /// Run a tool.
    Run(RunRequest),
    /// Remove a tool and, unless `keep_data`, its ClawFS data.
    Remove {
        /// The tool's name.
        name: String,
        /// Keep `<clawfs>/<name>/`, recorded as the removed component's.
        keep_data: bool,
    },
    /// The daemon's status and counters.
    Status,
}

/// A secret's value. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretValue(pub String);

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue({} bytes)", self.0.len())
    }
}

impl From<&str> for SecretValue {
    fn from(s: &str) -> SecretValue {
        SecretValue(s.to_owned())
    }
}

/// An install's answer to ClawFS data that a removed tool left under its
/// name (`remove --keep-data`, or a remove by an older daemon). Data kept
/// by the very same component (same sha256) is its own again unless this
/// says `Discard`; other data is never handed over silently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeptData {
    /// Refuse the install (TOOL_EXISTS), naming the data and the choices.
    #[default]
    Refuse,
    /// The new component gets the data.
    Adopt,
    /// Delete the data, then install.
    Discard,
}

/// Where the component of an install comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ComponentSource {
    /// The component's bytes.
    Bytes(Vec<u8>),
    /// A path the daemon reads (root peers only).
    Path(String),
}

/// One run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    /// The tool.
    pub name: String,
    /// Arguments to `run`.
    pub args: Vec<String>,
    /// Input to `run` (and WASI stdin).
    pub input: Vec<u8>,
    /// The instance's initial environment.
    pub env: Vec<(String, String)>,
    /// End the run with ETIMEOUT after this long, if shorter than the CPU budget.
    pub timeout_ms: Option<u64>,
}

/// The daemon's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// SUCCESS or why the request failed.
    pub code: Code,
    /// What happened; empty on success.
    pub message: String,
    /// The result.
    pub body: Body,
}

/// The result part of a response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Nothing more to say (errors).
    Empty,
    /// The tool installed or removed.
    Tool(ToolInfo),
    /// Installed tools.
    Tools(Vec<ToolInfo>),
    /// A run's outcome (also for failed runs).
    Run(Box<RunOutcome>),
    /// Daemon status.
    Status(DaemonStatus),
}

/// `status`: what the daemon is and has done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// Bridge version.
    pub version: String,
    /// IPC protocol version.
    pub protocol: u16,
    /// The daemon's pid.
    pub pid: u32,
    /// Time since start, ms.
    pub uptime_ms: u64,
    /// Tools installed.
    pub tools: u32,
    /// Runs in flight now.
    pub runs_in_flight: u32,
    /// Runs allowed at once.
    pub max_concurrent_runs: u32,
    /// Runs finished since start.
    pub runs_total: u64,
    /// Of those, runs that did not end in SUCCESS.
    pub runs_failed: u64,
    /// Requests answered since start.
    pub requests_total: u64,
    /// Requests refused as malformed (EPROTO, UNSUPPORTED_VERSION).
    pub protocol_errors: u64,
    /// Connections open now.
    pub connections: u32,
    /// The pool of workers made ahead of their runs.
    pub workers: crate::sandbox::PoolStatus,
    /// Per-instance memory limit, bytes.
    pub memory_limit_bytes: u64,
    /// Per-invocation CPU budget, ms.
    pub cpu_budget_ms: u64,
    /// The eBPF monitors, when loaded (not on a development host).
    pub monitor: Option<crate::monitor::MonitorStatus>,
    /// The ClawFS partition and the per-tool quotas, where it has them
    /// (not on a development host).
    pub clawfs: Option<crate::clawfs::quota::ClawfsStatus>,
}

impl Response {
    /// A failure response.
    pub fn failure(f: &Failure) -> Response {
        Response {
            code: f.code,
            message: f.message.clone(),
            body: Body::Empty,
        }
    }

    /// A success response with `body`.
    pub fn ok(body: Body) -> Response {
        Response {
            code: Code::Success,
            message: String::new(),
            body,
        }
    }
}

fn too_big(field: &str, len: usize, max: u64) -> Failure {
    Failure::new(
        Code::Eproto,
        format!("field {field} is {len} bytes; the limit is {max}"),
    )
}

/// Most grants or revokes in one request.
pub const MAX_GRANTS: usize = 256;

fn check_grants(field: &str, list: &[String]) -> Result<(), Failure> {
    if list.len() > MAX_GRANTS {
        return Err(Failure::new(
            Code::Eproto,
            format!(
                "field {field} has {} entries; the limit is {MAX_GRANTS}",
                list.len()
            ),
        ));
    }
    for (i, g) in list.iter().enumerate() {
        check_len(
            &format!("{field}[{i}]"),
            g.len(),
            crate::grants::MAX_GRANT_TEXT as u64,
        )?;
    }
    Ok(())
}

fn check_len(field: &str, len: usize, max: u64) -> Result<(), Failure> {
    if len as u64 > max {
        Err(too_big(field, len, max))
    } else {
        Ok(())
    }
}

impl Request {
    /// Decode a request from a frame payload and check every field.
    pub fn decode(payload: &[u8], limits: &IpcLimits) -> Result<Request, Failure> {
        let request: Request = postcard::from_bytes(payload).map_err(|e| {
            Failure::new(
                Code::Eproto,
                format!("undecodable request ({} bytes): {e}", payload.len()),
            )
        })?;
        request.validate(limits)?;
        Ok(request)
    }

    /// Check every field against its limit.
    pub fn validate(&self, limits: &IpcLimits) -> Result<(), Failure> {
        let arg_max = u64::from(limits.max_arg_bytes);
        match self {
            Request::Install {
                name,
                source,
                grants,
                ..
            } => {
                check_len("install.name", name.len(), MAX_NAME as u64)?;
                check_grants("install.grants", grants)?;
                match source {
                    ComponentSource::Bytes(b) => {
                        check_len("install.component", b.len(), limits.max_component_bytes)
                    }
                    ComponentSource::Path(p) => check_len("install.path", p.len(), MAX_PATH as u64),
                }
            }
            Request::Remove { name, .. } => check_len("remove.name", name.len(), MAX_NAME as u64),
            Request::Show { name } => check_len("show.name", name.len(), MAX_NAME as u64),
            Request::Grant { name, add, remove } => {
                check_len("grant.name", name.len(), MAX_NAME as u64)?;
                check_grants("grant.add", add)?;
                check_grants("grant.remove", remove)
            }
            Request::Secret { name, key, value } => {
                check_len("secret.name", name.len(), MAX_NAME as u64)?;
                check_len("secret.key", key.len(), 128)?;
                if let Some(v) = value {
                    check_len("secret.value", v.0.len(), arg_max)?;
                }
                Ok(())
            }
            Request::List | Request::Status => Ok(()),
            Request::Run(run) => {
                check_len("run.name", run.name.len(), MAX_NAME as u64)?;
                if run.args.len() > limits.max_args as usize {
                    return Err(Failure::new(
                        Code::Eproto,
                        format!(
                            "field run.args has {} entries; the limit is {}",
                            run.args.len(),
                            limits.max_args
                        ),
                    ));
                }
                for (i, a) in run.args.iter().enumerate() {
                    check_len(&format!("run.args[{i}]"), a.len(), arg_max)?;
                }
                check_len("run.input", run.input.len(), limits.max_input_bytes)?;
                if run.env.len() > MAX_ENV {
                    return Err(Failure::new(
                        Code::Eproto,
                        format!(
                            "field run.env has {} entries; the limit is {MAX_ENV}",
                            run.env.len()
                        ),
                    ));
                }
                for (i, (k, v)) in run.env.iter().enumerate() {
                    check_len(&format!("run.env[{i}].name"), k.len(), arg_max)?;
                    check_len(&format!("run.env[{i}].value"), v.len(), arg_max)?;
                    if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                        return Err(Failure::new(
                            Code::Eproto,
                            format!("field run.env[{i}] is not NAME=VALUE"),
                        ));
                    }
                }
                if let Some(t) = run.timeout_ms
                    && (t == 0 || t > MAX_TIMEOUT_MS)
                {
                    return Err(Failure::new(
                        Code::Eproto,
                        format!("field run.timeout_ms = {t} is out of range 1..={MAX_TIMEOUT_MS}"),
                    ));
                }
                Ok(())
            }
        }
    }

    /// The payload for this request.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("requests always encode")
    }

    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Install { .. } => "install",
            Request::List => "list",
            Request::Run(_) => "run",
            Request::Remove { .. } => "remove",
            Request::Status => "status",
            Request::Grant { .. } => "grant",
            Request::Show { .. } => "show",
            Request::Secret { .. } => "secret",
        }
    }
}

impl Response {
    /// The payload for this response.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("responses always encode")
    }

    /// Decode a response payload.
    pub fn decode(payload: &[u8]) -> Result<Response, Failure> {
        postcard::from_bytes(payload)
            .map_err(|e| Failure::new(Code::Eproto, format!("undecodable response: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(f: impl FnOnce(&mut RunRequest)) -> Request {
        let mut r = RunRequest {
            name: "hello".into(),
            args: vec![],
            input: vec![],
            env: vec![],
            timeout_ms: None,
        };
        f(&mut r);
        Request::Run(r)
    }

    fn refused(req: Request) -> String {
        let limits = IpcLimits {
            max_args: 4,
            max_arg_bytes: 8,
            max_input_bytes: 16,
            max_component_bytes: 32,
            ..IpcLimits::default()
        };
        let e = Request::decode(&req.encode(), &limits).unwrap_err();
        assert_eq!(e.code, Code::Eproto);
        e.message
    }

    #[test]
    fn round_trip() {
        let req = run(|r| r.args = vec!["a".into()]);
        assert_eq!(
            Request::decode(&req.encode(), &IpcLimits::default()).unwrap(),
            req
        );
        let resp = Response::ok(Body::Tools(vec![]));
        assert_eq!(Response::decode(&resp.encode()).unwrap(), resp);
    }

    #[test]
    fn every_field_has_a_limit_named_in_the_refusal() {
        assert!(refused(run(|r| r.name = "n".repeat(65))).contains("run.name"));
        assert!(refused(run(|r| r.args = vec!["a".into(); 5])).contains("run.args has 5 entries"));
        assert!(refused(run(|r| r.args = vec!["123456789".into()])).contains("run.args[0]"));
        assert!(refused(run(|r| r.input = vec![0; 17])).contains("run.input is 17 bytes"));
        assert!(
            refused(run(|r| r.env = vec![("A".into(), "123456789".into())]))
                .contains("run.env[0].value")
        );
        assert!(refused(run(|r| r.env = vec![("A=B".into(), "v".into())])).contains("run.env[0]"));
        assert!(
            refused(run(|r| r.env = vec![("A".into(), "v".into()); 129]))
                .contains("run.env has 129")
        );
        assert!(refused(run(|r| r.timeout_ms = Some(0))).contains("run.timeout_ms"));
        let install = Request::Install {
            name: "x".into(),
            source: ComponentSource::Bytes(vec![0; 33]),
            replace: false,
            kept_data: Default::default(),
            grants: vec![],
            grant_requested: false,
        };
        assert!(refused(install).contains("install.component is 33 bytes"));
        let install = Request::Install {
            name: "x".into(),
            source: ComponentSource::Path("p".repeat(4097)),
            replace: false,
            kept_data: Default::default(),
            grants: vec![],
            grant_requested: false,
        };
        assert!(refused(install).contains("install.path"));
        assert!(
            refused(Request::Remove {
                name: "n".repeat(65),
                keep_data: false,
            })
            .contains("remove.name")
        );
        let grant = |add: Vec<String>, remove: Vec<String>| Request::Grant {
            name: "t".into(),
            add,
            remove,
        };
        assert!(
            refused(grant(vec!["env=A=b".into(); MAX_GRANTS + 1], vec![]))
                .contains("grant.add has 257 entries")
        );
        assert!(
            refused(grant(
                vec![],
                vec!["x".repeat(crate::grants::MAX_GRANT_TEXT + 1)]
            ))
            .contains("grant.remove[0]")
        );
        assert!(
            refused(Request::Show {
                name: "n".repeat(65)
            })
            .contains("show.name")
        );
        assert!(
            refused(Request::Secret {
                name: "t".into(),
                key: "K".into(),
                value: Some("123456789".into()),
            })
            .contains("secret.value")
        );
        assert!(
            refused(Request::Secret {
                name: "t".into(),
                key: "K".repeat(129),
                value: None,
            })
            .contains("secret.key")
        );
    }

    #[test]
    fn garbage_is_eproto() {
        let e = Request::decode(&[0xff, 0xff, 0xff], &IpcLimits::default()).unwrap_err();
        assert_eq!(e.code, Code::Eproto);
        assert!(
            e.message.starts_with("undecodable request"),
            "{}",
            e.message
        );
    }

    proptest! {
        // Property test standing in for a fuzz target: arbitrary payloads,
        // and valid requests with bytes flipped, never panic the decoder and
        // are either a request within every limit or an EPROTO refusal.
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let limits = IpcLimits::default();
            match Request::decode(&bytes, &limits) {
                Ok(req) => prop_assert!(req.validate(&limits).is_ok()),
                Err(e) => prop_assert_eq!(e.code, Code::Eproto),
            }
        }

        #[test]
        fn mutated_requests_never_panic(args in proptest::collection::vec(".{0,12}", 0..6), input in proptest::collection::vec(any::<u8>(), 0..32), at in any::<usize>(), byte in any::<u8>()) {
            let req = run(|r| { r.args = args; r.input = input; });
            let mut bytes = req.encode();
            let i = at % bytes.len();
            bytes[i] = byte;
            let limits = IpcLimits::default();
            if let Err(e) = Request::decode(&bytes, &limits) {
                prop_assert_eq!(e.code, Code::Eproto);
            }
        }
    }
}
