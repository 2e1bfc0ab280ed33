//! Who is at the other end of the Unix socket, as the kernel recorded it
//! when the peer called `connect`: `SO_PEERCRED` for the uid and gid and
//! `SO_PEERGROUPS` for the supplementary groups. Nothing is looked up by
//! pid afterwards (`/proc/<pid>/status` would describe whatever process
//! has that pid by then).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// NGROUPS_MAX: the most supplementary groups a process can have.
const MAX_GROUPS: usize = 65536;

/// The peer's supplementary groups at `connect` time.
///
/// rustix has no wrapper for `SO_PEERGROUPS` (Linux 4.13), so this is the
/// raw `getsockopt`: the kernel answers ERANGE with the size it needs when
/// the buffer is short, and the second call gets them all.
#[allow(unsafe_code)]
pub fn groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * 4) as libc::socklen_t;
        // SAFETY: `groups` is valid for `len` bytes, and `len` is a valid
        // socklen_t the kernel writes back.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / 4;
        if r == 0 {
            groups.truncate(needed.min(groups.len()));
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || needed <= groups.len() || needed > MAX_GROUPS {
            return Err(e);
        }
        groups.resize(needed, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_socket_pair_gives_this_process_s_groups() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut got = groups(a.as_fd()).unwrap();
        let mut ours: Vec<u32> = rustix::process::getgroups()
            .unwrap()
            .iter()
            .map(|g| g.as_raw())
            .collect();
        got.sort_unstable();
        ours.sort_unstable();
        ours.dedup();
        got.dedup();
        assert_eq!(got, ours);
    }
}
