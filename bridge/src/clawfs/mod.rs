//! ClawFS confinement: every path a tool names is resolved by the kernel
//! beneath the tool's root directory, never by string checks alone.
//!
//! Whole paths are opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`
//! relative to the root's descriptor, so `..`, absolute paths and symlinks
//! that lead outside fail with EXDEV inside the kernel, and there is no window
//! between a check and its use. Operations on a last component (mkdir, unlink,
//! rename, link, symlink, readlink) first resolve the parent that way and then
//! act on one plain name relative to the parent's descriptor, so they never
//! follow a symlink in that name. A regular file with more than one link is
//! used only when every link is found inside the root ([`links`]), which
//! refuses hard links planted to files outside it.

pub mod links;
pub mod quota;

use crate::error::{Code, Failure};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Longest path a tool may pass (PATH_MAX).
pub const MAX_PATH: usize = 4096;

/// The permission bits a tool may set: no setuid, setgid or sticky bits.
pub const ALLOWED_MODE_BITS: u32 = 0o777;

/// One tool's root directory, held open.
#[derive(Debug)]
pub struct Root {
    path: PathBuf,
    fd: OwnedFd,
    dev: u64,
    ino: u64,
    max_link_scan: u32,
}

/// Deepest directory [`Root::depth_of`] walks up from.
const MAX_DEPTH: usize = MAX_PATH / 2;

/// The parent directory of a last component, and that component.
#[derive(Debug)]
pub struct Leaf {
    /// The parent, resolved beneath the root.
    pub dir: OwnedFd,
    /// One plain name: not empty, `.` or `..`, no `/`.
    pub name: String,
}

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS
}

/// How often [`openat2`] asks again after EAGAIN.
const EAGAIN_RETRIES: u32 = 64;

/// `openat2`, asked again when the kernel answers EAGAIN: with
/// RESOLVE_BENEATH it does so when a rename or a mount anywhere on the
/// machine raced its resolution of `..` (openat2(2)), which a worker
/// setting up its mount tree at the same moment causes. Seen once the
/// daemon made ready workers while runs went on: a tool's `chown a/..`
/// was answered EAGAIN instead of POLICY_DENIED.
fn openat2<Fd: AsFd>(
    dir: Fd,
    path: &str,
    flags: OFlags,
    mode: Mode,
    resolve: ResolveFlags,
) -> Result<OwnedFd, Errno> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir.as_fd(), path, flags, mode, resolve) {
            Err(Errno::AGAIN) if tries < EAGAIN_RETRIES => {
                tries += 1;
                std::thread::yield_now();
            }
            other => return other,
        }
    }
}

/// A failure of path resolution: EXDEV means the path led outside the root.
fn resolve_error(path: &str, err: Errno) -> Failure {
    match err {
        Errno::XDEV => Failure::new(
            Code::PolicyDenied,
            format!("path {path:?} leads outside the tool's root"),
        ),
        Errno::LOOP => Failure::new(
            Code::InvalidArgument,
            format!("path {path:?}: too many symbolic links, or a symbolic link where none may be"),
        ),
        e => Failure::io(format_args!("path {path:?}"), &e.into()),
    }
}

/// Check a tool's path before the kernel resolves it. Absolute paths are
/// refused here with the same code the kernel gives an escape.
pub fn check_path(path: &str) -> Result<&str, Failure> {
    if path.len() > MAX_PATH {
        return Err(Failure::new(
            Code::InvalidArgument,
            format!("path of {} bytes is longer than {MAX_PATH}", path.len()),
        ));
    }
    if path.contains('\0') {
        return Err(Failure::new(
            Code::InvalidArgument,
            "path contains a NUL byte",
        ));
    }
    if path.starts_with('/') {
        return Err(Failure::new(
            Code::PolicyDenied,
            format!("absolute path {path:?} is outside the tool's root: paths are relative to it"),
        ));
    }
    Ok(if path.is_empty() { "." } else { path })
}

/// Split `path` into its parent and last component.
pub fn split(path: &str) -> Result<(&str, &str), Failure> {
    let path = check_path(path)?;
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = match trimmed.rsplit_once('/') {
        Some((p, n)) => (if p.is_empty() { "." } else { p }, n),
        None => (".", trimmed),
    };
    match name {
        ".." => Err(Failure::new(
            Code::PolicyDenied,
            format!("path {path:?} ends in '..', which may lead outside the tool's root"),
        )),
        "" | "." => Err(Failure::new(
            Code::InvalidArgument,
            format!("path {path:?} does not name an entry"),
        )),
        n => Ok((parent, n)),
    }
}

/// Check a mode a tool asks for: permission bits only.
pub fn check_mode(mode: u32) -> Result<Mode, Failure> {
    if mode & !ALLOWED_MODE_BITS != 0 {
        return Err(Failure::new(
            Code::Eperm,
            format!(
                "mode {mode:#o} sets bits other than rwx (setuid, setgid, sticky or type bits)"
            ),
        ));
    }
    Ok(Mode::from_raw_mode(mode))
}

impl Root {
    /// Open `path` as a root, creating it (0700) and its parents if missing.
    pub fn open(path: &Path, max_link_scan: u32) -> Result<Root, Failure> {
        let setup = |what: &str, e: &std::io::Error| {
            Failure::new(
                Code::SandboxSetupFailed,
                format!("clawfs root {}: cannot {what}: {e}", path.display()),
            )
        };
        if !path.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|e| setup("create it", &e))?;
        }
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| setup("open it", &e.into()))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| setup("stat it", &e.into()))?;
        Ok(Root {
            path: path.to_owned(),
            fd,
            dev: st.st_dev,
            ino: st.st_ino,
            max_link_scan,
        })
    }

    /// The root's host path (for logs and the WASI preopen).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open `path` beneath the root with `flags` (CLOEXEC is added). Only
    /// regular files and directories are opened, and a multiply linked file
    /// only when all its links are inside the root. The entry is resolved
    /// once as O_PATH, checked, then reopened through its descriptor, so
    /// nothing is truncated or opened before the checks and nothing can be
    /// swapped in between.
    pub fn open_at(&self, path: &str, flags: OFlags, mode: Mode) -> Result<OwnedFd, Failure> {
        let rel = check_path(path)?;
        let create = flags.contains(OFlags::CREATE);
        let exclusive = flags.contains(OFlags::EXCL);
        for _ in 0..2 {
            let found = openat2(
                &self.fd,
                rel,
                OFlags::PATH | OFlags::CLOEXEC,
                Mode::empty(),
                resolve_flags(),
            );
            match found {
                Ok(_) if create && exclusive => {
                    return Err(Failure::new(
                        Code::InvalidArgument,
                        format!("{path:?} exists and exclusive creation was asked for"),
                    ));
                }
                Ok(entry) => return self.reopen(&entry, path, flags),
                Err(Errno::NOENT) if create => {
                    // A new file: nothing to check, and O_EXCL makes sure it is new.
                    match openat2(
                        &self.fd,
                        rel,
                        flags | OFlags::EXCL | OFlags::CLOEXEC,
                        mode,
                        resolve_flags(),
                    ) {
                        Ok(fd) => return Ok(fd),
                        // Made by someone else since, or a dangling symlink: look again.
                        Err(Errno::EXIST) if !exclusive => continue,
                        Err(e) => return Err(resolve_error(path, e)),
                    }
                }
                Err(e) => return Err(resolve_error(path, e)),
            }
        }
        Err(Failure::new(
            Code::InvalidArgument,
            format!(
                "{path:?} is a dangling symbolic link (or was created and removed meanwhile): create its target instead"
            ),
        ))
    }

    /// Check the O_PATH `entry` and reopen it with `flags`.
    fn reopen(&self, entry: &OwnedFd, path: &str, flags: OFlags) -> Result<OwnedFd, Failure> {
        let st = self.check_links(entry, path)?;
        let kind = file_type(&st);
        if kind != FileType::RegularFile && kind != FileType::Directory {
            return Err(Failure::new(
                Code::PolicyDenied,
                format!(
                    "{path:?} is a {kind:?}: only regular files and directories are opened here (devices by name through the device interface)"
                ),
            ));
        }
        if flags.contains(OFlags::PATH) {
            return rustix::io::fcntl_dupfd_cloexec(entry, 0)
                .map_err(|e| Failure::io(format_args!("open {path:?}"), &e.into()));
        }
        let keep = flags
            & !(OFlags::CREATE | OFlags::EXCL | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::NOCTTY);
        let fd = rustix::fs::open(
            proc_fd(entry).as_str(),
            keep | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Failure::io(format_args!("open {path:?}"), &e.into()))?;
        if flags.contains(OFlags::TRUNC) && kind == FileType::RegularFile {
            rustix::fs::ftruncate(&fd, 0)
                .map_err(|e| Failure::io(format_args!("truncate {path:?}"), &e.into()))?;
        }
        Ok(fd)
    }

    /// Resolve `path` to an O_PATH descriptor of the entry itself, following
    /// symlinks only beneath the root, and check its links.
    pub fn entry(&self, path: &str) -> Result<OwnedFd, Failure> {
        self.open_at(path, OFlags::PATH, Mode::empty())
    }

    /// The parent of `path`'s last component, resolved beneath the root.
    pub fn leaf(&self, path: &str) -> Result<Leaf, Failure> {
        let (parent, name) = split(path)?;
        let dir = openat2(
            &self.fd,
            parent,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            resolve_flags(),
        )
        .map_err(|e| resolve_error(path, e))?;
        Ok(Leaf {
            dir,
            name: name.to_owned(),
        })
    }

    /// Refuse a non-directory whose links are not all inside the root.
    pub fn check_links(&self, fd: &impl AsFd, path: &str) -> Result<Stat, Failure> {
        let st = rustix::fs::fstat(fd)
            .map_err(|e| Failure::io(format_args!("stat {path:?}"), &e.into()))?;
        if st.st_nlink > 1 && FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            let found = links::count_inside(
                &self.fd,
                self.dev,
                st.st_ino,
                st.st_nlink,
                self.max_link_scan,
            )?;
            if st.st_dev != self.dev || found < st.st_nlink {
                tracing::warn!(root = %self.path.display(), path, links = st.st_nlink, found, "refused a file linked from outside the tool's root");
                return Err(Failure::new(
                    Code::PolicyDenied,
                    format!(
                        "{path:?} has {} links and only {found} are inside the tool's root: a hard link to a file outside it",
                        st.st_nlink
                    ),
                ));
            }
            // A rename or link during the walk could have shown one link
            // twice; both change the inode's ctime and the second its link
            // count, so the walk only counts if neither moved.
            let after = rustix::fs::fstat(fd)
                .map_err(|e| Failure::io(format_args!("stat {path:?}"), &e.into()))?;
            if (after.st_nlink, after.st_ctime, after.st_ctime_nsec)
                != (st.st_nlink, st.st_ctime, st.st_ctime_nsec)
            {
                return Err(Failure::new(
                    Code::PolicyDenied,
                    format!("{path:?} was linked or renamed while its links were counted"),
                ));
            }
        }
        Ok(st)
    }

    /// `mkdir` of the last component.
    pub fn mkdir(&self, path: &str, mode: u32) -> Result<(), Failure> {
        let mode = check_mode(mode)?;
        let leaf = self.leaf(path)?;
        rustix::fs::mkdirat(&leaf.dir, leaf.name.as_str(), mode)
            .map_err(|e| op_error("mkdir", path, e))
    }

    /// `rmdir` of the last component.
    pub fn rmdir(&self, path: &str) -> Result<(), Failure> {
        let leaf = self.leaf(path)?;
        rustix::fs::unlinkat(&leaf.dir, leaf.name.as_str(), AtFlags::REMOVEDIR)
            .map_err(|e| op_error("rmdir", path, e))
    }

    /// `unlink` of the last component (a symlink itself, never its target).
    pub fn unlink(&self, path: &str) -> Result<(), Failure> {
        let leaf = self.leaf(path)?;
        rustix::fs::unlinkat(&leaf.dir, leaf.name.as_str(), AtFlags::empty())
            .map_err(|e| op_error("unlink", path, e))
    }

    /// `rename`: both parents are resolved beneath the root, so nothing can
    /// be moved across its boundary.
    pub fn rename(&self, old: &str, new: &str) -> Result<(), Failure> {
        let from = self.leaf(old)?;
        let to = self.leaf(new)?;
        rustix::fs::renameat(&from.dir, from.name.as_str(), &to.dir, to.name.as_str())
            .map_err(|e| op_error("rename", old, e))
    }

    /// A hard link `new` to `existing`. `existing` is not followed if it is
    /// a symlink, and it must itself be a file whose links are all inside.
    pub fn link(&self, existing: &str, new: &str) -> Result<(), Failure> {
        let from = self.leaf(existing)?;
        self.check_link_source(&from.dir, &from.name, false)?;
        let to = self.leaf(new)?;
        rustix::fs::linkat(
            &from.dir,
            from.name.as_str(),
            &to.dir,
            to.name.as_str(),
            AtFlags::empty(),
        )
        .map_err(|e| op_error("link", new, e))
    }

    /// A symlink at `link_path` to `target`. The target must stay inside
    /// the root when read from the link's directory: not absolute, and its
    /// `..` never above the root. (Following it is confined by the kernel
    /// anyway; this refuses to make one that could only fail.)
    pub fn symlink(&self, target: &str, link_path: &str) -> Result<(), Failure> {
        let leaf = self.leaf(link_path)?;
        self.check_symlink_in(&leaf.dir, target, link_path)?;
        rustix::fs::symlinkat(target, &leaf.dir, leaf.name.as_str())
            .map_err(|e| op_error("symlink", link_path, e))
    }

    /// The target of the symlink at `path`.
    pub fn readlink(&self, path: &str) -> Result<String, Failure> {
        let leaf = self.leaf(path)?;
        let target = rustix::fs::readlinkat(&leaf.dir, leaf.name.as_str(), Vec::new())
            .map_err(|e| op_error("readlink", path, e))?;
        target.into_string().map_err(|_| {
            Failure::new(
                Code::InvalidArgument,
                format!("symlink {path:?} has a target that is not UTF-8"),
            )
        })
    }

    /// `stat` of the entry `path` resolves to.
    pub fn stat(&self, path: &str) -> Result<Stat, Failure> {
        let fd = openat2(
            &self.fd,
            check_path(path)?,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            resolve_flags(),
        )
        .map_err(|e| resolve_error(path, e))?;
        self.check_links(&fd, path)
    }

    /// `chmod` of the entry `path` resolves to; permission bits only.
    pub fn chmod(&self, path: &str, mode: u32) -> Result<(), Failure> {
        let mode = check_mode(mode)?;
        let fd = self.not_the_root(self.entry(path)?, "chmod", path)?;
        // fchmod does not take O_PATH descriptors and fchmodat2 is newer
        // than 6.6; the descriptor's /proc/self/fd entry names exactly the
        // inode resolved above.
        rustix::fs::chmodat(
            rustix::fs::CWD,
            proc_fd(&fd).as_str(),
            mode,
            AtFlags::empty(),
        )
        .map_err(|e| op_error("chmod", path, e))
    }

    /// `chown` of the entry `path` resolves to (policy is the caller's).
    pub fn chown(&self, path: &str, uid: u32, gid: u32) -> Result<(), Failure> {
        let fd = self.not_the_root(self.entry(path)?, "chown", path)?;
        rustix::fs::chownat(
            &fd,
            "",
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::EMPTY_PATH,
        )
        .map_err(|e| op_error("chown", path, e))
    }
}

impl Root {
    /// Whether the tree has no block or no inode left: statfs beneath a
    /// directory with a project quota reports what the project may still
    /// take (or the partition, if that is less), as the tool sees it.
    pub fn is_full(&self) -> bool {
        rustix::fs::fstatfs(&self.fd).is_ok_and(|s| s.f_bavail == 0 || s.f_ffree == 0)
    }

    /// `fd`, unless it is the root itself: the root keeps the owner and
    /// the mode (0700) the bridge gave it, whichever path names it.
    fn not_the_root(&self, fd: OwnedFd, op: &str, path: &str) -> Result<OwnedFd, Failure> {
        let st = rustix::fs::fstat(&fd)
            .map_err(|e| Failure::io(format_args!("stat {path:?}"), &e.into()))?;
        if (st.st_dev, st.st_ino) == (self.dev, self.ino) {
            return Err(Failure::new(
                Code::PolicyDenied,
                format!("{op} {path:?}: that is the tool's root, which keeps its owner and mode"),
            ));
        }
        Ok(fd)
    }

    /// How many directories below the root the directory `dir` is (found by
    /// walking its `..` up to the root). A directory the walk does not lead
    /// back to the root from is refused.
    pub fn depth_of(&self, dir: &impl AsFd) -> Result<usize, Failure> {
        let outside = || {
            Failure::new(
                Code::PolicyDenied,
                "a directory that is not beneath the tool's root",
            )
        };
        let mut current = rustix::io::fcntl_dupfd_cloexec(dir, 0)
            .map_err(|e| Failure::io("duplicate a directory descriptor", &e.into()))?;
        for depth in 0..=MAX_DEPTH {
            let st = rustix::fs::fstat(&current)
                .map_err(|e| Failure::io("stat a directory", &e.into()))?;
            if st.st_dev != self.dev {
                return Err(outside());
            }
            if st.st_ino == self.ino {
                return Ok(depth);
            }
            let parent = rustix::fs::openat(
                &current,
                "..",
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Failure::io("open a directory's parent", &e.into()))?;
            let up = rustix::fs::fstat(&parent)
                .map_err(|e| Failure::io("stat a directory", &e.into()))?;
            // The filesystem's own root is its own parent.
            if (up.st_dev, up.st_ino) == (st.st_dev, st.st_ino) {
                return Err(outside());
            }
            current = parent;
        }
        Err(outside())
    }

    /// May `path`, beneath the directory `dir`, be hard-linked? It is
    /// resolved beneath `dir` (followed if `follow`, else the entry itself),
    /// and it must be a file whose links are all inside the root.
    pub fn check_link_source(
        &self,
        dir: &impl AsFd,
        path: &str,
        follow: bool,
    ) -> Result<(), Failure> {
        let nofollow = if follow {
            OFlags::empty()
        } else {
            OFlags::NOFOLLOW
        };
        let probe = openat2(
            dir,
            check_path(path)?,
            OFlags::PATH | nofollow | OFlags::CLOEXEC,
            Mode::empty(),
            resolve_flags(),
        )
        .map_err(|e| resolve_error(path, e))?;
        self.check_links(&probe, path).map(drop)
    }
}

impl Root {
    /// May a symlink to `target` be made at `link_path` (beneath `dir`)?
    /// Its directory is resolved as the kernel will resolve it (beneath
    /// `dir`, following the symlinks on the way), and the target, read from
    /// there, must stay inside the root: not absolute, its `..` never above
    /// the root. (A symlink on the way would make a textual check of
    /// `link_path` wrong: `s -> .` then `s/l -> ../x`.)
    pub fn check_symlink_at(
        &self,
        dir: &impl AsFd,
        target: &str,
        link_path: &str,
    ) -> Result<(), Failure> {
        let (parent, _) = split(link_path)?;
        let parent = openat2(
            dir,
            parent,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            resolve_flags(),
        )
        .map_err(|e| resolve_error(link_path, e))?;
        self.check_symlink_in(&parent, target, link_path)
    }

    /// [`Root::check_symlink_at`] for a link made in the directory `parent`.
    fn check_symlink_in(
        &self,
        parent: &impl AsFd,
        target: &str,
        link_path: &str,
    ) -> Result<(), Failure> {
        check_path(target)?;
        let depth = self.depth_of(parent)?;
        match lexical_depth_from(depth, target) {
            Some(_) => Ok(()),
            None => Err(Failure::new(
                Code::PolicyDenied,
                format!("symlink target {target:?} at {link_path:?} leads outside the tool's root"),
            )),
        }
    }
}

/// A failure of an operation on an already-resolved name.
fn op_error(op: &str, path: &str, err: Errno) -> Failure {
    match err {
        Errno::XDEV => Failure::new(
            Code::PolicyDenied,
            format!("{op} {path:?}: crosses a filesystem boundary"),
        ),
        e => Failure::io(format_args!("{op} {path:?}"), &e.into()),
    }
}

/// The depth reached walking `path` from `depth`, or None above the root.
fn lexical_depth_from(depth: usize, path: &str) -> Option<usize> {
    if path.starts_with('/') {
        return None;
    }
    path.split('/').try_fold(depth, |d, c| match c {
        "" | "." => Some(d),
        ".." => d.checked_sub(1),
        _ => Some(d + 1),
    })
}

/// The /proc/self/fd path of `fd`: the magic link to exactly its inode.
fn proc_fd(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd))
}

/// A file's type from its stat.
pub fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

#[cfg(test)]
mod tests;
