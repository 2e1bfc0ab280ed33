//! `clawos-wasm-daemon`: runs ClawOS tools (WebAssembly components) in the
//! bridge's sandbox and serves clawosctl over a Unix socket.

use anyhow::Context;
use clap::Parser;
use clawos_bridge::config::{Config, LogFormat};
use clawos_bridge::daemon::Daemon;
use clawos_bridge::monitor::Monitor;
use clawos_bridge::runtime::Runtime;
use clawos_bridge::sandbox::{Sandbox, detect_layers};
use clawos_bridge::seccomp::Kind;
use std::path::PathBuf;
use std::sync::Arc;

/// Default configuration file; a missing default file means built-in defaults.
const DEFAULT_CONFIG: &str = "/etc/clawos/daemon.toml";

#[derive(Debug, Parser)]
#[command(
    name = "clawos-wasm-daemon",
    version,
    about = "Run ClawOS tools (WebAssembly components) in the bridge's sandbox and serve clawosctl",
    long_about = "Run ClawOS tools (WebAssembly components) in the bridge's sandbox and serve \
                  clawosctl over a Unix socket and, with [remote] listen set, over TCP with TLS 1.3 \
                  and client certificates (docs/remote.md).\n\nConfiguration: /etc/clawos/daemon.toml if it exists \
                  (see config/daemon.toml for every key and its default). Logs go to standard error; \
                  log_filter in the configuration, or RUST_LOG, sets what is written (default info). Stop with SIGTERM or SIGINT: runs in flight \
                  get ipc.shutdown_grace_ms to finish."
)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Listen on this socket instead of the configured one.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Keep installed tools here instead of the configured state_dir.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Validate the configuration, print it as loaded, and exit.
    #[arg(long)]
    check_config: bool,
    /// DEVELOPMENT ONLY: start even if cgroup v2 or AppArmor confinement is
    /// missing, running every tool without those layers (seccomp and the
    /// namespaces still apply). Warns on every start; the appliance never
    /// sets it.
    #[arg(long)]
    dev_allow_missing_layers: bool,
    /// Check the AppArmor confinement and exit (0: every answer as the
    /// profiles say, 1: not): open /etc/shadow, /etc/passwd and /root (each
    /// must be refused with EACCES) and the ClawFS root (must work), make
    /// sockets (TCP only), then rehearse a worker's profile change and mounts
    /// in a thread; print each answer. Start it by its path
    /// (/usr/bin/clawos-wasm-daemon) so that the kernel attaches the profile.
    #[arg(long, conflicts_with = "check_config")]
    check_confinement: bool,
    /// Print where the kernel fields the eBPF monitors read lie in a
    /// kernel, as the daemon would hand them to the programs, and exit (0:
    /// all found; 1: a field is missing or of another size or kind, named).
    /// BTF is the kernel's raw BTF: /sys/kernel/btf/vmlinux (the default,
    /// the running kernel) or a build's `.BTF` section (`objcopy -O binary
    /// --only-section=.BTF vmlinux FILE`).
    #[arg(long, value_name = "BTF", num_args = 0..=1, default_missing_value = "/sys/kernel/btf/vmlinux", conflicts_with_all = ["check_config", "check_confinement"])]
    kernel_layout: Option<PathBuf>,
}

fn load_config(args: &Args) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None if std::path::Path::new(DEFAULT_CONFIG).exists() => {
            Config::load(DEFAULT_CONFIG.as_ref())?
        }
        None => Config::default(),
    };
    if let Some(s) = &args.socket {
        config.socket = std::path::absolute(s).context("resolving --socket")?;
    }
    if let Some(d) = &args.state_dir {
        config.state_dir = std::path::absolute(d).context("resolving --state-dir")?;
    }
    config.validate()?;
    Ok(config)
}

fn init_logging(format: LogFormat, configured: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) => tracing_subscriber::EnvFilter::try_new(&env)
            .with_context(|| format!("RUST_LOG={env:?} is not a valid filter"))?,
        Err(_) => tracing_subscriber::EnvFilter::try_new(configured)
            .with_context(|| format!("log_filter = {configured:?} is not a valid filter"))?,
    };
    // Every record is one line whatever its fields hold (a tool's log
    // line, a client's bytes): controls are escaped on the way out, so
    // colours are off (their escapes would be escaped too).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| clawos_bridge::escape::Stderr)
        .with_ansi(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called, before the daemon reports ready, so no signal is missed.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("{name} received");
    })
}

/// Every instance's files and connections are the daemon's descriptors:
/// take the whole hard limit rather than the usual 1024 soft one.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!("cannot raise the open file limit: {e}");
        }
    }
}

/// glibc raises its mmap threshold to the size of the largest mapping a
/// program frees (up to 32 MiB); after that, request-sized buffers (a
/// component, an input, a frame of up to 65 MiB) come from the heap, and
/// their pages stay resident after they are freed. A fixed threshold keeps
/// every buffer above 256 KiB a mapping of its own, given back to the
/// kernel when freed: the load test saw the daemon's RSS grow 14% over a
/// minute of compile bombs without it.
#[allow(unsafe_code)]
fn return_large_buffers_to_the_kernel() {
    // SAFETY: mallopt only sets a parameter of glibc's allocator (it takes
    // the allocator's own lock).
    if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024) } != 1 {
        tracing::warn!("mallopt(M_MMAP_THRESHOLD) refused: large buffers may stay resident");
    }
}

pub fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(btf) = &args.kernel_layout {
        let raw = std::fs::read(btf).with_context(|| format!("cannot read {}", btf.display()))?;
        match clawos_bridge::monitor::layout::Layout::resolve(&raw) {
            Ok(layout) => println!("{}", layout.describe()),
            Err(errors) => {
                for e in errors {
                    eprintln!("{}: {e}", btf.display());
                }
                std::process::exit(1);
            }
        }
        return Ok(());
    }
    let config = load_config(&args)?;
    if args.check_config {
        println!("{config:#?}");
        return Ok(());
    }
    if args.check_confinement {
        let report =
            clawos_bridge::apparmor::check::run(&config.clawfs_root(), &config.devices.allow);
        for line in report.lines() {
            println!("{line}");
        }
        std::process::exit(if report.passed() { 0 } else { 1 });
    }
    init_logging(config.log_format, &config.log_filter)?;
    raise_open_file_limit();
    return_large_buffers_to_the_kernel();
    // The same source built as the test-only `clawos-audit-daemon`
    // (bridge/Cargo.toml; never in the image): the comparison is of two
    // constants, so the shipped daemon holds no trace of this.
    if env!("CARGO_BIN_NAME") == "clawos-audit-daemon" {
        clawos_bridge::seccomp::log_unlisted_calls();
        tracing::warn!(
            "AUDIT BUILD: system calls outside the seccomp allow-lists are logged by the kernel \
             (SECCOMP_RET_LOG), not killed; a test build (make seccomp-audit), never shipped"
        );
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), socket = %config.socket.display(), state_dir = %config.state_dir.display(), "starting");
    let start = |f| anyhow::anyhow!("cannot start: {f}");
    // Name lookups: resolv.conf is read now. One that cannot be used leaves
    // the daemon without DNS servers, loudly, rather than without its
    // remote API.
    match clawos_bridge::egress::Egress::resolver(&config.network) {
        Ok(resolver) => tracing::info!(
            hosts = %config.network.hosts_file.display(),
            dns = ?resolver.servers(),
            "name lookups: the hosts file, then DNS over TCP"
        ),
        Err(f) => tracing::error!(
            hosts = %config.network.hosts_file.display(),
            "name lookups: the hosts file only; network.resolv_conf: {}",
            f.message
        ),
    }
    let layers = detect_layers(
        &config.cgroup,
        &config.clawfs_root(),
        args.dev_allow_missing_layers,
    )
    .map_err(start)?;
    // The launcher is forked while this process has one thread: no
    // runtime clock, no async runtime yet.
    let runtime = Runtime::idle(&config).map_err(start)?;
    let (sandbox, runtime) = Sandbox::start(&config, runtime, layers).map_err(start)?;
    // Still one thread, and before the filter below refuses bpf().
    let monitor = match layers.ebpf {
        true => Some(Monitor::load(&config).map_err(start)?),
        false => None,
    };
    // Before any thread and before any request: the filter covers every
    // thread the daemon will have.
    let filter = Kind::Daemon
        .policy()
        .and_then(|p| p.compile())
        .map_err(start)?;
    filter
        .install()
        .map_err(|f| anyhow::anyhow!("cannot start: sandbox layer seccomp (daemon): {f}"))?;
    tracing::info!(kind = "daemon", instructions = filter.bytes.len() / 8, sha256 = %filter.digest(), "seccomp filter installed");
    let daemon = Daemon::new(config, runtime, sandbox, monitor).map_err(start)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("clawos-daemon")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let shutdown = shutdown_signal()?;
        Arc::new(daemon)
            .serve(shutdown)
            .await
            .map_err(|f| anyhow::anyhow!("{f}"))
    })?;
    Ok(())
}
