//! Frame header encoding and decoding, shared by the daemon (async) and the
//! client (blocking). Header errors are fatal to a connection: once a header
//! is wrong, nothing after it can be trusted to be a frame boundary.

use crate::error::{Code, Failure};

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"CLAW";
/// The protocol version this build speaks.
pub const VERSION: u16 = 5;
/// Bytes in a header.
pub const HEADER_LEN: usize = 12;

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame does not start with `CLAW`.
    #[error("bad magic {0:02x?}: not a ClawOS bridge frame")]
    BadMagic([u8; 4]),
    /// A protocol version this build does not speak.
    #[error("protocol version {0} is not supported (this daemon speaks version {VERSION})")]
    UnsupportedVersion(u16),
    /// Reserved flag bits were set.
    #[error("reserved flags {0:#06x} are set")]
    Flags(u16),
    /// The payload is larger than the limit.
    #[error("frame payload of {len} bytes exceeds the {max}-byte limit")]
    Oversized {
        /// Length from the header.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The stream ended inside a frame.
    #[error("truncated frame: expected {expected} bytes, got {got}")]
    Truncated {
        /// Bytes the header (or the header itself) promised.
        expected: u64,
        /// Bytes that arrived.
        got: u64,
    },
}

impl FrameError {
    /// The P1.7 code of the response to this error.
    pub fn code(&self) -> Code {
        match self {
            FrameError::UnsupportedVersion(_) => Code::UnsupportedVersion,
            _ => Code::Eproto,
        }
    }
}

impl From<FrameError> for Failure {
    fn from(e: FrameError) -> Failure {
        Failure::new(e.code(), e.to_string())
    }
}

/// The header for a payload of `len` bytes.
pub fn header(len: usize) -> [u8; HEADER_LEN] {
    let len = u32::try_from(len).expect("payloads are bounded well below 4 GiB");
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&VERSION.to_be_bytes());
    h[8..12].copy_from_slice(&len.to_be_bytes());
    h
}

/// `payload` with its header.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header(payload.len()));
    out.extend_from_slice(payload);
    out
}

/// Check a header; the payload length on success.
pub fn parse_header(h: &[u8; HEADER_LEN], max: u64) -> Result<usize, FrameError> {
    let magic: [u8; 4] = h[..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let version = u16::from_be_bytes([h[4], h[5]]);
    if version != VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let flags = u16::from_be_bytes([h[6], h[7]]);
    if flags != 0 {
        return Err(FrameError::Flags(flags));
    }
    let len = u64::from(u32::from_be_bytes([h[8], h[9], h[10], h[11]]));
    if len > max {
        return Err(FrameError::Oversized { len, max });
    }
    Ok(len as usize)
}

/// Decode one whole frame from `buf` (which must hold exactly one frame).
pub fn decode(buf: &[u8], max: u64) -> Result<&[u8], FrameError> {
    let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
        return Err(FrameError::Truncated {
            expected: HEADER_LEN as u64,
            got: buf.len() as u64,
        });
    };
    let len = parse_header(h, max)?;
    let body = &buf[HEADER_LEN..];
    if body.len() < len {
        return Err(FrameError::Truncated {
            expected: len as u64,
            got: body.len() as u64,
        });
    }
    Ok(&body[..len])
}

/// Read `buf.len()` bytes, or report how many arrived before the end.
fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Blocking read of one frame's payload; `None` at a clean end of stream.
pub fn read_blocking(r: &mut impl std::io::Read, max: u64) -> Result<Option<Vec<u8>>, Failure> {
    let mut h = [0u8; HEADER_LEN];
    let got = read_full(r, &mut h).map_err(|e| Failure::io("cannot read frame header", &e))?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER_LEN {
        return Err(FrameError::Truncated {
            expected: HEADER_LEN as u64,
            got: got as u64,
        }
        .into());
    }
    let len = parse_header(&h, max)?;
    let mut payload = vec![0u8; len];
    let got =
        read_full(r, &mut payload).map_err(|e| Failure::io("cannot read frame payload", &e))?;
    if got < len {
        return Err(FrameError::Truncated {
            expected: len as u64,
            got: got as u64,
        }
        .into());
    }
    Ok(Some(payload))
}

/// [`read_full`] for async readers.
async fn read_full_async<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]).await? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// A frame read by the daemon, and its share of the bytes in flight.
#[derive(Debug)]
pub struct Frame {
    /// The payload.
    pub payload: Vec<u8>,
    /// The payload's bytes, counted against the daemon's budget until
    /// dropped (keep it while the request is served).
    pub bytes: tokio::sync::OwnedSemaphorePermit,
}

/// Async read of one frame's payload; `None` at a clean end of stream
/// before the first byte. `first_byte` bounds the wait for a frame to start
/// (an idle peer is dropped quietly); `whole_frame` bounds the rest. The
/// payload's length is taken from `budget` (one permit a byte) before
/// anything is allocated for it: when the budget cannot cover it, the
/// frame is refused with EAGAIN (and, its body unread, the connection
/// ends).
pub async fn read_async<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    max: u64,
    first_byte: std::time::Duration,
    whole_frame: std::time::Duration,
    budget: &std::sync::Arc<tokio::sync::Semaphore>,
) -> Result<Option<Frame>, Failure> {
    read_async_noting(r, max, first_byte, whole_frame, budget, || {}).await
}

/// [`read_async`], calling `begun` when the frame's first byte has come.
pub async fn read_async_noting<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    max: u64,
    first_byte: std::time::Duration,
    whole_frame: std::time::Duration,
    budget: &std::sync::Arc<tokio::sync::Semaphore>,
    begun: impl FnOnce(),
) -> Result<Option<Frame>, Failure> {
    use tokio::io::AsyncReadExt;
    let mut h = [0u8; HEADER_LEN];
    match tokio::time::timeout(first_byte, r.read(&mut h[..1])).await {
        Err(_) | Ok(Ok(0)) => return Ok(None),
        // A TLS peer that closed its connection without close_notify,
        // between frames: the end of the stream as well.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Ok(Err(e)) => return Err(Failure::io("cannot read frame header", &e)),
        Ok(Ok(_)) => begun(),
    }
    let rest = async {
        let got = 1 + read_full_async(r, &mut h[1..])
            .await
            .map_err(|e| Failure::io("cannot read frame header", &e))?;
        if got < HEADER_LEN {
            return Err(FrameError::Truncated {
                expected: HEADER_LEN as u64,
                got: got as u64,
            }
            .into());
        }
        let len = parse_header(&h, max)?;
        let bytes = u32::try_from(len)
            .ok()
            .and_then(|n| budget.clone().try_acquire_many_owned(n).ok())
            .ok_or_else(|| {
                Failure::new(
                    Code::Eagain,
                    format!(
                        "the daemon is reading or serving as many request bytes as it holds at once \
                         (ipc.max_request_bytes_in_flight); this {len}-byte frame was not read; retry later"
                    ),
                )
            })?;
        let mut payload = vec![0u8; len];
        let got = read_full_async(r, &mut payload)
            .await
            .map_err(|e| Failure::io("cannot read frame payload", &e))?;
        if got < len {
            return Err(FrameError::Truncated {
                expected: len as u64,
                got: got as u64,
            }
            .into());
        }
        Ok(Frame { payload, bytes })
    };
    match tokio::time::timeout(whole_frame, rest).await {
        Ok(result) => result.map(Some),
        Err(_) => Err(Failure::new(
            Code::Etimeout,
            format!("frame not completed within {} ms", whole_frame.as_millis()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let frame = encode(b"hello");
        assert_eq!(&frame[..4], b"CLAW");
        assert_eq!(decode(&frame, 100).unwrap(), b"hello");
        let mut r = &frame[..];
        assert_eq!(read_blocking(&mut r, 100).unwrap().unwrap(), b"hello");
        assert_eq!(read_blocking(&mut r, 100).unwrap(), None);
    }

    #[test]
    fn header_errors() {
        let mut f = encode(b"x");
        f[0] = b'X';
        assert!(matches!(decode(&f, 100), Err(FrameError::BadMagic(_))));
        let mut f = encode(b"x");
        f[5] = 1;
        assert_eq!(decode(&f, 100), Err(FrameError::UnsupportedVersion(1)));
        assert_eq!(
            FrameError::UnsupportedVersion(2).code(),
            Code::UnsupportedVersion
        );
        let mut f = encode(b"x");
        f[7] = 1;
        assert_eq!(decode(&f, 100), Err(FrameError::Flags(1)));
        let f = encode(&[0; 101]);
        assert_eq!(
            decode(&f, 100),
            Err(FrameError::Oversized { len: 101, max: 100 })
        );
        assert_eq!(
            FrameError::Oversized { len: 101, max: 100 }.code(),
            Code::Eproto
        );
    }

    #[test]
    fn truncation_is_reported_with_sizes() {
        let f = encode(b"hello");
        assert_eq!(
            decode(&f[..5], 100),
            Err(FrameError::Truncated {
                expected: 12,
                got: 5
            })
        );
        assert_eq!(
            decode(&f[..14], 100),
            Err(FrameError::Truncated {
                expected: 5,
                got: 2
            })
        );
        let mut r = &f[..14];
        let e = read_blocking(&mut r, 100).unwrap_err();
        assert_eq!(e.code, Code::Eproto);
        assert!(
            e.message.contains("expected 5 bytes, got 2"),
            "{}",
            e.message
        );
    }

    proptest! {
        // The decoder never panics and never returns more than the limit,
        // whatever the bytes; a valid frame always decodes to its payload.
        #[test]
        fn decoder_survives_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = decode(&bytes, 32) {
                prop_assert!(p.len() <= 32);
            }
            let mut r = &bytes[..];
            let _ = read_blocking(&mut r, 32);
        }

        #[test]
        fn decoder_survives_corrupted_frames(payload in proptest::collection::vec(any::<u8>(), 0..48), at in 0usize..60, byte in any::<u8>()) {
            let mut f = encode(&payload);
            let i = at % f.len();
            f[i] = byte;
            match decode(&f, 40) {
                Ok(p) => prop_assert!(p.len() <= 40),
                Err(e) => prop_assert!(matches!(e.code(), Code::Eproto | Code::UnsupportedVersion)),
            }
        }

        #[test]
        fn valid_frames_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let f = encode(&payload);
            prop_assert_eq!(decode(&f, 256).unwrap(), &payload[..]);
        }
    }
}
