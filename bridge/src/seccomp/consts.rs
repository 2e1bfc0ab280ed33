//! Names the policy files may use for errnos and argument values.

/// The errno called `name`.
pub fn errno(name: &str) -> Option<i32> {
    Some(match name {
        "EPERM" => libc::EPERM,
        "EACCES" => libc::EACCES,
        "ENOSYS" => libc::ENOSYS,
        "EAFNOSUPPORT" => libc::EAFNOSUPPORT,
        "EINVAL" => libc::EINVAL,
        _ => return None,
    })
}

/// A constant argument value by name.
fn constant(name: &str) -> Option<u64> {
    Some(match name {
        "AF_UNIX" => libc::AF_UNIX as u64,
        "AF_INET" => libc::AF_INET as u64,
        "AF_INET6" => libc::AF_INET6 as u64,
        "AF_NETLINK" => libc::AF_NETLINK as u64,
        "AF_PACKET" => libc::AF_PACKET as u64,
        "SOCK_STREAM" => libc::SOCK_STREAM as u64,
        "SOCK_DGRAM" => libc::SOCK_DGRAM as u64,
        "SOCK_RAW" => libc::SOCK_RAW as u64,
        "SOCK_SEQPACKET" => libc::SOCK_SEQPACKET as u64,
        "SOCK_NONBLOCK" => libc::SOCK_NONBLOCK as u64,
        "SOCK_CLOEXEC" => libc::SOCK_CLOEXEC as u64,
        "CLONE_VM" => libc::CLONE_VM as u64,
        "CLONE_FS" => libc::CLONE_FS as u64,
        "CLONE_FILES" => libc::CLONE_FILES as u64,
        "CLONE_SIGHAND" => libc::CLONE_SIGHAND as u64,
        "CLONE_THREAD" => libc::CLONE_THREAD as u64,
        "CLONE_NEWUSER" => libc::CLONE_NEWUSER as u64,
        "CLONE_NEWNS" => libc::CLONE_NEWNS as u64,
        "CLONE_NEWPID" => libc::CLONE_NEWPID as u64,
        "CLONE_NEWNET" => libc::CLONE_NEWNET as u64,
        "FIONBIO" => libc::FIONBIO,
        "FIOCLEX" => libc::FIOCLEX,
        "FIONCLEX" => libc::FIONCLEX,
        "FIONREAD" => libc::FIONREAD,
        "TCGETS" => libc::TCGETS,
        "TIOCSTI" => libc::TIOCSTI,
        "PR_SET_NAME" => libc::PR_SET_NAME as u64,
        "PR_GET_NAME" => libc::PR_GET_NAME as u64,
        "PR_SET_VMA" => 0x53564d41,
        "PR_GET_AUXV" => 0x41555856,
        "PR_SET_DUMPABLE" => libc::PR_SET_DUMPABLE as u64,
        "PR_SET_SECCOMP" => libc::PR_SET_SECCOMP as u64,
        "PR_CAP_AMBIENT" => libc::PR_CAP_AMBIENT as u64,
        "MFD_CLOEXEC" => libc::MFD_CLOEXEC as u64,
        "MFD_ALLOW_SEALING" => libc::MFD_ALLOW_SEALING as u64,
        // quotactl_fd commands on project quotas (clawfs::quota), as that
        // module passes them: zero-extended.
        "QCMD_XGETQSTAT_PRJQUOTA" => crate::clawfs::quota::CMD_STATE.into(),
        "QCMD_GETQUOTA_PRJQUOTA" => crate::clawfs::quota::CMD_GET.into(),
        "QCMD_SETQUOTA_PRJQUOTA" => crate::clawfs::quota::CMD_SET.into(),
        "FS_IOC_FSGETXATTR" => crate::clawfs::quota::FS_IOC_FSGETXATTR,
        "FS_IOC_FSSETXATTR" => crate::clawfs::quota::FS_IOC_FSSETXATTR,
        _ => return None,
    })
}

/// A number (decimal or 0x hex) or constants joined with `|`.
pub fn value(s: &str) -> Result<u64, String> {
    s.split('|')
        .map(str::trim)
        .map(|part| {
            if let Some(hex) = part.strip_prefix("0x") {
                u64::from_str_radix(hex, 16).map_err(|e| format!("{part:?}: {e}"))
            } else if part.starts_with(|c: char| c.is_ascii_digit()) {
                part.parse().map_err(|e| format!("{part:?}: {e}"))
            } else {
                constant(part).ok_or_else(|| format!("unknown constant {part:?}"))
            }
        })
        .try_fold(0, |acc, v| v.map(|v| acc | v))
}
