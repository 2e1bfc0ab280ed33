//! `clawosctl`: install, list, run and remove tools, and read the daemon's
//! status. Human output by default, `--json` for scripts. The exit status is
//! the P1.7 code of a failed request (docs/error-codes.md), or the tool's own
//! exit status when a run succeeds.

use crate::error::{Code, Failure};
use crate::escape;
use crate::ipc::client::{Client, Remote};
use crate::ipc::proto::{
    Body, ComponentSource, KeptData, Request, Response, RunRequest, SecretValue,
};
use crate::remote;
use clap::{Parser, Subcommand};
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

/// Command-line interface of `clawosctl`.
#[derive(Debug, Parser)]
#[command(
    name = "clawosctl",
    version,
    about = "Manage and run ClawOS tools through clawos-wasm-daemon",
    after_help = "Exit status: 0 on success; on failure the P1.7 code of the daemon's answer \
                  (e.g. 202 TOOL_NOT_FOUND, 102 WASM_CPU_DEADLINE; see docs/error-codes.md); \
                  for a run that succeeded, the tool's own exit status."
)]
pub struct Cli {
    /// The daemon's socket.
    #[arg(
        long,
        env = "CLAWOS_SOCKET",
        default_value = "/run/clawos/bridge.sock",
        global = true
    )]
    pub socket: PathBuf,
    /// Use a daemon's remote API instead of the socket: tls://HOST:PORT
    /// (the appliance serves port 7443). Needs --ca, --cert and --key.
    #[arg(long, env = "CLAWOS_CONNECT", value_name = "URL", global = true)]
    pub connect: Option<String>,
    /// The CA that issued the daemon's certificate (PEM).
    #[arg(long, env = "CLAWOS_CA", value_name = "FILE", global = true)]
    pub ca: Option<PathBuf>,
    /// This client's certificate (PEM), issued by a CA the daemon trusts.
    #[arg(
        long,
        env = "CLAWOS_CERT",
        value_name = "FILE",
        global = true,
        requires = "key"
    )]
    pub cert: Option<PathBuf>,
    /// This client's private key (PEM).
    #[arg(
        long,
        env = "CLAWOS_KEY",
        value_name = "FILE",
        global = true,
        requires = "cert"
    )]
    pub key: Option<PathBuf>,
    /// The name the daemon's certificate must carry, when it is not the
    /// host of --connect (e.g. connecting by an address the certificate
    /// does not list).
    #[arg(long, env = "CLAWOS_SERVER_NAME", value_name = "NAME", global = true)]
    pub server_name: Option<String>,
    /// Print the daemon's answer as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `clawosctl` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate, precompile and install a component (.wasm) as a tool.
    Install {
        /// Name to install it under: 1-64 of a-z, 0-9, '-', '_'.
        name: String,
        /// The component file, built for wasm32-wasip2 against the clawos:bridge WIT package.
        file: PathBuf,
        /// Replace a tool of the same name (its ClawFS data stays: an upgrade).
        #[arg(long)]
        replace: bool,
        /// Give this component the ClawFS data a removed tool of another
        /// component left under NAME (`remove --keep-data`).
        #[arg(long, conflicts_with = "discard_data")]
        adopt_data: bool,
        /// Delete the ClawFS data a removed tool left under NAME, then install.
        #[arg(long)]
        discard_data: bool,
        /// Let the daemon read FILE itself instead of sending its bytes (root only).
        #[arg(long)]
        by_path: bool,
        /// Grant the tool KIND=VALUE (repeatable): name=HOST or name=*.DOMAIN,
        /// net=NETWORK:PORT[,PORT], device=NAME[:rw], storage=SIZE,
        /// inodes=N, cpu-budget-ms=N, memory=SIZE, env=NAME=VALUE. A new
        /// tool has no network, device or secret otherwise; the daemon's
        /// config holds the ceilings (docs/policy.md).
        #[arg(long = "grant", value_name = "KIND=VALUE")]
        grants: Vec<String>,
        /// Grant what the component asks for (shown by install and show),
        /// within the ceilings.
        #[arg(long)]
        grant_requested: bool,
    },
    /// Grant a tool more (runs from now on get it): KIND=VALUE as for
    /// install --grant.
    Grant {
        /// The tool.
        name: String,
        /// What to grant.
        #[arg(required = true, value_name = "KIND=VALUE")]
        grants: Vec<String>,
    },
    /// Take grants back (runs from now on lose them): name=HOST,
    /// net=NETWORK:PORT[,PORT], net (every name and network), device=NAME,
    /// devices, env=NAME, env, and storage, inodes, cpu-budget-ms, memory
    /// (back to the default).
    Revoke {
        /// The tool.
        name: String,
        /// What to take back.
        #[arg(required = true, value_name = "GRANT")]
        revokes: Vec<String>,
    },
    /// Show a tool: what it is granted, the names of its secrets (never
    /// their values) and what its component asks for.
    Show {
        /// The tool.
        name: String,
    },
    /// Store or delete a tool's secrets: values its runs alone get, as an
    /// environment variable (and system.get-env), never logged or shown.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// List installed tools.
    List,
    /// Run a tool and print its output.
    Run {
        /// The tool.
        name: String,
        /// Arguments passed to the tool's `run`. Everything after the first of
        /// them goes to the tool: put clawosctl's options before, and `--`
        /// before tool arguments that start with '-'.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
        /// Pass this file's contents as the tool's input.
        #[arg(long, conflicts_with = "stdin")]
        input: Option<PathBuf>,
        /// Pass everything on standard input as the tool's input.
        #[arg(long)]
        stdin: bool,
        /// Set NAME=VALUE in the tool's environment (repeatable).
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// End the run with ETIMEOUT after this many milliseconds.
        #[arg(long, value_name = "MS")]
        timeout: Option<u64>,
    },
    /// Remove an installed tool and its ClawFS data.
    Remove {
        /// The tool.
        name: String,
        /// Keep its ClawFS data, recorded as this component's: a later
        /// install of the same component gets it back; another component
        /// only with `install --adopt-data`.
        #[arg(long)]
        keep_data: bool,
    },
    /// Show the daemon's version, limits and counters.
    Status,
    /// Make the keys of the remote API (no daemon is contacted).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Grow the data partition mounted at DIR, and its ext4, to the end of
    /// its disk (the appliance's init runs it at every boot; a partition
    /// that fills its disk is left as it is). No daemon is contacted.
    GrowData {
        /// Where the data partition is mounted.
        #[arg(default_value = "/var/lib/clawos")]
        dir: PathBuf,
    },
    /// Print the AppArmor rules of the devices the daemon's config allows
    /// tools (for /etc/apparmor.d/clawos.d/devices, which the worker's rules
    /// include; the appliance's init writes it before loading the profiles).
    /// No daemon is contacted.
    ApparmorDevices {
        /// The daemon's configuration file.
        #[arg(long, default_value = "/etc/clawos/daemon.toml")]
        config: PathBuf,
    },
}

/// `clawosctl secret` subcommands.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store secret KEY of tool NAME: the value is read from standard input
    /// (one final newline dropped) or --from-file, never from the command line.
    Set {
        /// The tool.
        name: String,
        /// The secret's name: the environment variable the tool reads.
        #[arg(value_name = "KEY")]
        variable: String,
        /// Read the value from this file (exactly its bytes).
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
    },
    /// Delete secret KEY of tool NAME.
    Unset {
        /// The tool.
        name: String,
        /// The secret's name.
        #[arg(value_name = "KEY")]
        variable: String,
    },
}

/// `clawosctl keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new CA in DIR with the daemon's certificate and a first
    /// client's: ca.pem/ca.key (keep ca.key offline), server.pem/server.key
    /// and clients-ca.pem (for the appliance's data partition, tls/),
    /// CLIENT.pem/CLIENT.key (for clawosctl --cert/--key). Existing files
    /// are never overwritten.
    Init {
        /// The directory (created 0700).
        dir: PathBuf,
        /// A name or address clients will connect to (repeatable; the
        /// daemon's certificate lists them all).
        #[arg(long = "name", value_name = "NAME", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned(), "clawos".to_owned()])]
        server_names: Vec<String>,
        /// The first client's name (its certificate's common name, shown in the daemon's log).
        #[arg(long, default_value = "operator")]
        client: String,
        /// Days the certificates are valid.
        #[arg(long, default_value_t = 825, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
    },
    /// Issue a certificate for another client from the CA in DIR.
    Client {
        /// The directory made by `keys init`.
        dir: PathBuf,
        /// The client's name.
        name: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 825, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
    },
}

fn request(cli: &Cli) -> Result<Request, Failure> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| Failure::io(format_args!("cannot read {}", p.display()), &e))
    };
    Ok(match &cli.command {
        Command::Install {
            name,
            file,
            replace,
            by_path,
            adopt_data,
            discard_data,
            grants,
            grant_requested,
        } => Request::Install {
            name: name.clone(),
            source: if *by_path {
                let abs = std::path::absolute(file).map_err(|e| {
                    Failure::io(format_args!("cannot resolve {}", file.display()), &e)
                })?;
                ComponentSource::Path(abs.to_string_lossy().into_owned())
            } else {
                ComponentSource::Bytes(read(file)?)
            },
            replace: *replace,
            kept_data: match (adopt_data, discard_data) {
                (true, _) => KeptData::Adopt,
                (_, true) => KeptData::Discard,
                _ => KeptData::Refuse,
            },
            grants: grants.clone(),
            grant_requested: *grant_requested,
        },
        Command::Grant { name, grants } => Request::Grant {
            name: name.clone(),
            add: grants.clone(),
            remove: vec![],
        },
        Command::Revoke { name, revokes } => Request::Grant {
            name: name.clone(),
            add: vec![],
            remove: revokes.clone(),
        },
        Command::Show { name } => Request::Show { name: name.clone() },
        Command::Secret(SecretCommand::Unset { name, variable }) => Request::Secret {
            name: name.clone(),
            key: variable.clone(),
            value: None,
        },
        Command::Secret(SecretCommand::Set {
            name,
            variable,
            from_file,
        }) => {
            let bytes = match from_file {
                Some(p) => read(p)?,
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut buf)
                        .map_err(|e| Failure::io("cannot read standard input", &e))?;
                    if buf.last() == Some(&b'\n') {
                        buf.pop();
                    }
                    buf
                }
            };
            let value = String::from_utf8(bytes).map_err(|_| {
                Failure::new(Code::InvalidArgument, "a secret's value must be UTF-8 text")
            })?;
            Request::Secret {
                name: name.clone(),
                key: variable.clone(),
                value: Some(SecretValue(value)),
            }
        }
        Command::Keys(_) | Command::GrowData { .. } | Command::ApparmorDevices { .. } => {
            unreachable!("keys, grow-data and apparmor-devices make no request")
        }
        Command::List => Request::List,
        Command::Remove { name, keep_data } => Request::Remove {
            name: name.clone(),
            keep_data: *keep_data,
        },
        Command::Status => Request::Status,
        Command::Run {
            name,
            args,
            input,
            stdin,
            env,
            timeout,
        } => {
            let input = match (input, stdin) {
                (Some(p), _) => read(p)?,
                (None, true) => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut buf)
                        .map_err(|e| Failure::io("cannot read standard input", &e))?;
                    buf
                }
                (None, false) => Vec::new(),
            };
            let env = env
                .iter()
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .ok_or_else(|| {
                            Failure::new(
                                Code::InvalidArgument,
                                format!("--env {kv:?} is not NAME=VALUE"),
                            )
                        })
                })
                .collect::<Result<_, _>>()?;
            Request::Run(RunRequest {
                name: name.clone(),
                args: args.clone(),
                input,
                env,
                timeout_ms: *timeout,
            })
        }
    })
}

/// The connection the options ask for: the remote API with --connect,
/// else the socket.
fn connect(cli: &Cli) -> Result<Client, Failure> {
    let Some(url) = &cli.connect else {
        return Client::connect(&cli.socket);
    };
    let ca = cli.ca.clone().ok_or_else(|| {
        Failure::new(
            Code::InvalidArgument,
            "--connect needs --ca (or CLAWOS_CA): the CA that issued the daemon's certificate",
        )
    })?;
    Client::connect_remote(&Remote {
        address: Remote::parse_url(url)?,
        ca,
        identity: cli.cert.clone().zip(cli.key.clone()),
        server_name: cli.server_name.clone(),
    })
}

fn keys(cmd: &KeysCommand) -> Result<Vec<PathBuf>, Failure> {
    match cmd {
        KeysCommand::Init {
            dir,
            server_names,
            client,
            days,
        } => remote::keys::init(dir, server_names, client, *days),
        KeysCommand::Client { dir, name, days } => remote::keys::add_client(dir, name, *days),
    }
}

fn report_failure(cli: &Cli, f: &Failure) -> u8 {
    if cli.json {
        println!(
            "{}",
            serde_json::json!({ "code": f.code.value(), "name": f.code.name(), "message": f.message })
        );
    } else {
        eprintln!("clawosctl: {}: {}", f.code, escape::controls(&f.message));
    }
    f.code.exit_status()
}

/// Run `clawosctl` with parsed arguments; returns the process exit status.
pub fn main(cli: Cli) -> u8 {
    if let Command::Keys(cmd) = &cli.command {
        return match keys(cmd) {
            Ok(files) => {
                if cli.json {
                    println!(
                        "{}",
                        serde_json::json!({ "code": 0, "name": "SUCCESS", "written": files })
                    );
                } else {
                    for f in files {
                        println!("wrote {}", f.display());
                    }
                }
                0
            }
            Err(f) => report_failure(&cli, &f),
        };
    }
    if let Command::ApparmorDevices { config } = &cli.command {
        return match crate::config::Config::load(config) {
            Ok(config) => {
                print!(
                    "{}",
                    crate::apparmor::devices::rules(&config.devices, |p| std::fs::canonicalize(p)
                        .ok())
                );
                0
            }
            Err(e) => report_failure(
                &cli,
                &Failure::new(Code::InvalidArgument, format!("{}: {e}", config.display())),
            ),
        };
    }
    if let Command::GrowData { dir } = &cli.command {
        return match crate::datapart::grow(dir) {
            Ok(grown) => {
                let mib = |b: u64| b / (1 << 20);
                match (&grown, cli.json) {
                    (Some(g), true) => println!(
                        "{}",
                        serde_json::json!({ "code": 0, "name": "SUCCESS", "device": g.device, "from_bytes": g.from_bytes, "to_bytes": g.to_bytes, "filesystem_grew": g.filesystem_grew })
                    ),
                    (None, true) => println!(
                        "{}",
                        serde_json::json!({ "code": 0, "name": "SUCCESS", "device": null })
                    ),
                    (Some(g), false) if g.from_bytes < g.to_bytes => println!(
                        "data partition {} grown from {} MiB to {} MiB",
                        g.device.display(),
                        mib(g.from_bytes),
                        mib(g.to_bytes)
                    ),
                    (Some(g), false) => println!(
                        "data partition {}: its filesystem grown to fill it (an earlier grow was cut short)",
                        g.device.display()
                    ),
                    (None, false) => println!("data partition fills its disk"),
                }
                0
            }
            Err(f) => report_failure(&cli, &f),
        };
    }
    let result = request(&cli).and_then(|req| connect(&cli)?.request(&req));
    match result {
        Err(f) => report_failure(&cli, &f),
        Ok(resp) => {
            if cli.json {
                println!("{}", json(&resp));
            } else {
                human(&resp);
            }
            match (&resp.body, resp.code) {
                (Body::Run(out), Code::Success) => out.exit_status.unwrap_or(0),
                (_, code) => code.exit_status(),
            }
        }
    }
}

fn bytes_json(b: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(b) {
        Ok(s) => serde_json::Value::String(s.to_owned()),
        Err(_) => serde_json::json!(b),
    }
}

/// The response as JSON; byte fields as strings when they are UTF-8.
pub fn json(resp: &Response) -> serde_json::Value {
    let body = match &resp.body {
        Body::Empty => serde_json::Value::Null,
        Body::Tool(t) => serde_json::json!(t),
        Body::Tools(t) => serde_json::json!(t),
        Body::Status(s) => serde_json::json!(s),
        Body::Run(o) => serde_json::json!({
            "exit_status": o.exit_status,
            "output": bytes_json(&o.output),
            "stdout": bytes_json(&o.stdout),
            "stderr": bytes_json(&o.stderr),
            "logs": o.logs,
            "logs_dropped": o.logs_dropped,
            "instance_id": o.instance_id,
            "instantiate_us": o.instantiate_us,
            "run_us": o.run_us,
            "memory_peak": o.memory_peak,
        }),
    };
    serde_json::json!({ "code": resp.code.value(), "name": resp.code.name(), "message": resp.message, "body": body })
}

fn human(resp: &Response) {
    let mut out = std::io::stdout().lock();
    match &resp.body {
        Body::Run(o) => {
            // A tool's bytes reach a terminal with their controls escaped
            // (no ESC, OSC 52 or CSI of a tool's choosing drives it); into a
            // pipe or file they go exact.
            let mut err = std::io::stderr().lock();
            let exact = |to: &mut dyn Write, terminal: bool, bytes: &[u8]| {
                let _ = match terminal {
                    true => to.write_all(escape::controls_keeping_lines(bytes).as_bytes()),
                    false => to.write_all(bytes),
                };
            };
            let terminal = out.is_terminal();
            exact(&mut out, terminal, &o.output);
            exact(&mut out, terminal, &o.stdout);
            let terminal = err.is_terminal();
            exact(&mut err, terminal, &o.stderr);
            let _ = out.flush();
            for line in &o.logs {
                let _ = writeln!(err, "[{}] {}", line.level, escape::controls(&line.message));
            }
            if o.logs_dropped > 0 {
                let _ = writeln!(
                    err,
                    "clawosctl: {} log lines were dropped by the daemon's limits",
                    o.logs_dropped
                );
            }
        }
        Body::Tool(t) => {
            let _ = writeln!(
                out,
                "{}  sha256:{}  {} bytes (precompiled {} bytes)",
                t.name, t.sha256, t.component_bytes, t.artifact_bytes
            );
            if let Some(g) = &t.grants {
                let _ = writeln!(
                    out,
                    "  granted:   {}",
                    escape::controls(&crate::registry::describe(g))
                );
                let env: Vec<String> = g.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                if !env.is_empty() {
                    let _ = writeln!(out, "  env:       {}", escape::controls(&env.join(" ")));
                }
                let secrets: Vec<&str> = g.secrets.iter().map(String::as_str).collect();
                let _ = writeln!(
                    out,
                    "  secrets:   {}",
                    if secrets.is_empty() {
                        "none".to_owned()
                    } else {
                        format!("{} (values are never shown)", secrets.join(", "))
                    }
                );
            }
            if let Some(r) = &t.requested {
                let mut asks = crate::registry::describe(r);
                if !r.secrets.is_empty() {
                    let names: Vec<&str> = r.secrets.iter().map(String::as_str).collect();
                    asks.push_str(&format!(" secrets: {}", names.join(", ")));
                }
                let _ = writeln!(out, "  requests:  {}", escape::controls(&asks));
            }
        }
        Body::Tools(tools) => {
            if tools.is_empty() {
                let _ = writeln!(out, "no tools installed");
            }
            for t in tools {
                let storage = match &t.storage {
                    Some(u) => format!(
                        "  data {} of {} ({} of {} inodes)",
                        mib(u.bytes),
                        mib(u.quota_bytes),
                        u.inodes,
                        u.quota_inodes
                    ),
                    None => String::new(),
                };
                let _ = writeln!(
                    out,
                    "{:<24} {:>10} bytes  sha256:{}{storage}",
                    t.name,
                    t.component_bytes,
                    &t.sha256[..16]
                );
            }
        }
        Body::Status(s) => {
            let _ = writeln!(
                out,
                "clawos-wasm-daemon {} (protocol {}), pid {}, up {:.1} s",
                s.version,
                s.protocol,
                s.pid,
                s.uptime_ms as f64 / 1000.0
            );
            let _ = writeln!(out, "tools installed:   {}", s.tools);
            let _ = writeln!(
                out,
                "runs in flight:    {} of {}",
                s.runs_in_flight, s.max_concurrent_runs
            );
            let _ = writeln!(
                out,
                "runs finished:     {} ({} failed)",
                s.runs_total, s.runs_failed
            );
            let _ = writeln!(
                out,
                "requests answered: {} ({} malformed)",
                s.requests_total, s.protocol_errors
            );
            let _ = writeln!(out, "connections open:  {}", s.connections);
            let w = &s.workers;
            let _ = writeln!(
                out,
                "workers ready:     {} of {} ({} being replaced by workers with a newer tool; runs that found one {}, that waited for one {}; {} found dead and replaced)",
                w.ready, w.size, w.behind, w.hits, w.misses, w.died
            );
            let _ = writeln!(
                out,
                "per instance:      memory {} MiB, cpu budget {} ms",
                s.memory_limit_bytes >> 20,
                s.cpu_budget_ms
            );
            match &s.clawfs {
                Some(c) => {
                    let _ = writeln!(
                        out,
                        "clawfs:            tools hold {}; free {} and {} inodes, {} more kept for installs",
                        mib(c.tools_bytes),
                        mib(c.free_bytes),
                        c.free_inodes,
                        mib(c.reserved_bytes)
                    );
                    let _ = writeln!(
                        out,
                        "per tool:          storage {}, {} inodes",
                        mib(c.quota_bytes),
                        c.quota_inodes
                    );
                }
                None => {
                    let _ = writeln!(out, "clawfs quotas:     none (development host)");
                }
            }
            match &s.monitor {
                Some(m) => {
                    let programs: Vec<String> = m
                        .programs
                        .iter()
                        .map(|p| format!("{} (id {})", p.hook, p.id))
                        .collect();
                    let _ = writeln!(out, "ebpf programs:     {}", programs.join(", "));
                    let _ = writeln!(
                        out,
                        "ebpf events:       {} for {} operations ({} lost)",
                        m.events, m.operations, m.lost
                    );
                    let alerts: Vec<String> = m
                        .alerts
                        .iter()
                        .map(|(rule, n)| format!("{rule} {n}"))
                        .collect();
                    let _ = writeln!(
                        out,
                        "alerts:            {} ({} instances killed)",
                        alerts.join(", "),
                        m.kills
                    );
                }
                None => {
                    let _ = writeln!(out, "ebpf programs:     none (development host)");
                }
            }
        }
        Body::Empty => {}
    }
    if resp.code != Code::Success {
        eprintln!(
            "clawosctl: {}: {}",
            resp.code,
            escape::controls(&resp.message)
        );
    }
}

/// Bytes as MiB with one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_s_arguments_parse() {
        // Arguments of a subcommand share ids with the global options
        // (`--key`): a clash panics at parse time, not at build time.
        for args in [
            &["clawosctl", "secret", "set", "t", "TOKEN"][..],
            &["clawosctl", "secret", "unset", "t", "TOKEN"],
            &["clawosctl", "grant", "t", "net=10.0.0.0/8:5432"],
            &["clawosctl", "revoke", "t", "net"],
            &["clawosctl", "show", "t"],
            &[
                "clawosctl",
                "install",
                "t",
                "f.wasm",
                "--grant",
                "device=null",
                "--grant-requested",
            ],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            // (A set reads standard input, an install its file.)
            if !matches!(
                cli.command,
                Command::Secret(SecretCommand::Set { .. }) | Command::Install { .. }
            ) {
                request(&cli).unwrap_or_else(|e| panic!("{args:?}: {}", e.message));
            }
        }
    }
}
