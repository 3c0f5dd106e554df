//! Starting the hosts' ferryd daemons, their TLS material and their peer registrations.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry_core::tool::Tool;

use crate::nsexec::{enter_as_host_daemon, enter_as_restarted_daemon, PrivateView};
use crate::state::{HostHandle, LabState, HOST_BRIDGE, PREFIX_LEN};

/// Finds one of the project's binaries: `$ENV`, else next to the running executable, else one
/// directory up (test binaries live in `target/*/deps/`).
pub fn find_binary(name: &str, env: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    bail!(
        "cannot find {name}: set ${env}, or build it (cargo build -p {name}) so it lies next to {}",
        exe.display()
    )
}

/// The cluster CA and one certificate per host, made by the `ferry` CLI. Certificates are
/// written into each host's own root, the only place its ferryd can see.
pub fn issue_certificates(ferry: &Path, lab: &LabState) -> Result<()> {
    let ca = lab.ca_dir();
    // Fresh material for every lab: a leftover CA or host certificate would be refused.
    let _ = std::fs::remove_dir_all(&ca);
    for h in lab.all_hosts() {
        let _ = std::fs::remove_dir_all(h.root.join("tls"));
    }
    Tool::new(ferry)
        .args(["ca", "init", "--dir"])
        .arg(&ca)
        .run()?;
    for h in lab.all_hosts() {
        Tool::new(ferry)
            .args(["ca", "issue", "--dir"])
            .arg(&ca)
            .args(["--name", &h.name, "--ip", &h.address.to_string(), "--out"])
            .arg(h.root.join("tls"))
            .run()?;
    }
    Ok(())
}

/// Starts ferryd for `host` inside its netns and a private mount namespace (or `mount_ns`, the
/// one an earlier ferryd of this host had), as a session leader, logging to
/// `<host>/ferryd.log`; records its pid in `<host>/ferryd.pid`.
pub fn spawn_ferryd(
    ferryd: &Path,
    lab: &LabState,
    host: &HostHandle,
    mount_ns: Option<&Path>,
) -> Result<Child> {
    for d in [&host.root, &host.runc_root, &lab.sock_dir()] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&host.log)
        .with_context(|| format!("opening {}", host.log.display()))?;
    let log2 = log.try_clone()?;
    let _ = std::fs::remove_file(&host.socket);

    let tool = Tool::new(ferryd)
        .arg("--root")
        .arg(&host.root)
        .arg("--socket")
        .arg(&host.socket)
        .arg("--runc-root")
        .arg(&host.runc_root)
        .args(["--cgroup-parent", &host.cgroup_parent])
        .args(["--bridge", HOST_BRIDGE])
        .args([
            "--bridge-address",
            &format!("{}/{PREFIX_LEN}", host.address),
        ])
        .args(["--ip-range", &host.ip_range()])
        .args(["--peer-listen", &host.peer_address()])
        .args(["--host-name", &host.name]);
    let mut cmd = tool.command();
    cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
    match mount_ns {
        Some(ns) => enter_as_restarted_daemon(&mut cmd, &host.netns_path, ns, &host.dir),
        None => enter_as_host_daemon(
            &mut cmd,
            &host.netns_path,
            &PrivateView {
                lab_dir: lab.dir.clone(),
                keep: vec![host.dir.clone(), lab.sock_dir()],
            },
        ),
    }
    let child = cmd.spawn().map_err(|e| tool.spawn_error(e))?;
    std::fs::write(&host.pidfile, child.id().to_string())
        .with_context(|| format!("writing {}", host.pidfile.display()))?;
    Ok(child)
}

/// One `GET /v1/info` over the unix socket; true on a 200 answer.
pub fn info_ok(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v1/info HTTP/1.1\r\nHost: ferryd\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[8..12] == b" 200"
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Waits until ferryd answers on its socket; fails early if it exits.
pub fn wait_ready(child: &mut Child, host: &HostHandle, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "ferryd for {} exited ({status}) before answering on {}; log {}:\n{}",
                host.name,
                host.socket.display(),
                host.log.display(),
                log_tail(&host.log)
            );
        }
        if info_ok(&host.socket) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "ferryd for {} did not answer GET /v1/info on {} within {timeout:?}; log {}:\n{}",
                host.name,
                host.socket.display(),
                host.log.display(),
                log_tail(&host.log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Registers every host with every other one.
pub fn register_peers(ferry: &Path, lab: &LabState) -> Result<()> {
    let hosts = lab.all_hosts();
    for h in &hosts {
        for peer in hosts.iter().filter(|p| p.name != h.name) {
            Tool::new(ferry)
                .arg("--socket")
                .arg(&h.socket)
                .args(["host", "add", &peer.name, &peer.peer_address()])
                .run()?;
        }
    }
    Ok(())
}
