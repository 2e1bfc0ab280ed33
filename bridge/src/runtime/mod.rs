//! The WASM sandbox (layer 5a): one `Engine` per process with the pooling
//! allocator and epoch interruption, components precompiled to `.cwasm` and
//! instantiated from a `ToolPre`, and one store per run holding the
//! instance's limits: memory (linear plus host regions), CPU budget (epoch
//! deadline), core instances, tables, memories, table elements and handles.

pub mod outcome;
pub mod state;

use crate::clawfs::Root;
use crate::config::{
    CgroupPolicy, ClawfsPolicy, Config, CpuTarget, DevicePolicy, NetworkPolicy, SandboxLimits,
};
use crate::egress::Egress;
use crate::error::{Code, Failure};
use crate::escape;
use crate::host::cgroup::CgroupState;
use crate::host::filesystem::FsState;
use crate::host::logging::LogSink;
use crate::host::memory::{CountLimits, MemoryAccount, SharedRegions};
use crate::host::network::NetState;
use crate::host::system::{Env, InstanceInfo};
use crate::host::{self, Handles, ToolPre};
use crate::outside::{Direct, Outside};
use outcome::{RunOutcome, classify};
use state::Instance;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config as EngineConfig, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    UpdateDeadline,
};
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

/// Ids of instances, unique per process.
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

/// A tool ready to instantiate: its component linked against the bridge.
#[derive(Clone)]
pub struct Prepared {
    pre: ToolPre<Instance>,
}

/// What a client asks of one run. Its `Debug` leaves out the
/// environment's values (secrets ride there).
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RunInput {
    /// Arguments passed to `run`.
    pub args: Vec<String>,
    /// Input passed to `run` (also the tool's WASI stdin).
    pub input: Vec<u8>,
    /// The instance's initial environment.
    pub env: Vec<(String, String)>,
    /// The client's own deadline; the run ends with ETIMEOUT when it is
    /// shorter than the CPU budget and passes.
    pub timeout_ms: Option<u64>,
}

impl std::fmt::Debug for RunInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunInput")
            .field("args", &self.args)
            .field("input_bytes", &self.input.len())
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// Where one instance runs: its id, its ClawFS directory as this process
/// sees it, and its way to the outside.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The instance id (names its cgroup and its log records).
    pub id: u64,
    /// The tool's ClawFS directory.
    pub root: PathBuf,
    /// Egress and cgroup calls.
    pub outside: Arc<dyn Outside>,
}

/// The process's engine, linker and epoch clock.
pub struct Runtime {
    engine: Engine,
    linker: Linker<Instance>,
    limits: SandboxLimits,
    /// Longest environment name or value: the same limit as a request's.
    env_bytes: u32,
    tick_ms: u64,
    shared: Arc<SharedRegions>,
    clawfs_root: PathBuf,
    clawfs: Arc<ClawfsPolicy>,
    network: Arc<NetworkPolicy>,
    /// The egress proxy of in-process runs, built once (its resolver reads
    /// resolv.conf when made, not at every run).
    egress: Egress,
    devices: Arc<DevicePolicy>,
    cgroup: Arc<CgroupPolicy>,
    // The first message wakes the epoch thread and starts its ticks;
    // dropping the sender stops it. `None` until started.
    ticker: Option<Ticker>,
}

/// The epoch thread's handle: its channel, and whether it was woken.
#[derive(Clone)]
struct Ticker {
    wake: mpsc::Sender<()>,
    /// Set once the thread was told to tick: later stores need not wake it
    /// (a message per run cost a futex wake and a context switch each).
    woken: Arc<std::sync::atomic::AtomicBool>,
}

/// The wasmtime configuration for `config`: pooling allocator sized for
/// `max_concurrent_runs`, epoch interruption, and the precompile target.
pub fn engine_config(config: &Config) -> Result<EngineConfig, Failure> {
    let sb = &config.sandbox;
    let runs = config.ipc.max_concurrent_runs;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(runs)
        .total_core_instances(runs * sb.max_core_instances)
        .total_memories(runs * sb.max_memories)
        .total_tables(runs * sb.max_tables)
        .max_core_instances_per_component(sb.max_core_instances)
        .max_memories_per_component(sb.max_memories)
        .max_tables_per_component(sb.max_tables)
        .table_elements(sb.max_table_elements as usize)
        .max_memory_size(sb.memory_limit_bytes as usize);
    let mut ec = EngineConfig::new();
    ec.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .epoch_interruption(true)
        .wasm_component_model(true);
    if config.engine.cpu == CpuTarget::Portable {
        set_portable_target(&mut ec)?;
    }
    Ok(ec)
}

/// Compile for a baseline CPU rather than the build machine's, so `.cwasm`
/// made on one machine loads on QEMU `-cpu max` (TCG) and on real hardware.
/// docs/precompiled-target.md says why x86-64-v2.
#[allow(unsafe_code)]
fn set_portable_target(ec: &mut EngineConfig) -> Result<(), Failure> {
    let setup =
        |e: wasmtime::Error| Failure::new(Code::SandboxSetupFailed, format!("engine target: {e}"));
    if cfg!(target_arch = "x86_64") {
        ec.target("x86_64-unknown-linux-gnu").map_err(setup)?;
        // SAFETY: "nehalem" is a Cranelift x86 preset (SSE4.2, POPCNT,
        // CMPXCHG16B); wasmtime checks at engine creation and at every load
        // that the running CPU has these features, so code never runs on a
        // CPU without them.
        unsafe {
            ec.cranelift_flag_enable("nehalem");
        }
    }
    Ok(())
}

impl Runtime {
    /// Build the engine and linker for `config`, without starting any
    /// thread: what a process that forks holds.
    pub fn idle(config: &Config) -> Result<Runtime, Failure> {
        let engine = Engine::new(&engine_config(config)?).map_err(|e| {
            Failure::new(
                Code::SandboxSetupFailed,
                format!("cannot create the wasmtime engine: {e:#}"),
            )
        })?;
        let mut linker = Linker::new(&engine);
        let link = |e: wasmtime::Error| {
            Failure::new(
                Code::SandboxSetupFailed,
                format!("cannot link host interfaces: {e:#}"),
            )
        };
        host::add_to_linker(&mut linker).map_err(link)?;
        host::wasi_fs::add_to_linker(&mut linker).map_err(link)?;
        Ok(Runtime {
            engine,
            linker,
            limits: config.sandbox.clone(),
            env_bytes: config.ipc.max_arg_bytes,
            tick_ms: config.engine.epoch_tick_ms,
            shared: Arc::new(SharedRegions::default()),
            clawfs_root: config.clawfs_root(),
            clawfs: Arc::new(config.clawfs.clone()),
            network: Arc::new(config.network.clone()),
            egress: Egress::new(config.network.clone()),
            devices: Arc::new(config.devices.clone()),
            cgroup: Arc::new(config.cgroup.clone()),
            ticker: None,
        })
    }

    /// [`Runtime::idle`] with its epoch clock started: ready to run tools
    /// in this process.
    pub fn new(config: &Config) -> Result<Runtime, Failure> {
        let mut rt = Runtime::idle(config)?;
        rt.start_clock()?;
        Ok(rt)
    }

    /// Start the epoch clock (a thread) that enforces CPU budgets. A process
    /// that forks must do this after forking: threads do not survive it.
    pub fn start_clock(&mut self) -> Result<(), Failure> {
        if self.ticker.is_some() {
            return Ok(());
        }
        let tick_ms = self.tick_ms;
        let (tx, rx) = mpsc::channel::<()>();
        let ticking = self.engine.clone();
        std::thread::Builder::new()
            .name("clawos-epoch".into())
            .spawn(move || {
                // Asleep until the first store is made: a spare worker
                // waits for its tool without waking a hundred times a
                // second (no budget runs before a store exists).
                if rx.recv().is_err() {
                    return;
                }
                // One tick per tick_ms of wall time, however late this
                // thread runs: in a worker throttled by its cgroup's cpu.max
                // it may sleep through most of a second, and counting its
                // wake-ups would stretch every budget twentyfold.
                let start = Instant::now();
                let mut ticks: u128 = 0;
                loop {
                    match rx.recv_timeout(Duration::from_millis(tick_ms)) {
                        Ok(()) => {}
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            let due = start.elapsed().as_millis() / u128::from(tick_ms);
                            while ticks < due {
                                ticking.increment_epoch();
                                ticks += 1;
                            }
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .map_err(|e| {
                Failure::new(
                    Code::SandboxSetupFailed,
                    format!("cannot start the epoch thread: {e}"),
                )
            })?;
        self.ticker = Some(Ticker {
            wake: tx,
            woken: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        });
        Ok(())
    }

    /// Hold this process's runs to one tool's grants: its devices, memory
    /// and CPU budget (a worker, before its tool's first bytes run).
    pub fn grant(&mut self, grants: &crate::grants::Effective) {
        self.devices = Arc::new(grants.devices.clone());
        self.limits.memory_limit_bytes = grants.memory_bytes;
        self.limits.cpu_budget_ms = grants.cpu_budget_ms;
    }

    /// The device allow-list (a worker's mount tree holds these nodes).
    pub fn devices(&self) -> &DevicePolicy {
        &self.devices
    }

    /// The engine (for benchmarks and artifact checks).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker with every bridge and WASI interface.
    pub fn linker(&self) -> &Linker<Instance> {
        &self.linker
    }

    /// Validate `bytes` as a component and precompile it to `.cwasm` bytes.
    pub fn precompile(&self, bytes: &[u8]) -> Result<Vec<u8>, Failure> {
        if wasmtime::Engine::detect_precompiled(bytes).is_some() {
            return Err(Failure::new(
                Code::WasmInvalidComponent,
                "precompiled artifacts are not accepted: install the component's .wasm",
            ));
        }
        check_preamble(bytes)?;
        self.engine.precompile_component(bytes).map_err(|e| {
            Failure::new(
                Code::WasmInvalidComponent,
                format!("invalid component: {}", shown_error(&e)),
            )
        })
    }

    /// Load a `.cwasm` file this runtime wrote, and link it.
    pub fn load_artifact(&self, path: &Path) -> Result<Prepared, Failure> {
        let component = load_trusted_artifact(&self.engine, path)?;
        self.prepare(&component)
    }

    /// Link `component` against the bridge: every import must be provided
    /// and `run` exported with the world's type.
    pub fn prepare(&self, component: &Component) -> Result<Prepared, Failure> {
        let pre = self.linker.instantiate_pre(component).map_err(|e| {
            Failure::new(
                Code::WasmLinkError,
                format!("component does not link: {e:#}"),
            )
        })?;
        let pre = ToolPre::new(pre).map_err(|e| {
            Failure::new(
                Code::WasmLinkError,
                format!("component does not export the tool world: {e:#}"),
            )
        })?;
        Ok(Prepared { pre })
    }

    /// The store for one instance of `tool`, with its limits and deadline.
    fn store(
        &self,
        tool: &str,
        place: &Placement,
        input: &RunInput,
        deadline_ms: u64,
        stdout: &MemoryOutputPipe,
        stderr: &MemoryOutputPipe,
    ) -> Result<Store<Instance>, Failure> {
        let sb = &self.limits;
        let id = place.id;
        let root = Arc::new(Root::open(&place.root, self.clawfs.max_link_scan)?);
        let deadline = Instant::now() + Duration::from_millis(deadline_ms);
        let mut wasi = wasmtime_wasi::WasiCtx::builder();
        wasi.preopened_dir(root.path(), "/", wasmtime_wasi::FsPerms::ReadWrite)
            .map_err(|e| {
                Failure::new(
                    Code::SandboxSetupFailed,
                    format!("cannot preopen {} for WASI: {e:#}", root.path().display()),
                )
            })?;
        wasi.stdin(MemoryInputPipe::new(input.input.clone()))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .args(&[tool])
            .envs(&input.env)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let counts = CountLimits {
            instances: sb.max_core_instances as usize,
            tables: sb.max_tables as usize,
            memories: sb.max_memories as usize,
            table_elements: sb.max_table_elements as usize,
        };
        let instance = Instance {
            handles: Handles::new(sb.max_handles),
            account: MemoryAccount::new(sb.memory_limit_bytes, counts),
            wasi: wasi.build(),
            env: Env::new(
                input.env.iter().cloned(),
                sb.max_env_entries,
                self.env_bytes,
            ),
            log: LogSink::new(tool, id, sb),
            info: InstanceInfo {
                tool: tool.to_owned(),
                id,
                deadline,
                budget_ms: deadline_ms,
            },
            shared: self.shared.clone(),
            outside: place.outside.clone(),
            fs: FsState::new(root, self.clawfs.clone(), tool.to_owned()),
            net: NetState::new(
                self.network.clone(),
                place.outside.clone(),
                deadline,
                tool.to_owned(),
            ),
            cg: CgroupState::new(place.outside.clone(), tool.to_owned()),
            devices: self.devices.clone(),
        };
        let mut store = Store::new(&self.engine, instance);
        store.limiter(|s| &mut s.account);
        if let Some(clock) = &self.ticker
            && !clock.woken.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            // The epoch thread ticks from the first store on (see
            // start_clock); it ends only with the runtime.
            let _ = clock.wake.send(());
        }
        // Ticks only say when to look at the clock. Ticks are global and the
        // ticker can run late (a worker throttled by cpu.max), so a tick
        // count alone could end a run before its budget: the run ends at
        // the first tick past `info.deadline`, which `run_at` sets when the
        // run starts, and never before it.
        let tick_ms = self.tick_ms;
        store.set_epoch_deadline(deadline_ms.div_ceil(tick_ms) + 1);
        store.epoch_deadline_callback(move |state| {
            let left = state
                .data()
                .info
                .deadline
                .saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(UpdateDeadline::Interrupt);
            }
            let left_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
            Ok(UpdateDeadline::Continue(left_ms.div_ceil(tick_ms).max(1)))
        });
        Ok(store)
    }

    /// Where a run in this process goes: a new instance id, the tool's
    /// ClawFS directory, and the outside reached directly from here.
    pub fn local_placement(&self, tool: &str) -> Placement {
        let id = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
        Placement {
            id,
            root: self.clawfs_root.join(tool),
            outside: Arc::new(Direct::new(self.egress.clone(), (*self.cgroup).clone(), id)),
        }
    }

    /// Run `tool` in this process ([`Runtime::run_at`] at
    /// [`Runtime::local_placement`]): benchmarks and tests of the runtime.
    pub fn run(&self, name: &str, tool: &Prepared, input: RunInput) -> RunOutcome {
        self.run_at(name, &self.local_placement(name), tool, input)
    }

    /// How long a run of `input` may take, in ms, and the code it ends
    /// with when it takes longer: the CPU budget (WASM_CPU_DEADLINE), or
    /// the client's own timeout when shorter (ETIMEOUT).
    pub fn deadline(&self, input: &RunInput) -> (u64, Code) {
        let budget = self.limits.cpu_budget_ms;
        match input.timeout_ms {
            Some(t) if t < budget => (t, Code::Etimeout),
            _ => (budget, Code::WasmCpuDeadline),
        }
    }

    /// Instantiate `tool` at `place` and call its `run`. Every way the run
    /// can end is one [`RunOutcome`] with its P1.7 code; none of them harms
    /// the runtime.
    pub fn run_at(
        &self,
        name: &str,
        place: &Placement,
        tool: &Prepared,
        input: RunInput,
    ) -> RunOutcome {
        let (deadline_ms, deadline_code) = self.deadline(&input);
        let cap = self.limits.max_output_bytes as usize;
        // One byte past the cap: a tool that wrote more than the cap fills
        // it, and is told QUOTA_EXCEEDED rather than cut silently.
        let (stdout, stderr) = (
            MemoryOutputPipe::new(cap + 1),
            MemoryOutputPipe::new(cap + 1),
        );
        let mut store = match self.store(name, place, &input, deadline_ms, &stdout, &stderr) {
            Ok(store) => store,
            Err(f) => {
                tracing::error!(tool = name, "cannot set up the instance: {}", f.message);
                return RunOutcome {
                    instance_id: place.id,
                    code: f.code,
                    message: f.message,
                    ..RunOutcome::default()
                };
            }
        };
        let mut out = RunOutcome {
            instance_id: store.data().info.id,
            ..RunOutcome::default()
        };

        let started = Instant::now();
        // The budget covers instantiation and `run`, from here.
        store.data_mut().info.deadline = started + Duration::from_millis(deadline_ms);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let instance = tool.pre.instantiate(&mut store);
            let instantiated = Instant::now();
            let called = instance.and_then(|t| t.call_run(&mut store, &input.args, &input.input));
            (instantiated, called)
        }));
        let finished = Instant::now();

        match result {
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown panic");
                tracing::error!(
                    tool = name,
                    instance = out.instance_id,
                    "host function panicked: {what}"
                );
                out.code = Code::Epanic;
                out.message = format!("a host function panicked: {what}");
            }
            Ok((instantiated, called)) => {
                out.instantiate_us = instantiated.duration_since(started).as_micros() as u64;
                out.run_us = finished.duration_since(instantiated).as_micros() as u64;
                match called {
                    Ok(Ok(output)) if output.len() > cap => {
                        out.code = Code::QuotaExceeded;
                        out.message = format!(
                            "output of {} bytes exceeds max_output_bytes = {cap}",
                            output.len()
                        );
                    }
                    Ok(Ok(output)) => out.output = output,
                    Ok(Err(code)) => {
                        out.code = code.into();
                        out.message = format!("tool returned {}", out.code);
                    }
                    Err(err) => {
                        let ending = classify(&err, deadline_code);
                        out.code = ending.code;
                        out.exit_status = ending.exit_status;
                        out.message = match ending.code {
                            Code::WasmCpuDeadline if !ending.message.starts_with("cpu budget") => {
                                format!("cpu budget of {deadline_ms} ms spent: {}", ending.message)
                            }
                            Code::Etimeout => format!(
                                "client timeout of {deadline_ms} ms passed: {}",
                                ending.message
                            ),
                            _ => ending.message,
                        };
                    }
                }
            }
        }
        let data = store.data_mut();
        out.logs = std::mem::take(&mut data.log.lines);
        out.logs_dropped = data.log.dropped;
        out.memory_peak = data.account.peak();
        drop(store);
        out.stdout = stdout.contents().to_vec();
        out.stderr = stderr.contents().to_vec();
        for (stream, bytes) in [("stdout", &mut out.stdout), ("stderr", &mut out.stderr)] {
            if bytes.len() > cap {
                bytes.truncate(cap);
                if out.code == Code::Success {
                    out.code = Code::QuotaExceeded;
                    out.message = format!(
                        "{stream} past max_output_bytes = {cap}: the first {cap} bytes are kept"
                    );
                }
            }
        }
        if out.code != Code::Success {
            tracing::info!(tool = name, instance = out.instance_id, code = %out.code, "run failed: {}", out.message);
        }
        out
    }
}

/// A component's first eight bytes: `\0asm`, then version 0x0d and layer 1.
/// Checked here so that the answer to bytes that are not a component
/// names what they are without quoting them (wasmparser's own message
/// lists the first four bytes, which were "root" for `/etc/shadow`).
fn check_preamble(bytes: &[u8]) -> Result<(), Failure> {
    let refuse = |what: &str| Err(Failure::new(Code::WasmInvalidComponent, what.to_owned()));
    match bytes.first_chunk::<8>() {
        None => refuse("not a WebAssembly component: fewer than 8 bytes"),
        Some(p) if p[..4] != *b"\0asm" => {
            refuse("not a WebAssembly component: it does not start with the \\0asm magic")
        }
        Some(p) if p[4..] == [1, 0, 0, 0] => refuse(
            "a core WebAssembly module, not a component: build for wasm32-wasip2 (docs/tool-guide.md)",
        ),
        Some(p) if p[4..] != [0x0d, 0, 1, 0] => {
            refuse("not a WebAssembly component of a version this engine reads (0x0d, layer 1)")
        }
        Some(_) => Ok(()),
    }
}

/// A validation or compilation error for the client: on one line, controls
/// escaped, at most 512 bytes (names inside the component are the
/// attacker's text).
fn shown_error(e: &wasmtime::Error) -> String {
    let mut text = escape::controls(&format!("{e:#}")).into_owned();
    if text.len() > 512 {
        let mut end = 512;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// Deserialize a `.cwasm` artifact.
#[allow(unsafe_code)]
fn load_trusted_artifact(engine: &Engine, path: &Path) -> Result<Component, Failure> {
    // SAFETY: wasmtime requires that deserialized bytes come from
    // `Engine::precompile_component` of a compatible engine and were not
    // tampered with. The registry only loads artifacts it wrote itself into
    // its state directory (root-owned, 0700), and wasmtime still checks the
    // header, engine version and target flags before using them.
    unsafe { Component::deserialize_file(engine, path) }.map_err(|e| {
        // The pooling allocator checks a component's core instance, memory
        // and table counts when it is loaded; over a count limit is 105.
        let code = if e.to_string().contains("pooling allocator") {
            Code::WasmResourceLimit
        } else {
            Code::WasmInvalidComponent
        };
        Failure::new(
            code,
            format!("cannot load artifact {}: {e:#}", path.display()),
        )
    })
}
