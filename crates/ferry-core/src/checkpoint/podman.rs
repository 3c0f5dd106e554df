//! Podman's side of the checkpoint layout: the libpod `config.dump` and the netavark/CNI
//! `network.status` that `podman container checkpoint --export` writes and `podman container
//! restore --import` reads, mapped to and from ferry's own container config.
//!
//! Only the fields either side needs are modelled; Podman ignores the keys it does not know,
//! and so does this reader. The mapping was checked against Podman 4.3.1 (Debian 12).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::container::{ContainerConfig, VolumeMount};

/// Podman's default network, which `restore --import` attaches the container to.
pub const DEFAULT_NETWORK: &str = "podman";
/// The interface name Podman and ferry both give the container.
const INTERFACE: &str = crate::network::CONTAINER_IFNAME;
/// Podman's default /dev/shm size (64 MB), written so Podman does not size it 0.
const DEFAULT_SHM_SIZE: u64 = 65_536_000;

/// Where a ferry container's named volume appears to a Podman at its default storage root:
/// the source Podman's own spec would carry for it.
pub fn podman_volume_path(name: &str) -> String {
    format!("/var/lib/containers/storage/volumes/{name}/_data")
}

#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    #[error("the archive's {file} is not what Podman writes: {problem}")]
    Malformed { file: &'static str, problem: String },
    #[error("the Podman checkpoint cannot be restored by ferry: {why}")]
    Unsupported { why: String },
}

fn malformed(file: &'static str, problem: impl Into<String>) -> PodmanError {
    PodmanError::Malformed {
        file,
        problem: problem.into(),
    }
}

/// The libpod `ContainerConfig` fields ferry reads and writes (Podman's JSON names).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LibpodConfig {
    pub spec: Value,
    pub id: String,
    pub name: String,
    #[serde(rename = "rootfsImageID", default)]
    pub rootfs_image_id: String,
    #[serde(rename = "rootfsImageName", default)]
    pub rootfs_image_name: String,
    #[serde(rename = "RawImageName", default)]
    pub raw_image_name: String,
    #[serde(
        rename = "namedVolumes",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub named_volumes: Vec<NamedVolume>,
    /// Podman 4's networks by name (the interface name per network).
    #[serde(
        rename = "newNetworks",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub networks: BTreeMap<String, PerNetwork>,
    #[serde(rename = "networkMode", default)]
    pub network_mode: String,
    #[serde(rename = "createNetNS", default)]
    pub create_netns: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(rename = "createdTime", default)]
    pub created: String,
    #[serde(rename = "createWorkingDir", default)]
    pub create_working_dir: bool,
    #[serde(rename = "stopSignal", default)]
    pub stop_signal: u32,
    #[serde(rename = "stopTimeout", default)]
    pub stop_timeout: u32,
    #[serde(rename = "shmSize", default)]
    pub shm_size: u64,
    #[serde(rename = "logDriver", default)]
    pub log_driver: String,
    #[serde(default)]
    pub umask: String,
    /// The OCI runtime; Podman restores only with the one that checkpointed (ferry: runc).
    #[serde(rename = "runtime", default)]
    pub oci_runtime: String,
    /// A container of a pod, or one sharing another's namespaces: not exported by Podman.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
}

/// libpod's `ContainerNamedVolume`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NamedVolume {
    #[serde(rename = "volumeName")]
    pub name: String,
    pub dest: String,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PerNetwork {
    #[serde(default)]
    pub interface_name: String,
}

/// `network.status`: per network, per interface, its subnets and MAC.
pub type NetworkStatus = BTreeMap<String, NetworkBlock>;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkBlock {
    #[serde(default)]
    pub interfaces: BTreeMap<String, Interface>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Interface {
    #[serde(default)]
    pub subnets: Vec<Subnet>,
    #[serde(default)]
    pub mac_address: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Subnet {
    pub ipnet: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// The address a container had, as both formats record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub mac: [u8; 6],
}

/// `network.status` as Podman writes it, for one interface on Podman's default network.
pub fn network_status(addr: &Address, gateway: Ipv4Addr) -> NetworkStatus {
    let iface = Interface {
        subnets: vec![Subnet {
            ipnet: format!("{}/{}", addr.ip, addr.prefix),
            gateway: Some(gateway.to_string()),
        }],
        mac_address: crate::network::format_mac(&addr.mac),
    };
    BTreeMap::from([(
        DEFAULT_NETWORK.to_owned(),
        NetworkBlock {
            interfaces: BTreeMap::from([(INTERFACE.to_owned(), iface)]),
        },
    )])
}

/// The container's IPv4 address, prefix and MAC from a `network.status`: the first IPv4
/// subnet of the first interface, as Podman's own restore takes it.
pub fn address_from_status(status: &NetworkStatus) -> Result<Address, PodmanError> {
    const FILE: &str = "network.status";
    let Some((net, block)) = status.iter().next() else {
        return Err(PodmanError::Unsupported {
            why: "the container had no network (network.status is empty); ferry containers always have one".into(),
        });
    };
    if status.len() > 1 {
        return Err(PodmanError::Unsupported {
            why: format!(
                "the container was on {} networks ({}); ferry gives a container one",
                status.len(),
                status.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        });
    }
    let Some(iface) = block.interfaces.values().next() else {
        return Err(malformed(FILE, format!("network {net} has no interface")));
    };
    let subnet = iface
        .subnets
        .iter()
        .find(|s| s.ipnet.parse::<Ipv4Net>().is_ok())
        .ok_or_else(|| malformed(FILE, format!("network {net} has no IPv4 address")))?;
    let Ipv4Net(ip, prefix) = subnet.ipnet.parse().expect("checked above");
    let mac = crate::network::parse_mac(&iface.mac_address).ok_or_else(|| {
        malformed(
            FILE,
            format!(
                "MAC address {:?} is not xx:xx:xx:xx:xx:xx",
                iface.mac_address
            ),
        )
    })?;
    Ok(Address { ip, prefix, mac })
}

struct Ipv4Net(Ipv4Addr, u8);

impl std::str::FromStr for Ipv4Net {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (ip, prefix) = s.split_once('/').ok_or(())?;
        let prefix: u8 = prefix.parse().map_err(|_| ())?;
        if prefix > 32 {
            return Err(());
        }
        Ok(Ipv4Net(ip.parse().map_err(|_| ())?, prefix))
    }
}

/// The image a checkpoint needs, as Podman names it: the config digest (Podman's image id)
/// and the reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageNames {
    pub config_digest_hex: String,
    pub reference: String,
}

/// Podman's `config.dump` for a ferry container. `spec` is the portable spec (see
/// [`portable_spec`]), which Podman's restore takes as the container's spec.
pub fn libpod_config(cfg: &ContainerConfig, spec: Value, image: &ImageNames) -> LibpodConfig {
    LibpodConfig {
        spec,
        id: cfg.id.clone(),
        name: cfg.name.clone(),
        rootfs_image_id: image.config_digest_hex.clone(),
        rootfs_image_name: image.reference.clone(),
        raw_image_name: image.reference.clone(),
        named_volumes: cfg
            .volumes
            .iter()
            .map(|v| NamedVolume {
                name: v.name.clone(),
                dest: v.destination.clone(),
                options: if v.readonly {
                    vec!["ro".into()]
                } else {
                    vec![]
                },
            })
            .collect(),
        networks: BTreeMap::from([(
            DEFAULT_NETWORK.to_owned(),
            PerNetwork {
                interface_name: INTERFACE.into(),
            },
        )]),
        network_mode: "bridge".into(),
        create_netns: true,
        command: cfg.args.clone(),
        created: cfg.created.clone(),
        create_working_dir: true,
        stop_signal: 15,
        stop_timeout: 10,
        shm_size: DEFAULT_SHM_SIZE,
        log_driver: "k8s-file".into(),
        umask: "0022".into(),
        oci_runtime: "runc".into(),
        pod: String::new(),
    }
}

/// One of the files both Podman and ferry bind-mount into every container
/// ([`crate::network::dns::ETC_FILES`]).
fn is_etc_file(dest: &str) -> bool {
    crate::network::dns::ETC_FILES
        .iter()
        .any(|(_, d)| *d == dest)
}

/// The spec Podman should see: ferry's, without what only makes sense on the ferry host that
/// wrote it. Podman sets the root and the network namespace itself, and adds its own bind
/// mounts for the destinations the spec lacks (/etc/hosts, /etc/resolv.conf, /etc/hostname,
/// /run/.containerenv), so ferry's host paths for those go. Named volumes get the source a
/// Podman at its default storage root gives them.
pub fn portable_spec(mut spec: Value, cfg: &ContainerConfig) -> Value {
    if let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) {
        mounts.retain(|m| {
            let dest = m.get("destination").and_then(Value::as_str).unwrap_or("");
            !is_etc_file(dest)
        });
        for m in mounts.iter_mut() {
            let dest = m.get("destination").and_then(Value::as_str).unwrap_or("");
            if let Some(v) = cfg.volumes.iter().find(|v| v.destination == dest) {
                m["source"] = Value::String(podman_volume_path(&v.name));
            }
        }
    }
    if let Some(annotations) = spec.get_mut("annotations").and_then(Value::as_object_mut) {
        annotations.remove(crate::runtime::spec::CRIU_CONFIG_ANNOTATION);
    }
    // runc picks its own cgroup under Podman's manager; ferry's path means nothing there.
    if let Some(linux) = spec.get_mut("linux").and_then(Value::as_object_mut) {
        linux.remove("cgroupsPath");
    }
    if let Some(root) = spec.get_mut("root") {
        root["path"] = Value::String(String::new());
    }
    if let Some(nss) = spec
        .pointer_mut("/linux/namespaces")
        .and_then(Value::as_array_mut)
    {
        for ns in nss.iter_mut() {
            if let Some(obj) = ns.as_object_mut() {
                obj.remove("path");
            }
        }
    }
    spec
}

/// Bind mounts a Podman container's CRIU images hold, by destination, and what ferry mounts
/// there on restore. Any other bind mount (a host directory given with `-v /path:…`) has no
/// source on this host, and the import is refused naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodmanMount {
    /// /etc/hosts, /etc/resolv.conf, /etc/hostname, /run/.containerenv: the files ferry
    /// writes for every container (`network::dns`).
    EtcFile,
    /// /dev/shm: a directory of the container's, filled from `devshm-checkpoint.tar`.
    Shm,
    /// A named volume listed in config.dump.
    Volume,
}

/// Classifies the spec's bind mounts.
pub fn bind_mounts(
    spec: &Value,
    volumes: &[NamedVolume],
) -> Result<Vec<(String, PodmanMount)>, PodmanError> {
    let mut out = Vec::new();
    let mounts = spec
        .get("mounts")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("spec.dump", "it has no mounts"))?;
    for m in mounts {
        if m.get("type").and_then(Value::as_str) != Some("bind") {
            continue;
        }
        let dest = m
            .get("destination")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("spec.dump", "a mount has no destination"))?;
        let kind = match dest {
            d if is_etc_file(d) => PodmanMount::EtcFile,
            "/dev/shm" => PodmanMount::Shm,
            d if volumes.iter().any(|v| v.dest == d) => PodmanMount::Volume,
            d => {
                let source = m.get("source").and_then(Value::as_str).unwrap_or("?");
                return Err(PodmanError::Unsupported {
                    why: format!(
                        "it bind-mounts host path {source} at {d}, which ferry cannot recreate \
                         (ferry containers carry named volumes, not host paths)"
                    ),
                });
            }
        };
        out.push((dest.to_owned(), kind));
    }
    Ok(out)
}

/// What ferry needs of a Podman checkpoint to recreate the container.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub config: ContainerConfig,
    /// Bind mounts to recreate, by destination.
    pub mounts: Vec<(String, PodmanMount)>,
}

/// ferry's config for a Podman container, from its `config.dump` and `spec.dump` (the spec
/// Podman restores with). `image` is ferry's image id (manifest digest) of the image whose
/// config digest is `libpod.rootfs_image_id`.
pub fn from_podman(
    libpod: &LibpodConfig,
    spec: &Value,
    addr: &Address,
    image: &str,
    image_ref: &str,
) -> Result<Imported, PodmanError> {
    const FILE: &str = "config.dump";
    if !libpod.pod.is_empty() {
        return Err(PodmanError::Unsupported {
            why: format!(
                "the container belongs to pod {}; ferry has no pods",
                libpod.pod
            ),
        });
    }
    let process = spec
        .get("process")
        .ok_or_else(|| malformed("spec.dump", "it has no process"))?;
    let strings = |key: &str| -> Vec<String> {
        process
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let args = strings("args");
    if args.is_empty() {
        return Err(malformed("spec.dump", "its process has no args"));
    }
    let uid = process.pointer("/user/uid").and_then(Value::as_u64);
    let gid = process.pointer("/user/gid").and_then(Value::as_u64);
    let user = match (uid, gid) {
        (Some(0) | None, Some(0) | None) => String::new(),
        (u, g) => format!("{}:{}", u.unwrap_or(0), g.unwrap_or(0)),
    };
    let memory = spec
        .pointer("/linux/resources/memory/limit")
        .and_then(Value::as_i64)
        .filter(|m| *m > 0);
    let mounts = bind_mounts(spec, &libpod.named_volumes)?;
    let config = ContainerConfig {
        id: libpod.id.clone(),
        name: libpod.name.clone(),
        image: image.to_owned(),
        image_ref: image_ref.to_owned(),
        args,
        env: strings("env"),
        cwd: process
            .get("cwd")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_owned(),
        user,
        ip: addr.ip,
        prefix: addr.prefix,
        mac: crate::network::format_mac(&addr.mac),
        volumes: libpod
            .named_volumes
            .iter()
            .map(|v| VolumeMount {
                name: v.name.clone(),
                destination: v.dest.clone(),
                readonly: v.options.iter().any(|o| o == "ro"),
            })
            .collect(),
        memory,
        created: libpod.created.clone(),
        podman_shm: mounts.iter().any(|(_, k)| *k == PodmanMount::Shm),
        // Podman's is the short id; the UTS namespace CRIU restores says the same.
        hostname: spec
            .get("hostname")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        dns: Vec::new(),
        add_hosts: Vec::new(),
        labels: Default::default(),
        read_only: spec
            .pointer("/root/readonly")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        cpus: None,
        cap_add: Vec::new(),
        cap_drop: Vec::new(),
        auto_remove: false,
        restart: Default::default(),
        ports: Vec::new(),
    };
    config
        .validate()
        .map_err(|e| malformed(FILE, e.to_string()))?;
    Ok(Imported { config, mounts })
}

#[cfg(test)]
mod tests;
