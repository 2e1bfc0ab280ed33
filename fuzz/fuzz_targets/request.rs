//! Feeds arbitrary bytes, as a frame's payload, to the IPC message decoders
//! (`clawos_bridge::ipc::proto`): `Request::decode` with the default
//! `IpcLimits` (what the daemon reads from a client) and `Response::decode`
//! (what clawosctl reads from the daemon). Neither may panic; a refused
//! request is EPROTO; a decoded request is within every limit; and whatever
//! decodes re-encodes with the bridge's own encoder to an equal value.
#![no_main]

use clawos_bridge::config::IpcLimits;
use clawos_bridge::error::Code;
use clawos_bridge::ipc::proto::{Request, Response};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static LIMITS: LazyLock<IpcLimits> = LazyLock::new(IpcLimits::default);

fuzz_target!(|data: &[u8]| {
    match Request::decode(data, &LIMITS) {
        Ok(request) => {
            assert!(request.validate(&LIMITS).is_ok());
            let again = Request::decode(&request.encode(), &LIMITS)
                .expect("a decoded request re-encodes to one that decodes");
            assert_eq!(again, request);
        }
        Err(e) => assert_eq!(e.code, Code::Eproto, "{}", e.message),
    }
    match Response::decode(data) {
        Ok(response) => {
            let again = Response::decode(&response.encode())
                .expect("a decoded response re-encodes to one that decodes");
            assert_eq!(again, response);
        }
        Err(e) => assert_eq!(e.code, Code::Eproto, "{}", e.message),
    }
});
