//! Putting a source container back to running after a failed migration (interim version,
//! replaced by the verified rollback).

use std::process::Child;
use std::time::{Duration, Instant};

use crate::container::{ContainerConfig, Engine, Status};
use crate::network;

#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("could not verify the container runs again: {0}")]
    Unverified(String),
}

/// The `runc checkpoint` process of a migration, spawned in its own process group.
pub enum CheckpointProcess {
    Child(Child),
    /// After a ferryd restart: no longer our child, known by its process group.
    Orphan {
        pgid: i32,
    },
}

#[derive(Debug, Default)]
pub struct ResumeReport {
    pub cleanup_failures: Vec<String>,
}

pub fn resume_source(
    engine: &Engine,
    cfg: &ContainerConfig,
    checkpoint: Option<CheckpointProcess>,
) -> Result<ResumeReport, ResumeError> {
    let mut report = ResumeReport::default();
    if let Some(CheckpointProcess::Child(mut child)) = checkpoint {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    if let Err(e) = child.kill() {
                        report.cleanup_failures.push(format!("killing runc: {e}"));
                    }
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
    let veth = Engine::host_veth(&cfg.id);
    let bridge = engine.config().bridge.name.clone();
    if let Err(e) = crate::container::engine::block_on(network::attach_veth(&veth, &bridge)) {
        report
            .cleanup_failures
            .push(format!("re-attaching {veth}: {e}"));
    }
    let cn = engine.container_net(cfg);
    if let Err(e) =
        network::send_gratuitous_arp(&cn.netns_path, network::CONTAINER_IFNAME, cn.ip, cn.mac)
    {
        report.cleanup_failures.push(format!("gratuitous ARP: {e}"));
    }
    engine.end_migration(&cfg.name, Status::Running);
    Ok(report)
}

/// Waits until the checkpoint process (and its group) has ended, killing it after `timeout`.
pub fn wait_gone(p: CheckpointProcess, timeout: Duration) -> Result<(), ResumeError> {
    match p {
        CheckpointProcess::Child(mut c) => {
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
            Err(ResumeError::Unverified(format!(
                "runc checkpoint still ran after {timeout:?}; killed"
            )))
        }
        CheckpointProcess::Orphan { .. } => Ok(()),
    }
}
