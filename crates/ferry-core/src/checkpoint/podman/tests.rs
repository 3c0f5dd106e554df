//! The mapping against documents Podman 4.3.1 wrote (`podman container checkpoint --export`
//! of a busybox counter, on this project's CI machine).

use super::*;

const CONFIG: &str = include_str!("testdata-config.dump.json");
const STATUS: &str = include_str!("testdata-network.status.json");
const SPEC: &str = include_str!("testdata-spec.dump.json");

fn podman_spec() -> Value {
    serde_json::from_str(SPEC).expect("Podman's spec.dump parses")
}

fn podman_config() -> LibpodConfig {
    serde_json::from_str(CONFIG).expect("Podman's config.dump parses")
}

#[test]
fn reads_podmans_config_and_network_status() {
    let libpod = podman_config();
    assert_eq!(libpod.name, "cnt");
    assert_eq!(libpod.id.len(), 64);
    assert_eq!(
        libpod.rootfs_image_id,
        "9e0def93995cd6524d8a1de66b50849b30714a87de4ab70a8e6df5561e7c4cb1"
    );
    let status: NetworkStatus = serde_json::from_str(STATUS).unwrap();
    let addr = address_from_status(&status).unwrap();
    assert_eq!(addr.ip, Ipv4Addr::new(10, 88, 0, 2));
    assert_eq!(addr.prefix, 16);
    assert_eq!(crate::network::format_mac(&addr.mac), "02:8a:1c:8f:c8:71");

    let imported = from_podman(
        &libpod,
        &podman_spec(),
        &addr,
        "sha256:abc",
        "busybox:latest",
    )
    .unwrap();
    let cfg = &imported.config;
    assert_eq!(cfg.id, libpod.id);
    assert_eq!(cfg.name, "cnt");
    assert_eq!(cfg.args[0], "sh");
    assert!(cfg.env.iter().any(|e| e.starts_with("PATH=")));
    assert_eq!(cfg.cwd, "/");
    assert_eq!(cfg.user, "");
    assert_eq!(cfg.ip, addr.ip);
    assert!(cfg.podman_shm);
    assert_eq!(cfg.hostname, "94e9e96a3700");
    let kinds: Vec<(&str, PodmanMount)> = imported
        .mounts
        .iter()
        .map(|(d, k)| (d.as_str(), *k))
        .collect();
    assert_eq!(
        kinds,
        [
            ("/etc/hostname", PodmanMount::EtcFile),
            ("/etc/resolv.conf", PodmanMount::EtcFile),
            ("/etc/hosts", PodmanMount::EtcFile),
            ("/dev/shm", PodmanMount::Shm),
            ("/run/.containerenv", PodmanMount::EtcFile),
        ]
    );
}

#[test]
fn a_host_path_bind_mount_is_refused_by_name() {
    let libpod = podman_config();
    let mut spec = podman_spec();
    spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "destination": "/srv", "type": "bind", "source": "/home/me/site", "options": ["rbind"]
        }));
    let status: NetworkStatus = serde_json::from_str(STATUS).unwrap();
    let addr = address_from_status(&status).unwrap();
    let err = from_podman(&libpod, &spec, &addr, "sha256:abc", "busybox").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("/home/me/site") && msg.contains("/srv"),
        "{msg}"
    );
}

#[test]
fn hostile_ids_in_podmans_config_are_refused() {
    let mut libpod = podman_config();
    libpod.id = "x/../../etc".into();
    let status: NetworkStatus = serde_json::from_str(STATUS).unwrap();
    let addr = address_from_status(&status).unwrap();
    assert!(from_podman(&libpod, &podman_spec(), &addr, "sha256:abc", "busybox").is_err());
}

#[test]
fn no_network_or_two_networks_are_refused() {
    assert!(address_from_status(&NetworkStatus::new()).is_err());
    let one: NetworkStatus = serde_json::from_str(STATUS).unwrap();
    let mut two = one.clone();
    two.insert("other".into(), one["podman"].clone());
    let msg = address_from_status(&two).unwrap_err().to_string();
    assert!(msg.contains("2 networks"), "{msg}");
}

#[test]
fn written_network_status_reads_back_in_podmans_schema() {
    let addr = Address {
        ip: Ipv4Addr::new(10, 88, 0, 7),
        prefix: 16,
        mac: [2, 0xfe, 10, 88, 0, 7],
    };
    let status = network_status(&addr, Ipv4Addr::new(10, 88, 0, 1));
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(
        json["podman"]["interfaces"]["eth0"]["subnets"][0]["ipnet"],
        "10.88.0.7/16"
    );
    assert_eq!(
        json["podman"]["interfaces"]["eth0"]["subnets"][0]["gateway"],
        "10.88.0.1"
    );
    assert_eq!(
        json["podman"]["interfaces"]["eth0"]["mac_address"],
        "02:fe:0a:58:00:07"
    );
    assert_eq!(address_from_status(&status).unwrap(), addr);
}

#[test]
fn the_portable_spec_drops_this_hosts_paths() {
    let libpod = podman_config();
    let status: NetworkStatus = serde_json::from_str(STATUS).unwrap();
    let addr = address_from_status(&status).unwrap();
    let mut cfg = from_podman(&libpod, &podman_spec(), &addr, "sha256:abc", "busybox")
        .unwrap()
        .config;
    cfg.volumes.push(VolumeMount {
        name: "data".into(),
        destination: "/data".into(),
        readonly: false,
    });
    let mut spec = podman_spec();
    spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "destination": "/data", "type": "bind", "source": "/var/lib/ferry/volumes/data/_data"
        }));
    spec["annotations"]["org.criu.config"] = "/var/lib/ferry/containers/x/criu.conf".into();
    let out = portable_spec(spec, &cfg);
    let dests: Vec<&str> = out["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    for gone in [
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/hostname",
        "/run/.containerenv",
    ] {
        assert!(!dests.contains(&gone), "{gone} left in {dests:?}");
    }
    let data = out["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/data")
        .unwrap();
    assert_eq!(data["source"], podman_volume_path("data"));
    assert_eq!(out["root"]["path"], "");
    assert!(out["annotations"].get("org.criu.config").is_none());
    assert!(out["linux"].get("cgroupsPath").is_none());
    assert!(out["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n.get("path").is_none()));

    let libpod_out = libpod_config(
        &cfg,
        out,
        &ImageNames {
            config_digest_hex: "ab".repeat(32),
            reference: "busybox:latest".into(),
        },
    );
    let json = serde_json::to_value(&libpod_out).unwrap();
    assert_eq!(json["rootfsImageID"], "ab".repeat(32));
    assert_eq!(json["newNetworks"]["podman"]["interface_name"], "eth0");
    assert_eq!(json["namedVolumes"][0]["volumeName"], "data");
    assert_eq!(json["namedVolumes"][0]["dest"], "/data");
}
