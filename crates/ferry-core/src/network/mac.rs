//! MAC addresses derived from IPs, so a migrated container keeps its MAC on every host.

use std::net::Ipv4Addr;

/// `02:fe:a:b:c:d` for `a.b.c.d`: locally administered (bit 1), unicast (bit 0 clear), and a
/// pure function of the IP, so the destination host rebuilds the same MAC without asking.
pub fn mac_for_ip(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0xfe, a, b, c, d]
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (case-insensitive).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut out {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_is_deterministic_local_unicast() {
        let ip = Ipv4Addr::new(10, 77, 1, 5);
        let mac = mac_for_ip(ip);
        assert_eq!(mac, mac_for_ip(ip));
        assert_eq!(format_mac(&mac), "02:fe:0a:4d:01:05");
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        assert_ne!(mac, mac_for_ip(Ipv4Addr::new(10, 77, 1, 6)));
    }

    #[test]
    fn parse_roundtrip() {
        let mac = [0x02, 0x77, 0, 0, 0, 0x0a];
        assert_eq!(parse_mac(&format_mac(&mac)), Some(mac));
        assert_eq!(parse_mac("02:77:00:00:00"), None);
        assert_eq!(parse_mac("02:77:00:00:00:0a:01"), None);
        assert_eq!(parse_mac("zz:77:00:00:00:0a"), None);
    }
}
