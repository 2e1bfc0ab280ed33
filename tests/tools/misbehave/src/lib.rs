//! A hostile tool: `args[0]` picks what it does wrong, so the tests can check
//! the bridge's answer to each.
//!
//! | mode | does |
//! |---|---|
//! | forge-handle | calls a method on a handle index it was never given |
//! | stale-handle | drops a region, then uses its handle again |
//! | handles | allocates regions until the handle limit refuses |
//! | panic | panics (ends in `unreachable`) |
//! | trap | reads far outside its linear memory |
//! | exit N | `system.exit(N)` |
//! | wasi-exit | `std::process::exit(1)` (WASI exit with failure) |
//! | error | returns POLICY_DENIED from `run` |
//! | log-flood N | logs N lines |
//! | sleep MS | `system.sleep` for MS milliseconds |
//! | output N | returns N bytes |
//! | wrong-handle | uses a file's handle as a memory region |
//! | allocate-max | `memory.allocate(u64::MAX)` |
//! | extremes | calls host functions with boundary arguments and lists each code |
//! | wasi-sleep MS | `std::thread::sleep` (a WASI poll, not a bridge call) |
//! | stdout N | writes N bytes to WASI stdout, ignoring errors |
//! | log-inject | logs lines holding CR, LF, ESC, OSC 52 and CSI sequences |

use clawos_tool::{Guest, export, filesystem, logging, memory, system, types::ErrorCode};
use std::io::Write;

struct Misbehave;

fn num(args: &[String]) -> u64 {
    args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1)
}

impl Guest for Misbehave {
    fn run(args: Vec<String>, _input: Vec<u8>) -> Result<Vec<u8>, ErrorCode> {
        match args.first().map(String::as_str).unwrap_or("") {
            "forge-handle" => {
                // SAFETY: deliberately unsound: the point is to hand the host
                // an index this instance does not own.
                let forged = unsafe { memory::SharedRegion::from_handle(0x00ff_fff0) };
                Ok(forged.size().to_string().into_bytes())
            }
            "stale-handle" => {
                let region = memory::allocate(64)?;
                let index = region.handle();
                drop(region);
                // SAFETY: deliberately unsound: the handle was dropped above.
                let stale = unsafe { memory::SharedRegion::from_handle(index) };
                Ok(stale.size().to_string().into_bytes())
            }
            "handles" => {
                let mut held = Vec::new();
                loop {
                    match memory::allocate(1) {
                        Ok(r) => held.push(r),
                        Err(e) => {
                            logging::info(&format!("refused after {} handles", held.len()));
                            return Err(e);
                        }
                    }
                }
            }
            "panic" => panic!("deliberate panic"),
            "trap" => {
                let p = 0xffff_fff0usize as *const u64;
                // SAFETY: deliberately out of bounds: the sandbox must trap.
                let v = unsafe { core::ptr::read_volatile(p) };
                Ok(v.to_string().into_bytes())
            }
            "exit" => {
                system::exit(num(&args) as u8);
                unreachable!("system.exit returned")
            }
            "wasi-exit" => std::process::exit(1),
            "error" => Err(ErrorCode::PolicyDenied),
            "log-flood" => {
                for i in 0..num(&args) {
                    logging::info(&format!("flood line {i}"));
                }
                Ok(b"flooded\n".to_vec())
            }
            "sleep" => {
                system::sleep(num(&args) * 1_000_000)?;
                Ok(b"slept\n".to_vec())
            }
            "output" => Ok(vec![b'x'; num(&args) as usize]),
            "wrong-handle" => {
                use filesystem::OpenFlags as F;
                let file = filesystem::open("wrong-handle", F::WRITE | F::CREATE, 0o600)?;
                // SAFETY: deliberately unsound: a file's handle is not a region's.
                let region = unsafe { memory::SharedRegion::from_handle(file.handle()) };
                Ok(region.size().to_string().into_bytes())
            }
            "allocate-max" => memory::allocate(u64::MAX).map(|r| r.size().to_string().into_bytes()),
            "extremes" => Ok(extremes().into_bytes()),
            "wasi-sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(num(&args)));
                Ok(b"slept\n".to_vec())
            }
            "stdout" => {
                let chunk = vec![b'o'; 65536];
                let mut left = num(&args) as usize;
                let mut out = std::io::stdout();
                while left > 0 {
                    let n = left.min(chunk.len());
                    if out.write_all(&chunk[..n]).is_err() {
                        break;
                    }
                    left -= n;
                }
                let _ = out.flush();
                Ok(b"wrote\n".to_vec())
            }
            "log-inject" => {
                logging::info("first\nclawos-wasm-daemon ready on /run/forged.sock");
                logging::warn("second\r\x1b[2J\x1b]52;c;Zm9yZ2Vk\x07\x1b[31mALERT forged\x1b[0m");
                logging::error("third\u{0085}\u{2028}\u{7f}end");
                Ok(b"injected\n".to_vec())
            }
            other => {
                logging::error(&format!("unknown mode {other:?}"));
                Err(ErrorCode::InvalidArgument)
            }
        }
    }
}

/// Every memory and filesystem function that takes a size, offset,
/// length or mode, called with the boundary values, one line per call:
/// `call -> ok` or `call -> err CODE`. A panic in the host ends the run
/// with EPANIC (8) instead.
fn extremes() -> String {
    use filesystem::{OpenFlags as F, Whence};
    let mut lines = Vec::new();
    let mut note = |call: String, r: Result<(), ErrorCode>| {
        lines.push(match r {
            Ok(()) => format!("{call} -> ok"),
            Err(e) => format!("{call} -> err {}", clawos_tool::code(e)),
        });
    };
    for size in [
        0,
        1,
        u64::from(u32::MAX),
        u64::MAX / 2,
        u64::MAX - 1,
        u64::MAX,
    ] {
        note(
            format!("allocate({size})"),
            memory::allocate(size).map(drop),
        );
        note(
            format!("open-shared(x, {size})"),
            memory::open_shared("x", size).map(drop),
        );
    }
    if let Ok(r) = memory::allocate(16) {
        for (offset, len) in [
            (0, u32::MAX),
            (u64::MAX, 1),
            (u64::MAX - 1, 2),
            (16, 0),
            (17, 0),
        ] {
            note(
                format!("region.read({offset}, {len})"),
                r.read(offset, len).map(drop),
            );
        }
        for offset in [u64::MAX, u64::MAX - 1, 16, 17] {
            note(
                format!("region.write({offset}, 1 byte)"),
                r.write(offset, &[1]),
            );
        }
    }
    let f = filesystem::open("extremes", F::READ | F::WRITE | F::CREATE, 0o600);
    note(
        "open(extremes)".into(),
        f.as_ref().map(drop).map_err(|e| *e),
    );
    if let Ok(f) = f {
        for len in [0, 1, u32::MAX] {
            note(format!("file.read({len})"), f.read(len).map(drop));
        }
        for (offset, whence) in [
            (i64::MIN, Whence::Start),
            (i64::MAX, Whence::Start),
            (i64::MAX, Whence::Current),
            (i64::MIN, Whence::End),
            (i64::MAX, Whence::End),
        ] {
            note(
                format!("file.seek({offset}, {whence:?})"),
                f.seek(offset, whence).map(drop),
            );
        }
        note("sync".into(), filesystem::sync(&f));
    }
    for size in [u64::MAX, i64::MAX as u64, (i64::MAX as u64) + 1] {
        note(
            format!("truncate(extremes, {size})"),
            filesystem::truncate("extremes", size),
        );
    }
    for mode in [u32::MAX, 0o7777, 0o10000] {
        note(
            format!("chmod(extremes, {mode:o})"),
            filesystem::chmod("extremes", mode),
        );
        note(format!("mkdir(d, {mode:o})"), filesystem::mkdir("d", mode));
        let _ = filesystem::rmdir("d");
        note(
            format!("open(m, create, {mode:o})"),
            filesystem::open("m", F::WRITE | F::CREATE, mode).map(drop),
        );
        let _ = filesystem::unlink("m");
    }
    for (uid, gid) in [(u32::MAX, u32::MAX), (u32::MAX - 1, 0)] {
        note(
            format!("chown(extremes, {uid}, {gid})"),
            filesystem::chown("extremes", uid, gid),
        );
    }
    let long = "a".repeat(1 << 16);
    note(
        "open(64 KiB name)".into(),
        filesystem::open(&long, F::READ, 0).map(drop),
    );
    note(
        "open(NUL)".into(),
        filesystem::open("a\0b", F::READ, 0).map(drop),
    );
    let _ = filesystem::unlink("extremes");
    lines.push(String::new());
    lines.join("\n")
}

export!(Misbehave);
