//! Spins on the CPU for `n` iterations (default: forever).

use clawos_tool::{Guest, export, types::ErrorCode};

struct Spinner;

impl Guest for Spinner {
    fn run(args: Vec<String>, _input: Vec<u8>) -> Result<Vec<u8>, ErrorCode> {
        let n: u64 = args
            .first()
            .and_then(|a| a.parse().ok())
            .unwrap_or(u64::MAX);
        let mut x: u64 = 0;
        let mut i = 0;
        while i < n {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            i += 1;
        }
        Ok(format!("spun {n} times: {x}\n").into_bytes())
    }
}

export!(Spinner);
