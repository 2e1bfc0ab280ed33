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

use clawos_tool::{Guest, export, logging, memory, system, types::ErrorCode};

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
            other => {
                logging::error(&format!("unknown mode {other:?}"));
                Err(ErrorCode::InvalidArgument)
            }
        }
    }
}

export!(Misbehave);
