//! The e2e harness: boots the ClawOS appliance in QEMU through
//! `qemu/run.sh` (the launcher people use), talks to it over the serial
//! console with rexpect, and never sleeps: every wait is for a console
//! marker, with a deadline. A kernel panic, `BUG:`, soft lockup or an init
//! `clawos: FAILED` marker ends the wait at once; on any failure the whole
//! console log is printed before the test fails.
//!
//! Artifacts come from `make image` (build/ of the checkout, or the
//! directory in `CLAWOS_E2E_BUILD`): `clawos.img`, `bzImage`, `clawos-release`,
//! `vmlinux.btf`.

use regex::Regex;
use rexpect::ReadUntil;
use rexpect::process::signal::Signal;
use rexpect::session::PtySession;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Markers that end any wait: the guest is broken.
const TROUBLE: [&str; 5] = [
    "Kernel panic",
    "BUG: ",
    "soft lockup",
    "clawos: FAILED",
    "clawos: daemon exited",
];
/// Shell (one line): once the daemon has had up to 20 s to reap finished
/// workers, remove their cgroups (it does so after answering) and refill
/// its pool of ready workers (and renew those made before it loaded a tool
/// they lack), the number of instance cgroups left, the pool's size
/// (`clawosctl status`), and the AppArmor labels of the processes in them,
/// each once. After runs that is `8 8 clawos-launcher//&clawos-worker
/// (enforce)`: only the ready workers, one process in each cgroup.
pub const INSTANCE_CGROUPS_LEFT: &str = "P=$(clawosctl status | sed -n 's/^workers ready: *[0-9]* of \\([0-9]*\\).*/\\1/p'); \
    for i in $(seq 400); do \
    C=$(ls -d /sys/fs/cgroup/clawos/instance-* 2>/dev/null); \
    clawosctl status | grep -q \"^workers ready: *$P of $P (0 being replaced\" && \
    [ $(echo $C | wc -w) = \"$P\" ] && [ $(cat /dev/null $(for c in $C; do echo $c/main/cgroup.procs; done) | wc -l) = \"$P\" ] && break; sleep 0.05; done; \
    echo $(echo $C | wc -w) $P $(for c in $C; do for p in $(cat $c/main/cgroup.procs); do \
    cat /proc/$p/attr/current; done; done | sort -u)";

/// The file whose presence in the root gives the console a root shell:
/// the harness's direct-kernel boots carry it in an extra initramfs; the
/// image never has it.
pub const CONSOLE_SHELL: &str = "etc/clawos/console-shell";

/// Kernel arguments every direct-kernel boot passes and the appliance's
/// kernel must ignore (its built-in command line overrides).
pub const IGNORED_ARGUMENTS: &str = "rdinit=/bin/sh init=/bin/sh";

/// The appliance kernel's whole command line (`CONFIG_CMDLINE`).
pub const BUILT_IN_CMDLINE: &str = "console=tty0 console=ttyS0,115200 panic=10";

/// An initramfs for a direct-kernel boot: [`CONSOLE_SHELL`], followed by
/// `extra` when given (the kernel unpacks concatenated archives in order).
fn shell_initrd(dir: &Path, extra: Option<&Path>) -> PathBuf {
    let tree = dir.join("shell-tree");
    std::fs::create_dir_all(tree.join(CONSOLE_SHELL).parent().unwrap()).unwrap();
    std::fs::write(tree.join(CONSOLE_SHELL), "").unwrap();
    let cpio = dir.join("initrd.cpio");
    etc_cpio(&tree, &cpio);
    if let Some(extra) = extra {
        let mut out = std::fs::OpenOptions::new()
            .append(true)
            .open(&cpio)
            .unwrap();
        let mut more = std::fs::File::open(extra)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", extra.display()));
        std::io::copy(&mut more, &mut out).unwrap();
    }
    cpio
}

/// Write the `etc` tree below `tree` as a newc cpio (owner root) to `cpio`:
/// an extra initramfs whose files replace the image's.
pub fn etc_cpio(tree: &Path, cpio: &Path) {
    let status = Command::new("sh")
        .arg("-c")
        .arg("find etc | cpio --quiet -o -H newc -R 0:0 > \"$0\"")
        .arg(cpio)
        .current_dir(tree)
        .status()
        .expect("cannot run cpio");
    assert!(status.success(), "cpio: {status}");
}

/// Assert that `console` shows the network QEMU's user networking gives:
/// DHCP's address (with restrict=on QEMU offers no gateway and no DNS
/// server) and the remote API's URL.
pub fn assert_qemu_dhcp(console: &str) {
    let console = console.replace('\r', "");
    for line in [
        "clawos: network: eth0 10.0.2.15/24, dns none (dhcp, lease 86400 s)\n",
        "clawos: network: remote API: tls://10.0.2.15:7443\n",
    ] {
        assert!(console.contains(line), "no {line:?} in:\n{console}");
    }
}

/// The guest's network (QEMU user networking, restrict=on): the remote API
/// forwarded to 127.0.0.1:`api_port` here, and each `guestfwd`
/// (`10.0.2.N:PORT=HOSTPORT`) a guest destination sent to 127.0.0.1 here.
#[derive(Debug, Clone)]
pub struct Net {
    /// This machine's loopback port of the guest's remote API.
    pub api_port: u16,
    /// Guest destinations forwarded to this machine's loopback.
    pub guestfwd: Vec<String>,
}

/// The remote API's keys `make image` made (clawosctl keys init):
/// `build/keys` of the checkout, or `CLAWOS_E2E_KEYS`.
pub fn keys_dir() -> PathBuf {
    let dir = std::env::var_os("CLAWOS_E2E_KEYS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("build/keys"));
    for f in ["ca.pem", "operator.pem", "operator.key"] {
        assert!(
            dir.join(f).is_file(),
            "{} is missing: make image makes the keys",
            dir.join(f).display()
        );
    }
    dir
}

/// clawosctl (this checkout's release build) against the remote API on
/// 127.0.0.1:`port` as the client `operator`: its output and exit status.
pub fn clawosctl_remote(port: u16, args: &[&str]) -> std::process::Output {
    let keys = keys_dir();
    Command::new(release_binary("clawosctl"))
        .arg("--connect")
        .arg(format!("tls://127.0.0.1:{port}"))
        .arg("--ca")
        .arg(keys.join("ca.pem"))
        .arg("--cert")
        .arg(keys.join("operator.pem"))
        .arg("--key")
        .arg(keys.join("operator.key"))
        .args(args)
        .output()
        .expect("cannot run clawosctl")
}

/// A TCP port free on this machine's loopback now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot bind 127.0.0.1:0")
        .port()
}

/// The appliance init's readiness marker (after the daemon's own
/// `clawos-wasm-daemon ready` line).
pub const READY: &str = "clawos: ready";
/// Boot deadline under TCG (a UEFI boot takes about 10 s unloaded; CI
/// machines are shared with builds).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Deadline of one console command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where `make image` put its outputs.
pub fn build_dir() -> PathBuf {
    let dir = std::env::var_os("CLAWOS_E2E_BUILD")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("build"));
    for f in ["clawos.img", "bzImage", "clawos-release", "vmlinux.btf"] {
        assert!(
            dir.join(f).is_file(),
            "{} is missing: run `make qemu-test` (it builds the image first) or `make image`",
            dir.join(f).display()
        );
    }
    dir
}

/// The sha256 of a file, hex.
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("cannot run sha256sum");
    assert!(
        out.status.success(),
        "sha256sum {}: {out:?}",
        path.display()
    );
    String::from_utf8_lossy(&out.stdout)[..64].to_owned()
}

/// Where each kernel field the eBPF monitors read lies, as pahole (dwarves:
/// a BTF reader of its own, libbpf's) finds it in the BTF file `btf`, in the
/// daemon's words (`file.f_path=152 file.f_inode=...`, the order of
/// `clawos_ebpf_types::FIELDS`): what the daemon must resolve on that kernel.
pub fn pahole_layout(btf: &Path) -> String {
    clawos_ebpf_types::FIELDS
        .iter()
        .map(|f| {
            let members = pahole_members(btf, f.strukt);
            let (_, at, size) = members
                .iter()
                .find(|(name, _, _)| name == f.member)
                .unwrap_or_else(|| {
                    panic!(
                        "pahole finds no {}.{} in {}: {members:?}",
                        f.strukt,
                        f.member,
                        btf.display()
                    )
                });
            assert_eq!(*size, f.size, "pahole: size of {}.{}", f.strukt, f.member);
            format!("{}.{}={at}", f.strukt, f.member)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// (name, byte offset, size) of each member line pahole prints for
/// `struct strukt`: `const struct path  f_path;  /*    64    16 */`. Members
/// of anonymous structs and unions are printed inside them with their
/// offset from the start of the outer struct; bitfields (`/* 40: 0  4 */`)
/// and the closing lines of anonymous members are left out.
fn pahole_members(btf: &Path, strukt: &str) -> Vec<(String, u32, u32)> {
    let out = Command::new("pahole")
        .args(["-F", "btf", "-C", strukt])
        .arg(btf)
        .output()
        .expect("cannot run pahole (dwarves; scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "pahole -C {strukt} {}: {out:?}",
        btf.display()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let members: Vec<_> = text
        .lines()
        .filter_map(|l| {
            let (decl, comment) = l.split_once("/*")?;
            let decl = decl.trim().strip_suffix(';')?;
            let name = decl.rsplit([' ', '\t', '*']).next()?;
            let mut nums = comment.trim().trim_end_matches("*/").split_whitespace();
            let offset = nums.next()?.parse().ok()?;
            let size = nums.next()?.parse().ok()?;
            let ok = !name.is_empty() && name != "}" && nums.next().is_none();
            ok.then(|| (name.to_owned(), offset, size))
        })
        .collect();
    assert!(
        !members.is_empty(),
        "pahole printed no members of {strukt}:\n{text}"
    );
    members
}

/// A program built into the release target directory beside this test
/// binary (`<target>/release/deps/..`): the daemon, or a test-only program
/// of `tests/inguest` (`make qemu-test` builds both).
pub fn release_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary is in <target>/<profile>/deps")
        .join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run `make qemu-test` (it builds the daemon and tests/inguest)",
        bin.display()
    );
    bin
}

/// An extra initramfs for the fast-path boot: files copied into the
/// guest's root, with the shared libraries they need (as `ldd` finds them
/// here, at the same paths), in a temporary directory.
pub struct Overlay {
    dir: tempfile::TempDir,
}

impl Overlay {
    /// `files` as (host path of a file or a directory tree, its path in the
    /// guest without the leading `/`).
    pub fn new(files: &[(PathBuf, &str)]) -> Overlay {
        let dir = tempfile::Builder::new()
            .prefix("clawos-overlay-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let tree = dir.path().join("tree");
        for (src, dest) in files {
            let to = tree.join(dest);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            let status = Command::new("cp")
                .arg("-a")
                .arg(src)
                .arg(&to)
                .status()
                .expect("cannot run cp");
            assert!(status.success(), "cp {}: {status}", src.display());
        }
        // Libraries of every dynamic ELF file (ldd fails on the others).
        let script = r#"find . -type f -perm -u+x | while read -r f; do
            ldd "$f" 2>/dev/null | awk '/=> \// { print $3 } /^	\// { print $1 }'
        done | sort -u | while read -r lib; do
            mkdir -p ".$(dirname "$lib")" && cp -L "$lib" ".$lib"
        done
        find . -mindepth 1 | cpio --quiet -o -H newc -R 0:0 > "$0""#;
        let status = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(dir.path().join("overlay.cpio"))
            .current_dir(&tree)
            .status()
            .expect("cannot run sh");
        assert!(status.success(), "building the overlay: {status}");
        Overlay { dir }
    }

    /// The initramfs file.
    pub fn cpio(&self) -> PathBuf {
        self.dir.path().join("overlay.cpio")
    }
}

/// A `KEY=value` from `clawos-release` text.
pub fn release_field(release: &str, key: &str) -> String {
    release
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in clawos-release:\n{release}"))
        .to_owned()
}

/// How QEMU starts the appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// `-kernel build/bzImage` (built-in initramfs and command line), the
    /// image only as the data disk.
    Fast,
    /// OVMF boots the disk image's `\EFI\BOOT\BOOTX64.EFI`.
    Uefi,
    /// The fast path with the guest's clocks driven by its instruction
    /// count (`qemu/run.sh --icount 0`: one vCPU, 1 ns per instruction).
    /// A guest timing then counts the instructions run, whatever else the
    /// host does: for measurements, where TCG's host time varies by a
    /// third from one sample to the next.
    Counted,
}

/// A writable copy of the built image (and its UEFI variable store) in a
/// temporary directory, so tests never change build/clawos.img and a disk
/// can be booted more than once.
pub struct Disk {
    dir: tempfile::TempDir,
}

impl Disk {
    /// A fresh copy of build/clawos.img.
    pub fn fresh() -> Disk {
        let dir = tempfile::Builder::new()
            .prefix("clawos-e2e-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let status = Command::new("cp")
            .arg("--sparse=always")
            .arg(build_dir().join("clawos.img"))
            .arg(dir.path().join("disk.img"))
            .status()
            .expect("cannot run cp");
        assert!(status.success(), "copying clawos.img failed: {status}");
        Disk { dir }
    }

    /// The image written to a disk of `bytes` (larger than the image): the
    /// file grows, sparse, as a bigger disk would hold it.
    pub fn grow_to(&self, bytes: u64) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(self.image())
            .and_then(|f| f.set_len(bytes))
            .expect("cannot grow the disk image");
    }

    /// The disk image.
    pub fn image(&self) -> PathBuf {
        self.dir.path().join("disk.img")
    }

    /// The OVMF variable store that goes with it.
    pub fn vars(&self) -> PathBuf {
        self.dir.path().join("OVMF_VARS.fd")
    }
}

/// What a console command printed and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// `$?` of the command.
    pub code: i32,
    /// Everything it wrote to the console, without `\r`.
    pub text: String,
}

/// What a boot attaches besides the image: an extra initramfs, the
/// network, further disks.
#[derive(Default, Clone, Copy)]
struct Attach<'a> {
    initrd: Option<&'a Path>,
    net: Option<&'a Net>,
    disks: &'a [&'a Path],
}

/// A running appliance and its console.
pub struct Guest {
    /// The boot's extra initramfs, kept while QEMU runs.
    _scratch: tempfile::TempDir,
    session: PtySession,
    /// Markers that end a wait as a failure (normally [`TROUBLE`]).
    trouble: Vec<&'static str>,
    console: String,
    name: String,
    started: Instant,
    seq: u32,
    done: bool,
}

impl Guest {
    /// Start QEMU on `disk` and wait for the readiness marker. Prints the
    /// time from QEMU start to daemon-ready.
    pub fn boot(name: &str, how: Boot, disk: &Disk) -> Guest {
        Guest::start(name, how, disk, Attach::default(), READY, TROUBLE.to_vec())
    }

    /// Boot with the network `net` (and, on the fast path, the extra
    /// initramfs `overlay`), up to the readiness marker.
    pub fn boot_net(
        name: &str,
        how: Boot,
        disk: &Disk,
        overlay: Option<&Overlay>,
        net: &Net,
    ) -> Guest {
        let cpio = overlay.map(Overlay::cpio);
        Guest::start(
            name,
            how,
            disk,
            Attach {
                initrd: cpio.as_deref(),
                net: Some(net),
                disks: &[],
            },
            READY,
            TROUBLE.to_vec(),
        )
    }

    /// Fast-path boot with the extra initramfs `overlay` (test-only
    /// programs the image never ships), up to the readiness marker.
    pub fn boot_with(name: &str, disk: &Disk, overlay: &Overlay) -> Guest {
        Guest::start(
            name,
            Boot::Fast,
            disk,
            Attach {
                initrd: Some(&overlay.cpio()),
                net: None,
                disks: &[],
            },
            READY,
            TROUBLE.to_vec(),
        )
    }

    /// Fast-path boot with `extra` as further virtio disks (`/dev/vdb`,
    /// ...), up to the readiness marker.
    pub fn boot_with_disks(name: &str, disk: &Disk, extra: &[&Path]) -> Guest {
        Guest::start(
            name,
            Boot::Fast,
            disk,
            Attach {
                initrd: None,
                net: None,
                disks: extra,
            },
            READY,
            TROUBLE.to_vec(),
        )
    }

    /// Fast-path boot with `initrd` unpacked over the built-in rootfs (files
    /// there replace the image's), up to `marker` instead of the readiness
    /// marker. For boots that must fail: `clawos: FAILED` and `clawos: daemon
    /// exited` are not trouble here; a panic or BUG still is.
    pub fn boot_overlay(name: &str, disk: &Disk, initrd: &Path, marker: &str) -> Guest {
        let trouble = TROUBLE
            .iter()
            .copied()
            .filter(|t| !t.starts_with("clawos: "))
            .collect();
        Guest::start(
            name,
            Boot::Fast,
            disk,
            Attach {
                initrd: Some(initrd),
                net: None,
                disks: &[],
            },
            marker,
            trouble,
        )
    }

    /// [`Boot::Counted`] with the extra initramfs `overlay`, up to the
    /// readiness marker. `clawos: daemon exited` is not trouble here (a
    /// measurement may kill the daemon, and init restarts it).
    pub fn boot_counted(name: &str, disk: &Disk, overlay: &Overlay) -> Guest {
        let trouble = TROUBLE
            .iter()
            .copied()
            .filter(|t| !t.starts_with("clawos: daemon exited"))
            .collect();
        Guest::start(
            name,
            Boot::Counted,
            disk,
            Attach {
                initrd: Some(&overlay.cpio()),
                net: None,
                disks: &[],
            },
            READY,
            trouble,
        )
    }

    fn start(
        name: &str,
        how: Boot,
        disk: &Disk,
        attach: Attach<'_>,
        marker: &str,
        trouble: Vec<&'static str>,
    ) -> Guest {
        let Attach {
            initrd,
            net,
            disks: extra_disks,
        } = attach;
        let build = build_dir();
        let mut cmd = Command::new(repo().join("qemu/run.sh"));
        let scratch = tempfile::Builder::new()
            .prefix("clawos-boot-")
            .tempdir()
            .expect("cannot create a temporary directory");
        // The harness's direct-kernel boots carry the console's root shell
        // in an extra initramfs (the UEFI boot of the image never has one).
        match how {
            Boot::Fast | Boot::Counted => {
                cmd.arg("--kernel").arg(build.join("bzImage"));
                cmd.arg("--initrd")
                    .arg(shell_initrd(scratch.path(), initrd));
                // What someone at the firmware's boot manager would type: the
                // kernel must ignore it (CMDLINE_OVERRIDE), or the boot never
                // reaches init's readiness marker.
                cmd.arg("--append").arg(IGNORED_ARGUMENTS);
                if how == Boot::Counted {
                    cmd.arg("--icount").arg("0");
                }
            }
            Boot::Uefi => {
                assert!(initrd.is_none(), "a UEFI boot takes no extra initramfs");
                cmd.arg("--vars").arg(disk.vars());
            }
        }
        if let Some(net) = net {
            cmd.arg("--api-port").arg(net.api_port.to_string());
            for f in &net.guestfwd {
                cmd.arg("--guestfwd").arg(f);
            }
        }
        for extra in extra_disks {
            cmd.arg("--disk").arg(extra);
        }
        cmd.arg(disk.image());
        // The poll interval of the session: each expect below loops to its own deadline.
        let session = rexpect::session::spawn_command(cmd, Some(1000))
            .unwrap_or_else(|e| panic!("cannot start qemu/run.sh: {e}"));
        let mut guest = Guest {
            _scratch: scratch,
            session,
            trouble,
            console: String::new(),
            name: name.to_owned(),
            started: Instant::now(),
            seq: 0,
            done: false,
        };
        guest.expect(marker, BOOT_TIMEOUT);
        let took = guest.started.elapsed();
        let what = if marker == READY {
            "daemon ready".to_owned()
        } else {
            format!("{marker:?}")
        };
        eprintln!(
            "e2e: {name}: {} boot, QEMU start to {what}: {:.1} s",
            match how {
                Boot::Fast => "fast-path",
                Boot::Uefi => "UEFI",
                Boot::Counted => "fast-path (instruction-counted clocks)",
            },
            took.as_secs_f64()
        );
        if how == Boot::Uefi {
            // No shell on the console: the test talks to the remote API.
            return guest;
        }
        // A quiet console for commands: no prompt, kernel messages only at
        // KERN_ALERT and above (a panic or BUG still shows).
        guest.session.send_line("PS1=''; dmesg -n 2").unwrap();
        let check = guest.sh("echo console-ok");
        assert_eq!(check.text, "console-ok\n", "console setup");
        guest
    }

    /// Wait for `needle`, failing on a trouble marker, on QEMU exiting or
    /// after `timeout`. Returns what came before it.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        self.expect_until(ReadUntil::String(needle.to_owned()), needle, timeout)
            .0
    }

    fn expect_until(
        &mut self,
        needle: ReadUntil,
        what: &str,
        timeout: Duration,
    ) -> (String, String) {
        let deadline = Instant::now() + timeout;
        let mut needles = vec![needle];
        needles.extend(
            self.trouble
                .iter()
                .map(|t| ReadUntil::String((*t).to_owned())),
        );
        loop {
            match self.session.exp_any(clone_needles(&needles)) {
                Ok((before, matched)) => {
                    self.console.push_str(&before);
                    self.console.push_str(&matched);
                    if let Some(t) = self.trouble.iter().copied().find(|t| matched == *t) {
                        // Let the rest of the report (stack, reason) arrive.
                        let rest = self.drain(Duration::from_secs(3));
                        self.console.push_str(&rest);
                        self.fail(&format!(
                            "the guest printed {t:?} while waiting for {what:?}"
                        ));
                    }
                    return (before, matched);
                }
                Err(rexpect::error::Error::Timeout { .. }) if Instant::now() < deadline => {}
                Err(rexpect::error::Error::Timeout { got, .. }) => {
                    self.console.push_str(&got);
                    self.fail(&format!(
                        "no {what:?} on the console within {} s",
                        timeout.as_secs()
                    ));
                }
                Err(rexpect::error::Error::EOF { got, .. }) => {
                    self.console.push_str(&got);
                    self.fail(&format!("QEMU exited while waiting for {what:?}"));
                }
                Err(e) => self.fail(&format!("console error while waiting for {what:?}: {e}")),
            }
        }
    }

    /// Whatever arrives within `d` (used only after a failure).
    fn drain(&mut self, d: Duration) -> String {
        let end = Instant::now() + d;
        let mut s = String::new();
        while Instant::now() < end {
            match self.session.try_read() {
                Some(c) => s.push(c),
                None => std::thread::yield_now(),
            }
        }
        s
    }

    /// Run a shell command line on the console; its output and `$?`.
    pub fn sh(&mut self, cmd: &str) -> Output {
        self.sh_within(cmd, COMMAND_TIMEOUT)
    }

    /// [`Guest::sh`] for a command that may take up to `timeout`.
    pub fn sh_within(&mut self, cmd: &str, timeout: Duration) -> Output {
        self.seq += 1;
        let n = self.seq;
        // One line: busybox ash echoes a line itself (line editing) before
        // running it, so the echo comes before the begin marker. The
        // markers are split in the command so that the echo never matches.
        self.session
            .send_line(&format!(
                "echo 'E2E-{n}''-BEGIN'; {cmd}; echo \"E2E-{n}-END-$?\"-'E2E'"
            ))
            .unwrap_or_else(|e| panic!("cannot write to the console: {e}"));
        // Lines end in "\r\r\n": the guest's tty adds one \r, QEMU's
        // stdio (OPOST with ONLCR) the other.
        let begin = Regex::new(&format!(r"E2E-{n}-BEGIN\r*\n")).unwrap();
        self.expect_until(ReadUntil::Regex(begin), cmd, COMMAND_TIMEOUT);
        let end = Regex::new(&format!(r"E2E-{n}-END-(\d+)-E2E")).unwrap();
        let (before, matched) = self.expect_until(ReadUntil::Regex(end.clone()), cmd, timeout);
        let code = end.captures(&matched).unwrap()[1].parse().unwrap();
        Output {
            code,
            text: before.replace('\r', ""),
        }
    }

    /// Type `line` on the console without waiting for an answer (for a
    /// console that must not answer).
    pub fn type_line(&mut self, line: &str) {
        self.session
            .send_line(line)
            .unwrap_or_else(|e| panic!("cannot write to the console: {e}"));
    }

    /// Everything the console prints within `d`; also kept in its log.
    pub fn read_for(&mut self, d: Duration) -> String {
        let got = self.drain(d);
        self.console.push_str(&got);
        got
    }

    /// Run `cmd`, require exit status 0, return its output.
    pub fn sh_ok(&mut self, cmd: &str) -> String {
        let out = self.sh(cmd);
        if out.code != 0 {
            self.fail(&format!(
                "`{cmd}` exited with {}; output:\n{}",
                out.code, out.text
            ));
        }
        out.text
    }

    /// Edit the daemon's config with the `sed` script `sed`, check that
    /// it now holds `check` (a fixed string), and restart the daemon (init
    /// restarts it on SIGHUP, saying `why`, and writes the worker's device
    /// rules again first); returns once it is ready.
    pub fn restart_daemon_with(&mut self, sed: &str, check: &str, why: &str) {
        self.sh_ok(&format!(
            "sed -i '{sed}' /etc/clawos/daemon.toml && grep -qF '{check}' /etc/clawos/daemon.toml \
             && echo '{why}' > /run/clawos/restart-why && kill -HUP 1"
        ));
        self.expect("clawos: ready", Duration::from_secs(120));
    }

    /// Clean shutdown through init (daemon stopped, data partition
    /// unmounted), then wait for QEMU to exit.
    pub fn poweroff(mut self) {
        self.session.send_line("poweroff").unwrap();
        self.expect("clawos: stopped; poweroff", COMMAND_TIMEOUT);
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            match self.session.exp_eof() {
                Ok(rest) => {
                    self.console.push_str(&rest);
                    break;
                }
                Err(rexpect::error::Error::Timeout { .. }) if Instant::now() < deadline => {}
                Err(e) => self.fail(&format!("QEMU did not exit after poweroff: {e}")),
            }
        }
        let status = self.session.process.wait();
        self.done = true;
        assert!(
            matches!(status, Ok(rexpect::process::wait::WaitStatus::Exited(_, 0))),
            "QEMU exit after poweroff: {status:?}"
        );
    }

    /// The console so far.
    pub fn console(&self) -> &str {
        &self.console
    }

    /// Print the whole console, kill QEMU and fail the test.
    pub fn fail(&mut self, why: &str) -> ! {
        self.kill();
        panic!("e2e: {}: {why}", self.name);
    }

    fn kill(&mut self) {
        if !self.done {
            self.done = true;
            let _ = self.session.process.signal(Signal::SIGKILL);
            let _ = self.session.process.wait();
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "e2e: {}: ===== whole console log =====\n{}\n===== end of console log =====",
                self.name,
                self.console.replace('\r', "")
            );
        }
        self.kill();
    }
}

/// Run kernel-config/check.sh on `config` (the text of a .config); its
/// exit status and standard error.
pub fn check_kernel_config(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().expect("cannot create a temporary directory");
    let path = dir.path().join(".config");
    std::fs::write(&path, config).expect("cannot write the config");
    let out = Command::new(repo().join("kernel-config/check.sh"))
        .arg(repo().join("kernel-config/clawos.config"))
        .arg(&path)
        .output()
        .expect("cannot run kernel-config/check.sh");
    (
        out.status.code().expect("check.sh was killed by a signal"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn clone_needles(needles: &[ReadUntil]) -> Vec<ReadUntil> {
    needles
        .iter()
        .map(|n| match n {
            ReadUntil::String(s) => ReadUntil::String(s.clone()),
            ReadUntil::Regex(r) => ReadUntil::Regex(r.clone()),
            _ => unreachable!("the harness only waits for strings and regexes"),
        })
        .collect()
}

/// Run every sample tool once in `g` with exact results: the WIT
/// interfaces (hostio: filesystem, device, network: localhost is refused by the default policy,
/// cgroup), the limits and the P1.7 codes of failed runs. Shared by the
/// tools suite and the AppArmor suite (which checks for denials after).
pub fn run_sample_tools(g: &mut Guest) {
    let out = |code: i32, text: &str| Output {
        code,
        text: text.to_owned(),
    };
    assert_eq!(
        g.sh("clawosctl run hello ClawOS 2>/dev/null"),
        out(0, "hello, ClawOS\n")
    );
    assert_eq!(
        g.sh("printf 'from the console' | clawosctl run echo --stdin 2>/dev/null"),
        out(0, "from the console")
    );
    // The exerciser checks that it got exactly this environment variable.
    let exerciser = g.sh(
        "clawosctl run --env GREETING=from-request exerciser >/tmp/ex 2>/dev/null; \
         echo status=$?; tail -n 1 /tmp/ex",
    );
    assert_eq!(exerciser, out(0, "status=0\nall 19 checks passed\n"));
    // 35 checks: every function of the four interfaces on the real kernel,
    // ClawFS on the data partition, and cgroup groups really created,
    // limited and deleted (cgroup v2, which the development host lacks).
    let hostio = g.sh(
        "clawosctl run hostio cgroup=available >/tmp/hio 2>/tmp/hio.err; \
         echo status=$?; tail -n 1 /tmp/hio",
    );
    if hostio != out(0, "status=0\nall 35 checks passed\n") {
        let detail = g
            .sh("cat /tmp/hio /tmp/hio.err; dmesg | grep apparmor=")
            .text;
        g.fail(&format!("hostio: {hostio:?}\n{detail}"));
    }
    // A grow past the WASM cap is refused at once (101). The step is one
    // allocation, and the growth that succeeds is small: touching pages
    // costs ~0.5 ms each under TCG, and the instance gets 5% of a CPU
    // (sandbox.rs drives a hog into the OOM killer with that limit lifted).
    assert_eq!(g.sh("clawosctl run memgrow 512 2>/dev/null").code, 101);
    assert_eq!(
        g.sh("clawosctl run memgrow 1 2 2>/dev/null"),
        out(0, "grew to 2 MiB\n")
    );
    assert_eq!(
        g.sh("clawosctl run misbehave forge-handle 2>/dev/null")
            .code,
        206
    );
    assert_eq!(
        g.sh("clawosctl run --timeout 500 spinner 2>/dev/null").code,
        6
    );
}
