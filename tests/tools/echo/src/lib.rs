//! Returns its input, then its arguments joined by spaces. With the argument
//! `--stdin` it reads its input through WASI stdin instead, and with `--print`
//! it also writes the input to WASI stdout.

use clawos_tool::{Guest, export, types::ErrorCode};
use std::io::{Read, Write};

struct Echo;

impl Guest for Echo {
    fn run(args: Vec<String>, input: Vec<u8>) -> Result<Vec<u8>, ErrorCode> {
        let mut data = input;
        if args.iter().any(|a| a == "--stdin") {
            data.clear();
            std::io::stdin()
                .read_to_end(&mut data)
                .map_err(|_| ErrorCode::Eio)?;
        }
        if args.iter().any(|a| a == "--print") {
            // std's stdout is line-buffered and a tool instance never exits
            // as a process does, so flush before returning.
            let mut out = std::io::stdout();
            out.write_all(&data)
                .and_then(|()| out.flush())
                .map_err(|_| ErrorCode::Eio)?;
        }
        let rest: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .filter(|a| !a.starts_with("--"))
            .collect();
        if !rest.is_empty() {
            data.extend_from_slice(rest.join(" ").as_bytes());
        }
        Ok(data)
    }
}

export!(Echo);
