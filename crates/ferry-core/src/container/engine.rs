//! The container engine of one host: creates, starts, stops and removes containers, and keeps
//! their records in step with what runc and the shims report.
//!
//! Calls are blocking (runc, mounts, files); the daemon runs them on its blocking pool.
//! A per-container lock serialises operations on one container; the map lock is held only
//! briefly, and never together with a container's lock (a container's `Arc` is taken out of
//! the map, the map let go, then the container locked). Every save also publishes the record
//! to `views`, the snapshot readers fall back on. Readers (`ps`, `inspect`) that
//! find a container busy in a long operation (a checkpoint, a migration) show its last saved
//! record instead of waiting; `stop` waits out its grace period without the lock at all.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::config::{generate_name, merge_env, restart_delay, short_id, RunOptions};
use super::store::RecordStore;
use super::{ContainerConfig, ContainerError, ContainerRecord, ExitInfo, RootfsDirs, Status};
use crate::fsutil::{self, block_on_fresh};
use crate::ids::{ContainerId, PathComponent};
use crate::image::ImageStore;
use crate::network::{self, BridgeConfig, ContainerNet, Ipam};
use crate::paths::HostPaths;
use crate::runtime::runc::{Runc, RuncStatus};
use crate::runtime::shim::{self, ShimArgs, ShimMode};
use crate::runtime::spec::{self, BindMount, SpecInput};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub paths: HostPaths,
    pub host_name: String,
    pub runc_binary: PathBuf,
    pub runc_root: PathBuf,
    /// cgroup (v1, cgroupfs) parent of every container of this host.
    pub cgroup_parent: String,
    pub bridge: BridgeConfig,
    /// Addresses this host hands out when `--ip` is not given.
    pub ip_range: Option<(Ipv4Addr, Ipv4Addr)>,
    /// The `ferryd` executable, which doubles as the shim.
    pub shim_exe: PathBuf,
}

pub type Slot = Arc<Mutex<ContainerRecord>>;

pub struct Engine {
    cfg: EngineConfig,
    images: ImageStore,
    runc: Runc,
    records: RecordStore,
    ipam: Mutex<Ipam>,
    containers: Mutex<BTreeMap<String, Slot>>,
    /// The last saved record of each container, by name: what readers see of a container
    /// whose lock a long operation holds.
    views: Mutex<BTreeMap<String, ContainerRecord>>,
    /// Ids of containers in a `stop`'s grace period (SIGTERM sent, lock released).
    stopping: Mutex<std::collections::BTreeSet<String>>,
    /// Packets held for uncommitted incoming containers, by container id.
    pub(crate) holds: Mutex<BTreeMap<String, network::PacketHold>>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock must not wedge the daemon; the data is re-validated anyway.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    pub fn open(cfg: EngineConfig) -> Result<Self, ContainerError> {
        // Private by default: the root and every state dir in it are 0700, so checkpoints
        // (whole memories), records (environments) and volumes are root's alone, also in a
        // state dir an older ferry left at 0755.
        for d in [
            cfg.paths.root().to_owned(),
            cfg.paths.containers(),
            cfg.paths.volumes(),
            cfg.paths.netns_dir(),
            cfg.paths.network_state(),
            cfg.paths.checkpoints(),
            cfg.paths.migrations(),
            cfg.paths.tmp(),
            cfg.paths.images(),
        ] {
            fsutil::ensure_private_dir(&d).map_err(|e| ContainerError::io(&d, e))?;
        }
        mount_page_scratch(&cfg.paths.page_scratch())?;
        let images = ImageStore::open(&cfg.paths)?;
        let ipam = Ipam::open(
            &cfg.paths,
            cfg.bridge.address,
            cfg.bridge.prefix,
            cfg.ip_range,
            &[cfg.bridge.address],
        )?;
        block_on_fresh(network::ensure_bridge(&cfg.bridge))?;
        let mut runc = Runc::new(cfg.runc_root.clone());
        runc.binary = cfg.runc_binary.clone();
        let records = RecordStore::new(cfg.paths.clone());
        let mut map = BTreeMap::new();
        let mut views = BTreeMap::new();
        for rec in records.load_all()? {
            // A container with a pty or open stdin (`run -t`/`-i`) cannot be checkpointed.
            match shim::ShimIo::load(&cfg.paths.container(&rec.config.id)) {
                Ok(io) => crate::exec::sessions().set_stdio(&rec.config.id, io),
                Err(e) => {
                    tracing::warn!(container = %rec.config.name, error = %e, "stdio settings")
                }
            }
            views.insert(rec.config.name.clone(), rec.clone());
            map.insert(rec.config.name.clone(), Arc::new(Mutex::new(rec)));
        }
        let engine = Engine {
            cfg,
            images,
            runc,
            records,
            ipam: Mutex::new(ipam),
            containers: Mutex::new(map),
            views: Mutex::new(views),
            stopping: Mutex::new(Default::default()),
            holds: Mutex::new(BTreeMap::new()),
        };
        engine.refresh_all();
        Ok(engine)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    pub fn runc(&self) -> &Runc {
        &self.runc
    }

    pub fn paths(&self) -> &HostPaths {
        &self.cfg.paths
    }

    pub fn slot(&self, name: &str) -> Result<Slot, ContainerError> {
        self.lookup(name).map(|(_, slot)| slot)
    }

    /// The one place a user's reference to a container is resolved: its name, else its ID or
    /// any unique prefix of its ID (a name wins over an ID prefix). Returns the container's
    /// own name with its slot; a prefix of several IDs is refused, naming them.
    pub fn lookup(&self, name: &str) -> Result<(String, Slot), ContainerError> {
        // One lock at a time, and never a container's: each is taken, read and let go.
        if let Some(s) = lock(&self.containers).get(name).cloned() {
            return Ok((name.to_owned(), s));
        }
        if name.is_empty() {
            return Err(ContainerError::NotFound(String::new()));
        }
        // IDs are found in the views: a busy container's lock is not for the taking here.
        let named: Vec<String> = lock(&self.views)
            .values()
            .filter(|r| r.config.id.starts_with(name))
            .map(|r| r.config.name.clone())
            .collect();
        let mut hits: Vec<(String, Slot)> = {
            let map = lock(&self.containers);
            named
                .into_iter()
                .filter_map(|n| map.get(&n).map(|s| (n, s.clone())))
                .collect()
        };
        match hits.len() {
            0 => Err(ContainerError::NotFound(name.to_owned())),
            1 => Ok(hits.remove(0)),
            _ => Err(ContainerError::Ambiguous {
                prefix: name.to_owned(),
                matches: hits.into_iter().map(|(n, _)| n).collect(),
            }),
        }
    }

    /// The record of `slot`: refreshed when the slot is free, the last saved one when a long
    /// operation holds it (so a reader never waits for a checkpoint, a migration or a stop).
    fn read_slot(&self, name: &str, slot: &Slot, refresh: bool) -> Option<ContainerRecord> {
        match slot.try_lock() {
            Ok(mut rec) => {
                if refresh {
                    self.refresh(&mut rec);
                }
                Some(rec.clone())
            }
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner().clone()),
            Err(std::sync::TryLockError::WouldBlock) => lock(&self.views).get(name).cloned(),
        }
    }

    fn read_all(&self, refresh: bool) -> Vec<ContainerRecord> {
        let slots: Vec<(String, Slot)> = lock(&self.containers)
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        slots
            .iter()
            .filter_map(|(n, s)| self.read_slot(n, s, refresh))
            .collect()
    }

    /// Records as they are, without reconciling.
    pub(crate) fn list_raw(&self) -> Vec<ContainerRecord> {
        self.read_all(false)
    }

    pub fn runc_version(&self) -> String {
        crate::tool::Tool::new(&self.runc.binary)
            .arg("--version")
            .run_text()
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into())
    }

    pub fn list(&self) -> Vec<ContainerRecord> {
        self.read_all(true)
    }

    pub fn inspect(&self, name: &str) -> Result<ContainerRecord, ContainerError> {
        // `name` may be an id prefix: the view is found by the container's own name.
        let (own, slot) = self.lookup(name)?;
        self.read_slot(&own, &slot, true)
            .ok_or_else(|| ContainerError::NotFound(name.to_owned()))
    }

    /// Names and IPs in use, for validation by the checkpoint/migration code.
    pub fn name_in_use(&self, name: &str) -> bool {
        lock(&self.containers).contains_key(name)
    }

    /// What on this host holds `ip` (a peer's `IpQuery`): a container, arrived or arriving,
    /// or the bridge; `None` when it is free here.
    pub fn ip_user(&self, ip: Ipv4Addr) -> Option<String> {
        if ip == self.cfg.bridge.address {
            return Some(format!(
                "the bridge {} of host {}",
                self.cfg.bridge.name, self.cfg.host_name
            ));
        }
        let owner = lock(&self.ipam).owner_of(ip)?.to_owned();
        let name = lock(&self.views)
            .values()
            .find(|r| r.config.id == owner)
            .map(|r| r.config.name.clone());
        Some(format!("container {}", name.unwrap_or(owner)))
    }

    pub fn container_dir(&self, id: &(impl PathComponent<ContainerId> + ?Sized)) -> PathBuf {
        self.cfg.paths.container(id)
    }

    pub fn host_veth(id: &str) -> String {
        format!("fv{}", &id[..id.len().min(12)])
    }

    pub fn runc_id(cfg: &ContainerConfig) -> String {
        cfg.id.clone()
    }

    // ---- create / run ------------------------------------------------------------------

    /// `ferry run`: validates everything first, so bad input changes nothing.
    pub fn run(&self, req: &RunOptions) -> Result<ContainerRecord, ContainerError> {
        req.validate()?;
        let image = self.images.resolve(&req.image)?;
        // Docker's rule: --entrypoint replaces the image's entrypoint and drops its CMD.
        let mut args = req
            .entrypoint
            .clone()
            .unwrap_or_else(|| image.config.entrypoint.clone());
        if !req.cmd.is_empty() {
            args.extend(req.cmd.iter().cloned());
        } else if req.entrypoint.is_none() {
            args.extend(image.config.cmd.iter().cloned());
        }
        if args.is_empty() {
            return Err(ContainerError::Invalid(format!(
                "image {} has no entrypoint or command; give one after the image name",
                req.image
            )));
        }
        let id = new_id();
        // Reserve the name before any side effect.
        let placeholder = {
            let mut map = lock(&self.containers);
            // No name: one is generated now the map is locked.
            let name = match &req.name {
                Some(n) => n.clone(),
                None => generate_name(|n| map.contains_key(n)),
            };
            if map.contains_key(&name) {
                return Err(ContainerError::NameInUse(name));
            }
            // A host port another container of this host publishes would never reach this one.
            for rec in lock(&self.views).values() {
                for theirs in &rec.config.ports {
                    if let Some(mine) = req.ports.iter().find(|m| m.clashes_with(theirs)) {
                        return Err(ContainerError::Invalid(format!(
                            "host port {} is already published by container {} ({theirs})",
                            mine.host_port, rec.config.name
                        )));
                    }
                }
            }
            let ip = {
                let mut ipam = lock(&self.ipam);
                match req.ip {
                    Some(ip) => {
                        ipam.reserve(&id, ip)?;
                        ip
                    }
                    None => ipam.allocate(&id)?,
                }
            };
            let hostname = req
                .hostname
                .clone()
                .unwrap_or_else(|| short_id(&id).to_owned());
            let config = ContainerConfig {
                id,
                name: name.clone(),
                image: image.digest.to_string(),
                image_ref: req.image.clone(),
                args,
                env: merge_env(&image.config.env, &req.env),
                cwd: match &req.workdir {
                    Some(w) => w.clone(),
                    None if image.config.working_dir.is_empty() => "/".to_owned(),
                    None => image.config.working_dir.clone(),
                },
                user: req
                    .user
                    .clone()
                    .unwrap_or_else(|| image.config.user.clone()),
                ip,
                prefix: self.cfg.bridge.prefix,
                mac: network::format_mac(&network::mac_for_ip(ip)),
                volumes: req.volumes.clone(),
                memory: req.memory,
                created: now(),
                podman_shm: false,
                hostname,
                dns: req.dns.clone(),
                add_hosts: req.add_hosts.clone(),
                labels: req.labels.clone(),
                read_only: req.read_only,
                cpus: req.cpus,
                cap_add: req.cap_add.clone(),
                cap_drop: req.cap_drop.clone(),
                auto_remove: req.auto_remove,
                restart: req.restart,
                ports: req.ports.clone(),
            };
            let rec = ContainerRecord::created(config, None);
            let slot = Arc::new(Mutex::new(rec));
            map.insert(name, slot.clone());
            slot
        };
        let mut rec = lock(&placeholder);
        let io = shim::ShimIo {
            tty: req.tty,
            stdin: req.interactive,
        };
        let result = self
            .save(&rec)
            .and_then(|_| Ok(io.save(&self.container_dir(&rec.config.id))?))
            .and_then(|_| self.start_locked(&mut rec));
        if let Err(e) = result {
            let name = rec.config.name.clone();
            tracing::warn!(%name, error = %e, "run failed; undoing");
            self.teardown(&rec.config);
            let _ = self.records.remove(&rec.config.id);
            let _ = lock(&self.ipam).release(&rec.config.id);
            drop(rec);
            lock(&self.containers).remove(&name);
            lock(&self.views).remove(&name);
            return Err(e);
        }
        Ok(rec.clone())
    }

    /// `ferry start` for a stopped container.
    pub fn start(&self, name: &str) -> Result<ContainerRecord, ContainerError> {
        let slot = self.slot(name)?;
        let mut rec = lock(&slot);
        self.refresh(&mut rec);
        if !rec.status.can_start() {
            return Err(ContainerError::WrongState {
                name: name.to_owned(),
                status: rec.status,
                why: "only a stopped, created or checkpointed container can be started".into(),
            });
        }
        rec.stopped_by_user = false;
        if let Err(e) = self.start_locked(&mut rec) {
            self.teardown(&rec.config);
            rec.status = Status::Stopped;
            let _ = self.save(&rec);
            return Err(e);
        }
        Ok(rec.clone())
    }

    /// Prepares rootfs, volumes, bundle and network for a container (fresh start or restore).
    /// `attach` says whether the veth joins the bridge now (a restore may keep it gated).
    pub fn prepare(&self, cfg: &ContainerConfig, attach: bool) -> Result<PathBuf, ContainerError> {
        let bundle = self.prepare_bundle(cfg)?;
        self.setup_network(cfg, attach)?;
        Ok(bundle)
    }

    /// Mounts the rootfs, creates volumes, writes the CRIU config and the OCI bundle.
    pub fn prepare_bundle(&self, cfg: &ContainerConfig) -> Result<PathBuf, ContainerError> {
        let dir = self.container_dir(&cfg.id);
        let image = self.images.resolve(&cfg.image)?;
        let layers = self.images.layer_dirs(&image)?;
        let rootfs = RootfsDirs::new(&dir);
        rootfs.create(super::rootfs::root_mode(&layers))?;
        rootfs.mount(&layers)?;
        let mut mounts = Vec::new();
        for v in &cfg.volumes {
            let data = self.cfg.paths.volume_data(&v.name);
            fsutil::create_dir_with_mode(&data, fsutil::MODE_CONTAINER_DIR)
                .map_err(|e| ContainerError::io(&data, e))?;
            mounts.push(BindMount {
                source: data,
                destination: PathBuf::from(&v.destination),
                readonly: v.readonly,
            });
        }
        // /etc/hosts, /etc/resolv.conf, /etc/hostname, /run/.containerenv, as Podman mounts
        // them: after the volumes, so a volume on /etc does not hide them. Kept as they are when
        // present (a restore sees the files its process had).
        for (source, destination) in cfg.etc_files()?.ensure(&dir)? {
            mounts.push(BindMount {
                source,
                destination: PathBuf::from(destination),
                readonly: false,
            });
        }
        mounts.extend(self.podman_shm_bind(cfg)?);
        let (uid, gid) = spec::resolve_user(&rootfs.merged, &cfg.user)?;
        let criu_conf = crate::criu::write_criu_config(&dir, &self.cfg.shim_exe)
            .map_err(|e| ContainerError::io(&dir, e))?;
        let netns_path = self.cfg.paths.netns(&cfg.id);
        let input = SpecInput {
            id: cfg.id.clone(),
            hostname: cfg.effective_hostname().to_owned(),
            args: cfg.args.clone(),
            env: cfg.env.clone(),
            cwd: cfg.cwd.clone(),
            user: (uid, gid),
            rootfs: rootfs.merged,
            netns_path,
            cgroups_path: format!("/{}/{}", self.cfg.cgroup_parent, cfg.id),
            memory_limit: cfg.memory,
            mounts,
            criu_config: criu_conf,
            readonly_rootfs: cfg.read_only,
            cpu_quota: cfg
                .cpus
                .map(|c| (c * spec::CPU_PERIOD_US as f64).round() as i64),
            cap_add: cfg.cap_add.clone(),
            cap_drop: cfg.cap_drop.clone(),
        };
        let bundle = dir.join("bundle");
        let spec = spec::build_spec(&input)?;
        spec::write_bundle(&bundle, &spec)?;
        Ok(bundle)
    }

    /// The container's netns and veth, on the bridge but with its traffic held by `gate`, for a
    /// restore whose copy must not talk to anyone yet.
    pub fn stage_gated_network(
        &self,
        cfg: &ContainerConfig,
        gate: network::GateKind,
    ) -> Result<(), ContainerError> {
        self.setup_network(cfg, false)?;
        let cn = self.container_net(cfg);
        network::install_gate(&cn.netns_path, gate)?;
        block_on_fresh(network::attach_veth(&cn.host_veth, &cn.bridge))?;
        Ok(())
    }

    pub fn setup_network(&self, cfg: &ContainerConfig, attach: bool) -> Result<(), ContainerError> {
        let netns_path = self.cfg.paths.netns(&cfg.id);
        // A leftover from a crash would make veth creation fail; start clean.
        let _ = block_on_fresh(network::delete_link(&Self::host_veth(&cfg.id)));
        let _ = network::delete_netns(&netns_path);
        network::create_netns(&netns_path)?;
        let cn = self.container_net(cfg);
        block_on_fresh(network::setup_container_net(&cn, attach))?;
        // Published ports follow the container: set up wherever its network is (a start, a
        // restore, a migration's destination), removed in `teardown`.
        if !cfg.ports.is_empty() {
            network::ports::publish(&cfg.id, cfg.ip, &self.cfg.bridge.name, &cfg.ports)?;
        }
        if attach {
            // The IP (and so the MAC) may have lived on another host until lately: tell the
            // fabric where it is now, or its forwarding entry sends the clients there for
            // minutes.
            let announced = network::send_gratuitous_arp(
                &cn.netns_path,
                network::CONTAINER_IFNAME,
                cn.ip,
                cn.mac,
            );
            if let Err(e) = announced {
                tracing::warn!(container = %cfg.name, error = %e, "announcing the new container");
            }
        }
        Ok(())
    }

    pub fn container_net(&self, cfg: &ContainerConfig) -> ContainerNet {
        ContainerNet {
            netns_path: self.cfg.paths.netns(&cfg.id),
            ip: cfg.ip,
            prefix: cfg.prefix,
            mac: network::mac_for_ip(cfg.ip),
            gateway: Some(self.cfg.bridge.address),
            bridge: self.cfg.bridge.name.clone(),
            host_veth: Self::host_veth(&cfg.id),
        }
    }

    fn start_locked(&self, rec: &mut ContainerRecord) -> Result<(), ContainerError> {
        let dir = self.container_dir(&rec.config.id);
        // A fresh start gets fresh name-resolution files (the host's resolvers may have
        // changed since the last run), as with Podman.
        rec.config.etc_files()?.write(&dir)?;
        let bundle = self.prepare(&rec.config, true)?;
        // A stale runc entry (from a crash) blocks `runc run` with the same id.
        let _ = self.runc.delete(&rec.config.id, true);
        clear_exit_files(&dir);
        let mut args = ShimArgs::new(&rec.config.id, &self.runc, bundle, &dir, ShimMode::Run);
        args.io = shim::ShimIo::load(&dir)?;
        crate::exec::sessions().set_stdio(&rec.config.id, args.io);
        let started = shim::spawn_shim(&self.cfg.shim_exe, &args)?;
        rec.status = Status::Running;
        rec.pid = Some(started.init_pid);
        rec.shim_pid = Some(started.shim_pid);
        rec.started_at = Some(now());
        rec.exit = None;
        self.save(rec)
    }

    /// Records a container that was restored (or migrated in) and is running now.
    pub fn adopt_running(
        &self,
        mut rec: ContainerRecord,
        pid: u32,
        shim_pid: u32,
    ) -> Result<ContainerRecord, ContainerError> {
        rec.status = Status::Running;
        rec.pid = Some(pid);
        rec.shim_pid = Some(shim_pid);
        rec.started_at = Some(now());
        rec.exit = None;
        self.save(&rec)?;
        lock(&self.containers).insert(rec.config.name.clone(), Arc::new(Mutex::new(rec.clone())));
        Ok(rec)
    }

    // ---- stop / kill / rm ----------------------------------------------------------------

    /// `ferry kill`: `signal` to the container's main process (its PID 1), as Docker and
    /// Podman do; with `all`, to every process in it.
    pub fn kill(&self, name: &str, signal: &str, all: bool) -> Result<(), ContainerError> {
        let sig = normalize_signal(signal)?;
        let slot = self.slot(name)?;
        let mut rec = lock(&slot);
        self.require_running(&mut rec, "signalled")?;
        self.runc.kill(&rec.config.id, &sig, all)?;
        Ok(())
    }

    /// `ferry stop`: SIGTERM, then SIGKILL after `timeout` (at most [`MAX_STOP_TIMEOUT`]).
    ///
    /// The grace period runs without the container's lock, so `ps`, `inspect` and other
    /// commands go on meanwhile; a checkpoint or migration of the dying container is refused.
    pub fn stop(&self, name: &str, timeout: Duration) -> Result<ContainerRecord, ContainerError> {
        check_duration("stop timeout", timeout, MAX_STOP_TIMEOUT)?;
        let slot = self.slot(name)?;
        let (id, started_at) = {
            let mut rec = lock(&slot);
            self.refresh(&mut rec);
            if !rec.status.can_stop() {
                // Stopping what already stopped is done, as with Docker.
                if matches!(
                    rec.status,
                    Status::Stopped | Status::Created | Status::Checkpointed
                ) {
                    return Ok(rec.clone());
                }
                return Err(ContainerError::WrongState {
                    name: name.to_owned(),
                    status: rec.status,
                    why: "it cannot be stopped now".into(),
                });
            }
            // Before the signal: the reaper must not take the exit for one to restart after.
            rec.stopped_by_user = true;
            self.save(&rec)?;
            let _ = self.runc.kill(&rec.config.id, "SIGTERM", false);
            lock(&self.stopping).insert(rec.config.id.clone());
            (rec.config.id.clone(), rec.started_at.clone())
        };
        let _stopping = Stopping {
            set: &self.stopping,
            id: id.clone(),
        };
        // Still the run this stop signalled (not one started again meanwhile)?
        let same_run = |rec: &ContainerRecord| {
            rec.config.id == id && rec.started_at == started_at && rec.status == Status::Running
        };
        if !self.wait_exit(&id, timeout) {
            let rec = lock(&slot);
            if same_run(&rec) {
                let _ = self.runc.kill(&id, "SIGKILL", true);
            }
            drop(rec);
            self.wait_exit(&id, KILL_WAIT);
        }
        let mut rec = lock(&slot);
        if same_run(&rec) {
            self.mark_exited(&mut rec, Status::Stopped);
        }
        Ok(rec.clone())
    }

    /// Refuses an operation on a container in a `stop`'s grace period.
    pub(crate) fn refuse_if_stopping(
        &self,
        rec: &ContainerRecord,
        done: &str,
    ) -> Result<(), ContainerError> {
        if lock(&self.stopping).contains(&rec.config.id) {
            return Err(ContainerError::WrongState {
                name: rec.config.name.clone(),
                status: rec.status,
                why: format!("it is being stopped, so it cannot be {done}"),
            });
        }
        Ok(())
    }

    fn wait_exit(&self, id: &str, timeout: Duration) -> bool {
        // Validated durations fit; a deadline past the clock's end is "never".
        let deadline = Instant::now().checked_add(timeout);
        let passed = || deadline.is_some_and(|d| Instant::now() >= d);
        let exit_file = self.container_dir(id).join(shim::EXIT_FILE);
        loop {
            let stopped = match self.runc.state(id) {
                Ok(Some(s)) => s.status == RuncStatus::Stopped,
                Ok(None) => true,
                Err(_) => false,
            };
            // No container dir: an `rm -f` removed it, exit file and all.
            let removed = || !self.container_dir(id).exists();
            if stopped && (exit_file.exists() || passed() || removed()) {
                return true;
            }
            if passed() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Cleans up after the container's processes ended and records the new status.
    pub fn mark_exited(&self, rec: &mut ContainerRecord, status: Status) {
        let dir = self.container_dir(&rec.config.id);
        // runc reports the init gone a moment before its shim, which reaped it, has written
        // the exit file: give a live shim that moment (seen as a lost exit code under load).
        let mut exit = read_exit(&dir);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while exit.is_none()
            && std::time::Instant::now() < deadline
            && rec
                .shim_pid
                .is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        {
            std::thread::sleep(Duration::from_millis(10));
            exit = read_exit(&dir);
        }
        rec.exit = exit.or(rec.exit.take());
        self.teardown(&rec.config);
        rec.status = status;
        rec.pid = None;
        rec.shim_pid = None;
        if let Err(e) = self.save(rec) {
            tracing::error!(error = %e, "could not persist container state");
        }
    }

    /// Releases everything a stopped container holds on this host except its state dir and IP.
    pub fn teardown(&self, cfg: &ContainerConfig) {
        let _ = self.runc.delete(&cfg.id, true);
        let _ = block_on_fresh(network::delete_link(&Self::host_veth(&cfg.id)));
        let _ = network::delete_netns(&self.cfg.paths.netns(&cfg.id));
        if !cfg.ports.is_empty() {
            if let Err(e) = network::ports::unpublish(&cfg.id) {
                tracing::warn!(container = %cfg.name, error = %e, "removing published ports");
            }
        }
        let rootfs = RootfsDirs::new(&self.container_dir(&cfg.id));
        if let Err(e) = rootfs.unmount() {
            tracing::warn!(error = %e, "unmount");
        }
    }

    pub fn remove(&self, name: &str, force: bool) -> Result<ContainerRecord, ContainerError> {
        let slot = self.slot(name)?;
        // Another operation may hold it: bounded, and `force` kills first (see `busy`).
        let mut rec = self.lock_for_remove(name, &slot, force, super::RM_WAIT)?;
        self.refresh(&mut rec);
        if rec.status == Status::Running && force {
            let _ = self.runc.kill(&rec.config.id, "SIGKILL", true);
            self.wait_exit(&rec.config.id, KILL_WAIT);
        } else if !rec.status.can_remove() {
            return Err(ContainerError::WrongState {
                name: name.to_owned(),
                status: rec.status,
                why: "stop it first or use --force".into(),
            });
        }
        self.forget(&mut rec)?;
        self.remove_all_checkpoints(&rec.config.id);
        // A `stop` in its grace period holds this slot too: it must not record an exit of
        // (and so recreate) a container that is gone.
        let removed = rec.clone();
        rec.status = Status::Stopped;
        Ok(removed)
    }

    /// Removes every trace of a container from this host (used by rm and after migrating away).
    pub fn forget(&self, rec: &mut ContainerRecord) -> Result<(), ContainerError> {
        self.teardown(&rec.config);
        self.records.remove(&rec.config.id)?;
        lock(&self.ipam).release(&rec.config.id)?;
        // The name may be another container's by now (one that came back, adopted under
        // it): only this one's entries go. Whose it is, the view says: a container's lock is
        // never taken under the map lock (the caller holds this one's anyway).
        let name = &rec.config.name;
        let mut map = lock(&self.containers);
        let mut views = lock(&self.views);
        if views.get(name).is_none_or(|v| v.config.id == rec.config.id) {
            map.remove(name);
            views.remove(name);
        }
        Ok(())
    }

    /// Registers a container created elsewhere (restore from an archive, migration) with its IP
    /// reserved; the caller fills the state dir and starts it.
    pub fn register_incoming(
        &self,
        config: ContainerConfig,
        restored_from: &str,
    ) -> Result<Slot, ContainerError> {
        // Every container that did not start here (an archive, a peer) passes through this:
        // its identifiers become paths next.
        config.validate()?;
        let mut map = lock(&self.containers);
        if map.contains_key(&config.name) {
            return Err(ContainerError::NameInUse(config.name));
        }
        lock(&self.ipam).reserve(&config.id, config.ip)?;
        let rec = ContainerRecord::created(config, Some(restored_from.to_owned()));
        if let Err(e) = self.save(&rec) {
            let _ = lock(&self.ipam).release(&rec.config.id);
            return Err(e);
        }
        let slot = Arc::new(Mutex::new(rec.clone()));
        map.insert(rec.config.name, slot.clone());
        Ok(slot)
    }

    /// Persists `rec` and publishes it to readers that find the container busy.
    pub fn save(&self, rec: &ContainerRecord) -> Result<(), ContainerError> {
        self.records.save(rec)?;
        lock(&self.views).insert(rec.config.name.clone(), rec.clone());
        Ok(())
    }

    // ---- reconciliation ----------------------------------------------------------------

    /// The reaper's round (ferryd runs it every few seconds): reconciles every container, and
    /// applies `--rm` and `--restart` to the ones that stopped.
    pub fn refresh_all(&self) {
        let slots: Vec<Slot> = lock(&self.containers).values().cloned().collect();
        for s in slots {
            // Skip containers busy in a long operation; they are refreshed when it ends.
            if let Ok(mut rec) = s.try_lock() {
                self.refresh(&mut rec);
                self.after_exit(&mut rec);
            }
        }
    }

    /// `--rm`: a stopped container goes. `--restart`: one that stopped on its own (not by
    /// `ferry stop`, a checkpoint or a migration, which leave other statuses) starts again.
    fn after_exit(&self, rec: &mut ContainerRecord) {
        if rec.status != Status::Stopped {
            return;
        }
        let name = rec.config.name.clone();
        if rec.config.auto_remove {
            tracing::info!(container = %name, "removing (--rm)");
            match self.forget(rec) {
                Ok(()) => self.remove_all_checkpoints(&rec.config.id),
                Err(e) => tracing::warn!(container = %name, error = %e, "--rm"),
            }
            return;
        }
        let policy = rec.config.restart;
        if rec.stopped_by_user || !policy.wants_restart(rec.exit.as_ref(), rec.restart_count) {
            return;
        }
        let time = |t: Option<&String>| {
            t.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc))
        };
        let finished = time(rec.exit.as_ref().and_then(|e| e.finished_at.as_ref()));
        if let (Some(started), Some(finished)) = (time(rec.started_at.as_ref()), finished) {
            let ran = (finished - started).to_std().unwrap_or_default();
            let due = finished + restart_delay(rec.restart_count, ran);
            if chrono::Utc::now() < due {
                return;
            }
        }
        rec.restart_count += 1;
        tracing::info!(container = %name, count = rec.restart_count, "restarting (--restart)");
        if let Err(e) = self.start_locked(rec) {
            tracing::warn!(container = %name, error = %e, "restart failed");
            self.teardown(&rec.config);
            rec.status = Status::Stopped;
            if let Err(e) = self.save(rec) {
                tracing::error!(container = %name, error = %e, "could not persist container state");
            }
        }
    }

    /// Brings a record in line with reality: a running container whose init exited is stopped.
    pub fn refresh(&self, rec: &mut ContainerRecord) {
        if rec.status != Status::Running {
            return;
        }
        let alive = match self.runc.state(&rec.config.id) {
            Ok(Some(s)) => matches!(
                s.status,
                RuncStatus::Running | RuncStatus::Paused | RuncStatus::Created
            ),
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "runc state");
                return;
            }
        };
        if !alive {
            self.mark_exited(rec, Status::Stopped);
        }
    }

    /// Refreshes `rec` and refuses unless it runs: "only a running container can be {done}".
    pub(crate) fn require_running(
        &self,
        rec: &mut ContainerRecord,
        done: &str,
    ) -> Result<(), ContainerError> {
        self.refresh(rec);
        if rec.status == Status::Running {
            return Ok(());
        }
        Err(ContainerError::WrongState {
            name: rec.config.name.clone(),
            status: rec.status,
            why: format!("only a running container can be {done}"),
        })
    }

    /// The log file the shim writes.
    pub fn log_path(&self, name: &str) -> Result<PathBuf, ContainerError> {
        let slot = self.slot(name)?;
        let id = lock(&slot).config.id.clone();
        Ok(self.container_dir(&id).join(shim::LOG_FILE))
    }

    pub fn is_running(&self, name: &str) -> bool {
        self.inspect(name)
            .is_ok_and(|r| r.status == Status::Running)
    }

    /// The images of this host's containers, from their views (no container's lock is taken,
    /// so a checkpoint does not hold up an image removal's check).
    pub fn images_in_use(&self) -> Vec<String> {
        let names: Vec<String> = lock(&self.containers).keys().cloned().collect();
        let views = lock(&self.views);
        names
            .iter()
            .filter_map(|n| views.get(n))
            .map(|r| r.config.image.clone())
            .collect()
    }
}

/// The longest grace period `stop` accepts: an hour is already more than any service needs
/// to shut down; a larger value is a typo (or `u64::MAX`) and is refused, not waited for.
pub const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a SIGKILLed container may take to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Refuses a user's duration over `max`, naming it, before anything waits for it.
pub fn check_duration(what: &str, d: Duration, max: Duration) -> Result<(), ContainerError> {
    if d > max {
        return Err(ContainerError::Invalid(format!(
            "{what} of {} s is too long (at most {} s)",
            d.as_secs(),
            max.as_secs()
        )));
    }
    Ok(())
}

/// Takes a container out of the stopping set when its `stop` ends, however it ends.
struct Stopping<'a> {
    set: &'a Mutex<std::collections::BTreeSet<String>>,
    id: String,
}

impl Drop for Stopping<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.id);
    }
}

/// Mounts the tmpfs that incoming memory pages go to, unless it is there already.
fn mount_page_scratch(dir: &Path) -> Result<(), ContainerError> {
    std::fs::create_dir_all(dir).map_err(|e| ContainerError::io(dir, e))?;
    if super::is_mount_point(dir) {
        return Ok(());
    }
    nix::mount::mount(
        Some("ferry-pages"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some("mode=0700"),
    )
    .map_err(|e| ContainerError::Mount {
        path: dir.to_owned(),
        reason: format!("tmpfs for incoming pages: {e}"),
    })
}

impl Engine {
    /// At shutdown: the tmpfs of incoming pages goes with ferryd (an incoming migration cut
    /// short is discarded at the next start anyway). Detached, so a straggler cannot block it.
    pub fn release_page_scratch(&self) -> Result<(), ContainerError> {
        let dir = self.cfg.paths.page_scratch();
        if !super::is_mount_point(&dir) {
            return Ok(());
        }
        nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
            ContainerError::Mount {
                path: dir.clone(),
                reason: format!("unmounting the tmpfs for incoming pages: {e}"),
            }
        })
    }
}

pub(crate) fn new_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn clear_exit_files(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(shim::EXIT_FILE));
}

fn read_exit(dir: &Path) -> Option<ExitInfo> {
    let e = shim::read_exit(dir).ok()??;
    Some(ExitInfo {
        code: e.code,
        signal: e.signal,
        finished_at: Some(e.finished_at.to_rfc3339()),
    })
}

/// Accepts "TERM", "SIGTERM" or "15"; refuses unknown names before runc sees them.
pub fn normalize_signal(s: &str) -> Result<String, ContainerError> {
    use std::str::FromStr;
    let bad = || ContainerError::Invalid(format!("unknown signal {s:?}"));
    if let Ok(n) = s.parse::<i32>() {
        nix::sys::signal::Signal::try_from(n).map_err(|_| bad())?;
        return Ok(n.to_string());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    nix::sys::signal::Signal::from_str(&name).map_err(|_| bad())?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// An engine over a scratch root: records, images and addresses only (no bridge, no
    /// mounts), enough for the bookkeeping.
    fn scratch_engine(root: &Path) -> Engine {
        let paths = HostPaths::new(root);
        let bridge = BridgeConfig {
            name: "ferry-test0".into(),
            address: Ipv4Addr::new(10, 88, 0, 1),
            prefix: 16,
            mac: [2, 0, 0, 0, 0, 1],
        };
        let cfg = EngineConfig {
            paths: paths.clone(),
            host_name: "test".into(),
            runc_binary: "runc".into(),
            runc_root: root.join("runc"),
            cgroup_parent: "ferry-test".into(),
            bridge: bridge.clone(),
            ip_range: None,
            shim_exe: "/bin/false".into(),
        };
        Engine {
            images: ImageStore::open(&paths).unwrap(),
            runc: Runc::new(root.join("runc")),
            records: RecordStore::new(paths.clone()),
            ipam: Mutex::new(
                Ipam::open(
                    &paths,
                    bridge.address,
                    bridge.prefix,
                    None,
                    &[bridge.address],
                )
                .unwrap(),
            ),
            containers: Mutex::new(BTreeMap::new()),
            views: Mutex::new(BTreeMap::new()),
            stopping: Mutex::new(Default::default()),
            holds: Mutex::new(BTreeMap::new()),
            cfg,
        }
    }

    fn record(id: &str, name: &str) -> ContainerRecord {
        let config: ContainerConfig = serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "image": "sha256:00", "image_ref": "x", "args": ["sh"],
            "env": [], "cwd": "/", "user": "", "ip": "10.88.0.5", "prefix": 16,
            "mac": "02:00:00:00:00:01", "volumes": [], "memory": null, "created": "now"
        }))
        .unwrap();
        ContainerRecord::created(config, None)
    }

    /// `ps` while a long operation (a checkpoint) holds a container's lock: it answers at once
    /// with the container's last saved record, and so do `inspect` and the lookups.
    #[test]
    fn list_does_not_wait_for_a_busy_container() {
        let root = tempfile::tempdir().unwrap();
        let engine = Arc::new(scratch_engine(root.path()));
        for (id, name) in [("a1b2c3", "busy"), ("d4e5f6", "idle")] {
            let rec = record(id, name);
            engine.save(&rec).unwrap();
            lock(&engine.containers).insert(name.into(), Arc::new(Mutex::new(rec)));
        }
        let busy = engine.slot("busy").unwrap();
        let (held_tx, held_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let mut rec = lock(&busy);
            // Unsaved, as before a dump's end: readers must not see it yet.
            rec.status = Status::Checkpointed;
            held_tx.send(()).unwrap();
            // Until the test is done (or failed: the sender is dropped).
            let _ = release_rx.recv();
        });
        held_rx.recv().unwrap();
        let (done_tx, done_rx) = mpsc::channel();
        let reader = engine.clone();
        std::thread::spawn(move || {
            let listed = reader.list();
            let inspected = reader.inspect("a1b2").map(|r| r.status);
            let images = reader.images_in_use();
            let _ = done_tx.send((listed, inspected, images));
        });
        // The timeout only detects a reader stuck behind the lock.
        let (listed, inspected, images) = done_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("list() waited for a busy container's lock");
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        let statuses: Vec<(String, Status)> = listed
            .iter()
            .map(|r| (r.config.name.clone(), r.status))
            .collect();
        assert_eq!(
            statuses,
            [
                ("busy".to_owned(), Status::Created),
                ("idle".to_owned(), Status::Created)
            ]
        );
        assert_eq!(inspected.unwrap(), Status::Created);
        assert_eq!(images.len(), 2);
        // Once let go, readers see the container itself again.
        assert_eq!(engine.inspect("busy").unwrap().status, Status::Checkpointed);
    }
}
