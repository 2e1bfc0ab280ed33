//! Test-only programs that run inside the booted appliance: the layer
//! matrix (`clawos-layer-matrix`, driven by tests/e2e/tests/layers.rs) and
//! the guest benchmark (`clawos-guest-bench`, `make bench`). They switch
//! sandbox layers off one by one, which nothing shipped can do, so they
//! reach the guest only on an extra initramfs the tests attach; the image
//! never contains them.

pub mod load;
pub mod matrix;

/// The symbolic name of `errno` (the ones the attacks meet), else its number.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::ENOSYS => "ENOSYS",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::ENODEV => "ENODEV",
        libc::ENOTBLK => "ENOTBLK",
        libc::EBUSY => "EBUSY",
        other => return format!("errno {other}"),
    };
    name.to_owned()
}

/// The name of signal `sig`.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSYS => "SIGSYS",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGTERM => "SIGTERM",
        other => return format!("signal {other}"),
    };
    name.to_owned()
}
