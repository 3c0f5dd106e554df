//! The engine's side of a migration: claiming a container that leaves, and receiving,
//! restoring (gated), committing or discarding one that arrives.

use super::engine::{lock, Engine};
use super::{ContainerConfig, ContainerError, ContainerRecord, Status};
use crate::network::{self, GateKind};

impl Engine {
    /// Marks a running container as migrating, so no other operation touches it.
    pub fn begin_migration(&self, name: &str) -> Result<ContainerRecord, ContainerError> {
        let slot = self.slot(name)?;
        let mut rec = lock(&slot);
        self.require_running(&mut rec, "migrated")?;
        rec.status = Status::Migrating;
        self.save(&rec)?;
        Ok(rec.clone())
    }

    /// Ends a failed outgoing migration: the container runs here again (or, if it died, is stopped).
    pub fn end_migration(&self, name: &str, status: Status) {
        if let Ok(slot) = self.slot(name) {
            let mut rec = lock(&slot);
            rec.status = status;
            let _ = self.save(&rec);
            self.refresh(&mut rec);
        }
    }

    /// After a committed outgoing migration: the container lives elsewhere now; remove every
    /// trace of it here, including volumes no other container uses.
    pub fn finish_migration_out(&self, name: &str, id: &str) -> Result<(), ContainerError> {
        let slot = self.slot(name)?;
        let mut rec = lock(&slot);
        if rec.config.id != id {
            return Ok(());
        }
        self.forget(&mut rec)?;
        self.remove_all_checkpoints(id);
        let volumes: Vec<String> = rec.config.volumes.iter().map(|v| v.name.clone()).collect();
        drop(rec);
        let in_use: Vec<String> = self
            .list()
            .iter()
            .flat_map(|r| r.config.volumes.iter().map(|v| v.name.clone()))
            .collect();
        for v in volumes.iter().filter(|v| !in_use.contains(v)) {
            let _ = std::fs::remove_dir_all(self.paths().volumes().join(v));
        }
        Ok(())
    }

    /// Registers a container arriving by migration: name and IP reserved, marked uncommitted
    /// so a crash before commit discards it. Refuses volumes that already hold data here.
    pub fn accept_incoming(&self, cfg: ContainerConfig, from: &str) -> Result<(), ContainerError> {
        for v in &cfg.volumes {
            let data = self.paths().volume_data(&v.name);
            if std::fs::read_dir(&data).is_ok_and(|mut d| d.next().is_some()) {
                return Err(ContainerError::Invalid(format!(
                    "volume {} already exists on this host with data; it would be overwritten",
                    v.name
                )));
            }
        }
        if self.paths().container(&cfg.id).exists() {
            return Err(ContainerError::NameInUse(format!(
                "{} (container id {} already on this host)",
                cfg.name, cfg.id
            )));
        }
        let slot = self.register_incoming(cfg, &format!("migration from {from}"))?;
        let mut rec = lock(&slot);
        rec.status = Status::Migrating;
        rec.incoming_uncommitted = true;
        self.save(&rec)
    }

    /// Restores an incoming container from `images` (upper dir and volumes already filled),
    /// with its network fully gated until [`Engine::commit_incoming`].
    pub fn restore_incoming(
        &self,
        name: &str,
        images: &std::path::Path,
    ) -> Result<ferry_proto::RestoreStats, ContainerError> {
        let slot = self.slot(name)?;
        let mut rec = lock(&slot);
        // Fault-injection hook for the rollback tests: a restore that fails after the dump.
        let fault = self.paths().root().join("inject-fault").join("restore");
        if fault.exists() {
            return Err(ContainerError::Invalid(format!(
                "restore refused by injected fault ({})",
                fault.display()
            )));
        }
        let result = self.restore_images(&mut rec, images, None);
        match result {
            Ok((_pid, ms, stats)) => {
                rec.status = Status::Migrating;
                self.save(&rec)?;
                Ok(ferry_proto::RestoreStats {
                    restore_us: ms * 1000,
                    forking_us: stats.as_ref().map(|s| s.forking_time_us).unwrap_or(0),
                    pages_restored: stats.as_ref().and_then(|s| s.pages_restored).unwrap_or(0),
                    lazy_remaining_bytes: 0,
                })
            }
            Err(e) => {
                self.teardown(&rec.config);
                Err(e)
            }
        }
    }

    /// Before the source freezes: the incoming container's netns and veth, attached but fully
    /// gated, so the restore after the freeze only has to run CRIU.
    pub fn stage_incoming_network(&self, name: &str) -> Result<(), ContainerError> {
        let slot = self.slot(name)?;
        let rec = lock(&slot);
        self.stage_gated_network(&rec.config, GateKind::Full)
    }

    /// Opens the gate of a restored incoming container and announces its MAC: it lives here now.
    pub fn commit_incoming(&self, name: &str) -> Result<(), ContainerError> {
        let slot = self.slot(name)?;
        let mut rec = lock(&slot);
        let cn = self.container_net(&rec.config);
        network::remove_gate(&cn.netns_path, GateKind::Full)?;
        let _ =
            network::send_gratuitous_arp(&cn.netns_path, network::CONTAINER_IFNAME, cn.ip, cn.mac);
        rec.status = Status::Running;
        rec.incoming_uncommitted = false;
        self.save(&rec)
    }

    /// Discards an uncommitted incoming container: processes, network, state, IP.
    pub fn abort_incoming(&self, cfg: &ContainerConfig) {
        let Ok(slot) = self.slot(&cfg.name) else {
            return;
        };
        let mut rec = lock(&slot);
        if rec.config.id != cfg.id || !rec.incoming_uncommitted {
            return;
        }
        let _ = self.runc().kill(&cfg.id, "SIGKILL", true);
        let _ = self.forget(&mut rec);
        for v in &cfg.volumes {
            let _ = std::fs::remove_dir_all(self.paths().volumes().join(&v.name));
        }
    }

    /// At startup: uncommitted arrivals are discarded; departures interrupted by a crash are
    /// running here again (CRIU resumes a dump whose hook vanished).
    pub(crate) fn recover_migrations(&self) {
        for rec in self.list_raw() {
            if rec.incoming_uncommitted {
                tracing::warn!(container = %rec.config.name, "discarding an uncommitted incoming migration");
                self.abort_incoming(&rec.config);
            } else if rec.status == Status::Migrating {
                self.end_migration(&rec.config.name, Status::Running);
            }
        }
    }
}
