//! The lab's wiring: a fabric bridge joining each host's bridge (through an uplink veth) and a
//! client, all on 10.77.0.0/16, all inside namespaces the lab creates.

use anyhow::{Context, Result};
use ferry_core::network::{
    attach_veth, create_netns, create_veth, ensure_bridge, ensure_bridge_link, mac_for_ip,
    run_in_netns, setup_container_net, BridgeConfig, ContainerNet,
};

use crate::state::{LabState, CLIENT_ADDRESS, FABRIC_BRIDGE, HOST_BRIDGE, PREFIX_LEN};

const FABRIC_MAC: [u8; 6] = [0x02, 0x77, 0xff, 0, 0, 0];
/// Name of a host's uplink inside its netns.
pub const UPLINK: &str = "uplink0";

pub fn build(lab: &LabState) -> Result<()> {
    let fabric = lab.fabric_netns();
    create_netns(&fabric).with_context(|| format!("creating fabric netns {}", fabric.display()))?;
    run_in_netns(&fabric, || async {
        ensure_bridge_link(FABRIC_BRIDGE, FABRIC_MAC).await
    })
    .context("creating the fabric bridge")?;

    for host in lab.all_hosts() {
        let ns = host.netns_path.clone();
        create_netns(&ns).with_context(|| format!("creating netns {}", ns.display()))?;
        let bridge = BridgeConfig {
            name: HOST_BRIDGE.into(),
            address: host.address,
            prefix: PREFIX_LEN,
            mac: host.bridge_mac(),
        };
        run_in_netns(&ns, move || async move { ensure_bridge(&bridge).await })
            .with_context(|| format!("creating bridge {HOST_BRIDGE} of {}", host.name))?;
        let fab_end = format!("fab-{}", host.name);
        let host_ns = ns.clone();
        run_in_netns(&fabric, move || async move {
            create_veth(&fab_end, UPLINK, &host_ns, None).await?;
            attach_veth(&fab_end, FABRIC_BRIDGE).await
        })
        .with_context(|| format!("wiring {} to the fabric", host.name))?;
        run_in_netns(&ns, || async { attach_veth(UPLINK, HOST_BRIDGE).await })
            .with_context(|| format!("attaching the uplink of {}", host.name))?;
    }

    // The client is wired like a container whose "host" is the fabric.
    let client_ns = lab.client_netns();
    create_netns(&client_ns).with_context(|| format!("creating netns {}", client_ns.display()))?;
    let client = ContainerNet {
        netns_path: client_ns,
        ip: CLIENT_ADDRESS,
        prefix: PREFIX_LEN,
        mac: mac_for_ip(CLIENT_ADDRESS),
        gateway: None,
        bridge: FABRIC_BRIDGE.into(),
        host_veth: "fab-client".into(),
    };
    run_in_netns(&fabric, move || async move {
        setup_container_net(&client, true).await
    })
    .context("wiring the client to the fabric")?;
    Ok(())
}
