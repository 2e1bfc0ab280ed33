//! `clawos-seccomp-probe`: install one of the bridge's seccomp filters and
//! make one system call under it (see clawos_bridge::seccomp::probe).

use clap::Parser;
use clawos_bridge::seccomp::{Kind, probe};

#[derive(Debug, Parser)]
#[command(
    name = "clawos-seccomp-probe",
    version,
    about = "Install a bridge seccomp filter (daemon, launcher or worker) and make one system call under it",
    long_about = "Install a bridge seccomp filter (daemon, launcher or worker), the same bytes the bridge \
                  installs, and make one system call under it. A refused call kills the probe with SIGSYS \
                  or prints \"errno N\"; an allowed one prints \"returned N\".\n\n\
                  --list prints every call the policy files refuse: KIND SYSCALL ARGS EXPECT, one per line."
)]
struct Args {
    /// Print every refused call of every kind and exit.
    #[arg(long, conflicts_with_all = ["kind", "digest", "allowed"])]
    list: bool,
    /// Print the sha256 of KIND's compiled filter and exit.
    #[arg(long)]
    digest: bool,
    /// Do ordinary allowed work under KIND's filter instead of one call.
    #[arg(long)]
    allowed: bool,
    /// daemon, launcher or worker.
    #[arg(required_unless_present = "list")]
    kind: Option<String>,
    /// The syscall name and up to six arguments (numbers or constant names).
    call: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.list {
        for v in probe::vectors().map_err(|f| anyhow::anyhow!("{f}"))? {
            println!("{}", v.line());
        }
        return Ok(());
    }
    let name = args.kind.unwrap_or_default();
    let kind = Kind::named(&name)
        .ok_or_else(|| anyhow::anyhow!("unknown kind {name:?}: daemon, launcher or worker"))?;
    let out = if args.digest {
        probe::digest(kind)
    } else if args.allowed {
        probe::allowed(kind)
    } else {
        let (syscall, rest) = args
            .call
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("name a syscall, or pass --allowed or --digest"))?;
        probe::call(kind, syscall, rest)
    };
    println!("{}", out.map_err(|f| anyhow::anyhow!("{f}"))?);
    Ok(())
}
