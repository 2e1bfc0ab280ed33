//! Feeds arbitrary bytes, as one frame of the sandbox channel (a little-endian
//! u32 length, then postcard), to `clawos_bridge::sandbox::channel::decode`
//! for every message type that crosses it: `FromWorker` (what the daemon
//! reads from a run's or a compile's worker, which it does not trust),
//! `ToWorker` and `Spawn` (what workers and the launcher read from the
//! daemon) and `Spawned` (what the daemon reads from the launcher). None may
//! panic; every refusal is EINTERNAL (a broken channel); a decoded message
//! re-encodes, and re-decodes to the same bytes (these types have no
//! `PartialEq`, so the encodings are compared).
#![no_main]

use clawos_bridge::error::Code;
use clawos_bridge::sandbox::channel::{FromWorker, Spawn, Spawned, ToWorker, decode};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest frame the daemon takes from a worker in these runs.
const MAX: u32 = 1 << 20;

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = u32::try_from(body.len())
        .expect("bodies below 4 GiB")
        .to_le_bytes()
        .to_vec();
    f.extend_from_slice(body);
    f
}

fn check<T: Serialize + DeserializeOwned>(data: &[u8]) {
    match decode::<T>(data, MAX) {
        Ok(msg) => {
            // What `sandbox::channel::send` does: postcard, behind the length.
            let body = postcard::to_allocvec(&msg).expect("a decoded message encodes");
            assert!(body.len() <= data.len() - 4, "re-encoding grew the frame");
            let again: T = decode(&frame(&body), MAX).expect("a re-encoded message decodes");
            let body_again = postcard::to_allocvec(&again).expect("it encodes again");
            assert_eq!(body_again, body);
        }
        Err(e) => assert_eq!(e.code, Code::Einternal, "{}", e.message),
    }
}

fuzz_target!(|data: &[u8]| {
    check::<FromWorker>(data);
    check::<ToWorker>(data);
    check::<Spawn>(data);
    check::<Spawned>(data);
});
