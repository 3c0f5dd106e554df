//! ferryd: the per-host daemon. Owns the host's state dir, serves the API on a unix socket,
//! and (as `ferryd shim`) doubles as the per-container shim.

mod api;
mod attach;
mod error;
mod events;
mod exec;
mod ipcheck;
mod json;
mod logs;
mod registry;
mod stats;
mod sweep;
mod upgrade;
mod volumes;

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ferry_core::container::{Engine, EngineConfig};
use ferry_core::network::BridgeConfig;
use ferry_core::paths::HostPaths;

#[derive(Parser, Debug)]
#[command(name = "ferryd", version, about = "ferry daemon: one per host")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Sub>,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Internal: the per-container shim (started by ferryd itself).
    #[command(hide = true)]
    Shim { args_json: String },
    /// Internal: CRIU's action script during a migration.
    #[command(hide = true)]
    CriuHook,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DaemonArgs {
    /// State directory (images, containers, volumes, checkpoints).
    #[arg(long, default_value = "/var/lib/ferry")]
    root: PathBuf,
    /// API socket (mode 0660, owner root).
    #[arg(long, default_value = "/run/ferry/ferry.sock")]
    socket: PathBuf,
    /// Group (name or number) that may use the API socket; default: root's group only.
    #[arg(long, env = "FERRY_SOCKET_GROUP")]
    socket_group: Option<String>,
    /// runc state directory for this host.
    #[arg(long, default_value = "/run/ferry/runc")]
    runc_root: PathBuf,
    /// runc binary.
    #[arg(long, env = "FERRY_RUNC", default_value = "runc")]
    runc: PathBuf,
    /// cgroup parent for this host's containers.
    #[arg(long, default_value = "ferry")]
    cgroup_parent: String,
    /// Bridge the containers' veths join.
    #[arg(long, default_value = "ferry0")]
    bridge: String,
    /// The bridge's address and prefix; containers get addresses in this subnet.
    #[arg(long, default_value = "10.88.0.1/16")]
    bridge_address: String,
    /// Range handed out when `ferry run` has no --ip: FIRST-LAST.
    #[arg(long)]
    ip_range: Option<String>,
    /// Address for peer ferryds (mutual TLS), e.g. 10.77.0.1:7470.
    #[arg(long)]
    peer_listen: Option<String>,
    /// This host's name (defaults to the system hostname).
    #[arg(long)]
    host_name: Option<String>,
    /// A registry (HOST[:PORT]) reached over plain HTTP; repeatable. Also read from
    /// <root>/registries.json: {"insecure": ["HOST[:PORT]"]}.
    #[arg(long = "insecure-registry")]
    insecure_registry: Vec<String>,
    /// Seconds between sweeps of stale scratch dirs (tests shorten it).
    #[arg(long, hide = true, env = "FERRY_SCRATCH_SWEEP_EVERY", default_value_t = sweep::SweepPolicy::default().every.as_secs())]
    scratch_sweep_every: u64,
    /// Seconds a scratch dir must have been untouched for a periodic sweep to remove it.
    #[arg(long, hide = true, env = "FERRY_SCRATCH_MIN_AGE", default_value_t = sweep::SweepPolicy::default().min_age.as_secs())]
    scratch_min_age: u64,
}

/// How long an authenticated peer may take to say what it wants (dest.rs allows the same).
const FIRST_MESSAGE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8)> {
    let (ip, prefix) = s
        .split_once('/')
        .with_context(|| format!("{s:?} is not ADDRESS/PREFIX"))?;
    let ip: Ipv4Addr = ip
        .parse()
        .with_context(|| format!("bad address in {s:?}"))?;
    let prefix: u8 = prefix
        .parse()
        .with_context(|| format!("bad prefix in {s:?}"))?;
    if !(8..=30).contains(&prefix) {
        bail!("prefix /{prefix} in {s:?} must be between 8 and 30");
    }
    Ok((ip, prefix))
}

fn parse_range(s: &str) -> Result<(Ipv4Addr, Ipv4Addr)> {
    let (a, b) = s.split_once('-').context("--ip-range must be FIRST-LAST")?;
    Ok((a.trim().parse()?, b.trim().parse()?))
}

fn bridge_mac(ip: Ipv4Addr) -> [u8; 6] {
    // Pinned so the bridge keeps one MAC while container veths come and go.
    let o = ip.octets();
    [0x02, 0xfb, o[0], o[1], o[2], o[3]]
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Sub::Shim { args_json }) => {
            use ferry_core::runtime::shim;
            let code = match shim::ShimArgs::from_json(&args_json) {
                Ok(args) => shim::main(&args),
                Err(e) => {
                    eprintln!("ferryd shim: {e}");
                    2
                }
            };
            std::process::exit(code)
        }
        Some(Sub::CriuHook) => std::process::exit(ferry_core::migration::hook::run_hook()),
        None => {}
    }
    // Before anything is created: what ferryd, runc and CRIU write is private by default.
    ferry_core::fsutil::set_private_umask();
    tracing_subscriber::fmt()
        .with_env_filter(
            // netlink-packet-route warns about every link on this kernel (a newer IFLA_INET6_CONF size).
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| "info".into())
                .add_directive("netlink_packet_route=error".parse().expect("directive")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(serve(cli.daemon))
}

/// `--socket-group`: a group name or a numeric gid.
fn socket_gid(group: &str) -> Result<nix::unistd::Gid> {
    if let Ok(n) = group.parse::<u32>() {
        return Ok(nix::unistd::Gid::from_raw(n));
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => bail!("--socket-group {group:?}: no such group on this host"),
        Err(e) => bail!("--socket-group {group:?}: looking it up failed: {e}"),
    }
}

async fn serve(args: DaemonArgs) -> Result<()> {
    // Checked first: a bad group must not leave a half-started daemon.
    let gid = args.socket_group.as_deref().map(socket_gid).transpose()?;
    let (addr, prefix) = parse_cidr(&args.bridge_address)?;
    let ip_range = args.ip_range.as_deref().map(parse_range).transpose()?;
    let host_name = match &args.host_name {
        Some(h) => h.clone(),
        None => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
    };
    ferry_core::image::registry::config::set_daemon_insecure(args.insecure_registry.clone());
    ferry_core::fsutil::ensure_private_dir(&args.root)
        .with_context(|| format!("creating state dir {}", args.root.display()))?;
    std::fs::create_dir_all(&args.runc_root)?;
    let cfg = EngineConfig {
        paths: HostPaths::new(args.root.canonicalize()?),
        host_name: host_name.clone(),
        runc_binary: args.runc.clone(),
        runc_root: args.runc_root.clone(),
        cgroup_parent: args.cgroup_parent.clone(),
        bridge: BridgeConfig {
            name: args.bridge.clone(),
            address: addr,
            prefix,
            mac: bridge_mac(addr),
        },
        ip_range,
        shim_exe: std::env::current_exe()?,
    };
    let engine = tokio::task::spawn_blocking(move || Engine::open(cfg))
        .await?
        .context("opening the engine")?;
    let engine = Arc::new(engine);
    let criu = tokio::task::spawn_blocking(|| match ferry_core::criu::probe() {
        // Kept: migrations ask it instead of running `criu check` again.
        Ok(caps) => serde_json::to_value(ferry_core::criu::remember(caps)).unwrap_or_default(),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    })
    .await?;
    let identity = match &args.peer_listen {
        Some(listen) => {
            let tls_dir = args.root.join("tls");
            let identity = Arc::new(
                ferry_core::peer::tls::HostIdentity::load(&tls_dir).with_context(|| {
                    format!(
                        "--peer-listen needs this host's certificate in {} (see `ferry ca`)",
                        tls_dir.display()
                    )
                })?,
            );
            let addr: std::net::SocketAddr = listen
                .parse()
                .with_context(|| format!("--peer-listen {listen:?} is not IP:PORT"))?;
            let mut listener = ferry_core::peer::channel::PeerListener::bind(&identity, addr)
                .await
                .with_context(|| format!("listening for peers on {addr}"))?;
            tracing::info!(%addr, host = %identity.name, "listening for peers (mutual TLS)");
            // Interrupted migrations first: a restored copy or an in-doubt source must be
            // settled from the records before new peers are served.
            ferry_core::migration::recovery::recover(engine.clone(), Some(identity.clone())).await;
            let engine = engine.clone();
            let me = identity.clone();
            tokio::spawn(async move {
                loop {
                    // Handshakes run concurrently inside the listener (capped, with a timeout
                    // each): a silent client never holds up the next peer.
                    match listener.accept().await {
                        Ok((conn, remote)) => {
                            let (engine, me) = (engine.clone(), me.clone());
                            tokio::spawn(async move {
                                // A short question (`run --ip` on a peer) is answered here;
                                // anything else is a migration or a verdict inquiry.
                                let e = engine.clone();
                                let user = move |ip| ferry_core::peer::query::ip_user(&e, ip);
                                let Some(conn) = ferry_core::peer::query::answer_if_asked(
                                    conn,
                                    FIRST_MESSAGE_WAIT,
                                    user,
                                )
                                .await
                                else {
                                    return;
                                };
                                tracing::info!(peer = %remote, "incoming migration");
                                ferry_core::migration::dest::serve_incoming(
                                    engine,
                                    Some(me),
                                    conn,
                                    remote,
                                )
                                .await
                            });
                        }
                        Err(e) => tracing::warn!(error = %e, "refused a peer connection"),
                    }
                }
            });
            Some(identity)
        }
        None => {
            ferry_core::migration::recovery::recover(engine.clone(), None).await;
            None
        }
    };
    // After recovery, which settles what interrupted migrations still need: the rest of the
    // scratch a killed ferryd left goes now, and whatever goes stale later, periodically.
    let paths = engine.paths().clone();
    tokio::task::spawn_blocking(move || sweep::sweep(&paths, None)).await?;
    sweep::spawn_periodic(
        engine.paths().clone(),
        sweep::SweepPolicy {
            every: std::time::Duration::from_secs(args.scratch_sweep_every.max(1)),
            min_age: std::time::Duration::from_secs(args.scratch_min_age),
        },
    );
    let engine_for_exit = engine.clone();
    let state = Arc::new(api::AppState {
        engine,
        host_name,
        args: args.clone(),
        criu,
        identity,
        notes: tokio::sync::broadcast::channel(64).0,
    });

    if let Some(dir) = args.socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&args.socket);
    let listener = tokio::net::UnixListener::bind(&args.socket)
        .with_context(|| format!("binding {}", args.socket.display()))?;
    // Owner root, group `--socket-group` (or root's), read-write for both, nothing for others.
    if let Some(gid) = gid {
        nix::unistd::chown(&args.socket, None, Some(gid))
            .with_context(|| format!("giving {} to group {gid}", args.socket.display()))?;
    }
    std::fs::set_permissions(&args.socket, std::fs::Permissions::from_mode(0o660))?;
    tracing::info!(socket = %args.socket.display(), root = %args.root.display(), "ferryd ready");

    let reaper = state.clone();
    tokio::spawn(async move {
        // Notices containers that exited on their own, so their resources are released.
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            let s = reaper.clone();
            let _ = tokio::task::spawn_blocking(move || s.engine.refresh_all()).await;
        }
    });

    let app = api::router(state);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        tracing::info!("shutting down; containers keep running");
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    let _ = std::fs::remove_file(&args.socket);
    if let Err(e) = engine_for_exit.release_page_scratch() {
        tracing::warn!(error = %e, "at exit");
    }
    Ok(())
}
