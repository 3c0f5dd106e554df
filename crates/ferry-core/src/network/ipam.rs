//! IP address management for one host: which container owns which address.
//!
//! State is a JSON file under `HostPaths::network_state()`. Every change happens under an
//! exclusive `flock` on a sibling lock file and is written by atomic rename, so two processes
//! (ferryd and a CLI tool, or a crash mid-write) never lose or duplicate an allocation.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::error::NetError;
use crate::fsutil::{self, MODE_SHARED};
use crate::paths::HostPaths;

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// address -> owner (a container id).
    allocations: BTreeMap<Ipv4Addr, String>,
}

#[derive(Debug)]
pub struct Ipam {
    state_path: PathBuf,
    lock_path: PathBuf,
    network: u32,
    prefix: u8,
    range: (u32, u32),
    reserved: Vec<Ipv4Addr>,
    state: State,
}

/// Whether `ip` is in the subnet `net/prefix`.
pub fn same_subnet(ip: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    u32::from(ip) & mask(prefix) == u32::from(net) & mask(prefix)
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

impl Ipam {
    /// Opens (or starts) the IPAM state of the host at `paths`. Addresses are handed out from
    /// `range` (inclusive), by default the whole subnet; the network and broadcast addresses
    /// and `reserved` (bridge, gateway) are never handed out.
    pub fn open(
        paths: &HostPaths,
        subnet: Ipv4Addr,
        prefix: u8,
        range: Option<(Ipv4Addr, Ipv4Addr)>,
        reserved: &[Ipv4Addr],
    ) -> Result<Self, NetError> {
        if prefix > 30 {
            return Err(NetError::InvalidPrefix { prefix });
        }
        let network = u32::from(subnet) & mask(prefix);
        let broadcast = network | !mask(prefix);
        let subnet_str = format!("{}/{prefix}", Ipv4Addr::from(network));
        let range = match range {
            None => (network + 1, broadcast - 1),
            Some((start, end)) => {
                let (s, e) = (u32::from(start), u32::from(end));
                let inside = |x: u32| x & mask(prefix) == network;
                if s > e || !inside(s) || !inside(e) {
                    return Err(NetError::InvalidRange {
                        start,
                        end,
                        subnet: subnet_str,
                    });
                }
                (s.max(network + 1), e.min(broadcast - 1))
            }
        };
        let dir = paths.network_state();
        std::fs::create_dir_all(&dir).map_err(NetError::io("create directory", &dir))?;
        let mut ipam = Ipam {
            state_path: dir.join("ipam.json"),
            lock_path: dir.join("ipam.lock"),
            network,
            prefix,
            range,
            reserved: reserved.to_vec(),
            state: State::default(),
        };
        let _lock = ipam.lock()?;
        ipam.state = ipam.load()?;
        Ok(ipam)
    }

    fn subnet_str(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }

    fn lock(&self) -> Result<Flock<File>, NetError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(NetError::io("open lock file", &self.lock_path))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| NetError::io("lock", &self.lock_path)(std::io::Error::from(e)))
    }

    fn load(&self) -> Result<State, NetError> {
        match std::fs::read(&self.state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| NetError::IpamState {
                path: self.state_path.clone(),
                source,
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(NetError::io("read", &self.state_path)(e)),
        }
    }

    fn save(&self) -> Result<(), NetError> {
        fsutil::write_json(&self.state_path, &self.state, MODE_SHARED)
            .map_err(NetError::io("save", &self.state_path))
    }

    /// Reloads, applies `change`, saves, all under the lock.
    fn transact<T>(
        &mut self,
        change: impl FnOnce(&mut Self) -> Result<T, NetError>,
    ) -> Result<T, NetError> {
        let _lock = self.lock()?;
        self.state = self.load()?;
        let out = change(self)?;
        self.save()?;
        Ok(out)
    }

    fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        let x = u32::from(ip);
        x == self.network || x == self.network | !mask(self.prefix) || self.reserved.contains(&ip)
    }

    /// An address for `owner`: the one it already holds, or the lowest free one in the range.
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr, NetError> {
        self.transact(|me| {
            if let Some((ip, _)) = me.state.allocations.iter().find(|(_, o)| *o == owner) {
                return Ok(*ip);
            }
            let (start, end) = me.range;
            let free = (start..=end)
                .map(Ipv4Addr::from)
                .find(|ip| !me.is_reserved(*ip) && !me.state.allocations.contains_key(ip));
            let ip = free.ok_or_else(|| NetError::Exhausted {
                range: format!("{}-{}", Ipv4Addr::from(start), Ipv4Addr::from(end)),
            })?;
            me.state.allocations.insert(ip, owner.to_owned());
            Ok(ip)
        })
    }

    /// Records that `owner` holds `ip` (a migrated container keeps its address, which may lie
    /// outside this host's range but must be inside the subnet). Reserving an address the
    /// owner already holds is a no-op.
    pub fn reserve(&mut self, owner: &str, ip: Ipv4Addr) -> Result<(), NetError> {
        self.transact(|me| {
            if u32::from(ip) & mask(me.prefix) != me.network {
                return Err(NetError::OutsideSubnet {
                    ip,
                    subnet: me.subnet_str(),
                });
            }
            if me.is_reserved(ip) {
                return Err(NetError::Reserved { ip });
            }
            match me.state.allocations.get(&ip) {
                Some(o) if o == owner => Ok(()),
                Some(o) => Err(NetError::InUse {
                    ip,
                    owner: o.clone(),
                }),
                None => {
                    me.state.allocations.insert(ip, owner.to_owned());
                    Ok(())
                }
            }
        })
    }

    /// Frees every address `owner` holds. Unknown owner is fine.
    pub fn release(&mut self, owner: &str) -> Result<(), NetError> {
        self.transact(|me| {
            me.state.allocations.retain(|_, o| o != owner);
            Ok(())
        })
    }

    /// Owner of `ip` as of this handle's last operation.
    pub fn owner_of(&self, ip: Ipv4Addr) -> Option<&str> {
        self.state.allocations.get(&ip).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn open(dir: &std::path::Path, range: Option<(Ipv4Addr, Ipv4Addr)>) -> Ipam {
        Ipam::open(
            &HostPaths::new(dir),
            ip("10.77.0.0"),
            16,
            range,
            &[ip("10.77.1.1")],
        )
        .unwrap()
    }

    #[test]
    fn allocates_from_range_skipping_reserved_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = open(dir.path(), Some((ip("10.77.1.1"), ip("10.77.1.3"))));
        assert_eq!(ipam.allocate("c1").unwrap(), ip("10.77.1.2"));
        assert_eq!(
            ipam.allocate("c1").unwrap(),
            ip("10.77.1.2"),
            "same owner, same IP"
        );
        assert_eq!(ipam.allocate("c2").unwrap(), ip("10.77.1.3"));
        let err = ipam.allocate("c3").unwrap_err();
        assert!(matches!(err, NetError::Exhausted { .. }), "{err}");

        let reopened = open(dir.path(), Some((ip("10.77.1.1"), ip("10.77.1.3"))));
        assert_eq!(reopened.owner_of(ip("10.77.1.2")), Some("c1"));
        assert_eq!(reopened.owner_of(ip("10.77.1.3")), Some("c2"));

        ipam.release("c1").unwrap();
        assert_eq!(ipam.owner_of(ip("10.77.1.2")), None);
        assert_eq!(ipam.allocate("c4").unwrap(), ip("10.77.1.2"));
    }

    #[test]
    fn default_range_skips_network_address() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(
            &HostPaths::new(dir.path()),
            ip("192.168.5.77"),
            30,
            None,
            &[],
        )
        .unwrap();
        assert_eq!(ipam.allocate("a").unwrap(), ip("192.168.5.77"));
        assert_eq!(ipam.allocate("b").unwrap(), ip("192.168.5.78"));
        assert!(matches!(
            ipam.allocate("c"),
            Err(NetError::Exhausted { .. })
        ));
    }

    #[test]
    fn reserve_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = open(dir.path(), Some((ip("10.77.1.1"), ip("10.77.1.254"))));
        // Inside the subnet but outside this host's range: a migrated container.
        ipam.reserve("moved", ip("10.77.2.9")).unwrap();
        ipam.reserve("moved", ip("10.77.2.9")).unwrap();
        match ipam.reserve("other", ip("10.77.2.9")).unwrap_err() {
            NetError::InUse { ip: i, owner } => {
                assert_eq!(i, ip("10.77.2.9"));
                assert_eq!(owner, "moved");
            }
            e => panic!("wrong error {e}"),
        }
        match ipam.reserve("x", ip("10.78.0.1")).unwrap_err() {
            e @ NetError::OutsideSubnet { .. } => {
                assert_eq!(e.to_string(), "10.78.0.1 is outside subnet 10.77.0.0/16")
            }
            e => panic!("wrong error {e}"),
        }
        assert!(matches!(
            ipam.reserve("x", ip("10.77.1.1")),
            Err(NetError::Reserved { .. })
        ));
        assert!(matches!(
            ipam.reserve("x", ip("10.77.255.255")),
            Err(NetError::Reserved { .. })
        ));
    }

    #[test]
    fn bad_range_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let err = Ipam::open(
            &HostPaths::new(dir.path()),
            ip("10.77.0.0"),
            16,
            Some((ip("10.77.1.10"), ip("10.78.0.1"))),
            &[],
        )
        .unwrap_err();
        assert!(matches!(err, NetError::InvalidRange { .. }), "{err}");
    }

    #[test]
    fn two_handles_see_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = open(dir.path(), None);
        let mut b = open(dir.path(), None);
        let ia = a.allocate("a").unwrap();
        let ib = b.allocate("b").unwrap();
        assert_ne!(ia, ib);
    }
}
