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
}

/// Daemon to launcher: make a worker for instance `instance`, ahead of the
/// run it will serve (the daemon keeps one spare). Carries the worker's end
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
    /// The run's input, once the worker is ready.
    Input(RunInput),
    /// Addresses for a `Resolve`.
    Resolved(Vec<IpAddr>),
    /// A connected socket rides along.
    Connected,
    /// The answer to a `Cgroup` call.
    Cgroup(CgroupReply),
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
    /// The run ended: the last message.
    Done(Box<RunOutcome>),
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
/// the socket between messages.
pub fn recv<T: DeserializeOwned>(
    sock: BorrowedFd<'_>,
) -> Result<Option<(T, Vec<OwnedFd>)>, Failure> {
    let mut header = [0u8; 4];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut got = 0;
    let mut fds = Vec::new();
    while got < header.len() {
        let r = recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut header[got..])],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| broken("receive", e))?;
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = m {
                fds.extend(rights);
            }
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
    let len = u32::from_le_bytes(header);
    if len > MAX_FRAME {
        return Err(broken(
            "receive",
            format!("a frame of {len} bytes is too large"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    let mut at = 0;
    while at < body.len() {
        match rustix::io::read(sock, &mut body[at..]) {
            Ok(0) => {
                return Err(broken(
                    "receive",
                    "the peer closed in the middle of a frame",
                ));
            }
            Ok(n) => at += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(broken("receive", e)),
        }
    }
    let msg = postcard::from_bytes(&body).map_err(|e| broken("decode", e))?;
    Ok(Some((msg, fds)))
}

/// A connected pair of stream sockets: the daemon's end and the worker's.
pub fn channel() -> Result<(UnixStream, UnixStream), Failure> {
    UnixStream::pair()
        .map_err(|e| Failure::new(Code::SandboxSetupFailed, format!("socketpair: {e}")))
}
