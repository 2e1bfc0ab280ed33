//! One cell of the matrix: an attack under one layer, in its own process
//! (`clawos-layer-matrix cell ATTACK LAYER`). It applies the layer, makes
//! the attack and prints `verdict<TAB>short<TAB>detail` on stdout; a cell
//! killed by a signal says nothing, and the matrix reads the signal.

use super::*;
use clawos_bridge::apparmor::{self, WORKER_PROFILE};
use clawos_bridge::error::Code;
use clawos_bridge::runtime::{RunInput, Runtime};
use clawos_bridge::sandbox::{launcher, sys, worker};
use clawos_bridge::seccomp::Kind;
use std::io::Write;

/// An attack's result inside a cell: `Ok` if it reached its goal, `Err`
/// with (short, detail) if it did not.
type Attempt = Result<String, (String, String)>;

fn refused(call: &str, errno: i32) -> (String, String) {
    let name = errno_name(errno);
    (name.clone(), format!("{call} failed with {name}"))
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// What a cell needs from the matrix.
#[derive(Debug, Clone, clap::Args)]
pub struct CellArgs {
    /// The ptrace victim's pid.
    #[arg(long)]
    pub victim: Option<i32>,
    /// The block device of the ClawFS partition.
    #[arg(long)]
    pub device: Option<PathBuf>,
    /// Where the mount attack mounts it.
    #[arg(long)]
    pub target: Option<PathBuf>,
    /// The instance leaf cgroup to enter (the cgroup layer).
    #[arg(long)]
    pub leaf: Option<PathBuf>,
}

/// Run `attack` under `layer` alone and print `verdict<TAB>short<TAB>detail`.
pub fn cell(attack: Attack, layer: Layer, args: &CellArgs) -> ! {
    let attempt = match layer {
        Layer::None => native(attack, args),
        Layer::Wasm => in_wasm(attack),
        Layer::Seccomp => Kind::Worker
            .policy()
            .and_then(|p| p.compile())
            .and_then(|f| f.install())
            .map_err(|f| broken(&f.message))
            .and_then(|()| native(attack, args)),
        Layer::Cgroup => match &args.leaf {
            Some(leaf) => std::fs::write(leaf.join("cgroup.procs"), "0")
                .map_err(|e| broken(&format!("enter {}: {e}", leaf.display())))
                .and_then(|()| native(attack, args)),
            None => Err(broken("the cgroup layer needs --leaf")),
        },
        // The label is read back from /proc (what the profile lets a
        // worker read), not through the securityfs check the daemon makes.
        Layer::Apparmor => apparmor::change_profile(WORKER_PROFILE)
            .and_then(|()| apparmor::current_label())
            .and_then(|label| apparmor::check_label(&label, WORKER_PROFILE))
            .map_err(|f| broken(&f.message))
            .and_then(|()| native(attack, args)),
        Layer::Namespaces => in_namespaces(attack, args),
    };
    report(attempt)
}

fn broken(why: &str) -> (String, String) {
    ("broken".to_owned(), why.to_owned())
}

fn report(attempt: Attempt) -> ! {
    let line = match attempt {
        Ok(detail) => format!("succeeded\tran\t{detail}"),
        Err((short, detail)) if short == "broken" => format!("broken\t-\t{detail}"),
        Err((short, detail)) => format!("stopped\t{short}\t{detail}"),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    sys::exit_now(0)
}

/// The attack as native code in this process.
fn native(attack: Attack, args: &CellArgs) -> Attempt {
    match attack {
        Attack::MemoryBomb => memory_bomb(),
        Attack::ForkBomb => fork_bomb(),
        Attack::CpuSpin => cpu_spin(),
        Attack::Exec => exec(),
        Attack::Ptrace => ptrace(args.victim.ok_or_else(|| broken("no --victim"))?),
        Attack::Mount => mount(
            args.device
                .as_deref()
                .ok_or_else(|| broken("no --device"))?,
            args.target
                .as_deref()
                .ok_or_else(|| broken("no --target"))?,
        ),
        Attack::RawSocket => raw_socket(),
        Attack::FileEscape => match std::fs::read("/etc/shadow") {
            Ok(bytes) => Ok(format!("read {} bytes of /etc/shadow", bytes.len())),
            Err(e) => Err(refused("open(/etc/shadow)", e.raw_os_error().unwrap_or(0))),
        },
    }
}

#[allow(unsafe_code)]
fn memory_bomb() -> Attempt {
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    // SAFETY: a fresh anonymous private mapping; nothing else refers to it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEMORY_BOMB,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(refused("mmap", last_errno()));
    }
    // The kernel faults every page in at once: under TCG this is many
    // times faster than touching them one by one from here.
    // SAFETY: `p` is the mapping of MEMORY_BOMB bytes made above.
    if unsafe { libc::madvise(p, MEMORY_BOMB, MADV_POPULATE_WRITE) } != 0 {
        return Err(refused("madvise(MADV_POPULATE_WRITE)", last_errno()));
    }
    Ok(format!("holds {} MiB of touched memory", MEMORY_BOMB >> 20))
}

#[allow(unsafe_code)]
fn fork_bomb() -> Attempt {
    let mut children = Vec::new();
    let result = loop {
        if children.len() == FORK_BOMB {
            break Ok(format!("{FORK_BOMB} processes alive at once"));
        }
        // SAFETY: the cell is single-threaded; the child only pauses.
        match unsafe { libc::fork() } {
            -1 => {
                let (short, detail) =
                    refused(&format!("fork #{}", children.len() + 1), last_errno());
                break Err((
                    short,
                    format!("{detail} ({} children alive)", children.len()),
                ));
            }
            0 => loop {
                // SAFETY: pause has no preconditions.
                unsafe { libc::pause() };
            },
            pid => children.push(pid),
        }
    };
    for pid in children {
        // SAFETY: our own children, killed and reaped.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    result
}

fn cpu_spin() -> Attempt {
    use rustix::time::{ClockId, clock_gettime};
    let cpu = || {
        let t = clock_gettime(ClockId::ProcessCPUTime);
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    };
    let (start, used) = (Instant::now(), cpu());
    let mut x = 0u64;
    while start.elapsed() < SPIN {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    let share = (cpu() - used).as_secs_f64() / start.elapsed().as_secs_f64();
    let said = format!(
        "got {:.1}% of a CPU over {:.1} s",
        share * 100.0,
        start.elapsed().as_secs_f64()
    );
    if share > SPIN_STOPPED {
        Ok(said)
    } else {
        Err((format!("{:.1}% CPU", share * 100.0), said))
    }
}

#[allow(unsafe_code)]
fn exec() -> Attempt {
    let _ = std::io::stdout().flush();
    let argv = [
        c"busybox".as_ptr(),
        c"echo".as_ptr(),
        c"succeeded\tran\texecve ran /bin/busybox".as_ptr(),
        std::ptr::null(),
    ];
    // SAFETY: NUL-terminated strings and a NULL-terminated argv that
    // outlive the call; on success this process image is replaced.
    unsafe { libc::execv(c"/bin/busybox".as_ptr(), argv.as_ptr()) };
    Err(refused("execve(/bin/busybox)", last_errno()))
}

#[allow(unsafe_code)]
fn ptrace(victim: i32) -> Attempt {
    // SAFETY: PTRACE_ATTACH takes no pointers.
    if unsafe { libc::ptrace(libc::PTRACE_ATTACH, victim, 0, 0) } == -1 {
        return Err(refused(
            &format!("ptrace(PTRACE_ATTACH, {victim})"),
            last_errno(),
        ));
    }
    // SAFETY: the tracee stops, we wait for that stop and let it go.
    unsafe {
        libc::waitpid(victim, std::ptr::null_mut(), libc::__WALL);
        libc::ptrace(libc::PTRACE_DETACH, victim, 0, 0);
    }
    Ok(format!(
        "attached to pid {victim}, a process outside the sandbox"
    ))
}

fn mount(device: &Path, target: &Path) -> Attempt {
    use rustix::mount::{MountFlags, UnmountFlags};
    // The partition's own flags (read-write): a read-only second mount of a
    // read-write ext4 is refused with EBUSY whoever asks.
    match rustix::mount::mount(device, target, "ext4", MountFlags::empty(), c"") {
        Ok(()) => {
            let _ = rustix::mount::unmount(target, UnmountFlags::DETACH);
            Ok(format!(
                "mounted {} (the ClawFS partition) on {}",
                device.display(),
                target.display()
            ))
        }
        Err(e) => Err(refused(
            &format!("mount({}, {}, ext4)", device.display(), target.display()),
            e.raw_os_error(),
        )),
    }
}

fn raw_socket() -> Attempt {
    use rustix::net::{AddressFamily, SocketType, ipproto, sockopt};
    let s = rustix::net::socket(AddressFamily::INET, SocketType::RAW, Some(ipproto::UDP))
        .map_err(|e| refused("socket(AF_INET, SOCK_RAW, IPPROTO_UDP)", e.raw_os_error()))?;
    sockopt::set_socket_timeout(&s, sockopt::Timeout::Recv, Some(Duration::from_millis(200)))
        .map_err(|e| refused("setsockopt(SO_RCVTIMEO)", e.raw_os_error()))?;
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    while start.elapsed() < Duration::from_secs(2) {
        if let Ok((n, _)) = rustix::net::recv(&s, &mut buf, rustix::net::RecvFlags::empty())
            && buf[..n].windows(MARKER.len()).any(|w| w == MARKER)
        {
            return Ok(format!(
                "a raw socket captured the host's loopback traffic (a {n}-byte packet with the marker)"
            ));
        }
    }
    Err((
        "saw nothing".to_owned(),
        "the raw socket opened in the worker's own network namespace and saw none of the host's traffic in 2 s".to_owned(),
    ))
}

/// The attack as native code in a child in new user, pid, net and mnt
/// namespaces, in the worker's mount tree, with a full set of
/// capabilities in its user namespace.
fn in_namespaces(attack: Attack, args: &CellArgs) -> Attempt {
    let clawfs = Path::new(WORK).join("clawfs");
    let (go_read, go_write) = rustix::pipe::pipe().map_err(|e| broken(&format!("pipe: {e}")))?;
    let flags =
        (libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::CLONE_NEWNET | libc::CLONE_NEWNS) as u64;
    match sys::clone3(flags, None).map_err(|f| broken(&f.message))? {
        None => {
            drop(go_write);
            let mut byte = [0u8; 1];
            let attempt = match rustix::io::read(&go_read, &mut byte) {
                // The shipped config's devices, as the appliance binds them.
                Ok(1) => worker::mount_tree(
                    Some(&clawfs),
                    &clawos_bridge::config::DevicePolicy::default().allow,
                )
                .map_err(|f| broken(&format!("the worker's mount tree: {}", f.message)))
                .and_then(|()| {
                    // The same attack, aimed at what the tree holds.
                    let inside = CellArgs {
                        target: Some(worker::CLAWFS_IN_WORKER.into()),
                        ..args.clone()
                    };
                    native(attack, &inside)
                }),
                _ => Err(broken("the cell could not map the child's ids")),
            };
            report(attempt)
        }
        Some(child) => {
            drop(go_read);
            launcher::map_ids(child.pid).map_err(|f| broken(&f.message))?;
            rustix::io::write(&go_write, b"g").map_err(|e| broken(&format!("start child: {e}")))?;
            let mut status = 0;
            // SAFETY: waiting for our own child.
            #[allow(unsafe_code)]
            unsafe {
                libc::waitpid(child.pid, &mut status, 0)
            };
            if libc::WIFSIGNALED(status) {
                let sig = signal_name(libc::WTERMSIG(status));
                return Err((
                    sig.clone(),
                    format!("the namespaced child was killed by {sig}"),
                ));
            }
            // The child reported; nothing more to say.
            sys::exit_now(0)
        }
    }
}

// ---- the wasm layer: the attack as a tool ----

fn in_wasm(attack: Attack) -> Attempt {
    let mut config = Config::load(Path::new(DAEMON_CONFIG)).map_err(|e| broken(&e.to_string()))?;
    config.sandbox.cpu_budget_ms = WASM_BUDGET_MS;
    let rt = Runtime::new(&config).map_err(|f| broken(&f.message))?;
    let tools = config.state_dir.join("tools");
    let run = |tool: &str, args: &[&str]| {
        std::fs::create_dir_all(config.clawfs_root().join(tool))
            .map_err(|e| broken(&format!("ClawFS directory of {tool}: {e}")))?;
        let prepared = rt
            .load_artifact(&tools.join(tool).join("component.cwasm"))
            .map_err(|f| broken(&f.message))?;
        let input = RunInput {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            ..RunInput::default()
        };
        Ok::<_, (String, String)>(rt.run(tool, &prepared, input))
    };
    match attack {
        Attack::MemoryBomb | Attack::CpuSpin => {
            let (tool, args): (&str, &[&str]) = if attack == Attack::MemoryBomb {
                ("memgrow", &["512"])
            } else {
                ("spinner", &[])
            };
            let out = run(tool, args)?;
            if out.code == Code::Success {
                Ok(format!("{tool} {args:?} ran to the end"))
            } else {
                Err((
                    out.code.value().to_string(),
                    format!("{tool} {args:?} ended with {}: {}", out.code, out.message),
                ))
            }
        }
        Attack::FileEscape => {
            let (mut said, mut codes) = (Vec::new(), Vec::new());
            for args in [
                ["read", "../../../etc/shadow"],
                ["wasi-read", "/../etc/shadow"],
            ] {
                let out = run("probe", &args)?;
                let answer = String::from_utf8_lossy(&out.output).trim().to_owned();
                if out.code == Code::Success && answer.starts_with("ok") {
                    return Ok(format!("probe {args:?} answered {answer}"));
                }
                said.push(format!("probe {args:?} answered {answer:?} ({})", out.code));
                codes.push(answer.split(' ').take(2).collect::<Vec<_>>().join(" "));
            }
            Err((codes.join(", "), said.join("; ")))
        }
        other => link_refused(&rt, other),
    }
}

/// A component asking for the attack's call as an import: the bridge's
/// WIT world offers no such function, so it cannot even be linked.
fn link_refused(rt: &Runtime, attack: Attack) -> Attempt {
    let call = match attack {
        Attack::ForkBomb => "fork",
        Attack::Exec => "execve",
        Attack::Ptrace => "ptrace",
        Attack::Mount => "mount",
        _ => "socket-raw",
    };
    let text = format!(
        r#"(component (import "clawos:attack/syscalls" (instance (export "{call}" (func (result u32))))))"#
    );
    let bytes = wat::parse_str(&text).map_err(|e| broken(&format!("wat: {e}")))?;
    let component = wasmtime::component::Component::from_binary(rt.engine(), &bytes)
        .map_err(|e| broken(&format!("compile: {e:#}")))?;
    match rt.prepare(&component) {
        Ok(_) => Ok(format!("a component importing `{call}` was linked")),
        Err(f) => Err((
            f.code.value().to_string(),
            format!("a component importing `{call}`: {} ({})", f.message, f.code),
        )),
    }
}
