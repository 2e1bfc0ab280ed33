//! Makes one host call named by its arguments and prints what came back:
//! `ok <detail>` or `err <P1.7 code>`. The escape suite drives it, one
//! attempt per run, and checks the exact code. WASI calls (`wasi-*`) go
//! through Rust's std::fs and report the P1.7 code nearest the io error.
//!
//! `fill PATH CHUNK` and `wasi-fill PATH CHUNK` write CHUNK-byte blocks
//! until a write is refused (`wasi-stream-fill` through WASI's output
//! stream itself, asking `filesystem-error-code` what went wrong, which
//! Rust std's WASI adapter does not), `many KIND PREFIX` and `wasi-many KIND PREFIX`
//! make files, directories or symlinks (KIND) until one is refused; each
//! prints the refusal and how far it got: `err 201 at 8380416`.
//!
//! `forge-file` and `closed-conn HOST PORT` use handles the tool does not
//! own; the first traps (the run ends with INVALID_HANDLE), the second gets
//! INVALID_HANDLE back from the call.
//!
//! `env NAME` and `wasi-env NAME` print a variable of the run's environment
//! (`ok VALUE`, or `none`), through `system.get-env` and through WASI. Its
//! `request_grants!` below is what the grants tests grant with
//! `--grant-requested`.

use clawos_tool::{
    Guest, cgroup, device, export, filesystem, memory, network, system, types::ErrorCode,
};
use std::io::{Read, Write};

struct Probe;

// What the grants tests give it with `install --grant-requested`.
clawos_tool::request_grants!(
    r#"
names = ["localhost"]
secrets = ["PROBE_TOKEN"]
devices = [{ name = "null", write = true }]

[[net]]
cidr = "127.0.0.0/8"
ports = [5432]
"#
);

fn code(e: ErrorCode) -> String {
    format!("err {}", clawos_tool::code(e))
}

/// The P1.7 code nearest a WASI io error.
fn io_code(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    let n = match e.kind() {
        K::NotFound => 3,
        K::PermissionDenied => 4,
        K::InvalidInput | K::AlreadyExists | K::IsADirectory | K::NotADirectory => 208,
        K::StorageFull | K::QuotaExceeded => 201,
        _ => 2,
    };
    format!("err {n} ({e})")
}

/// Wait (8 s at most) until `file` exists in the tool's root.
fn wait_for_file(file: &str) -> Result<(), ErrorCode> {
    for _ in 0..400 {
        if std::fs::metadata(file).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(ErrorCode::Etimeout)
}

fn arg(args: &[String], i: usize) -> &str {
    args.get(i).map(String::as_str).unwrap_or("")
}

fn show<T>(r: Result<T, ErrorCode>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => format!("ok {}", ok(v)),
        Err(e) => code(e),
    }
}

fn read_all(f: &filesystem::File) -> Result<Vec<u8>, ErrorCode> {
    let mut out = Vec::new();
    loop {
        let chunk = f.read(65536)?;
        if chunk.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&chunk);
    }
}

fn wasi<T>(r: std::io::Result<T>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => format!("ok {}", ok(v)),
        Err(e) => io_code(&e),
    }
}

/// Write `chunk`-byte blocks to `path` until a write is refused.
fn fill(path: &str, chunk: usize, wasi: bool) -> String {
    let data = vec![0x5a; chunk];
    let mut n = 0u64;
    if wasi {
        let mut f = match std::fs::File::create(path) {
            Ok(f) => f,
            Err(e) => return format!("{} at 0", io_code(&e)),
        };
        loop {
            match f.write(&data) {
                Ok(0) => return format!("ok wrote nothing at {n}"),
                Ok(w) => n += w as u64,
                Err(e) => return format!("{} at {n}", io_code(&e)),
            }
        }
    }
    use filesystem::OpenFlags as F;
    let f = match filesystem::open(path, F::WRITE | F::CREATE | F::TRUNCATE, 0o644) {
        Ok(f) => f,
        Err(e) => return format!("{} at 0", code(e)),
    };
    loop {
        match f.write(&data) {
            Ok(0) => return format!("ok wrote nothing at {n}"),
            Ok(w) => n += u64::from(w),
            Err(e) => return format!("{} at {n}", code(e)),
        }
    }
}

/// Write `chunk`-byte blocks to `path` through a WASI output stream until
/// a write fails, and ask WASI why.
fn stream_fill(path: &str, chunk: usize) -> String {
    use wasip2::filesystem::{preopens, types as t};
    use wasip2::io::streams::StreamError;
    let dirs = preopens::get_directories();
    let Some((root, _)) = dirs.first() else {
        return "err no preopen".to_owned();
    };
    let file = match root.open_at(
        t::PathFlags::empty(),
        path,
        t::OpenFlags::CREATE | t::OpenFlags::TRUNCATE,
        t::DescriptorFlags::WRITE,
    ) {
        Ok(f) => f,
        Err(e) => return format!("err {e:?} at 0"),
    };
    let out = match file.write_via_stream(0) {
        Ok(s) => s,
        Err(e) => return format!("err {e:?} at 0"),
    };
    let data = vec![0x5a; chunk.max(1)];
    let mut n = 0u64;
    let why = |e: wasip2::io::error::Error| {
        let why = t::filesystem_error_code(&e);
        let p17 = match why {
            Some(t::ErrorCode::Quota | t::ErrorCode::InsufficientSpace) => 201,
            _ => 2,
        };
        format!("err {p17} ({why:?})")
    };
    loop {
        // As much as the stream takes at once, then a flush, which reports
        // a failed write.
        let done = out.check_write().and_then(|permit| {
            let len = data
                .len()
                .min(usize::try_from(permit).unwrap_or(usize::MAX));
            if len == 0 {
                out.subscribe().block();
                return Ok(0);
            }
            out.write(&data[..len])?;
            out.blocking_flush()?;
            Ok(len as u64)
        });
        match done {
            Ok(len) => n += len,
            Err(StreamError::LastOperationFailed(e)) => return format!("{} at {n}", why(e)),
            Err(StreamError::Closed) => return format!("err closed at {n}"),
        }
    }
}

/// Make files, directories or symlinks (`kind`) named `prefix0`,
/// `prefix1`, ... until one is refused.
fn many(kind: &str, prefix: &str, wasi: bool) -> String {
    use filesystem::OpenFlags as F;
    for i in 0u64.. {
        let name = format!("{prefix}{i}");
        let made = match (wasi, kind) {
            (false, "file") => filesystem::open(&name, F::WRITE | F::CREATE, 0o644)
                .map(drop)
                .map_err(code),
            (false, "dir") => filesystem::mkdir(&name, 0o755).map_err(code),
            (false, "symlink") => filesystem::symlink("t", &name).map_err(code),
            (true, "file") => std::fs::File::create(&name)
                .map(drop)
                .map_err(|e| io_code(&e)),
            (true, "dir") => std::fs::create_dir(&name).map_err(|e| io_code(&e)),
            #[allow(deprecated)]
            (true, "symlink") => std::fs::soft_link("t", &name).map_err(|e| io_code(&e)),
            _ => return format!("unknown kind {kind:?}"),
        };
        if let Err(e) = made {
            return format!("{e} at {i}");
        }
    }
    unreachable!("u64 names run out")
}

impl Guest for Probe {
    fn run(args: Vec<String>, input: Vec<u8>) -> Result<Vec<u8>, ErrorCode> {
        use filesystem::OpenFlags as F;
        let (a, b, c) = (arg(&args, 1), arg(&args, 2), arg(&args, 3));
        let num = |s: &str| s.parse::<u32>().unwrap_or(0);
        let out = match arg(&args, 0) {
            "read" => show(
                filesystem::open(a, F::READ, 0).and_then(|f| read_all(&f)),
                |d| String::from_utf8_lossy(&d).into_owned(),
            ),
            "write" => show(
                filesystem::open(a, F::WRITE | F::CREATE | F::TRUNCATE, 0o644)
                    .and_then(|f| f.write(&input)),
                |n| n.to_string(),
            ),
            "append" => show(
                filesystem::open(a, F::WRITE | F::APPEND, 0).and_then(|f| f.write(&input)),
                |n| n.to_string(),
            ),
            "stat" => show(filesystem::stat(a), |s| {
                format!("size={} mode={:o}", s.size, s.mode)
            }),
            "mkdir" => show(filesystem::mkdir(a, num(b)), |_| String::new()),
            "rmdir" => show(filesystem::rmdir(a), |_| String::new()),
            "unlink" => show(filesystem::unlink(a), |_| String::new()),
            "rename" => show(filesystem::rename(a, b), |_| String::new()),
            "link" => show(filesystem::link(a, b), |_| String::new()),
            "symlink" => show(filesystem::symlink(a, b), |_| String::new()),
            "readlink" => show(filesystem::readlink(a), |t| t),
            "chmod" => show(
                filesystem::chmod(a, u32::from_str_radix(b, 8).unwrap_or(0)),
                |_| String::new(),
            ),
            "chown" => show(filesystem::chown(a, num(b), num(c)), |_| String::new()),
            "truncate" => show(filesystem::truncate(a, u64::from(num(b))), |_| {
                String::new()
            }),
            "opendir" => show(filesystem::opendir(a), |_| String::new()),
            "fill" => fill(a, num(b) as usize, false),
            "wasi-fill" => fill(a, num(b) as usize, true),
            "wasi-stream-fill" => stream_fill(a, num(b) as usize),
            "many" => many(a, b, false),
            "wasi-many" => many(a, b, true),
            "device" => show(device::open(a, b == "w"), |d| {
                let i = device::get_info(&d).expect("info of an open device");
                format!("{:?} {}:{}", i.kind, i.major, i.minor)
            }),
            "device-read" => show(
                device::open(a, false).and_then(|d| d.read(num(b))),
                |data| String::from_utf8_lossy(&data).into_owned(),
            ),
            "device-write" => show(
                device::open(a, true).and_then(|d| d.write(b.as_bytes())),
                |n| n.to_string(),
            ),
            // A write through a handle opened read-only.
            "device-write-ro" => show(
                device::open(a, false).and_then(|d| d.write(b"refused")),
                |n| n.to_string(),
            ),
            "env" => match system::get_env(a) {
                Some(v) => format!("ok {v}"),
                None => "none".to_owned(),
            },
            "wasi-env" => match std::env::var(a) {
                Ok(v) => format!("ok {v}"),
                Err(_) => "none".to_owned(),
            },
            "connect" => show(network::socket(a, b.parse().unwrap_or(0)), |_| {
                String::new()
            }),
            "resolve" => show(network::resolve(a), |ips| {
                format!("{} addresses", ips.len())
            }),
            "open-files" => {
                // Hold files open until the limit answers.
                let mut held = Vec::new();
                loop {
                    match filesystem::open(a, F::READ | F::CREATE | F::WRITE, 0o644) {
                        Ok(f) => held.push(f),
                        Err(e) => break format!("{} after {}", code(e), held.len()),
                    }
                }
            }
            "sparse" => show(
                filesystem::open(a, F::WRITE | F::CREATE, 0o644).and_then(|f| {
                    f.seek(i64::from(num(b)), filesystem::Whence::Start)?;
                    f.write(&input)
                }),
                |n| n.to_string(),
            ),
            "wasi-open-files" => {
                let mut held = Vec::new();
                loop {
                    match std::fs::File::create(a) {
                        Ok(f) => held.push(f),
                        Err(e) => break format!("{} after {}", io_code(&e), held.len()),
                    }
                }
            }
            "forge-file" => {
                // SAFETY of the tool's own making: a handle index it was never given.
                let forged = unsafe { filesystem::File::from_handle(0x7fff_0000) };
                show(forged.read(1), |d| format!("{} bytes", d.len()))
            }
            "closed-conn" => match network::socket(a, b.parse().unwrap_or(0)) {
                Ok(conn) => {
                    conn.close()?;
                    show(conn.send(b"after close"), |n| n.to_string())
                }
                Err(e) => code(e),
            },
            "wasi-read" => wasi(std::fs::read(a), |d| {
                String::from_utf8_lossy(&d).into_owned()
            }),
            "wasi-write" => wasi(std::fs::write(a, &input), |_| String::new()),
            "wasi-trunc" => wasi(
                std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(a),
                |_| String::new(),
            ),
            "wasi-append" => wasi(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(a)
                    .and_then(|mut f| f.write_all(&input)),
                |_| String::new(),
            ),
            "wasi-stat" => wasi(std::fs::metadata(a), |m| format!("size={}", m.len())),
            "wasi-mkdir" => wasi(std::fs::create_dir(a), |_| String::new()),
            "wasi-link" => wasi(std::fs::hard_link(a, b), |_| String::new()),
            // Two runs meet in the shared region `a` of `b` bytes: the one
            // that holds it writes "from-a" at 0, says so with /a-ready and
            // waits for /b-done; the one that meets it reads that, writes
            // "from-b" at 100 and writes /b-done. Each prints what it read.
            "shared-hold" => {
                let region = memory::open_shared(a, b.parse().unwrap_or(0))?;
                region.write(0, b"from-a")?;
                std::fs::write("/a-ready", b"").map_err(|_| ErrorCode::Eio)?;
                wait_for_file("/b-done")?;
                let got = region.read(100, 6)?;
                format!("ok {}", String::from_utf8_lossy(&got))
            }
            "shared-meet" => match memory::open_shared(a, b.parse().unwrap_or(0)) {
                Ok(region) => {
                    let got = region.read(0, 6)?;
                    region.write(100, b"from-b")?;
                    std::fs::write("/b-done", b"").map_err(|_| ErrorCode::Eio)?;
                    format!("ok {}", String::from_utf8_lossy(&got).replace('\0', "0"))
                }
                Err(e) => code(e),
            },
            // Move this instance into its group `a` and back, each step
            // waiting for the test (outside) to look at cgroup.procs: the
            // tool writes /moved and /back into its root, the test answers
            // with /go-back and /done.
            "cgroup-dance" => {
                let wait_for = wait_for_file;
                let me = system::get_pid();
                let g = cgroup::create(a)?;
                cgroup::add_process(&g, me)?;
                std::fs::write("/moved", me.to_string()).map_err(|_| ErrorCode::Eio)?;
                wait_for("/go-back")?;
                cgroup::remove_process(&g, me)?;
                std::fs::write("/back", b"").map_err(|_| ErrorCode::Eio)?;
                wait_for("/done")?;
                // Not in the group any more: a second remove is refused.
                let again = cgroup::remove_process(&g, me).err();
                drop(g);
                cgroup::delete(a)?;
                format!("ok pid={me} again={:?}", again.map(clawos_tool::code))
            }
            // std's only stable symlink call on WASI (path_symlink).
            #[allow(deprecated)]
            "wasi-symlink" => wasi(std::fs::soft_link(a, b), |_| String::new()),
            "wasi-chmod" => wasi(
                std::fs::metadata(a).and_then(|m| {
                    let mut p = m.permissions();
                    p.set_readonly(!p.readonly());
                    std::fs::set_permissions(a, p)
                }),
                |_| String::new(),
            ),
            "wasi-rename" => wasi(std::fs::rename(a, b), |_| String::new()),
            "wasi-readdir" => wasi(std::fs::read_dir(a), |d| format!("{} entries", d.count())),
            "wasi-open-read" => wasi(
                std::fs::File::open(a).and_then(|mut f| {
                    let mut s = String::new();
                    f.read_to_string(&mut s).map(|_| s)
                }),
                |s| s,
            ),
            "wasi-connect" => wasi(
                std::net::TcpStream::connect((a, b.parse().unwrap_or(0))),
                |_| String::new(),
            ),
            other => format!("unknown probe {other:?}"),
        };
        Ok(format!("{out}\n").into_bytes())
    }
}

export!(Probe);
