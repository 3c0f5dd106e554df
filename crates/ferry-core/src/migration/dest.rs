//! The destination side of a migration, as named steps over [`Incoming`].
//!
//! It registers the incoming container (name and IP reserved, marked uncommitted), takes the
//! image blobs it lacks, fills the overlay upper dir and volumes, writes the dump's pages as
//! they come out of the tunnel (stop-and-copy), restores the container with its traffic gated,
//! and opens the gate only once the commit is recorded (see [`super::commit`]). A failure before
//! the restore removes everything it made. A restored copy is discarded only once the source is
//! known to have resumed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::{
    FsTarget, Hello, ImageOffer, Message, MigrationMode, ReceiverMachine, StreamCompression,
    Verdict, TUNNEL_STREAM,
};

use super::commit;
use super::fault::{self, Injected};
use super::page_sink::PageSink;
use super::record::{self, MigrationRecord, Role, Stage};
use super::wire::{Machine, Wire};
use super::{blocking, host_versions, MigrationError};
use crate::container::{ContainerConfig, Engine, RootfsDirs};
use crate::criu::LazyPagesDaemon;
use crate::fsdiff::{self, DiffSummary};
use crate::hostmem;
use crate::image::Digest;
use crate::peer::channel::{Demux, PeerConn};
use crate::peer::tls::HostIdentity;
use crate::peer::tunnel::{tunnel_into, tunnel_listen, Codec, Hold, Tunnel};
use tracing::Instrument;

/// How long the source may stay silent (no message, no heartbeat, no page bytes).
const IDLE: Duration = Duration::from_secs(15);
/// How often a restored copy checks on its source while connected.
const INQUIRE_EVERY: Duration = Duration::from_secs(1);

/// One incoming migration: what this side has made so far, so a failure undoes exactly that.
struct Incoming {
    engine: Arc<Engine>,
    identity: Option<Arc<HostIdentity>>,
    remote: String,
    wire: Wire,
    /// Scratch for streams; pages and images go to the tmpfs `images` dir.
    work: tempfile::TempDir,
    images: Option<tempfile::TempDir>,
    migration_id: Option<String>,
    config: Option<ContainerConfig>,
    offer: Option<ImageOffer>,
    pending_blobs: usize,
    image_registered: bool,
    image_was_new: bool,
    tunnel: Option<Tunnel>,
    announcer: Option<tokio::task::JoinHandle<()>>,
    /// Post-copy: memory arrives after the restore, through `lazy_daemon`.
    lazy: bool,
    lazy_daemon: Option<LazyPagesDaemon>,
    /// How long staging the gated network took (before the freeze), for the report.
    network_staging: Duration,
    /// Memory warmed for the incoming pages before the freeze: how long, how much.
    memory_warming: (Duration, u64),
    /// Gives the warmed memory back as the pages arrive; dropping it gives back the rest.
    warm_release: Option<WarmRelease>,
}

/// Serves one accepted, authenticated connection: a migration, or a verdict inquiry.
pub async fn serve_incoming(
    engine: Arc<Engine>,
    identity: Option<Arc<HostIdentity>>,
    conn: PeerConn,
    remote: String,
) {
    // The span is entered at each poll, never held across an await.
    let span = tracing::info_span!("incoming", peer = %remote);
    serve(engine, identity, conn, remote).instrument(span).await;
}

async fn serve(
    engine: Arc<Engine>,
    identity: Option<Arc<HostIdentity>>,
    conn: PeerConn,
    remote: String,
) {
    let (sink, source) = conn.split();
    let (demux, control) = Demux::spawn(source);
    let mut wire = Wire::new(
        sink,
        demux,
        control,
        Machine::Receiver(ReceiverMachine::new()),
    );
    // Read past the machine: a `Hello` goes to the handshake, which checks it there.
    let first = super::wire::within("the first message", IDLE, async {
        Ok(wire.control.recv().await?)
    })
    .await;
    let first = match first {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "a peer connection said nothing useful");
            return;
        }
    };
    if let Message::Inquire { migration_id } = &first {
        if let Err(e) = wire.machine.on_message(&first) {
            tracing::warn!(error = %e, "a bad verdict inquiry");
            return;
        }
        let id = migration_id.clone();
        return commit::answer_inquiry(engine, wire, id).await;
    }
    let mut inc = match Incoming::new(engine, identity, wire, remote) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "cannot take an incoming migration");
            return;
        }
    };
    match inc.receive(first).await {
        Ok(stage) => tracing::info!(container = %inc.name(), %stage, "incoming migration ended"),
        Err(e) => {
            tracing::warn!(error = %e, "incoming migration failed; cleaning up");
            if !matches!(e, MigrationError::PeerAborted(_)) {
                inc.wire.abort(&e.to_string()).await;
            }
            inc.undo(&e).await;
        }
    }
    inc.close().await;
}

impl Incoming {
    fn new(
        engine: Arc<Engine>,
        identity: Option<Arc<HostIdentity>>,
        wire: Wire,
        remote: String,
    ) -> Result<Self, MigrationError> {
        let tmp = engine.paths().tmp();
        std::fs::create_dir_all(&tmp).map_err(|e| MigrationError::io(&tmp, e))?;
        let work = tempfile::Builder::new()
            .prefix("incoming-")
            .tempdir_in(&tmp)
            .map_err(|e| MigrationError::io(&tmp, e))?;
        Ok(Incoming {
            engine,
            identity,
            remote,
            wire,
            work,
            images: None,
            migration_id: None,
            config: None,
            offer: None,
            pending_blobs: 0,
            image_registered: false,
            image_was_new: false,
            tunnel: None,
            announcer: None,
            lazy: false,
            lazy_daemon: None,
            network_staging: Duration::ZERO,
            memory_warming: (Duration::ZERO, 0),
            warm_release: None,
        })
    }

    /// The incoming container's name (empty before `Prepare`).
    fn name(&self) -> String {
        self.config
            .as_ref()
            .map(|c| c.name.clone())
            .unwrap_or_default()
    }

    fn config(&self) -> Result<&ContainerConfig, MigrationError> {
        self.config
            .as_ref()
            .ok_or_else(|| MigrationError::Internal("a migration step before Prepare".into()))
    }

    fn images_dir(&self) -> Result<PathBuf, MigrationError> {
        self.images
            .as_ref()
            .map(|d| d.path().to_owned())
            .ok_or_else(|| MigrationError::Internal("no page scratch".into()))
    }

    async fn step(&mut self, name: &str) -> Result<(), MigrationError> {
        if fault::at(self.engine.paths(), Role::Destination, name).await? == Injected::Corrupt {
            self.wire.sink.send_corrupt_frame().await?;
        }
        Ok(())
    }

    /// The whole conversation: handshake, then each message's step, until the verdict.
    async fn receive(&mut self, hello: Message) -> Result<Stage, MigrationError> {
        self.handshake(hello).await?;
        // Pages go to the tmpfs scratch: RAM, not disk, and gone after the restore.
        let scratch = self.engine.paths().page_scratch();
        std::fs::create_dir_all(&scratch).map_err(|e| MigrationError::io(&scratch, e))?;
        self.images = Some(
            tempfile::Builder::new()
                .prefix("incoming-")
                .tempdir_in(&scratch)
                .map_err(|e| MigrationError::io(&scratch, e))?,
        );
        loop {
            match self.next_message().await? {
                Message::CpuInfo {
                    stream,
                    compression,
                } => self.check_cpu(stream, compression).await?,
                Message::Prepare {
                    migration_id,
                    container,
                    image,
                } => self.prepare(migration_id, container, image).await?,
                Message::BlobStart {
                    digest,
                    stream,
                    compression,
                    ..
                } => self.receive_blob(digest, stream, compression).await?,
                Message::FsStart {
                    what,
                    stream,
                    compression,
                    summary,
                    ..
                } => self.receive_fs(what, stream, compression, summary).await?,
                Message::OpenPageSink { memory_bytes, lz4 } => {
                    self.open_page_sink(memory_bytes, lz4).await?
                }
                Message::DumpDone { stats } => {
                    tracing::info!(tunnel_bytes = stats.tunnel_bytes, "dump done on the source");
                    if self.lazy {
                        // No page bytes show the freeze in post-copy: the source is frozen
                        // and off the fabric now, so hold the clients' packets here.
                        self.announcer = Some(announce(&self.engine, self.name()));
                    }
                }
                Message::ImagesStart {
                    stream,
                    compression,
                } => self.receive_images(stream, compression).await?,
                Message::Restore {} => {
                    self.restore().await?;
                    return self.await_verdict().await;
                }
                other => return Err(MigrationError::unexpected("a migration step", &other)),
            }
        }
    }

    async fn handshake(&mut self, hello: Message) -> Result<(), MigrationError> {
        self.step("handshake").await?;
        let versions = host_versions(&self.engine);
        let Machine::Receiver(m) = &mut self.wire.machine else {
            unreachable!("the destination drives a receiver machine")
        };
        let check = |h: &Hello| -> Result<(), String> {
            crate::container::checkpoint::require_cr_support().map_err(|e| e.to_string())?;
            if h.mode == MigrationMode::PostCopy {
                crate::criu::require(&[crate::criu::Feature::LazyPages])
                    .map_err(|e| format!("this host cannot take a post-copy migration: {e}"))?;
            }
            Ok(())
        };
        let hello = crate::peer::handshake::answer_hello(
            &self.wire.sink,
            hello,
            m,
            &self.remote,
            &versions,
            (ferry_proto::MIN_SUPPORTED, ferry_proto::PROTOCOL_VERSION),
            check,
        )
        .await?;
        self.lazy = hello.mode == MigrationMode::PostCopy;
        Ok(())
    }

    async fn check_cpu(
        &mut self,
        stream: u32,
        compression: StreamCompression,
    ) -> Result<(), MigrationError> {
        self.step("cpu-check").await?;
        let dir = self.work.path().join("cpuinfo");
        std::fs::create_dir_all(&dir).map_err(|e| MigrationError::io(&dir, e))?;
        self.wire
            .recv_file(stream, &dir.join(super::CPUINFO_IMAGE), compression)
            .await?;
        match blocking(move || Ok(crate::criu::cpuinfo_check(&dir)?)).await {
            Ok(()) => self.wire.send(Message::CpuOk {}).await,
            Err(e) => {
                self.refuse(format!(
                    "this host's CPU cannot run the source's processes: {e}"
                ))
                .await
            }
        }
    }

    async fn refuse(&mut self, reason: String) -> Result<(), MigrationError> {
        self.wire
            .send(Message::Refuse {
                reason: reason.clone(),
            })
            .await?;
        Err(MigrationError::Refused(reason))
    }

    /// Reserves name and IP (recorded first, so a crash discards them), and asks for the blobs
    /// this host lacks.
    async fn prepare(
        &mut self,
        migration_id: String,
        container: serde_json::Value,
        image: ImageOffer,
    ) -> Result<(), MigrationError> {
        self.step("prepare").await?;
        if !record::valid_id(&migration_id) {
            return self
                .refuse(format!("invalid migration id {migration_id:?}"))
                .await;
        }
        let cfg: ContainerConfig = match serde_json::from_value(container) {
            Ok(c) => c,
            Err(e) => return self.refuse(format!("bad container config: {e}")).await,
        };
        tracing::info!(%migration_id, container = %cfg.name, "preparing");
        if record::load(self.engine.paths(), &migration_id)?.is_some() {
            return self
                .refuse(format!("migration {migration_id} is already known here"))
                .await;
        }
        let mut rec = MigrationRecord::new(
            &migration_id,
            Role::Destination,
            Stage::Receiving,
            &cfg.name,
            &cfg.id,
        );
        rec.peer = self.remote.clone();
        rec.post_copy = self.lazy;
        record::create(self.engine.paths(), &rec)?;
        self.migration_id = Some(migration_id);
        let (e, c, from) = (self.engine.clone(), cfg.clone(), self.remote.clone());
        if let Err(err) = blocking(move || Ok(e.accept_incoming(c, &from)?)).await {
            return self.refuse(err.to_string()).await;
        }
        self.config = Some(cfg);
        let mut need = Vec::new();
        for b in &image.blobs {
            let d = Digest::parse(&b.digest)
                .map_err(|e| MigrationError::BadPeerData(format!("digest {}: {e}", b.digest)))?;
            if !self.engine.images().has_blob(&d) {
                need.push(b.digest.clone());
            }
        }
        self.image_was_new = self.engine.images().resolve(&image.manifest).is_err();
        let mut from_registry = Vec::new();
        if !need.is_empty() {
            // The image's registry first; the source sends only what it did not bring.
            let _alive = self.wire.heartbeat("image");
            let got = super::layers::fetch_from_registry(&self.engine, &image, &need).await;
            need.retain(|d| !got.fetched.iter().any(|f| f.as_str() == d));
            from_registry = got.fetched.iter().map(|d| d.to_string()).collect();
        }
        self.pending_blobs = need.len();
        self.offer = Some(image);
        self.wire
            .send(Message::NeedBlobs {
                digests: need,
                from_registry,
            })
            .await?;
        if self.pending_blobs == 0 {
            self.register_image().await?;
        }
        Ok(())
    }

    async fn receive_blob(
        &mut self,
        digest: String,
        stream: u32,
        compression: StreamCompression,
    ) -> Result<(), MigrationError> {
        self.step("image").await?;
        let tmp = self.work.path().join("blob.tmp");
        self.wire.recv_file(stream, &tmp, compression).await?;
        let _alive = self.wire.heartbeat("image");
        let e = self.engine.clone();
        let d = Digest::parse(&digest)
            .map_err(|e| MigrationError::BadPeerData(format!("digest {digest}: {e}")))?;
        blocking(move || {
            let f = std::fs::File::open(&tmp).map_err(|e| MigrationError::io(&tmp, e))?;
            e.images().write_blob(&d, std::io::BufReader::new(f))?;
            Ok(())
        })
        .await?;
        self.pending_blobs = self.pending_blobs.saturating_sub(1);
        if self.pending_blobs == 0 {
            self.register_image().await?;
        }
        Ok(())
    }

    async fn register_image(&mut self) -> Result<(), MigrationError> {
        let offer = self
            .offer
            .clone()
            .ok_or_else(|| MigrationError::Internal("no image offer".into()))?;
        let e = self.engine.clone();
        blocking(move || {
            let d = Digest::parse(&offer.manifest).map_err(|err| {
                MigrationError::BadPeerData(format!("manifest digest {}: {err}", offer.manifest))
            })?;
            e.images().register(&d, &offer.names)?;
            Ok(())
        })
        .await?;
        self.image_registered = true;
        Ok(())
    }

    async fn receive_fs(
        &mut self,
        what: FsTarget,
        stream: u32,
        compression: StreamCompression,
        summary: Option<serde_json::Value>,
    ) -> Result<(), MigrationError> {
        self.step("fs").await?;
        let target = fs_target(&self.engine, self.config()?, &what)?;
        let summary: DiffSummary = summary
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| MigrationError::BadPeerData(format!("filesystem summary: {e}")))?
            .ok_or_else(|| {
                MigrationError::BadPeerData("a filesystem stream without its summary".into())
            })?;
        let tar = self.work.path().join("fs.tar");
        self.wire.recv_file(stream, &tar, compression).await?;
        let _alive = self.wire.heartbeat("fs");
        blocking(move || {
            std::fs::create_dir_all(&target).map_err(|e| MigrationError::io(&target, e))?;
            let f = std::fs::File::open(&tar).map_err(|e| MigrationError::io(&tar, e))?;
            fsdiff::apply_to_upper(&target, std::io::BufReader::new(f), &summary)?;
            Ok(())
        })
        .await
    }

    /// The freeze comes next: refuse a container this host has no room for, stage the gated
    /// network now, off the downtime path, warm the memory the pages will land in, and put
    /// the page receiver behind the tunnel.
    async fn open_page_sink(&mut self, memory_bytes: u64, lz4: bool) -> Result<(), MigrationError> {
        self.step("dump").await?;
        if memory_bytes > 0 {
            hostmem::check_room(memory_bytes, blocking(|| Ok(hostmem::available()?)).await?)?;
        }
        let (e, name) = (self.engine.clone(), self.name());
        let t = Instant::now();
        blocking(move || Ok(e.stage_incoming_network(&name)?)).await?;
        self.network_staging = t.elapsed();
        if self.lazy {
            // Post-copy: the pages stay on the source until the restored process pulls them.
            return self.wire.send(Message::PagesReady { lz4: false }).await;
        }
        let t = Instant::now();
        let warmed = blocking(move || Ok(hostmem::Warmed::touch(memory_bytes)?)).await?;
        self.memory_warming = (t.elapsed(), warmed.bytes());
        let rx = self.wire.demux.stream(TUNNEL_STREAM)?;
        let codec = if lz4 { Codec::Lz4 } else { Codec::Plain };
        let pages = PageSink::new(&self.images_dir()?);
        let tunnel = tunnel_into(self.wire.sink.clone(), rx, codec, pages);
        self.announcer = Some(announce_when_frozen(&self.engine, self.name(), &tunnel));
        self.warm_release = Some(WarmRelease::start(warmed, &tunnel));
        self.tunnel = Some(tunnel);
        self.wire.send(Message::PagesReady { lz4 }).await
    }

    async fn receive_images(
        &mut self,
        stream: u32,
        compression: StreamCompression,
    ) -> Result<(), MigrationError> {
        self.step("images").await?;
        let tar = self.work.path().join("images.tar");
        self.wire.recv_file(stream, &tar, compression).await?;
        let dir = self.images_dir()?;
        blocking(move || {
            let f = std::fs::File::open(&tar).map_err(|e| MigrationError::io(&tar, e))?;
            fsdiff::unpack_dir(std::io::BufReader::new(f), &dir)?;
            Ok(())
        })
        .await
    }

    /// Restores the copy, gated, with heartbeats to the source while CRIU works. The stage
    /// `Restored` is recorded before the source hears of it.
    async fn restore(&mut self) -> Result<(), MigrationError> {
        let t = Instant::now();
        self.step("restore").await?;
        let alive = self.wire.heartbeat("restore");
        if !self.lazy {
            // The dump's last page is written once the page stream has ended cleanly.
            if let Some(tunnel) = self.tunnel.take() {
                tunnel.wait().await?;
            }
        }
        // Every page is in: what is still warmed (the estimate was high) goes back now.
        self.warm_release = None;
        // `page_server_us` on the wire: the wait for the last page (now the page receiver's).
        let pages_in = t.elapsed();
        let lazy_source = self.lazy_tunnel().await?;
        let (e, name, dir) = (self.engine.clone(), self.name(), self.images_dir()?);
        match blocking(move || Ok(super::stats::restore(&e, &name, &dir, lazy_source)?)).await {
            Ok((mut stats, daemon)) => {
                self.lazy_daemon = daemon;
                let id = self.migration_id.clone().unwrap_or_default();
                record::transition(self.engine.paths(), &id, Stage::Restored, |_| {})?;
                drop(alive);
                stats.page_server_us = pages_in.as_micros() as u64;
                stats.network_staging_us = self.network_staging.as_micros() as u64;
                stats.memory_warming_us = self.memory_warming.0.as_micros() as u64;
                stats.memory_warmed_bytes = self.memory_warming.1;
                stats.total_us = t.elapsed().as_micros() as u64;
                self.wire.send(Message::Restored { stats }).await
            }
            Err(err) => {
                self.keep_restore_log();
                let reason = err.to_string();
                drop(alive);
                self.wire
                    .send(Message::RestoreFailed {
                        reason: reason.clone(),
                    })
                    .await?;
                Err(MigrationError::RestoreFailed(reason))
            }
        }
    }

    /// Post-copy: the local end the lazy-pages daemon connects to, bridged to the source's
    /// lazy page server. Held: if the source or the link dies, the daemon is kept waiting
    /// (and the restored process blocked on its fault) until the copy is killed.
    async fn lazy_tunnel(&mut self) -> Result<Option<SocketAddr>, MigrationError> {
        if !self.lazy {
            return Ok(None);
        }
        let listener = tunnel_listen(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr();
        let rx = self.wire.demux.stream(TUNNEL_STREAM)?;
        self.tunnel = Some(listener.bridge_with(
            self.wire.sink.clone(),
            rx,
            Hold::OnErrorOrEarlyEnd,
            Codec::Plain,
        ));
        Ok(Some(addr))
    }

    /// A restored copy waits, gated, for the verdict: `Commit` on this connection, the
    /// source's answer to our inquiries once the connection is gone, an inquiry of the source
    /// (which commits through the record), or an operator.
    async fn await_verdict(&mut self) -> Result<Stage, MigrationError> {
        let id = self.migration_id.clone().unwrap_or_default();
        let mut decisions = commit::register_waiting(&id);
        let result = self.verdict_loop(&id, &mut decisions).await;
        commit::unregister_waiting(&id);
        result
    }

    async fn verdict_loop(
        &mut self,
        id: &str,
        decisions: &mut commit::Decisions,
    ) -> Result<Stage, MigrationError> {
        let mut last_heard = Instant::now();
        loop {
            if let Some(stage) = self.settled(id)? {
                if stage == Stage::Draining {
                    // The source's inquiry committed this copy: pull the rest of its memory.
                    return self.drain(id).await;
                }
                return Ok(stage);
            }
            tokio::select! {
                msg = self.wire.recv() => match msg {
                    Ok(Message::Commit {}) => return self.commit(id).await,
                    Ok(Message::Progress { .. }) => last_heard = Instant::now(),
                    Err(MigrationError::PeerAborted(reason)) => {
                        tracing::warn!(%reason, "the source aborted; discarding the copy");
                        return self.discard(id).await;
                    }
                    Ok(other) => {
                        tracing::warn!(message = other.name(), "unexpected while awaiting the verdict");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "lost the source before the verdict; asking it");
                        break;
                    }
                },
                d = decisions.recv() => if let Some((d, reply)) = d {
                    let r = match d.verdict() {
                        Verdict::Committed => self.commit_quietly(id).await,
                        _ => self.discard(id).await,
                    };
                    commit::answer(reply, &r);
                    return r;
                },
                _ = tokio::time::sleep(INQUIRE_EVERY) => if last_heard.elapsed() > IDLE {
                    tracing::warn!("the source went silent before the verdict; asking it");
                    break;
                },
            }
        }
        if let Some(a) = self.announcer.take() {
            a.abort();
        }
        let stage = commit::settle_destination(
            self.engine.clone(),
            self.identity.clone(),
            id.to_owned(),
            self.config()?.clone(),
            self.remote.clone(),
            decisions,
        )
        .await?;
        if stage == Stage::Discarded {
            self.remove_new_image().await;
        }
        Ok(stage)
    }

    /// A verdict recorded meanwhile (an inquiry of the source committed this copy).
    fn settled(&self, id: &str) -> Result<Option<Stage>, MigrationError> {
        Ok(record::load(self.engine.paths(), id)?
            .map(|r| r.stage)
            .filter(|s| s.is_final() || *s == Stage::Draining))
    }

    /// `Commit` arrived: record it, open the gate, then say so. Post-copy then pulls the
    /// rest of the memory before the migration is done.
    async fn commit(&mut self, id: &str) -> Result<Stage, MigrationError> {
        let stage = self.commit_quietly(id).await?;
        let replied = match self.step("commit-reply").await {
            Ok(()) => self.wire.send(Message::Committed {}).await,
            Err(e) => Err(e),
        };
        if self.lazy {
            // The copy runs with missing pages: whatever happened to the reply, only the drain
            // may end this (it completes, or it kills the copy).
            if let Err(e) = &replied {
                tracing::warn!(error = %e, "could not tell the source about the commit");
            }
            return self.drain(id).await;
        }
        replied?;
        Ok(stage)
    }

    /// Post-copy after the commit: the rest of the memory (see [`super::drain`]).
    async fn drain(&mut self, id: &str) -> Result<Stage, MigrationError> {
        let cfg = self.config()?.clone();
        let (tunnel, daemon) = (self.tunnel.take(), self.lazy_daemon.take());
        super::drain::destination(self.engine.clone(), &mut self.wire, tunnel, daemon, cfg, id)
            .await
    }

    async fn commit_quietly(&mut self, id: &str) -> Result<Stage, MigrationError> {
        if let Some(a) = self.announcer.take() {
            a.abort();
        }
        let (e, i, name) = (self.engine.clone(), id.to_owned(), self.name());
        blocking(move || commit::commit_destination(&e, &i, &name)).await
    }

    async fn discard(&mut self, id: &str) -> Result<Stage, MigrationError> {
        let cfg = self.config()?.clone();
        let (e, i) = (self.engine.clone(), id.to_owned());
        blocking(move || commit::discard_destination(&e, &i, &cfg)).await?;
        self.remove_new_image().await;
        Ok(Stage::Discarded)
    }

    /// The next control message. Silence is fine while page bytes still flow through the
    /// tunnel (a big dump); silence with nothing moving for [`IDLE`] means the source or the
    /// link is gone.
    async fn next_message(&mut self) -> Result<Message, MigrationError> {
        let stats = |t: &Option<Tunnel>| t.as_ref().map(|t| t.stats());
        let mut last = stats(&self.tunnel);
        let mut last_move = Instant::now();
        loop {
            match tokio::time::timeout(Duration::from_secs(2), self.wire.recv()).await {
                Ok(Ok(Message::Progress { .. })) => last_move = Instant::now(),
                Ok(m) => return m,
                Err(_) => {
                    let now = stats(&self.tunnel);
                    if now != last {
                        last = now;
                        last_move = Instant::now();
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

    /// Removes everything an unfinished incoming migration made on this host (before a copy
    /// was restored, or after its restore failed).
    async fn undo(&mut self, why: &MigrationError) {
        let Some(id) = self.migration_id.clone() else {
            return;
        };
        if let Err(e) = record::update(self.engine.paths(), &id, |r| {
            r.error = Some(why.to_string())
        }) {
            tracing::warn!(error = %e, "recording why a migration failed");
        }
        // Only a copy that never restored is ours to remove on a failure; a restored one waits
        // for a verdict (a committed one is the container now).
        let stage = record::load(self.engine.paths(), &id)
            .ok()
            .flatten()
            .map(|r| r.stage);
        if self.config.is_some() && stage == Some(Stage::Receiving) {
            if let Err(e) = self.discard(&id).await {
                self.note_cleanup(&format!("discarding the incoming copy: {e}"));
            }
        }
    }

    async fn remove_new_image(&mut self) {
        let image = self
            .offer
            .as_ref()
            .map(|o| o.manifest.clone())
            .filter(|_| self.image_was_new && self.image_registered);
        if let Some(img) = image {
            let e = self.engine.clone();
            let removed = blocking(move || {
                if !e.images_in_use().contains(&img) {
                    e.images().remove(&img)?;
                }
                Ok(())
            })
            .await;
            if let Err(e) = removed {
                self.note_cleanup(&format!("removing the image it brought: {e}"));
            }
        }
    }

    fn note_cleanup(&self, msg: &str) {
        match &self.migration_id {
            Some(id) => record::note_cleanup_failure(self.engine.paths(), id, msg),
            None => tracing::warn!("{msg}"),
        }
    }

    /// CRIU's restore.log of a failed restore, kept under the migration record.
    fn keep_restore_log(&self) {
        let (Some(id), Some(cfg)) = (&self.migration_id, &self.config) else {
            return;
        };
        let log = self
            .engine
            .container_dir(&cfg.id)
            .join("criu-work")
            .join("restore.log");
        let dir = super::logs_dir(self.engine.paths(), id);
        let kept = std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::copy(&log, dir.join("restore.log")));
        if let Err(e) = kept {
            self.note_cleanup(&format!("keeping {}: {e}", log.display()));
        }
    }

    async fn close(&mut self) {
        if let Some(t) = self.tunnel.take() {
            t.abort();
        }
        if let Some(a) = self.announcer.take() {
            a.abort();
        }
        self.wire.close().await;
    }
}

/// Page bytes on the tunnel mean the source is frozen with its network locked: from then on
/// the clients' packets are better held here than dropped there.
fn announce_when_frozen(
    engine: &Arc<Engine>,
    name: String,
    tunnel: &Tunnel,
) -> tokio::task::JoinHandle<()> {
    let counters = tunnel.counter_handle();
    let engine = engine.clone();
    tokio::spawn(async move {
        while counters.from_peer() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        announce_repeatedly(engine, name).await
    })
}

/// Gives warmed memory back to the kernel just ahead of the pages, as the tunnel carries them
/// (see [`hostmem`]): the page server's scratch then lands in memory the hypervisor still
/// backs. Dropped, it gives back all that is left.
struct WarmRelease(tokio::task::JoinHandle<()>);

impl WarmRelease {
    /// Chunks given back ahead of the pages received so far.
    const LEAD: u64 = 4 * hostmem::CHUNK;

    fn start(mut warmed: hostmem::Warmed, tunnel: &Tunnel) -> WarmRelease {
        let counters = tunnel.counter_handle();
        WarmRelease(tokio::spawn(async move {
            while warmed.held() > 0 {
                warmed.release_up_to(counters.from_peer().saturating_add(Self::LEAD));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }))
    }
}

impl Drop for WarmRelease {
    fn drop(&mut self) {
        // Aborting drops the task's `Warmed`, which gives back every chunk still held.
        self.0.abort();
    }
}

/// Announces the incoming container now, and again a few times (see [`announce_repeatedly`]).
fn announce(engine: &Arc<Engine>, name: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(announce_repeatedly(engine.clone(), name))
}

/// Repeated: until the source has left the fabric, its netns may still answer an ARP and pull
/// the clients back; the commit cancels this task.
async fn announce_repeatedly(engine: Arc<Engine>, name: String) {
    for pause in [0, 100, 250, 500, 1000, 2000] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let (e, n) = (engine.clone(), name.clone());
        if let Err(err) = blocking(move || Ok(e.announce_incoming(&n)?)).await {
            tracing::warn!(error = %err, "could not announce the incoming container");
            return;
        }
    }
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
        FsTarget::Volume(name) => Err(MigrationError::BadPeerData(format!(
            "volume {name} is not one of the container's volumes"
        ))),
    }
}
