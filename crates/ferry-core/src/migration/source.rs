//! The source side of a stop-and-copy migration, as short named steps over [`Outgoing`].
//!
//! The container keeps running through the image and first filesystem pass. Then runc
//! checkpoints it with `--page-server` pointed at a local tunnel, so its memory streams to the
//! destination inside the authenticated channel and never touches the source's disk. CRIU is
//! held at `post-dump` (see [`super::hook`]) with the source frozen and intact until the
//! destination has restored the copy; the fenced commit ([`super::commit`]) decides the rest.
//! Any failure before `Commit` is sent resumes the source, verified ([`super::resume`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::{
    BlobRef, FsTarget, Hello, ImageOffer, Message, MigrationMode, SenderMachine, StreamCompression,
    MIN_SUPPORTED, PROTOCOL_VERSION, TUNNEL_STREAM,
};

use super::commit::{self, Frozen};
use super::fault::{self, Injected};
use super::hook::{HookServer, HOOK_RECORD_ENV, HOOK_SOCKET_ENV};
use super::record::{self, MigrationRecord, Role, Stage};
use super::report::{MigrationReport, Outcome, Part, Phase, Progress, Span};
use super::resume::CheckpointProcess;
use super::wire::{budget, within, Machine, Wire};
use super::{blocking, host_versions, MigrateRequest, MigrationError};
use crate::container::{ContainerConfig, Engine, RootfsDirs};
use crate::criu::{PageSocket, ReadySignal, CONFIG_FILE_ENV};
use crate::fsdiff::{self, UpperSnapshot};
use crate::image::Digest;
use crate::network;
use crate::peer::channel::{Demux, PeerConn};
use crate::peer::registry::Peers;
use crate::peer::tls::HostIdentity;
use crate::peer::tunnel::{tunnel_connect_with, tunnel_unix, Codec, Hold, Tunnel};
use crate::runtime::freezer::Freezer;

/// How long a reply may take when the peer sends no heartbeat either.
pub(crate) const REPLY: Duration = Duration::from_secs(15);
/// No page bytes for this long while dumping means the link or the peer is gone.
const DUMP_STALL: Duration = Duration::from_secs(10);
/// Post-copy: CRIU dumps everything but the pages before its lazy server is up.
const LAZY_READY: Duration = Duration::from_secs(60);

/// One outgoing migration: what it knows and what it holds, so every exit can clean up.
pub(crate) struct Outgoing {
    pub engine: Arc<Engine>,
    pub identity: Arc<HostIdentity>,
    pub cfg: ContainerConfig,
    pub mode: MigrationMode,
    pub report: MigrationReport,
    pub progress: Progress,
    /// Scratch for this migration (`tmp/migrate-ID-*`); removed when the last holder is
    /// done (an in-doubt wait may outlive this value).
    pub work: Arc<tempfile::TempDir>,
    pub wire: Option<Wire>,
    blobs: Vec<(Digest, u64)>,
    /// The blobs the destination fetched from the image's registry (for the report).
    registry_blobs: Vec<String>,
    targets: Vec<(FsTarget, PathBuf)>,
    snapshots: Vec<UpperSnapshot>,
    /// Set from the freeze on: the held checkpoint.
    pub frozen: Option<Frozen>,
    pub tunnel: Option<Tunnel>,
    /// Post-copy: keeps CRIU's lazy page server (it binds 0.0.0.0) off the network.
    pub lazy_port: Option<network::LoopbackOnlyPort>,
    /// Post-copy: the memory CRIU left to be pulled after the resume (from its dump log).
    pub lazy_total: Option<u64>,
    /// The measured parts of the frozen window so far (see [`super::report::Downtime`]).
    pub spans: Vec<Span>,
    /// The destination's account of its restore.
    pub restored: Option<ferry_proto::RestoreStats>,
}

/// Migrates `req.container` to `req.to`. Never leaves zero or two running copies: any error
/// before `Commit` resumes the source; after it, only the destination's verdict ends the wait.
pub async fn migrate_out(
    engine: Arc<Engine>,
    identity: Arc<HostIdentity>,
    req: MigrateRequest,
    progress: Progress,
) -> Result<MigrationReport, (MigrationError, MigrationReport)> {
    let t0 = Instant::now();
    let mut out = match Outgoing::claim(engine, identity, &req, progress).await {
        Ok(out) => out,
        Err((err, mut report)) => {
            report.outcome = Some(Outcome::Refused);
            report.error = Some(err.to_string());
            return Err((err, report));
        }
    };
    let result = out.run().await;
    let result = match result {
        Ok(()) => commit::commit_source(&mut out).await,
        Err(e) => Err(e),
    };
    out.report.total_ms = t0.elapsed().as_millis() as u64;
    commit::finish_source(out, result, t0).await
}

impl Outgoing {
    /// Claims the container (nothing else may touch it while it moves) and records the
    /// migration durably before anything else happens.
    async fn claim(
        engine: Arc<Engine>,
        identity: Arc<HostIdentity>,
        req: &MigrateRequest,
        progress: Progress,
    ) -> Result<Self, (MigrationError, MigrationReport)> {
        let id = super::new_migration_id();
        let mode = match req.mode {
            Some(m) => m,
            None => {
                let memory = engine.memory_usage(&req.container);
                blocking(move || Ok(super::auto_mode(memory)))
                    .await
                    .unwrap_or(MigrationMode::StopAndCopy)
            }
        };
        let report = MigrationReport::new(
            &id,
            &req.container,
            &engine.config().host_name,
            &req.to,
            match mode {
                MigrationMode::StopAndCopy => "stop-and-copy",
                MigrationMode::PostCopy => "post-copy",
            },
        );
        let (e, name) = (engine.clone(), req.container.clone());
        let claimed = blocking(move || Ok(e.begin_migration(&name)?)).await;
        let rec = match claimed {
            Ok(r) => r,
            Err(err) => return Err((err, report)),
        };
        let setup = (|| {
            let mut r = MigrationRecord::new(
                &id,
                Role::Source,
                Stage::Claimed,
                &rec.config.name,
                &rec.config.id,
            );
            r.peer = req.to.clone();
            r.post_copy = mode == MigrationMode::PostCopy;
            record::create(engine.paths(), &r)?;
            let tmp = engine.paths().tmp();
            std::fs::create_dir_all(&tmp).map_err(|e| MigrationError::io(&tmp, e))?;
            tempfile::Builder::new()
                .prefix(&format!("migrate-{id}-"))
                .tempdir_in(&tmp)
                .map_err(|e| MigrationError::io(&tmp, e))
        })();
        let work = match setup {
            Ok(w) => w,
            Err(err) => {
                engine.end_migration(&rec.config.name, crate::container::Status::Running);
                return Err((err, report));
            }
        };
        Ok(Outgoing {
            engine,
            identity,
            cfg: rec.config,
            mode,
            report,
            progress,
            work: Arc::new(work),
            wire: None,
            blobs: Vec::new(),
            registry_blobs: Vec::new(),
            targets: Vec::new(),
            snapshots: Vec::new(),
            frozen: None,
            tunnel: None,
            lazy_port: None,
            lazy_total: None,
            spans: Vec::new(),
            restored: None,
        })
    }

    pub fn id(&self) -> &str {
        &self.report.migration_id
    }

    pub fn wire(&mut self) -> Result<&mut Wire, MigrationError> {
        self.wire
            .as_mut()
            .ok_or_else(|| MigrationError::Internal("no connection to the destination".into()))
    }

    /// Runs the steps up to a restored (gated) copy on the destination.
    async fn run(&mut self) -> Result<(), MigrationError> {
        // Refused before anything moves; checked again just before the freeze.
        self.check_workload().await?;
        self.handshake().await?;
        self.check_cpu().await?;
        let need = self.prepare().await?;
        self.send_image(&need).await?;
        self.fs_pass().await?;
        self.check_workload().await?;
        self.dump().await?;
        self.send_images().await?;
        self.send_delta().await?;
        self.restore().await
    }

    /// Fault-injection point at the start of a step; a `corrupt` fault sends a bad frame.
    pub async fn step(&mut self, phase: Phase, name: &str) -> Result<(), MigrationError> {
        self.progress.start(phase);
        if fault::at(self.engine.paths(), Role::Source, name).await? == Injected::Corrupt {
            if let Some(w) = self.wire.as_ref() {
                w.sink.send_corrupt_frame().await?;
            }
        }
        Ok(())
    }

    /// Connects with mutual TLS and agrees on a protocol version (after checking that this
    /// side can dump at all).
    async fn handshake(&mut self) -> Result<(), MigrationError> {
        self.step(Phase::Connect, "handshake").await?;
        crate::container::checkpoint::require_cr_support()?;
        if self.mode == MigrationMode::PostCopy {
            crate::criu::require(&[crate::criu::Feature::LazyPages]).map_err(|e| {
                MigrationError::Unsupported(format!("this host cannot do post-copy: {e}"))
            })?;
        }
        let to = self.report.to.clone();
        let peers = Peers::load(self.engine.paths())?;
        let peer = peers
            .get(&to)
            .cloned()
            .ok_or_else(|| MigrationError::UnknownPeer(to.clone()))?;
        let conn = PeerConn::connect(&self.identity, &peer.name, peer.addr).await?;
        let (sink, source) = conn.split();
        let (demux, control) = Demux::spawn(source);
        let mut wire = Wire::new(sink, demux, control, Machine::Sender(SenderMachine::new()));
        let versions = host_versions(&self.engine);
        let hello = Hello {
            versions: (MIN_SUPPORTED, PROTOCOL_VERSION),
            host: self.identity.name.clone(),
            criu_version: versions.criu_version,
            runc_version: versions.runc_version,
            kernel: super::kernel_release(),
            mode: self.mode,
            features: [
                ferry_proto::FEATURE_TCP_ESTABLISHED,
                ferry_proto::FEATURE_PAGE_TUNNEL,
                ferry_proto::FEATURE_ZSTD,
            ]
            .into_iter()
            .chain(
                (self.mode == MigrationMode::PostCopy).then_some(ferry_proto::FEATURE_LAZY_PAGES),
            )
            .map(String::from)
            .collect(),
        };
        let Machine::Sender(m) = &mut wire.machine else {
            unreachable!("the source drives a sender machine")
        };
        let welcome = within("the destination's welcome", REPLY, async {
            Ok(crate::peer::handshake::handshake_source(
                &wire.sink,
                &mut wire.control,
                m,
                &peer.name,
                hello,
            )
            .await?)
        })
        .await;
        self.wire = Some(wire);
        let welcome = welcome?;
        self.progress.note(format!(
            "{} speaks protocol v{} (CRIU {}, {})",
            welcome.host, welcome.version, welcome.criu_version, welcome.runc_version
        ));
        self.progress.done(&mut self.report, 0);
        Ok(())
    }

    /// CPU compatibility (CRIU's cpuinfo), before anything big moves.
    async fn check_cpu(&mut self) -> Result<(), MigrationError> {
        self.step(Phase::CpuCheck, "cpu-check").await?;
        let dir = self.work.path().join("cpuinfo");
        let d = dir.clone();
        blocking(move || {
            std::fs::create_dir_all(&d).map_err(|e| MigrationError::io(&d, e))?;
            Ok(crate::criu::cpuinfo_dump(&d)?)
        })
        .await?;
        let w = self.wire()?;
        let stream = w.new_stream();
        w.send(Message::CpuInfo {
            stream,
            compression: StreamCompression::None,
        })
        .await?;
        w.send_file(
            stream,
            &dir.join(super::CPUINFO_IMAGE),
            StreamCompression::None,
        )
        .await?;
        w.await_reply("the CPU check", REPLY, |m| match m {
            Message::CpuOk {} => Some(()),
            _ => None,
        })
        .await?;
        self.progress.done(&mut self.report, 0);
        Ok(())
    }

    /// The destination checks name, IP and image, and says which blobs it lacks.
    async fn prepare(&mut self) -> Result<Vec<String>, MigrationError> {
        self.step(Phase::Prepare, "prepare").await?;
        let image = self
            .engine
            .images()
            .resolve(&self.cfg.image)
            .map_err(|e| MigrationError::Container(e.into()))?;
        self.blobs = self.engine.images().blobs_of(&image);
        self.report.image_registry = super::layers::registry_named(&image.names);
        let offer = ImageOffer {
            manifest: image.digest.to_string(),
            names: image.names.clone(),
            blobs: self
                .blobs
                .iter()
                .map(|(d, size)| BlobRef {
                    digest: d.to_string(),
                    size: *size,
                })
                .collect(),
        };
        let msg = Message::Prepare {
            migration_id: self.id().to_owned(),
            container: serde_json::to_value(&self.cfg)
                .map_err(|e| MigrationError::Internal(e.to_string()))?,
            image: offer,
        };
        let (need, from_registry) = self
            .wire()?
            .request(msg, "the destination's preparation", REPLY, |m| match m {
                Message::NeedBlobs {
                    digests,
                    from_registry,
                } => Some((digests, from_registry)),
                _ => None,
            })
            .await?;
        self.registry_blobs = from_registry;
        self.progress.done(&mut self.report, 0);
        Ok(need)
    }

    /// Only the layers the destination lacks, by digest.
    async fn send_image(&mut self, need: &[String]) -> Result<(), MigrationError> {
        self.step(Phase::Layers, "image").await?;
        let mut sent = 0u64;
        for digest in need {
            let (d, size) = self
                .blobs
                .iter()
                .find(|(d, _)| &d.to_string() == digest)
                .cloned()
                .ok_or_else(|| {
                    MigrationError::BadPeerData(format!("{digest} was asked for but not offered"))
                })?;
            let path = self.engine.images().blob_path(&d);
            let w = self.wire()?;
            let stream = w.new_stream();
            within("sending an image blob", budget(size), async {
                w.send(Message::BlobStart {
                    digest: digest.clone(),
                    size,
                    stream,
                    compression: StreamCompression::None,
                })
                .await?;
                w.send_file(stream, &path, StreamCompression::None).await?;
                Ok(())
            })
            .await?;
            sent += size;
            self.progress.bytes(Phase::Layers, sent);
        }
        self.report.bytes.layers = sent;
        self.report.layers_sent = need.len();
        self.report.layers_skipped = self.blobs.len() - need.len();
        self.report.layer_origins = super::report::origins(&self.blobs, need, &self.registry_blobs);
        self.progress.done(&mut self.report, sent);
        Ok(())
    }

    /// Filesystem pass 1 while the container runs: the overlay upper dir and each volume.
    async fn fs_pass(&mut self) -> Result<(), MigrationError> {
        self.step(Phase::FsPass1, "fs-pass").await?;
        let upper = RootfsDirs::new(&self.engine.container_dir(&self.cfg.id)).upper;
        self.targets = vec![(FsTarget::Upper, upper)];
        for v in &self.cfg.volumes {
            self.targets.push((
                FsTarget::Volume(v.name.clone()),
                self.engine.paths().volume_data(&v.name),
            ));
        }
        let mut bytes = 0u64;
        for i in 0..self.targets.len() {
            let (target, dir) = self.targets[i].clone();
            let (n, snap) = self.send_fs(1, i, &target, &dir, None).await?;
            bytes += n;
            self.snapshots.push(snap);
            self.progress.bytes(Phase::FsPass1, bytes);
        }
        self.report.bytes.fs = bytes;
        self.progress.done(&mut self.report, bytes);
        Ok(())
    }

    /// Refuses, before the freeze, a workload CRIU could not dump (the reason names the task).
    async fn check_workload(&mut self) -> Result<(), MigrationError> {
        let (e, cfg) = (self.engine.clone(), self.cfg.clone());
        blocking(move || Ok(e.check_movable(&cfg)?)).await
    }

    /// Freezes and dumps; pages go through the tunnel to the destination's page server. Ends
    /// with the source frozen and held at CRIU's `post-dump`.
    async fn dump(&mut self) -> Result<(), MigrationError> {
        self.step(Phase::Dump, "dump").await?;
        let (e, name) = (self.engine.clone(), self.cfg.name.clone());
        let memory_bytes = blocking(move || Ok(e.memory_usage(&name).unwrap_or(0))).await?;
        let lz4 = self
            .wire()?
            .request(
                Message::OpenPageSink {
                    memory_bytes,
                    lz4: true,
                },
                "the destination's page server",
                REPLY,
                |m| match m {
                    Message::PagesReady { lz4 } => Some(lz4),
                    _ => None,
                },
            )
            .await?;
        if self.mode == MigrationMode::PostCopy {
            return self.dump_lazy().await;
        }
        let mut opts = self.checkpoint_opts()?;
        let (mut socket, local) = PageSocket::new(&opts.work_path)?;
        let local = local
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(local))
            .map_err(|e| MigrationError::io(&opts.work_path, e))?;
        let w = self.wire()?;
        let rx = w.demux.stream(TUNNEL_STREAM)?;
        let codec = if lz4 { Codec::Lz4 } else { Codec::Plain };
        let (tunnel, end_input) = tunnel_unix(local, w.sink.clone(), rx, codec);
        self.tunnel = Some(tunnel);
        opts.page_server = Some(PageSocket::ADDR);
        self.start_checkpoint(opts, PagesOut::Socket(&mut socket))
            .await?;
        self.await_post_dump().await?;
        // runc still holds CRIU's end, so CRIU closing it is no end of file (see PageSocket).
        end_input.end();
        let carried = self.tunnel.as_ref().map(|t| t.stats()).unwrap_or_default();
        let pages = carried.to_peer;
        self.report.bytes.pages = pages;
        self.report.bytes.pages_on_wire = carried.to_peer_wire;
        let stats = ferry_proto::DumpStats {
            tunnel_bytes: pages,
            ..Default::default()
        };
        self.wire()?.send(Message::DumpDone { stats }).await?;
        self.dump_spans(pages);
        self.progress.done(&mut self.report, pages);
        Ok(())
    }

    /// The dump's parts of the frozen window, from the hook's and the tunnel's timestamps.
    fn dump_spans(&mut self, pages: u64) {
        let now = Instant::now();
        let Some(f) = self.frozen.as_ref() else {
            return;
        };
        let at = |action: &str| {
            f.hook
                .seen()
                .iter()
                .find(|e| e.action == action)
                .map(|e| e.at)
        };
        let frozen = at("pre-dump").unwrap_or(f.frozen_at);
        let post_dump = at("post-dump").unwrap_or(now);
        let first_page = self
            .tunnel
            .as_ref()
            .and_then(|t| t.first_byte_to_peer())
            .unwrap_or(post_dump);
        self.spans.extend([
            Span {
                part: Part::Freeze,
                from: frozen,
                to: first_page,
                bytes: 0,
            },
            Span {
                part: Part::Pages,
                from: first_page,
                to: post_dump,
                bytes: pages,
            },
            Span {
                part: Part::PostDump,
                from: post_dump,
                to: now,
                bytes: 0,
            },
        ]);
    }

    /// Records a part of the frozen window that ran from `from` until now.
    pub fn span_since(&mut self, part: Part, from: Instant, bytes: u64) {
        self.spans.push(Span {
            part,
            from,
            to: Instant::now(),
            bytes,
        });
    }

    /// The checkpoint options of this migration's scratch (dirs created).
    fn checkpoint_opts(&self) -> Result<crate::runtime::runc::CheckpointOpts, MigrationError> {
        let work = self.work.path();
        let (images, criu_work) = (work.join("images"), work.join("criu-work"));
        for d in [&images, &criu_work] {
            std::fs::create_dir_all(d).map_err(|e| MigrationError::io(d, e))?;
        }
        Ok(self.engine.checkpoint_opts(&images, &criu_work))
    }

    /// Starts `runc checkpoint` in its own process group (so a stuck CRIU can be killed with
    /// it), its hook at this migration, with what its CRIU sends the pages through.
    async fn start_checkpoint(
        &mut self,
        mut opts: crate::runtime::runc::CheckpointOpts,
        mut pages: PagesOut<'_>,
    ) -> Result<(), MigrationError> {
        let work = self.work.path().to_owned();
        let hook_path = work.join("hook.sock");
        // Stop-and-copy only: a lazy dump ends with CRIU putting the cgroup back as it found it,
        // and a post-copy source killed after a lost drain must not be left in a frozen cgroup,
        // where SIGKILL waits for a thaw.
        let freezer = Freezer::for_container(&self.engine.config().cgroup_parent, &self.cfg.id);
        let freeze_at_pre_dump = self.mode == MigrationMode::StopAndCopy && freezer.exists();
        let hook = HookServer::bind_freezing(&hook_path, freeze_at_pre_dump.then_some(freezer))?;
        if self.mode == MigrationMode::PostCopy {
            // CRIU runs `post-dump` before it starts serving the lazy pages, so nothing can be
            // held there: the rollback point is the lazy server itself (see `drain`).
            hook.verdict(true);
        }
        if let PagesOut::Lazy(ready) = &pages {
            opts.status_fd = Some(ready.fd());
        }
        let record_path = record::path(self.engine.paths(), self.id());
        let mut tool = self
            .engine
            .runc()
            .checkpoint_command(&self.cfg.id, &opts)
            .env(HOOK_SOCKET_ENV, hook.path())
            .env(HOOK_RECORD_ENV, &record_path);
        if let PagesOut::Socket(socket) = &pages {
            tool = tool.env(CONFIG_FILE_ENV, socket.config_file());
        }
        let err_path = work.join("runc-checkpoint.err");
        let err_file =
            std::fs::File::create(&err_path).map_err(|e| MigrationError::io(&err_path, e))?;
        // Recorded before the spawn: from here on a crash must resume the source.
        record::transition(self.engine.paths(), self.id(), Stage::Frozen, |r| {
            r.hook_socket = Some(hook_path.clone());
            r.logs_dir = Some(super::logs_dir(self.engine.paths(), &r.migration_id));
        })?;
        let mut cmd = tool.command();
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        match &pages {
            PagesOut::Socket(socket) => socket.pass_to(&mut cmd),
            PagesOut::Lazy(ready) => ready.pass_to(&mut cmd),
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err_file)
            .spawn()
            .map_err(|e| MigrationError::Internal(format!("starting runc checkpoint: {e}")))?;
        drop(cmd);
        match &mut pages {
            PagesOut::Socket(socket) => socket.spawned(),
            PagesOut::Lazy(ready) => ready.spawned(),
        }
        let group = super::resume::GroupRecord::of_child(&child);
        record::update(self.engine.paths(), self.id(), |r| r.checkpoint = group)?;
        self.frozen = Some(Frozen {
            hook,
            process: Some(CheckpointProcess::Child(child)),
            detached: false,
            frozen_at: Instant::now(),
        });
        Ok(())
    }

    /// Post-copy: dumps everything but the memory, which CRIU's lazy page server then serves
    /// (on loopback only, through the tunnel) while the source stays frozen.
    async fn dump_lazy(&mut self) -> Result<(), MigrationError> {
        let port = crate::criu::free_loopback_port()
            .map_err(|e| MigrationError::io(Path::new("127.0.0.1:0"), e))?;
        let guard = blocking(move || {
            network::LoopbackOnlyPort::install(port)
                .map_err(|e| MigrationError::Internal(format!("guarding the lazy page port: {e}")))
        })
        .await?;
        self.lazy_port = Some(guard);
        let server = SocketAddr::from(([127, 0, 0, 1], port));
        let mut opts = self.checkpoint_opts()?;
        opts.lazy_pages = true;
        opts.page_server = Some(server);
        let mut ready = ReadySignal::new()?;
        self.start_checkpoint(opts, PagesOut::Lazy(&mut ready))
            .await?;
        let waited = blocking(move || Ok(ready.wait(LAZY_READY))).await?;
        if let Err(why) = waited {
            let log =
                crate::criu::explain_log(&self.work.path().join("criu-work").join("dump.log"));
            return Err(MigrationError::Dump(format!(
                "CRIU's lazy page server did not come up ({why}): {log}"
            )));
        }
        self.detach_source().await?;
        let log = self.work.path().join("criu-work").join("dump.log");
        self.lazy_total = crate::criu::lazy_bytes_in_dump_log(&log);
        if let Some(total) = self.lazy_total {
            self.progress.note(format!(
                "post-copy: {} MiB of memory stay here, to be pulled after the resume",
                total >> 20
            ));
        }
        let w = self.wire()?;
        let rx = w.demux.stream(TUNNEL_STREAM)?;
        let tunnel =
            tunnel_connect_with(server, w.sink.clone(), rx, Hold::OnError, Codec::Plain).await?;
        self.tunnel = Some(tunnel);
        self.wire()?
            .send(Message::DumpDone {
                stats: ferry_proto::DumpStats::default(),
            })
            .await?;
        if let Some(f) = self.frozen.as_ref() {
            let from = commit::frozen_at(f);
            self.span_since(Part::LazyDump, from, 0);
        }
        self.progress.done(&mut self.report, 0);
        Ok(())
    }

    /// Waits for `post-dump` (all pages on the destination), watching the tunnel for stalls.
    async fn await_post_dump(&mut self) -> Result<(), MigrationError> {
        let work = self.work.path().to_owned();
        let mut last_bytes = 0u64;
        let mut last_move = Instant::now();
        loop {
            let (Some(tunnel), Some(f)) = (self.tunnel.as_ref(), self.frozen.as_mut()) else {
                return Err(MigrationError::Internal(
                    "waiting for the dump without a checkpoint".into(),
                ));
            };
            if f.hook.poll("post-dump").is_some() {
                return Ok(());
            }
            if let Some(status) = f.exited() {
                let log = crate::criu::explain_log(&work.join("criu-work").join("dump.log"));
                let stderr =
                    std::fs::read_to_string(work.join("runc-checkpoint.err")).unwrap_or_default();
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
                    self.detach_source().await?;
                }
                last_bytes = now_bytes;
                last_move = Instant::now();
                self.progress.bytes(Phase::Dump, now_bytes);
            } else if last_move.elapsed() > DUMP_STALL {
                // Closing CRIU's page-server socket makes the dump fail, and a failed dump resumes.
                tunnel.abort();
                return Err(MigrationError::Timeout {
                    what: "memory pages to flow to the destination".into(),
                    after: DUMP_STALL,
                });
            }
            // Short: the time from CRIU's post-dump to this loop noticing it is downtime.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Takes the frozen source's veth off the bridge (once).
    pub async fn detach_source(&mut self) -> Result<(), MigrationError> {
        let Some(f) = self.frozen.as_mut() else {
            return Ok(());
        };
        if !f.detached {
            network::detach_veth(&Engine::host_veth(&self.cfg.id))
                .await
                .map_err(|e| MigrationError::Internal(format!("detaching the source: {e}")))?;
            f.detached = true;
        }
        Ok(())
    }

    /// The small CRIU images (the pages are already there).
    async fn send_images(&mut self) -> Result<(), MigrationError> {
        self.step(Phase::CriuImages, "images").await?;
        let t = Instant::now();
        let images_tar = self.work.path().join("images.tar");
        let (src, dst) = (self.work.path().join("images"), images_tar.clone());
        let bytes = blocking(move || {
            let f = std::fs::File::create(&dst).map_err(|e| MigrationError::io(&dst, e))?;
            Ok(fsdiff::pack_dir(&src, std::io::BufWriter::new(f))?)
        })
        .await?;
        let w = self.wire()?;
        let stream = w.new_stream();
        within("sending CRIU images", budget(bytes), async {
            w.send(Message::ImagesStart {
                stream,
                compression: StreamCompression::Zstd,
            })
            .await?;
            w.send_file(stream, &images_tar, StreamCompression::Zstd)
                .await?;
            Ok(())
        })
        .await?;
        self.report.bytes.images = bytes;
        self.span_since(Part::Images, t, bytes);
        self.progress.done(&mut self.report, bytes);
        Ok(())
    }

    /// The final filesystem delta (with deletions), then the log: the container is frozen,
    /// so both are complete up to the freeze.
    async fn send_delta(&mut self) -> Result<(), MigrationError> {
        self.step(Phase::FsPass2, "delta").await?;
        let t = Instant::now();
        let mut bytes = 0u64;
        for i in 0..self.targets.len() {
            let (target, dir) = self.targets[i].clone();
            let since = self.snapshots[i].clone();
            bytes += self.send_fs(2, i, &target, &dir, Some(&since)).await?.0;
        }
        let log_dir = self.work.path().join("log");
        let log = crate::runtime::shim::LOG_FILE;
        let copied = std::fs::create_dir_all(&log_dir).and_then(|_| {
            std::fs::copy(
                self.engine.container_dir(&self.cfg.id).join(log),
                log_dir.join(log),
            )
        });
        if copied.is_ok() {
            let index = self.targets.len();
            bytes += self
                .send_fs(2, index, &FsTarget::Log, &log_dir, None)
                .await?
                .0;
        }
        self.report.bytes.fs += bytes;
        self.span_since(Part::Delta, t, bytes);
        self.progress.done(&mut self.report, bytes);
        Ok(())
    }

    /// The destination restores, gated, and says so (its heartbeats keep the wait open while
    /// CRIU works; silence means it is gone).
    async fn restore(&mut self) -> Result<(), MigrationError> {
        self.step(Phase::Restore, "restore").await?;
        let t = Instant::now();
        let stats = self
            .wire()?
            .request(
                Message::Restore {},
                "the destination's restore",
                REPLY,
                |m| match m {
                    Message::Restored { stats } => Some(stats),
                    _ => None,
                },
            )
            .await?;
        self.span_since(Part::Restore, t, 0);
        self.report.criu_restore = serde_json::to_value(&stats).ok();
        self.restored = Some(stats);
        self.progress.done(&mut self.report, 0);
        Ok(())
    }

    /// Sends one filesystem (pass 1: everything; pass 2: changes since `since`, with deletions).
    async fn send_fs(
        &mut self,
        pass: u8,
        index: usize,
        target: &FsTarget,
        dir: &Path,
        since: Option<&UpperSnapshot>,
    ) -> Result<(u64, UpperSnapshot), MigrationError> {
        let tar = self.work.path().join(format!("fs-{pass}-{index}.tar"));
        let (d, t, s) = (dir.to_owned(), tar.clone(), since.cloned());
        // Packing a big volume takes a while; the destination must not take it for silence.
        let alive = self.wire()?.heartbeat("fs");
        let summary = blocking(move || {
            let f = std::fs::File::create(&t).map_err(|e| MigrationError::io(&t, e))?;
            Ok(fsdiff::export_upper(
                &d,
                std::io::BufWriter::new(f),
                s.as_ref(),
            )?)
        })
        .await?;
        drop(alive);
        let size = std::fs::metadata(&tar).map(|m| m.len()).unwrap_or(0);
        let snapshot = summary.snapshot.clone();
        let summary =
            serde_json::to_value(&summary).map_err(|e| MigrationError::Internal(e.to_string()))?;
        let w = self.wire()?;
        let stream = w.new_stream();
        within("sending a filesystem", budget(size), async {
            w.send(Message::FsStart {
                pass,
                what: target.clone(),
                stream,
                compression: StreamCompression::Zstd,
                summary: Some(summary),
            })
            .await?;
            w.send_file(stream, &tar, StreamCompression::Zstd).await?;
            Ok(())
        })
        .await?;
        if let Err(e) = std::fs::remove_file(&tar) {
            tracing::warn!(error = %e, path = %tar.display(), "removing a sent filesystem tar");
        }
        Ok((size, snapshot))
    }

    /// Keeps CRIU's logs of a failed migration under its record, for diagnosis.
    pub fn keep_logs(&self) {
        let dir = super::logs_dir(self.engine.paths(), self.id());
        let work = self.work.path();
        let keep = [
            work.join("criu-work").join("dump.log"),
            work.join("runc-checkpoint.err"),
        ];
        for f in keep.iter().filter(|f| f.exists()) {
            let copied = std::fs::create_dir_all(&dir)
                .and_then(|_| std::fs::copy(f, dir.join(f.file_name().unwrap_or_default())));
            if let Err(e) = copied {
                tracing::warn!(error = %e, file = %f.display(), "keeping a migration log");
            }
        }
    }

    /// Ends the tunnel (after a commit, its last bytes are CRIU's goodbye).
    pub async fn close_tunnel(&mut self, wait: bool) {
        if let Some(t) = self.tunnel.take() {
            if wait {
                if let Err(e) = t.wait().await {
                    tracing::debug!(error = %e, "page tunnel ended");
                }
            } else {
                t.abort();
            }
        }
    }
}

/// How a dump's CRIU sends the memory.
enum PagesOut<'a> {
    /// Stop-and-copy: into this socket, as a page-server client.
    Socket(&'a mut PageSocket),
    /// Post-copy: CRIU serves the pages itself and signals here once it listens.
    Lazy(&'a mut ReadySignal),
}
