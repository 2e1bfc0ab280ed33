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

use clap::{Parser, Subcommand};
use clawos_bridge::config::{EgressRule, NetworkPolicy};
use clawos_bridge::egress::Egress;
use std::io::Read;
use std::path::PathBuf;
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
        What::Connect { port, host } => {
            let listener = match host {
                Some(_) => None,
                None => Some(
                    std::net::TcpListener::bind(("127.0.0.1", port))
                        .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1:{port}: {e}")),
                ),
            };
            let host = host.unwrap_or_else(|| "127.0.0.1".into());
            let open = NetworkPolicy {
                allow_names: vec!["localhost".into()],
                // Every address (the loopback is reached only where a
                // rule names it) and every port: the kernel alone judges.
                allow: ["0.0.0.0/0", "127.0.0.0/8"]
                    .iter()
                    .map(|cidr| EgressRule {
                        cidr: cidr.parse().unwrap(),
                        ports: (1..=u16::MAX).collect(),
                    })
                    .collect(),
                ..NetworkPolicy::default()
            };
            match Egress::new(open).connect(&host, port, Duration::from_secs(5)) {
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
