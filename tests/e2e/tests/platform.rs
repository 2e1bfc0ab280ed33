//! The platform under the bridge, checked in the booted appliance (fast
//! path): the kernel that runs is the one built from the pinned config, and
//! the LSMs, cgroup v2 controllers, BTF and bpffs the sandbox layers need
//! are there.

use clawos_e2e::{Boot, Disk, Guest, build_dir, check_kernel_config, release_field};
use serial_test::serial;

fn boot(name: &str) -> (Guest, Disk) {
    let disk = Disk::fresh();
    (Guest::boot(name, Boot::Fast, &disk), disk)
}

#[test]
#[serial]
fn running_kernel_is_the_built_one_with_every_required_option() {
    let release = std::fs::read_to_string(build_dir().join("clawos-release")).unwrap();
    let (mut g, _disk) = boot("kernel");
    assert_eq!(g.sh_ok("cat /etc/clawos-release"), release);
    let version = release_field(&release, "CLAWOS_KERNEL");
    assert_eq!(g.sh_ok("uname -r"), format!("{version}\n"));
    // The built-in command line, whole: the arguments the harness appended
    // (as someone at the firmware's boot manager could) are ignored.
    assert_eq!(
        g.sh_ok("cat /proc/cmdline"),
        format!("{}\n", clawos_e2e::BUILT_IN_CMDLINE)
    );
    // Without a NIC (this boot has none) the network says so at once, and
    // the daemon starts anyway.
    assert!(
        g.console().contains(
            "clawos: network: no Ethernet interface; the remote API is reachable only from this machine"
        ),
        "{}",
        g.console()
    );
    // The running kernel's own config (IKCONFIG_PROC) passes the same check
    // as the build's .config.
    let config = g.sh_ok("zcat /proc/config.gz");
    let (code, stderr) = check_kernel_config(&config);
    assert_eq!(
        code, 0,
        "the running kernel's config fails the check:\n{stderr}"
    );
    let header = format!("# Linux/x86_64 {version} Kernel Configuration\n");
    assert!(config.contains(&header), "no {header:?} in /proc/config.gz");
    // Kernels since 6.3 log memfds made without saying whether they may be
    // executed; the daemon's say so (MFD_NOEXEC_SEAL) where the kernel knows.
    assert_eq!(
        g.sh("dmesg | grep -F 'memfd_create() called without'"),
        clawos_e2e::Output {
            code: 1,
            text: String::new()
        }
    );
    g.poweroff();
}

#[test]
#[serial]
fn apparmor_and_bpf_are_active_lsms() {
    let (mut g, _disk) = boot("lsm");
    assert_eq!(
        g.sh_ok("cat /sys/kernel/security/lsm; echo"),
        "capability,apparmor,bpf\n"
    );
    assert_eq!(
        g.sh_ok("cat /sys/module/apparmor/parameters/enabled"),
        "Y\n"
    );
    assert_eq!(
        g.sh("test -f /sys/kernel/security/apparmor/profiles").code,
        0
    );
    assert_eq!(
        g.sh_ok("command -v apparmor_parser"),
        "/sbin/apparmor_parser\n"
    );
    assert_eq!(g.sh("apparmor_parser --version >/dev/null").code, 0);
    g.poweroff();
}

#[test]
#[serial]
fn cgroup2_has_memory_cpu_and_pids_controllers() {
    let (mut g, _disk) = boot("cgroup");
    assert_eq!(
        g.sh_ok("grep ' /sys/fs/cgroup ' /proc/mounts | cut -d' ' -f1-3"),
        "cgroup2 /sys/fs/cgroup cgroup2\n"
    );
    assert_eq!(
        g.sh_ok("cat /sys/fs/cgroup/cgroup.controllers"),
        "cpu memory pids\n"
    );
    assert_eq!(
        g.sh_ok("cat /sys/fs/cgroup/cgroup.subtree_control"),
        "cpu memory pids\n"
    );
    // A child cgroup has every knob the sandbox writes (memory.swap.max
    // exists only with SWAP), and takes the instance limits.
    g.sh_ok("mkdir /sys/fs/cgroup/e2e");
    let knobs = "memory.max memory.swap.max memory.oom.group cpu.max pids.max";
    assert_eq!(
        g.sh_ok(&format!("cd /sys/fs/cgroup/e2e && cat {knobs}")),
        "max\nmax\n0\nmax 100000\nmax\n"
    );
    g.sh_ok(
        "cd /sys/fs/cgroup/e2e && echo 268435456 > memory.max && echo 0 > memory.swap.max \
         && echo 1 > memory.oom.group && echo '50000 1000000' > cpu.max && echo 32 > pids.max",
    );
    assert_eq!(
        g.sh_ok(&format!("cd /sys/fs/cgroup/e2e && cat {knobs}")),
        "268435456\n0\n1\n50000 1000000\n32\n"
    );
    g.poweroff();
}

#[test]
#[serial]
fn btf_bpffs_and_securityfs_are_there() {
    let (mut g, _disk) = boot("btf");
    assert_eq!(g.sh("test -s /sys/kernel/btf/vmlinux").code, 0);
    // BTF starts with its magic 0xeB9F (little endian: 9f eb).
    assert_eq!(
        g.sh_ok("head -c 2 /sys/kernel/btf/vmlinux | od -An -tx1 | tr -d ' '"),
        "9feb\n"
    );
    assert_eq!(
        g.sh_ok("grep -E ' /sys/(fs/bpf|kernel/security) ' /proc/mounts | cut -d' ' -f1-3"),
        "securityfs /sys/kernel/security securityfs\nbpf /sys/fs/bpf bpf\n"
    );
    assert_eq!(g.sh_ok("cat /proc/sys/net/core/bpf_jit_enable"), "1\n");
    g.poweroff();
}
