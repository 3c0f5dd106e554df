//! Persistence of container records: one JSON file per container, replaced atomically.

use std::path::PathBuf;

use super::{ContainerError, ContainerRecord};
use crate::fsutil::{self, MODE_PRIVATE};
use crate::ids::{ContainerId, PathComponent};
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

    pub fn dir(&self, id: &(impl PathComponent<ContainerId> + ?Sized)) -> PathBuf {
        self.paths.container(id)
    }

    pub fn save(&self, rec: &ContainerRecord) -> Result<(), ContainerError> {
        let path = self.dir(&rec.config.id).join(RECORD_FILE);
        // Private: the record holds the container's environment.
        fsutil::write_json(&path, rec, MODE_PRIVATE).map_err(|e| ContainerError::io(&path, e))
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

    pub fn remove(
        &self,
        id: &(impl PathComponent<ContainerId> + ?Sized),
    ) -> Result<(), ContainerError> {
        let dir = self.dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ContainerError::io(&dir, e)),
        }
    }
}
