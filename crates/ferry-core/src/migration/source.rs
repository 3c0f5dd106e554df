//! The source side of a stop-and-copy migration.
//!
//! The container keeps running through the image and first filesystem pass. Then runc
//! checkpoints it with `--page-server` pointed at a local tunnel, so its memory streams to the
//! destination inside the authenticated channel and never touches the source's disk. CRIU is
//! held at `post-dump` (see [`super::hook`]) with the source frozen and intact until the
//! destination has restored the copy and opened its gate. Only then is the source let go; any
//! failure before that resumes it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::{
    BlobRef, Compression, FsTarget, Hello, ImageOffer, Message, MigrationMode, SenderMachine,
    MIN_SUPPORTED, PROTOCOL_VERSION, TUNNEL_STREAM,
};

use super::hook::{HookServer, HOOK_SOCKET_ENV};
use super::report::{MigrationReport, Outcome, Phase, Progress};
use super::wire::{budget, within, Machine, Wire};
use super::{blocking, host_versions, MigrateRequest, MigrationError};
use crate::container::{ContainerRecord, Engine, RootfsDirs, Status};
use crate::fsdiff::{self, UpperSnapshot};
use crate::network;
use crate::peer::channel::{Demux, PeerConn};
use crate::peer::registry::Peers;
use crate::peer::tls::HostIdentity;
use crate::peer::tunnel::tunnel_listen;

const REPLY: Duration = Duration::from_secs(30);
const RESTORE: Duration = Duration::from_secs(180);
/// No page bytes for this long while dumping means the link or the peer is gone.
const DUMP_STALL: Duration = Duration::from_secs(10);

/// What the source holds while the migration runs, so every exit path can clean up.
struct Frozen {
    hook: HookServer,
    child: Child,
    /// The source veth was taken off the bridge at commit; put it back on rollback.
    detached: bool,
}

/// Migrates `req.container` to `req.to`. Never leaves zero or two running copies: on any
/// error the source keeps (or resumes) running.
pub async fn migrate_out(
    engine: Arc<Engine>,
    identity: Arc<HostIdentity>,
    req: MigrateRequest,
    mut progress: Progress,
) -> Result<MigrationReport, (MigrationError, MigrationReport)> {
    let t0 = Instant::now();
    let id = super::new_migration_id();
    let mode = req.mode.unwrap_or(MigrationMode::StopAndCopy);
    let mut report = MigrationReport::new(
        &id,
        &req.container,
        &engine.config().host_name,
        &req.to,
        match mode {
            MigrationMode::StopAndCopy => "stop-and-copy",
            MigrationMode::PostCopy => "post-copy",
        },
    );
    // Claim the container: nothing else may touch it while it moves.
    let rec = {
        let e = engine.clone();
        let name = req.container.clone();
        match blocking(move || Ok(e.begin_migration(&name)?)).await {
            Ok(r) => r,
            Err(err) => {
                report.outcome = Some(Outcome::Refused);
                report.error = Some(err.to_string());
                return Err((err, report));
            }
        }
    };
    let mut frozen: Option<Frozen> = None;
    // The connection, once open: kept here so a failure can still send `Abort` on it.
    let mut wire: Option<Wire> = None;
    let result = run(
        &engine,
        &identity,
        &req,
        mode,
        &rec,
        &mut report,
        &mut progress,
        &mut frozen,
        &mut wire,
    )
    .await;
    report.total_ms = t0.elapsed().as_millis() as u64;
    let result = match result {
        Ok(()) => {
            report.outcome = Some(Outcome::Committed);
            Ok(report)
        }
        Err(err) => {
            progress.start(Phase::Rollback);
            if let Some(w) = wire.as_mut() {
                w.abort(&err.to_string()).await;
            }
            let touched = frozen.is_some();
            rollback(&engine, &rec, frozen.take()).await;
            progress.done(&mut report, 0);
            report.outcome = Some(if touched {
                Outcome::RolledBack
            } else {
                Outcome::Refused
            });
            report.error = Some(err.to_string());
            report.total_ms = t0.elapsed().as_millis() as u64;
            Err((err, report))
        }
    };
    let r = match &result {
        Ok(r) | Err((_, r)) => r,
    };
    let mut rec = serde_json::to_value(r).unwrap_or_default();
    rec["role"] = "source".into();
    super::record_outcome(engine.paths(), &r.migration_id, &rec);
    result
}

#[allow(clippy::too_many_arguments)]
async fn run(
    engine: &Arc<Engine>,
    identity: &Arc<HostIdentity>,
    req: &MigrateRequest,
    mode: MigrationMode,
    rec: &ContainerRecord,
    report: &mut MigrationReport,
    progress: &mut Progress,
    frozen: &mut Option<Frozen>,
    wire: &mut Option<Wire>,
) -> Result<(), MigrationError> {
    if mode == MigrationMode::PostCopy {
        return Err(MigrationError::Unsupported(
            "post-copy migration is not implemented yet; use stop-and-copy".into(),
        ));
    }
    let cfg = rec.config.clone();
    let ctr_dir = engine.container_dir(&cfg.id);
    let work = engine
        .paths()
        .tmp()
        .join(format!("migrate-{}", report.migration_id));
    std::fs::create_dir_all(&work).map_err(|e| MigrationError::io(&work, e))?;
    let _cleanup = RemoveOnDrop(work.clone());

    // 1. Connect and handshake (after checking this side can dump at all).
    progress.start(Phase::Connect);
    crate::container::checkpoint::require_cr_support()?;
    let peers = Peers::load(engine.paths()).map_err(MigrationError::from)?;
    let peer = peers
        .get(&req.to)
        .cloned()
        .ok_or_else(|| MigrationError::UnknownPeer(req.to.clone()))?;
    let conn = PeerConn::connect(identity, &peer.name, peer.addr)
        .await
        .map_err(MigrationError::from)?;
    let (sink, source) = conn.split();
    let (demux, control) = Demux::spawn(source);
    *wire = Some(Wire::new(
        sink,
        demux,
        control,
        Machine::Sender(SenderMachine::new()),
    ));
    let versions = host_versions(engine);
    let hello = Hello {
        versions: (MIN_SUPPORTED, PROTOCOL_VERSION),
        host: identity.name.clone(),
        criu_version: versions.criu_version.clone(),
        runc_version: versions.runc_version.clone(),
        kernel: super::kernel_release(),
        mode,
        features: vec![
            ferry_proto::FEATURE_TCP_ESTABLISHED.into(),
            ferry_proto::FEATURE_PAGE_TUNNEL.into(),
            ferry_proto::FEATURE_ZSTD.into(),
        ],
    };
    {
        let w = wire.as_mut().expect("wire");
        let Machine::Sender(m) = &mut w.machine else {
            unreachable!("source drives a sender machine")
        };
        let welcome = within("the destination's welcome", REPLY, async {
            Ok(crate::peer::handshake::handshake_source(
                &w.sink,
                &mut w.control,
                m,
                &peer.name,
                hello,
            )
            .await?)
        })
        .await?;
        progress.note(format!(
            "{} speaks protocol v{} (CRIU {}, {})",
            welcome.host, welcome.version, welcome.criu_version, welcome.runc_version
        ));
    }
    progress.done(report, 0);

    // 2. CPU compatibility, before anything big moves.
    progress.start(Phase::CpuCheck);
    let cpu_dir = work.join("cpuinfo");
    let cd = cpu_dir.clone();
    blocking(move || {
        std::fs::create_dir_all(&cd).map_err(|e| MigrationError::io(&cd, e))?;
        Ok(crate::criu::cpuinfo_dump(&cd)?)
    })
    .await?;
    {
        let w = wire.as_mut().expect("wire");
        let stream = w.new_stream();
        let res = async {
            w.send(Message::CpuInfo {
                stream,
                compression: Compression::None,
            })
            .await?;
            w.send_file(
                stream,
                &cpu_dir.join(super::CPUINFO_IMAGE),
                Compression::None,
            )
            .await?;
            match w.recv_within("the CPU check", REPLY).await? {
                Message::CpuOk {} => Ok(()),
                Message::Refuse { reason } => Err(MigrationError::Refused(reason)),
                other => Err(MigrationError::unexpected("CpuOk", &other)),
            }
        }
        .await;
        res?;
    }
    progress.done(report, 0);

    // 3. Prepare: the destination checks name, IP and image, and says which blobs it lacks.
    progress.start(Phase::Prepare);
    let image = engine
        .images()
        .resolve(&cfg.image)
        .map_err(|e| MigrationError::Container(e.into()))?;
    let blobs = engine.images().blobs_of(&image);
    let offer = ImageOffer {
        manifest: image.digest.to_string(),
        names: image.names.clone(),
        blobs: blobs
            .iter()
            .map(|(d, size)| BlobRef {
                digest: d.to_string(),
                size: *size,
            })
            .collect(),
    };
    let need = {
        let w = wire.as_mut().expect("wire");
        let res = async {
            w.send(Message::Prepare {
                migration_id: report.migration_id.clone(),
                container: serde_json::to_value(&cfg)
                    .map_err(|e| MigrationError::Internal(e.to_string()))?,
                image: offer,
            })
            .await?;
            match w
                .recv_within("the destination's preparation", REPLY)
                .await?
            {
                Message::NeedBlobs { digests } => Ok(digests),
                Message::Refuse { reason } => Err(MigrationError::Refused(reason)),
                other => Err(MigrationError::unexpected("NeedBlobs", &other)),
            }
        }
        .await;
        res?
    };
    progress.done(report, 0);

    // 4. Only the layers the destination lacks, by digest.
    progress.start(Phase::Image);
    let mut layer_bytes = 0u64;
    for digest in &need {
        let (d, size) = blobs
            .iter()
            .find(|(d, _)| &d.to_string() == digest)
            .cloned()
            .ok_or_else(|| {
                MigrationError::Internal(format!(
                    "destination asked for {digest}, which was not offered"
                ))
            })?;
        let path = engine.images().blob_path(&d);
        let w = wire.as_mut().expect("wire");
        let stream = w.new_stream();
        let res = within("sending an image blob", budget(size), async {
            w.send(Message::BlobStart {
                digest: digest.clone(),
                size,
                stream,
                compression: Compression::None,
            })
            .await?;
            w.send_file(stream, &path, Compression::None).await?;
            Ok(())
        })
        .await;
        res?;
        layer_bytes += size;
        progress.bytes(Phase::Image, layer_bytes);
    }
    report.bytes.layers = layer_bytes;
    report.layers_sent = need.len();
    report.layers_skipped = blobs.len() - need.len();
    progress.done(report, layer_bytes);

    // 5. Filesystem pass 1 while the container runs.
    progress.start(Phase::FsPass1);
    let rootfs = RootfsDirs::new(&ctr_dir);
    let mut targets: Vec<(FsTarget, PathBuf)> = vec![(FsTarget::Upper, rootfs.upper.clone())];
    for v in &cfg.volumes {
        targets.push((
            FsTarget::Volume(v.name.clone()),
            engine.paths().volume_data(&v.name),
        ));
    }
    let mut snapshots: Vec<UpperSnapshot> = Vec::new();
    let mut fs_bytes = 0u64;
    for (i, (target, dir)) in targets.iter().enumerate() {
        let (bytes, snap) =
            send_fs(wire.as_mut().expect("wire"), &work, 1, i, target, dir, None).await?;
        fs_bytes += bytes;
        snapshots.push(snap);
        progress.bytes(Phase::FsPass1, fs_bytes);
    }
    progress.done(report, fs_bytes);

    // 6. Freeze and dump; pages go through the tunnel to the destination's page server.
    progress.start(Phase::Dump);
    {
        let w = wire.as_mut().expect("wire");
        let res = async {
            w.send(Message::OpenPageSink {}).await?;
            match w
                .recv_within("the destination's page server", REPLY)
                .await?
            {
                Message::PagesReady {} => Ok(()),
                other => Err(MigrationError::unexpected("PagesReady", &other)),
            }
        }
        .await;
        res?;
    }
    let listener = tunnel_listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(MigrationError::from)?;
    let tunnel_addr = listener.local_addr();
    let rx = wire
        .as_ref()
        .expect("wire")
        .demux
        .stream(TUNNEL_STREAM)
        .map_err(MigrationError::from);
    let rx = rx?;
    let tunnel = listener.bridge(wire.as_ref().expect("wire").sink.clone(), rx);
    let images = work.join("images");
    let criu_work = work.join("criu-work");
    for d in [&images, &criu_work] {
        std::fs::create_dir_all(d).map_err(|e| MigrationError::io(d, e))?;
    }
    let hook = HookServer::bind(&work.join("hook.sock")).map_err(MigrationError::from)?;
    let mut opts = engine.checkpoint_opts(&images, &criu_work);
    opts.page_server = Some(tunnel_addr);
    let tool = engine
        .runc()
        .checkpoint_command(&cfg.id, &opts)
        .env(HOOK_SOCKET_ENV, hook.path());
    let err_path = work.join("runc-checkpoint.err");
    let err_file =
        std::fs::File::create(&err_path).map_err(|e| MigrationError::io(&err_path, e))?;
    let t_freeze = Instant::now();
    let child = tool
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file)
        .spawn()
        .map_err(|e| MigrationError::Internal(format!("starting runc checkpoint: {e}")))?;
    *frozen = Some(Frozen {
        hook,
        child,
        detached: false,
    });
    // Wait for post-dump (all pages on the destination), watching the tunnel for stalls.
    let mut last_bytes = 0u64;
    let mut last_move = Instant::now();
    loop {
        let f = frozen.as_mut().expect("frozen");
        if f.hook.poll("post-dump").is_some() {
            break;
        }
        if let Ok(Some(status)) = f.child.try_wait() {
            let log = crate::criu::explain_log(&criu_work.join("dump.log"));
            let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
            tunnel.abort();
            return Err(MigrationError::Dump(format!(
                "runc checkpoint exited ({status}) before the dump completed: {} ({log})",
                stderr.trim()
            )));
        }
        let now_bytes = tunnel.stats().to_peer;
        if now_bytes != last_bytes {
            if last_bytes == 0 {
                // Pages flow: the source is frozen and its network locked. Take it off the
                // fabric now, or its netns would still answer the clients' ARP and pull their
                // packets back here while the destination holds them (see network::hold).
                let f = frozen.as_mut().expect("frozen");
                if !f.detached {
                    let _ = network::detach_veth(&Engine::host_veth(&cfg.id)).await;
                    f.detached = true;
                }
            }
            last_bytes = now_bytes;
            last_move = Instant::now();
            progress.bytes(Phase::Dump, now_bytes);
        } else if last_move.elapsed() > DUMP_STALL {
            // Closing CRIU's page-server socket makes the dump fail, and a failed dump resumes.
            tunnel.abort();
            return Err(MigrationError::Timeout {
                what: "memory pages to flow to the destination".into(),
                after: DUMP_STALL,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pages = tunnel.stats().to_peer;
    report.bytes.pages = pages;
    {
        let w = wire.as_mut().expect("wire");
        let stats = ferry_proto::DumpStats {
            tunnel_bytes: pages,
            ..Default::default()
        };
        w.send(Message::DumpDone { stats }).await?;
    }
    progress.done(report, pages);

    // 7. The small CRIU images, then the final filesystem delta (the container is frozen).
    progress.start(Phase::Images);
    let images_tar = work.join("images.tar");
    let (src, dst) = (images.clone(), images_tar.clone());
    let images_bytes = blocking(move || {
        let f = std::fs::File::create(&dst).map_err(|e| MigrationError::io(&dst, e))?;
        Ok(fsdiff::pack_dir(&src, std::io::BufWriter::new(f))?)
    })
    .await?;
    {
        let w = wire.as_mut().expect("wire");
        let stream = w.new_stream();
        let res = within("sending CRIU images", budget(images_bytes), async {
            w.send(Message::ImagesStart {
                stream,
                compression: Compression::Zstd,
            })
            .await?;
            w.send_file(stream, &images_tar, Compression::Zstd).await?;
            Ok(())
        })
        .await;
        res?;
    }
    report.bytes.images = images_bytes;
    progress.done(report, images_bytes);

    progress.start(Phase::FsPass2);
    let mut delta_bytes = 0u64;
    for (i, (target, dir)) in targets.iter().enumerate() {
        let (bytes, _) = send_fs(
            wire.as_mut().expect("wire"),
            &work,
            2,
            i,
            target,
            dir,
            Some(&snapshots[i]),
        )
        .await?;
        delta_bytes += bytes;
    }
    // The log last: the container is frozen, so its history is complete up to the freeze.
    let log_dir = work.join("log");
    let copied = std::fs::create_dir_all(&log_dir).and_then(|_| {
        std::fs::copy(
            ctr_dir.join(crate::runtime::shim::LOG_FILE),
            log_dir.join(crate::runtime::shim::LOG_FILE),
        )
    });
    if copied.is_ok() {
        let (bytes, _) = send_fs(
            wire.as_mut().expect("wire"),
            &work,
            2,
            targets.len(),
            &FsTarget::Log,
            &log_dir,
            None,
        )
        .await?;
        delta_bytes += bytes;
    }
    report.bytes.fs = fs_bytes + delta_bytes;
    progress.done(report, delta_bytes);

    // 8. Restore on the destination, gated.
    progress.start(Phase::Restore);
    {
        let w = wire.as_mut().expect("wire");
        let res = async {
            w.send(Message::Restore {}).await?;
            match w.recv_within("the destination's restore", RESTORE).await? {
                Message::Restored { stats } => Ok(stats),
                Message::RestoreFailed { reason } => Err(MigrationError::RestoreFailed(reason)),
                other => Err(MigrationError::unexpected("Restored", &other)),
            }
        }
        .await;
        let stats = res?;
        report.criu_restore = serde_json::to_value(&stats).ok();
    }
    progress.done(report, 0);

    // 9. Commit: source off the fabric, destination opens its gate, then the source is let go.
    progress.start(Phase::Commit);
    if !frozen.as_ref().expect("frozen").detached {
        let _ = network::detach_veth(&Engine::host_veth(&cfg.id)).await;
        frozen.as_mut().expect("frozen").detached = true;
    }
    {
        let w = wire.as_mut().expect("wire");
        let res = async {
            w.send(Message::Commit {}).await?;
            match w.recv_within("the destination's commit", REPLY).await? {
                Message::Committed {} => Ok(()),
                other => Err(MigrationError::unexpected("Committed", &other)),
            }
        }
        .await;
        res?;
    }
    // Downtime runs from CRIU's pre-dump action (just before it freezes the tasks); runc's
    // and CRIU's start-up before that is not downtime, the container still serves.
    let freeze_at = frozen
        .as_ref()
        .and_then(|f| {
            f.hook
                .seen()
                .iter()
                .find(|e| e.action == "pre-dump")
                .map(|e| e.at)
        })
        .unwrap_or(t_freeze);
    report.downtime_ms = Some(freeze_at.elapsed().as_millis() as u64);
    // Point of no return: the destination runs the container. Let CRIU finish the source.
    let mut f = frozen.take().expect("frozen");
    f.hook.verdict(true);
    let crit = criu_work.clone();
    let stats = blocking(move || {
        let _ = f.child.wait();
        drop(f.hook);
        Ok(crate::criu::read_dump_stats(&crit).ok())
    })
    .await
    .unwrap_or(None);
    report.criu_dump = stats.and_then(|s| serde_json::to_value(s).ok());
    let _ = tunnel.wait().await;
    let e = engine.clone();
    let id = cfg.id.clone();
    let name = cfg.name.clone();
    let _ = blocking(move || Ok(e.finish_migration_out(&name, &id)?)).await;
    progress.done(report, 0);
    Ok(())
}

/// Sends one filesystem (pass 1: everything; pass 2: changes since `since`, with deletions).
async fn send_fs(
    w: &mut Wire,
    work: &Path,
    pass: u8,
    index: usize,
    target: &FsTarget,
    dir: &Path,
    since: Option<&UpperSnapshot>,
) -> Result<(u64, UpperSnapshot), MigrationError> {
    let tar = work.join(format!("fs-{pass}-{index}.tar"));
    let (d, t, s) = (dir.to_owned(), tar.clone(), since.cloned());
    let summary = blocking(move || {
        let f = std::fs::File::create(&t).map_err(|e| MigrationError::io(&t, e))?;
        Ok(fsdiff::export_upper(
            &d,
            std::io::BufWriter::new(f),
            s.as_ref(),
        )?)
    })
    .await?;
    let size = std::fs::metadata(&tar).map(|m| m.len()).unwrap_or(0);
    let stream = w.new_stream();
    let snapshot = summary.snapshot.clone();
    let summary_json =
        serde_json::to_value(&summary).map_err(|e| MigrationError::Internal(e.to_string()))?;
    within("sending a filesystem", budget(size), async {
        w.send(Message::FsStart {
            pass,
            what: target.clone(),
            stream,
            compression: Compression::Zstd,
            summary: Some(summary_json),
        })
        .await?;
        w.send_file(stream, &tar, Compression::Zstd).await?;
        Ok(())
    })
    .await?;
    let _ = std::fs::remove_file(&tar);
    Ok((size, snapshot))
}

/// Puts the source back: CRIU resumes it (no verdict or a `fail` verdict), its veth rejoins
/// the bridge, and its record says running again.
async fn rollback(engine: &Arc<Engine>, rec: &ContainerRecord, frozen: Option<Frozen>) {
    if let Some(mut f) = frozen {
        f.hook.verdict(false);
        let detached = f.detached;
        let _ = tokio::task::spawn_blocking(move || {
            // CRIU thaws the tasks and exits; a stuck dump is killed (the freezer is undone by CRIU's cleanup).
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match f.child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = f.child.kill();
                        let _ = f.child.wait();
                        break;
                    }
                }
            }
            drop(f.hook);
        })
        .await;
        if detached {
            let veth = Engine::host_veth(&rec.config.id);
            let bridge = engine.config().bridge.name.clone();
            let _ = network::attach_veth(&veth, &bridge).await;
        }
        // The destination may already have announced the MAC: take the clients back.
        let cn = engine.container_net(&rec.config);
        let _ =
            network::send_gratuitous_arp(&cn.netns_path, network::CONTAINER_IFNAME, cn.ip, cn.mac);
    }
    let e = engine.clone();
    let name = rec.config.name.clone();
    let _ = tokio::task::spawn_blocking(move || e.end_migration(&name, Status::Running)).await;
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
