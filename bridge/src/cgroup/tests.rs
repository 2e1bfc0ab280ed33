//! The delegation's logic against fixture directories that stand in for
//! cgroupfs and /proc (the kernel proof is in the QEMU suite).

use super::*;
use std::fs;

struct Fixture {
    _tmp: tempfile::TempDir,
    d: Delegation,
    proc: PathBuf,
}

/// What the kernel gives a new cgroup directory.
fn seed(dir: &Path) {
    fs::write(dir.join("memory.max"), "max\n").unwrap();
    fs::write(dir.join("cpu.max"), "max 100000\n").unwrap();
    fs::write(dir.join("pids.max"), "max\n").unwrap();
    fs::write(dir.join("cgroup.procs"), "").unwrap();
}

fn fixture(max_groups: u32) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let mount = tmp.path().join("cgroup");
    let dir = mount.join("clawos/instance-7");
    fs::create_dir_all(dir.join(MAIN_LEAF)).unwrap();
    seed(&dir);
    let proc = tmp.path().join("proc");
    let policy = CgroupPolicy {
        max_groups,
        max_depth: 3,
        ..CgroupPolicy::default()
    };
    let d = Delegation::at(mount, dir.clone(), proc.clone(), &policy);
    // The instance's own limits, as `Delegation::create` sets them (P1.5).
    d.set_limits(&policy.instance).unwrap();
    assert_eq!(
        fs::read_to_string(dir.join("memory.max")).unwrap(),
        "268435456"
    );
    assert_eq!(
        fs::read_to_string(dir.join("cpu.max")).unwrap(),
        "50000 1000000"
    );
    assert_eq!(fs::read_to_string(dir.join("pids.max")).unwrap(), "32");
    Fixture { _tmp: tmp, d, proc }
}

impl Fixture {
    fn create(&mut self, name: &str) -> Group {
        let g = self.d.create_group(name).unwrap();
        seed(&self.d.dir().join(name));
        g
    }
    /// Delete `name` as the kernel would: its interface files go with it.
    fn delete(&mut self, name: &str) {
        let dir = self.d.dir().join(name);
        for f in ["memory.max", "cpu.max", "pids.max", "cgroup.procs"] {
            let _ = fs::remove_file(dir.join(f));
        }
        self.d.delete_group(name).unwrap();
    }
    fn process(&self, pid: u32, cgroup: &str) {
        fs::create_dir_all(self.proc.join(pid.to_string())).unwrap();
        fs::write(
            self.proc.join(pid.to_string()).join("cgroup"),
            format!("0::{cgroup}\n"),
        )
        .unwrap();
    }
}

#[test]
fn names_are_confined_to_the_delegation() {
    let mut f = fixture(16);
    for bad in [
        "",
        "..",
        "../x",
        "a/../../x",
        "/abs",
        "a//b",
        "A",
        "memory.max",
        "a/b/c/d",
    ] {
        assert_eq!(
            f.d.create_group(bad).unwrap_err().code,
            Code::InvalidArgument,
            "{bad:?}"
        );
        assert_eq!(
            f.d.open_group(bad).unwrap_err().code,
            Code::InvalidArgument,
            "{bad:?}"
        );
    }
    assert_eq!(
        f.d.create_group("main").unwrap_err().code,
        Code::PolicyDenied
    );
    assert_eq!(
        f.d.delete_group("main").unwrap_err().code,
        Code::PolicyDenied
    );
    assert_eq!(f.d.open_group("missing").unwrap_err().code, Code::Enoent);
    let g = f.create("a");
    f.create("a/b");
    assert_eq!(f.d.open_group("a").unwrap(), g);
    assert_eq!(
        f.d.create_group("a").unwrap_err().code,
        Code::InvalidArgument
    );
    // Not empty: a child (or, in the kernel, processes) left.
    assert_eq!(
        f.d.delete_group("a").unwrap_err().code,
        Code::InvalidArgument
    );
    f.delete("a/b");
    assert!(!f.d.dir().join("a/b").exists());
}

#[test]
fn group_quota_is_enforced() {
    let mut f = fixture(2);
    f.create("a");
    f.create("b");
    assert_eq!(f.d.create_group("c").unwrap_err().code, Code::QuotaExceeded);
    f.delete("b");
    f.create("c");
}

#[test]
fn a_child_never_exceeds_its_parent() {
    let mut f = fixture(16);
    let a = f.create("a");
    let b = f.create("a/b");
    // memory: the instance has 256 MiB.
    assert_eq!(
        f.d.set_memory_max(&a, Some(512 << 20)).unwrap_err().code,
        Code::PolicyDenied
    );
    assert_eq!(
        f.d.set_memory_max(&a, None).unwrap_err().code,
        Code::PolicyDenied
    );
    f.d.set_memory_max(&a, Some(64 << 20)).unwrap();
    assert_eq!(f.d.memory_max(&a).unwrap(), Some(64 << 20));
    assert_eq!(
        f.d.set_memory_max(&b, Some(65 << 20)).unwrap_err().code,
        Code::PolicyDenied
    );
    f.d.set_memory_max(&b, Some((32 << 20) + 100)).unwrap();
    assert_eq!(
        f.d.memory_max(&b).unwrap(),
        Some(32 << 20),
        "rounded to a page"
    );
    // cpu: the instance has 5% of a CPU.
    assert_eq!(
        f.d.set_cpu_max(&a, Some(10_000), 100_000).unwrap_err().code,
        Code::PolicyDenied
    );
    assert_eq!(
        f.d.set_cpu_max(&a, None, 100_000).unwrap_err().code,
        Code::PolicyDenied
    );
    assert_eq!(
        f.d.set_cpu_max(&a, Some(10), 100_000).unwrap_err().code,
        Code::InvalidArgument
    );
    f.d.set_cpu_max(&a, Some(2_000), 100_000).unwrap();
    assert_eq!(f.d.cpu_max(&a).unwrap(), (Some(2_000), 100_000));
    assert_eq!(
        fs::read_to_string(f.d.dir().join("a/cpu.max")).unwrap(),
        "2000 100000"
    );
    assert_eq!(
        f.d.set_cpu_max(&b, Some(3_000), 100_000).unwrap_err().code,
        Code::PolicyDenied
    );
    // pids: the instance has 32.
    assert_eq!(
        f.d.set_pids_max(&a, Some(33)).unwrap_err().code,
        Code::PolicyDenied
    );
    f.d.set_pids_max(&a, Some(8)).unwrap();
    assert_eq!(f.d.pids_max(&a).unwrap(), Some(8));
    assert_eq!(
        f.d.set_pids_max(&b, None).unwrap_err().code,
        Code::PolicyDenied
    );
    assert_eq!(f.d.pids_max(&b).unwrap(), None);
}

#[test]
fn only_the_instances_own_tasks_move() {
    let mut f = fixture(16);
    let a = f.create("a");
    f.process(100, "/clawos/instance-7/main");
    f.process(200, "/clawos/instance-8/main");
    f.process(300, "/system.slice/sshd.service");
    f.d.add_process(&a, 100).unwrap();
    assert_eq!(
        fs::read_to_string(f.d.dir().join("a/cgroup.procs")).unwrap(),
        "100"
    );
    assert_eq!(
        f.d.add_process(&a, 200).unwrap_err().code,
        Code::PolicyDenied
    );
    assert_eq!(
        f.d.add_process(&a, 300).unwrap_err().code,
        Code::PolicyDenied
    );
    assert_eq!(f.d.add_process(&a, 999).unwrap_err().code, Code::Enoent);
    // remove-process: only from the group it is in, back to main.
    assert_eq!(
        f.d.remove_process(&a, 100).unwrap_err().code,
        Code::InvalidArgument
    );
    f.process(100, "/clawos/instance-7/a");
    f.d.remove_process(&a, 100).unwrap();
    assert_eq!(
        fs::read_to_string(f.d.dir().join("main/cgroup.procs")).unwrap(),
        "100"
    );
}

#[test]
fn writes_are_read_back() {
    let f = fixture(16);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("memory.max");
    write_file(&file, "4096").unwrap();
    assert_eq!(fs::read_to_string(&file).unwrap(), "4096");
    // A file that does not keep what was written (as a kernel that rounds or
    // ignores a value): the read-back catches it.
    let sink = tmp.path().join("cpu.max");
    std::os::unix::fs::symlink("/dev/null", &sink).unwrap();
    let err = write_file(&sink, "50000 1000000").unwrap_err();
    assert_eq!(err.code, Code::Eio);
    assert!(err.message.contains("reads back"), "{}", err.message);
    let missing = tmp.path().join("none/pids.max");
    assert_eq!(write_file(&missing, "1").unwrap_err().code, Code::Enoent);
    drop(f);
}

#[test]
fn a_mount_that_is_not_cgroup2_is_unavailable() {
    let err = check_mount(0x0102_1994, Path::new("/sys/fs/cgroup")).unwrap_err(); // tmpfs
    assert_eq!(err.code, Code::InterfaceUnavailable);
    assert!(err.message.contains("needs cgroup v2"), "{}", err.message);
    check_mount(CGROUP2_SUPER_MAGIC, Path::new("/sys/fs/cgroup")).unwrap();
}
