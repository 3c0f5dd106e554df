//! Container networking: per-host bridge, per-container netns with a fixed IP and MAC, veth
//! plumbing, gratuitous ARP, the migration traffic gate, and IP address management.
//!
//! Netlink sockets belong to the network namespace of the thread that opened them. The async
//! functions here act on the caller's namespace; to act on another one, run them through
//! [`run_in_netns`] (a fresh thread that entered that namespace), as the tests and the lab do.
//!
//! Layering (arrows point down only): `netns` (namespace files: create, delete) → `link`
//! (links, addresses, routes) → `netlink` (the one place a netlink handle is opened, here or in
//! a namespace at a path) → `enter` (a thread inside a namespace).

mod arp;
mod criu_lock;
pub mod dns;
mod enter;
mod error;
mod gate;
mod hold;
mod ipam;
mod kick;
mod link;
mod mac;
mod netlink;
mod netns;
pub mod ports;

#[cfg(test)]
mod tests;

pub use arp::{garp_frame, send_gratuitous_arp, ArpOp};
pub use criu_lock::{
    install_criu_lock_like_criu, remove_criu_lock, CriuLockError, LockRemoval, CRIU_CHAIN,
};
pub use enter::{in_netns, run_in_netns};
pub use error::NetError;
pub use gate::{
    install_gate, open_gates, remove_gates, set_arp_replies, GateKind, LoopbackOnlyPort,
};
pub use hold::{PacketHold, HOLD_QUEUE};
pub use ipam::{same_subnet, Ipam};
pub use kick::{kick_tcp_retransmits, leave_tcp_repair};
pub use link::{
    attach_veth, create_veth, delete_link, detach_veth, ensure_bridge, ensure_bridge_link,
    link_mac, set_link_up, setup_container_net, BridgeConfig, ContainerNet, CONTAINER_IFNAME,
};
pub use mac::{format_mac, mac_for_ip, parse_mac};
pub use netns::{create_netns, delete_netns};

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;
