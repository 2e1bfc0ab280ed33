//! The server: a Unix socket, peer credentials checked per connection,
//! bounded connections and runs (EAGAIN when full), one response per
//! request, and graceful shutdown. Runs execute on blocking threads; a run
//! that traps, overruns or exhausts its limits ends with its code and the
//! daemon keeps serving.

use crate::config::Config;
use crate::error::{Code, Failure};
use crate::escape;
use crate::grants::{Ceilings, Grant, Grants, Revoke};
use crate::ipc::frame;
use crate::ipc::proto::{Body, ComponentSource, DaemonStatus, Request, Response, RunRequest};
use crate::monitor::Monitor;
use crate::registry::{InstallChoices, ToolRegistry};
use crate::remote;
use crate::runtime::{RunInput, Runtime};
use crate::sandbox::Sandbox;
use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

mod connections;
mod peer;
use connections::{Connections, Full, Place};

/// How long an open connection may sit idle between requests.
const IDLE: Duration = Duration::from_secs(300);
/// How long the answer to a refused connection may take to be written.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// The line printed when the daemon is ready; the appliance's init and the
/// tests wait for it.
pub const READY_MARKER: &str = "clawos-wasm-daemon ready";

#[derive(Default)]
struct Counters {
    runs_total: AtomicU64,
    runs_failed: AtomicU64,
    requests_total: AtomicU64,
    protocol_errors: AtomicU64,
    connections: AtomicU32,
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
enum Peer {
    /// A process on the Unix socket, by its credentials.
    Local {
        /// Its uid.
        uid: u32,
    },
    /// A client of the remote API, by its certificate.
    Remote(remote::RemotePeer),
}

/// The daemon's shared state.
pub struct Daemon {
    config: Config,
    runtime: Arc<Runtime>,
    sandbox: Arc<Sandbox>,
    monitor: Option<Monitor>,
    registry: Arc<ToolRegistry>,
    runs: Arc<Semaphore>,
    connections: Arc<Connections>,
    /// Bytes of request frames being read or served at once.
    frames: Arc<Semaphore>,
    /// Refused local connections, logged at most 20 a minute.
    refusals: remote::Refusals,
    counters: Counters,
    started: Instant,
}

impl Daemon {
    /// Open the registry with `runtime` (which precompiles installs) and run
    /// tools in `sandbox`. Fails with SANDBOX_SETUP_FAILED (or the I/O code)
    /// naming what could not be set up.
    pub fn new(
        config: Config,
        runtime: Runtime,
        sandbox: Sandbox,
        monitor: Option<Monitor>,
    ) -> Result<Daemon, Failure> {
        let runtime = Arc::new(runtime);
        let sandbox = Arc::new(sandbox);
        let quota = sandbox
            .layers()
            .storage_quota
            .then_some((config.clawfs.quota_bytes, config.clawfs.quota_inodes));
        let registry = Arc::new(ToolRegistry::open(
            &config.state_dir,
            &config.clawfs_root(),
            &runtime,
            quota,
            Ceilings::of(&config),
            &Grants::legacy(&config),
        )?);
        sandbox.prepare();
        Ok(Daemon {
            runs: Arc::new(Semaphore::new(config.ipc.max_concurrent_runs as usize)),
            connections: Connections::new(
                config.ipc.max_connections as usize,
                config.ipc.max_connections_per_uid as usize,
            ),
            frames: Arc::new(Semaphore::new(
                config.ipc.max_request_bytes_in_flight as usize,
            )),
            refusals: remote::Refusals::default(),
            config,
            runtime,
            sandbox,
            monitor,
            registry,
            counters: Counters::default(),
            started: Instant::now(),
        })
    }

    /// Listen on the configured socket until `shutdown` completes, then stop
    /// accepting, let runs in flight finish within the grace period and
    /// remove the socket.
    pub async fn serve(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), Failure> {
        let listener = bind(&self.config.socket, !self.config.allowed_gids.is_empty())?;
        let remote = remote::Listener::bind(&self.config.remote).await?;
        if let Some(m) = &self.monitor {
            m.spawn_reader(self.sandbox.launcher_pid())?;
        }
        tracing::info!(
            socket = %self.config.socket.display(),
            remote = %remote.as_ref().map_or("off".to_owned(), |r| format!("tls://{}", r.local_addr())),
            tools = self.registry.list().len(),
            memory_limit_bytes = self.config.sandbox.memory_limit_bytes,
            cpu_budget_ms = self.config.sandbox.cpu_budget_ms,
            "{READY_MARKER} on {}", self.config.socket.display()
        );
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let daemon = self.clone();
                        tokio::spawn(async move { daemon.local_connection(stream).await });
                    }
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                accepted = accept_remote(remote.as_ref()) => match accepted {
                    Ok(accepted) => {
                        let daemon = self.clone();
                        tokio::spawn(async move { daemon.remote_connection(accepted).await });
                    }
                    Err(e) => {
                        tracing::warn!("remote accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop((listener, remote));
        let _ = std::fs::remove_file(&self.config.socket);
        let all = self.config.ipc.max_concurrent_runs;
        let in_flight = all as usize - self.runs.available_permits();
        tracing::info!(
            in_flight,
            "shutting down: no new connections; waiting for runs in flight"
        );
        let grace = Duration::from_millis(self.config.ipc.shutdown_grace_ms);
        let deadline = tokio::time::Instant::now() + grace;
        match tokio::time::timeout_at(deadline, self.runs.acquire_many(all)).await {
            Ok(_) => {}
            Err(_) => tracing::warn!(
                in_flight = all as usize - self.runs.available_permits(),
                "shutdown grace of {} ms passed with runs in flight; they are killed with the process",
                grace.as_millis()
            ),
        }
        // The ready workers and the reaps of finished runs' workers: no
        // instance cgroup is left behind.
        let sandbox = self.sandbox.clone();
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_secs(3));
        let (drained, reaping) = tokio::task::spawn_blocking(move || sandbox.shutdown(left))
            .await
            .unwrap_or((0, 0));
        match reaping {
            0 => tracing::info!(ready_workers_ended = drained, "shutdown complete"),
            n => tracing::warn!(
                ready_workers_ended = drained,
                "shutdown: {n} finished runs' workers were still being reaped"
            ),
        }
        Ok(())
    }

    fn status(&self) -> DaemonStatus {
        let max = self.config.ipc.max_concurrent_runs;
        DaemonStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: frame::VERSION,
            pid: std::process::id(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            tools: self.registry.list().len() as u32,
            runs_in_flight: max - self.runs.available_permits() as u32,
            max_concurrent_runs: max,
            runs_total: self.counters.runs_total.load(Ordering::Relaxed),
            runs_failed: self.counters.runs_failed.load(Ordering::Relaxed),
            requests_total: self.counters.requests_total.load(Ordering::Relaxed),
            protocol_errors: self.counters.protocol_errors.load(Ordering::Relaxed),
            connections: self.counters.connections.load(Ordering::Relaxed),
            workers: self.sandbox.pool_status(),
            memory_limit_bytes: self.config.sandbox.memory_limit_bytes,
            cpu_budget_ms: self.config.sandbox.cpu_budget_ms,
            monitor: self.monitor.as_ref().map(Monitor::status),
            clawfs: self.registry.clawfs_status(),
        }
    }

    /// Serve one connection on the Unix socket. Its peer's credentials
    /// are checked at accept, before anything is read: a refused peer gets
    /// its answer at once and the connection is closed, holding nothing.
    async fn local_connection(self: Arc<Self>, mut stream: UnixStream) {
        let peer = match stream.peer_cred() {
            Ok(cred) => cred,
            Err(e) => {
                tracing::warn!("cannot read peer credentials: {e}");
                return;
            }
        };
        let uid = peer.uid();
        if let Err(f) = self.check_peer(uid, peer.gid(), || {
            use std::os::fd::AsFd;
            peer::groups(stream.as_fd())
        }) {
            if self.refusals.log("local connections") {
                tracing::warn!(uid, pid = peer.pid(), "connection refused: {}", f.message);
            }
            self.refuse(&mut stream, &f).await;
            return;
        }
        let place = match self.connections.admit(uid) {
            Ok(place) => place,
            Err(full) => {
                let why = match full {
                    Full::All(n) => format!(
                        "the daemon serves {n} connections at once (ipc.max_connections), each with a request in progress; retry later"
                    ),
                    Full::Uid(n) => format!(
                        "uid {uid} has {n} connections serving requests (ipc.max_connections_per_uid); retry later"
                    ),
                };
                self.refuse(&mut stream, &Failure::new(Code::Eagain, why))
                    .await;
                return;
            }
        };
        self.connection(stream, Peer::Local { uid }, Some(place))
            .await;
    }

    /// Serve one connection of the remote API: TLS handshake, then requests.
    async fn remote_connection(self: Arc<Self>, accepted: remote::Accepted) {
        if let Some(remote::Session { stream, peer, slot }) = accepted.handshake().await {
            self.connection(stream, Peer::Remote(peer), None).await;
            drop(slot);
        }
    }

    /// Serve requests on an accepted connection until the peer closes it or
    /// sends a bad frame. A connection with a `place` in the table closes
    /// when the place is taken for another while it waits for a request.
    async fn connection<S>(self: Arc<Self>, mut stream: S, peer: Peer, place: Option<Place>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
        let max = self.config.max_frame_bytes();
        let frame_timeout = Duration::from_millis(self.config.ipc.frame_timeout_ms);
        let no_place = Arc::new(tokio::sync::Notify::new());
        let close = place.as_ref().map_or(&no_place, |p| &p.close).clone();
        loop {
            if let Some(p) = &place {
                p.waiting(true);
            }
            // Once a request begins to arrive, the place gives way only
            // when no connection is idle.
            let begun = || {
                if let Some(p) = &place {
                    p.receiving();
                }
            };
            let read = frame::read_async_noting(
                &mut stream,
                max,
                IDLE,
                frame_timeout,
                &self.frames,
                begun,
            );
            let read = tokio::select! {
                read = read => read,
                () = close.notified() => {
                    tracing::debug!("an idle connection closed to make room for another");
                    break;
                }
            };
            if let Some(p) = &place {
                p.waiting(false);
            }
            let (response, kind, fatal) = match read {
                Ok(None) => break,
                Ok(Some(frame::Frame { payload, bytes })) => {
                    match Request::decode(&payload, &self.config.ipc) {
                        Ok(request) => {
                            drop(payload);
                            let kind = request.kind();
                            let response = self.clone().handle(request, &peer).await;
                            drop(bytes);
                            (response, kind, false)
                        }
                        Err(f) => (Response::failure(&f), "malformed", false),
                    }
                }
                Err(f) => (Response::failure(&f), "malformed", true),
            };
            if matches!(response.code, Code::Eproto | Code::UnsupportedVersion) {
                self.counters
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(code = %response.code, "bad request: {}", response.message);
            }
            if let Peer::Remote(r) = &peer {
                tracing::info!(
                    client = %r.identity,
                    peer = %r.addr,
                    request = kind,
                    code = %response.code,
                    "remote request"
                );
            }
            self.counters.requests_total.fetch_add(1, Ordering::Relaxed);
            // A peer that does not read its answers holds no slot for ever.
            match tokio::time::timeout(frame_timeout, write_response(&mut stream, &response)).await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!("peer went away before its response: {e}");
                    break;
                }
                Err(_) => {
                    tracing::warn!(
                        "peer did not take its response within {} ms; connection closed",
                        frame_timeout.as_millis()
                    );
                    break;
                }
            }
            if fatal {
                break;
            }
        }
        let _ = tokio::time::timeout(frame_timeout, stream.shutdown()).await;
        self.counters.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Answer a connection we will not serve with `f` at once, before
    /// reading anything, then close it.
    async fn refuse(&self, stream: &mut UnixStream, f: &Failure) {
        self.counters.requests_total.fetch_add(1, Ordering::Relaxed);
        let _ = tokio::time::timeout(REFUSAL_WRITE, async {
            let _ = write_response(stream, &Response::failure(f)).await;
            let _ = stream.shutdown().await;
        })
        .await;
    }

    /// Root, the daemon's own user, or a member of an allowed group: by
    /// its gid or its supplementary `groups`, as the kernel recorded them
    /// at `connect`.
    fn check_peer(
        &self,
        uid: u32,
        gid: u32,
        groups: impl FnOnce() -> std::io::Result<Vec<u32>>,
    ) -> Result<(), Failure> {
        if uid == 0 || uid == rustix::process::geteuid().as_raw() {
            return Ok(());
        }
        let allowed = &self.config.allowed_gids;
        if allowed.contains(&gid) {
            return Ok(());
        }
        if !allowed.is_empty() {
            match groups() {
                Ok(groups) if groups.iter().any(|g| allowed.contains(g)) => return Ok(()),
                Ok(_) => {}
                Err(e) => {
                    return Err(Failure::io(
                        format_args!("cannot read the supplementary groups of uid {uid}"),
                        &e,
                    ));
                }
            }
        }
        Err(Failure::new(
            Code::Eperm,
            format!(
                "uid {uid} (gid {gid}) may not use this socket: only root, the daemon's user and members of allowed_gids"
            ),
        ))
    }

    async fn handle(self: Arc<Self>, request: Request, peer: &Peer) -> Response {
        let kind = request.kind();
        let result = match request {
            Request::Status => Ok(Response::ok(Body::Status(self.status()))),
            Request::List => Ok(Response::ok(Body::Tools(self.registry.list_with_storage()))),
            Request::Remove { name, keep_data } => {
                // Deleting a tool's data may take a while (a tree of files).
                let registry = self.registry.clone();
                tokio::task::spawn_blocking(move || registry.remove(&name, keep_data))
                    .await
                    .map_err(|e| Failure::new(Code::Epanic, format!("remove task failed: {e}")))
                    .and_then(|r| r)
                    .map(|i| Response::ok(Body::Tool(i)))
            }
            Request::Install {
                name,
                source,
                replace,
                kept_data,
                grants,
                grant_requested,
            } => {
                let given = parse_all(&grants, Grant::parse).map(|grants| InstallChoices {
                    replace,
                    kept_data,
                    grants,
                    requested: grant_requested,
                });
                match given {
                    Ok(given) => self.install(name, source, given, peer).await,
                    Err(f) => Err(f),
                }
            }
            // Off the async threads: these wait for an install's compile
            // (the registry's lock) and write files.
            Request::Show { name } => {
                let registry = self.registry.clone();
                blocking("show", move || registry.show(&name)).await
            }
            Request::Grant { name, add, remove } => {
                let registry = self.registry.clone();
                let who = who(peer);
                blocking("grant", move || {
                    let add = parse_all(&add, Grant::parse)?;
                    let remove = parse_all(&remove, Revoke::parse)?;
                    registry.change_grants(&name, &add, &remove, &who)
                })
                .await
            }
            Request::Secret { name, key, value } => {
                let registry = self.registry.clone();
                let who = who(peer);
                blocking("secret", move || {
                    registry.set_secret(&name, &key, value.as_ref().map(|v| v.0.as_str()), &who)
                })
                .await
            }
            Request::Run(run) => self.run(run).await,
        };
        let response = result.unwrap_or_else(|f| Response::failure(&f));
        if response.code == Code::Einternal {
            tracing::error!(request = kind, "internal error: {}", response.message);
        }
        response
    }

    async fn install(
        &self,
        name: String,
        source: ComponentSource,
        given: InstallChoices,
        peer: &Peer,
    ) -> Result<Response, Failure> {
        if matches!(source, ComponentSource::Path(_)) && !matches!(peer, Peer::Local { uid: 0 }) {
            return Err(Failure::new(
                Code::PolicyDenied,
                "install from a path the daemon reads is for root on the Unix socket only; send the component's bytes",
            ));
        }
        let (runtime, registry, sandbox) = (
            self.runtime.clone(),
            self.registry.clone(),
            self.sandbox.clone(),
        );
        let max = self.config.ipc.max_component_bytes;
        let who = who(peer);
        let info = tokio::task::spawn_blocking(move || {
            let bytes = match source {
                ComponentSource::Bytes(b) => b,
                ComponentSource::Path(path) => read_component(Path::new(&path), max)?,
            };
            // Validation and compilation in a process of its own, under its
            // own limits (`[compile]`).
            registry.install(
                &runtime,
                &|b| sandbox.compile(b),
                &name,
                &bytes,
                &given,
                &who,
            )
        })
        .await
        .map_err(|e| Failure::new(Code::Epanic, format!("install task failed: {e}")))??;
        Ok(Response::ok(Body::Tool(info)))
    }

    async fn run(&self, run: RunRequest) -> Result<Response, Failure> {
        let tool = self.registry.get(&run.name)?;
        let Ok(slot) = self.runs.clone().try_acquire_owned() else {
            return Err(Failure::new(
                Code::Eagain,
                format!(
                    "{} runs are in flight (max_concurrent_runs); retry later",
                    self.config.ipc.max_concurrent_runs
                ),
            ));
        };
        let sandbox = self.sandbox.clone();
        let artifact = self.registry.artifact(&run.name);
        // The tool's ClawFS directory, made now if it is missing, and only
        // if the tool was not removed meanwhile (its data must not come back).
        // (Off the async threads: labelling a tree for its quota walks it.)
        // With it, the tool's grants as they are now (a revoke takes effect
        // here) and its secrets: the environment is the grants', then the
        // client's, then the secrets (which nothing else can replace).
        let registry = self.registry.clone();
        let for_run = tool.clone();
        let (_, grants, secrets) =
            tokio::task::spawn_blocking(move || registry.prepare_run(&for_run))
                .await
                .map_err(|e| {
                    Failure::new(Code::Einternal, format!("the ClawFS directory task: {e}"))
                })??;
        let budget = match run.timeout_ms {
            Some(t) => t.min(grants.cpu_budget_ms),
            None => grants.cpu_budget_ms,
        };
        let counts = (grants.env.len(), run.env.len(), secrets.0.len());
        let env: BTreeMap<String, String> = grants
            .env
            .clone()
            .into_iter()
            .chain(run.env)
            .chain(secrets.0)
            .collect();
        // Each part was bounded when given, but not the three together, nor
        // by a config changed since.
        let (max_entries, max_bytes) = (
            self.config.sandbox.max_env_entries as usize,
            self.config.ipc.max_arg_bytes as usize,
        );
        if env.len() > max_entries {
            return Err(Failure::new(
                Code::QuotaExceeded,
                format!(
                    "the run's environment has {} variables ({} granted, {} from the request, {} secrets); sandbox.max_env_entries is {max_entries}",
                    env.len(),
                    counts.0,
                    counts.1,
                    counts.2
                ),
            ));
        }
        if let Some(k) = env
            .iter()
            .find_map(|(k, v)| (v.len() > max_bytes).then_some(k))
        {
            return Err(Failure::new(
                Code::QuotaExceeded,
                format!(
                    "the value of environment variable {:?} is longer than ipc.max_arg_bytes ({max_bytes})",
                    k.chars().take(80).collect::<String>()
                ),
            ));
        }
        let input = RunInput {
            args: run.args,
            input: run.input,
            env: env.into_iter().collect(),
            timeout_ms: run.timeout_ms,
        };
        let name = run.name;
        let outcome = tokio::task::spawn_blocking(move || {
            let outcome = sandbox.run(&name, &artifact, input, budget, &grants);
            drop((slot, tool));
            outcome
        })
        .await
        .map_err(|e| Failure::new(Code::Epanic, format!("run task failed: {e}")))?;
        self.counters.runs_total.fetch_add(1, Ordering::Relaxed);
        if outcome.code != Code::Success {
            self.counters.runs_failed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Response {
            code: outcome.code,
            message: outcome.message.clone(),
            body: Body::Run(Box::new(outcome)),
        })
    }
}

/// Who made a request, for the log: the local uid, or the remote client's
/// certificate identity and address.
fn who(peer: &Peer) -> String {
    match peer {
        Peer::Local { uid } => format!("uid {uid}"),
        Peer::Remote(r) => format!("remote {} ({})", r.identity, r.addr),
    }
}

/// `f` on the blocking pool; its tool as the answer.
async fn blocking(
    what: &'static str,
    f: impl FnOnce() -> Result<crate::registry::ToolInfo, Failure> + Send + 'static,
) -> Result<Response, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Failure::new(Code::Epanic, format!("{what} task failed: {e}")))?
        .map(|i| Response::ok(Body::Tool(i)))
}

/// Each of `texts` parsed by `parse`; the first that does not parse is the answer.
fn parse_all<T>(
    texts: &[String],
    parse: fn(&str) -> Result<T, Failure>,
) -> Result<Vec<T>, Failure> {
    texts.iter().map(|t| parse(t)).collect()
}

async fn write_response<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    response: &Response,
) -> std::io::Result<()> {
    let payload = response.encode();
    stream.write_all(&frame::header(payload.len())).await?;
    stream.write_all(&payload).await?;
    stream.flush().await
}

/// The next remote connection, or never without a remote API.
async fn accept_remote(remote: Option<&remote::Listener>) -> std::io::Result<remote::Accepted> {
    match remote {
        Some(r) => r.accept().await,
        None => std::future::pending().await,
    }
}

/// The magic numbers (`statfs` f_type) of the kernel's pseudo-filesystems:
/// proc, sysfs, debugfs, tracefs, securityfs, cgroup, cgroup2, bpf,
/// configfs, devpts, efivarfs.
const PSEUDO_FILESYSTEMS: [rustix::fs::FsWord; 11] = [
    0x9fa0,
    0x6265_6572,
    0x6462_6720,
    0x7472_6163,
    0x7363_6673,
    0x0027_e0eb,
    0x6367_7270,
    0xcafe_4a11,
    0x6265_6570,
    0x1cd1,
    0xde5e_81e4,
];

/// The component at `path` (install by path, root only): a regular
/// file's bytes, read no further than `max`. A file whose content is not
/// its size (`/proc` and `/sys` files report 0 or 4096 and give more or
/// less) is refused, and no message holds any of the file's bytes.
fn read_component(path: &Path, max: u64) -> Result<Vec<u8>, Failure> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let shown = escape::controls(&path.to_string_lossy()).into_owned();
    let cannot = |e: std::io::Error| Failure::io(format_args!("cannot read {shown}"), &e);
    // Non-blocking: opening a FIFO must not wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    // Files of the kernel's pseudo-filesystems are not what their size
    // says (and some refuse plain reads): refused before reading.
    let pseudo = rustix::fs::fstatfs(&file)
        .map(|s| s.f_type)
        .map_err(|e| cannot(e.into()))?;
    if PSEUDO_FILESYSTEMS.contains(&pseudo) {
        return Err(Failure::new(
            Code::InvalidArgument,
            format!(
                "{shown} is on a kernel pseudo-filesystem (magic {pseudo:#x}): not a regular file's content"
            ),
        ));
    }
    if !meta.is_file() {
        return Err(Failure::new(
            Code::InvalidArgument,
            format!("{shown} is not a regular file"),
        ));
    }
    if meta.len() > max {
        return Err(Failure::new(
            Code::Eproto,
            format!(
                "{shown} is {} bytes; max_component_bytes is {max}",
                meta.len()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes).map_err(cannot)?;
    if bytes.len() as u64 != meta.len() {
        return Err(Failure::new(
            Code::InvalidArgument,
            format!(
                "{shown} gave {} bytes while its size is {}: not a regular file's content (a /proc or /sys file?)",
                if bytes.len() as u64 > max {
                    format!("more than {max}")
                } else {
                    bytes.len().to_string()
                },
                meta.len()
            ),
        ));
    }
    Ok(bytes)
}

/// Bind the socket: create its directory, replace a stale socket (nobody
/// listening), refuse if another daemon is listening. Mode 0600 (root and
/// the daemon's user); with `for_groups` (allowed_gids), 0666: any local
/// user may connect, and the daemon checks each peer's credentials at
/// accept, before it reads a byte (a socket file has one group, and
/// allowed_gids may name several).
fn bind(path: &Path, for_groups: bool) -> Result<UnixListener, Failure> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| {
                Failure::io(
                    format_args!("cannot create socket directory {}", dir.display()),
                    &e,
                )
            })?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Failure::new(
                Code::Eagain,
                format!("another daemon is listening on {}", path.display()),
            ));
        }
        std::fs::remove_file(path).map_err(|e| {
            Failure::io(
                format_args!("cannot remove stale socket {}", path.display()),
                &e,
            )
        })?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| Failure::io(format_args!("cannot listen on {}", path.display()), &e))?;
    let mode = if for_groups { 0o666 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        Failure::io(
            format_args!("cannot set the mode of {}", path.display()),
            &e,
        )
    })?;
    Ok(listener)
}
