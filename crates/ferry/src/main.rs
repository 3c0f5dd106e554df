//! ferry: the command-line client. Every command is one API call to ferryd.

#[macro_use]
mod out;
mod attach;
mod checkpoint;
mod client;
mod error;
mod exec;
mod logs;
mod migrate;
mod names;
mod ops;
mod output;
mod ps;
mod registry;
mod run;
mod volume;
mod watch;

use ferry_core::migration::commit::Decision;
use ferry_core::migration::record::MigrationRecord;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ferry_core::api::*;
use ferry_core::container::ContainerRecord;
use hyper::Method;
use serde_json::json;

use client::Client;

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    after_help = "With --json, every command prints JSON on stdout, errors included: \
{\"error\": {\"kind\": KIND, \"message\": TEXT}} with a non-zero exit. Containers are named by \
name, ID or any unique ID prefix.",
    version,
    about = "ferry: containers that move between hosts while they run"
)]
struct Cli {
    /// ferryd's API socket.
    #[arg(
        long,
        global = true,
        env = "FERRY_SOCKET",
        default_value = "/run/ferry/ferry.sock"
    )]
    socket: PathBuf,
    /// Machine-readable output (JSON on stdout), errors included.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Show the daemon's host, versions and CRIU capabilities.
    Info,
    /// Manage images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Create and start a container.
    Run(Box<run::RunArgs>),
    /// List containers.
    Ps(ps::PsArgs),
    /// Print a container's output.
    Logs(logs::LogsArgs),
    /// Start stopped containers.
    Start {
        /// Containers (names, IDs or ID prefixes).
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stop containers (SIGTERM, then SIGKILL after the timeout).
    Stop {
        /// Containers (names, IDs or ID prefixes).
        #[arg(required = true)]
        names: Vec<String>,
        /// Seconds to wait after SIGTERM.
        #[arg(short, long, default_value_t = 10)]
        time: u64,
    },
    /// Send a signal to a container's main process (PID 1), or with --all to all its processes.
    Kill {
        name: String,
        /// KILL, SIGKILL or 9; any signal name or number.
        #[arg(short, long, default_value = "SIGKILL")]
        signal: String,
        /// Signal every process in the container, not only its main process.
        #[arg(short, long)]
        all: bool,
    },
    /// Remove containers.
    Rm {
        /// Containers (names, IDs or ID prefixes).
        #[arg(required = true)]
        names: Vec<String>,
        /// Kill running containers first.
        #[arg(short, long)]
        force: bool,
    },
    /// Show containers' full records (one name: the record; several: an array).
    Inspect {
        /// Containers (names, IDs or ID prefixes).
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Freeze a running container into a checkpoint (CRIU), optionally exported to a file;
    /// `checkpoint list` and `checkpoint remove` manage checkpoints.
    Checkpoint(checkpoint::CheckpointArgs),
    /// Bring back a container from a checkpoint or an exported archive.
    Restore(checkpoint::RestoreArgs),
    /// Manage named volumes.
    #[command(subcommand)]
    Volume(volume::VolumeCmd),
    /// Container and migration events as they happen (until interrupted).
    Events(watch::EventsArgs),
    /// CPU, memory, network and tasks of running containers, every second.
    Stats(watch::StatsArgs),
    /// Print a shell completion script: `ferry completion bash > /etc/bash_completion.d/ferry`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (ferry.1 and one per subcommand) into a directory.
    Man {
        /// The directory, e.g. /usr/local/share/man/man1.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run a command in a running container; exits with the command's exit code.
    Exec(exec::ExecArgs),
    /// Attach this terminal to a running container's pty or output (detach: Ctrl-P Ctrl-Q).
    Attach(attach::AttachArgs),
    /// Move a running container to another host while its clients keep working.
    Migrate {
        name: String,
        /// The destination, as registered with `ferry host add`.
        #[arg(long)]
        to: String,
        /// stop-copy: all memory moves while the container is frozen. lazy (post-copy): the
        /// container resumes on the destination at once and its memory follows; if the source
        /// or the link dies before the last page, the container is lost (see README). auto:
        /// lazy for big containers on hosts that support it.
        #[arg(long, value_parser = ["stop-copy", "lazy", "auto", "pre-copy"], default_value = "auto")]
        mode: String,
    },
    /// Migrations this host took part in, and the operator's way out of an in-doubt one.
    #[command(subcommand)]
    Migration(MigrationCmd),
    /// Peer hosts this host can migrate to.
    #[command(subcommand)]
    Host(HostCmd),
    /// The cluster certificate authority (local files; no daemon needed).
    #[command(subcommand)]
    Ca(CaCmd),
    /// Pull an image from a registry (same as `ferry image pull`).
    Pull(registry::PullArgs),
    /// Push an image to a registry (same as `ferry image push`).
    Push(registry::PushArgs),
    /// Give an image another name (same as `ferry image tag`).
    Tag { image: String, name: String },
    /// Check credentials with a registry; ferryd keeps them in <root>/auth.json (0600).
    Login(registry::LoginArgs),
    /// Forget a registry's credentials.
    Logout { registry: String },
}

#[derive(Subcommand, Debug)]
enum MigrationCmd {
    /// List this host's migration records (role, stage, container, peer).
    Ls,
    /// End an in-doubt migration by hand, when its peer cannot be reached. Run it on both
    /// hosts with the same choice. Pick --keep-destination only if the destination copy runs
    /// (its `ferry migration ls` says committed or restored); otherwise --resume-source.
    #[command(group(clap::ArgGroup::new("decision").required(true)))]
    Resolve {
        id: String,
        /// The container keeps running here (source) / the copy is discarded (destination).
        #[arg(long, group = "decision")]
        resume_source: bool,
        /// The container lives on the destination: the frozen source is discarded.
        #[arg(long, group = "decision")]
        keep_destination: bool,
    },
}

#[derive(Subcommand, Debug)]
enum HostCmd {
    /// Register a peer host: NAME and ADDR (IP:PORT of its --peer-listen).
    Add { name: String, addr: String },
    /// List peer hosts.
    Ls,
    /// Forget a peer host.
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
enum CaCmd {
    /// Create a cluster CA in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a host certificate signed by the CA into OUT (a host's <root>/tls).
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        /// The host's peer IP addresses.
        #[arg(long)]
        ip: Vec<std::net::IpAddr>,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum ImageCmd {
    /// Import an OCI image layout (dir or tar) or a rootfs tarball.
    Import {
        path: PathBuf,
        #[arg(long)]
        name: Option<String>,
    },
    /// Write an image as an OCI archive (for `podman load`, skopeo, `ferry image import`).
    Save {
        image: String,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// List images.
    Ls,
    /// Remove an image.
    Rm { reference: String },
    /// Pull an image from a registry.
    Pull(registry::PullArgs),
    /// Push an image to a registry.
    Push(registry::PushArgs),
    /// Give an image another name.
    Tag { image: String, name: String },
    /// Show an image's record as JSON: names, registry source, digests, layers, config.
    Inspect { reference: String },
}

pub(crate) fn parse_bytes(s: &str) -> Result<i64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last().map(|c| c.to_ascii_lowercase()) {
        Some('k') => (&s[..s.len() - 1], 1i64 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: i64 = num
        .parse()
        .with_context(|| format!("invalid size {s:?}: expected bytes, optionally with k/m/g"))?;
    n.checked_mul(mult).context("size too large")
}

fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Known before parsing, so a command line clap refuses is reported as JSON too.
    let json = argv.iter().any(|a| a == "--json");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let e = anyhow::Error::new(e).context("starting the async runtime");
            std::process::exit(error::report(&e, json));
        }
    };
    let result = rt.block_on(async {
        let cli = parse(argv, json).await?;
        run(cli).await
    });
    if let Err(e) = result {
        std::process::exit(error::report(&e, json));
    }
}

/// Parses the command line. `checkpoint ls|rm` names the container `ls` or `rm` when one
/// exists (see `checkpoint::container_form`), so a subcommand never hides a container.
async fn parse(argv: Vec<std::ffi::OsString>, json: bool) -> Result<Cli> {
    let first = Cli::try_parse_from(&argv);
    if let Some((alt_argv, name)) = checkpoint::container_form(&argv) {
        if let Ok(alt) = Cli::try_parse_from(&alt_argv) {
            let c = Client::new(alt.socket.clone());
            let found: Result<ContainerRecord> = c
                .call(
                    Method::GET,
                    &format!("/v1/containers/{}", enc(&name)),
                    None::<()>,
                )
                .await;
            if found.is_ok_and(|r| r.config.name == name) {
                return Ok(alt);
            }
        }
    }
    first.map_err(|e| {
        if !json {
            // clap's own report (usage, suggestions, colours) and exit code; help and
            // version are answers, not failures, and exit 0.
            e.exit();
        }
        if !e.use_stderr() {
            let _ = e.print();
            std::process::exit(0);
        }
        let msg = e.render().to_string();
        // The message without the usage lines that follow it.
        let msg = msg.split("\n\nUsage:").next().unwrap_or_default();
        let msg = msg.trim().trim_start_matches("error: ").to_owned();
        error::CliError::new("usage", msg).into()
    })
}

async fn run(cli: Cli) -> Result<()> {
    let c = Client::new(cli.socket.clone());
    let json = cli.json;
    match cli.cmd {
        Cmd::Info => {
            let info: Info = c.call(Method::GET, "/v1/info", None::<()>).await?;
            if json {
                output::print_json(&info)?;
            } else {
                output::info(&info);
            }
        }
        Cmd::Image(ImageCmd::Import { path, name }) => {
            let path = std::fs::canonicalize(&path)
                .with_context(|| format!("{} does not exist", path.display()))?;
            let req = ImportImageRequest {
                path: path.display().to_string(),
                name,
            };
            let img: ImageSummary = c.call(Method::POST, "/v1/images/import", Some(req)).await?;
            if json {
                output::print_json(&img)?;
            } else {
                outln!("{}", img.id);
            }
        }
        Cmd::Image(ImageCmd::Save { image, output }) => {
            let req = SaveImageRequest {
                path: checkpoint::absolute(&output)?,
            };
            let rep: SaveImageReport = c
                .call(
                    Method::POST,
                    &format!("/v1/images/{}/save", enc(&image)),
                    Some(req),
                )
                .await?;
            if json {
                output::print_json(&rep)?;
            } else {
                outln!("saved {} ({}) to {}", rep.reference, rep.id, rep.path);
            }
        }
        Cmd::Image(ImageCmd::Ls) => {
            let list: Vec<ImageSummary> = c.call(Method::GET, "/v1/images", None::<()>).await?;
            if json {
                output::print_json(&list)?;
            } else {
                output::images_table(&list);
            }
        }
        Cmd::Image(ImageCmd::Rm { reference }) => {
            let img: ImageSummary = c
                .call(
                    Method::DELETE,
                    &format!("/v1/images/{}", enc(&reference)),
                    None::<()>,
                )
                .await?;
            if json {
                output::print_json(&img)?;
            } else {
                outln!("removed {}", img.id);
            }
        }
        Cmd::Run(a) => run::run(&cli.socket, *a, json).await?,
        Cmd::Exec(a) => std::process::exit(exec::run(&cli.socket, a).await?),
        Cmd::Attach(a) => std::process::exit(attach::run(&cli.socket, a).await?),
        Cmd::Ps(a) => ps::run(&c, a, json).await?,
        Cmd::Logs(a) => {
            let o = a.options(json)?;
            logs::print(&c, &a.name, &o).await?;
        }
        Cmd::Start { names } => {
            names::each(&names, json, names::Human::Name, |name| {
                let c = &c;
                async move {
                    c.call(
                        Method::POST,
                        &format!("/v1/containers/{}/start", enc(&name)),
                        Some(json!({})),
                    )
                    .await
                }
            })
            .await?
        }
        Cmd::Stop { names, time } => {
            names::each(&names, json, names::Human::Name, |name| {
                let c = &c;
                async move {
                    c.call(
                        Method::POST,
                        &format!("/v1/containers/{}/stop", enc(&name)),
                        Some(StopRequest {
                            timeout: Some(time),
                        }),
                    )
                    .await
                }
            })
            .await?
        }
        Cmd::Kill { name, signal, all } => {
            let _: serde_json::Value = c
                .call(
                    Method::POST,
                    &format!("/v1/containers/{}/kill", enc(&name)),
                    Some(KillRequest {
                        signal: Some(signal),
                        all,
                    }),
                )
                .await?;
            if json {
                output::print_json(&json!({ "name": name, "signal": "sent" }))?;
            } else {
                outln!("{name}");
            }
        }
        Cmd::Rm { names, force } => {
            names::each(&names, json, names::Human::Name, |name| {
                let c = &c;
                async move {
                    c.call(
                        Method::DELETE,
                        &format!("/v1/containers/{}?force={force}", enc(&name)),
                        None::<()>,
                    )
                    .await
                }
            })
            .await?
        }
        Cmd::Checkpoint(a) => checkpoint::checkpoint(&c, a, json).await?,
        Cmd::Volume(cmd) => volume::run(&c, cmd, json).await?,
        Cmd::Events(a) => watch::events(&c, a, json).await?,
        Cmd::Stats(a) => watch::stats(&c, a, json).await?,
        Cmd::Completion { shell } => ops::completion(shell),
        Cmd::Man { out } => {
            let files = ops::man_pages(&out)?;
            if json {
                output::print_json(&files)?;
            } else {
                outln!("wrote {} man pages into {}", files.len(), out.display());
            }
        }
        Cmd::Migrate { name, to, mode } => migrate::run(&c, &name, &to, &mode, json).await?,
        Cmd::Host(HostCmd::Add { name, addr }) => {
            let e: HostEntry = c
                .call(
                    Method::POST,
                    "/v1/hosts",
                    Some(HostAddRequest { name, addr }),
                )
                .await?;
            if json {
                output::print_json(&e)?;
            } else {
                outln!("{} {}", e.name, e.addr);
            }
        }
        Cmd::Migration(MigrationCmd::Ls) => {
            let list: Vec<MigrationRecord> =
                c.call(Method::GET, "/v1/migrations", None::<()>).await?;
            if json {
                output::print_json(&list)?;
            } else {
                output::migrations_table(&list);
            }
        }
        Cmd::Migration(MigrationCmd::Resolve {
            id,
            resume_source,
            keep_destination: _,
        }) => {
            let decision = if resume_source {
                Decision::ResumeSource
            } else {
                Decision::KeepDestination
            };
            let rec: MigrationRecord = c
                .call(
                    Method::POST,
                    &format!("/v1/migrations/{}/resolve", enc(&id)),
                    Some(ferry_core::api::ResolveRequest { decision }),
                )
                .await?;
            if json {
                output::print_json(&rec)?;
            } else {
                outln!("{} {}", rec.migration_id, rec.stage);
            }
        }
        Cmd::Host(HostCmd::Ls) => {
            let list: Vec<HostEntry> = c.call(Method::GET, "/v1/hosts", None::<()>).await?;
            if json {
                output::print_json(&list)?;
            } else {
                outln!("{:<20} ADDRESS", "NAME");
                for h in list {
                    outln!("{:<20} {}", h.name, h.addr);
                }
            }
        }
        Cmd::Host(HostCmd::Rm { name }) => {
            let _: serde_json::Value = c
                .call(
                    Method::DELETE,
                    &format!("/v1/hosts/{}", enc(&name)),
                    None::<()>,
                )
                .await?;
            if json {
                output::print_json(&json!({ "removed": name }))?;
            } else {
                outln!("removed host {name}");
            }
        }
        Cmd::Ca(CaCmd::Init { dir }) => {
            ferry_core::peer::tls::ClusterCa::create(&dir)?;
            if json {
                output::print_json(&json!({ "ca": dir }))?;
            } else {
                outln!("created cluster CA in {}", dir.display());
            }
        }
        Cmd::Ca(CaCmd::Issue { dir, name, ip, out }) => {
            let ca = ferry_core::peer::tls::ClusterCa::load(&dir)?;
            ca.issue_host(&name, &ip, &out)?;
            if json {
                output::print_json(&json!({ "issued": name, "out": out }))?;
            } else {
                outln!("issued certificate for {name} into {}", out.display());
            }
        }
        Cmd::Pull(a) | Cmd::Image(ImageCmd::Pull(a)) => registry::pull(&c, a, json).await?,
        Cmd::Push(a) | Cmd::Image(ImageCmd::Push(a)) => registry::push(&c, a, json).await?,
        Cmd::Tag { image, name } | Cmd::Image(ImageCmd::Tag { image, name }) => {
            registry::tag(&c, image, name, json).await?
        }
        Cmd::Image(ImageCmd::Inspect { reference }) => registry::inspect(&c, reference).await?,
        Cmd::Login(a) => registry::login(&c, a, json).await?,
        Cmd::Logout { registry } => registry::logout(&c, registry, json).await?,
        Cmd::Restore(a) => checkpoint::restore(&c, a, json).await?,
        Cmd::Inspect { names } => {
            names::each(&names, json, names::Human::Record, |name| {
                let c = &c;
                async move {
                    c.call(
                        Method::GET,
                        &format!("/v1/containers/{}", enc(&name)),
                        None::<()>,
                    )
                    .await
                }
            })
            .await?
        }
    }
    Ok(())
}

/// Percent-encodes a path segment (names are validated server-side; this keeps odd input intact).
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
