//! ferry: the command-line client. Every command is one API call to ferryd.

mod client;
mod migrate;
mod output;
mod registry;
mod run;

use ferry_core::migration::commit::Decision;
use ferry_core::migration::record::MigrationRecord;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ferry_core::api::*;
use ferry_core::container::ContainerRecord;
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::json;

use client::Client;

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
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
    /// Machine-readable output.
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
    Ps {
        /// Include stopped containers.
        #[arg(short, long)]
        all: bool,
    },
    /// Print a container's output.
    Logs {
        name: String,
        #[arg(short, long)]
        follow: bool,
        /// Prefix each line with its time and stream.
        #[arg(short, long)]
        timestamps: bool,
    },
    /// Start a stopped container.
    Start { name: String },
    /// Stop a container (SIGTERM, then SIGKILL after the timeout).
    Stop {
        name: String,
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
    /// Remove a container.
    Rm {
        names: Vec<String>,
        #[arg(short, long)]
        force: bool,
    },
    /// Show a container's full record.
    Inspect { name: String },
    /// Freeze a running container into a checkpoint (CRIU), optionally exported to a file.
    Checkpoint(CheckpointArgs),
    /// Bring back a container from a checkpoint or an exported archive.
    Restore(RestoreArgs),
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

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct CheckpointArgs {
    #[command(subcommand)]
    sub: Option<CheckpointSub>,
    /// The container to checkpoint.
    container: Option<String>,
    /// Keep the container running after the checkpoint.
    #[arg(long)]
    leave_running: bool,
    /// Name of the checkpoint (default: a timestamp).
    #[arg(long)]
    name: Option<String>,
    /// Also write the checkpoint to this archive file.
    #[arg(long)]
    export: Option<PathBuf>,
    /// Also make the checkpoint an image with this name, in the format Podman's
    /// `--create-image` writes and CRI-O restores from; `ferry restore IMAGE` restores it.
    #[arg(long, value_name = "REF")]
    create_image: Option<String>,
    /// Encrypt the exported archive (ChaCha20-Poly1305) with the 32-byte key in KEYFILE
    /// (64 hex digits, mode 0600; e.g. `openssl rand -hex 32 > key && chmod 600 key`).
    #[arg(long, value_name = "KEYFILE", requires = "export")]
    encrypt: Option<PathBuf>,
    /// Archive compression: zstd or none.
    #[arg(long, default_value = "zstd")]
    compress: String,
    /// Print CRIU's statistics.
    #[arg(long)]
    print_stats: bool,
}

#[derive(Subcommand, Debug)]
enum CheckpointSub {
    /// List checkpoints, of one container or of all.
    Ls { container: Option<String> },
    /// Remove a checkpoint.
    Rm { container: String, snapshot: String },
}

#[derive(clap::Args, Debug)]
struct RestoreArgs {
    /// The container to restore, or a checkpoint image (ferry's or Podman's) to create one
    /// from (not with --import).
    container: Option<String>,
    /// Checkpoint to restore (default: the newest).
    #[arg(long)]
    from: Option<String>,
    /// Create a container from an exported archive.
    #[arg(long)]
    import: Option<PathBuf>,
    /// With --import or an image: a new name.
    #[arg(long)]
    name: Option<String>,
    /// With --import or an image: a new IP (impossible if the checkpoint holds established TCP
    /// connections).
    #[arg(long)]
    ip: Option<String>,
    /// With --import: the key file of an encrypted archive (see `checkpoint --encrypt`).
    #[arg(long, value_name = "KEYFILE", requires = "import")]
    decrypt: Option<PathBuf>,
    /// Print CRIU's statistics.
    #[arg(long)]
    print_stats: bool,
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
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("ferry: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let c = Client::new(cli.socket.clone());
    let json = cli.json;
    match cli.cmd {
        Cmd::Info => {
            let info: Info = c.call(Method::GET, "/v1/info", None::<()>).await?;
            output::print_json(&info)?;
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
                println!("{}", img.id);
            }
        }
        Cmd::Image(ImageCmd::Save { image, output }) => {
            let req = SaveImageRequest {
                path: absolute(&output)?,
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
                println!("saved {} ({}) to {}", rep.reference, rep.id, rep.path);
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
                println!("removed {}", img.id);
            }
        }
        Cmd::Run(a) => run::run(&cli.socket, *a, json).await?,
        Cmd::Ps { all } => {
            let list: Vec<ContainerRecord> =
                c.call(Method::GET, "/v1/containers", None::<()>).await?;
            let list: Vec<_> = list
                .into_iter()
                // Live ones, and those a failed migration left in error: never hide those.
                .filter(|r| {
                    use ferry_core::container::Status;
                    all || matches!(
                        r.status,
                        Status::Running | Status::Migrating | Status::Error
                    )
                })
                .collect();
            if json {
                output::print_json(&list)?;
            } else {
                output::containers_table(&list);
            }
        }
        Cmd::Logs {
            name,
            follow,
            timestamps,
        } => logs(&c, &name, follow, timestamps).await?,
        Cmd::Start { name } => {
            let rec: ContainerRecord = c
                .call(
                    Method::POST,
                    &format!("/v1/containers/{}/start", enc(&name)),
                    Some(json!({})),
                )
                .await?;
            output::record_or_name(json, &rec)?;
        }
        Cmd::Stop { name, time } => {
            let rec: ContainerRecord = c
                .call(
                    Method::POST,
                    &format!("/v1/containers/{}/stop", enc(&name)),
                    Some(StopRequest {
                        timeout: Some(time),
                    }),
                )
                .await?;
            output::record_or_name(json, &rec)?;
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
            if !json {
                println!("{name}");
            }
        }
        Cmd::Rm { names, force } => {
            anyhow::ensure!(!names.is_empty(), "give at least one container name");
            for name in names {
                let rec: ContainerRecord = c
                    .call(
                        Method::DELETE,
                        &format!("/v1/containers/{}?force={force}", enc(&name)),
                        None::<()>,
                    )
                    .await?;
                output::record_or_name(json, &rec)?;
            }
        }
        Cmd::Checkpoint(a) => checkpoint(&c, a, json).await?,
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
                println!("{} {}", e.name, e.addr);
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
                println!("{} {}", rec.migration_id, rec.stage);
            }
        }
        Cmd::Host(HostCmd::Ls) => {
            let list: Vec<HostEntry> = c.call(Method::GET, "/v1/hosts", None::<()>).await?;
            if json {
                output::print_json(&list)?;
            } else {
                println!("{:<20} ADDRESS", "NAME");
                for h in list {
                    println!("{:<20} {}", h.name, h.addr);
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
        }
        Cmd::Ca(CaCmd::Init { dir }) => {
            ferry_core::peer::tls::ClusterCa::create(&dir)?;
            if !json {
                println!("created cluster CA in {}", dir.display());
            }
        }
        Cmd::Ca(CaCmd::Issue { dir, name, ip, out }) => {
            let ca = ferry_core::peer::tls::ClusterCa::load(&dir)?;
            ca.issue_host(&name, &ip, &out)?;
            if !json {
                println!("issued certificate for {name} into {}", out.display());
            }
        }
        Cmd::Restore(a) => restore(&c, a, json).await?,
        Cmd::Pull(a) | Cmd::Image(ImageCmd::Pull(a)) => registry::pull(&c, a, json).await?,
        Cmd::Push(a) | Cmd::Image(ImageCmd::Push(a)) => registry::push(&c, a, json).await?,
        Cmd::Tag { image, name } | Cmd::Image(ImageCmd::Tag { image, name }) => {
            registry::tag(&c, image, name, json).await?
        }
        Cmd::Image(ImageCmd::Inspect { reference }) => registry::inspect(&c, reference).await?,
        Cmd::Login(a) => registry::login(&c, a, json).await?,
        Cmd::Logout { registry } => registry::logout(&c, registry, json).await?,
        Cmd::Inspect { name } => {
            let rec: ContainerRecord = c
                .call(
                    Method::GET,
                    &format!("/v1/containers/{}", enc(&name)),
                    None::<()>,
                )
                .await?;
            output::print_json(&rec)?;
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

async fn logs(c: &Client, name: &str, follow: bool, timestamps: bool) -> Result<()> {
    use std::io::Write;
    let resp = c
        .send(
            Method::GET,
            &format!("/v1/containers/{}/logs?follow={follow}", enc(name)),
            None,
        )
        .await?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let bytes = body.collect().await?.to_bytes();
        return Err(client::api_error(&bytes, status));
    }
    let mut pending: Vec<u8> = Vec::new();
    let stdout = std::io::stdout();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        let mut out = stdout.lock();
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            out.write_all(&output::render_log_line(&line, timestamps))?;
        }
        out.flush()?;
    }
    if !pending.is_empty() {
        stdout
            .lock()
            .write_all(&output::render_log_line(&pending, timestamps))?;
    }
    Ok(())
}

async fn checkpoint(c: &Client, a: CheckpointArgs, json: bool) -> Result<()> {
    use ferry_core::container::checkpoint::{CheckpointReport, CheckpointRequest, SnapshotInfo};
    match a.sub {
        Some(CheckpointSub::Ls { container }) => {
            let q = container
                .map(|n| format!("?container={}", enc(&n)))
                .unwrap_or_default();
            let list: Vec<SnapshotInfo> = c
                .call(Method::GET, &format!("/v1/checkpoints{q}"), None::<()>)
                .await?;
            if json {
                output::print_json(&list)?;
            } else {
                output::checkpoints_table(&list);
            }
        }
        Some(CheckpointSub::Rm {
            container,
            snapshot,
        }) => {
            let _: serde_json::Value = c
                .call(
                    Method::DELETE,
                    &format!(
                        "/v1/containers/{}/checkpoints/{}",
                        enc(&container),
                        enc(&snapshot)
                    ),
                    None::<()>,
                )
                .await?;
            if !json {
                println!("removed {container}/{snapshot}");
            }
        }
        None => {
            let name = a
                .container
                .context("give the container to checkpoint (or `ls` / `rm`)")?;
            let export = match a.export {
                Some(p) => Some(absolute(&p)?),
                None => None,
            };
            let req = CheckpointRequest {
                leave_running: a.leave_running,
                name: a.name,
                export,
                create_image: a.create_image,
                encrypt: a.encrypt.as_deref().map(absolute).transpose()?,
                compress: Some(a.compress),
            };
            let rep: CheckpointReport = c
                .call(
                    Method::POST,
                    &format!("/v1/containers/{}/checkpoint", enc(&name)),
                    Some(req),
                )
                .await?;
            if json {
                output::print_json(&rep)?;
            } else {
                println!("{}/{}", rep.container, rep.snapshot);
                if let Some(e) = &rep.exported {
                    println!("exported to {e}");
                }
                if let Some(i) = &rep.image {
                    println!("checkpoint image {i}");
                }
                if a.print_stats {
                    output::checkpoint_stats(&rep);
                }
            }
        }
    }
    Ok(())
}

async fn restore(c: &Client, a: RestoreArgs, json: bool) -> Result<()> {
    use ferry_core::container::checkpoint::{RestoreReport, RestoreRequest};
    let import = match &a.import {
        Some(p) => Some(absolute(p)?),
        None => None,
    };
    let req = RestoreRequest {
        from: a.from,
        import,
        name: a.name,
        ip: a.ip,
        decrypt: a.decrypt.as_deref().map(absolute).transpose()?,
    };
    let path = match (&req.import, &a.container) {
        (Some(_), None) => "/v1/restore".to_owned(),
        (Some(_), Some(_)) => anyhow::bail!(
            "give either a container or --import FILE, not both (use --name for a new name)"
        ),
        (None, Some(n)) => format!("/v1/containers/{}/restore", enc(n)),
        (None, None) => anyhow::bail!("give the container to restore, or --import FILE"),
    };
    let rep: RestoreReport = c.call(Method::POST, &path, Some(req)).await?;
    if json {
        output::print_json(&rep)?;
    } else {
        println!("{}", rep.container);
        if a.print_stats {
            output::restore_stats(&rep);
        }
    }
    Ok(())
}

fn absolute(p: &std::path::Path) -> Result<String> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    Ok(abs.display().to_string())
}
