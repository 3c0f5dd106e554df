//! A multi-host ferry lab on one machine: each "host" is a network namespace with its own
//! bridge and its own `ferryd` (in a private mount namespace), all joined by a fabric bridge on
//! 10.77.0.0/16, plus a client namespace on the same segment.
//!
//! Used by the e2e tests (as [`Lab`], whose `Drop` tears everything down), the demo and the
//! benchmarks (through the `ferry-lab` binary).

mod daemon;
mod nsexec;
mod state;
mod teardown;
mod topology;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferry_core::tool::Tool;

pub use daemon::{find_binary, info_ok};
pub use state::{
    host_name, HostHandle, LabState, CLIENT_ADDRESS, DEFAULT_PREFIX, FABRIC_BRIDGE, HOST_BRIDGE,
    MAX_HOSTS, PEER_PORT, PREFIX_LEN, SUBNET,
};
pub use teardown::{teardown, unmount_under};
pub use topology::UPLINK;

/// How to bring a lab up.
#[derive(Debug, Clone)]
pub struct LabConfig {
    pub dir: PathBuf,
    pub hosts: usize,
    /// Names the lab's netns (`<prefix>-host-a`, `<prefix>-fab`, …) and cgroup parents.
    pub prefix: String,
    /// Start a ferryd per host (otherwise only the network is built).
    pub daemons: bool,
    /// ferryd binary; default `$FERRYD` or next to the running executable.
    pub ferryd: Option<PathBuf>,
    /// ferry CLI binary; default `$FERRY` or next to the running executable.
    pub ferry: Option<PathBuf>,
    pub ready_timeout: Duration,
}

impl LabConfig {
    pub fn new(dir: impl Into<PathBuf>, hosts: usize) -> Self {
        LabConfig {
            dir: dir.into(),
            hosts,
            prefix: DEFAULT_PREFIX.into(),
            daemons: true,
            ferryd: None,
            ferry: None,
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// A running lab. Dropping it tears the lab down (unless [`Lab::keep`] was called).
#[derive(Debug)]
pub struct Lab {
    state: LabState,
    hosts: Vec<HostHandle>,
    children: Vec<Child>,
    /// Each host's mount namespace, held open: a restarted ferryd re-enters it, as a real
    /// ferryd restarts in its host's mounts (netns files, rootfs overlays, page scratch).
    mount_ns: std::collections::HashMap<String, std::fs::File>,
    armed: bool,
}

impl Lab {
    /// `hosts` hosts with ferryds, default prefix, in `dir`.
    pub fn up(dir: impl Into<PathBuf>, hosts: usize) -> Result<Lab> {
        Self::up_with(LabConfig::new(dir, hosts))
    }

    /// Brings a lab up. Leftovers of an earlier lab with the same dir and prefix (a crashed
    /// run) are cleaned first. On failure everything created so far is torn down.
    pub fn up_with(cfg: LabConfig) -> Result<Lab> {
        let state = LabState::new(&cfg.dir, &cfg.prefix, cfg.hosts, cfg.daemons)?;
        let binaries = if cfg.daemons {
            Some((
                cfg.ferryd
                    .map_or_else(|| find_binary("ferryd", "FERRYD"), Ok)?,
                cfg.ferry
                    .map_or_else(|| find_binary("ferry", "FERRY"), Ok)?,
            ))
        } else {
            None
        };

        // A new lab starts from nothing: the previous one's state dirs and CA go too.
        if let Some(previous) = LabState::load(&state.dir)? {
            for w in teardown(&previous, true) {
                tracing::warn!("cleaning an earlier lab: {w}");
            }
        }
        if let Some(ns) = netns_with_prefix(&state.prefix) {
            bail!(
                "{} exists: another lab with prefix {p} is up (not recorded in {}); take it down \
                 with `ferry-lab --prefix {p} --dir <its dir> down`, or use another prefix",
                ns.display(),
                state.dir.display(),
                p = state.prefix
            );
        }
        state.save()?;
        let mut lab = Lab {
            hosts: state.all_hosts(),
            state,
            children: Vec::new(),
            mount_ns: std::collections::HashMap::new(),
            armed: true,
        };
        for h in &lab.hosts {
            // Each host starts empty, even where an unrecorded earlier lab left its dir.
            let _ = std::fs::remove_dir_all(&h.dir);
            std::fs::create_dir_all(&h.root)
                .with_context(|| format!("creating {}", h.root.display()))?;
        }
        topology::build(&lab.state)?;
        if let Some((ferryd, ferry)) = binaries {
            lab.start_daemons(&ferryd, &ferry, cfg.ready_timeout)?;
        }
        Ok(lab)
    }

    /// Kills a host's ferryd with SIGKILL (no chance to clean up), as a crash would.
    pub fn kill_ferryd(&mut self, host: &str) -> Result<()> {
        let h = self
            .host(host)
            .with_context(|| format!("no host {host}"))?
            .clone();
        let pid = h
            .pid()
            .with_context(|| format!("{host}'s ferryd is not running"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .with_context(|| format!("killing {host}'s ferryd ({pid})"))?;
        for c in &mut self.children {
            if c.id() as i32 == pid {
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_file(&h.pidfile);
        Ok(())
    }

    /// Sends `signal` to a host's ferryd (SIGSTOP/SIGCONT to make it hang and come back).
    pub fn signal_ferryd(&self, host: &str, signal: nix::sys::signal::Signal) -> Result<()> {
        let h = self.host(host).with_context(|| format!("no host {host}"))?;
        let pid = h
            .pid()
            .with_context(|| format!("{host}'s ferryd is not running"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .with_context(|| format!("sending {signal} to {host}'s ferryd ({pid})"))
    }

    /// Starts a host's ferryd again (after [`Lab::kill_ferryd`]) and waits until it answers.
    /// It runs in the same mount namespace as before, with the same state dir.
    pub fn start_ferryd(&mut self, host: &str) -> Result<()> {
        let h = self
            .host(host)
            .with_context(|| format!("no host {host}"))?
            .clone();
        let ferryd = find_binary("ferryd", "FERRYD")?;
        self.spawn(&ferryd, &h, Duration::from_secs(30))
    }

    fn spawn(&mut self, ferryd: &Path, h: &HostHandle, timeout: Duration) -> Result<()> {
        use std::os::fd::AsRawFd;
        // The child still holds this descriptor between fork and exec, where it enters it.
        let ns = self
            .mount_ns
            .get(&h.name)
            .map(|f| PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())));
        let child = daemon::spawn_ferryd(ferryd, &self.state, h, ns.as_deref())?;
        if ns.is_none() {
            let path = format!("/proc/{}/ns/mnt", child.id());
            let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            self.mount_ns.insert(h.name.clone(), f);
        }
        self.children.push(child);
        let child = self.children.last_mut().expect("just pushed");
        daemon::wait_ready(child, h, timeout)
    }

    fn start_daemons(&mut self, ferryd: &Path, ferry: &Path, timeout: Duration) -> Result<()> {
        daemon::issue_certificates(ferry, &self.state)?;
        for h in self.hosts.clone() {
            self.spawn(ferryd, &h, timeout)?;
        }
        daemon::register_peers(ferry, &self.state)
    }

    pub fn state(&self) -> &LabState {
        &self.state
    }

    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    pub fn hosts(&self) -> &[HostHandle] {
        &self.hosts
    }

    /// The host named `name` (`host-a`, …).
    pub fn host(&self, name: &str) -> Option<&HostHandle> {
        self.hosts.iter().find(|h| h.name == name)
    }

    pub fn client_netns(&self) -> PathBuf {
        self.state.client_netns()
    }

    pub fn fabric_netns(&self) -> PathBuf {
        self.state.fabric_netns()
    }

    /// A command that starts in `host`'s netns and its ferryd's mount namespace (when a
    /// ferryd runs), with `FERRY_SOCKET` set to the host's socket.
    pub fn host_command(
        &self,
        host: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Result<Command> {
        let h = self
            .host(host)
            .with_context(|| format!("no host {host} in the lab at {}", self.dir().display()))?;
        Ok(host_command(h, program))
    }

    /// Runs `cmd` (program and arguments) as [`Lab::host_command`] does, to completion.
    pub fn exec(&self, host: &str, cmd: &[&str]) -> Result<Output> {
        let Some((program, args)) = cmd.split_first() else {
            bail!("empty command");
        };
        let mut c = self.host_command(host, program)?;
        c.args(args);
        c.output()
            .with_context(|| format!("running {} on {host}", cmd.join(" ")))
    }

    /// A command that starts in the client netns.
    pub fn client_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        client_command(&self.state, program)
    }

    /// Leaves the lab running when this handle is dropped (the `ferry-lab up` binary).
    pub fn keep(mut self) {
        self.armed = false;
    }

    /// Tears the lab down now; returns the warnings of the cleanup.
    pub fn down(mut self) -> Vec<String> {
        self.armed = false;
        self.teardown_now()
    }

    fn teardown_now(&mut self) -> Vec<String> {
        let warnings = teardown(&self.state, false);
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        warnings
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.armed {
            for w in self.teardown_now() {
                eprintln!("ferry-lab teardown: {w}");
            }
        }
    }
}

/// A `/run/netns` entry of a lab with this prefix, if any exists.
fn netns_with_prefix(prefix: &str) -> Option<PathBuf> {
    let wanted = format!("{prefix}-");
    std::fs::read_dir("/run/netns")
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&wanted))
        .map(|e| e.path())
}

/// See [`Lab::host_command`]; usable without a [`Lab`] (the binary).
pub fn host_command(h: &HostHandle, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Tool::new(program)
        .env("FERRY_SOCKET", &h.socket)
        .env("PATH", path_with_ferry())
        .command();
    let ferryd = h
        .pid()
        .filter(|p| Path::new(&format!("/proc/{p}/ns/mnt")).exists());
    nsexec::enter(&mut c, &h.netns_path, ferryd);
    c
}

/// See [`Lab::client_command`]; usable without a [`Lab`].
pub fn client_command(state: &LabState, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Tool::new(program).env("PATH", path_with_ferry()).command();
    nsexec::enter(&mut c, &state.client_netns(), None);
    c
}

/// PATH with the directory of ferry's binaries first, so `ferry-lab exec host-a -- ferry ps`
/// finds the `ferry` built next to `ferry-lab` (or next to a test binary's `deps/`).
pub fn path_with_ferry() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(d) = exe.parent() {
            dirs.push(d.to_path_buf());
            if d.ends_with("deps") {
                if let Some(p) = d.parent() {
                    dirs.insert(0, p.to_path_buf());
                }
            }
        }
    }
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}
