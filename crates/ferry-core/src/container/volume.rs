//! Named volumes: `<root>/volumes/NAME/_data`, created by the first container that mounts
//! NAME and kept after every container that used it is gone. They are listed, inspected and
//! removed here; a volume that any container (running or not) mounts is never removed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Engine;
use crate::ids::VolumeName;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("no such volume: {0}")]
    NotFound(String),
    /// The caller asked to remove a volume that containers still mount.
    #[error("volume {name} is in use by container {}: remove the container first", containers.join(", "))]
    InUse {
        name: String,
        containers: Vec<String>,
    },
    #[error(transparent)]
    InvalidName(#[from] crate::ids::IdError),
    /// Reading or removing the volume's files failed on this host.
    #[error("volume {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One volume, as `ferry volume ls/inspect` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    /// The data directory on this host.
    pub mountpoint: String,
    /// When the volume was created (its directory's time), RFC3339.
    pub created: Option<String>,
    /// Bytes of the files in it (inspect only; `ls` leaves it out to stay fast).
    pub size: Option<u64>,
    /// Containers on this host that mount it, running or not.
    pub used_by: Vec<String>,
}

impl Engine {
    /// Every volume on this host.
    pub fn volumes(&self) -> Result<Vec<VolumeInfo>, VolumeError> {
        let root = self.paths().volumes();
        let entries = match std::fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(VolumeError::Io { path: root, source }),
        };
        let users = self.volume_users();
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| VolumeError::Io {
                path: root.clone(),
                source,
            })?;
            // Only directories with a valid name are volumes (a stray file is not one).
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if VolumeName::new(name.as_str()).is_err() || !entry.path().is_dir() {
                continue;
            }
            out.push(self.info(&name, &users, false));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One volume, with its size.
    pub fn volume(&self, name: &str) -> Result<VolumeInfo, VolumeError> {
        let name = VolumeName::new(name)?;
        if !self.paths().volume(&name).is_dir() {
            return Err(VolumeError::NotFound(name.into_string()));
        }
        Ok(self.info(name.as_str(), &self.volume_users(), true))
    }

    /// Removes a volume and its data; refused while any container mounts it.
    pub fn volume_remove(&self, name: &str) -> Result<VolumeInfo, VolumeError> {
        let info = self.volume(name)?;
        if !info.used_by.is_empty() {
            return Err(VolumeError::InUse {
                name: info.name,
                containers: info.used_by,
            });
        }
        let dir = self.paths().volume(info.name.as_str());
        std::fs::remove_dir_all(&dir).map_err(|source| VolumeError::Io { path: dir, source })?;
        Ok(info)
    }

    /// Removes every volume no container mounts; returns them.
    pub fn volume_prune(&self) -> Result<Vec<VolumeInfo>, VolumeError> {
        let mut removed = Vec::new();
        for v in self.volumes()? {
            if v.used_by.is_empty() {
                match self.volume_remove(&v.name) {
                    Ok(info) => removed.push(info),
                    // Taken by a container meanwhile: it stays, which is what prune means.
                    Err(VolumeError::InUse { .. } | VolumeError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    }

    /// Volume name → the containers that mount it.
    fn volume_users(&self) -> Vec<(String, String)> {
        // Saved records, not refreshed: a busy container still counts as a user.
        self.list_raw()
            .into_iter()
            .flat_map(|r| {
                let name = r.config.name.clone();
                r.config
                    .volumes
                    .iter()
                    .map(move |v| (v.name.clone(), name.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn info(&self, name: &str, users: &[(String, String)], with_size: bool) -> VolumeInfo {
        let dir = self.paths().volume(name);
        let mut used_by: Vec<String> = users
            .iter()
            .filter(|(v, _)| v == name)
            .map(|(_, c)| c.clone())
            .collect();
        used_by.sort();
        used_by.dedup();
        VolumeInfo {
            name: name.to_owned(),
            mountpoint: self.paths().volume_data(name).display().to_string(),
            created: created(&dir),
            size: with_size.then(|| du(&dir)),
            used_by,
        }
    }
}

fn created(dir: &Path) -> Option<String> {
    let m = std::fs::metadata(dir).ok()?;
    let t = m.created().or_else(|_| m.modified()).ok()?;
    Some(chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339())
}

/// Bytes of the regular files under `dir` (hard links counted once per link; a rough figure,
/// as `du --apparent-size` gives).
fn du(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}
