//! Test-only: acts as a process in the bridge's cgroup subtree, for the
//! e2e tests of the eBPF monitors (tests/e2e/tests/monitor.rs). It joins
//! the group given by `--join` itself, after it was executed: an execve
//! inside the subtree is what the monitors refuse.
//!
//! - `exec PATH`: execve PATH; prints `exec PATH: ok` or the errno.
//! - `connect PORT`: connect to 127.0.0.1:PORT through the bridge's own
//!   egress code with its policy check switched off (every port allowed),
//!   as a proxy bug would; prints `connect PORT: ok` or the failure. A
//!   listener on 127.0.0.1:PORT is opened first (listening is not
//!   checked), so that a connect the kernel allows succeeds. With
//!   `--host ADDR` it connects to ADDR:PORT instead (no listener).
//! - `open-loop N FILE [--unmonitored]`: N times open FILE, read one
//!   byte, close; prints `pid P`, then `open-loop N: T ns per iteration,
//!   C ns CPU`: wall time, and the process's own CPU time (user + system,
//!   which includes the monitors' programs run in its context but not the
//!   daemon reading their events).
//!   With `--unmonitored` it also proves that no monitor was attached
//!   while it ran: an execve (refused by the monitors) before and after
//!   the loop must both succeed, else it prints `monitored: yes`.
//! - `grant-connect --allow CIDR:PORT... --to ADDR:PORT...`: plays the
//!   daemon for the kernel's per-instance egress check. It loads the
//!   monitors itself (`Monitor::load` with `--config`, so that the
//!   programs' daemon is this process; the daemon's own programs stay
//!   attached and keep their checks), opens a listener on each `--to`
//!   port (`[::]`, both families), then connects to each `--to` through
//!   the egress code with its policy check switched off (as `connect`),
//!   from its main thread: first serving no instance (`unserved`), then
//!   registered as serving instance `--instance` whose grant is the
//!   `--allow` pairs (`serving`), then once that registration is dropped
//!   (`released`). One line per connect: `PHASE ADDR:PORT: ok` or the
//!   failure.

use clap::{Parser, Subcommand};
use clawos_bridge::config::{Config, EgressRule, NetworkPolicy};
use clawos_bridge::egress::Egress;
use clawos_bridge::monitor::{Monitor, grants};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Move into this cgroup (created if missing) before acting.
    #[arg(long)]
    join: Option<PathBuf>,
    /// Stay this long after acting (for an alert that kills the group).
    #[arg(long, default_value_t = 0)]
    linger_ms: u64,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    Exec {
        path: String,
    },
    Connect {
        port: u16,
        #[arg(long)]
        host: Option<String>,
    },
    OpenLoop {
        n: u32,
        file: PathBuf,
        #[arg(long)]
        unmonitored: bool,
    },
    GrantConnect {
        /// A destination of the grant: CIDR:PORT (`127.0.0.1/32:5432`,
        /// `::1/128:5432`).
        #[arg(long, required = true, value_parser = allow_rule)]
        allow: Vec<EgressRule>,
        /// Where to connect: ADDR:PORT (`127.0.0.1:5432`, `[::1]:5432`).
        #[arg(long, required = true)]
        to: Vec<SocketAddr>,
        /// The instance the grant is registered for.
        #[arg(long, default_value_t = 1)]
        instance: u64,
        /// The daemon's configuration: the monitors' object, cgroup root,
        /// ports and rules.
        #[arg(long, default_value = "/etc/clawos/daemon.toml")]
        config: PathBuf,
    },
}

/// `CIDR:PORT` as a rule of one port.
fn allow_rule(text: &str) -> Result<EgressRule, String> {
    let (cidr, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not CIDR:PORT"))?;
    Ok(EgressRule {
        cidr: cidr.parse().map_err(|e| format!("{cidr:?}: {e}"))?,
        ports: vec![port.parse().map_err(|e| format!("{port:?}: {e}"))?],
    })
}

/// The bridge's egress code with its own policy check switched off: every
/// address (the loopback is reached only where a rule names it) and every
/// port, so that the kernel alone judges.
fn unchecked_egress() -> Egress {
    let open = NetworkPolicy {
        allow_names: vec!["localhost".into()],
        allow: ["0.0.0.0/0", "127.0.0.0/8", "::/0", "::1/128"]
            .iter()
            .map(|cidr| EgressRule {
                cidr: cidr.parse().unwrap(),
                ports: (1..=u16::MAX).collect(),
            })
            .collect(),
        ..NetworkPolicy::default()
    };
    Egress::new(open)
}

/// `grant-connect`: see the module's doc.
fn grant_connect(allow: &[EgressRule], to: &[SocketAddr], instance: u64, config: &Path) {
    let config = Config::load(config).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    let _monitor =
        Monitor::load(&config).unwrap_or_else(|f| panic!("cannot load the monitors: {f}"));
    // A listener on every port (listening is not checked): a connect the
    // kernel lets through succeeds, whichever loopback address it goes to.
    let mut ports: Vec<u16> = to.iter().map(SocketAddr::port).collect();
    ports.sort_unstable();
    ports.dedup();
    let _listeners: Vec<std::net::TcpListener> = ports
        .iter()
        .map(|p| {
            std::net::TcpListener::bind(("::", *p))
                .unwrap_or_else(|e| panic!("cannot listen on [::]:{p}: {e}"))
        })
        .collect();
    let egress = unchecked_egress();
    let connect_all = |phase: &str| {
        for addr in to {
            let host = addr.ip().to_string();
            match egress.connect(&host, addr.port(), Duration::from_secs(5)) {
                Ok(_stream) => println!("{phase} {addr}: ok"),
                Err(f) => println!("{phase} {addr}: {f}"),
            }
        }
    };
    connect_all("unserved");
    let serving = grants::serve(instance, allow)
        .unwrap_or_else(|f| panic!("cannot serve instance {instance}: {f}"));
    connect_all("serving");
    drop(serving);
    connect_all("released");
}

fn errno(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::EACCES) => "EACCES".into(),
        Some(n) => format!("errno {n}"),
        None => e.to_string(),
    }
}

/// User plus system CPU time of this process, ns.
#[allow(unsafe_code)]
fn cpu_ns() -> u128 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let ns = |t: libc::timeval| t.tv_sec as u128 * 1_000_000_000 + t.tv_usec as u128 * 1000;
    ns(u.ru_utime) + ns(u.ru_stime)
}

fn main() {
    let args = Args::parse();
    if let Some(dir) = &args.join {
        let _ = std::fs::create_dir(dir);
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .unwrap_or_else(|e| panic!("cannot join {}: {e}", dir.display()));
    }
    let linger = Duration::from_millis(args.linger_ms);
    match args.what {
        What::Exec { path } => match std::process::Command::new(&path).status() {
            Ok(s) => println!("exec {path}: ok ({s})"),
            Err(e) => println!("exec {path}: {}", errno(&e)),
        },
        What::GrantConnect {
            allow,
            to,
            instance,
            config,
        } => grant_connect(&allow, &to, instance, &config),
        What::Connect { port, host } => {
            let listener = match host {
                Some(_) => None,
                None => Some(
                    std::net::TcpListener::bind(("127.0.0.1", port))
                        .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1:{port}: {e}")),
                ),
            };
            let host = host.unwrap_or_else(|| "127.0.0.1".into());
            match unchecked_egress().connect(&host, port, Duration::from_secs(5)) {
                Ok(_stream) => {
                    if let Some(l) = listener {
                        let _ = l.accept();
                    }
                    println!("connect {port}: ok");
                }
                Err(f) => println!("connect {port}: {}: {}", f.code, f.message),
            }
        }
        What::OpenLoop {
            n,
            file,
            unmonitored,
        } => {
            println!("pid {}", std::process::id());
            let exec_ok = || std::process::Command::new("/bin/true").status().is_ok();
            let before = unmonitored && exec_ok();
            let mut byte = [0u8; 1];
            let cpu0 = cpu_ns();
            let t = Instant::now();
            for _ in 0..n {
                let mut f = std::fs::File::open(&file)
                    .unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
                f.read_exact(&mut byte).expect("read one byte");
            }
            let ns = t.elapsed().as_nanos() / u128::from(n.max(1));
            let cpu = (cpu_ns() - cpu0) / u128::from(n.max(1));
            println!("open-loop {n}: {ns} ns per iteration, {cpu} ns CPU");
            if unmonitored {
                let after = exec_ok();
                println!("monitored: {}", if before && after { "no" } else { "yes" });
            }
        }
    }
    std::thread::sleep(linger);
}
