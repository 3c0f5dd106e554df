//! Checkpoint archive import, both layers: the tar stream with ferry's manifest or Podman's
//! members, then the documents inside (ferry's config, libpod's config.dump, the spec and the
//! network status) through the same parsers `ferry restore --import` uses.
#![no_main]

use ferry_core::checkpoint::archive::{import, Limits, Origin};
use ferry_core::checkpoint::podman;
use ferry_core::container::ContainerConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("in.tar");
    std::fs::write(&file, data).expect("write input");
    let dest = dir.path().join("out");
    let limits = Limits {
        max_total_bytes: 1 << 20,
        max_member_bytes: 1 << 20,
        max_members: 64,
    };
    let Ok(origin) = import(&file, &dest, &limits) else {
        assert!(!dest.exists(), "a refused import left its destination");
        return;
    };
    let read = |name: &str| std::fs::read(dest.join(name)).unwrap_or_default();
    match origin {
        Origin::Ferry(_) => {
            if let Ok(cfg) = serde_json::from_slice::<ContainerConfig>(&read("ferry-config.json")) {
                cfg.validate().expect("a parsed config is valid");
            }
        }
        Origin::Podman => {
            let libpod = serde_json::from_slice::<podman::LibpodConfig>(&read("config.dump"));
            let spec = serde_json::from_slice::<serde_json::Value>(&read("spec.dump"));
            let status = serde_json::from_slice::<podman::NetworkStatus>(&read("network.status"));
            if let (Ok(libpod), Ok(spec), Ok(status)) = (libpod, spec, status) {
                if let Ok(addr) = podman::address_from_status(&status) {
                    if let Ok(imported) =
                        podman::from_podman(&libpod, &spec, &addr, "sha256:x", "x")
                    {
                        imported
                            .config
                            .validate()
                            .expect("a mapped config is valid");
                    }
                }
            }
        }
    }
});
