//! Podman's flow as a user runs it today: `podman container checkpoint --export` on host A,
//! the archive copied to host B, `podman container restore --import` there, each host with its
//! own storage root. On this machine Podman needs the cgroupfs manager, explicit ulimits (root
//! lacks CAP_SYS_RESOURCE) and ferry's CRIU (its runc finds Debian's otherwise).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ferry_core::tool::Tool;

use super::podnet::{PodNet, IP};
use super::{ms, Method, Moved, COUNTER, REDIS_SERVER};
use crate::cpu::{self, Cgroup};
use crate::ctx::{run_checked, Ctx, DESTINATION, SOURCE};
use crate::fabric::{self, Payload};
use crate::record::{CpuSides, Workload};

/// Every Podman container of the suite runs below this cgroup (both "hosts" share the
/// machine's cgroup tree; the phases tell the sides apart).
const CGROUP_PARENT: &str = "ferrybench-podman";

/// One lab host's Podman: its own storage, run inside the host's netns.
struct PodHost {
    name: String,
    netns: PathBuf,
    address: Ipv4Addr,
    root: PathBuf,
    runroot: PathBuf,
    dir: PathBuf,
    criu: String,
    redis_image: String,
    busybox_image: String,
}

impl PodHost {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Tool::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg("podman")
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .args(["--runtime", "runc", "--runtime-flag"])
            .arg(format!("criu={}", self.criu))
            .command();
        c.args(args);
        c
    }

    fn podman(&self, args: &[&str]) -> Result<String> {
        run_checked(
            self.command(args),
            &format!("podman {} on {}", args.join(" "), self.name),
        )
    }

    /// Loads one of the lab's OCI layouts; its image id.
    fn pull(&self, layout: &Path, reference: &str) -> Result<String> {
        let src = format!("oci:{}:{reference}", layout.display());
        let out = self.podman(&["pull", "-q", &src])?;
        out.lines()
            .last()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .with_context(|| format!("podman pull {src} on {} printed no image id", self.name))
    }

    /// Removes every container and unmounts the storage, so the directory can go.
    fn reset(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.root.exists() {
            if let Err(e) = self.podman(&["rm", "-a", "-f", "-t", "0"]) {
                failures.push(format!("{e:#}"));
            }
            if let Err(e) = self.podman(&["rmi", "-a", "-f"]) {
                failures.push(format!("{e:#}"));
            }
        }
        // Podman's overlay driver leaves its own mounts under the storage root.
        failures.extend(ferry_lab::unmount_under(&self.dir));
        failures
    }
}

pub struct Podman {
    a: PodHost,
    b: PodHost,
    net: PodNet,
    cgroup: Cgroup,
}

impl Podman {
    /// Both hosts' storage under `ctx.work`, each with the lab's images loaded.
    pub fn new(
        ctx: &Ctx,
        redis_layout: &Path,
        busybox_layout: &Path,
        criu: &str,
    ) -> Result<Podman> {
        let mk = |host: &str| -> Result<PodHost> {
            let h = ctx.host(host)?;
            let dir = ctx.work.join(format!("podman-{host}"));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut p = PodHost {
                name: host.to_owned(),
                netns: h.netns_path.clone(),
                address: h.address,
                root: dir.join("root"),
                runroot: PathBuf::from(format!(
                    "/run/ferry-bench-podman-{}/{host}",
                    std::process::id()
                )),
                dir,
                criu: criu.to_owned(),
                redis_image: String::new(),
                busybox_image: String::new(),
            };
            p.redis_image = p.pull(redis_layout, "redis:latest")?;
            p.busybox_image = p.pull(busybox_layout, "busybox:latest")?;
            Ok(p)
        };
        let (a, b) = (mk(SOURCE)?, mk(DESTINATION)?);
        let cgroup = Cgroup::new(CGROUP_PARENT);
        cgroup
            .ensure()
            .context("creating the Podman containers' cpuacct cgroup")?;
        Ok(Podman {
            a,
            b,
            net: PodNet::new(),
            cgroup,
        })
    }

    fn archive(host: &PodHost, name: &str) -> PathBuf {
        host.dir.join(format!("{name}.tar.zst"))
    }
}

impl Drop for PodHost {
    fn drop(&mut self) {
        for f in self.reset() {
            eprintln!("ferry-bench cleanup (podman on {}): {f}", self.name);
        }
        let _ = std::fs::remove_dir_all(&self.runroot);
        if let Some(p) = self.runroot.parent() {
            let _ = std::fs::remove_dir(p);
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // The hosts' containers go first (fields drop after this), then their cgroup can.
        for h in [&self.a, &self.b] {
            for f in h.reset() {
                eprintln!("ferry-bench cleanup (podman on {}): {f}", h.name);
            }
        }
        for f in self.cgroup.remove_everywhere() {
            eprintln!("ferry-bench cleanup (podman): {f}");
        }
    }
}

impl Method for Podman {
    fn name(&self) -> &str {
        "podman"
    }

    fn redis_ip(&self) -> Ipv4Addr {
        IP
    }

    fn start(&mut self, ctx: &Ctx, workload: Workload, name: &str) -> Result<()> {
        let cg = format!("/{CGROUP_PARENT}");
        let network = format!("ns:{}", self.net.path.display());
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--cgroup-parent",
            &cg,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
            // A log file on each host, read back for the counter's ticks.
            "--log-driver",
            "k8s-file",
        ];
        match workload {
            Workload::Redis => {
                self.net.create_on(ctx.host(SOURCE)?)?;
                // The fabric may still hold the address's MAC at host-b (the previous run).
                self.net.announce()?;
                args.extend(["--network", &network, &self.a.redis_image]);
                args.extend(REDIS_SERVER);
            }
            Workload::Counter => {
                args.extend([
                    "--network",
                    "none",
                    &self.a.busybox_image,
                    "sh",
                    "-c",
                    COUNTER,
                ]);
            }
        }
        self.a.podman(&args)?;
        Ok(())
    }

    fn migrate(&mut self, ctx: &Ctx, name: &str) -> Result<Moved> {
        let archive_a = Self::archive(&self.a, name);
        let archive_b = Self::archive(&self.b, name);
        let networked = self.net.path.exists();
        let cg0 = self.cgroup.usage_s();
        let c0 = cpu::children_s();
        let t0 = Instant::now();

        let archive = archive_a.display().to_string();
        self.a.podman(&[
            "container",
            "checkpoint",
            "--export",
            &archive,
            "--tcp-established",
            name,
        ])?;
        let t1 = Instant::now();
        let (c1, cg1) = (cpu::children_s(), self.cgroup.usage_s());
        // Host A's namespace goes with host A; host B gets its own at the same path, wired
        // but not yet announced (nothing answers there until the restore).
        if networked {
            self.net.create_on(ctx.host(DESTINATION)?)?;
        }
        let t2 = Instant::now();
        let copy = fabric::transfer(
            &self.a.netns,
            &self.b.netns,
            self.b.address,
            Payload::File {
                from: archive_a,
                to: archive_b.clone(),
            },
        )
        .context("copying the checkpoint archive to host-b")?;
        let t3 = Instant::now();
        let c3 = cpu::children_s();
        let restored = self.b.podman(&[
            "container",
            "restore",
            "--import",
            &archive_b.display().to_string(),
            "--tcp-established",
        ]);
        let t4 = Instant::now();
        if networked && restored.is_ok() {
            self.net.announce()?;
        }
        let t5 = Instant::now();
        let (c5, cg5) = (cpu::children_s(), self.cgroup.usage_s());
        let ok = restored.is_ok()
            && self
                .b
                .podman(&["container", "inspect", "-f", "{{.State.Status}}", name])
                .map(|s| s.trim() == "running")
                .unwrap_or(false);
        let downtime = ms(t5 - t0);
        Ok(Moved {
            ok,
            error: restored.err().map(|e| format!("{e:#}")),
            downtime_ms: Some(downtime),
            total_ms: Some(downtime),
            wire_bytes: [("archive".to_string(), copy.bytes)].into_iter().collect(),
            cpu: CpuSides {
                source: (c1 - c0) + (cg1 - cg0) + copy.sender_cpu_s,
                destination: (c5 - c3) + (cg5 - cg1) + copy.receiver_cpu_s,
            },
            details: serde_json::json!({
                "checkpoint_ms": ms(t1 - t0),
                "netns_ms": ms(t2 - t1),
                "copy_ms": ms(t3 - t2),
                "copy_bytes_per_s": copy.bytes_per_s(),
                "restore_ms": ms(t4 - t3),
                "announce_ms": ms(t5 - t4),
                "archive_bytes": copy.bytes,
                "compression": "zstd (Podman's default)",
                "copy": "raw TCP between the lab hosts (no cipher, unlike scp)",
            }),
        })
    }

    fn tick_log(&self, _ctx: &Ctx, name: &str) -> Result<String> {
        // Each host keeps the log of its own part.
        let mut s = self.a.podman(&["logs", "-t", name])?;
        s.push_str(&self.b.podman(&["logs", "-t", name])?);
        Ok(s)
    }

    fn cleanup(&mut self, _ctx: &Ctx, name: &str) -> Vec<String> {
        let mut failures = Vec::new();
        for h in [&self.a, &self.b] {
            let exists = h.podman(&["container", "exists", name]).is_ok();
            if exists {
                if let Err(e) = h.podman(&["rm", "-f", "-t", "0", name]) {
                    failures.push(format!("{e:#}"));
                }
            }
            let _ = std::fs::remove_file(Self::archive(h, name));
        }
        if let Err(e) = self.net.remove() {
            failures.push(format!("{e:#}"));
        }
        failures
    }
}

/// Podman's version, or why it cannot run.
pub fn available() -> Result<String> {
    let v = Tool::new("podman").arg("--version").run_text();
    match v {
        Ok(v) => Ok(v.trim().to_owned()),
        Err(e) => bail!("podman is not installed (scripts/setup.sh installs it): {e}"),
    }
}
