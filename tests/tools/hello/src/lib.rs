//! The example tool: greets its first argument and logs that it did.

use clawos_tool::{Guest, export, logging, types::ErrorCode};

struct Hello;

impl Guest for Hello {
    fn run(args: Vec<String>, _input: Vec<u8>) -> Result<Vec<u8>, ErrorCode> {
        let who = args.first().map_or("world", String::as_str);
        logging::info(&format!("greeting {who}"));
        Ok(format!("hello, {who}\n").into_bytes())
    }
}

export!(Hello);
