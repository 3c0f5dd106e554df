//! The lab's layout and its record on disk (`<dir>/lab.json`), which lets `down`, `status` and
//! `exec` find everything again, also after a crashed run.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The lab's one private /16; it exists only inside namespaces the lab creates.
pub const SUBNET: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 0);
pub const PREFIX_LEN: u8 = 16;
pub const CLIENT_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 200);
/// Port each ferryd listens on for peers, on its host's bridge address.
pub const PEER_PORT: u16 = 7470;
/// Name of the bridge inside every host netns.
pub const HOST_BRIDGE: &str = "ferry0";
/// Name of the fabric bridge inside the fabric netns.
pub const FABRIC_BRIDGE: &str = "fab0";
pub const DEFAULT_PREFIX: &str = "ferrylab";
pub const MAX_HOSTS: usize = 26;
const STATE_FILE: &str = "lab.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabState {
    pub dir: PathBuf,
    /// Prefix of the lab's netns names and cgroup parents (`ferrylab`).
    pub prefix: String,
    pub hosts: usize,
    pub daemons: bool,
}

/// Everything about one lab host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostHandle {
    /// `host-a`, `host-b`, …
    pub name: String,
    /// 1 for host-a, 2 for host-b, …
    pub index: u8,
    /// Bridge address, `10.77.0.<index>`; ferryd's peer listener is on it.
    pub address: Ipv4Addr,
    pub socket: PathBuf,
    pub netns_path: PathBuf,
    /// `<dir>/<host>`: log, pidfile, root, runc root.
    pub dir: PathBuf,
    /// ferryd `--root`.
    pub root: PathBuf,
    pub runc_root: PathBuf,
    pub log: PathBuf,
    pub pidfile: PathBuf,
    pub cgroup_parent: String,
}

impl HostHandle {
    pub fn peer_address(&self) -> String {
        format!("{}:{PEER_PORT}", self.address)
    }

    /// Range this host's ferryd allocates container IPs from: `10.77.<index>.1-254`.
    pub fn ip_range(&self) -> String {
        format!("10.77.{i}.1-10.77.{i}.254", i = self.index)
    }

    pub fn bridge_mac(&self) -> [u8; 6] {
        [0x02, 0x77, 0, 0, 0, self.index]
    }

    /// The ferryd pid from its pidfile, if any.
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pidfile)
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

pub fn host_name(index: u8) -> String {
    format!("host-{}", char::from(b'a' + index - 1))
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

impl LabState {
    pub fn new(dir: &Path, prefix: &str, hosts: usize, daemons: bool) -> Result<Self> {
        if hosts == 0 || hosts > MAX_HOSTS {
            bail!("a lab has 1 to {MAX_HOSTS} hosts, not {hosts}");
        }
        if prefix.is_empty()
            || prefix.len() > 12
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            bail!("lab prefix {prefix:?} must be 1-12 characters of [A-Za-z0-9-]");
        }
        let dir =
            std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
        Ok(LabState {
            dir,
            prefix: prefix.to_owned(),
            hosts,
            daemons,
        })
    }

    pub fn file(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = Self::file(dir);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b)
                    .with_context(|| format!("parsing {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let path = Self::file(&self.dir);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    pub fn sock_dir(&self) -> PathBuf {
        self.dir.join("sock")
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }

    pub fn fabric_netns(&self) -> PathBuf {
        netns_path(&format!("{}-fab", self.prefix))
    }

    pub fn client_netns(&self) -> PathBuf {
        netns_path(&format!("{}-client", self.prefix))
    }

    pub fn host(&self, index: u8) -> HostHandle {
        let name = host_name(index);
        let dir = self.dir.join(&name);
        HostHandle {
            index,
            address: Ipv4Addr::new(10, 77, 0, index),
            socket: self.sock_dir().join(format!("{name}.sock")),
            netns_path: netns_path(&format!("{}-{name}", self.prefix)),
            root: dir.join("root"),
            runc_root: dir.join("runc"),
            log: dir.join("ferryd.log"),
            pidfile: dir.join("ferryd.pid"),
            cgroup_parent: format!("{}-{name}", self.prefix),
            dir,
            name,
        }
    }

    pub fn all_hosts(&self) -> Vec<HostHandle> {
        (1..=self.hosts as u8).map(|i| self.host(i)).collect()
    }

    /// Every netns the lab may have created, hosts before the fabric.
    pub fn all_netns(&self) -> Vec<PathBuf> {
        let mut v: Vec<_> = self.all_hosts().into_iter().map(|h| h.netns_path).collect();
        v.push(self.client_netns());
        v.push(self.fabric_netns());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_ferryd_contract() {
        let s = LabState::new(Path::new("/run/ferry-lab"), "ferrylab", 2, true).unwrap();
        let b = s.host(2);
        assert_eq!(b.name, "host-b");
        assert_eq!(b.address, Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(b.socket, Path::new("/run/ferry-lab/sock/host-b.sock"));
        assert_eq!(b.root, Path::new("/run/ferry-lab/host-b/root"));
        assert_eq!(b.runc_root, Path::new("/run/ferry-lab/host-b/runc"));
        assert_eq!(b.netns_path, Path::new("/run/netns/ferrylab-host-b"));
        assert_eq!(b.cgroup_parent, "ferrylab-host-b");
        assert_eq!(b.ip_range(), "10.77.2.1-10.77.2.254");
        assert_eq!(b.peer_address(), "10.77.0.2:7470");
        assert!(LabState::new(Path::new("/x"), "ferrylab", 27, true).is_err());
        assert!(LabState::new(Path::new("/x"), "bad/prefix", 1, true).is_err());
    }
}
