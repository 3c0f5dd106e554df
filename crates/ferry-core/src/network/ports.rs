//! Published ports (`-p [IP:]HOST:CTR[/proto]`): iptables DNAT rules in the host's network
//! namespace that send a host port to the container's IP.
//!
//! - `nat FERRY-PORTS`, reached from PREROUTING (traffic from outside) and OUTPUT (traffic from
//!   this host) for local destination addresses, holds one DNAT rule per mapping.
//! - `nat POSTROUTING` masquerades the DNATed flows, so the container's replies come back
//!   through this host even when the client shares its L2 segment (or is this host's
//!   127.0.0.1, which also needs `route_localnet` on the bridge).
//! - `filter FORWARD` accepts the DNATed flows both ways, whatever the chain's policy.
//!
//! Every rule carries the comment `ferry:<container id>`, so [`unpublish`] removes exactly a
//! container's rules, also ones a crash left behind. The rules are made from the container's
//! config wherever its network is set up, so they follow it to a migration's destination and
//! leave the source with it.

use std::net::Ipv4Addr;

use crate::tool::{Tool, ToolError};

pub const CHAIN: &str = "FERRY-PORTS";

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("invalid port mapping {0:?}: expected [IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp], e.g. 8080:80 or 127.0.0.1:8443:443/tcp")]
    Bad(String),
    #[error("setting up the published ports of container {id}: {source}")]
    Iptables {
        id: String,
        #[source]
        source: ToolError,
    },
    #[error("enabling {what} on this host for published ports: {source}")]
    Sysctl {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One `-p` mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PortMapping {
    /// Only traffic to this host address; None: any of the host's addresses.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

impl PortMapping {
    /// Whether both would catch the same traffic.
    pub fn clashes_with(&self, other: &PortMapping) -> bool {
        self.host_port == other.host_port
            && self.proto == other.proto
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}->{}/{}",
            self.host_port,
            self.container_port,
            self.proto.as_str()
        )
    }
}

/// Parses `[IP:]HOST:CTR[/proto]`.
pub fn parse_publish(spec: &str) -> Result<PortMapping, PortError> {
    let bad = || PortError::Bad(spec.to_owned());
    let (ports, proto) = match spec.rsplit_once('/') {
        Some((p, "tcp")) => (p, Proto::Tcp),
        Some((p, "udp")) => (p, Proto::Udp),
        Some(_) => return Err(bad()),
        None => (spec, Proto::Tcp),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (host_ip, host, ctr) = match parts.as_slice() {
        [h, c] => (None, *h, *c),
        [ip, h, c] => (Some(ip.parse::<Ipv4Addr>().map_err(|_| bad())?), *h, *c),
        _ => return Err(bad()),
    };
    let port = |s: &str| s.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad);
    Ok(PortMapping {
        host_ip: host_ip.filter(|ip| !ip.is_unspecified()),
        host_port: port(host)?,
        container_port: port(ctr)?,
        proto,
    })
}

fn comment(id: &str) -> String {
    format!("ferry:{id}")
}

fn iptables(id: &str, args: &[&str]) -> Result<(), PortError> {
    Tool::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .run()
        .map(|_| ())
        .map_err(|source| PortError::Iptables {
            id: id.to_owned(),
            source,
        })
}

/// Adds `rule` to `chain` of `table` unless it is there already.
fn ensure_rule(id: &str, table: &str, chain: &str, rule: &[&str]) -> Result<(), PortError> {
    let mut check = vec!["-t", table, "-C", chain];
    check.extend_from_slice(rule);
    if iptables(id, &check).is_ok() {
        return Ok(());
    }
    let mut add = vec!["-t", table, "-A", chain];
    add.extend_from_slice(rule);
    iptables(id, &add)
}

fn write_sysctl(path: &str, value: &str) -> Result<(), PortError> {
    std::fs::write(path, value).map_err(|source| PortError::Sysctl {
        what: path.trim_start_matches("/proc/sys/").replace('/', "."),
        source,
    })
}

/// Installs the rules that send each of `ports` to `ip` (replacing any the container had).
/// `bridge` is the host bridge the container hangs off.
pub fn publish(
    id: &str,
    ip: Ipv4Addr,
    bridge: &str,
    ports: &[PortMapping],
) -> Result<(), PortError> {
    unpublish(id)?;
    if ports.is_empty() {
        return Ok(());
    }
    // Traffic from outside is forwarded to the bridge; 127.0.0.1 may only leave the loopback
    // toward it with route_localnet (as Podman's port mapper sets it).
    write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
    write_sysctl(
        &format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet"),
        "1",
    )?;
    if iptables(id, &["-t", "nat", "-n", "-L", CHAIN]).is_err() {
        iptables(id, &["-t", "nat", "-N", CHAIN])?;
    }
    let jump = ["-m", "addrtype", "--dst-type", "LOCAL", "-j", CHAIN];
    ensure_rule(id, "nat", "PREROUTING", &jump)?;
    ensure_rule(id, "nat", "OUTPUT", &jump)?;
    let tag = comment(id);
    for p in ports {
        let proto = p.proto.as_str();
        let (host_port, ctr_port) = (p.host_port.to_string(), p.container_port.to_string());
        let to = format!("{ip}:{ctr_port}");
        let ctr_ip = ip.to_string();
        let host_ip = p.host_ip.map(|h| h.to_string());
        let mut dnat = vec!["-t", "nat", "-A", CHAIN];
        if let Some(h) = &host_ip {
            dnat.extend(["-d", h.as_str()]);
        }
        dnat.extend([
            "-p",
            proto,
            "--dport",
            &host_port,
            "-m",
            "comment",
            "--comment",
            &tag,
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ]);
        iptables(id, &dnat)?;
        // The DNATed flow of this mapping: masqueraded, and let through FORWARD both ways.
        let flow = |addr: &str, port: &str| -> Vec<String> {
            [
                addr,
                &ctr_ip,
                "-p",
                proto,
                port,
                &ctr_port,
                "-m",
                "conntrack",
                "--ctstate",
                "DNAT",
                "-m",
                "comment",
                "--comment",
                &tag,
            ]
            .map(str::to_owned)
            .to_vec()
        };
        let rules = [
            (
                ["nat", "-A", "POSTROUTING"],
                flow("-d", "--dport"),
                "MASQUERADE",
            ),
            (["filter", "-I", "FORWARD"], flow("-d", "--dport"), "ACCEPT"),
            (["filter", "-I", "FORWARD"], flow("-s", "--sport"), "ACCEPT"),
        ];
        for ([table, op, chain], matches, target) in &rules {
            let mut args = vec!["-t", table, op, chain];
            args.extend(matches.iter().map(String::as_str));
            args.extend(["-j", target]);
            iptables(id, &args)?;
        }
    }
    Ok(())
}

/// Removes every rule of container `id` (none is fine).
pub fn unpublish(id: &str) -> Result<(), PortError> {
    let tag = comment(id);
    for table in ["nat", "filter"] {
        let listing = Tool::new("iptables")
            .args(["-w", "5", "-t", table, "-S"])
            .run_text()
            .map_err(|source| PortError::Iptables {
                id: id.to_owned(),
                source,
            })?;
        for rule in rules_tagged(&listing, &tag) {
            let mut args = vec!["-t", table, "-D"];
            args.extend(rule.iter().map(String::as_str));
            iptables(id, &args)?;
        }
    }
    Ok(())
}

/// The rules of an `iptables -S` listing that carry `tag`, as arguments after `-D`.
fn rules_tagged(listing: &str, tag: &str) -> Vec<Vec<String>> {
    listing
        .lines()
        .filter_map(|l| l.strip_prefix("-A "))
        .filter(|l| l.split_whitespace().any(|w| w.trim_matches('"') == tag))
        .map(|l| {
            l.split_whitespace()
                .map(|w| w.trim_matches('"').to_owned())
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_docker_forms() {
        let p = parse_publish("8080:80").unwrap();
        assert_eq!(
            p,
            PortMapping {
                host_ip: None,
                host_port: 8080,
                container_port: 80,
                proto: Proto::Tcp
            }
        );
        let p = parse_publish("127.0.0.1:53:5353/udp").unwrap();
        assert_eq!(p.host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(p.proto, Proto::Udp);
        assert_eq!(p.to_string(), "127.0.0.1:53->5353/udp");
        assert_eq!(parse_publish("0.0.0.0:1:2").unwrap().host_ip, None);
        for bad in [
            "80",
            "a:80",
            "8080:0",
            "8080:80/sctp",
            "1.2.3:80:80",
            "70000:80",
            ":80",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn clashes() {
        let a = parse_publish("8080:80").unwrap();
        assert!(a.clashes_with(&parse_publish("127.0.0.1:8080:81").unwrap()));
        assert!(!a.clashes_with(&parse_publish("8080:80/udp").unwrap()));
        let l = parse_publish("127.0.0.1:8080:80").unwrap();
        assert!(!l.clashes_with(&parse_publish("10.0.0.1:8080:80").unwrap()));
    }

    #[test]
    fn finds_a_containers_rules_only() {
        let listing = "-P PREROUTING ACCEPT\n-N FERRY-PORTS\n\
             -A FERRY-PORTS -p tcp -m tcp --dport 8080 -m comment --comment ferry:abc -j DNAT --to-destination 10.0.0.2:80\n\
             -A FERRY-PORTS -p tcp -m tcp --dport 9090 -m comment --comment ferry:abcd -j DNAT --to-destination 10.0.0.3:80\n\
             -A POSTROUTING -d 10.0.0.2/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT -m comment --comment \"ferry:abc\" -j MASQUERADE\n";
        let rules = rules_tagged(listing, "ferry:abc");
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0][0], "FERRY-PORTS");
        assert!(rules[0].contains(&"8080".to_owned()));
        assert!(rules[1].contains(&"ferry:abc".to_owned()));
    }
}
