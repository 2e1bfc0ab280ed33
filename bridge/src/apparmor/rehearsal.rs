//! The worker's AppArmor steps, rehearsed in a thread of the calling
//! process (part of `--check-confinement`): the same profile change and the
//! same mounts, in the same order, that a real instance worker makes (the
//! list is at the top of `image/apparmor.d/clawos-worker`), each with the
//! kernel's answer, plus what the worker profile must refuse.
//!
//! A thread can do this without touching the process: AppArmor labels are
//! per thread, and `unshare(CLONE_NEWNS | CLONE_FS)` gives the thread its
//! own mount namespace and root, which vanish with it. What a thread cannot
//! have is a new user or pid namespace (those need a single-threaded caller
//! or a new process); AppArmor's mount, file and capability rules do not
//! depend on them, so the rehearsal runs as real root in the host's user
//! namespace. Nothing is mounted unless the thread is confined by
//! `clawos-worker` in enforce mode first.

use super::check::{Expect, Outcome, errno_of, list_dir, make_socket, open_read, socket_probes};
use super::{DAEMON_PROFILE, WORKER_PROFILE, current_label, try_change_profile};
use rustix::io::Errno;
use rustix::mount::{MountFlags, MountPropagationFlags};

use std::path::{Path, PathBuf};

use crate::config::DeviceRule;
use crate::sandbox::worker::device_nodes;

/// Run both rehearsals, each in a thread of its own: first that
/// `change_profile` is refused once no_new_privs is set (so a worker must
/// change profile before it sets it), then a worker's whole setup.
pub fn run(clawfs_root: &Path, devices: &[DeviceRule]) -> Vec<Outcome> {
    let mut outcomes = in_thread(after_no_new_privs);
    let root = clawfs_root.to_owned();
    let devices = devices.to_vec();
    outcomes.extend(in_thread(move || worker(&root, &devices)));
    outcomes
}

fn in_thread(f: impl FnOnce() -> Vec<Outcome> + Send + 'static) -> Vec<Outcome> {
    std::thread::Builder::new()
        .name("clawos-aa-check".into())
        .spawn(f)
        .and_then(|t| {
            t.join()
                .map_err(|_| std::io::Error::other("the rehearsal thread panicked"))
        })
        .unwrap_or_else(|e| {
            vec![Outcome {
                line: format!("worker: rehearsal: {e}"),
                passed: false,
            }]
        })
}

fn after_no_new_privs() -> Vec<Outcome> {
    let what = format!("worker: change_profile {WORKER_PROFILE} after no_new_privs");
    if let Err(e) = rustix::thread::set_no_new_privs(true) {
        return vec![Outcome::of(&what, Expect::Ok, Err(e))];
    }
    let got = try_change_profile(WORKER_PROFILE).map_err(|e| errno(e.errno));
    vec![Outcome::of(&what, Expect::Errno(Errno::PERM), got)]
}

fn errno(raw: Option<i32>) -> Errno {
    raw.map_or(Errno::IO, Errno::from_raw_os_error)
}

/// Collects outcomes; `step` stops the rehearsal at the first setup step
/// that fails (the rest would only fail after it).
struct Steps(Vec<Outcome>);

impl Steps {
    fn step(&mut self, what: &str, got: Result<(), Errno>) -> Result<(), ()> {
        let o = Outcome::of(&format!("worker: {what}"), Expect::Ok, got);
        let passed = o.passed;
        self.0.push(o);
        if passed { Ok(()) } else { Err(()) }
    }

    fn step_io(&mut self, what: &str, got: std::io::Result<()>) -> Result<(), ()> {
        self.step(what, got.map_err(|e| errno_of(&e)))
    }

    fn expect(&mut self, what: &str, expect: Expect, got: Result<(), Errno>) {
        self.0
            .push(Outcome::of(&format!("worker: {what}"), expect, got));
    }
}

fn worker(clawfs_root: &Path, devices: &[DeviceRule]) -> Vec<Outcome> {
    let mut s = Steps(Vec::new());
    let _ = worker_steps(&mut s, clawfs_root, devices);
    s.0
}

fn worker_steps(s: &mut Steps, clawfs_root: &Path, devices: &[DeviceRule]) -> Result<(), ()> {
    let nodes = device_nodes(devices);
    let denied = Expect::Errno(Errno::ACCESS);
    // The tool directory to bind: the first (by name) under the ClawFS root.
    let tool_dir = first_tool_dir(clawfs_root);
    s.step_io(
        &format!("a tool directory under {}", clawfs_root.display()),
        tool_dir.as_ref().map(drop).map_err(clone_io),
    )?;
    let tool_dir = tool_dir.map_err(drop)?;

    // 1. Enter the profile, first thing, while the host's paths are seen.
    s.step(
        &format!("change_profile {WORKER_PROFILE}"),
        try_change_profile(WORKER_PROFILE).map_err(|e| errno(e.errno)),
    )?;
    s.0.push(Outcome::label(
        "worker: label",
        current_label().map_err(|f| f.message),
        WORKER_PROFILE,
    ));
    if !s.0.last().is_some_and(|o| o.passed) {
        // Never mount anything unless confined by the worker profile.
        return Err(());
    }
    // What the worker profile refuses.
    s.expect(
        "/etc/shadow",
        denied,
        open_read(Path::new("/etc/shadow")).map_err(|e| errno_of(&e)),
    );
    s.expect(
        &format!("change_profile {DAEMON_PROFILE}"),
        denied,
        try_change_profile(DAEMON_PROFILE).map_err(|e| errno(e.errno)),
    );
    for (what, family, kind, expect) in socket_probes() {
        s.expect(what, expect, make_socket(family, kind));
    }

    // 2. Its own mount namespace (a real worker has it from clone).
    s.step("unshare(CLONE_NEWNS)", unshare_mount_namespace())?;
    s.step(
        "mount --make-rprivate /",
        rustix::mount::mount_change(
            "/",
            MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
        ),
    )?;
    let hidden = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    // A mount the profile does not list.
    s.expect(
        "mount tmpfs on /run",
        denied,
        rustix::mount::mount("tmpfs", "/run", "tmpfs", hidden, c"mode=0755"),
    );

    // 3. The new root and its mount points.
    s.step(
        "mount tmpfs on /tmp",
        rustix::mount::mount("tmpfs", "/tmp", "tmpfs", hidden, c"mode=0755"),
    )?;
    for dir in ["/tmp/clawfs", "/tmp/dev", "/tmp/proc"] {
        s.step_io(&format!("mkdir {dir}"), std::fs::create_dir(dir))?;
    }
    for (dev, _) in &nodes {
        let target = format!("/tmp{}", dev.display());
        s.step_io(
            &format!("create {target}"),
            Path::new(&target)
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::File::create(&target).map(drop)),
        )?;
    }
    s.step(
        &format!("bind {} on /tmp/clawfs", tool_dir.display()),
        rustix::mount::mount_bind(&tool_dir, "/tmp/clawfs"),
    )?;
    for (dev, _) in &nodes {
        let target = format!("/tmp{}", dev.display());
        s.step(
            &format!("bind {} on {target}", dev.display()),
            rustix::mount::mount_bind(*dev, target.as_str()),
        )?;
    }
    s.step(
        "mount proc (subset=pid) on /tmp/proc",
        rustix::mount::mount("proc", "/tmp/proc", "proc", hidden, c"subset=pid"),
    )?;

    // 4. The new root replaces the old (pivot_root cannot leave the
    // initramfs root: EINVAL whatever the policy).
    s.step("chdir /tmp", rustix::process::chdir("/tmp"))?;
    s.step("mount --move /tmp /", rustix::mount::mount_move(".", "/"))?;
    s.step("chroot .", rustix::process::chroot("."))?;
    s.step("chdir /", rustix::process::chdir("/"))?;

    // 5. The tool's world.
    s.step_io("/clawfs (list)", list_dir(Path::new("/clawfs")))?;
    // Each device as its rules allow: opened read-write or read-only
    // (nothing written: a listed disk keeps its bytes).
    for (dev, write) in &nodes {
        let how = if *write { "open rw" } else { "open r" };
        s.step_io(
            &format!("{} ({how})", dev.display()),
            std::fs::OpenOptions::new()
                .read(true)
                .write(*write)
                .open(dev)
                .map(drop),
        )?;
    }
    s.step_io(
        "/proc/self/status (read)",
        std::fs::read_to_string("/proc/self/status").map(drop),
    )?;
    Ok(())
}

fn clone_io(e: &std::io::Error) -> std::io::Error {
    match e.raw_os_error() {
        Some(n) => std::io::Error::from_raw_os_error(n),
        None => std::io::Error::new(e.kind(), e.to_string()),
    }
}

/// The first directory (by name) directly under `root`.
fn first_tool_dir(root: &Path) -> std::io::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs.into_iter().next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no tool directory in {} (run a tool once)", root.display()),
        )
    })
}

/// This thread's own mount namespace and filesystem root.
#[allow(unsafe_code)]
fn unshare_mount_namespace() -> Result<(), Errno> {
    use rustix::thread::UnshareFlags;
    // SAFETY: the flags do not include CLONE_FILES, the one whose unsharing
    // could leave other threads with descriptors this thread no longer
    // shares; a private fs_struct and mount namespace affect only paths
    // resolved by this thread, which ends after the rehearsal.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNS | UnshareFlags::FS) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tool_directory_is_the_first_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let err = first_tool_dir(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no tool directory in {} (run a tool once)",
                dir.path().display()
            )
        );
        std::fs::write(dir.path().join("a-file"), b"").unwrap();
        std::fs::create_dir(dir.path().join("zeta")).unwrap();
        std::fs::create_dir(dir.path().join("hello")).unwrap();
        assert_eq!(
            first_tool_dir(dir.path()).unwrap(),
            dir.path().join("hello")
        );
    }

    #[test]
    fn nothing_is_mounted_unless_the_worker_profile_confines_the_thread() {
        // On a kernel without AppArmor (the development host), or with
        // the profiles not loaded, the rehearsal stops at change_profile.
        if current_label().is_ok_and(|l| l != "unconfined") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("hello")).unwrap();
        let outcomes = worker(dir.path(), &crate::config::DevicePolicy::default().allow);
        let lines: Vec<&str> = outcomes.iter().map(|o| o.line.as_str()).collect();
        assert!(
            lines
                .iter()
                .all(|l| !l.contains("mount") && !l.contains("unshare")),
            "{lines:#?}"
        );
        assert!(outcomes.iter().any(|o| !o.passed), "{lines:#?}");
    }
}
