//! Calls every function of the system, logging and memory interfaces and
//! checks what comes back (hostio does the same for the filesystem, device,
//! network and cgroup interfaces). Prints one `ok` line per check, and
//! fails with EINTERNAL naming the first check that did not hold.
//! Expects the run's environment to hold GREETING=from-request.
//! With `calls N` it instead makes N `system.get-pid` calls (a host call
//! round trip benchmark).

use clawos_tool::{Guest, export, logging, memory, system, types::ErrorCode};
use std::fmt::Write;

struct Exerciser;

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

fn nanos(t: system::Timestamp) -> u128 {
    u128::from(t.seconds) * 1_000_000_000 + u128::from(t.nanoseconds)
}

impl Guest for Exerciser {
    fn run(args: Vec<String>, _input: Vec<u8>) -> Result<Vec<u8>, ErrorCode> {
        if args.first().map(String::as_str) == Some("calls") {
            let n: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
            let mut sum = 0u64;
            for _ in 0..n {
                sum = sum.wrapping_add(u64::from(system::get_pid()));
            }
            return Ok(format!("{n} calls {sum}\n").into_bytes());
        }
        let mut r = Report(String::new());

        // system
        let info = system::get_info();
        r.check(
            "get-info",
            info.tool_name == "exerciser"
                && info.instance_id > 0
                && info.cpus >= 1
                && info.kernel.starts_with("Linux"),
            format_args!(
                "{} on {} {} cpus={} instance={}",
                info.tool_name, info.kernel, info.machine, info.cpus, info.instance_id
            ),
        )?;
        let wall = system::get_time(system::Clock::Realtime);
        r.check(
            "get-time realtime",
            wall.seconds > 1_700_000_000,
            wall.seconds,
        )?;
        let t0 = system::get_time(system::Clock::Monotonic);
        system::sleep(2_000_000).inspect_err(|_| logging::error("sleep failed"))?;
        let t1 = system::get_time(system::Clock::Monotonic);
        let slept = nanos(t1).saturating_sub(nanos(t0));
        r.check(
            "sleep 2 ms",
            slept >= 2_000_000,
            format_args!("{slept} ns by the monotonic clock"),
        )?;
        r.check(
            "get-env",
            system::get_env("GREETING").as_deref() == Some("from-request"),
            "GREETING=from-request",
        )?;
        r.check(
            "wasi env",
            std::env::var("GREETING").as_deref() == Ok("from-request"),
            "std::env sees the same",
        )?;
        system::set_env("SCRATCH", Some("1"))?;
        r.check(
            "set-env",
            system::get_env("SCRATCH").as_deref() == Some("1"),
            "SCRATCH=1",
        )?;
        system::set_env("SCRATCH", None)?;
        r.check(
            "unset-env",
            system::get_env("SCRATCH").is_none(),
            "SCRATCH removed",
        )?;
        r.check(
            "set-env bad name",
            system::set_env("A=B", Some("x")) == Err(ErrorCode::InvalidArgument),
            "A=B refused",
        )?;
        let (pid, ppid) = (system::get_pid(), system::get_ppid());
        r.check(
            "get-pid get-ppid",
            // The instance's own pid namespace: it is its first process,
            // and its parent is outside.
            pid == 1 && ppid == 0,
            format_args!("pid={pid} ppid={ppid}"),
        )?;

        // logging
        logging::log(logging::Level::Trace, "log trace");
        logging::log(logging::Level::Debug, "log debug");
        logging::log(logging::Level::Info, "log info");
        logging::log(logging::Level::Warn, "log warn");
        logging::log(logging::Level::Error, "log error");
        logging::debug("debug");
        logging::info("info");
        logging::warn("warn");
        logging::error("error");
        r.check("logging", true, "9 lines at every level")?;

        // memory
        let limit = memory::get_limit();
        r.check("get-limit", limit > 0, limit)?;
        let before = memory::get_usage();
        let region = memory::allocate(1 << 20)?;
        r.check(
            "allocate",
            region.size() == 1 << 20 && memory::get_usage().host == before.host + (1 << 20),
            "1 MiB counted as host memory",
        )?;
        region.write(4096, b"clawos")?;
        r.check(
            "region read/write",
            region.read(4096, 6)? == b"clawos" && region.read(0, 4)? == [0; 4],
            "bytes round-trip, rest zeroed",
        )?;
        r.check(
            "region bounds",
            region.read((1 << 20) - 2, 4) == Err(ErrorCode::InvalidArgument)
                && region.write(u64::MAX, b"x") == Err(ErrorCode::InvalidArgument),
            "out-of-range access refused",
        )?;
        let a = memory::open_shared("board", 4096)?;
        let b = memory::open_shared("board", 4096)?;
        a.write(0, b"shared")?;
        r.check(
            "open-shared",
            b.read(0, 6)? == b"shared",
            "a write through one handle is seen through the other",
        )?;
        r.check(
            "open-shared size mismatch",
            memory::open_shared("board", 8192).err() == Some(ErrorCode::InvalidArgument),
            "refused",
        )?;
        r.check(
            "get-usage",
            memory::get_usage().host == before.host + (1 << 20) + 8192
                && memory::get_usage().linear > 0,
            format_args!(
                "linear={} host={}",
                memory::get_usage().linear,
                memory::get_usage().host
            ),
        )?;
        drop((region, a, b));
        r.check(
            "drop frees",
            memory::get_usage().host == before.host,
            "host bytes back to where they were",
        )?;
        r.check(
            "allocate over limit",
            memory::allocate(limit).err() == Some(ErrorCode::WasmMemoryLimit),
            "WASM_MEMORY_LIMIT",
        )?;

        let n = r.0.lines().count();
        let _ = writeln!(r.0, "all {n} checks passed");
        Ok(r.0.into_bytes())
    }
}

export!(Exerciser);
