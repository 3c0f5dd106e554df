//! Checkpoints Podman can read, and Podman's that ferry can restore: the engine's side of
//! [`crate::checkpoint::podman`] (which maps the documents without touching the host).

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

use super::checkpoint::{io, read_json, RestoreReport, RestoreRequest, ROOTFS_SUMMARY};
use super::engine::Engine;
use super::{ContainerConfig, ContainerError};
use crate::checkpoint::archive::{Manifest, Origin};
use crate::checkpoint::image as checkpoint_image;
use crate::checkpoint::layout::{
    CONFIG_DUMP, DELETED_FILES, DEVSHM_TAR, FERRY_CONFIG, MANIFEST, NETWORK_STATUS, ROOTFS_DIFF,
    SPEC_DUMP,
};
use crate::checkpoint::podman::{self, Address, ImageNames, LibpodConfig, NetworkStatus};
use crate::fsdiff::{self, DiffSummary};
use crate::fsutil::{self, ScratchDir, MODE_PRIVATE};
use crate::runtime::spec::BindMount;

/// A Podman container's /dev/shm, inside its ferry container dir.
const SHM_DIR: &str = "shm";

impl Engine {
    /// Podman's members of a checkpoint dir: `config.dump` (libpod's), `network.status`
    /// (Podman's schema), `spec.dump` (the spec without this host's paths) and, for a
    /// container that came from Podman, `devshm-checkpoint.tar`.
    pub(super) fn write_podman_files(
        &self,
        cfg: &ContainerConfig,
        dir: &Path,
    ) -> Result<(), ContainerError> {
        let spec_src = self.container_dir(&cfg.id).join("bundle/config.json");
        let spec: Value = read_json(&spec_src)?;
        let image = self.images().resolve(&cfg.image)?;
        let names = ImageNames {
            config_digest_hex: image.config_digest.hex().to_owned(),
            reference: image
                .names
                .first()
                .cloned()
                .unwrap_or_else(|| cfg.image_ref.clone()),
        };
        let spec = podman::portable_spec(spec, cfg);
        fsutil::write_json(&dir.join(SPEC_DUMP), &spec, MODE_PRIVATE).map_err(io(dir))?;
        let libpod = podman::libpod_config(cfg, spec, &names);
        fsutil::write_json(&dir.join(CONFIG_DUMP), &libpod, MODE_PRIVATE).map_err(io(dir))?;
        let addr = Address {
            ip: cfg.ip,
            prefix: cfg.prefix,
            mac: crate::network::parse_mac(&cfg.mac).ok_or_else(|| {
                ContainerError::Invalid(format!("container {} has a bad MAC {}", cfg.name, cfg.mac))
            })?,
        };
        let status = podman::network_status(&addr, self.config().bridge.address);
        fsutil::write_json(&dir.join(NETWORK_STATUS), &status, MODE_PRIVATE).map_err(io(dir))?;
        if cfg.podman_shm {
            let shm = self.container_dir(&cfg.id).join(SHM_DIR);
            let tar = dir.join(DEVSHM_TAR);
            let out = BufWriter::new(File::create(&tar).map_err(io(&tar))?);
            fsdiff::pack_dir(&shm, out)?;
        }
        Ok(())
    }

    /// The container config of an imported checkpoint dir. A ferry archive carries its own
    /// (in `config.dump` before format 2). A Podman one is mapped from its libpod config and
    /// network status, and the dir is completed to ferry's layout (rootfs summary, an empty
    /// rootfs diff where Podman wrote none).
    pub(super) fn archive_config(
        &self,
        dir: &Path,
        origin: &Origin,
    ) -> Result<ContainerConfig, ContainerError> {
        match origin {
            Origin::Ferry(manifest) => read_ferry_config(dir, manifest),
            Origin::Podman => self.adopt_podman(dir),
        }
    }

    fn adopt_podman(&self, dir: &Path) -> Result<ContainerConfig, ContainerError> {
        let libpod: LibpodConfig = read_json(&dir.join(CONFIG_DUMP))?;
        let status: NetworkStatus = read_json(&dir.join(NETWORK_STATUS))?;
        let addr = podman::address_from_status(&status)?;
        let wanted = format!("sha256:{}", libpod.rootfs_image_id);
        let image = self
            .images()
            .list()?
            .into_iter()
            .find(|i| i.config_digest.to_string() == wanted)
            .ok_or_else(|| {
                ContainerError::Invalid(format!(
                    "the checkpoint needs image {} (image id {}), which this host does not have; \
                     import it first (for example `podman save --format oci-archive` and `ferry image import`)",
                    libpod.rootfs_image_name,
                    short(&libpod.rootfs_image_id)
                ))
            })?;
        let image_ref = image
            .names
            .first()
            .cloned()
            .unwrap_or_else(|| libpod.rootfs_image_name.clone());
        let spec: Value = read_json(&dir.join(SPEC_DUMP))?;
        let imported =
            podman::from_podman(&libpod, &spec, &addr, &image.digest.to_string(), &image_ref)?;
        let deleted: Vec<String> = match std::fs::read(dir.join(DELETED_FILES)) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| ContainerError::CorruptState {
                    path: dir.join(DELETED_FILES),
                    reason: e.to_string(),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(ContainerError::io(&dir.join(DELETED_FILES), e)),
        };
        let summary = DiffSummary {
            deleted,
            ..DiffSummary::default()
        };
        fsutil::write_json(&dir.join(ROOTFS_SUMMARY), &summary, MODE_PRIVATE).map_err(io(dir))?;
        let diff = dir.join(ROOTFS_DIFF);
        if !diff.exists() {
            // Podman writes no rootfs diff for a container that changed nothing.
            tar::Builder::new(File::create(&diff).map_err(io(&diff))?)
                .into_inner()
                .map_err(io(&diff))?;
        }
        fsutil::write_json(&dir.join(FERRY_CONFIG), &imported.config, MODE_PRIVATE)
            .map_err(io(dir))?;
        Ok(imported.config)
    }

    /// A container restored from Podman bind-mounts a directory of its own at /dev/shm, as
    /// Podman's shm dir (the other files Podman mounts, ferry mounts for every container).
    pub(super) fn podman_shm_bind(
        &self,
        cfg: &ContainerConfig,
    ) -> Result<Option<BindMount>, ContainerError> {
        if !cfg.podman_shm {
            return Ok(None);
        }
        let shm = self.container_dir(&cfg.id).join(SHM_DIR);
        fsutil::create_dir_with_mode(&shm, 0o1777).map_err(io(&shm))?;
        Ok(Some(BindMount {
            source: shm,
            destination: PathBuf::from("/dev/shm"),
            readonly: false,
        }))
    }

    /// Refills a Podman container's /dev/shm from its checkpoint (CRIU does not dump a
    /// bind-mounted directory's files).
    pub(super) fn restore_podman_shm(
        &self,
        cfg: &ContainerConfig,
        dir: &Path,
    ) -> Result<(), ContainerError> {
        let tar = dir.join(DEVSHM_TAR);
        if !cfg.podman_shm || !tar.exists() {
            return Ok(());
        }
        let shm = self.container_dir(&cfg.id).join(SHM_DIR);
        if shm.exists() {
            std::fs::remove_dir_all(&shm).map_err(io(&shm))?;
        }
        fsutil::create_dir_with_mode(&shm, 0o1777).map_err(io(&shm))?;
        let r = BufReader::new(File::open(&tar).map_err(io(&tar))?);
        fsdiff::unpack_dir(r, &shm)?;
        Ok(())
    }
}

fn read_ferry_config(dir: &Path, manifest: &Manifest) -> Result<ContainerConfig, ContainerError> {
    let member = if manifest.major()? >= 2 {
        FERRY_CONFIG
    } else {
        CONFIG_DUMP
    };
    // The id, name and volume names are checked as it parses.
    read_json(&dir.join(member)).map_err(|e| match e {
        ContainerError::CorruptState { reason, .. } => {
            ContainerError::Invalid(format!("the archive's {member} is refused: {reason}"))
        }
        e => e,
    })
}

fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

impl Engine {
    /// Makes checkpoint `dir` of `cfg` an image named `reference` in the image store (see
    /// [`crate::checkpoint::image`]); its id.
    pub(super) fn create_checkpoint_image(
        &self,
        cfg: &ContainerConfig,
        dir: &Path,
        reference: &str,
    ) -> Result<String, ContainerError> {
        let rootfs = self.images().resolve(&cfg.image)?;
        let criu = crate::criu::version()?;
        let meta = checkpoint_image::Meta {
            container: cfg.name.clone(),
            image_reference: rootfs
                .names
                .first()
                .cloned()
                .unwrap_or_else(|| cfg.image_ref.clone()),
            image_id_hex: rootfs.config_digest.hex().to_owned(),
            // Podman's spelling: 4.2.1 is 40201.
            criu_version: (criu.major * 10_000 + criu.minor * 100 + criu.sublevel).to_string(),
        };
        let tmp = self.paths().tmp();
        let work = ScratchDir::new_in(&tmp, "ckpt-image-").map_err(io(&tmp))?;
        let built = checkpoint_image::build(dir, work.path(), &meta).map_err(|e| match e {
            checkpoint_image::CheckpointImageError::Io { path, source } => {
                ContainerError::Io { path, source }
            }
        })?;
        for (digest, path) in &built.blobs {
            let f = File::open(path).map_err(io(path))?;
            self.images().write_blob(digest, BufReader::new(f))?;
        }
        let image = self
            .images()
            .register(&built.manifest, &[reference.to_owned()])?;
        Ok(image.digest.to_string())
    }

    /// The unpacked root of `reference` if it names a checkpoint image: one layer holding a
    /// checkpoint, as ferry's `--create-image` and Podman's write it.
    pub(super) fn checkpoint_image_root(
        &self,
        reference: &str,
    ) -> Result<Option<PathBuf>, ContainerError> {
        let Ok(image) = self.images().resolve(reference) else {
            return Ok(None);
        };
        let layers = self.images().layer_dirs(&image)?;
        Ok(match layers.as_slice() {
            [root] if checkpoint_image::is_checkpoint(root) => Some(root.clone()),
            _ => None,
        })
    }

    /// `ferry restore IMAGE`: a new container from a checkpoint image.
    pub(super) fn restore_image(
        &self,
        reference: &str,
        root: &Path,
        req: &RestoreRequest,
    ) -> Result<RestoreReport, ContainerError> {
        let t0 = Instant::now();
        let tmp = self.paths().tmp();
        let scratch = ScratchDir::new_in(&tmp, "import-").map_err(io(&tmp))?;
        let staged = scratch.path().join("checkpoint");
        // A copy: the restore adds its logs and the container owns its checkpoint dir; the
        // image stays as it was for the next restore.
        copy_tree(root, &staged)?;
        let origin = if staged.join(MANIFEST).exists() {
            Origin::Ferry(crate::checkpoint::archive::verify_dir(&staged)?)
        } else {
            Origin::Podman
        };
        self.restore_staged(
            scratch,
            &staged,
            &origin,
            req,
            &format!("image:{reference}"),
            t0,
        )
    }
}

/// Copies regular files and directories (all a checkpoint holds), private.
fn copy_tree(from: &Path, to: &Path) -> Result<(), ContainerError> {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.map_err(|e| ContainerError::Io {
            path: from.to_owned(),
            source: e.into(),
        })?;
        let rel = entry.path().strip_prefix(from).expect("walked below from");
        let dest = to.join(rel);
        let kind = entry.file_type();
        if kind.is_dir() {
            fsutil::create_private_dir_all(&dest).map_err(io(&dest))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &dest).map_err(io(entry.path()))?;
        } else {
            return Err(ContainerError::Invalid(format!(
                "checkpoint image entry {} is neither a file nor a directory",
                rel.display()
            )));
        }
    }
    Ok(())
}
