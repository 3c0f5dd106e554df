//! Known peers: `name → address`, persisted as `peers/peers.json` in the state dir.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{validate_name, PeerError};
use crate::fsutil::{self, MODE_SHARED};
use crate::paths::HostPaths;

const FILE: &str = "peers.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    pub name: String,
    pub addr: SocketAddr,
}

#[derive(Debug)]
pub struct Peers {
    path: PathBuf,
    entries: BTreeMap<String, PeerEntry>,
}

impl Peers {
    /// Loads the registry; a missing file is an empty registry.
    pub fn load(paths: &HostPaths) -> Result<Self, PeerError> {
        let path = paths.peers().join(FILE);
        let entries = match fs::read(&path) {
            Ok(bytes) => {
                let list: Vec<PeerEntry> =
                    serde_json::from_slice(&bytes).map_err(|source| PeerError::Registry {
                        path: path.clone(),
                        source,
                    })?;
                list.into_iter().map(|e| (e.name.clone(), e)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(PeerError::Io { path, source: e }),
        };
        Ok(Peers { path, entries })
    }

    pub fn add(&mut self, name: &str, addr: SocketAddr) -> Result<(), PeerError> {
        validate_name(name)?;
        if self.entries.contains_key(name) {
            return Err(PeerError::PeerExists(name.to_string()));
        }
        self.entries.insert(
            name.to_string(),
            PeerEntry {
                name: name.to_string(),
                addr,
            },
        );
        self.save().inspect_err(|_| {
            self.entries.remove(name);
        })
    }

    pub fn remove(&mut self, name: &str) -> Result<PeerEntry, PeerError> {
        let entry = self
            .entries
            .remove(name)
            .ok_or_else(|| PeerError::UnknownPeer(name.to_string()))?;
        self.save().inspect_err(|_| {
            self.entries.insert(name.to_string(), entry.clone());
        })?;
        Ok(entry)
    }

    pub fn get(&self, name: &str) -> Option<&PeerEntry> {
        self.entries.get(name)
    }

    /// All peers, sorted by name.
    pub fn list(&self) -> Vec<&PeerEntry> {
        self.entries.values().collect()
    }

    /// Replaced atomically, so a crash never leaves a half-written registry.
    fn save(&self) -> Result<(), PeerError> {
        let list: Vec<&PeerEntry> = self.entries.values().collect();
        fsutil::write_json(&self.path, &list, MODE_SHARED).map_err(PeerError::io(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_get_remove_persist() {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths::new(dir.path());
        let mut peers = Peers::load(&paths).unwrap();
        assert!(peers.list().is_empty());
        peers
            .add("host-b", "10.77.0.3:7070".parse().unwrap())
            .unwrap();
        peers.add("host-a", "[::1]:7070".parse().unwrap()).unwrap();
        assert!(matches!(
            peers.add("host-b", "10.77.0.9:1".parse().unwrap()),
            Err(PeerError::PeerExists(_))
        ));
        for bad in ["", "Host-B", "host_b", "-b", "b-", &"x".repeat(64), "a.b"] {
            assert!(
                matches!(
                    peers.add(bad, "1.2.3.4:5".parse().unwrap()),
                    Err(PeerError::BadName { .. })
                ),
                "{bad:?} accepted"
            );
        }
        peers
            .add(&"x".repeat(63), "1.2.3.4:5".parse().unwrap())
            .unwrap();

        let reloaded = Peers::load(&paths).unwrap();
        let names: Vec<_> = reloaded.list().iter().map(|e| e.name.clone()).collect();
        assert_eq!(
            names,
            vec!["host-a".to_string(), "host-b".into(), "x".repeat(63)]
        );
        assert_eq!(
            reloaded.get("host-b").unwrap().addr,
            "10.77.0.3:7070".parse().unwrap()
        );

        let mut peers = reloaded;
        assert_eq!(peers.remove("host-a").unwrap().name, "host-a");
        assert!(matches!(
            peers.remove("host-a"),
            Err(PeerError::UnknownPeer(_))
        ));
        assert!(Peers::load(&paths).unwrap().get("host-a").is_none());
    }

    #[test]
    fn corrupt_registry_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths::new(dir.path());
        fs::create_dir_all(paths.peers()).unwrap();
        fs::write(paths.peers().join(FILE), b"{oops").unwrap();
        let err = Peers::load(&paths).unwrap_err().to_string();
        assert!(err.contains("peers.json"), "{err}");
    }
}
