//! Links in the caller's network namespace: the host bridge and container veth pairs.
//! Netlink handles come from [`super::netlink`].

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::Handle;

use super::error::{netlink_errno, NetError};
use super::netlink;
use super::MAX_IFNAME_LEN;

/// Name of the container's interface inside its netns.
pub const CONTAINER_IFNAME: &str = "eth0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    pub name: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    /// Pinned: a bridge otherwise takes the lowest port MAC, which changes as container veths
    /// come and go, and peers then hold a stale neighbour entry.
    pub mac: [u8; 6],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerNet {
    pub netns_path: PathBuf,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub mac: [u8; 6],
    pub gateway: Option<Ipv4Addr>,
    pub bridge: String,
    /// Host-side veth name, at most 15 characters.
    pub host_veth: String,
}

fn check_ifname(name: &str) -> Result<(), NetError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_IFNAME_LEN {
        "longer than 15 bytes"
    } else if name.contains(['/', ':']) || name.chars().any(char::is_whitespace) {
        "contains '/', ':' or whitespace"
    } else {
        return Ok(());
    };
    Err(NetError::InvalidIfName {
        name: name.to_owned(),
        reason,
    })
}

async fn find_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, NetError> {
    check_ifname(name)?;
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(NetError::netlink(format!("look up link {name}"))(e)),
    }
}

async fn link_index(handle: &Handle, name: &str) -> Result<u32, NetError> {
    find_link(handle, name)
        .await?
        .map(|l| l.header.index)
        .ok_or_else(|| NetError::LinkNotFound {
            name: name.to_owned(),
        })
}

fn link_address(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) => bytes.as_slice().try_into().ok(),
        _ => None,
    })
}

fn is_bridge(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))),
        _ => false,
    })
}

/// The MAC address of interface `name` in the caller's namespace.
pub async fn link_mac(name: &str) -> Result<[u8; 6], NetError> {
    let handle = netlink::handle().await?;
    let link = find_link(&handle, name)
        .await?
        .ok_or_else(|| NetError::LinkNotFound {
            name: name.to_owned(),
        })?;
    link_address(&link).ok_or_else(|| NetError::LinkNotFound {
        name: name.to_owned(),
    })
}

async fn set_link_up_with(handle: &Handle, name: &str) -> Result<(), NetError> {
    let index = link_index(handle, name).await?;
    handle
        .link()
        .set(index)
        .up()
        .execute()
        .await
        .map_err(NetError::netlink(format!("set {name} up")))
}

pub async fn set_link_up(name: &str) -> Result<(), NetError> {
    set_link_up_with(&netlink::handle().await?, name).await
}

/// Creates the bridge `name` with MAC `mac` if missing, or checks that the existing link is a
/// bridge and pins its MAC to `mac`; then brings it up. No address is touched (fabric bridges
/// have none). Idempotent.
pub async fn ensure_bridge_link(name: &str, mac: [u8; 6]) -> Result<(), NetError> {
    let handle = netlink::handle().await?;
    ensure_bridge_link_with(&handle, name, mac).await?;
    Ok(())
}

async fn ensure_bridge_link_with(
    handle: &Handle,
    name: &str,
    mac: [u8; 6],
) -> Result<u32, NetError> {
    let index = match find_link(handle, name).await? {
        Some(link) => {
            if !is_bridge(&link) {
                return Err(NetError::NotABridge {
                    name: name.to_owned(),
                });
            }
            if link_address(&link) != Some(mac) {
                handle
                    .link()
                    .set(link.header.index)
                    .address(mac.to_vec())
                    .execute()
                    .await
                    .map_err(NetError::netlink(format!("set MAC of bridge {name}")))?;
            }
            link.header.index
        }
        None => {
            handle
                .link()
                .add()
                .bridge(name.to_owned())
                .address(mac.to_vec())
                .execute()
                .await
                .map_err(NetError::netlink(format!("create bridge {name}")))?;
            link_index(handle, name).await?
        }
    };
    handle
        .link()
        .set(index)
        .up()
        .execute()
        .await
        .map_err(NetError::netlink(format!("set bridge {name} up")))?;
    Ok(index)
}

/// Creates or verifies the host bridge in the caller's namespace: pinned MAC, the configured
/// address, up. Other addresses already on it are left alone. Idempotent.
pub async fn ensure_bridge(cfg: &BridgeConfig) -> Result<(), NetError> {
    if cfg.prefix > 32 {
        return Err(NetError::InvalidPrefix { prefix: cfg.prefix });
    }
    let handle = netlink::handle().await?;
    let index = ensure_bridge_link_with(&handle, &cfg.name, cfg.mac).await?;
    add_address_if_missing(&handle, index, &cfg.name, cfg.address, cfg.prefix).await
}

async fn add_address_if_missing(
    handle: &Handle,
    index: u32,
    ifname: &str,
    ip: Ipv4Addr,
    prefix: u8,
) -> Result<(), NetError> {
    let present: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(NetError::netlink(format!("list addresses of {ifname}")))?;
    let already = present.iter().any(|m| {
        m.header.prefix_len == prefix
            && m.attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(a)) if *a == ip))
    });
    if already {
        return Ok(());
    }
    handle
        .address()
        .add(index, IpAddr::V4(ip), prefix)
        .execute()
        .await
        .map_err(NetError::netlink(format!("add {ip}/{prefix} to {ifname}")))
}

/// Creates a veth pair: `name` stays in the caller's namespace (down, kernel-chosen MAC);
/// `peer_name` is created directly inside the namespace at `peer_netns`, with `peer_mac` if
/// given, and left down.
pub async fn create_veth(
    name: &str,
    peer_name: &str,
    peer_netns: &Path,
    peer_mac: Option<[u8; 6]>,
) -> Result<(), NetError> {
    check_ifname(name)?;
    check_ifname(peer_name)?;
    let handle = netlink::handle().await?;
    let ns = File::open(peer_netns).map_err(|source| NetError::Netns {
        path: peer_netns.to_owned(),
        op: "open",
        source,
    })?;
    let mut peer = LinkMessage::default();
    peer.attributes
        .push(LinkAttribute::IfName(peer_name.to_owned()));
    peer.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
    if let Some(mac) = peer_mac {
        peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    let mut req = handle.link().add().name(name.to_owned());
    req.message_mut()
        .attributes
        .push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
    let result = req.execute().await.map_err(NetError::netlink(format!(
        "create veth {name} with peer {peer_name} in {}",
        peer_netns.display()
    )));
    drop(ns); // the fd must stay open until the kernel has read the request
    result
}

/// Builds the container's network: a veth pair whose container end becomes `eth0` inside
/// `cn.netns_path` with the fixed MAC and IP, up, with a default route via the gateway; the
/// host end `cn.host_veth` stays in the caller's namespace and is attached to the bridge and
/// brought up only if `attach` (a migration destination attaches later). A stale host veth or
/// container `eth0` of the same name (a crashed earlier attempt) is replaced.
pub async fn setup_container_net(cn: &ContainerNet, attach: bool) -> Result<(), NetError> {
    if cn.prefix > 32 {
        return Err(NetError::InvalidPrefix { prefix: cn.prefix });
    }
    check_ifname(&cn.host_veth)?;
    let host = netlink::handle().await?;
    let inner = netlink::handle_in(&cn.netns_path).await?;

    delete_link_with(&host, &cn.host_veth).await?;
    delete_link_with(&inner, CONTAINER_IFNAME).await?;
    create_veth(
        &cn.host_veth,
        CONTAINER_IFNAME,
        &cn.netns_path,
        Some(cn.mac),
    )
    .await?;

    let eth0 = link_index(&inner, CONTAINER_IFNAME).await?;
    add_address_if_missing(&inner, eth0, CONTAINER_IFNAME, cn.ip, cn.prefix).await?;
    inner
        .link()
        .set(eth0)
        .up()
        .execute()
        .await
        .map_err(NetError::netlink("set container eth0 up"))?;
    if let Some(gw) = cn.gateway {
        inner
            .route()
            .add()
            .v4()
            .gateway(gw)
            .output_interface(eth0)
            .execute()
            .await
            .map_err(NetError::netlink(format!(
                "add default route via {gw} in container"
            )))?;
    }
    if attach {
        attach_with(&host, &cn.host_veth, &cn.bridge).await?;
    }
    Ok(())
}

async fn attach_with(handle: &Handle, host_veth: &str, bridge: &str) -> Result<(), NetError> {
    let veth = link_index(handle, host_veth).await?;
    let br = link_index(handle, bridge).await?;
    handle
        .link()
        .set(veth)
        .controller(br)
        .execute()
        .await
        .map_err(NetError::netlink(format!("attach {host_veth} to {bridge}")))?;
    handle
        .link()
        .set(veth)
        .up()
        .execute()
        .await
        .map_err(NetError::netlink(format!("set {host_veth} up")))
}

/// Enslaves `host_veth` to `bridge` and brings it up.
pub async fn attach_veth(host_veth: &str, bridge: &str) -> Result<(), NetError> {
    attach_with(&netlink::handle().await?, host_veth, bridge).await
}

/// Takes `host_veth` off its bridge and down (the container becomes unreachable, its netns
/// stays intact). Missing link is fine.
pub async fn detach_veth(host_veth: &str) -> Result<(), NetError> {
    let handle = netlink::handle().await?;
    let Some(link) = find_link(&handle, host_veth).await? else {
        return Ok(());
    };
    handle
        .link()
        .set(link.header.index)
        .down()
        .nocontroller()
        .execute()
        .await
        .map_err(NetError::netlink(format!("detach {host_veth}")))
}

async fn delete_link_with(handle: &Handle, name: &str) -> Result<(), NetError> {
    let Some(link) = find_link(handle, name).await? else {
        return Ok(());
    };
    match handle.link().del(link.header.index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(NetError::netlink(format!("delete link {name}"))(e)),
    }
}

/// Deletes link `name` in the caller's namespace (for a veth, its peer goes too). Idempotent.
pub async fn delete_link(name: &str) -> Result<(), NetError> {
    delete_link_with(&netlink::handle().await?, name).await
}
