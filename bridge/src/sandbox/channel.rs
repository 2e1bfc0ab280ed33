//! The messages between daemon, launcher and worker, and their framing on
//! Unix sockets: a little-endian u32 length, then postcard bytes, with
//! descriptors (a pidfd, a connected socket, a cgroup directory) riding as
//! `SCM_RIGHTS` on the frame's first byte.

use crate::error::{Code, Failure};
use crate::outside::{CgroupCall, CgroupReply};
use crate::runtime::RunInput;
use crate::runtime::outcome::RunOutcome;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Instant;

/// Largest frame: a run's input and output fit well below it.
pub const MAX_FRAME: u32 = 256 << 20;
/// Most descriptors one frame carries.
const MAX_FDS: usize = 2;

/// Which layers a worker applies besides seccomp and namespaces, which
/// are never optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layers {
    /// The worker is cloned into its instance cgroup.
    pub cgroup: bool,
    /// The worker enters the worker AppArmor profile.
    pub apparmor: bool,
    /// The eBPF monitors watch the bridge's subtree (the daemon loads them;
    /// the launcher and workers only live in that subtree).
    pub ebpf: bool,
    /// ClawFS enforces a project quota per tool (the daemon sets each
    /// tool's; a worker only writes under it).
    pub storage_quota: bool,
}

/// Daemon to launcher: make a worker for instance `instance`, ahead of the
/// run it will serve (the daemon keeps a pool of them ready). Carries the worker's end
/// of its channel and, with the cgroup layer, the instance leaf's
/// directory. The tool comes later, over the channel ([`Setup`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spawn {
    /// The instance id.
    pub instance: u64,
    /// Optional layers to apply.
    pub layers: Layers,
    /// An artifact to load in the launcher first, so that the worker is
    /// born with it (the tool the daemon expects next).
    pub preload: Option<PathBuf>,
}

/// Daemon to worker, first: the tool this worker runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setup {
    /// The tool's name.
    pub tool: String,
    /// Its precompiled artifact.
    pub artifact: PathBuf,
    /// Its ClawFS directory, as the launcher sees it.
    pub clawfs: PathBuf,
    /// What the run is granted: its devices (the only nodes its tree
    /// holds), memory and CPU budget.
    pub grants: crate::grants::Effective,
}

/// Launcher to daemon: the worker exists (its pidfd rides along), or why not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Spawned {
    /// The worker's pid in the daemon's pid namespace.
    Worker(i32),
    /// It could not be made.
    Refused(Code, String),
}

/// Daemon to worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToWorker {
    /// The tool: the first message.
    Setup(Setup),
    /// Or, first and only: validate and compile these component bytes
    /// (the worker is in a compile cgroup, not an instance's).
    Compile(Vec<u8>),
    /// The run's input, once the worker is ready.
    Input(RunInput),
    /// Addresses for a `Resolve`.
    Resolved(Vec<IpAddr>),
    /// A connected socket rides along.
    Connected,
    /// The answer to a `Cgroup` call.
    Cgroup(CgroupReply),
    /// The memfd of a `Shared` region rides along.
    SharedRegion,
    /// The request failed.
    Refused(Code, String),
}

/// Worker to daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromWorker {
    /// Every layer is in place; the worker waits for its input.
    Ready,
    /// A layer could not be applied: nothing of the tool ran.
    SetupFailed(Code, String),
    /// Look up a name under the egress policy.
    Resolve(String),
    /// Open a connection under the egress policy.
    Connect {
        /// Name or address.
        host: String,
        /// Port.
        port: u16,
        /// How long the connect may take.
        timeout_ms: u64,
    },
    /// A call on the instance's cgroup delegation.
    Cgroup(CgroupCall),
    /// The memory of the region `name` the tool's live instances share.
    Shared {
        /// The region's name.
        name: String,
        /// Its size in bytes.
        size: u64,
    },
    /// The run ended: the last message.
    Done(Box<RunOutcome>),
    /// The artifact of a `Compile`; a component that does not validate
    /// or compile is a `SetupFailed`.
    Compiled(Vec<u8>),
}

fn broken(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(Code::Einternal, format!("sandbox channel: {what}: {e}"))
}

/// Send `msg` with `fds` on `sock`.
pub fn send<T: Serialize>(
    sock: BorrowedFd<'_>,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), Failure> {
    let body = postcard::to_allocvec(msg).map_err(|e| broken("encode", e))?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|n| *n <= MAX_FRAME)
        .ok_or_else(|| {
            broken(
                "send",
                format!("a frame of {} bytes is too large", body.len()),
            )
        })?;
    let mut frame = len.to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(broken("send", "too many descriptors"));
    }
    let mut sent = 0;
    while sent < frame.len() {
        let n = sendmsg(
            sock,
            &[IoSlice::new(&frame[sent..])],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .map_err(|e| broken("send", e))?;
        // The descriptors went with the first bytes.
        control = SendAncillaryBuffer::default();
        sent += n;
    }
    Ok(())
}

/// Receive one message and its descriptors; `None` when the peer closed
/// the socket between messages. For the launcher and workers, whose peer
/// is the daemon.
pub fn recv<T: DeserializeOwned>(
    sock: BorrowedFd<'_>,
) -> Result<Option<(T, Vec<OwnedFd>)>, Failure> {
    recv_within(sock, MAX_FRAME, None)
}

/// [`recv`] from a peer the caller does not trust (the daemon reading a
/// worker): a frame longer than `max` is refused before anything is
/// allocated for it, and the whole frame must arrive by `deadline`, however
/// the peer spaces its bytes (each read waits only for what is left). A
/// frame that misses the deadline fails with ETIMEOUT.
pub fn recv_within<T: DeserializeOwned>(
    sock: BorrowedFd<'_>,
    max: u32,
    deadline: Option<Instant>,
) -> Result<Option<(T, Vec<OwnedFd>)>, Failure> {
    let wait = || -> Result<(), Failure> {
        let Some(deadline) = deadline else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::new(
                Code::Etimeout,
                "sandbox channel: the frame did not arrive in time",
            ));
        }
        rustix::net::sockopt::set_socket_timeout(
            sock,
            rustix::net::sockopt::Timeout::Recv,
            Some(left),
        )
        .map_err(|e| broken("receive timeout", e))
    };
    let timed_out = |e: rustix::io::Errno| match e {
        rustix::io::Errno::AGAIN if deadline.is_some() => Failure::new(
            Code::Etimeout,
            "sandbox channel: the frame did not arrive in time",
        ),
        e => broken("receive", e),
    };
    let mut header = [0u8; 4];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut got = 0;
    let mut fds = Vec::new();
    while got < header.len() {
        wait()?;
        let r = match recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut header[got..])],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(r) => r,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(timed_out(e)),
        };
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = m {
                fds.extend(rights);
            }
        }
        if fds.len() > MAX_FDS {
            return Err(broken("receive", "too many descriptors"));
        }
        if r.bytes == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(broken(
                    "receive",
                    "the peer closed in the middle of a frame",
                ))
            };
        }
        got += r.bytes;
    }
    let len = frame_len(header, max)?;
    let mut body = vec![0u8; len];
    let mut at = 0;
    while at < body.len() {
        wait()?;
        match rustix::io::read(sock, &mut body[at..]) {
            Ok(0) => {
                return Err(broken(
                    "receive",
                    "the peer closed in the middle of a frame",
                ));
            }
            Ok(n) => at += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(timed_out(e)),
        }
    }
    let msg = postcard::from_bytes(&body).map_err(|e| broken("decode", e))?;
    Ok(Some((msg, fds)))
}

/// The body length a frame header announces, if it is at most `max`.
fn frame_len(header: [u8; 4], max: u32) -> Result<usize, Failure> {
    let len = u32::from_le_bytes(header);
    if len > max.min(MAX_FRAME) {
        return Err(broken(
            "receive",
            format!("a frame of {len} bytes is larger than the {max}-byte limit"),
        ));
    }
    Ok(len as usize)
}

/// Decode one whole frame held in `frame` (header and body), as [`recv_within`]
/// does from a socket: the same length check, the same decoder. For the
/// fuzz targets and unit tests.
pub fn decode<T: DeserializeOwned>(frame: &[u8], max: u32) -> Result<T, Failure> {
    let (header, body) = frame
        .split_first_chunk::<4>()
        .ok_or_else(|| broken("receive", "a frame shorter than its header"))?;
    let len = frame_len(*header, max)?;
    if body.len() != len {
        return Err(broken(
            "receive",
            format!("the header announces {len} bytes; {} follow", body.len()),
        ));
    }
    postcard::from_bytes(body).map_err(|e| broken("decode", e))
}

/// A connected pair of stream sockets: the daemon's end and the worker's.
pub fn channel() -> Result<(UnixStream, UnixStream), Failure> {
    UnixStream::pair()
        .map_err(|e| Failure::new(Code::SandboxSetupFailed, format!("socketpair: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::time::Duration;

    #[test]
    fn a_frame_over_the_bound_is_refused_before_it_is_read() {
        let (ours, mut theirs) = channel().unwrap();
        // 200 MiB announced, nothing sent: refused at the header.
        theirs.write_all(&(200u32 << 20).to_le_bytes()).unwrap();
        let e = recv_within::<FromWorker>(ours.as_fd(), 1 << 20, None).unwrap_err();
        assert_eq!(
            e.message,
            "sandbox channel: receive: a frame of 209715200 bytes is larger than the 1048576-byte limit"
        );
    }

    #[test]
    fn a_trickling_peer_misses_the_deadline_of_the_whole_frame() {
        let (ours, mut theirs) = channel().unwrap();
        let frame = {
            let body = postcard::to_allocvec(&FromWorker::Resolve("x".repeat(64))).unwrap();
            let mut f = (body.len() as u32).to_le_bytes().to_vec();
            f.extend(body);
            f
        };
        let trickle = std::thread::spawn(move || {
            // One byte every 50 ms: each read waits less than any per-read
            // timeout would allow, the frame as a whole takes 3.5 s.
            for b in frame {
                if theirs.write_all(&[b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let started = Instant::now();
        let e = recv_within::<FromWorker>(
            ours.as_fd(),
            1 << 20,
            Some(started + Duration::from_millis(500)),
        )
        .unwrap_err();
        let took = started.elapsed();
        assert_eq!(e.code, Code::Etimeout, "{}", e.message);
        assert!(took < Duration::from_millis(900), "gave up after {took:?}");
        drop(ours);
        trickle.join().unwrap();
    }

    #[test]
    fn decode_checks_the_length_like_recv() {
        let body = postcard::to_allocvec(&FromWorker::Ready).unwrap();
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend(&body);
        assert!(matches!(
            decode::<FromWorker>(&frame, 16).unwrap(),
            FromWorker::Ready
        ));
        frame.push(0);
        assert!(decode::<FromWorker>(&frame, 16).is_err());
        assert!(decode::<FromWorker>(&[1, 0], 16).is_err());
        assert!(decode::<FromWorker>(&u32::MAX.to_le_bytes(), 16).is_err());
    }
}
