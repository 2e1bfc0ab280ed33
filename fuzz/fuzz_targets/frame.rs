//! Feeds arbitrary bytes to the IPC frame layer (`clawos_bridge::ipc::frame`):
//! `parse_header` on the first 12 bytes, `decode` of one whole frame, and the
//! blocking and async readers over the bytes as a stream, each with the
//! daemon's default frame limit and byte budget, and with small ones (so
//! that short inputs reach the oversized and over-budget branches). None may
//! panic; a payload is never longer than the limit; every refusal is EPROTO,
//! UNSUPPORTED_VERSION or, from the async reader, EAGAIN (over the budget).
#![no_main]

use clawos_bridge::config::Config;
use clawos_bridge::error::Code;
use clawos_bridge::ipc::frame::{self, FrameError, HEADER_LEN};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::Semaphore;

/// The daemon's frame limit and request-byte budget with the default
/// configuration, and a small pair.
static LIMITS: LazyLock<[(u64, Arc<Semaphore>); 2]> = LazyLock::new(|| {
    let config = Config::default();
    let budget = usize::try_from(config.ipc.max_request_bytes_in_flight).expect("a 64-bit host");
    [
        (config.max_frame_bytes(), Arc::new(Semaphore::new(budget))),
        (64, Arc::new(Semaphore::new(32))),
    ]
});

/// One current-thread runtime for the async reader, made once.
static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime")
});

/// A reader's refusal: EPROTO or UNSUPPORTED_VERSION, or EAGAIN from a
/// reader with a byte budget.
fn refusal(code: Code, budgeted: bool) {
    assert!(
        matches!(code, Code::Eproto | Code::UnsupportedVersion)
            || (budgeted && code == Code::Eagain),
        "frame refused with {code:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    for (max, budget) in LIMITS.iter() {
        let max = *max;
        if let Some(h) = data.first_chunk::<HEADER_LEN>() {
            match frame::parse_header(h, max) {
                Ok(len) => assert!(len as u64 <= max),
                Err(e) => assert!(matches!(e.code(), Code::Eproto | Code::UnsupportedVersion)),
            }
        }
        match frame::decode(data, max) {
            Ok(payload) => {
                assert!(payload.len() as u64 <= max);
                assert_eq!(payload, &data[HEADER_LEN..HEADER_LEN + payload.len()]);
                // A decoded payload framed again decodes to itself.
                assert_eq!(frame::decode(&frame::encode(payload), max), Ok(payload));
            }
            Err(FrameError::UnsupportedVersion(v)) => assert_ne!(v, frame::VERSION),
            Err(e) => assert_eq!(e.code(), Code::Eproto),
        }
        // The client's blocking reader, frame after frame until the end.
        let mut stream = data;
        loop {
            match frame::read_blocking(&mut stream, max) {
                Ok(Some(payload)) => assert!(payload.len() as u64 <= max),
                Ok(None) => break,
                Err(e) => {
                    refusal(e.code, false);
                    break;
                }
            }
        }
        // The daemon's async reader, the same way.
        let mut stream = data;
        RT.block_on(async {
            loop {
                let read = frame::read_async(
                    &mut stream,
                    max,
                    Duration::from_secs(1),
                    Duration::from_secs(1),
                    budget,
                );
                match read.await {
                    // The permit goes back to the budget when the frame drops.
                    Ok(Some(frame)) => assert!(frame.payload.len() as u64 <= max),
                    Ok(None) => break,
                    Err(e) => {
                        refusal(e.code, true);
                        break;
                    }
                }
            }
        });
    }
});
