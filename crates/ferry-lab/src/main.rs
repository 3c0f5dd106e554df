//! `ferry-lab`: bring a multi-host ferry lab up or down on this machine, inspect it, and run
//! commands on its hosts or its client.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ferry_lab::{info_ok, HostHandle, Lab, LabConfig, LabState, CLIENT_ADDRESS, DEFAULT_PREFIX};

#[derive(Parser)]
#[command(about = "A multi-host ferry lab in network namespaces on one machine")]
struct Cli {
    /// Lab directory (host state, sockets, logs).
    #[arg(long, global = true, default_value = "/run/ferry-lab")]
    dir: PathBuf,
    /// Prefix of the lab's netns and cgroup names (used when the lab dir has no record).
    #[arg(long, global = true, default_value = DEFAULT_PREFIX)]
    prefix: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the lab and start a ferryd per host.
    Up {
        #[arg(long, default_value_t = 2)]
        hosts: usize,
        /// Build only the network (no ferryd, no certificates).
        #[arg(long)]
        no_daemons: bool,
        /// Seconds to wait for each ferryd to answer.
        #[arg(long, default_value_t = 30)]
        ready_timeout: u64,
    },
    /// Tear the lab down (also after a crashed run). Idempotent.
    Down {
        /// Also delete the lab directory (host roots and logs).
        #[arg(long)]
        purge: bool,
    },
    /// Show hosts, addresses, ferryd pids and whether they answer.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a host's netns and its ferryd's mount namespace, with FERRY_SOCKET set.
    Exec {
        host: String,
        #[arg(last = true, required = true)]
        cmd: Vec<OsString>,
    },
    /// Run a command in the client netns.
    Client {
        #[arg(last = true, required = true)]
        cmd: Vec<OsString>,
    },
    /// Keep writing to Redis from the client netns over persistent connections until STOP_FILE
    /// exists; then check every acknowledged write and print a summary (JSON with --json).
    RedisLoad {
        #[arg(long)]
        ip: String,
        #[arg(long, default_value_t = 2)]
        connections: usize,
        #[arg(long)]
        stop_file: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Build a test image as an OCI layout from this machine's binaries: busybox or redis.
    Mkimage {
        kind: String,
        out: std::path::PathBuf,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,netlink_packet_route=error")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(&Cli::parse()) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ferry-lab: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The recorded lab in `dir`, or one made of the defaults for cleaning up after a crash.
fn recorded(cli: &Cli) -> Result<Option<LabState>> {
    LabState::load(&cli.dir)
}

fn require_lab(cli: &Cli) -> Result<LabState> {
    recorded(cli)?.with_context(|| format!("no lab at {} (run ferry-lab up)", cli.dir.display()))
}

fn run(cli: &Cli) -> Result<i32> {
    match &cli.cmd {
        Cmd::Up {
            hosts,
            no_daemons,
            ready_timeout,
        } => {
            let mut cfg = LabConfig::new(&cli.dir, *hosts);
            cfg.prefix = cli.prefix.clone();
            cfg.daemons = !no_daemons;
            cfg.ready_timeout = Duration::from_secs(*ready_timeout);
            let lab = Lab::up_with(cfg)?;
            for h in lab.hosts() {
                println!("{}  {}  socket {}", h.name, h.address, h.socket.display());
            }
            println!("client  {CLIENT_ADDRESS}");
            lab.keep();
            Ok(0)
        }
        Cmd::Down { purge } => {
            let state = match recorded(cli)? {
                Some(s) => s,
                // No record: clean what a lab with this prefix could have left.
                None => LabState::new(&cli.dir, &cli.prefix, ferry_lab::MAX_HOSTS, false)?,
            };
            let warnings = ferry_lab::teardown(&state, *purge);
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            Ok(0)
        }
        Cmd::Status { json } => {
            let Some(state) = recorded(cli)? else {
                if *json {
                    println!("{}", serde_json::json!({ "up": false, "dir": cli.dir }));
                } else {
                    println!("no lab at {}", cli.dir.display());
                }
                return Ok(0);
            };
            status(&state, *json);
            Ok(0)
        }
        Cmd::Exec { host, cmd } => {
            let state = require_lab(cli)?;
            let Some(h) = state.all_hosts().into_iter().find(|h| &h.name == host) else {
                bail!("no host {host} in the lab at {}", cli.dir.display());
            };
            let mut c = ferry_lab::host_command(&h, &cmd[0]);
            c.args(&cmd[1..]);
            wait_code(c)
        }
        Cmd::RedisLoad {
            ip,
            connections,
            stop_file,
            json,
        } => {
            let state = require_lab(cli)?;
            redis_load(&state, ip, *connections, stop_file, *json)
        }
        Cmd::Mkimage { kind, out } => {
            use ferry_core::image::fixture::{build_layout, FixtureSpec};
            let spec = match kind.as_str() {
                "busybox" => FixtureSpec::busybox(),
                "redis" => FixtureSpec::redis(),
                other => anyhow::bail!("unknown image kind {other:?}: use busybox or redis"),
            }?;
            let digest = build_layout(out, &spec)?;
            println!("{digest}");
            Ok(0)
        }
        Cmd::Client { cmd } => {
            let state = require_lab(cli)?;
            let mut c = ferry_lab::client_command(&state, &cmd[0]);
            c.args(&cmd[1..]);
            wait_code(c)
        }
    }
}

fn wait_code(mut c: std::process::Command) -> Result<i32> {
    let status = c
        .status()
        .with_context(|| format!("running {:?}", c.get_program()))?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

fn host_status(h: &HostHandle) -> serde_json::Value {
    let pid = h.pid();
    let running = pid.is_some_and(|p| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
            .unwrap_or(false)
    });
    serde_json::json!({
        "name": h.name,
        "address": h.address.to_string(),
        "netns": h.netns_path,
        "netns_present": h.netns_path.exists(),
        "socket": h.socket,
        "root": h.root,
        "log": h.log,
        "pid": pid,
        "running": running,
        "ready": running && info_ok(&h.socket),
    })
}

fn status(state: &LabState, json: bool) {
    let hosts: Vec<_> = state.all_hosts().iter().map(host_status).collect();
    if json {
        let v = serde_json::json!({
            "up": true,
            "dir": state.dir,
            "prefix": state.prefix,
            "daemons": state.daemons,
            "client": { "address": CLIENT_ADDRESS.to_string(), "netns": state.client_netns(),
                        "netns_present": state.client_netns().exists() },
            "fabric_netns": state.fabric_netns(),
            "hosts": hosts,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("status serializes")
        );
        return;
    }
    println!("lab {} (prefix {})", state.dir.display(), state.prefix);
    println!(
        "{:<8} {:<12} {:<8} {:<8} {:<6} SOCKET",
        "HOST", "ADDRESS", "NETNS", "PID", "STATE"
    );
    for h in &hosts {
        let state = match (h["running"].as_bool(), h["ready"].as_bool()) {
            (Some(true), Some(true)) => "up",
            (Some(true), _) => "busy",
            _ => "down",
        };
        println!(
            "{:<8} {:<12} {:<8} {:<8} {:<6} {}",
            h["name"].as_str().unwrap_or(""),
            h["address"].as_str().unwrap_or(""),
            if h["netns_present"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            h["pid"].as_i64().map_or("-".to_string(), |p| p.to_string()),
            state,
            h["socket"].as_str().unwrap_or(""),
        );
    }
    println!(
        "client   {:<12} {:<8}",
        CLIENT_ADDRESS,
        if state.client_netns().exists() {
            "yes"
        } else {
            "no"
        }
    );
}

/// The demo's client: writers on persistent connections, verified at the end.
fn redis_load(
    state: &LabState,
    ip: &str,
    connections: usize,
    stop_file: &std::path::Path,
    json: bool,
) -> Result<i32> {
    use ferry_lab::workload::redis::RedisConn;
    use ferry_lab::workload::writer::{count_lost_keyed, verify_acked_keyed, Writer};
    let ns = state.client_netns().display().to_string();
    // A fresh key space per run, so a second run does not meet the first one's counters.
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let mut writers = Vec::new();
    for i in 0..connections {
        let conn =
            RedisConn::connect(&ns, ip).with_context(|| format!("connecting to {ip}:6379"))?;
        let port = conn.local_port;
        let prefix = format!("load-{run}-{i}:");
        let w = Writer::start_keyed(conn, &prefix, Duration::from_millis(2));
        writers.push((prefix, port, w));
    }
    while !stop_file.exists() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut results = Vec::new();
    let mut ok = true;
    for (prefix, port, w) in writers {
        let mut r = w.stop();
        let verified = r.error.is_none()
            && r.conn.local_port == port
            && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                verify_acked_keyed(&mut r.conn, &prefix, r.acked_sets, r.acked_incrs)
            }))
            .is_ok();
        ok &= verified;
        // Counted only when the check failed: over the writer's connection if it still
        // works, else over a fresh one (a reset connection). None: the server did not answer.
        let lost = if verified {
            Some(0)
        } else {
            let counted = if r.error.is_none() {
                count_lost_keyed(&mut r.conn, &prefix, r.acked_sets, r.acked_incrs).ok()
            } else {
                None
            };
            counted
                .or_else(|| {
                    RedisConn::connect(&ns, ip).ok().and_then(|mut c| {
                        count_lost_keyed(&mut c, &prefix, r.acked_sets, r.acked_incrs).ok()
                    })
                })
                .map(|l| l.total())
        };
        results.push(serde_json::json!({
            "connection": prefix.trim_end_matches(':'),
            "local_port": port,
            "acked_sets": r.acked_sets,
            "acked_incrs": r.acked_incrs,
            "longest_stall_ms": r.longest_stall.as_millis() as u64,
            "error": r.error,
            "all_acknowledged_writes_present": verified,
            "lost_acknowledged_writes": lost,
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for r in &results {
            println!(
                "client {}: port {}, {} SETs + {} INCRs acknowledged, longest stall {} ms, same connection, {}",
                r["connection"].as_str().unwrap_or(""),
                r["local_port"],
                r["acked_sets"],
                r["acked_incrs"],
                r["longest_stall_ms"],
                if r["all_acknowledged_writes_present"] == true {
                    "every acknowledged write present"
                } else {
                    "VERIFICATION FAILED"
                }
            );
            if let Some(e) = r["error"].as_str() {
                println!("  error: {e}");
            }
        }
    }
    Ok(if ok { 0 } else { 1 })
}
