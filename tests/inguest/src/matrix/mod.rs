//! The layer matrix: each attack run once with no layer at all (it must
//! succeed: the proof that the attack is real) and once under each layer
//! that claims to stop it, with every other layer off (it must be
//! stopped). An attack runs as native code in a cell process, as a tool
//! would after escaping the WASM sandbox; under the `wasm` layer it runs
//! as a tool in the bridge's runtime instead, with no process layer.
//!
//! | layer | what the cell gets, and nothing else |
//! |---|---|
//! | none | a root process in the appliance's own namespaces and cgroup, unconfined |
//! | wasm | the bridge's runtime in-process, tools from the image's registry |
//! | seccomp | the worker filter (`bridge/seccomp/worker.toml`), as installed by workers |
//! | cgroup | an instance cgroup with the P1.5 values of `/etc/clawos/limits.toml` |
//! | apparmor | the `clawos-worker` profile |
//! | namespaces | new user, pid, net and mnt namespaces and the worker's mount tree, every capability the user namespace gives |

mod cell;

pub use cell::{CellArgs, cell};

use crate::{errno_name, signal_name};
use clawos_bridge::cgroup::{Delegation, files::flat_keyed};
use clawos_bridge::config::Config;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The daemon's configuration in the appliance (tools, ClawFS, cgroup root).
pub const DAEMON_CONFIG: &str = "/etc/clawos/daemon.toml";
/// Where the matrix keeps its files.
const WORK: &str = "/run/clawos-matrix";
/// The matrix's own cgroup subtree, beside the daemon's.
const CGROUP_ROOT: &str = "/sys/fs/cgroup/clawos-matrix";
/// The marker in the loopback datagrams the raw-socket attack sniffs for.
const MARKER: &[u8] = b"clawos-layer-matrix-marker";
/// Where those datagrams go.
const MARKER_PORT: u16 = 47_999;
/// The memory bomb: past memory.max (256 MiB), within the guest's 1 GiB.
const MEMORY_BOMB: usize = 384 << 20;
/// Processes the fork bomb wants alive at once: past pids.max (32).
const FORK_BOMB: usize = 64;
/// How long the CPU spinner measures its share.
const SPIN: Duration = Duration::from_secs(3);
/// A share of a CPU at or under this is a stop (P1.5 gives 5%).
const SPIN_STOPPED: f64 = 0.10;
/// The wasm layer's CPU budget in the matrix (the daemon's is longer; the
/// mechanism is the same epoch deadline).
const WASM_BUDGET_MS: u64 = 1_000;
/// The longest a cell may take.
const CELL_DEADLINE: Duration = Duration::from_secs(90);

/// An attack, as its goal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Attack {
    /// Hold 384 MiB of touched memory.
    MemoryBomb,
    /// Keep 64 processes alive at once.
    ForkBomb,
    /// Use a whole CPU for 3 s.
    CpuSpin,
    /// Run /bin/busybox.
    Exec,
    /// Attach to a process outside the sandbox.
    Ptrace,
    /// Mount the ClawFS partition.
    Mount,
    /// Read the host's loopback traffic through a raw socket.
    RawSocket,
    /// Read /etc/shadow.
    FileEscape,
}

/// A layer, switched on alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Layer {
    /// No layer: the attack must succeed.
    None,
    /// The WASM sandbox (5a).
    Wasm,
    /// seccomp-BPF, the worker filter (5b).
    Seccomp,
    /// cgroup v2, P1.5 (5c).
    Cgroup,
    /// AppArmor, the worker profile (5d).
    Apparmor,
    /// user, pid, net and mnt namespaces with the worker's mount tree (5e).
    Namespaces,
}

impl Attack {
    pub const ALL: [Attack; 8] = [
        Attack::MemoryBomb,
        Attack::ForkBomb,
        Attack::CpuSpin,
        Attack::Exec,
        Attack::Ptrace,
        Attack::Mount,
        Attack::RawSocket,
        Attack::FileEscape,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attack::MemoryBomb => "memory-bomb",
            Attack::ForkBomb => "fork-bomb",
            Attack::CpuSpin => "cpu-spin",
            Attack::Exec => "exec",
            Attack::Ptrace => "ptrace",
            Attack::Mount => "mount",
            Attack::RawSocket => "raw-socket",
            Attack::FileEscape => "file-escape",
        }
    }

    /// The layers that claim to stop this attack on their own.
    pub fn stopped_by(self) -> &'static [Layer] {
        use Layer::*;
        match self {
            Attack::MemoryBomb | Attack::CpuSpin => &[Wasm, Cgroup],
            Attack::ForkBomb => &[Wasm, Seccomp, Cgroup],
            Attack::Exec | Attack::Ptrace | Attack::Mount | Attack::RawSocket => {
                &[Wasm, Seccomp, Apparmor, Namespaces]
            }
            Attack::FileEscape => &[Wasm, Apparmor, Namespaces],
        }
    }
}

impl Layer {
    pub const ALL: [Layer; 6] = [
        Layer::None,
        Layer::Wasm,
        Layer::Seccomp,
        Layer::Cgroup,
        Layer::Apparmor,
        Layer::Namespaces,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Layer::None => "none",
            Layer::Wasm => "wasm",
            Layer::Seccomp => "seccomp",
            Layer::Cgroup => "cgroup",
            Layer::Apparmor => "apparmor",
            Layer::Namespaces => "namespaces",
        }
    }
}

/// How a cell ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The attack reached its goal.
    Succeeded,
    /// The layer stopped it.
    Stopped,
    /// The cell could not run (a setup failure, a timeout).
    Broken,
}

impl Verdict {
    fn name(self) -> &'static str {
        match self {
            Verdict::Succeeded => "succeeded",
            Verdict::Stopped => "stopped",
            Verdict::Broken => "broken",
        }
    }
}

/// What one cell showed: the verdict, a short form for the table (the
/// errno, signal or code) and the whole story.
#[derive(Clone, Debug)]
pub struct Observed {
    pub verdict: Verdict,
    pub short: String,
    pub detail: String,
}

// ---- the matrix: every cell, in its own process ----

/// What the cells share: the victim, the device, the marker sender.
struct Matrix {
    exe: PathBuf,
    device: PathBuf,
    config: Config,
    next_id: u64,
}

/// The block device mounted at `dir`, from /proc/self/mountinfo.
fn device_of(dir: &str) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        if fields.get(4) != Some(&dir) {
            return None;
        }
        fields.get(sep + 2).map(PathBuf::from)
    })
}

/// Send the marker datagram over loopback every 20 ms, for the
/// raw-socket attack to find.
fn send_markers() -> Result<(), String> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.send_to(MARKER, ("127.0.0.1", MARKER_PORT)).map(|_| s))
        .map_err(|e| format!("cannot send the marker over loopback (is lo up?): {e}"))?;
    std::thread::spawn(move || {
        loop {
            let _ = sock.send_to(MARKER, ("127.0.0.1", MARKER_PORT));
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    Ok(())
}

impl Matrix {
    fn new() -> Result<Matrix, String> {
        let config = Config::load(Path::new(DAEMON_CONFIG)).map_err(|e| e.to_string())?;
        let data = config.state_dir.to_string_lossy().into_owned();
        let device = device_of(&data).ok_or_else(|| format!("nothing is mounted at {data}"))?;
        for d in ["clawfs", "mnt"] {
            std::fs::create_dir_all(Path::new(WORK).join(d))
                .map_err(|e| format!("{WORK}/{d}: {e}"))?;
        }
        send_markers()?;
        Ok(Matrix {
            exe: std::env::current_exe().map_err(|e| e.to_string())?,
            device,
            config,
            next_id: 1,
        })
    }

    fn run(&mut self, attack: Attack, layer: Layer) -> Observed {
        match self.try_run(attack, layer) {
            Ok(o) => o,
            Err(why) => Observed {
                verdict: Verdict::Broken,
                short: "-".to_owned(),
                detail: why,
            },
        }
    }

    fn try_run(&mut self, attack: Attack, layer: Layer) -> Result<Observed, String> {
        let mut cmd = Command::new(&self.exe);
        cmd.args(["cell", attack.name(), layer.name()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut victim = None;
        match attack {
            Attack::Ptrace => {
                let v = Command::new("sleep")
                    .arg("600")
                    .spawn()
                    .map_err(|e| format!("start the victim: {e}"))?;
                cmd.arg("--victim").arg(v.id().to_string());
                victim = Some(v);
            }
            Attack::Mount => {
                cmd.arg("--device")
                    .arg(&self.device)
                    .arg("--target")
                    .arg(Path::new(WORK).join("mnt"));
            }
            _ => {}
        }
        let delegation = if layer == Layer::Cgroup {
            let mut policy = self.config.cgroup.clone();
            policy.root = CGROUP_ROOT.into();
            let d = Delegation::create(&policy, self.next_id).map_err(|f| f.message)?;
            self.next_id += 1;
            cmd.arg("--leaf").arg(d.dir().join("main"));
            Some(d)
        } else {
            None
        };
        let mut child = cmd.spawn().map_err(|e| format!("start the cell: {e}"))?;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                break Some(status);
            }
            if started.elapsed() > CELL_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let (mut out, mut err) = (String::new(), String::new());
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let events = delegation
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.dir().join("memory.events")).ok());
        drop(delegation);
        if let Some(mut v) = victim {
            let _ = v.kill();
            let _ = v.wait();
        }
        let Some(status) = status else {
            return Err(format!("no answer within {} s", CELL_DEADLINE.as_secs()));
        };
        if let Some(sig) = status.signal() {
            let name = signal_name(sig);
            let oom = events
                .as_deref()
                .and_then(|e| flat_keyed(e, "oom_kill"))
                .unwrap_or(0);
            let group = events
                .as_deref()
                .and_then(|e| flat_keyed(e, "oom_group_kill"))
                .unwrap_or(0);
            let (short, detail) = if sig == libc::SIGKILL && oom > 0 {
                (
                    "OOM kill".to_owned(),
                    format!(
                        "killed by SIGKILL at memory.max (memory.events oom_kill {oom}, oom_group_kill {group})"
                    ),
                )
            } else if sig == libc::SIGSYS {
                (
                    name.clone(),
                    "killed by SIGSYS (a system call the filter forbids)".to_owned(),
                )
            } else {
                (name.clone(), format!("killed by {name}"))
            };
            return Ok(Observed {
                verdict: Verdict::Stopped,
                short,
                detail,
            });
        }
        let line = out.lines().last().unwrap_or("");
        let mut parts = line.splitn(3, '\t');
        let (verdict, short, detail) = (parts.next(), parts.next(), parts.next());
        let verdict = match verdict {
            Some("succeeded") => Verdict::Succeeded,
            Some("stopped") => Verdict::Stopped,
            _ => {
                return Err(format!(
                    "the cell said {out:?} and exited {status}; stderr {:?}",
                    err.trim()
                ));
            }
        };
        Ok(Observed {
            verdict,
            short: short.unwrap_or("-").to_owned(),
            detail: detail.unwrap_or("").to_owned(),
        })
    }
}

/// Run the cells of `attacks` × (none + the layers that claim each), print
/// a line per cell and the table. True if every baseline succeeded and
/// every claimed layer stopped its attack.
pub fn run(attacks: &[Attack], only: Option<Layer>) -> bool {
    let mut matrix = match Matrix::new() {
        Ok(b) => b,
        Err(why) => {
            eprintln!("clawos-layer-matrix: cannot start: {why}");
            return false;
        }
    };
    let mut results: Vec<(Attack, Layer, Observed)> = Vec::new();
    let mut ok = true;
    for &attack in attacks {
        let layers = std::iter::once(Layer::None).chain(attack.stopped_by().iter().copied());
        for layer in layers.filter(|l| only.is_none_or(|o| o == *l)) {
            let observed = matrix.run(attack, layer);
            let want = if layer == Layer::None {
                Verdict::Succeeded
            } else {
                Verdict::Stopped
            };
            ok &= observed.verdict == want;
            println!(
                "cell {} {} {} {}\t{}",
                attack.name(),
                layer.name(),
                observed.verdict.name(),
                observed.short,
                observed.detail
            );
            results.push((attack, layer, observed));
        }
    }
    let _ = std::fs::remove_dir(CGROUP_ROOT);
    print_table(attacks, &results);
    ok
}

fn print_table(attacks: &[Attack], results: &[(Attack, Layer, Observed)]) {
    let width = 16;
    let mut head = format!("{:<12}", "attack");
    for l in Layer::ALL {
        head.push_str(&format!(" | {:<width$}", l.name()));
    }
    println!("\n{head}");
    println!("{}", "-".repeat(head.len()));
    for &a in attacks {
        let mut row = format!("{:<12}", a.name());
        for l in Layer::ALL {
            let cell = results
                .iter()
                .find(|(ra, rl, _)| *ra == a && *rl == l)
                .map_or("-".to_owned(), |(_, _, o)| match o.verdict {
                    Verdict::Succeeded => "ran".to_owned(),
                    Verdict::Stopped => format!("stop {}", o.short),
                    Verdict::Broken => "BROKEN".to_owned(),
                });
            row.push_str(&format!(" | {cell:<width$}"));
        }
        println!("{row}");
    }
    println!(
        "\nnone: no layer (the attack must run); stop X: the layer alone stopped it, with X (errno, signal, P1.7 code); -: not this layer's job"
    );
}
