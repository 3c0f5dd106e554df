//! The destination side of a migration.
//!
//! It registers the incoming container (name and IP reserved, marked uncommitted), takes the
//! image blobs it lacks, fills the overlay upper dir and volumes, runs the page server behind
//! the tunnel, restores the container with its traffic gated, and opens the gate only at
//! `Commit`. On any failure or `Abort` before that, everything it made is removed. An
//! uncommitted copy found after a ferryd crash is destroyed at startup (see the engine).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::{
    FsTarget, Hello, ImageOffer, Message, MigrationMode, ReceiverMachine, TUNNEL_STREAM,
};

use super::wire::{Machine, Wire};
use super::{blocking, host_versions, MigrationError};
use crate::container::{ContainerConfig, Engine, RootfsDirs};
use crate::criu::PageServer;
use crate::fsdiff::{self, DiffSummary};
use crate::image::Digest;
use crate::peer::channel::{Demux, PeerConn};
use crate::peer::tunnel::{tunnel_connect, Tunnel};

/// How long the source may stay silent (no message, no page bytes) before we give up.
const IDLE: Duration = Duration::from_secs(30);

/// What this side has made so far, so a failure can undo exactly that.
#[derive(Default)]
struct Incoming {
    work: PathBuf,
    config: Option<ContainerConfig>,
    offer: Option<ImageOffer>,
    pending_blobs: usize,
    image_registered: bool,
    image_was_new: bool,
    page_server: Option<PageServer>,
    tunnel: Option<Tunnel>,
    restored: bool,
    committed: bool,
    images: Option<PathBuf>,
    migration_id: Option<String>,
    announcer: Option<tokio::task::JoinHandle<()>>,
}

impl Incoming {
    /// The incoming container's name (empty before `Prepare`).
    fn name(&self) -> String {
        self.config
            .as_ref()
            .map(|c| c.name.clone())
            .unwrap_or_default()
    }
}

/// Serves one incoming migration on an accepted, authenticated connection.
pub async fn serve_incoming(engine: Arc<Engine>, conn: PeerConn, remote: String) {
    let (sink, source) = conn.split();
    let (demux, control) = Demux::spawn(source);
    let mut wire = Wire::new(
        sink,
        demux,
        control,
        Machine::Receiver(ReceiverMachine::new()),
    );
    let mut st = Incoming {
        work: engine
            .paths()
            .tmp()
            .join(format!("incoming-{}", super::new_migration_id())),
        ..Default::default()
    };
    let span = tracing::info_span!("incoming", peer = %remote);
    let _g = span.enter();
    let outcome = match receive(&engine, &mut wire, &remote, &mut st).await {
        Ok(()) => {
            tracing::info!(container = ?st.config.as_ref().map(|c| &c.name), "migration committed");
            serde_json::json!({ "outcome": "committed" })
        }
        Err(e) => {
            tracing::warn!(error = %e, "incoming migration failed; cleaning up");
            if !matches!(e, MigrationError::PeerAborted(_)) {
                wire.abort(&e.to_string()).await;
            }
            undo(&engine, &mut st).await;
            serde_json::json!({ "outcome": "discarded", "error": e.to_string() })
        }
    };
    if let Some(id) = &st.migration_id {
        let mut rec = outcome;
        rec["role"] = "destination".into();
        rec["migration_id"] = id.clone().into();
        rec["from"] = remote.clone().into();
        rec["container"] = st.config.as_ref().map(|c| c.name.clone()).into();
        rec["finished_at"] = chrono::Utc::now().to_rfc3339().into();
        super::record_outcome(engine.paths(), id, &rec);
    }
    if let Some(t) = st.tunnel.take() {
        t.abort();
    }
    if let Some(a) = st.announcer.take() {
        a.abort();
    }
    let _ = std::fs::remove_dir_all(&st.work);
    if let Some(images) = &st.images {
        let _ = std::fs::remove_dir_all(images);
    }
}

async fn receive(
    engine: &Arc<Engine>,
    wire: &mut Wire,
    remote: &str,
    st: &mut Incoming,
) -> Result<(), MigrationError> {
    std::fs::create_dir_all(&st.work).map_err(|e| MigrationError::io(&st.work, e))?;
    let versions = host_versions(engine);
    {
        let Machine::Receiver(m) = &mut wire.machine else {
            unreachable!("destination drives a receiver machine")
        };
        let check = |h: &Hello| -> Result<(), String> {
            if h.mode == MigrationMode::PostCopy {
                return Err("post-copy migration is not implemented on this host yet".into());
            }
            crate::container::checkpoint::require_cr_support().map_err(|e| e.to_string())?;
            Ok(())
        };
        crate::peer::handshake::handshake_destination(
            &wire.sink,
            &mut wire.control,
            m,
            remote,
            &versions,
            (ferry_proto::MIN_SUPPORTED, ferry_proto::PROTOCOL_VERSION),
            check,
        )
        .await?;
    }
    // Pages go to the tmpfs scratch: RAM, not disk, and gone after the restore.
    let images_dir = engine.paths().page_scratch().join(
        st.work
            .file_name()
            .map(|n| n.to_owned())
            .unwrap_or_default(),
    );
    st.images = Some(images_dir.clone());
    std::fs::create_dir_all(&images_dir).map_err(|e| MigrationError::io(&images_dir, e))?;
    loop {
        let msg = next_message(wire, st.tunnel.as_ref()).await?;
        match msg {
            Message::CpuInfo {
                stream,
                compression,
            } => {
                let dir = st.work.join("cpuinfo");
                std::fs::create_dir_all(&dir).map_err(|e| MigrationError::io(&dir, e))?;
                wire.recv_file(stream, &dir.join(super::CPUINFO_IMAGE), compression)
                    .await?;
                match blocking(move || Ok(crate::criu::cpuinfo_check(&dir)?)).await {
                    Ok(()) => wire.send(Message::CpuOk {}).await?,
                    Err(e) => {
                        let reason =
                            format!("this host's CPU cannot run the source's processes: {e}");
                        wire.send(Message::Refuse {
                            reason: reason.clone(),
                        })
                        .await?;
                        return Err(MigrationError::Refused(reason));
                    }
                }
            }
            Message::Prepare {
                migration_id,
                container,
                image,
            } => {
                let cfg: ContainerConfig = serde_json::from_value(container)
                    .map_err(|e| MigrationError::Internal(format!("bad container config: {e}")))?;
                tracing::info!(%migration_id, container = %cfg.name, "preparing");
                st.migration_id = Some(migration_id);
                let e = engine.clone();
                let c = cfg.clone();
                let from = remote.to_owned();
                if let Err(err) = blocking(move || Ok(e.accept_incoming(c, &from)?)).await {
                    let reason = err.to_string();
                    wire.send(Message::Refuse {
                        reason: reason.clone(),
                    })
                    .await?;
                    return Err(MigrationError::Refused(reason));
                }
                st.config = Some(cfg);
                let mut need = Vec::new();
                for b in &image.blobs {
                    let d = Digest::parse(&b.digest).map_err(|e| {
                        MigrationError::Internal(format!("bad digest {}: {e}", b.digest))
                    })?;
                    if !engine.images().has_blob(&d) {
                        need.push(b.digest.clone());
                    }
                }
                st.image_was_new = engine.images().resolve(&image.manifest).is_err();
                st.pending_blobs = need.len();
                st.offer = Some(image);
                wire.send(Message::NeedBlobs { digests: need }).await?;
                if st.pending_blobs == 0 {
                    register_image(engine, st).await?;
                }
            }
            Message::BlobStart {
                digest,
                stream,
                compression,
                ..
            } => {
                let tmp = st.work.join("blob.tmp");
                wire.recv_file(stream, &tmp, compression).await?;
                let e = engine.clone();
                let d = Digest::parse(&digest)
                    .map_err(|e| MigrationError::Internal(format!("bad digest {digest}: {e}")))?;
                blocking(move || {
                    let f = std::fs::File::open(&tmp).map_err(|e| MigrationError::io(&tmp, e))?;
                    e.images()
                        .write_blob(&d, std::io::BufReader::new(f))
                        .map_err(|err| MigrationError::Image(err.to_string()))?;
                    Ok(())
                })
                .await?;
                st.pending_blobs = st.pending_blobs.saturating_sub(1);
                if st.pending_blobs == 0 {
                    register_image(engine, st).await?;
                }
            }
            Message::FsStart {
                what,
                stream,
                compression,
                summary,
                ..
            } => {
                let cfg = st
                    .config
                    .as_ref()
                    .ok_or_else(|| MigrationError::Internal("filesystem before Prepare".into()))?;
                let target = fs_target(engine, cfg, &what)?;
                let summary: DiffSummary = summary
                    .map(serde_json::from_value)
                    .transpose()
                    .map_err(|e| MigrationError::Internal(format!("bad filesystem summary: {e}")))?
                    .ok_or_else(|| {
                        MigrationError::Internal("filesystem stream without summary".into())
                    })?;
                let tar = st.work.join("fs.tar");
                wire.recv_file(stream, &tar, compression).await?;
                blocking(move || {
                    std::fs::create_dir_all(&target).map_err(|e| MigrationError::io(&target, e))?;
                    let f = std::fs::File::open(&tar).map_err(|e| MigrationError::io(&tar, e))?;
                    fsdiff::apply_to_upper(&target, std::io::BufReader::new(f), &summary)?;
                    Ok(())
                })
                .await?;
            }
            Message::OpenPageSink {} => {
                // The freeze comes next: stage the gated network now, off the downtime path.
                let name = st.name();
                let e = engine.clone();
                blocking(move || Ok(e.stage_incoming_network(&name)?)).await?;
                let dir = images_dir.clone();
                let log = st.work.join("page-server.log");
                let ps = blocking(move || {
                    Ok(PageServer::spawn(
                        &dir,
                        SocketAddr::from(([127, 0, 0, 1], 0)),
                        &log,
                    )?)
                })
                .await?;
                let rx = wire.demux.stream(TUNNEL_STREAM)?;
                let tunnel = tunnel_connect(ps.addr(), wire.sink.clone(), rx).await?;
                st.announcer = Some(announce_when_frozen(engine, st, &tunnel));
                st.page_server = Some(ps);
                st.tunnel = Some(tunnel);
                wire.send(Message::PagesReady {}).await?;
            }
            Message::DumpDone { stats } => {
                tracing::info!(tunnel_bytes = stats.tunnel_bytes, "dump done on the source");
            }
            Message::ImagesStart {
                stream,
                compression,
            } => {
                let tar = st.work.join("images.tar");
                wire.recv_file(stream, &tar, compression).await?;
                let dir = images_dir.clone();
                blocking(move || {
                    let f = std::fs::File::open(&tar).map_err(|e| MigrationError::io(&tar, e))?;
                    fsdiff::unpack_dir(std::io::BufReader::new(f), &dir)?;
                    Ok(())
                })
                .await?;
            }
            Message::Restore {} => {
                if let Some(ps) = st.page_server.take() {
                    blocking(move || Ok(ps.wait()?)).await?;
                }
                let name = st.name();
                let e = engine.clone();
                let dir = images_dir.clone();
                match blocking(move || Ok(e.restore_incoming(&name, &dir)?)).await {
                    Ok(stats) => {
                        st.restored = true;
                        wire.send(Message::Restored { stats }).await?;
                    }
                    Err(err) => {
                        let reason = err.to_string();
                        wire.send(Message::RestoreFailed {
                            reason: reason.clone(),
                        })
                        .await?;
                        return Err(MigrationError::RestoreFailed(reason));
                    }
                }
            }
            Message::Commit {} => {
                let name = st.name();
                let e = engine.clone();
                blocking(move || Ok(e.commit_incoming(&name)?)).await?;
                st.committed = true;
                wire.send(Message::Committed {}).await?;
                return Ok(());
            }
            other => {
                return Err(MigrationError::unexpected("a migration step", &other));
            }
        }
    }
}

/// The next control message. Silence is fine while page bytes still flow through the tunnel
/// (a big dump); silence with nothing moving for [`IDLE`] means the source or the link is gone.
async fn next_message(wire: &mut Wire, tunnel: Option<&Tunnel>) -> Result<Message, MigrationError> {
    let mut last = tunnel.map(|t| t.stats());
    let mut last_move = std::time::Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(2), wire.recv()).await {
            Ok(m) => return m,
            Err(_) => {
                let now = tunnel.map(|t| t.stats());
                if now != last {
                    last = now;
                    last_move = std::time::Instant::now();
                } else if last_move.elapsed() > IDLE {
                    return Err(MigrationError::Timeout {
                        what: "the source (no message and no page data)".into(),
                        after: IDLE,
                    });
                }
            }
        }
    }
}

/// Page bytes on the tunnel mean the source is frozen with its network locked: from then on
/// the clients' packets are better held here than dropped there.
fn announce_when_frozen(
    engine: &Arc<Engine>,
    st: &Incoming,
    tunnel: &Tunnel,
) -> tokio::task::JoinHandle<()> {
    let counters = tunnel.counter_handle();
    let engine = engine.clone();
    let name = st.name();
    tokio::spawn(async move {
        while counters.from_peer() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Repeated: until the source has left the fabric, its netns may still answer an ARP
        // and pull the clients back; the commit cancels this task.
        for pause in [0, 100, 250, 500, 1000, 2000] {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let (e, n) = (engine.clone(), name.clone());
            if let Err(err) = blocking(move || Ok(e.announce_incoming(&n)?)).await {
                tracing::warn!(error = %err, "could not announce the incoming container");
                return;
            }
        }
    })
}

async fn register_image(engine: &Arc<Engine>, st: &mut Incoming) -> Result<(), MigrationError> {
    let offer = st
        .offer
        .clone()
        .ok_or_else(|| MigrationError::Internal("no image offer".into()))?;
    let e = engine.clone();
    blocking(move || {
        let d = Digest::parse(&offer.manifest)
            .map_err(|err| MigrationError::Image(format!("bad manifest digest: {err}")))?;
        e.images().register(&d, &offer.names).map_err(|err| {
            MigrationError::Image(format!(
                "the destination could not assemble the image: {err}"
            ))
        })?;
        Ok(())
    })
    .await?;
    st.image_registered = true;
    Ok(())
}

fn fs_target(
    engine: &Engine,
    cfg: &ContainerConfig,
    what: &FsTarget,
) -> Result<PathBuf, MigrationError> {
    match what {
        FsTarget::Upper => Ok(RootfsDirs::new(&engine.container_dir(&cfg.id)).upper),
        // The log file lands in the container's dir, where the new shim appends to it.
        FsTarget::Log => Ok(engine.container_dir(&cfg.id)),
        FsTarget::Volume(name) if cfg.volumes.iter().any(|v| &v.name == name) => {
            Ok(engine.paths().volume_data(name))
        }
        FsTarget::Volume(name) => Err(MigrationError::Internal(format!(
            "volume {name} is not one of the container's volumes"
        ))),
    }
}

/// Removes everything an unfinished incoming migration made on this host.
async fn undo(engine: &Arc<Engine>, st: &mut Incoming) {
    if let Some(mut ps) = st.page_server.take() {
        ps.kill();
    }
    if st.committed {
        return;
    }
    if let Some(cfg) = st.config.clone() {
        let e = engine.clone();
        let image = st
            .offer
            .as_ref()
            .map(|o| o.manifest.clone())
            .filter(|_| st.image_was_new && st.image_registered);
        let _ = tokio::task::spawn_blocking(move || {
            e.abort_incoming(&cfg);
            if let Some(img) = image {
                if !e.images_in_use().contains(&img) {
                    let _ = e.images().remove(&img);
                }
            }
        })
        .await;
    }
}
