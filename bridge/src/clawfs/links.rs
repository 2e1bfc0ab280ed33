//! Where a multiply linked file's links are. A hard link inside a tool's
//! root to a file outside it cannot be told apart from the file by path
//! resolution: the inode is the same. So before such a file is used, the
//! root is walked (without following symlinks or crossing mounts) and its
//! links counted; a file with fewer links inside than `st_nlink` has one
//! outside and is refused. Files with one link, the common case, cost nothing.

use crate::error::{Code, Failure};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use std::collections::HashSet;
use std::os::fd::OwnedFd;

/// Deepest directory the walk descends into.
const MAX_DEPTH: usize = 64;

/// The walk's state: what it looks for and what it has seen.
struct Walk {
    dev: u64,
    ino: u64,
    want: u64,
    budget: u32,
    /// (directory inode, name) of each link found, so an entry seen twice
    /// (a directory renamed during the walk) is counted once.
    found: HashSet<(u64, Vec<u8>)>,
}

/// Count the links to inode `ino` on device `dev` beneath `root`, stopping
/// once `nlink` are found. Scanning more than `max_scan` entries is refused
/// with POLICY_DENIED: a file whose links cannot all be found is treated
/// as one with a link outside. Links deeper than 64 directories are not
/// looked for, with the same result.
pub fn count_inside(
    root: &OwnedFd,
    dev: u64,
    ino: u64,
    nlink: u64,
    max_scan: u32,
) -> Result<u64, Failure> {
    let mut walk = Walk {
        dev,
        ino,
        want: nlink,
        budget: max_scan,
        found: HashSet::new(),
    };
    let dir = rustix::fs::openat(
        root,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Failure::io("open the tool's root to count links", &e.into()))?;
    walk.dir(dir, 0)?;
    Ok(walk.found.len() as u64)
}

impl Walk {
    fn done(&self) -> bool {
        self.found.len() as u64 >= self.want
    }

    fn dir(&mut self, fd: OwnedFd, depth: usize) -> Result<(), Failure> {
        let io = |e: rustix::io::Errno| Failure::io("walk the tool's root", &e.into());
        let st = rustix::fs::fstat(&fd).map_err(io)?;
        if st.st_dev != self.dev || depth > MAX_DEPTH {
            // Another filesystem (a mount below the root) holds no links to this inode.
            return Ok(());
        }
        let dir_ino = st.st_ino;
        let mut subdirs = Vec::new();
        let mut entries = Dir::read_from(&fd).map_err(io)?;
        while let Some(entry) = entries.read() {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            if self.budget == 0 {
                return Err(Failure::new(
                    Code::PolicyDenied,
                    "a multiply linked file's links could not all be found inside the tool's root within clawfs.max_link_scan entries",
                ));
            }
            self.budget -= 1;
            let kind = match entry.file_type() {
                FileType::Unknown => {
                    let s = rustix::fs::statat(&fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(io)?;
                    FileType::from_raw_mode(s.st_mode)
                }
                k => k,
            };
            if kind == FileType::Directory {
                subdirs.push(entry.file_name().to_owned());
            } else if entry.ino() == self.ino {
                self.found.insert((dir_ino, name.to_vec()));
                if self.done() {
                    return Ok(());
                }
            }
        }
        // One descriptor per level while descending.
        drop(entries);
        for name in subdirs {
            let child = match rustix::fs::openat(
                &fd,
                name.as_c_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(child) => child,
                // Removed or replaced since it was listed: it no longer holds links.
                Err(
                    rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP,
                ) => continue,
                Err(e) => return Err(io(e)),
            };
            self.dir(child, depth + 1)?;
            if self.done() {
                return Ok(());
            }
        }
        Ok(())
    }
}
