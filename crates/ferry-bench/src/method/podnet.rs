//! The network namespace Podman's container runs in (`--network ns:<path>`), wired like a
//! ferry container: a veth into a lab host's bridge, a fixed IP and MAC on the lab's /16.
//! Moving it to the other host is what a user moving a Podman container with its address has
//! to do: the old namespace goes with the old host, the new host gets one at the same path
//! (the checkpoint names it), and the address is announced once the container runs there.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use ferry_core::network::{
    create_netns, delete_netns, mac_for_ip, run_in_netns, send_gratuitous_arp, setup_container_net,
    ContainerNet, CONTAINER_IFNAME,
};
use ferry_lab::{HostHandle, HOST_BRIDGE, PREFIX_LEN};

/// Outside every lab host's container range (`10.77.<host>.x`).
pub const IP: Ipv4Addr = Ipv4Addr::new(10, 77, 100, 20);
/// The host end of the veth, in the host's netns.
const HOST_VETH: &str = "fbpod0";

pub struct PodNet {
    pub path: PathBuf,
    /// Set while a namespace exists at `path`.
    live: bool,
}

impl PodNet {
    /// A name outside the lab's prefix: the lab refuses to come up while a netns with its
    /// prefix exists.
    pub fn new() -> PodNet {
        PodNet {
            path: PathBuf::from(format!("/run/netns/fbpod-{}", std::process::id())),
            live: false,
        }
    }

    /// A fresh namespace at `path`, attached to `host`'s bridge.
    pub fn create_on(&mut self, host: &HostHandle) -> Result<()> {
        self.remove()?;
        create_netns(&self.path)
            .with_context(|| format!("creating the Podman netns {}", self.path.display()))?;
        self.live = true;
        let net = ContainerNet {
            netns_path: self.path.clone(),
            ip: IP,
            prefix: PREFIX_LEN,
            mac: mac_for_ip(IP),
            gateway: None,
            bridge: HOST_BRIDGE.into(),
            host_veth: HOST_VETH.into(),
        };
        run_in_netns(&host.netns_path, move || async move {
            setup_container_net(&net, true).await
        })
        .with_context(|| format!("wiring the Podman netns to {}'s bridge", host.name))
    }

    /// Tells the fabric where the address is now.
    pub fn announce(&self) -> Result<()> {
        send_gratuitous_arp(&self.path, CONTAINER_IFNAME, IP, mac_for_ip(IP))
            .context("announcing the Podman container's address")
    }

    /// Deletes the namespace (its veth pair goes with it).
    pub fn remove(&mut self) -> Result<()> {
        if self.live || self.path.exists() {
            delete_netns(&self.path)
                .with_context(|| format!("deleting the Podman netns {}", self.path.display()))?;
        }
        self.live = false;
        Ok(())
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("ferry-bench cleanup: {e:#}");
        }
    }
}
