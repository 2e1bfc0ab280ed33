//! `clawos-hostile`: in the booted appliance, hostile and normal clients of
//! the daemon at once, for a fixed time (tests/e2e/tests/hostile.rs drives
//! it; test-only, never in the image).
//!
//! - normal: one client runs `hello` and asks for `status` and `list`, back
//!   to back; every answer must be SUCCESS with the exact output;
//! - idle: connections that connect and never send (they hold places the
//!   daemon must give to others);
//! - slow: clients that announce a 1 MiB frame and send a byte a second;
//! - refused: a child process as uid 65534 connecting and sending 32 MiB
//!   frame headers and data (needs the socket opened to it: the test does
//!   `chmod 666`); every connection must be answered EPERM;
//! - compile bombs: installs of a generated component whose compilation
//!   takes more than the compile cgroup's memory; each must be answered
//!   WASM_RESOURCE_LIMIT (105);
//! - log flood: `misbehave log-flood` runs, each SUCCESS.
//!
//! Prints one line per client kind and the daemon's pid and resident
//! memory before and after; exits 1 if any answer was not the one
//! expected or the daemon's pid changed.

use clap::Parser;
use clawos_bridge::error::Code;
use clawos_bridge::ipc::client::Client;
use clawos_bridge::ipc::frame;
use clawos_bridge::ipc::proto::{Body, ComponentSource, Request, Response, RunRequest};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "clawos-hostile",
    about = "Hostile and normal clients of clawos-wasm-daemon at once (test-only: never in the image)"
)]
struct Cli {
    /// How long the clients run, seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The daemon's socket.
    #[arg(long, default_value = "/run/clawos/bridge.sock")]
    socket: PathBuf,
    /// Idle connections held open.
    #[arg(long, default_value_t = 20)]
    idle: usize,
    /// Slow-frame clients.
    #[arg(long, default_value_t = 2)]
    slow: usize,
    /// Functions in the compile bomb.
    #[arg(long, default_value_t = 30_000)]
    bomb_functions: usize,
    /// Write the compile bomb to this file and exit (the e2e test makes it
    /// on the host: generating it under TCG takes minutes).
    #[arg(long)]
    emit_bomb: Option<PathBuf>,
    /// The compile bomb to install, as made by `--emit-bomb`.
    #[arg(long)]
    bomb: Option<PathBuf>,
    /// Compile the bomb in this process (wasmtime's default engine), print
    /// the time and the peak resident memory, and exit: for sizing it.
    #[arg(long)]
    measure_bomb: bool,
    /// Internal: be the refused client (run as uid 65534) until the file
    /// `--stop` names exists.
    #[arg(long, hide = true)]
    refused_client: bool,
    /// Internal: see `--refused-client`.
    #[arg(long, hide = true)]
    stop: Option<PathBuf>,
}

/// Counts of one client kind.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    wrong: AtomicU64,
    first_wrong: Mutex<Option<String>>,
}

impl Tally {
    fn expect(&self, what: &str, got: Result<Response, String>, want: Code) {
        match got {
            Ok(r) if r.code == want => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => self.wrong(format!("{what}: {} {}", r.code, r.message)),
            Err(e) => self.wrong(format!("{what}: {e}")),
        }
    }

    fn wrong(&self, why: String) {
        self.wrong.fetch_add(1, Ordering::Relaxed);
        self.first_wrong.lock().unwrap().get_or_insert(why);
    }

    fn line(&self, kind: &str) -> String {
        format!(
            "hostile: {kind} ok={} wrong={}{}",
            self.ok.load(Ordering::Relaxed),
            self.wrong.load(Ordering::Relaxed),
            self.first_wrong
                .lock()
                .unwrap()
                .as_ref()
                .map_or(String::new(), |w| format!(" first_wrong={w:?}"))
        )
    }
}

fn request(socket: &Path, r: &Request) -> Result<Response, String> {
    Client::connect(socket)
        .and_then(|mut c| c.request(r))
        .map_err(|f| format!("{}: {}", f.code, f.message))
}

fn run(name: &str, args: &[&str]) -> Request {
    Request::Run(RunRequest {
        name: name.into(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        input: vec![],
        env: vec![],
        timeout_ms: None,
    })
}

/// The daemon's pid, from its status.
fn daemon_pid(socket: &Path) -> u32 {
    match request(socket, &Request::Status) {
        Ok(Response {
            body: Body::Status(s),
            ..
        }) => s.pid,
        other => die(&format!("status: {:?}", other.map(|r| r.message))),
    }
}

fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn die(what: &str) -> ! {
    eprintln!("clawos-hostile: {what}");
    std::process::exit(1)
}

/// A component whose core module has `n` functions, each exported
/// through a canonical lift: small to send, costly to compile (a
/// trampoline and metadata per export).
fn compile_bomb(n: usize) -> Vec<u8> {
    let mut wat = String::from("(component (core module $m\n");
    for i in 0..n {
        wat.push_str(&format!(
            "(func (export \"f{i}\") (result i32) i32.const {i})\n"
        ));
    }
    wat.push_str(")\n(core instance $i (instantiate $m))\n");
    for i in 0..n {
        wat.push_str(&format!(
            "(func (export \"g{i}\") (result u32) (canon lift (core func $i \"f{i}\")))\n"
        ));
    }
    wat.push(')');
    wat::parse_str(&wat).unwrap_or_else(|e| die(&format!("compile bomb: {e}")))
}

/// The refused client: as uid 65534, connections that send a 32 MiB
/// frame's header and as much of its body as the daemon takes; each must
/// be answered EPERM before anything is read.
fn refused_client(socket: &Path, stop: &Path) -> ! {
    let tally = Tally::default();
    let chunk = vec![0u8; 1 << 20];
    while !stop.exists() {
        let mut c = match UnixStream::connect(socket) {
            Ok(c) => c,
            Err(e) => die(&format!("refused client: connect: {e}")),
        };
        let _ = c.set_write_timeout(Some(Duration::from_secs(5)));
        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = c.write_all(&frame::header(32 << 20));
        for _ in 0..32 {
            if c.write_all(&chunk).is_err() {
                break;
            }
        }
        let got = frame::read_blocking(&mut c, 1 << 20)
            .map_err(|f| f.message)
            .and_then(|p| p.ok_or_else(|| "closed without an answer".to_owned()))
            .and_then(|p| Response::decode(&p).map_err(|f| f.message));
        tally.expect("refused connection", got, Code::Eperm);
    }
    println!("{}", tally.line("refused"));
    let wrong = tally.wrong.load(Ordering::Relaxed);
    std::process::exit(i32::from(wrong > 0))
}

fn main() {
    let cli = Cli::parse();
    if let Some(path) = &cli.emit_bomb {
        std::fs::write(path, compile_bomb(cli.bomb_functions))
            .unwrap_or_else(|e| die(&format!("{}: {e}", path.display())));
        return;
    }
    if cli.measure_bomb {
        let bomb = compile_bomb(cli.bomb_functions);
        let t = Instant::now();
        let r = wasmtime::Engine::default().precompile_component(&bomb);
        let hwm = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .map(str::to_owned)
            });
        println!(
            "{} bytes, {} functions: {:?}, {:?}, {}",
            bomb.len(),
            cli.bomb_functions,
            t.elapsed(),
            r.map(|a| a.len()),
            hwm.unwrap_or_default()
        );
        return;
    }
    if cli.refused_client {
        let stop = cli
            .stop
            .as_deref()
            .unwrap_or_else(|| die("--stop is required"));
        refused_client(&cli.socket, stop);
    }
    let socket = cli.socket.clone();
    let pid = daemon_pid(&socket);
    // Warm up, so that what is measured after is not the first runs'
    // one-time allocations.
    for _ in 0..5 {
        let _ = request(&socket, &run("hello", &["warm"]));
        let _ = request(&socket, &run("misbehave", &["log-flood", "1000"]));
    }
    println!("hostile: daemon pid={pid} rss_idle={}", rss(pid));

    let bomb = match &cli.bomb {
        Some(path) => {
            std::fs::read(path).unwrap_or_else(|e| die(&format!("{}: {e}", path.display())))
        }
        None => compile_bomb(cli.bomb_functions),
    };
    println!("hostile: compile bomb of {} bytes", bomb.len());
    // The daemon's memory is measured once every client has run for a
    // while (its allocator's arenas and tokio's threads at their working
    // size), and again after the rest of the attack and a pause.
    let warmup = Duration::from_secs(15);
    let until = Instant::now() + warmup + Duration::from_secs(cli.seconds);
    let before_rss = AtomicU64::new(0);
    let going = || Instant::now() < until;
    let normal = Tally::default();
    let slow = Tally::default();
    let bombs = Tally::default();
    let flood = Tally::default();
    let idle_closed = AtomicU64::new(0);
    let latency = Mutex::new(Vec::new());
    let stop_file = PathBuf::from("/run/clawos-hostile.stop");
    let _ = std::fs::remove_file(&stop_file);
    let refused = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--refused-client")
        .arg("--socket")
        .arg(&socket)
        .arg("--stop")
        .arg(&stop_file)
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| die(&format!("cannot start the refused client: {e}")));
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Idle connections: made once, and again whenever the daemon
        // closes one to make room.
        s.spawn(|| {
            let mut held: Vec<UnixStream> = Vec::new();
            while going() {
                held.retain(|c| {
                    let mut b = [0u8; 1];
                    let _ = c.set_nonblocking(true);
                    let gone = matches!((&*c).read(&mut b), Ok(0));
                    if gone {
                        idle_closed.fetch_add(1, Ordering::Relaxed);
                    }
                    !gone
                });
                while held.len() < cli.idle {
                    match UnixStream::connect(&socket) {
                        Ok(c) => held.push(c),
                        Err(_) => break,
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        for _ in 0..cli.slow {
            s.spawn(|| {
                while going() {
                    let Ok(mut c) = UnixStream::connect(&socket) else {
                        continue;
                    };
                    let _ = c.write_all(&frame::header(1 << 20));
                    let _ = c.set_read_timeout(Some(Duration::from_millis(1000)));
                    // A byte a second until the daemon gives up on the
                    // frame (frame_timeout_ms) or closes for another client.
                    let answer = loop {
                        if !going() {
                            break None;
                        }
                        if c.write_all(&[0]).is_err() {
                            break Some(read_answer(&mut c));
                        }
                        match read_answer(&mut c) {
                            Err(e) if e.contains("timed out") || e.contains("temporarily") => {}
                            other => break Some(other),
                        }
                    };
                    match answer {
                        // Answered ETIMEOUT at frame_timeout_ms.
                        Some(Ok(r)) => slow.expect("slow frame", Ok(r), Code::Etimeout),
                        // Closed to make room for another client (reset
                        // when the daemon had unread bytes of the frame).
                        Some(Err(e)) if e.contains("closed") || e.contains("reset by peer") => {
                            slow.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Err(e)) => slow.wrong(format!("slow frame: {e}")),
                        None => {}
                    }
                }
            });
        }
        s.spawn(|| {
            while going() {
                let started = Instant::now();
                let r = request(
                    &socket,
                    &Request::Install {
                        name: "bomb".into(),
                        source: ComponentSource::Bytes(bomb.clone()),
                        replace: true,
                        kept_data: Default::default(),
                        grants: vec![],
                        grant_requested: false,
                    },
                );
                if let Ok(r) = &r {
                    eprintln!(
                        "hostile: compile bomb answered after {:.1} s: {} {}",
                        started.elapsed().as_secs_f64(),
                        r.code,
                        r.message
                    );
                }
                // Killed at its memory limit, not at the compile's deadline.
                let r = r.map(|r| match r.message.contains("compile.memory_max") {
                    true => r,
                    false => Response {
                        code: Code::Einternal,
                        ..r
                    },
                });
                bombs.expect("compile bomb", r, Code::WasmResourceLimit);
            }
        });
        s.spawn(|| {
            while going() {
                let r = request(&socket, &run("misbehave", &["log-flood", "2000"]));
                flood.expect("log flood", r, Code::Success);
            }
        });
        // Progress, so that a slow guest shows where it is.
        s.spawn(|| {
            while going() {
                std::thread::sleep(Duration::from_secs(10));
                println!(
                    "hostile: progress normal={} slow={} bomb={} flood={} idle_closed={}",
                    normal.ok.load(Ordering::Relaxed),
                    slow.ok.load(Ordering::Relaxed),
                    bombs.ok.load(Ordering::Relaxed) + bombs.wrong.load(Ordering::Relaxed),
                    flood.ok.load(Ordering::Relaxed),
                    idle_closed.load(Ordering::Relaxed)
                );
            }
        });
        s.spawn(|| {
            while going() {
                let t = Instant::now();
                match request(&socket, &run("hello", &["load"])) {
                    Ok(r) => match &r.body {
                        Body::Run(o) if r.code == Code::Success && o.output == b"hello, load\n" => {
                            normal.ok.fetch_add(1, Ordering::Relaxed);
                            latency.lock().unwrap().push(t.elapsed());
                        }
                        _ => normal.wrong(format!("hello: {} {} {:?}", r.code, r.message, r.body)),
                    },
                    Err(e) => normal.wrong(format!("hello: {e}")),
                }
                normal.expect("status", request(&socket, &Request::Status), Code::Success);
                normal.expect("list", request(&socket, &Request::List), Code::Success);
            }
            done.store(true, Ordering::Relaxed);
        });
        std::thread::sleep(warmup);
        before_rss.store(rss(pid), Ordering::Relaxed);
        println!(
            "hostile: after {} s of every client, daemon rss_before={}",
            warmup.as_secs(),
            before_rss.load(Ordering::Relaxed)
        );
    });
    let before = before_rss.load(Ordering::Relaxed);
    let _ = std::fs::write(&stop_file, b"");
    let refused_out = refused
        .wait_with_output()
        .unwrap_or_else(|e| die(&format!("the refused client: {e}")));
    let refused_line = String::from_utf8_lossy(&refused_out.stdout)
        .trim()
        .to_owned();
    // The last workers and compilers reaped, the runs' memory returned,
    // and the daemon's idle blocking threads gone (tokio keeps one 10 s).
    std::thread::sleep(Duration::from_secs(15));
    let pid_after = daemon_pid(&socket);
    let after = rss(pid);
    let mut lat = latency.into_inner().unwrap();
    lat.sort();
    let p = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    println!("{}", normal.line("normal"));
    println!(
        "hostile: normal hello p50={:?} p99={:?} max={:?}",
        p(0.5),
        p(0.99),
        lat.last().copied().unwrap_or_default()
    );
    println!("{}", slow.line("slow"));
    println!("{refused_line}");
    println!("{}", bombs.line("bomb"));
    println!("{}", flood.line("flood"));
    println!(
        "hostile: idle connections closed for others={}",
        idle_closed.load(Ordering::Relaxed)
    );
    println!(
        "hostile: daemon pid_before={pid} pid_after={pid_after} rss_before={before} rss_after={after} ratio={:.3}",
        after as f64 / before as f64
    );
    let wrong = [&normal, &slow, &bombs, &flood]
        .iter()
        .map(|t| t.wrong.load(Ordering::Relaxed))
        .sum::<u64>();
    if wrong > 0
        || !refused_out.status.success()
        || pid != pid_after
        || !done.load(Ordering::Relaxed)
    {
        die("some answers were not the expected ones (above)");
    }
}

/// The one answer waiting on `c`.
fn read_answer(c: &mut UnixStream) -> Result<Response, String> {
    match frame::read_blocking(c, 1 << 20) {
        Ok(Some(p)) => Response::decode(&p).map_err(|f| f.message),
        Ok(None) => Err("closed".into()),
        Err(f) => Err(f.message),
    }
}
