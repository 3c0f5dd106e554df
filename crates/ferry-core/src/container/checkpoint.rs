//! Checkpoint and restore of a container on this host, and archives that carry a checkpoint
//! to another host. The pieces (dump, rootfs diff, volumes, restore) are public so migration
//! can use the same functions with other transports.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::engine::{lock, Engine};
use super::{ContainerConfig, ContainerError, ContainerRecord, RootfsDirs, Status};
use crate::cancel::{self, Cancel};
use crate::checkpoint::archive::{self, ArchiveCompression, Limits};
use crate::criu;
use crate::criu::preflight::{self, PreflightError};
use crate::fsdiff::{self, DiffSummary};
use crate::fsutil::{self, ScratchDir, MODE_PRIVATE};
use crate::ids::SnapshotName;
use crate::network::{self, GateKind};
use crate::runtime::runc::{CheckpointOpts, RestoreOpts, RuncError};
use crate::runtime::shim::{self, ShimArgs, ShimMode};

use crate::checkpoint::layout::{
    CheckpointLayout, CRIU_IMAGES_DIR, DELETED_FILES, FERRY_CONFIG, MANIFEST, ROOTFS_DIFF,
    STATS_DUMP, VOLUMES_DIR,
};

/// ferry's additions to Podman's layout: the full rootfs diff summary (opaque dirs, for an
/// exact rebuild of the upper dir) and CRIU's dump log.
pub const ROOTFS_SUMMARY: &str = "rootfs-diff.json";
pub const DUMP_LOG: &str = "dump.log";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRequest {
    #[serde(default)]
    pub leave_running: bool,
    pub name: Option<String>,
    /// Also write the checkpoint to this archive file.
    pub export: Option<String>,
    /// Also make it a checkpoint image with this reference (see `checkpoint::image`).
    #[serde(default)]
    pub create_image: Option<String>,
    /// Encrypt the exported archive with the key in this file (see `archive::crypt`).
    #[serde(default)]
    pub encrypt: Option<String>,
    /// "zstd" (default) or "none".
    pub compress: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointReport {
    pub container: String,
    pub snapshot: String,
    pub dir: String,
    pub exported: Option<String>,
    /// The checkpoint image made with `create_image`: its id (manifest digest).
    #[serde(default)]
    pub image: Option<String>,
    pub leave_running: bool,
    pub stats: criu::CriuDumpStats,
    /// Wall time of `runc checkpoint`, rootfs + volumes, and the whole operation.
    pub checkpoint_ms: u64,
    pub files_ms: u64,
    pub total_ms: u64,
    /// Bytes of CRIU images, and of the whole checkpoint dir.
    pub criu_image_bytes: u64,
    pub total_bytes: u64,
    pub established_tcp: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Snapshot to restore (default: the newest).
    pub from: Option<String>,
    /// Restore from an archive file instead, creating a new container.
    pub import: Option<String>,
    /// With `import`: a new name.
    pub name: Option<String>,
    /// With `import`: a new IP (impossible with established TCP connections).
    pub ip: Option<String>,
    /// With `import`: the key file of an encrypted archive.
    #[serde(default)]
    pub decrypt: Option<String>,
}

/// The lazy-pages daemon's log, in the restore's CRIU work dir.
pub const LAZY_PAGES_LOG: &str = "lazy-pages.log";

/// What a restore may do with its CRIU images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageUse {
    /// A checkpoint the user keeps: read only.
    Keep,
    /// Scratch (a migration's incoming images): CRIU frees each part once it has read it.
    Consume,
}

/// What [`Engine::restore_images`] started.
#[derive(Debug)]
pub struct RestoredImages {
    pub pid: u32,
    pub restore_ms: u64,
    pub stats: Option<criu::CriuRestoreStats>,
    /// Post-copy: the daemon still pulling pages; the restored process needs it until it exits.
    pub lazy: Option<criu::LazyPagesDaemon>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreReport {
    pub container: String,
    pub snapshot: String,
    pub stats: Option<criu::CriuRestoreStats>,
    pub restore_ms: u64,
    pub total_ms: u64,
    pub pid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub container: String,
    pub container_id: String,
    pub snapshot: String,
    pub created: String,
    pub bytes: u64,
    pub dir: String,
}

/// A failed `runc checkpoint` as [`ContainerError::Criu`]: runc's own failure, and the CRIU
/// log's excerpt once (a [`RuncError::Criu`] quotes the log too, for when it is shown alone).
fn dump_failed(e: RuncError, log: &Path) -> ContainerError {
    let reason = match e {
        RuncError::Criu { source, .. } => source.to_string(),
        other => other.to_string(),
    };
    ContainerError::Criu {
        op: "checkpoint",
        reason,
        log: criu::explain_log(log).to_string(),
    }
}

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ContainerError + '_ {
    move |e| ContainerError::io(path, e)
}

fn invalid(msg: String) -> ContainerError {
    ContainerError::Invalid(msg)
}

/// What every checkpoint and restore needs from CRIU and the kernel, checked before each one:
/// a supported CRIU, and restoring into a network namespace ferry made.
pub fn require_cr_support() -> Result<(), ContainerError> {
    criu::require_supported_version()?;
    criu::require(&[criu::Feature::ExternalNetNs])?;
    Ok(())
}

/// A refusal is the workload's state (WrongState: it runs, but not in a way CRIU can dump);
/// failing to read /proc or the cgroup is this host's (Io).
fn preflight_error(cfg: &ContainerConfig) -> impl FnOnce(PreflightError) -> ContainerError + '_ {
    move |e| match e {
        PreflightError::Refused(_) => ContainerError::WrongState {
            name: cfg.name.clone(),
            status: Status::Running,
            why: e.to_string(),
        },
        PreflightError::Cgroup { cgroup, source, .. } => {
            ContainerError::io(&Path::new("/sys/fs/cgroup").join(cgroup), source)
        }
        PreflightError::Proc { path, source } => ContainerError::io(&path, source),
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Engine {
    fn snapshots_dir(&self, id: &str) -> PathBuf {
        self.paths().snapshots(id)
    }

    /// The CRIU options ferry always wants: established TCP, file locks, external unix sockets.
    pub fn checkpoint_opts(&self, images: &Path, work: &Path) -> CheckpointOpts {
        CheckpointOpts {
            image_path: images.to_owned(),
            work_path: work.to_owned(),
            leave_running: false,
            tcp_established: true,
            file_locks: true,
            ext_unix_sk: true,
            page_server: None,
            lazy_pages: false,
            status_fd: None,
            manage_cgroups_mode: None,
            parent_path: None,
        }
    }

    pub fn restore_opts(&self, images: &Path, work: &Path, bundle: &Path) -> RestoreOpts {
        RestoreOpts {
            image_path: images.to_owned(),
            work_path: work.to_owned(),
            bundle: bundle.to_owned(),
            tcp_established: true,
            file_locks: true,
            ext_unix_sk: true,
            lazy_pages: false,
            auto_dedup: false,
            manage_cgroups_mode: None,
            pid_file: None,
        }
    }

    /// Refuses, before any freeze, a container with a task CRIU cannot dump (stopped, traced,
    /// under another uid, holding an unsupported fd); the error names the process and the cause.
    /// Call it on a running container, right before the freeze.
    pub fn check_movable(&self, cfg: &ContainerConfig) -> Result<(), ContainerError> {
        // Exec'd processes hang off `runc exec` outside the container: CRIU cannot carry them.
        crate::exec::sessions().refuse_if_busy(&cfg.id, &cfg.name)?;
        let cgroup = format!("{}/{}", self.config().cgroup_parent, cfg.id);
        let pids = preflight::cgroup_tasks(&cgroup).map_err(preflight_error(cfg))?;
        preflight::check_workload(&pids).map_err(preflight_error(cfg))
    }

    /// `ferry checkpoint`.
    pub fn checkpoint(
        &self,
        name: &str,
        req: &CheckpointRequest,
    ) -> Result<CheckpointReport, ContainerError> {
        let t0 = Instant::now();
        let compression: ArchiveCompression = req
            .compress
            .as_deref()
            .unwrap_or("zstd")
            .parse()
            .map_err(invalid)?;
        if let Some(exp) = &req.export {
            let p = Path::new(exp);
            if !p.is_absolute() {
                return Err(invalid(format!("export path {exp:?} must be absolute")));
            }
            if p.exists() {
                return Err(invalid(format!("export target {exp} already exists")));
            }
        }
        // A bad key or reference is refused before the freeze, not after.
        let key = match (&req.encrypt, &req.export) {
            (Some(k), Some(_)) => Some(archive::ArchiveKey::read(Path::new(k))?),
            (Some(_), None) => {
                return Err(invalid(
                    "--encrypt applies to the exported archive: add --export FILE".into(),
                ))
            }
            (None, _) => None,
        };
        if let Some(r) = &req.create_image {
            crate::image::normalize_name(r)?;
        }
        let snap = match &req.name {
            Some(s) => SnapshotName::new(s.as_str())?,
            None => SnapshotName::new(chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string())?,
        };
        require_cr_support()?;
        let slot = self.slot(name)?;
        let mut rec = lock(&slot);
        self.require_running(&mut rec, "checkpointed")?;
        self.refuse_if_stopping(&rec, "checkpointed")?;
        self.check_movable(&rec.config)?;
        let dir = self.paths().snapshot(&rec.config.id, &snap);
        if dir.exists() {
            return Err(ContainerError::NameInUse(format!(
                "{name}/{snap} (checkpoint)"
            )));
        }
        fsutil::create_private_dir_all(&dir).map_err(io(&dir))?;
        let result = self.checkpoint_into(&mut rec, &dir, req.leave_running);
        let (checkpoint_ms, files_ms) = match result {
            Ok(t) => t,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let manifest = archive::write_manifest(&dir, &rec.config.name)?;
        let mut exported = None;
        if let Some(exp) = &req.export {
            archive::export_sealed(&dir, Path::new(exp), compression, key.as_ref())?;
            exported = Some(exp.clone());
        }
        let image = match &req.create_image {
            Some(r) => Some(self.create_checkpoint_image(&rec.config, &dir, r)?),
            None => None,
        };
        let stats = criu::read_dump_stats(&dir)?;
        let images = dir.join(CRIU_IMAGES_DIR);
        Ok(CheckpointReport {
            container: rec.config.name.clone(),
            snapshot: snap.into_string(),
            dir: dir.display().to_string(),
            exported,
            image,
            leave_running: req.leave_running,
            stats,
            checkpoint_ms,
            files_ms,
            total_ms: ms(t0.elapsed()),
            criu_image_bytes: dir_size(&images),
            total_bytes: manifest.members.values().map(|m| m.size).sum(),
            established_tcp: has_established_tcp(&images),
        })
    }

    /// Dumps `rec` into `dir` in the checkpoint layout. Returns (dump ms, files ms).
    fn checkpoint_into(
        &self,
        rec: &mut ContainerRecord,
        dir: &Path,
        leave_running: bool,
    ) -> Result<(u64, u64), ContainerError> {
        let ctr_dir = self.container_dir(&rec.config.id);
        let images = dir.join(CRIU_IMAGES_DIR);
        let work = ctr_dir.join("criu-work");
        let _ = std::fs::remove_dir_all(&work);
        fsutil::create_private_dir_all(&images).map_err(io(&images))?;
        fsutil::create_private_dir_all(&work).map_err(io(&work))?;
        let mut opts = self.checkpoint_opts(&images, &work);
        opts.leave_running = leave_running;
        let t = Instant::now();
        let dumped = self.runc().checkpoint(&rec.config.id, &opts);
        let checkpoint_ms = ms(t.elapsed());
        // CRIU writes its log and stats into the work dir; the checkpoint keeps both at its top.
        let _ = std::fs::copy(work.join(DUMP_LOG), dir.join(DUMP_LOG));
        let _ = std::fs::copy(work.join(STATS_DUMP), dir.join(STATS_DUMP));
        if let Err(e) = dumped {
            // A failed dump resumes the container by itself; make sure the record says so.
            self.refresh(rec);
            return Err(dump_failed(e, &work.join(DUMP_LOG)));
        }
        if !leave_running {
            self.mark_exited(rec, Status::Checkpointed);
            rec.exit = None;
            self.save(rec)?;
        }
        let t = Instant::now();
        self.write_checkpoint_files(&rec.config, dir)?;
        Ok((checkpoint_ms, ms(t.elapsed())))
    }

    /// Everything but the CRIU images: config, spec, network, rootfs diff, volumes, stats.
    pub fn write_checkpoint_files(
        &self,
        cfg: &ContainerConfig,
        dir: &Path,
    ) -> Result<(), ContainerError> {
        let ctr_dir = self.container_dir(&cfg.id);
        let config = dir.join(FERRY_CONFIG);
        // Private: the config holds the container's environment.
        fsutil::write_json(&config, cfg, MODE_PRIVATE).map_err(io(&config))?;
        self.write_podman_files(cfg, dir)?;
        let rootfs = RootfsDirs::new(&ctr_dir);
        let tar_path = dir.join(ROOTFS_DIFF);
        let out = BufWriter::new(create_private(&tar_path)?);
        let summary = fsdiff::export_upper(&rootfs.upper, out, None)?;
        write_private_json(&dir.join(DELETED_FILES), &summary.deleted)?;
        write_private_json(&dir.join(ROOTFS_SUMMARY), &summary)?;
        if !cfg.volumes.is_empty() {
            let vdir = dir.join(VOLUMES_DIR);
            fsutil::create_private_dir_all(&vdir).map_err(io(&vdir))?;
            for v in &cfg.volumes {
                let p = CheckpointLayout::new(dir).volume_tar(&v.name);
                let out = BufWriter::new(create_private(&p)?);
                fsdiff::pack_dir(&self.paths().volume_data(&v.name), out)?;
            }
        }
        Ok(())
    }

    /// Rebuilds the container's upper dir and volumes from a checkpoint dir.
    pub fn apply_checkpoint_files(
        &self,
        cfg: &ContainerConfig,
        dir: &Path,
    ) -> Result<(), ContainerError> {
        let ctr_dir = self.container_dir(&cfg.id);
        let rootfs = RootfsDirs::new(&ctr_dir);
        rootfs.unmount()?;
        for d in [&rootfs.upper, &rootfs.work] {
            if d.exists() {
                std::fs::remove_dir_all(d).map_err(io(d))?;
            }
        }
        let image = self.images().resolve(&cfg.image)?;
        rootfs.create(super::rootfs::root_mode(&self.images().layer_dirs(&image)?))?;
        let summary: DiffSummary = read_json(&dir.join(ROOTFS_SUMMARY))?;
        let tar_path = dir.join(ROOTFS_DIFF);
        let r = BufReader::new(File::open(&tar_path).map_err(io(&tar_path))?);
        fsdiff::apply_to_upper(&rootfs.upper, r, &summary)?;
        for v in &cfg.volumes {
            let p = CheckpointLayout::new(dir).volume_tar(&v.name);
            let data = self.paths().volume_data(&v.name);
            if data.exists() {
                std::fs::remove_dir_all(&data).map_err(io(&data))?;
            }
            fsutil::create_dir_with_mode(&data, fsutil::MODE_CONTAINER_DIR).map_err(io(&data))?;
            let r = BufReader::new(File::open(&p).map_err(io(&p))?);
            fsdiff::unpack_dir(r, &data)?;
        }
        self.restore_podman_shm(cfg, dir)
    }

    /// `ferry restore`: from one of the container's own snapshots, or from an archive.
    pub fn restore(
        &self,
        name: Option<&str>,
        req: &RestoreRequest,
    ) -> Result<RestoreReport, ContainerError> {
        self.restore_bounded(name, req, None)
    }

    /// [`Engine::restore`] for a client that is waiting for it (ferryd's API): its import
    /// (`--import`) stops, leaving nothing, once `cancel` is set (the client went away), while
    /// the archive comes in and between the steps after. Here the archive may also be a FIFO
    /// (see `ImageStore::import_cancellable`).
    pub fn restore_cancellable(
        &self,
        name: Option<&str>,
        req: &RestoreRequest,
        cancel: &Cancel,
    ) -> Result<RestoreReport, ContainerError> {
        self.restore_bounded(name, req, Some(cancel))
    }

    fn restore_bounded(
        &self,
        name: Option<&str>,
        req: &RestoreRequest,
        cancel: Option<&Cancel>,
    ) -> Result<RestoreReport, ContainerError> {
        require_cr_support()?;
        match &req.import {
            Some(file) => self.restore_import(Path::new(file), req, cancel),
            None => {
                let name = name.ok_or_else(|| {
                    invalid("restore needs a container name or --import FILE".into())
                })?;
                if req.decrypt.is_some() {
                    return Err(invalid(
                        "--decrypt is for --import FILE: local checkpoints are not encrypted"
                            .into(),
                    ));
                }
                if self.slot(name).is_err() {
                    if let Some(layer) = self.checkpoint_image_root(name)? {
                        return self.restore_image(name, &layer, req);
                    }
                }
                if req.ip.is_some() {
                    return Err(invalid(
                        "--ip is only possible with --import or a checkpoint image".into(),
                    ));
                }
                self.restore_local(name, req.from.as_deref())
            }
        }
    }

    fn restore_local(
        &self,
        name: &str,
        from: Option<&str>,
    ) -> Result<RestoreReport, ContainerError> {
        let t0 = Instant::now();
        let from = from.map(SnapshotName::new).transpose()?;
        let slot = self.slot(name)?;
        let mut rec = lock(&slot);
        self.refresh(&mut rec);
        if !matches!(rec.status, Status::Checkpointed | Status::Stopped) {
            return Err(ContainerError::WrongState {
                name: name.to_owned(),
                status: rec.status,
                why: "a container can only be restored while it is not running".into(),
            });
        }
        let snaps = self.snapshots_of(&rec.config)?;
        let snap = match from {
            Some(f) => snaps.iter().find(|s| f == s.snapshot).ok_or_else(|| {
                ContainerError::Missing(format!("container {name} has no checkpoint {f}"))
            })?,
            None => snaps
                .last()
                .ok_or_else(|| invalid(format!("container {name} has no checkpoint to restore")))?,
        }
        .clone();
        let dir = PathBuf::from(&snap.dir);
        archive::verify_dir(&dir)?;
        self.apply_checkpoint_files(&rec.config, &dir)?;
        let report = self.restore_from_dir(&mut rec, &dir, &snap.snapshot, t0)?;
        Ok(report)
    }

    fn restore_import(
        &self,
        file: &Path,
        req: &RestoreRequest,
        cancel: Option<&Cancel>,
    ) -> Result<RestoreReport, ContainerError> {
        let t0 = Instant::now();
        let never = Cancel::new();
        let stream = cancel.is_some() && cancel::is_fifo(file);
        let cancel = cancel.unwrap_or(&never);
        if !file.is_file() && !stream {
            return Err(ContainerError::Missing(format!(
                "checkpoint archive {} does not exist or is not a file",
                file.display()
            )));
        }
        // A directory of its own: ferryd's pid is the same for every request, so a name made
        // from it let two concurrent imports delete each other's files.
        let scratch =
            ScratchDir::new_in(&self.paths().tmp(), "import-").map_err(io(&self.paths().tmp()))?;
        // A stream is copied in first (within the archive limit and the free space), so the
        // archive reader, which opens its input more than once, reads a regular file.
        let spooled = scratch.path().join("archive");
        let file = if stream {
            let free = fsutil::free_bytes(scratch.path()).map_err(io(scratch.path()))?;
            let room = free
                .saturating_sub(fsutil::FREE_SPACE_RESERVE)
                .min(Limits::default().max_total_bytes);
            let until = Instant::now() + crate::image::IMPORT_DEADLINE;
            cancel::spool_stream(file, &spooled, room, until, cancel)
                .map_err(|e| ContainerError::Invalid(format!("reading {}: {e}", file.display())))?;
            spooled.as_path()
        } else {
            file
        };
        // `import` wants a destination that does not exist yet.
        let tmp = scratch.path().join("checkpoint");
        let key = req
            .decrypt
            .as_deref()
            .map(|k| archive::ArchiveKey::read(Path::new(k)))
            .transpose()?;
        let origin = archive::import_sealed(file, &tmp, &Limits::default(), key.as_ref())?;
        // The last point where stopping leaves nothing to undo but the scratch dir.
        cancel
            .check()
            .map_err(|e| ContainerError::Invalid(format!("restore of {}: {e}", file.display())))?;
        self.restore_staged(
            scratch,
            &tmp,
            &origin,
            req,
            &format!("archive:{}", file.display()),
            t0,
        )
    }

    /// Creates and restores a container from a checkpoint dir staged in `scratch` (from an
    /// archive or a checkpoint image), with `req`'s new name or address.
    pub(super) fn restore_staged(
        &self,
        scratch: ScratchDir,
        tmp: &Path,
        origin: &archive::Origin,
        req: &RestoreRequest,
        source: &str,
        t0: Instant,
    ) -> Result<RestoreReport, ContainerError> {
        let mut cfg = self.archive_config(tmp, origin)?;
        self.images().resolve(&cfg.image).map_err(|_| {
            invalid(format!(
                "the checkpoint needs image {} ({}), which this host does not have; import it first",
                cfg.image_ref, cfg.image
            ))
        })?;
        let established = has_established_tcp(&tmp.join(CRIU_IMAGES_DIR));
        if let Some(ip) = &req.ip {
            let ip: std::net::Ipv4Addr = ip
                .parse()
                .map_err(|_| invalid(format!("invalid IP address {ip:?}")))?;
            if ip != cfg.ip {
                if established {
                    return Err(invalid(format!(
                        "cannot move the container to {ip}: the checkpoint holds established TCP connections bound to {}, which only survive on the same address",
                        cfg.ip
                    )));
                }
                cfg.ip = ip;
                cfg.mac = network::format_mac(&network::mac_for_ip(ip));
            }
        }
        if let Some(n) = req.name.as_ref().filter(|n| **n != cfg.name) {
            if established {
                return Err(invalid(format!(
                    "cannot restore as {n:?}: the checkpoint holds established TCP connections, which only \
                     survive as the same container ({:?}, {}); restore without --name, or checkpoint \
                     without open connections",
                    cfg.name, cfg.ip
                )));
            }
            cfg.name = n.clone();
        }
        let bridge = &self.config().bridge;
        if !network::same_subnet(cfg.ip, bridge.address, bridge.prefix) {
            return Err(invalid(format!(
                "the checkpoint's address {} is outside this host's network {}/{}: restore it \
                 with --ip ADDRESS{}",
                cfg.ip,
                bridge.address,
                bridge.prefix,
                if established {
                    ", which is impossible here: it holds established TCP connections"
                } else {
                    ""
                }
            )));
        }
        // The name may have changed; everything must pass before a path is built from it.
        cfg.validate()?;
        if self.paths().container(&cfg.id).exists() {
            // The original still exists on this host: the copy needs its own identity.
            cfg.id = super::engine::new_id();
        }
        // A volume another container uses is not this archive's to overwrite.
        let others = self.list_raw();
        for v in &cfg.volumes {
            if let Some(user) = others
                .iter()
                .find(|r| r.config.volumes.iter().any(|u| u.name == v.name))
            {
                return Err(ContainerError::WrongState {
                    name: user.config.name.clone(),
                    status: user.status,
                    why: format!(
                        "it uses volume {}, which the archive would overwrite; remove it first",
                        v.name
                    ),
                });
            }
        }
        // Volumes this import creates go again if it fails; ones that were here stay.
        let new_volumes: Vec<PathBuf> = cfg
            .volumes
            .iter()
            .map(|v| self.paths().volume(&v.name))
            .filter(|p| !p.exists())
            .collect();
        let slot = self.register_incoming(cfg, source)?;
        let mut rec = lock(&slot);
        let snapshot = SnapshotName::new("imported")?;
        let dir = self.paths().snapshot(&rec.config.id, &snapshot);
        let result = (|| {
            fsutil::create_private_dir_all(dir.parent().expect("snapshot parent"))
                .map_err(io(&dir))?;
            std::fs::rename(tmp, &dir).map_err(io(&dir))?;
            self.apply_checkpoint_files(&rec.config, &dir)?;
            self.restore_from_dir(&mut rec, &dir, &snapshot, t0)
        })();
        drop(scratch);
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                let mut r = rec.clone();
                drop(rec);
                // CRIU's log is in the container's dir, which goes now: keep a copy first.
                let e = self.keep_failed_import_log(e, &r.config);
                if let Err(fe) = self.forget(&mut r) {
                    tracing::warn!(container = %r.config.name, error = %fe, "cleaning up a failed import");
                }
                for p in std::iter::once(self.snapshots_dir(&r.config.id)).chain(new_volumes) {
                    if let Err(re) = std::fs::remove_dir_all(&p) {
                        if re.kind() != std::io::ErrorKind::NotFound {
                            tracing::warn!(path = %p.display(), error = %re, "cleaning up a failed import");
                        }
                    }
                }
                Err(e)
            }
        }
    }

    /// A failed import's CRIU error points at a restore log in the container's dir, which the
    /// cleanup removes: the log is copied to `<root>/failed-imports/` and the error points
    /// there instead (or says the log is lost, and why).
    fn keep_failed_import_log(&self, e: ContainerError, cfg: &ContainerConfig) -> ContainerError {
        let ContainerError::Criu { op, reason, .. } = e else {
            return e;
        };
        let src = self
            .container_dir(&cfg.id)
            .join("criu-work")
            .join("restore.log");
        let dir = self.paths().root().join("failed-imports");
        let dest = dir.join(format!(
            "{}-{}.restore.log",
            cfg.name,
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        ));
        let log = fsutil::create_private_dir_all(&dir)
            .and_then(|()| std::fs::copy(&src, &dest))
            .map(|_| criu::explain_log(&dest).to_string())
            .unwrap_or_else(|ce| {
                let excerpt = criu::explain_log(&src);
                match &excerpt.first_error {
                    Some(first) => format!("CRIU said: {first}; its log could not be kept: {ce}"),
                    None => format!("CRIU's log could not be kept: {ce}"),
                }
            });
        ContainerError::Criu { op, reason, log }
    }

    /// Restores a prepared container (upper dir and volumes in place) from CRIU images.
    /// The netns gets an RST guard during the restore so a client's retransmit is not
    /// answered with a reset before the socket exists.
    fn restore_from_dir(
        &self,
        rec: &mut ContainerRecord,
        dir: &Path,
        snapshot: &str,
        t0: Instant,
    ) -> Result<RestoreReport, ContainerError> {
        let images = dir.join(CRIU_IMAGES_DIR);
        let outcome =
            self.restore_images(rec, &images, ImageUse::Keep, Some(GateKind::RstOnly), None);
        let RestoredImages {
            pid,
            restore_ms,
            stats,
            ..
        } = match outcome {
            Ok(v) => v,
            Err(e) => {
                self.teardown(&rec.config);
                return Err(e);
            }
        };
        let cn = self.container_net(&rec.config);
        network::remove_gates(&cn.netns_path, &[GateKind::RstOnly])?;
        self.kick_connections(rec);
        let _ =
            network::send_gratuitous_arp(&cn.netns_path, network::CONTAINER_IFNAME, cn.ip, cn.mac);
        Ok(RestoreReport {
            container: rec.config.name.clone(),
            snapshot: snapshot.to_owned(),
            stats,
            restore_ms,
            total_ms: ms(t0.elapsed()),
            pid,
        })
    }

    /// The shared core of restore and migration: prepare the rootfs and bundle, run `runc
    /// restore` through a new shim, record the container as running. With `gate`, the network
    /// is set up here behind that gate; without, it was staged before (a migration does that
    /// ahead of the freeze). The gate stays. With `lazy` (post-copy), a lazy-pages daemon that
    /// pulls the missing pages from that address serves the restored process's page faults.
    pub fn restore_images(
        &self,
        rec: &mut ContainerRecord,
        images: &Path,
        use_: ImageUse,
        gate: Option<GateKind>,
        lazy: Option<std::net::SocketAddr>,
    ) -> Result<RestoredImages, ContainerError> {
        let ctr_dir = self.container_dir(&rec.config.id);
        if let Some(gate) = gate {
            self.stage_gated_network(&rec.config, gate)?;
        }
        let bundle = self.prepare_bundle(&rec.config)?;
        let work = ctr_dir.join("criu-work");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(io(&work))?;
        let _ = self.runc().delete(&rec.config.id, true);
        let _ = std::fs::remove_file(ctr_dir.join(shim::EXIT_FILE));
        let mut opts = self.restore_opts(images, &work, &bundle);
        opts.auto_dedup = use_ == ImageUse::Consume && lazy.is_none();
        // The daemon's socket lives in its work dir, which must be the restore's.
        let lazy_daemon = match lazy {
            Some(source) => {
                opts.lazy_pages = true;
                let log = work.join(LAZY_PAGES_LOG);
                Some(
                    criu::LazyPagesDaemon::spawn(images, &work, source, &log).map_err(|e| {
                        ContainerError::Criu {
                            op: "restore",
                            reason: format!("starting the lazy-pages daemon: {e}"),
                            log: criu::explain_log(&log).to_string(),
                        }
                    })?,
                )
            }
            None => None,
        };
        let args = ShimArgs::new(
            &rec.config.id,
            self.runc(),
            bundle,
            ctr_dir,
            ShimMode::Restore(opts),
        );
        let t = Instant::now();
        let started =
            shim::spawn_shim(&self.config().shim_exe, &args).map_err(|e| ContainerError::Criu {
                op: "restore",
                reason: e.to_string(),
                log: criu::explain_log(&work.join("restore.log")).to_string(),
            })?;
        let restore_ms = ms(t.elapsed());
        let stats = criu::read_restore_stats(&work).ok();
        rec.status = Status::Running;
        rec.pid = Some(started.init_pid);
        rec.shim_pid = Some(started.shim_pid);
        rec.started_at = Some(chrono::Utc::now().to_rfc3339());
        rec.exit = None;
        self.save(rec)?;
        Ok(RestoredImages {
            pid: started.init_pid,
            restore_ms,
            stats,
            lazy: lazy_daemon,
        })
    }

    pub fn snapshots_of(&self, cfg: &ContainerConfig) -> Result<Vec<SnapshotInfo>, ContainerError> {
        let root = self.snapshots_dir(&cfg.id);
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&root) else {
            return Ok(out);
        };
        for e in entries.flatten() {
            let dir = e.path();
            let Ok(m) = read_json::<archive::Manifest>(&dir.join(MANIFEST)) else {
                continue;
            };
            out.push(SnapshotInfo {
                container: cfg.name.clone(),
                container_id: cfg.id.clone(),
                snapshot: e.file_name().to_string_lossy().into_owned(),
                created: m.created.clone(),
                bytes: m.members.values().map(|m| m.size).sum(),
                dir: dir.display().to_string(),
            });
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.snapshot.cmp(&b.snapshot)));
        Ok(out)
    }

    /// `ferry checkpoint ls [CTR]`.
    pub fn list_checkpoints(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<SnapshotInfo>, ContainerError> {
        let records = match name {
            Some(n) => vec![self.inspect(n)?],
            None => self.list(),
        };
        let mut out = Vec::new();
        for r in records {
            out.extend(self.snapshots_of(&r.config)?);
        }
        Ok(out)
    }

    /// `ferry checkpoint rm CTR SNAP`.
    pub fn remove_checkpoint(&self, name: &str, snapshot: &str) -> Result<(), ContainerError> {
        let snapshot = SnapshotName::new(snapshot)?;
        let rec = self.inspect(name)?;
        let snaps = self.snapshots_of(&rec.config)?;
        let s = snaps
            .iter()
            .find(|s| snapshot == s.snapshot)
            .ok_or_else(|| {
                ContainerError::Missing(format!("container {name} has no checkpoint {snapshot}"))
            })?;
        std::fs::remove_dir_all(&s.dir).map_err(io(Path::new(&s.dir)))
    }

    /// Removes all checkpoints of a container (with `rm`).
    pub fn remove_all_checkpoints(&self, id: &str) {
        let _ = std::fs::remove_dir_all(self.snapshots_dir(id));
    }
}

/// CRIU writes one tcp-stream image per established connection.
pub fn has_established_tcp(images: &Path) -> bool {
    std::fs::read_dir(images)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("tcp-stream-"))
        })
        .unwrap_or(false)
}

pub fn dir_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Every file of a checkpoint is private: the rootfs diff and volumes hold the container's
/// data, and the rest says where it runs.
fn write_private_json<T: Serialize>(path: &Path, v: &T) -> Result<(), ContainerError> {
    fsutil::write_json(path, v, MODE_PRIVATE).map_err(io(path))
}

fn create_private(path: &Path) -> Result<File, ContainerError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(MODE_PRIVATE)
        .open(path)
        .map_err(io(path))
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ContainerError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|e| ContainerError::CorruptState {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool::ToolError;
    use std::os::unix::process::ExitStatusExt;

    /// A failed dump names CRIU's first error once, though runc's error quotes the log too.
    #[test]
    fn a_failed_dump_quotes_the_criu_log_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(DUMP_LOG);
        let first = "Error (criu/sk-inet.c:188): inet: Connected TCP socket, consider using --tcp-established option.";
        std::fs::write(
            &log,
            format!("(00.001) Version: 4.2.1\n(00.002) {first}\n(00.003) Error (criu/cr-dump.c:2099): Dumping FAILED.\n"),
        )
        .unwrap();
        let runc = RuncError::Criu {
            source: Box::new(ToolError::Failed {
                tool: "runc".into(),
                args: "checkpoint c1".into(),
                status: std::process::ExitStatus::from_raw(256),
                stderr: format!(
                    "criu failed: type NOTIFY errno 0\nlog file: {}",
                    log.display()
                ),
            }),
            log: log.clone(),
            criu_errors: crate::runtime::runc::criu_log_errors(&log),
        };
        assert_eq!(runc.to_string().matches(first).count(), 1, "{runc}");
        let msg = dump_failed(runc, &log).to_string();
        assert_eq!(msg.matches(first).count(), 1, "{msg}");
        assert!(
            msg.starts_with("checkpoint failed: runc checkpoint c1 failed"),
            "{msg}"
        );
        assert!(msg.contains("criu failed: type NOTIFY"), "{msg}");
    }
}
