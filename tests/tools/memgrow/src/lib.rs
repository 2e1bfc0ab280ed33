//! Grows memory by `step` MiB (default 16) until `limit` MiB (default: no
//! limit), touching every page. With `host` as the first argument it grows
//! host regions through `memory.allocate` instead, and reports where the
//! bridge refused. Output: the MiB it reached.

use clawos_tool::{Guest, export, memory, types::ErrorCode};

struct MemGrow;

fn arg(args: &[String], i: usize, default: u64) -> u64 {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

impl Guest for MemGrow {
    fn run(args: Vec<String>, _input: Vec<u8>) -> Result<Vec<u8>, ErrorCode> {
        if args.first().map(String::as_str) == Some("host") {
            let step = arg(&args, 1, 16) << 20;
            let mut held = Vec::new();
            loop {
                match memory::allocate(step) {
                    Ok(region) => held.push(region),
                    Err(e) => {
                        let usage = memory::get_usage();
                        return Ok(format!(
                            "host regions refused at {} MiB with {e:?}; linear {} MiB; limit {} MiB\n",
                            usage.host >> 20,
                            usage.linear >> 20,
                            memory::get_limit() >> 20
                        )
                        .into_bytes());
                    }
                }
            }
        }
        let step = (arg(&args, 0, 16) << 20) as usize;
        let limit = arg(&args, 1, u64::MAX >> 20);
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        let mut total: u64 = 0;
        while total < limit {
            let mut chunk = vec![0u8; step];
            for page in chunk.chunks_mut(4096) {
                page[0] = 1;
            }
            chunks.push(chunk);
            total += (step >> 20) as u64;
        }
        Ok(format!("grew to {total} MiB\n").into_bytes())
    }
}

export!(MemGrow);
