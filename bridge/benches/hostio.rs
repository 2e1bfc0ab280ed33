//! `cargo bench --bench hostio` (or `make bench`): the host interfaces next
//! to native code, in the same run. The tool runs in this process
//! (`Runtime::run`: no worker, cgroup, seccomp or monitors), so these are
//! the interfaces' own costs; the guest benchmark's load part has the same
//! ClawFS and PostgreSQL work through the sandboxed path.
//!
//! 1. ClawFS throughput: the hostio tool writes then reads a file in 64 KiB
//!    blocks through the filesystem interface (timed inside the tool by the
//!    monotonic clock), against the same loop with `std::fs` on the same
//!    filesystem. Goal: within 3x.
//! 2. PostgreSQL round trip (`SELECT 1` on an open connection) through the
//!    egress proxy, against a direct TCP connection from this process to the
//!    same real server (Debian's package, started here on 127.0.0.1:5432).
//!
//! Prints each figure, the median of several runs, and the ratio.

use clawos_bridge::config::Config;
use clawos_bridge::runtime::{RunInput, Runtime};
use clawos_tool_artifacts::postgres::{self, Postgres};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const BLOCK: usize = 64 * 1024;
const FILE_BYTES: u64 = 64 << 20;
/// Runs of each case (`BENCH_ROUNDS` overrides: `make bench-smoke` runs one).
fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}
const ROUND_TRIPS: u32 = 2000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run_tool(runtime: &Runtime, tool: &clawos_bridge::runtime::Prepared, args: &[&str]) -> String {
    let out = runtime.run(
        "hostio",
        tool,
        RunInput {
            args: args.iter().map(|s| s.to_string()).collect(),
            ..RunInput::default()
        },
    );
    assert_eq!(
        out.code,
        clawos_bridge::error::Code::Success,
        "{}",
        out.message
    );
    String::from_utf8(out.output).unwrap()
}

fn field(text: &str, name: &str) -> f64 {
    let words: Vec<&str> = text.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| *w == name)
        .unwrap_or_else(|| panic!("{name} in {text}"));
    words[i + 1].parse().unwrap()
}

/// Native write then read of FILE_BYTES in 64 KiB blocks: (write ns, read ns).
fn native_fs(dir: &std::path::Path) -> (f64, f64) {
    let path = dir.join("native.dat");
    let block = vec![0x5au8; BLOCK];
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let t0 = Instant::now();
    let mut done = 0;
    while done < FILE_BYTES {
        done += f.write(&block).unwrap() as u64;
    }
    let w = t0.elapsed();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut buf = vec![0u8; BLOCK];
    let t1 = Instant::now();
    while f.read(&mut buf).unwrap() > 0 {}
    let r = t1.elapsed();
    std::fs::remove_file(&path).unwrap();
    (w.as_nanos() as f64, r.as_nanos() as f64)
}

fn mib_per_s(ns: f64) -> f64 {
    FILE_BYTES as f64 / (1 << 20) as f64 / (ns / 1e9)
}

/// A direct PostgreSQL session: startup, then `n` simple queries; ns per query.
fn direct_pg(port: u16, n: u32) -> f64 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for p in ["user", "postgres", "database", "postgres", ""] {
        body.extend_from_slice(p.as_bytes());
        body.push(0);
    }
    let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    startup.extend_from_slice(&body);
    s.write_all(&startup).unwrap();
    let read_until_ready = |s: &mut TcpStream| loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).unwrap();
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut rest = vec![0u8; len - 4];
        s.read_exact(&mut rest).unwrap();
        assert_ne!(
            head[0],
            b'E',
            "server error: {}",
            String::from_utf8_lossy(&rest)
        );
        if head[0] == b'Z' {
            return;
        }
    };
    read_until_ready(&mut s);
    let q = b"SELECT 1\0";
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&((q.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(q);
    let t = Instant::now();
    for _ in 0..n {
        s.write_all(&msg).unwrap();
        read_until_ready(&mut s);
    }
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        state_dir: dir.path().join("state"),
        ..Config::default()
    };
    config.clawfs.max_write_bytes = FILE_BYTES * 2;
    // The server is on this host's loopback, which the default allow-list
    // refuses: a rule naming it lets it through (docs/policy.md).
    config
        .network
        .allow
        .push(clawos_bridge::config::EgressRule {
            cidr: "127.0.0.1/32".parse().expect("a CIDR"),
            ports: vec![postgres::PORT],
        });
    config.sandbox.cpu_budget_ms = 120_000;
    let runtime = Runtime::new(&config).expect("runtime");
    let cwasm = runtime
        .precompile(&clawos_tool_artifacts::bytes("hostio"))
        .unwrap();
    let artifact = dir.path().join("hostio.cwasm");
    std::fs::write(&artifact, cwasm).unwrap();
    let tool = runtime.load_artifact(&artifact).unwrap();
    let native_dir = config.clawfs_root().join("native");
    std::fs::create_dir_all(&native_dir).unwrap();

    println!(
        "in-process ClawFS, {} MiB in 64 KiB blocks, median of {} runs (same filesystem):",
        FILE_BYTES >> 20,
        rounds()
    );
    let (mut iw, mut ir, mut nw, mut nr) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds() {
        let out = run_tool(&runtime, &tool, &["fs-bench", &FILE_BYTES.to_string()]);
        iw.push(field(&out, "write_ns"));
        ir.push(field(&out, "read_ns"));
        let (w, r) = native_fs(&native_dir);
        nw.push(w);
        nr.push(r);
    }
    for (what, via, native) in [
        ("write", median(iw), median(nw)),
        ("read", median(ir), median(nr)),
    ] {
        println!(
            "  {what:<5} interface {:>8.0} MiB/s   std::fs {:>8.0} MiB/s   {:.2}x native time",
            mib_per_s(via),
            mib_per_s(native),
            via / native
        );
    }

    let pg = Postgres::start(postgres::PORT);
    let addr = format!("127.0.0.1:{}", pg.port);
    println!(
        "in-process PostgreSQL `SELECT 1` round trip, {ROUND_TRIPS} per run, median of {} runs:",
        rounds()
    );
    let (mut proxied, mut direct) = (vec![], vec![]);
    for _ in 0..rounds() {
        let out = run_tool(
            &runtime,
            &tool,
            &["pg-bench", &addr, &ROUND_TRIPS.to_string()],
        );
        proxied.push(field(&out, "total_ns") / f64::from(ROUND_TRIPS));
        direct.push(direct_pg(pg.port, ROUND_TRIPS));
    }
    let (p, d) = (median(proxied), median(direct));
    println!(
        "  proxied {:>8.1?}   direct {:>8.1?}   {:.2}x direct",
        Duration::from_nanos(p as u64),
        Duration::from_nanos(d as u64),
        p / d
    );
}
