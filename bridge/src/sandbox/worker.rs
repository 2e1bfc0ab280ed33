//! An instance worker: the launcher's clone, in new user, pid, net and mnt
//! namespaces (and, with the cgroup layer, born in its instance cgroup).
//! It is made ahead of its run: it stacks the worker AppArmor profile,
//! starts its threads and waits for its tool ([`Setup`]). Then, before any
//! tool byte runs, it builds a mount tree holding only its ClawFS
//! directory, three device nodes and a pid-only `/proc`, drops every
//! capability, sets no_new_privs and installs the worker seccomp filter.
//! Then it runs the tool once, talking to the daemon over its channel, and
//! exits.

use super::broker::Broker;
use super::channel::{self, FromWorker, Setup, Spawn, ToWorker};
use super::launcher::Artifacts;
use super::sys;
use crate::apparmor::{self, LAUNCHER_PROFILE, WORKER_PROFILE};
use crate::config::DeviceRule;
use crate::error::{Code, Failure};
use crate::runtime::outcome::RunOutcome;
use crate::runtime::{Placement, Prepared, RunInput, Runtime};
use crate::seccomp::Program;
use rustix::mount::{MountFlags, MountPropagationFlags};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Where the worker's new root is built (a tmpfs over it, in its own mount
/// namespace only).
const STAGE: &str = "/tmp";
/// The tool's ClawFS directory inside the worker.
pub const CLAWFS_IN_WORKER: &str = "/clawfs";
/// The device nodes a worker's tree holds: each path of the `[devices]`
/// list once, if it exists on this machine, and whether any rule for it
/// allows writing. Its profile (the generated `clawos.d/devices`) allows
/// binding and opening exactly these.
pub fn device_nodes(devices: &[DeviceRule]) -> Vec<(&Path, bool)> {
    let mut nodes: Vec<(&Path, bool)> = Vec::new();
    for rule in devices {
        match nodes.iter_mut().find(|(p, _)| *p == rule.path) {
            Some((_, write)) => *write |= rule.write,
            None if rule.path.exists() => nodes.push((&rule.path, rule.write)),
            None => {}
        }
    }
    nodes
}

/// Create the (empty) file `target` for a bind, and the directories above
/// it up to the first that exists.
fn bind_target(target: &Path) -> Result<(), Failure> {
    use rustix::fs::{CWD, Mode, OFlags, mkdirat, openat};
    let mut missing = Vec::new();
    let mut dir = target.parent();
    while let Some(d) = dir
        && !d.exists()
    {
        missing.push(d);
        dir = d.parent();
    }
    for d in missing.into_iter().rev() {
        mkdirat(CWD, d, Mode::from_raw_mode(0o755))
            .map_err(|e| os(format_args!("mkdir {}", d.display()), e))?;
    }
    openat(
        CWD,
        target,
        OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o666),
    )
    .map(drop)
    .map_err(|e| os(format_args!("create {}", target.display()), e))
}

/// A layer that failed, by name.
fn layer(name: &str, f: Failure) -> Failure {
    Failure::new(
        Code::SandboxSetupFailed,
        format!("sandbox layer {name} could not be applied: {}", f.message),
    )
}

fn os(what: impl std::fmt::Display, e: rustix::io::Errno) -> Failure {
    Failure::new(Code::SandboxSetupFailed, format!("{what}: {e}"))
}

/// The worker's life; never returns. `go` is readable once the launcher
/// has written the worker's id maps.
pub fn main(
    spawn: &Spawn,
    channel: OwnedFd,
    go: OwnedFd,
    rt: &mut Runtime,
    tools: &mut Artifacts,
    filter: &Program,
) -> ! {
    let mut byte = [0u8; 1];
    if !matches!(rustix::io::read(&go, &mut byte), Ok(1)) {
        // The launcher could not map our ids and said so to the daemon.
        sys::exit_now(1);
    }
    drop(go);
    // What does not depend on the tool is done while the worker is a
    // spare; a failure is the next run's answer (fail closed).
    if let Err(f) = ahead(spawn) {
        setup_failed(&channel, f);
    }
    let setup = match channel::recv(channel.as_fd()) {
        Ok(Some((ToWorker::Setup(setup), _))) => setup,
        Ok(Some((ToWorker::Compile(bytes), _))) => compile(&channel, rt, filter, &bytes),
        // The daemon stopped, or let a spare go.
        Ok(None) => sys::exit_now(0),
        Ok(Some((other, _))) => setup_failed(
            &channel,
            Failure::new(
                Code::Eproto,
                format!("expected the worker's setup, got {other:?}"),
            ),
        ),
        Err(_) => sys::exit_now(1),
    };
    let tool = match tools.get(rt, &setup.artifact).cloned().and_then(|tool| {
        apply_layers(&setup, rt, filter)?;
        Ok(tool)
    }) {
        Ok(tool) => tool,
        Err(f) => setup_failed(&channel, f),
    };
    let code = match serve(spawn.instance, &setup.tool, channel, rt, &tool) {
        Ok(()) => 0,
        Err(f) => {
            tracing::error!(instance = spawn.instance, tool = %setup.tool, "worker: {}", f.message);
            1
        }
    };
    sys::exit_now(code)
}

/// Validate and compile a component under every layer but the tool's
/// ClawFS directory (the mount tree holds none), send the artifact, exit.
/// The cgroup it was cloned into bounds its memory, CPU and threads.
fn compile(channel: &OwnedFd, rt: &Runtime, filter: &Program, bytes: &[u8]) -> ! {
    let compiled = mount_tree(None, &[])
        .map_err(|f| layer("mount namespace", f))
        .and_then(|()| {
            sys::keep_capabilities(rustix::thread::CapabilitySet::empty())
                .map_err(|f| layer("capabilities", f))
        })
        .and_then(|()| filter.install().map_err(|f| layer("seccomp", f)))
        .and_then(|()| rt.precompile(bytes));
    match compiled {
        Ok(artifact) => {
            let sent = channel::send(channel.as_fd(), &FromWorker::Compiled(artifact), &[]);
            sys::exit_now(i32::from(sent.is_err()))
        }
        Err(f) => setup_failed(channel, f),
    }
}

/// Tell the daemon why the worker cannot run its tool (the run ends with
/// that code), and exit.
fn setup_failed(channel: &OwnedFd, f: Failure) -> ! {
    let _ = channel::send(
        channel.as_fd(),
        &FromWorker::SetupFailed(f.code, f.message),
        &[],
    );
    sys::exit_now(1)
}

/// The step that does not depend on the tool, while the worker waits as a
/// spare: AppArmor. A profile change applies to the calling thread only,
/// so it comes while the worker has one thread.
fn ahead(spawn: &Spawn) -> Result<(), Failure> {
    if spawn.layers.apparmor {
        // The launcher runs with no_new_privs, so the worker can only
        // stack its profile on the launcher's: both confine it.
        apparmor::stack_profile(WORKER_PROFILE)
            .and_then(|()| apparmor::require_stacked(LAUNCHER_PROFILE, WORKER_PROFILE))
            .map_err(|f| layer("apparmor", f))?;
    }
    Ok(())
}

/// The rest of the layers once the tool is known, before any of its bytes
/// run: its mount tree, no capabilities, then the worker's other threads,
/// then the worker filter. Capabilities, like the AppArmor label, belong
/// to each thread: they are dropped while the worker has one thread, so
/// the threads started after (the epoch clock, and WASI's reactor, which
/// would otherwise start lazily) are born with none. The filter comes last
/// and reaches them too (TSYNC); they share the new root (CLONE_FS).
fn apply_layers(setup: &Setup, rt: &mut Runtime, filter: &Program) -> Result<(), Failure> {
    // The run's grants first: its tree holds only the devices granted.
    rt.grant(&setup.grants);
    mount_tree(Some(&setup.clawfs), &rt.devices().allow)
        .map_err(|f| layer("mount namespace", f))?;
    sys::keep_capabilities(rustix::thread::CapabilitySet::empty())
        .map_err(|f| layer("capabilities", f))?;
    rt.start_clock().map_err(|f| layer("wasm cpu budget", f))?;
    wasmtime_wasi::runtime::in_tokio(async {});
    filter.install().map_err(|f| layer("seccomp", f))
}

/// Replace the mount tree with a tmpfs holding the ClawFS directory at
/// `/clawfs` (an empty directory for a compile, which has none), the
/// allow-listed device nodes at their paths under `/dev` (a node missing
/// on the host is left out: opening its name fails as it would outside),
/// and a pid-only `/proc`: the steps `image/apparmor.d/clawos-worker`
/// and the generated `clawos.d/devices` allow, in their order.
pub fn mount_tree(clawfs: Option<&Path>, devices: &[DeviceRule]) -> Result<(), Failure> {
    use rustix::fs::{CWD, Mode, OFlags, mkdirat, openat};
    // Held open: the tmpfs is mounted over STAGE, which may contain it.
    let tool_dir = clawfs
        .map(|clawfs| {
            openat(
                CWD,
                clawfs,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| os(format_args!("open {}", clawfs.display()), e))
        })
        .transpose()?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(|e| os("make / private", e))?;
    let hardened = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    rustix::mount::mount("tmpfs", STAGE, "tmpfs", hardened, c"mode=0755,size=64k")
        .map_err(|e| os(format_args!("mount tmpfs on {STAGE}"), e))?;
    let at = |p: &str| format!("{STAGE}/{p}");
    for d in ["clawfs", "dev", "proc"] {
        mkdirat(CWD, at(d).as_str(), Mode::from_raw_mode(0o755))
            .map_err(|e| os(format_args!("mkdir {}", at(d)), e))?;
    }
    if let Some(tool_dir) = tool_dir {
        let tool_src = format!("/proc/self/fd/{}", tool_dir.as_raw_fd());
        bind(&tool_src, &at("clawfs"))?;
    }
    for (path, _) in device_nodes(devices) {
        // Config validation keeps device paths under /dev/, plain components.
        let target = format!("{STAGE}{}", path.display());
        bind_target(Path::new(&target))?;
        bind(&path.to_string_lossy(), &target)?;
    }
    rustix::mount::mount("proc", at("proc").as_str(), "proc", hardened, c"subset=pid")
        .map_err(|e| os(format_args!("mount proc on {}", at("proc")), e))?;
    enter_root()
}

/// Bind `src` on `target`. The bind keeps the source mount's flags (the
/// ClawFS partition is nosuid,nodev); the worker profile allows exactly
/// these binds and no remount.
fn bind(src: &str, target: &str) -> Result<(), Failure> {
    rustix::mount::mount_bind(src, target)
        .map_err(|e| os(format_args!("bind {src} on {target}"), e))
}

/// Make the staged tmpfs the root the way switch_root does: move it over
/// `/` and chroot into it. pivot_root cannot be used: the appliance runs
/// from its initramfs (rootfs), which pivot_root refuses. The old root
/// stays under the new one, out of reach once CAP_SYS_CHROOT is gone and
/// chroot, mount and fchdir are refused by the worker filter.
fn enter_root() -> Result<(), Failure> {
    rustix::process::chdir(STAGE).map_err(|e| os(format_args!("chdir {STAGE}"), e))?;
    rustix::mount::mount_move(".", "/").map_err(|e| os("move the new root over /", e))?;
    rustix::process::chroot(".").map_err(|e| os("chroot", e))?;
    rustix::process::chdir("/").map_err(|e| os("chdir /", e))
}

/// Announce readiness, take the input, run, send the outcome.
fn serve(
    instance: u64,
    name: &str,
    channel: OwnedFd,
    rt: &Runtime,
    tool: &Prepared,
) -> Result<(), Failure> {
    channel::send(channel.as_fd(), &FromWorker::Ready, &[])?;
    let input: RunInput = match channel::recv(channel.as_fd())? {
        Some((ToWorker::Input(input), _)) => input,
        Some((other, _)) => {
            return Err(Failure::new(
                Code::Eproto,
                format!("expected the run's input, got {other:?}"),
            ));
        }
        None => return Ok(()),
    };
    let broker = Arc::new(Broker::new(channel));
    watchdog(&broker, rt.deadline(&input))?;
    let place = Placement {
        id: instance,
        root: CLAWFS_IN_WORKER.into(),
        outside: broker.clone(),
    };
    let outcome = rt.run_at(name, &place, tool, input);
    broker.finish(&outcome);
    Ok(())
}

/// How long after the run's deadline the watchdog answers for a tool the
/// epoch interrupt could not stop: time for the interrupt to win the race
/// whenever the tool is in its own code, also in a worker its cgroup's
/// cpu.max lets run 50 ms of each second.
const WATCHDOG_MARGIN: Duration = Duration::from_secs(1);

/// The epoch interrupt stops a tool only while it runs WebAssembly; one
/// blocked in a host call (a WASI sleep or poll) would wait past its
/// deadline. A thread answers for it at the deadline with the deadline's
/// code, and ends the worker.
fn watchdog(broker: &Arc<Broker>, (deadline_ms, code): (u64, Code)) -> Result<(), Failure> {
    let broker = Arc::clone(broker);
    let wait = Duration::from_millis(deadline_ms) + WATCHDOG_MARGIN;
    std::thread::Builder::new()
        .name("clawos-watchdog".into())
        .spawn(move || {
            std::thread::sleep(wait);
            let reason = match code {
                Code::Etimeout => format!("client timeout of {deadline_ms} ms passed"),
                _ => format!("cpu budget of {deadline_ms} ms spent"),
            };
            let outcome = RunOutcome {
                code,
                message: format!(
                    "{reason}: the tool was blocked in a host call (a WASI sleep or poll)"
                ),
                ..RunOutcome::default()
            };
            broker.finish(&outcome);
            sys::exit_now(0)
        })
        .map(drop)
        .map_err(|e| {
            Failure::new(
                Code::SandboxSetupFailed,
                format!("cannot start the watchdog thread: {e}"),
            )
        })
}
