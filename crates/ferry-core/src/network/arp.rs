//! Gratuitous ARP from inside a container netns, over a raw AF_PACKET socket.
//!
//! After a migration the bridges' forwarding tables and the peers' neighbour caches still
//! point at the old host; bridge learning fixes that only when the restored socket happens to
//! transmit, so an idle connection would keep going to the old place.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::enter::in_netns;
use super::error::NetError;

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const BROADCAST: [u8; 6] = [0xff; 6];
/// Minimum Ethernet frame without FCS; veth does not pad short frames for us.
const MIN_FRAME: usize = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOp {
    Request = 1,
    Reply = 2,
}

/// A broadcast gratuitous ARP frame announcing `ip` at `mac`: sender and target IP are both
/// `ip`. Requests carry a zero target MAC (as `arping -U`), replies carry `mac`.
pub fn garp_frame(ip: Ipv4Addr, mac: [u8; 6], op: ArpOp) -> [u8; MIN_FRAME] {
    let mut f = [0u8; MIN_FRAME];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&(op as u16).to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    if op == ArpOp::Reply {
        f[32..38].copy_from_slice(&mac);
    }
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Sends one gratuitous ARP request and one reply for `ip`/`mac` out of `ifname` inside the
/// namespace at `netns_path` (some stacks only learn from one of the two).
pub fn send_gratuitous_arp(
    netns_path: &Path,
    ifname: &str,
    ip: Ipv4Addr,
    mac: [u8; 6],
) -> Result<(), NetError> {
    let ifname = ifname.to_owned();
    in_netns(netns_path, move || {
        let frames = [
            garp_frame(ip, mac, ArpOp::Request),
            garp_frame(ip, mac, ArpOp::Reply),
        ];
        send_frames(&ifname, &frames)
    })?
}

fn send_frames(ifname: &str, frames: &[[u8; MIN_FRAME]]) -> Result<(), NetError> {
    let ifindex = nix::net::if_::if_nametoindex(ifname).map_err(|e| NetError::Socket {
        op: "look up interface",
        source: e.into(),
    })?;
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if raw < 0 {
        return Err(NetError::Socket {
            op: "open AF_PACKET socket",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };

    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ARP.to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&BROADCAST);
    for frame in frames {
        // SAFETY: the buffer and the address are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(NetError::Socket {
                op: "send gratuitous ARP",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_request_layout() {
        let mac = [2, 0xfe, 10, 77, 1, 5];
        let ip = Ipv4Addr::new(10, 77, 1, 5);
        let f = garp_frame(ip, mac, ArpOp::Request);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &ip.octets());
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &ip.octets());
        assert!(f[42..].iter().all(|b| *b == 0));
        let r = garp_frame(ip, mac, ArpOp::Reply);
        assert_eq!(&r[20..22], &[0, 2]);
        assert_eq!(&r[32..38], &mac);
    }
}
