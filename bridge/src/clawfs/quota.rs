//! Per-tool storage quotas: ext4 project quotas, enforced by the kernel.
//!
//! Each tool's ClawFS directory is its own project: its project id is the
//! directory's inode number (unique on the filesystem while the directory
//! exists, and kept with it when `remove --keep-data` keeps it), set with
//! `FS_XFLAG_PROJINHERIT` so that everything created beneath inherits it,
//! whatever path created it (the filesystem interface, WASI, a later run).
//! The kernel then counts every block and inode of the tree against the
//! project's limits and answers EDQUOT past them. A worker cannot move its
//! files out of the project: ext4 refuses a project change from any user
//! namespace but the first, and refuses rename and link across projects.
//!
//! No maintained crate wraps `quotactl_fd(2)` or the `FS_IOC_FS[GS]ETXATTR`
//! ioctls, so both are called raw here; the layouts are checked by the
//! tests below against the kernel headers' sizes.
#![allow(unsafe_code)]

use crate::error::{Code, Failure};
use serde::{Deserialize, Serialize};
use std::ffi::c_void;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// What a tool's tree holds and may hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageUse {
    /// Bytes charged to the tool (whole blocks, as the kernel counts them).
    pub bytes: u64,
    /// Inodes: files, directories, symlinks, the tree's root included.
    pub inodes: u64,
    /// The hard limit on bytes.
    pub quota_bytes: u64,
    /// The hard limit on inodes.
    pub quota_inodes: u64,
}

/// The ClawFS partition as `status` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClawfsStatus {
    /// Each tool's limit on bytes.
    pub quota_bytes: u64,
    /// Each tool's limit on inodes.
    pub quota_inodes: u64,
    /// Bytes the tools' trees hold together.
    pub tools_bytes: u64,
    /// Bytes free for tools (the reserve excluded).
    pub free_bytes: u64,
    /// Bytes free that only the daemon may use: the partition's reserved
    /// blocks, which keep room for installs when tools fill the rest.
    pub reserved_bytes: u64,
    /// Inodes free.
    pub free_inodes: u64,
}

/// `struct fsxattr` (linux/fs.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// `_IOR('X', 31, struct fsxattr)`.
pub const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
/// `_IOW('X', 32, struct fsxattr)`.
pub const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;
/// New entries of a directory take its project id.
const FS_XFLAG_PROJINHERIT: u32 = 0x200;

/// `struct fs_qfilestat` (linux/dqblk_xfs.h).
#[repr(C)]
#[derive(Debug, Default)]
struct FsQfilestat {
    ino: u64,
    nblks: u64,
    nextents: u32,
}

/// `struct fs_quota_stat` (linux/dqblk_xfs.h), Q_XGETQSTAT's answer.
#[repr(C)]
#[derive(Debug, Default)]
struct FsQuotaStat {
    version: i8,
    flags: u16,
    pad: i8,
    uquota: FsQfilestat,
    gquota: FsQfilestat,
    incoredqs: u32,
    btimelimit: i32,
    itimelimit: i32,
    rtbtimelimit: i32,
    bwarnlimit: u16,
    iwarnlimit: u16,
}

/// Project quotas (linux/quota.h).
const PRJQUOTA: libc::c_int = 2;
/// `XQM_CMD(5)`: the filesystem's quota state.
const Q_XGETQSTAT: libc::c_int = (('X' as libc::c_int) << 8) + 5;
/// Project quotas are counted.
const FS_QUOTA_PDQ_ACCT: u16 = 1 << 4;
/// Project quota limits are enforced (not only counted).
const FS_QUOTA_PDQ_ENFD: u16 = 1 << 5;
/// Quota limits are kept in 1 KiB blocks (QIF_DQBLKSIZE).
const QIF_DQBLKSIZE: u64 = 1024;
const QIF_ILIMITS: u32 = 4;

/// The quotactl commands the daemon makes, as its seccomp filter allows
/// them (bridge/seccomp/daemon.toml names these).
pub const CMD_STATE: u32 = libc::QCMD(Q_XGETQSTAT, PRJQUOTA) as u32;
/// Read one project's limits and use.
pub const CMD_GET: u32 = libc::QCMD(libc::Q_GETQUOTA, PRJQUOTA) as u32;
/// Set one project's limits.
pub const CMD_SET: u32 = libc::QCMD(libc::Q_SETQUOTA, PRJQUOTA) as u32;

/// Hard limits of `blocks` (1 KiB) and `inodes`, no soft ones; `valid`
/// says which fields Q_SETQUOTA takes.
fn dqblk(blocks: u64, inodes: u64, valid: u32) -> libc::dqblk {
    libc::dqblk {
        dqb_bhardlimit: blocks,
        dqb_bsoftlimit: 0,
        dqb_curspace: 0,
        dqb_ihardlimit: inodes,
        dqb_isoftlimit: 0,
        dqb_curinodes: 0,
        dqb_btime: 0,
        dqb_itime: 0,
        dqb_valid: valid,
    }
}

fn quotactl(fd: BorrowedFd<'_>, cmd: u32, id: u32, addr: *mut c_void) -> std::io::Result<()> {
    // SAFETY: quotactl_fd reads or writes the struct `addr` points to, of
    // the size the command implies; every caller passes one of that type,
    // alive for the call. cmd and id are zero-extended, as the filter
    // compares them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            libc::c_long::from(fd.as_raw_fd()),
            libc::c_long::from(cmd),
            libc::c_long::from(id),
            addr,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn get_xattr(fd: BorrowedFd<'_>) -> std::io::Result<FsXattr> {
    let mut x = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR writes one struct fsxattr, alive for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR, &mut x) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(x)
}

fn set_xattr(fd: BorrowedFd<'_>, x: &FsXattr) -> std::io::Result<()> {
    // SAFETY: FS_IOC_FSSETXATTR reads one struct fsxattr, alive for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSSETXATTR, x) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)
}

/// Whether the filesystem that holds `path` (or its nearest existing
/// ancestor) enforces project quota limits: fails, naming what is missing,
/// unless it does.
pub fn require_enforced(path: &Path) -> Result<(), Failure> {
    let mut at = path;
    while !at.exists() {
        at = at.parent().unwrap_or(Path::new("/"));
    }
    let fd = open_dir(at).map_err(|e| {
        Failure::new(
            Code::SandboxSetupFailed,
            format!("cannot open {}: {e}", at.display()),
        )
    })?;
    let mut state = FsQuotaStat::default();
    let flags = quotactl(
        std::os::fd::AsFd::as_fd(&fd),
        CMD_STATE,
        0,
        (&raw mut state).cast(),
    )
    .map(|()| state.flags);
    let missing = match flags {
        Ok(f) if f & FS_QUOTA_PDQ_ENFD != 0 => return Ok(()),
        Ok(f) if f & FS_QUOTA_PDQ_ACCT != 0 => {
            "counts project quotas but does not enforce them".to_owned()
        }
        Ok(_) => "has no project quotas".to_owned(),
        Err(e) => format!("has no project quotas ({e})"),
    };
    Err(Failure::new(
        Code::SandboxSetupFailed,
        format!(
            "the filesystem of {} {missing}: ClawFS must be an ext4 made with -O quota,project and mounted with -o prjquota",
            at.display()
        ),
    ))
}

/// The quotas of every tool's tree under one ClawFS root.
#[derive(Debug)]
pub struct Quotas {
    /// The ClawFS root, the filesystem quotactl_fd names.
    root: OwnedFd,
    bytes: u64,
    inodes: u64,
}

impl Quotas {
    /// Quotas of `bytes` and `inodes` for each tool under `root`, which
    /// must exist on a filesystem that enforces project quotas.
    pub fn open(root: &Path, bytes: u64, inodes: u64) -> Result<Quotas, Failure> {
        require_enforced(root)?;
        let root = open_dir(root).map_err(|e| {
            Failure::new(
                Code::SandboxSetupFailed,
                format!("cannot open the ClawFS root {}: {e}", root.display()),
            )
        })?;
        Ok(Quotas {
            root,
            bytes,
            inodes,
        })
    }

    /// Make `dir` (a tool's tree) a project of its own and, if
    /// `set_limits`, give the project this set's limits. A tree labelled
    /// before keeps its label; one that is not (made before quotas, copied
    /// in, or a labelling cut short) is labelled throughout first: its
    /// directories and regular files, the tree's own directory last, so
    /// that a walk cut short is walked again at the next run. (Symlinks
    /// cannot be opened to be labelled: those made before quotas stay
    /// uncounted.) Returns the project id and whether the tree was
    /// labelled now.
    pub fn assign(
        &self,
        dir: &Path,
        limits: (u64, u64),
        set_limits: bool,
    ) -> Result<(u32, bool), Failure> {
        let failed = |what: &str, e: std::io::Error| {
            Failure::new(
                Code::SandboxSetupFailed,
                format!("storage quota of {}: {what}: {e}", dir.display()),
            )
        };
        let fd = open_dir(dir).map_err(|e| failed("open", e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| failed("stat", e.into()))?;
        let project = u32::try_from(st.st_ino).map_err(|_| {
            failed(
                "project id",
                std::io::Error::other("the inode number does not fit 32 bits"),
            )
        })?;
        let x = get_xattr(std::os::fd::AsFd::as_fd(&fd)).map_err(|e| failed("read", e))?;
        let labelled_now = x.projid != project || x.xflags & FS_XFLAG_PROJINHERIT == 0;
        if labelled_now {
            label_tree(dir, project)
                .map_err(|(path, e)| failed(&format!("label {}", path.display()), e))?;
        }
        if set_limits || labelled_now {
            let mut q = dqblk(
                limits.0.div_ceil(QIF_DQBLKSIZE),
                limits.1,
                libc::QIF_BLIMITS | QIF_ILIMITS,
            );
            quotactl(
                std::os::fd::AsFd::as_fd(&self.root),
                CMD_SET,
                project,
                (&raw mut q).cast(),
            )
            .map_err(|e| failed("set the limits", e))?;
        }
        Ok((project, labelled_now))
    }

    /// The partition's state, with `tools_bytes` the tools' trees hold.
    pub fn status(&self, tools_bytes: u64) -> Result<ClawfsStatus, Failure> {
        let st = rustix::fs::fstatvfs(&self.root)
            .map_err(|e| Failure::new(Code::Eio, format!("statfs of the ClawFS root: {e}")))?;
        Ok(ClawfsStatus {
            quota_bytes: self.bytes,
            quota_inodes: self.inodes,
            tools_bytes,
            free_bytes: st.f_bavail.saturating_mul(st.f_frsize),
            reserved_bytes: st
                .f_bfree
                .saturating_sub(st.f_bavail)
                .saturating_mul(st.f_frsize),
            free_inodes: st.f_ffree,
        })
    }

    /// What the tree at `dir` holds, or None when it does not exist (the
    /// tool has not run) or is not labelled yet.
    pub fn usage(&self, dir: &Path) -> Result<Option<StorageUse>, Failure> {
        let failed = |what: &str, e: std::io::Error| {
            Failure::new(
                Code::from_io(&e),
                format!("storage use of {}: {what}: {e}", dir.display()),
            )
        };
        let fd = match open_dir(dir) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(failed("open", e)),
        };
        let x = get_xattr(std::os::fd::AsFd::as_fd(&fd)).map_err(|e| failed("read", e))?;
        if x.projid == 0 {
            return Ok(None);
        }
        let mut q = dqblk(0, 0, 0);
        quotactl(
            std::os::fd::AsFd::as_fd(&self.root),
            CMD_GET,
            x.projid,
            (&raw mut q).cast(),
        )
        .map_err(|e| failed("read the quota", e))?;
        Ok(Some(StorageUse {
            bytes: q.dqb_curspace,
            inodes: q.dqb_curinodes,
            quota_bytes: q.dqb_bhardlimit.saturating_mul(QIF_DQBLKSIZE),
            quota_inodes: q.dqb_ihardlimit,
        }))
    }
}

/// Label the tree at `top` with `project`: every directory (with
/// PROJINHERIT) and regular file beneath it that can be opened without
/// following a symlink, then `top` itself, last. Walked by path, one
/// descriptor open at a time (no run of the tool is live meanwhile: runs
/// wait for the registry's data lock, which the caller holds). Stops at
/// the first entry it cannot label, naming it: the tree then stays
/// unlabelled, and the tool's runs fail, rather than leave part of it
/// outside the quota.
fn label_tree(top: &Path, project: u32) -> Result<(), (PathBuf, std::io::Error)> {
    use rustix::fs::{Mode, OFlags};
    let set = |path: &Path, dir: bool| -> std::io::Result<()> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let flags = if dir {
            flags | OFlags::DIRECTORY
        } else {
            flags
        };
        let fd = rustix::fs::open(path, flags, Mode::empty())?;
        let fd = std::os::fd::AsFd::as_fd(&fd);
        let mut x = get_xattr(fd)?;
        x.projid = project;
        if dir {
            x.xflags |= FS_XFLAG_PROJINHERIT;
        }
        set_xattr(fd, &x)
    };
    let mut dirs = vec![top.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| (dir.clone(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| (dir.clone(), e))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| (path.clone(), e))?;
            if kind.is_dir() {
                set(&path, true).map_err(|e| (path.clone(), e))?;
                dirs.push(path);
            } else if kind.is_file() {
                set(&path, false).map_err(|e| (path.clone(), e))?;
            }
        }
    }
    set(top, true).map_err(|e| (top.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_the_kernels() {
        // linux/fs.h: struct fsxattr is 28 bytes (the ioctl numbers encode it).
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
        assert_eq!((FS_IOC_FSGETXATTR >> 16) & 0x3fff, 28);
        assert_eq!((FS_IOC_FSSETXATTR >> 16) & 0x3fff, 28);
        // linux/dqblk_xfs.h: fs_quota_stat is 80 bytes, qs_flags at 2.
        assert_eq!(std::mem::size_of::<FsQuotaStat>(), 80);
        assert_eq!(std::mem::offset_of!(FsQuotaStat, flags), 2);
        assert_eq!(std::mem::offset_of!(FsQuotaStat, uquota), 8);
        assert_eq!(std::mem::size_of::<libc::dqblk>(), 72);
        assert_eq!(CMD_STATE, 0x0058_0502);
        assert_eq!(CMD_GET, 0x8000_0702);
        assert_eq!(CMD_SET, 0x8000_0802);
    }

    #[test]
    fn a_filesystem_without_project_quotas_is_named_and_refused() {
        // The development host's filesystems have no quota feature (the
        // appliance's is proven in the guest: e2e storage).
        let dir = tempfile::tempdir().unwrap();
        let f = require_enforced(&dir.path().join("not/yet")).unwrap_err();
        assert_eq!(f.code, Code::SandboxSetupFailed);
        assert!(
            f.message.contains(&dir.path().display().to_string()) && f.message.contains("prjquota"),
            "{}",
            f.message
        );
    }
}
