//! Uses every function of the filesystem, device, network and cgroup
//! interfaces and checks what comes back, printing one `ok` line per check;
//! fails with EINTERNAL naming the first check that did not hold.
//!
//! Arguments: `cgroup=available` or `cgroup=unavailable` (what the host
//! offers: on a host without cgroup v2 every cgroup function must answer
//! INTERFACE_UNAVAILABLE), then optionally `pg=HOST:PORT`, a PostgreSQL
//! server (trust auth, user and database `postgres`) to query through the
//! egress proxy. `pg-bench HOST:PORT N` instead runs N `SELECT 1` round
//! trips on one connection and prints the mean in µs; `fs-bench BYTES
//! [FILE]` writes and reads BYTES in 64 KiB blocks (in FILE, `bench.dat`
//! unless named), removes the file and prints both rates.

mod pg;

use clawos_tool::{
    Guest, cgroup, device, export, filesystem, logging, network, system, types::ErrorCode,
};
use std::fmt::Write;

struct HostIo;

struct Report(String);

impl Report {
    fn check(
        &mut self,
        name: &str,
        ok: bool,
        detail: impl std::fmt::Display,
    ) -> Result<(), ErrorCode> {
        if ok {
            let _ = writeln!(self.0, "ok {name}: {detail}");
            Ok(())
        } else {
            logging::error(&format!("check {name} failed: {detail}"));
            Err(ErrorCode::Einternal)
        }
    }
}

fn now_ns() -> u128 {
    let t = system::get_time(system::Clock::Monotonic);
    u128::from(t.seconds) * 1_000_000_000 + u128::from(t.nanoseconds)
}

fn filesystem_checks(r: &mut Report) -> Result<(), ErrorCode> {
    use filesystem::{OpenFlags as F, Whence};
    // Start from an empty tree (a previous run's files may be there).
    for p in ["d/sub/file", "d/sub/hard", "d/sub/soft", "d/sub/moved"] {
        let _ = filesystem::unlink(p);
    }
    let _ = filesystem::rmdir("d/sub");
    let _ = filesystem::rmdir("d");
    filesystem::mkdir("d", 0o755)?;
    filesystem::mkdir("d/sub", 0o700)?;
    r.check(
        "mkdir",
        filesystem::stat("d/sub")?.mode == 0o700,
        "d/sub 0700",
    )?;
    let f = filesystem::open(
        "d/sub/file",
        F::READ | F::WRITE | F::CREATE | F::EXCLUSIVE,
        0o640,
    )?;
    let n = f.write(b"hello clawfs")?;
    r.check("open+write", n == 12, format_args!("{n} bytes"))?;
    let pos = f.seek(0, Whence::Start)?;
    let back = f.read(100)?;
    r.check(
        "seek+read",
        pos == 0 && back == b"hello clawfs",
        String::from_utf8_lossy(&back),
    )?;
    r.check("seek end", f.seek(-6, Whence::End)? == 6, "offset 6")?;
    r.check("read at offset", f.read(100)? == b"clawfs", "clawfs")?;
    let st = f.stat()?;
    r.check(
        "file.stat",
        st.size == 12 && st.mode == 0o640 && st.file_type == filesystem::FileType::Regular,
        format_args!("{st:?}"),
    )?;
    filesystem::sync(&f)?;
    r.check("sync", true, "fsync")?;
    drop(f);
    filesystem::link("d/sub/file", "d/sub/hard")?;
    r.check(
        "link",
        filesystem::stat("d/sub/hard")?.nlink == 2,
        "nlink 2",
    )?;
    filesystem::symlink("file", "d/sub/soft")?;
    r.check(
        "symlink+readlink",
        filesystem::readlink("d/sub/soft")? == "file",
        "soft -> file",
    )?;
    let via = filesystem::open("d/sub/soft", F::READ, 0)?.read(5)?;
    r.check("open through symlink", via == b"hello", "hello")?;
    filesystem::chmod("d/sub/file", 0o600)?;
    r.check(
        "chmod",
        filesystem::stat("d/sub/hard")?.mode == 0o600,
        "0600",
    )?;
    let own = filesystem::stat("d/sub/file")?;
    filesystem::chown("d/sub/file", own.uid, own.gid)?;
    r.check(
        "chown to own ids",
        true,
        format_args!("{}:{}", own.uid, own.gid),
    )?;
    r.check(
        "chown to another owner",
        filesystem::chown("d/sub/file", 4242, own.gid).err() == Some(ErrorCode::Eperm),
        "EPERM",
    )?;
    filesystem::truncate("d/sub/file", 5)?;
    r.check(
        "truncate",
        filesystem::stat("d/sub/file")?.size == 5,
        "5 bytes",
    )?;
    filesystem::rename("d/sub/hard", "d/sub/moved")?;
    r.check(
        "rename",
        filesystem::stat("d/sub/hard").err() == Some(ErrorCode::Enoent),
        "hard -> moved",
    )?;
    let dir = filesystem::opendir("d/sub")?;
    let mut names = Vec::new();
    while let Some(e) = dir.readdir()? {
        names.push(e.name);
    }
    names.sort();
    r.check(
        "opendir+readdir",
        names == ["file", "moved", "soft"],
        format_args!("{names:?}"),
    )?;
    drop(dir);
    for p in ["d/sub/file", "d/sub/moved", "d/sub/soft"] {
        filesystem::unlink(p)?;
    }
    r.check(
        "rmdir non-empty",
        filesystem::rmdir("d").is_err(),
        "refused while d/sub exists",
    )?;
    filesystem::rmdir("d/sub")?;
    filesystem::rmdir("d")?;
    r.check(
        "unlink+rmdir",
        filesystem::stat("d").err() == Some(ErrorCode::Enoent),
        "tree removed",
    )?;
    r.check(
        "escape",
        filesystem::open("../x", F::READ, 0).err() == Some(ErrorCode::PolicyDenied),
        "POLICY_DENIED",
    )?;
    Ok(())
}

fn device_checks(r: &mut Report) -> Result<(), ErrorCode> {
    let null = device::open("null", true)?;
    let info = device::get_info(&null)?;
    r.check(
        "device null",
        info.kind == device::DeviceKind::Character
            && (info.major, info.minor) == (1, 3)
            && !info.read_only,
        format_args!("{}:{}", info.major, info.minor),
    )?;
    r.check("device write", null.write(b"discarded")? == 9, "9 bytes")?;
    let zero = device::open("zero", false)?;
    r.check("device read", zero.read(16)? == [0u8; 16], "16 zero bytes")?;
    r.check(
        "device read-only",
        zero.write(b"x").err() == Some(ErrorCode::Eperm)
            && device::open("zero", true).err() == Some(ErrorCode::Eperm),
        "EPERM",
    )?;
    let random = device::open("urandom", false)?;
    r.check("device urandom", random.read(32)?.len() == 32, "32 bytes")?;
    r.check(
        "device by path",
        device::open("/dev/mem", false).err() == Some(ErrorCode::Eperm),
        "EPERM",
    )?;
    Ok(())
}

fn network_checks(r: &mut Report, pg: Option<&str>) -> Result<(), ErrorCode> {
    let host = network::gethostname()?;
    r.check("gethostname", !host.is_empty(), &host)?;
    // With a PostgreSQL address given, the test's policy names the
    // loopback; otherwise it is the default's, which reaches no loopback.
    let ips = network::resolve("localhost");
    if pg.is_some() {
        let ips = ips?;
        r.check(
            "resolve",
            ips.iter()
                .any(|ip| matches!(ip, network::IpAddress::Ipv4((127, 0, 0, 1)))),
            format_args!("{ips:?}"),
        )?;
    } else {
        r.check(
            "resolve to the loopback",
            ips.err() == Some(ErrorCode::PolicyDenied),
            "POLICY_DENIED",
        )?;
    }
    r.check(
        "resolve disallowed name",
        network::resolve("example.com").err() == Some(ErrorCode::PolicyDenied),
        "POLICY_DENIED",
    )?;
    r.check(
        "connect to port 80",
        network::socket("127.0.0.1", 80).err() == Some(ErrorCode::PolicyDenied),
        "POLICY_DENIED",
    )?;
    if let Some(addr) = pg {
        let (h, p) = addr.rsplit_once(':').ok_or(ErrorCode::InvalidArgument)?;
        let conn = network::socket(h, p.parse().map_err(|_| ErrorCode::InvalidArgument)?)?;
        let mut client = pg::Client::start(&conn)?;
        let answer = client.query("SELECT 6 * 7 AS answer, current_user")?;
        r.check(
            "postgres query",
            answer == ["42", "postgres"],
            format_args!("{answer:?} from {}", client.server_version),
        )?;
        client.terminate()?;
        conn.close()?;
        r.check(
            "send after close",
            conn.send(b"x").err() == Some(ErrorCode::InvalidHandle),
            "INVALID_HANDLE",
        )?;
    }
    Ok(())
}

fn cgroup_checks(r: &mut Report, available: bool) -> Result<(), ErrorCode> {
    if !available {
        let u = Some(ErrorCode::InterfaceUnavailable);
        r.check(
            "cgroup unavailable without cgroup v2",
            cgroup::create("a").err() == u
                && cgroup::open("a").err() == u
                && cgroup::delete("a").err() == u,
            "INTERFACE_UNAVAILABLE",
        )?;
        return Ok(());
    }
    let g = cgroup::create("work")?;
    r.check("cgroup create+open", cgroup::open("work").is_ok(), "work")?;
    cgroup::set_memory_limit(&g, Some(64 << 20))?;
    r.check(
        "memory limit",
        cgroup::get_memory_limit(&g)? == Some(64 << 20),
        "64 MiB",
    )?;
    cgroup::set_cpu_limit(
        &g,
        cgroup::CpuLimit {
            quota: Some(1000),
            period: 100_000,
        },
    )?;
    let cpu = cgroup::get_cpu_limit(&g)?;
    r.check(
        "cpu limit",
        cpu.quota == Some(1000) && cpu.period == 100_000,
        format_args!("{cpu:?}"),
    )?;
    cgroup::set_pids_limit(&g, Some(4))?;
    r.check("pids limit", cgroup::get_pids_limit(&g)? == Some(4), "4")?;
    r.check(
        "foreign process",
        // Pids are the instance's own (its pid namespace): it is pid 1,
        // and nothing else there is this high.
        cgroup::add_process(&g, 999_999).err() == Some(ErrorCode::PolicyDenied)
            && cgroup::remove_process(&g, 999_999).err() == Some(ErrorCode::PolicyDenied),
        "POLICY_DENIED",
    )?;
    drop(g);
    cgroup::delete("work")?;
    r.check(
        "cgroup delete",
        cgroup::open("work").err() == Some(ErrorCode::Enoent),
        "gone",
    )?;
    Ok(())
}

fn fs_bench(bytes: u64, name: &str) -> Result<String, ErrorCode> {
    use filesystem::{OpenFlags as F, Whence};
    let block = vec![0x5au8; 64 * 1024];
    let f = filesystem::open(name, F::READ | F::WRITE | F::CREATE | F::TRUNCATE, 0o600)?;
    let t0 = now_ns();
    let mut done = 0;
    while done < bytes {
        done += u64::from(f.write(&block)?);
    }
    let t1 = now_ns();
    f.seek(0, Whence::Start)?;
    let mut read = 0;
    loop {
        let n = f.read(64 * 1024)?.len() as u64;
        if n == 0 {
            break;
        }
        read += n;
    }
    let t2 = now_ns();
    drop(f);
    filesystem::unlink(name)?;
    Ok(format!(
        "write_ns {} read_ns {} bytes {done} {read}\n",
        t1 - t0,
        t2 - t1
    ))
}

impl Guest for HostIo {
    fn run(args: Vec<String>, _input: Vec<u8>) -> Result<Vec<u8>, ErrorCode> {
        let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
        match arg(0) {
            "pg-bench" => {
                let (h, p) = arg(1).rsplit_once(':').ok_or(ErrorCode::InvalidArgument)?;
                let n: u32 = arg(2).parse().unwrap_or(100);
                let conn = network::socket(h, p.parse().map_err(|_| ErrorCode::InvalidArgument)?)?;
                let mut client = pg::Client::start(&conn)?;
                let t0 = now_ns();
                for _ in 0..n {
                    client.query("SELECT 1")?;
                }
                let ns = now_ns() - t0;
                client.terminate()?;
                return Ok(format!("round_trips {n} total_ns {ns}\n").into_bytes());
            }
            "fs-bench" => {
                let name = match arg(2) {
                    "" => "bench.dat",
                    name => name,
                };
                return fs_bench(arg(1).parse().unwrap_or(64 << 20), name).map(String::into_bytes);
            }
            _ => {}
        }
        let cgroup_available = match arg(0) {
            "cgroup=available" => true,
            "cgroup=unavailable" => false,
            _ => return Err(ErrorCode::InvalidArgument),
        };
        let pg = arg(1).strip_prefix("pg=");
        let mut r = Report(String::new());
        filesystem_checks(&mut r)?;
        device_checks(&mut r)?;
        network_checks(&mut r, pg)?;
        cgroup_checks(&mut r, cgroup_available)?;
        let n = r.0.lines().count();
        let _ = writeln!(r.0, "all {n} checks passed");
        Ok(r.0.into_bytes())
    }
}

export!(HostIo);
