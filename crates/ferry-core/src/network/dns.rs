//! The name-resolution files every container gets, written as Podman writes them: `hosts`,
//! `resolv.conf`, `hostname` and `.containerenv` in the container's state dir, bind-mounted
//! over `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname` and `/run/.containerenv`.
//!
//! They are plain files under the container dir, so runc declares their mounts external to
//! CRIU like any other bind mount, and a restore (or a migration's destination) only needs the
//! files to exist again at the same place; [`EtcFiles::ensure`] writes the ones missing.

use std::fs::Permissions;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::fsutil;

/// Where the host's resolver configuration is read from.
pub const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// systemd-resolved's list of real upstream servers, used when the host's file only names its
/// local stub (127.0.0.53), which a container cannot reach. Podman does the same.
pub const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";
/// Used when the host has no nameserver a container can reach (Podman's defaults).
pub const FALLBACK_NAMESERVERS: [&str; 2] = ["8.8.8.8", "8.8.4.4"];

/// (file in the container dir, mount point in the container), in Podman's mount order.
pub const ETC_FILES: [(&str, &str); 4] = [
    ("hostname", "/etc/hostname"),
    ("hosts", "/etc/hosts"),
    ("resolv.conf", "/etc/resolv.conf"),
    (".containerenv", "/run/.containerenv"),
];

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("invalid hostname {0:?}: use letters, digits and '-' in dot-separated labels of at most 63 characters (at most 253 in all)")]
    BadHostname(String),
    #[error("invalid --add-host {0:?}: expected NAME:IP, e.g. db:10.88.0.5 or gw:fd00::1")]
    BadAddHost(String),
    #[error("invalid --dns server {0:?}: expected an IPv4 or IPv6 address")]
    BadServer(String),
    #[error("could not write the container's {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Checks a hostname the user gave (RFC 1123: labels of letters, digits and '-', not starting
/// or ending with '-').
pub fn validate_hostname(name: &str) -> Result<(), DnsError> {
    let bad = || DnsError::BadHostname(name.to_owned());
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

/// Parses `--add-host NAME:IP`. The IP may be IPv6 (it then holds colons itself, so the name
/// ends at the first colon), optionally in brackets.
pub fn parse_add_host(spec: &str) -> Result<(String, IpAddr), DnsError> {
    let bad = || DnsError::BadAddHost(spec.to_owned());
    let (name, ip) = spec.split_once(':').ok_or_else(bad)?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    validate_hostname(name).map_err(|_| bad())?;
    Ok((name.to_owned(), ip))
}

pub fn parse_server(s: &str) -> Result<IpAddr, DnsError> {
    s.parse().map_err(|_| DnsError::BadServer(s.to_owned()))
}

/// Everything the four files say about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcFiles {
    pub hostname: String,
    /// The container's name, also resolvable from inside it (as Podman does).
    pub name: String,
    pub id: String,
    pub ip: Ipv4Addr,
    /// `--dns`: replaces the host's nameservers when not empty.
    pub dns: Vec<IpAddr>,
    /// `--add-host`, in the order given.
    pub add_hosts: Vec<(String, IpAddr)>,
    pub image: String,
    pub image_id: String,
}

impl EtcFiles {
    /// `/etc/hosts`: loopback names, the `--add-host` entries, then the container itself.
    pub fn hosts(&self) -> String {
        let mut out =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        for (name, ip) in &self.add_hosts {
            out.push_str(&format!("{ip}\t{name}\n"));
        }
        if self.hostname == self.name {
            out.push_str(&format!("{}\t{}\n", self.ip, self.hostname));
        } else {
            out.push_str(&format!("{}\t{} {}\n", self.ip, self.hostname, self.name));
        }
        out
    }

    pub fn hostname_file(&self) -> String {
        format!("{}\n", self.hostname)
    }

    /// `/etc/resolv.conf` from the host's: its `search`/`options`/`domain` lines are kept; its
    /// nameservers are kept unless they are loopback addresses (unreachable from the
    /// container's own network namespace), or all replaced by `--dns`.
    pub fn resolv_conf(&self, host: &str) -> String {
        let mut out = String::new();
        let mut servers: Vec<String> = Vec::new();
        for line in host.lines() {
            let trimmed = line.trim();
            let mut words = trimmed.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    let Some(addr) = words.next() else { continue };
                    // A zone suffix (fe80::1%eth0) names a host interface: no use inside.
                    let usable = addr
                        .parse::<IpAddr>()
                        .is_ok_and(|ip| !ip.is_loopback() && !ip.is_unspecified());
                    if usable && self.dns.is_empty() {
                        servers.push(addr.to_owned());
                    }
                }
                Some(w) if w.starts_with('#') || w.starts_with(';') => {}
                Some(_) => {
                    out.push_str(trimmed);
                    out.push('\n');
                }
                None => {}
            }
        }
        if !self.dns.is_empty() {
            servers = self.dns.iter().map(ToString::to_string).collect();
        }
        if servers.is_empty() {
            servers = FALLBACK_NAMESERVERS.map(str::to_owned).to_vec();
        }
        for s in servers {
            out.push_str(&format!("nameserver {s}\n"));
        }
        out
    }

    /// `/run/.containerenv`: what Podman writes for a privileged container, so tools that look
    /// for it learn they are in a container and which one.
    pub fn containerenv(&self) -> String {
        format!(
            "engine=\"ferry-{}\"\nname={:?}\nid={:?}\nimage={:?}\nimageid={:?}\nrootless=0\n",
            env!("CARGO_PKG_VERSION"),
            self.name,
            self.id,
            self.image,
            self.image_id
        )
    }

    fn render(&self, file: &str) -> String {
        match file {
            "hostname" => self.hostname_file(),
            "hosts" => self.hosts(),
            "resolv.conf" => self.resolv_conf(&host_resolv_conf()),
            _ => self.containerenv(),
        }
    }

    /// Writes all four files into `dir`, replacing what was there (a fresh start).
    pub fn write(&self, dir: &Path) -> Result<Vec<(PathBuf, &'static str)>, DnsError> {
        self.write_files(dir, true)
    }

    /// Writes the files missing from `dir` and keeps the others: a restored process sees the
    /// same files it had (with its own edits), and a migration's destination, whose dir is
    /// new, gets them made from the same config.
    pub fn ensure(&self, dir: &Path) -> Result<Vec<(PathBuf, &'static str)>, DnsError> {
        self.write_files(dir, false)
    }

    fn write_files(
        &self,
        dir: &Path,
        replace: bool,
    ) -> Result<Vec<(PathBuf, &'static str)>, DnsError> {
        let mut mounts = Vec::new();
        for (file, dest) in ETC_FILES {
            let path = dir.join(file);
            if replace || !path.exists() {
                let err = |source| DnsError::Write {
                    path: path.clone(),
                    source,
                };
                fsutil::write_atomic(&path, self.render(file).as_bytes(), fsutil::MODE_SHARED)
                    .map_err(err)?;
                // Readable by the container's user, whoever it is, whatever ferryd's umask
                // (077); the container dir (0700) keeps other host users out.
                std::fs::set_permissions(&path, Permissions::from_mode(fsutil::MODE_SHARED))
                    .map_err(err)?;
            }
            mounts.push((path, dest));
        }
        Ok(mounts)
    }
}

/// The host's resolver configuration; systemd-resolved's upstream list instead of its stub.
fn host_resolv_conf() -> String {
    let host = std::fs::read_to_string(HOST_RESOLV_CONF).unwrap_or_default();
    let only_stub = host
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .all(|a| a.trim() == "127.0.0.53");
    if only_stub && host.contains("127.0.0.53") {
        if let Ok(upstream) = std::fs::read_to_string(RESOLVED_UPSTREAM) {
            return upstream;
        }
    }
    host
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EtcFiles {
        EtcFiles {
            hostname: "0123456789ab".into(),
            name: "web".into(),
            id: "0123456789abcdef".into(),
            ip: "10.88.0.7".parse().unwrap(),
            dns: Vec::new(),
            add_hosts: vec![("db".into(), "10.88.0.9".parse().unwrap())],
            image: "busybox:latest".into(),
            image_id: "sha256:00".into(),
        }
    }

    #[test]
    fn hosts_has_loopback_extra_hosts_and_the_container() {
        let h = sample().hosts();
        let lines: Vec<&str> = h.lines().collect();
        assert_eq!(lines[0], "127.0.0.1\tlocalhost");
        assert!(lines[1].starts_with("::1\tlocalhost"));
        assert_eq!(lines[2], "10.88.0.9\tdb");
        assert_eq!(lines[3], "10.88.0.7\t0123456789ab web");
        let mut same = sample();
        same.hostname = "web".into();
        assert!(same.hosts().ends_with("10.88.0.7\tweb\n"));
    }

    #[test]
    fn resolv_conf_drops_loopback_servers_and_keeps_search() {
        let host = "# generated\nsearch corp.example\nnameserver 127.0.0.53\nnameserver ::1\n\
                    nameserver 10.0.0.2\noptions ndots:2\n";
        let r = sample().resolv_conf(host);
        assert_eq!(
            r,
            "search corp.example\noptions ndots:2\nnameserver 10.0.0.2\n"
        );
        // Only loopback servers: Podman's public fallbacks.
        let r = sample().resolv_conf("nameserver 127.0.0.1\n");
        assert_eq!(r, "nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
        // --dns replaces them all.
        let mut f = sample();
        f.dns = vec![
            "1.1.1.1".parse().unwrap(),
            "2606:4700::1111".parse().unwrap(),
        ];
        let r = f.resolv_conf("search a\nnameserver 10.0.0.2\n");
        assert_eq!(
            r,
            "search a\nnameserver 1.1.1.1\nnameserver 2606:4700::1111\n"
        );
    }

    #[test]
    fn user_input_is_checked() {
        for ok in ["web", "a-b.example.com", "x1"] {
            validate_hostname(ok).unwrap();
        }
        for bad in ["", "-a", "a-", "a..b", "a_b", "a b", &"x".repeat(64)] {
            assert!(validate_hostname(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_add_host("db:10.0.0.5").unwrap(),
            ("db".to_owned(), "10.0.0.5".parse().unwrap())
        );
        assert_eq!(
            parse_add_host("gw:fd00::1").unwrap().1,
            "fd00::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            parse_add_host("gw:[fd00::1]").unwrap().1,
            "fd00::1".parse::<IpAddr>().unwrap()
        );
        for bad in ["db", "db:", ":10.0.0.1", "db:notanip", "b_d:10.0.0.1"] {
            assert!(parse_add_host(bad).is_err(), "{bad:?}");
        }
        assert!(parse_server("8.8.8.8").is_ok());
        assert!(parse_server("dns.google").is_err());
    }

    #[test]
    fn ensure_keeps_files_write_replaces_them() {
        let dir = tempfile::tempdir().unwrap();
        let f = sample();
        let mounts = f.write(dir.path()).unwrap();
        let dests: Vec<&str> = mounts.iter().map(|m| m.1).collect();
        assert_eq!(
            dests,
            [
                "/etc/hostname",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/run/.containerenv"
            ]
        );
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "edited\n").unwrap();
        f.ensure(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&hosts).unwrap(), "edited\n");
        f.write(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&hosts).unwrap(), f.hosts());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("hostname")).unwrap(),
            "0123456789ab\n"
        );
        // Whatever the umask: a container user that is not root reads them too.
        let mode = std::fs::metadata(&hosts).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let env = std::fs::read_to_string(dir.path().join(".containerenv")).unwrap();
        assert!(env.contains("name=\"web\""), "{env}");
    }
}
