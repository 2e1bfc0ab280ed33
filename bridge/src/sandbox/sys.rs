//! The raw system calls of the sandbox that neither std nor rustix wraps:
//! `fork`, `clone3`, `seccomp(SET_MODE_FILTER)`. Every unsafe block of the
//! sandbox is here.
#![allow(unsafe_code)]

use crate::error::{Code, Failure};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

fn setup(what: impl std::fmt::Display, e: std::io::Error) -> Failure {
    Failure::new(Code::SandboxSetupFailed, format!("{what}: {e}"))
}

/// Set no_new_privs: nothing this process executes can gain privileges.
pub fn set_no_new_privs() -> Result<(), Failure> {
    rustix::thread::set_no_new_privs(true)
        .map_err(|e| setup("prctl(PR_SET_NO_NEW_PRIVS)", e.into()))
}

/// Load the BPF program `bytes` (`struct sock_filter[]`) on every thread of
/// this process.
pub fn seccomp_install(bytes: &[u8]) -> Result<(), Failure> {
    const INSN: usize = std::mem::size_of::<libc::sock_filter>();
    if bytes.is_empty()
        || !bytes.len().is_multiple_of(INSN)
        || bytes.len() / INSN > u16::MAX as usize
    {
        return Err(Failure::new(
            Code::SandboxSetupFailed,
            format!(
                "seccomp: a program of {} bytes is not whole instructions",
                bytes.len()
            ),
        ));
    }
    // Copy into properly aligned instructions.
    let insns: Vec<libc::sock_filter> = bytes
        .as_chunks::<INSN>()
        .0
        .iter()
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let prog = libc::sock_fprog {
        len: insns.len() as u16,
        filter: insns.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `insns`, which outlives the call; the kernel
    // copies the program and does not keep the pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &prog as *const libc::sock_fprog,
        )
    };
    match r {
        0 => Ok(()),
        r if r > 0 => Err(Failure::new(
            Code::SandboxSetupFailed,
            format!("seccomp: thread {r} could not be synchronised to the filter"),
        )),
        _ => Err(setup(
            "seccomp(SECCOMP_SET_MODE_FILTER, TSYNC)",
            std::io::Error::last_os_error(),
        )),
    }
}

/// Fork this process. Only sound while it has a single thread: the child
/// gets a copy of one thread and of every lock as it was.
pub fn fork_single_threaded() -> Result<Option<rustix::process::Pid>, Failure> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0);
    if threads != 1 {
        return Err(Failure::new(
            Code::SandboxSetupFailed,
            format!("cannot fork the launcher: the process has {threads} threads, not 1"),
        ));
    }
    // SAFETY: the process has exactly one thread (checked above), so the
    // child's copy of memory is consistent: no lock is held by a thread
    // that does not exist in the child.
    match unsafe { libc::fork() } {
        -1 => Err(setup("fork", std::io::Error::last_os_error())),
        0 => Ok(None),
        pid => Ok(rustix::process::Pid::from_raw(pid)),
    }
}

/// What `clone3` made in the parent.
#[derive(Debug)]
pub struct Cloned {
    /// The child's pid in the caller's pid namespace.
    pub pid: i32,
    /// A pidfd for the child.
    pub pidfd: OwnedFd,
}

/// `clone3` with `flags` (namespaces, `CLONE_PARENT`), a pidfd, and the
/// child placed in the cgroup `cgroup` if given. Returns `None` in the child.
///
/// Only sound in a single-threaded caller, as for fork.
pub fn clone3(flags: u64, cgroup: Option<BorrowedFd<'_>>) -> Result<Option<Cloned>, Failure> {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: flags | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup {
        // CLONE_INTO_CGROUP (linux/sched.h); libc's constant is an
        // overflowing c_int.
        args.flags |= 0x2_0000_0000;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    if flags & libc::CLONE_PARENT as u64 == 0 {
        args.exit_signal = libc::SIGCHLD as u64;
    }
    // SAFETY: `args` is a valid clone_args of the size passed; with no stack
    // given, the child runs on a copy of the caller's stack, as after fork,
    // and the caller is single-threaded (its contract).
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match r {
        -1 => Err(setup("clone3", std::io::Error::last_os_error())),
        0 => Ok(None),
        pid => Ok(Some(Cloned {
            pid: pid as i32,
            // SAFETY: on success the kernel stored a new pidfd that nothing
            // else owns.
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        })),
    }
}

/// Close every descriptor but 0, 1, 2 and `keep`, which becomes 3: a
/// forked launcher holds nothing of the daemon's.
pub fn keep_only_stdio_and(keep: OwnedFd) -> Result<OwnedFd, Failure> {
    const KEPT: i32 = 3;
    let raw = keep.as_raw_fd();
    if raw < KEPT {
        // A socketpair made after stdio is never 0-2.
        return Err(Failure::new(
            Code::SandboxSetupFailed,
            format!("control socket is descriptor {raw}, not above stdio"),
        ));
    }
    if raw != KEPT {
        // SAFETY: dup3 onto 3 closes whatever 3 was; every descriptor above
        // 2 but `keep` is closed next anyway, and nothing in this process
        // uses them (it was just forked).
        if unsafe { libc::dup3(raw, KEPT, libc::O_CLOEXEC) } != KEPT {
            return Err(setup("dup3", std::io::Error::last_os_error()));
        }
    }
    std::mem::forget(keep);
    // SAFETY: closes descriptors 4 and up; the owners of those that were
    // open (the daemon's values copied by fork) are never used in this
    // process, which never returns to the daemon's code.
    if unsafe { libc::syscall(libc::SYS_close_range, KEPT + 1, u32::MAX, 0) } != 0 {
        return Err(setup("close_range", std::io::Error::last_os_error()));
    }
    if raw != KEPT && raw < KEPT {
        // `keep` was 0-2: never the case for a socketpair made after stdio.
        return Err(Failure::new(
            Code::SandboxSetupFailed,
            "control socket below 3",
        ));
    }
    // SAFETY: 3 is the duplicate made above (or `keep` itself), owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(KEPT) })
}

/// Close `fd` in a child that never returns to the code owning it.
pub fn close_in_child(fd: BorrowedFd<'_>) {
    // SAFETY: the caller is a clone that never returns to the owner of
    // `fd`, so nothing uses or closes it again in this process.
    unsafe { libc::close(fd.as_raw_fd()) };
}

/// Keep only the capabilities in `keep`: the bounding set loses every
/// other, the ambient and inheritable sets are emptied, and the effective
/// and permitted sets become `keep`.
pub fn keep_capabilities(keep: rustix::thread::CapabilitySet) -> Result<(), Failure> {
    use rustix::thread::{CapabilitySet, CapabilitySets};
    let os = |what: &str, e: rustix::io::Errno| setup(what, e.into());
    for cap in CapabilitySet::all().iter().filter(|c| !keep.contains(*c)) {
        match rustix::thread::remove_capability_from_bounding_set(cap) {
            // Past the running kernel's last capability.
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            Err(e) => return Err(os("drop a capability from the bounding set", e)),
        }
    }
    rustix::thread::clear_ambient_capability_set()
        .map_err(|e| os("clear ambient capabilities", e))?;
    let sets = CapabilitySets {
        effective: keep,
        permitted: keep,
        inheritable: CapabilitySet::empty(),
    };
    rustix::thread::set_capabilities(None, sets).map_err(|e| os("capset", e))
}

/// End this process now, without unwinding or running exit handlers (a
/// forked child must not run its parent's).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Make the raw syscall `nr` with `args`: the seccomp probes, which must
/// reach the kernel with exactly these numbers.
pub fn raw_syscall(nr: i32, args: [u64; 6]) -> Result<i64, i32> {
    // SAFETY: the probes run only denied calls in a child that is about to
    // exit; a call the filter lets through gets arguments that are zero or
    // the constants of its deny entry, and its effects end with the child.
    let r = unsafe {
        libc::syscall(
            nr as libc::c_long,
            args[0],
            args[1],
            args[2],
            args[3],
            args[4],
            args[5],
        )
    };
    if r == -1 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r)
    }
}
