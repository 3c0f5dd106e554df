//! Persistence of container records: one JSON file per container, replaced atomically.

use std::path::{Path, PathBuf};

use super::{ContainerError, ContainerRecord};
use crate::paths::HostPaths;

const RECORD_FILE: &str = "container.json";

#[derive(Debug, Clone)]
pub struct RecordStore {
    paths: HostPaths,
}

impl RecordStore {
    pub fn new(paths: HostPaths) -> Self {
        RecordStore { paths }
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.paths.container(id)
    }

    pub fn save(&self, rec: &ContainerRecord) -> Result<(), ContainerError> {
        let dir = self.dir(&rec.config.id);
        std::fs::create_dir_all(&dir).map_err(|e| ContainerError::io(&dir, e))?;
        write_json_atomic(&dir.join(RECORD_FILE), rec)
    }

    pub fn load_all(&self) -> Result<Vec<ContainerRecord>, ContainerError> {
        let root = self.paths.containers();
        let entries = match std::fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ContainerError::io(&root, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| ContainerError::io(&root, e))?;
            let path = entry.path().join(RECORD_FILE);
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let rec = serde_json::from_slice(&bytes).map_err(|e| {
                        ContainerError::CorruptState {
                            path: path.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                    out.push(rec);
                }
                // A directory without a record is an interrupted create; it is cleaned by the engine.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ContainerError::io(&path, e)),
            }
        }
        Ok(out)
    }

    pub fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let dir = self.dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ContainerError::io(&dir, e)),
        }
    }
}

/// Write to a temp file in the same dir, fsync, rename: a crash leaves the old or the new file.
pub fn write_json_atomic<T: serde::Serialize>(
    path: &Path,
    value: &T,
) -> Result<(), ContainerError> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| ContainerError::CorruptState {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| ContainerError::io(&tmp, e))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| ContainerError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ContainerError::io(path, e))
}
