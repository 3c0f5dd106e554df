//! The engine's side of a migration: claiming a container that leaves, and receiving,
//! restoring (gated), committing or discarding one that arrives.

use super::checkpoint::RestoredImages;
use super::engine::{lock, Engine};
use super::{ContainerConfig, ContainerError, ContainerRecord, Status};
use crate::network::{self, GateKind};

/// The gates an incoming copy can have at its commit: the hold, and the full gate it is staged
/// behind.
const INCOMING_GATES: &[GateKind] = &[GateKind::Hold, GateKind::Full];

impl Engine {
    /// Marks a running container as migrating, so no other operation touches it.
    pub fn begin_migration(&self, name: &str) -> Result<ContainerRecord, ContainerError> {
        let slot = self.slot(name)?;
        let mut rec = lock(&slot);
        self.require_running(&mut rec, "migrated")?;
        self.refuse_if_stopping(&rec, "migrated")?;
        rec.status = Status::Migrating;
        self.save(&rec)?;
        Ok(rec.clone())
    }

    /// [`Engine::try_end_migration`] for callers that cannot act on a failure: it is logged.
    pub fn end_migration(&self, name: &str, status: Status) {
        if let Err(e) = self.try_end_migration(name, status) {
            tracing::error!(container = %name, %status, error = %e, "recording the end of a migration");
        }
    }

    /// Ends a failed outgoing migration: the container runs here again (or, if it died, is
    /// stopped). Call it with `Running` only once the container is verified to run (see
    /// `migration::resume`). A record that cannot be saved is an error: the caller must not
    /// report the rollback as done.
    pub fn try_end_migration(&self, name: &str, status: Status) -> Result<(), ContainerError> {
        let slot = self.slot(name)?;
        let mut rec = lock(&slot);
        rec.status = status;
        rec.error = None;
        self.save(&rec)?;
        self.refresh(&mut rec);
        Ok(())
    }

    /// Ends a failed outgoing migration whose rollback could not be verified: the record says
    /// [`Status::Error`] with `reason`, never running.
    pub fn fail_migration(&self, name: &str, reason: &str) -> Result<(), ContainerError> {
        let slot = self.slot(name)?;
        let mut rec = lock(&slot);
        rec.status = Status::Error;
        rec.error = Some(reason.to_owned());
        self.save(&rec)
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
            let _ = std::fs::remove_dir_all(self.paths().volume(v));
        }
        Ok(())
    }

    /// Registers a container arriving by migration: name and IP reserved, marked uncommitted
    /// so a crash before commit discards it. Refuses volumes that already hold data here.
    pub fn accept_incoming(&self, cfg: ContainerConfig, from: &str) -> Result<(), ContainerError> {
        // The peer's config was checked when it was parsed; check again before any path.
        cfg.validate()?;
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
    /// with its network fully gated until [`Engine::commit_incoming`]. Post-copy (`lazy`):
    /// the returned daemon pulls the missing pages from that address.
    pub fn restore_incoming(
        &self,
        name: &str,
        images: &std::path::Path,
        lazy: Option<std::net::SocketAddr>,
    ) -> Result<RestoredImages, ContainerError> {
        let slot = self.slot(name)?;
        let mut rec = lock(&slot);
        // Fault-injection hook for the rollback tests: a restore that fails after the dump
        // (test builds only, like `migration::fault`).
        #[cfg(feature = "fault-injection")]
        {
            let fault = self.paths().root().join("inject-fault").join("restore");
            if fault.exists() {
                return Err(ContainerError::Invalid(format!(
                    "restore refused by injected fault ({})",
                    fault.display()
                )));
            }
        }
        // Nothing locked this netns (see the function); a failure only costs the unlock's time,
        // and a damaged inventory is CRIU's to report.
        if let Err(e) = crate::criu::skip_restore_network_unlock(images) {
            tracing::warn!(error = %e, "the restore will run CRIU's network unlock");
        }
        match self.restore_images(
            &mut rec,
            images,
            super::checkpoint::ImageUse::Consume,
            None,
            lazy,
        ) {
            Ok(restored) => {
                rec.status = Status::Migrating;
                self.save(&rec)?;
                Ok(restored)
            }
            Err(e) => {
                lock(&self.holds).remove(&rec.config.id);
                self.teardown(&rec.config);
                Err(e)
            }
        }
    }

    /// The container's memory in use, from its memory cgroup (v1 or v2); None if unknown.
    pub fn memory_usage(&self, name: &str) -> Option<u64> {
        let id = self.inspect(name).ok()?.config.id;
        let rel = format!("{}/{id}", self.config().cgroup_parent.trim_matches('/'));
        [
            format!("/sys/fs/cgroup/memory/{rel}/memory.usage_in_bytes"),
            format!("/sys/fs/cgroup/{rel}/memory.current"),
        ]
        .iter()
        .find_map(|f| std::fs::read_to_string(f).ok()?.trim().parse().ok())
    }

    /// Post-copy lost its source after the commit: the copy would read zeroes for the pages
    /// that never came, so it is killed (first, at once) and forgotten. Its volumes stay.
    pub fn destroy_lost_copy(&self, cfg: &ContainerConfig) -> Result<(), ContainerError> {
        let slot = self.slot(&cfg.name)?;
        let mut rec = lock(&slot);
        if rec.config.id != cfg.id {
            return Ok(());
        }
        lock(&self.holds).remove(&cfg.id);
        let killed = self.runc().kill(&cfg.id, "SIGKILL", true);
        self.forget(&mut rec)?;
        killed.map(|_| ()).map_err(ContainerError::from)
    }

    /// Before the source freezes: the incoming container's netns and veth, attached but fully
    /// gated, so the restore after the freeze only has to run CRIU.
    /// Incoming packets are held (not dropped) from the start, see [`network::PacketHold`].
    pub fn stage_incoming_network(&self, name: &str) -> Result<(), ContainerError> {
        let slot = self.slot(name)?;
        let rec = lock(&slot);
        self.stage_gated_network(&rec.config, GateKind::Full)?;
        let cn = self.container_net(&rec.config);
        network::set_arp_replies(&cn.netns_path, network::CONTAINER_IFNAME, false)?;
        let hold = network::PacketHold::start(&cn.netns_path)?;
        network::install_gate(&cn.netns_path, GateKind::Hold)?;
        network::remove_gates(&cn.netns_path, &[GateKind::Full])?;
        lock(&self.holds).insert(rec.config.id.clone(), hold);
        Ok(())
    }

    /// Once the source is frozen (its memory is flowing), draws the clients' packets here with a
    /// gratuitous ARP: they are held until the commit instead of being lost at the source, so
    /// the first retransmission after the freeze is delivered the moment the gate opens.
    pub fn announce_incoming(&self, name: &str) -> Result<(), ContainerError> {
        let slot = self.slot(name)?;
        let rec = lock(&slot);
        let cn = self.container_net(&rec.config);
        network::send_gratuitous_arp(&cn.netns_path, network::CONTAINER_IFNAME, cn.ip, cn.mac)?;
        tracing::debug!(container = %name, "source frozen: clients' packets now held here");

        Ok(())
    }

    /// Opens the gate of a restored incoming container: it lives here now. What can wait for
    /// the commit's reply waits, in [`Engine::settle_incoming`].
    pub fn commit_incoming(&self, name: &str) -> Result<(), ContainerError> {
        let slot = self.slot(name)?;
        let mut rec = lock(&slot);
        let cn = self.container_net(&rec.config);
        network::open_gates(&cn.netns_path, INCOMING_GATES)?;
        network::set_arp_replies(&cn.netns_path, network::CONTAINER_IFNAME, true)?;
        if let Some(hold) = lock(&self.holds).remove(&rec.config.id) {
            match hold.release() {
                Ok(n) => tracing::info!(container = %name, held = n, "released held packets"),
                Err(e) => tracing::warn!(error = %e, "releasing held packets"),
            }
        }
        self.kick_connections(&rec);
        rec.status = Status::Running;
        rec.incoming_uncommitted = false;
        self.save(&rec)
    }

    /// The rest of a commit, once it is answered, because each part costs the downtime 10 ms or
    /// more and is not needed for the first packets to flow:
    /// - one more gratuitous ARP (the announcer sent them since the freeze; closing the packet
    ///   socket waits for an RCU grace period);
    /// - the opened gates' chains removed (see [`network::open_gates`]).
    pub fn settle_incoming(&self, name: &str) -> Result<(), ContainerError> {
        let slot = self.slot(name)?;
        let rec = lock(&slot);
        let cn = self.container_net(&rec.config);
        let _ =
            network::send_gratuitous_arp(&cn.netns_path, network::CONTAINER_IFNAME, cn.ip, cn.mac);
        Ok(network::remove_gates(&cn.netns_path, INCOMING_GATES)?)
    }

    /// Makes the container's restored TCP connections resend what the freeze swallowed now,
    /// rather than when their retransmit timers fire (see [`network::kick_tcp_retransmits`]).
    pub fn kick_connections(&self, rec: &ContainerRecord) {
        let cgroup = format!("{}/{}", self.config().cgroup_parent, rec.config.id);
        let procs = std::fs::read_to_string(format!("/sys/fs/cgroup/pids/{cgroup}/cgroup.procs"))
            .or_else(|_| {
                std::fs::read_to_string(format!("/sys/fs/cgroup/memory/{cgroup}/cgroup.procs"))
            })
            .unwrap_or_default();
        let mut pids: Vec<u32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            pids.extend(rec.pid);
        }
        match network::kick_tcp_retransmits(&pids) {
            Ok(n) => {
                tracing::info!(container = %rec.config.name, sockets = n, "kicked restored connections")
            }
            Err(e) => tracing::warn!(error = %e, "kicking restored connections"),
        }
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
        // Dropping the hold drops the packets it kept.
        lock(&self.holds).remove(&cfg.id);
        let _ = self.runc().kill(&cfg.id, "SIGKILL", true);
        let _ = self.forget(&mut rec);
        for v in &cfg.volumes {
            let _ = std::fs::remove_dir_all(self.paths().volume(&v.name));
        }
    }

    /// At startup, after the migration records were replayed: an uncommitted arrival that no
    /// record keeps waiting (`keep`, by container id) is discarded; a departure still marked
    /// migrating runs here (CRIU resumes a dump whose hook vanished).
    pub fn recover_migrations(&self, keep: &[String]) {
        for rec in self.list_raw() {
            if keep.contains(&rec.config.id) {
                continue;
            }
            if rec.incoming_uncommitted {
                tracing::warn!(container = %rec.config.name, "discarding an uncommitted incoming migration");
                self.abort_incoming(&rec.config);
            } else if rec.status == Status::Migrating {
                self.end_migration(&rec.config.name, Status::Running);
            }
        }
    }
}
