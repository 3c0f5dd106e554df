//! The OCI runtime spec (`config.json`) ferry gives runc for one container.
//!
//! Non-terminal (stdio are the shim's pipes, which CRIU can checkpoint), ferry's own network
//! namespace by path (so the destination of a migration can rebuild an identical one), a cgroupfs
//! path under the host's parent, and rlimits never above this process's hard limits (there is no
//! CAP_SYS_RESOURCE here, and CRIU restores them as they were).

mod user;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nix::sys::resource::{getrlimit, Resource};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

pub use user::resolve_user;

use crate::fsutil::{self, MODE_PRIVATE};

/// Annotation runc reads to pass a per-container CRIU config file to every dump and restore.
pub const CRIU_CONFIG_ANNOTATION: &str = "org.criu.config";
/// Annotation recording the ferry container id in the bundle.
pub const CONTAINER_ID_ANNOTATION: &str = "io.ferry.container.id";
/// Open-files limit a container gets, unless this host's hard limit is lower.
pub const WANTED_NOFILE: u64 = 1_048_576;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("invalid container spec: {field} {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    #[error("building the OCI spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
    #[error("could not write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("user {name:?} is not in {passwd}")]
    UnknownUser { name: String, passwd: PathBuf },
    #[error("group {name:?} is not in {group}")]
    UnknownGroup { name: String, group: PathBuf },
    #[error("{path} line {line}: {problem}")]
    BadEntry {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

/// A bind mount from the host (a volume, /etc/hosts, …).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub readonly: bool,
}

/// Everything ferry decides about one container's `config.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecInput {
    pub id: String,
    pub hostname: String,
    pub args: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// Absolute path inside the container.
    pub cwd: String,
    /// (uid, gid), see [`resolve_user`].
    pub user: (u32, u32),
    /// Absolute path of the root filesystem (the overlay mount).
    pub rootfs: PathBuf,
    /// Bind-mounted network namespace ferry created for this container.
    pub netns_path: PathBuf,
    /// cgroupfs path, e.g. `/ferry-a/<id>` (cgroup v1).
    pub cgroups_path: String,
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    pub mounts: Vec<BindMount>,
    /// CRIU config file for this container (annotation `org.criu.config`). An empty path makes
    /// runc pass no config file at all (it then also ignores /etc/criu/runc.conf).
    pub criu_config: PathBuf,
    /// `--read-only`: the root filesystem is mounted read-only (bind mounts keep their mode).
    pub readonly_rootfs: bool,
    /// `--cpus`: CPU time per [`CPU_PERIOD_US`], in microseconds (CFS quota).
    pub cpu_quota: Option<i64>,
    /// `--cap-add` / `--cap-drop` against [`DEFAULT_CAPABILITIES`] (names with or without
    /// `CAP_`, or `ALL`); drops apply first, as with Docker.
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
}

/// CFS period for `--cpus` (Docker's).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Every Linux capability name, for `--cap-add ALL`.
const ALL_CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Parses a capability name as Docker takes it: `NET_ADMIN`, `CAP_NET_ADMIN`, any case.
pub fn parse_capability(name: &str) -> Result<Capability, SpecError> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    serde_json::from_value(serde_json::Value::String(full)).map_err(|_| SpecError::Invalid {
        field: "capabilities",
        problem: format!("{name:?} is not a Linux capability (e.g. NET_ADMIN, SYS_TIME, ALL)"),
    })
}

/// The default set with `drop` removed, then `add` added.
pub fn capability_set(add: &[String], drop: &[String]) -> Result<Vec<Capability>, SpecError> {
    let is_all = |n: &String| n.eq_ignore_ascii_case("all");
    let mut set: Vec<Capability> = if drop.iter().any(is_all) {
        Vec::new()
    } else {
        DEFAULT_CAPABILITIES.to_vec()
    };
    for d in drop.iter().filter(|n| !is_all(n)) {
        let cap = parse_capability(d)?;
        set.retain(|c| *c != cap);
    }
    let add: Vec<String> = if add.iter().any(is_all) {
        ALL_CAPABILITIES.map(str::to_owned).to_vec()
    } else {
        add.to_vec()
    };
    for a in &add {
        let cap = parse_capability(a)?;
        if !set.contains(&cap) {
            set.push(cap);
        }
    }
    Ok(set)
}

/// Capabilities of the container's process. This is the set container engines grant by
/// default (Docker/containerd), not runc's three-capability example spec: images routinely
/// `chown` their data dirs and drop to a service user, which needs CHOWN/SETUID/SETGID.
const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

const MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Builds the container's runtime spec.
pub fn build_spec(input: &SpecInput) -> Result<Spec, SpecError> {
    validate(input)?;

    let caps: oci_spec::runtime::Capabilities = capability_set(&input.cap_add, &input.cap_drop)?
        .into_iter()
        .collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()?;

    let nofile = capped_nofile();
    let rlimits = vec![PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .soft(nofile)
        .hard(nofile)
        .build()?];

    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(input.user.0)
                .gid(input.user.1)
                // Docker's umask, whatever ferryd's own is (it runs with 077).
                .umask(0o022u32)
                .build()?,
        )
        .args(input.args.clone())
        .env(input.env.clone())
        .cwd(&input.cwd)
        .capabilities(capabilities)
        .rlimits(rlimits)
        .no_new_privileges(false)
        .build()?;

    let mut resources = LinuxResourcesBuilder::default().devices(vec![
        // Deny every device; runc adds the standard allow-list (null, zero, tty, …) itself.
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?,
    ]);
    if let Some(limit) = input.memory_limit {
        resources = resources.memory(LinuxMemoryBuilder::default().limit(limit).build()?);
    }
    if let Some(quota) = input.cpu_quota {
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD_US)
                .build()?,
        );
    }

    let linux = LinuxBuilder::default()
        .namespaces(namespaces(&input.netns_path)?)
        .cgroups_path(PathBuf::from(&input.cgroups_path))
        .resources(resources.build()?)
        .masked_paths(MASKED_PATHS.map(String::from).to_vec())
        .readonly_paths(READONLY_PATHS.map(String::from).to_vec())
        .build()?;

    // A bind mount takes the place of a standard mount at the same destination (a Podman
    // container's /dev/shm is a host directory, not a tmpfs of its own).
    let mut mounts = standard_mounts()?;
    mounts.retain(|s| {
        !input
            .mounts
            .iter()
            .any(|b| s.destination() == &b.destination)
    });
    for m in &input.mounts {
        mounts.push(bind_mount(m)?);
    }

    let annotations = HashMap::from([
        (
            CRIU_CONFIG_ANNOTATION.to_owned(),
            input.criu_config.to_string_lossy().into_owned(),
        ),
        (CONTAINER_ID_ANNOTATION.to_owned(), input.id.clone()),
    ]);

    Ok(SpecBuilder::default()
        .version("1.0.2-dev")
        .root(
            RootBuilder::default()
                .path(&input.rootfs)
                .readonly(input.readonly_rootfs)
                .build()?,
        )
        .hostname(&input.hostname)
        .mounts(mounts)
        .process(process)
        .linux(linux)
        .annotations(annotations)
        .build()?)
}

fn validate(input: &SpecInput) -> Result<(), SpecError> {
    let invalid = |field, problem: &str| {
        Err(SpecError::Invalid {
            field,
            problem: problem.to_owned(),
        })
    };
    if input.args.is_empty() {
        return invalid("args", "is empty: nothing to run");
    }
    if !input.cwd.starts_with('/') {
        return invalid("cwd", &format!("{:?} is not absolute", input.cwd));
    }
    if !input.rootfs.is_absolute() {
        return invalid(
            "rootfs",
            &format!("{} is not absolute", input.rootfs.display()),
        );
    }
    if !input.netns_path.is_absolute() {
        return invalid(
            "netns_path",
            &format!("{} is not absolute", input.netns_path.display()),
        );
    }
    if !input.cgroups_path.starts_with('/') {
        return invalid(
            "cgroups_path",
            &format!("{:?} must start with / (cgroupfs)", input.cgroups_path),
        );
    }
    if let Some(bad) = input.env.iter().find(|e| !e.contains('=')) {
        return invalid("env", &format!("entry {bad:?} has no '='"));
    }
    if let Some(limit) = input.memory_limit.filter(|l| *l <= 0) {
        return invalid("memory_limit", &format!("{limit} is not positive"));
    }
    if let Some(quota) = input.cpu_quota.filter(|q| *q < 1000) {
        return invalid("cpu_quota", &format!("{quota} µs is under 1 ms per period"));
    }
    for m in &input.mounts {
        if !m.source.is_absolute() || !m.destination.is_absolute() {
            return invalid(
                "mounts",
                &format!(
                    "{} -> {}: both paths must be absolute",
                    m.source.display(),
                    m.destination.display()
                ),
            );
        }
    }
    Ok(())
}

fn namespaces(netns_path: &Path) -> Result<Vec<LinuxNamespace>, SpecError> {
    let plain = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    let mut out = plain
        .into_iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
        .collect::<Result<Vec<_>, _>>()?;
    // ferry creates the netns; runc joins it and marks it external for CRIU.
    out.push(
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Network)
            .path(netns_path)
            .build()?,
    );
    Ok(out)
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()?)
}

fn standard_mounts() -> Result<Vec<Mount>, SpecError> {
    let nsd = ["nosuid", "noexec", "nodev"];
    Ok(vec![
        mount("/proc", "proc", "proc", &nsd)?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount("/dev/mqueue", "mqueue", "mqueue", &nsd)?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
    ])
}

fn bind_mount(m: &BindMount) -> Result<Mount, SpecError> {
    let mut options = vec!["rbind".to_owned(), "rprivate".to_owned()];
    if m.readonly {
        options.push("ro".to_owned());
    }
    Ok(MountBuilder::default()
        .destination(&m.destination)
        .typ("bind")
        .source(&m.source)
        .options(options)
        .build()?)
}

/// RLIMIT_NOFILE for containers: [`WANTED_NOFILE`], or this process's hard limit if lower.
fn capped_nofile() -> u64 {
    current_hard_limits()
        .into_iter()
        .find(|(name, _)| name == "RLIMIT_NOFILE")
        .map_or(WANTED_NOFILE, |(_, hard)| hard.min(WANTED_NOFILE))
}

/// This process's hard rlimits (`u64::MAX` = unlimited), by OCI name. A container may not ask for
/// more: raising a hard limit needs CAP_SYS_RESOURCE.
pub fn current_hard_limits() -> Vec<(String, u64)> {
    let resources = [
        ("RLIMIT_AS", Resource::RLIMIT_AS),
        ("RLIMIT_CORE", Resource::RLIMIT_CORE),
        ("RLIMIT_CPU", Resource::RLIMIT_CPU),
        ("RLIMIT_DATA", Resource::RLIMIT_DATA),
        ("RLIMIT_FSIZE", Resource::RLIMIT_FSIZE),
        ("RLIMIT_LOCKS", Resource::RLIMIT_LOCKS),
        ("RLIMIT_MEMLOCK", Resource::RLIMIT_MEMLOCK),
        ("RLIMIT_MSGQUEUE", Resource::RLIMIT_MSGQUEUE),
        ("RLIMIT_NICE", Resource::RLIMIT_NICE),
        ("RLIMIT_NOFILE", Resource::RLIMIT_NOFILE),
        ("RLIMIT_NPROC", Resource::RLIMIT_NPROC),
        ("RLIMIT_RSS", Resource::RLIMIT_RSS),
        ("RLIMIT_RTPRIO", Resource::RLIMIT_RTPRIO),
        ("RLIMIT_RTTIME", Resource::RLIMIT_RTTIME),
        ("RLIMIT_SIGPENDING", Resource::RLIMIT_SIGPENDING),
        ("RLIMIT_STACK", Resource::RLIMIT_STACK),
    ];
    resources
        .into_iter()
        .filter_map(|(name, r)| getrlimit(r).ok().map(|(_, hard)| (name.to_owned(), hard)))
        .collect()
}

/// Writes `config.json` into the bundle dir (created if needed), atomically.
pub fn write_bundle(bundle_dir: &Path, spec: &Spec) -> Result<(), SpecError> {
    let path = bundle_dir.join("config.json");
    // Private: the spec holds the container's environment.
    fsutil::write_json(&path, spec, MODE_PRIVATE)
        .map_err(|source| SpecError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_input() -> SpecInput {
        SpecInput {
            id: "c1".into(),
            hostname: "web".into(),
            args: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["PATH=/bin".into(), "FOO=bar".into()],
            cwd: "/".into(),
            user: (1000, 1001),
            rootfs: "/var/lib/ferry/c1/rootfs".into(),
            netns_path: "/var/lib/ferry/netns/c1".into(),
            cgroups_path: "/ferry-a/c1".into(),
            memory_limit: Some(64 << 20),
            mounts: vec![BindMount {
                source: "/srv/data".into(),
                destination: "/data".into(),
                readonly: true,
            }],
            criu_config: "/var/lib/ferry/c1/criu.conf".into(),
            readonly_rootfs: false,
            cpu_quota: None,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
        }
    }

    #[test]
    fn run_options_reach_the_spec() {
        let mut input = sample_input();
        input.readonly_rootfs = true;
        input.cpu_quota = Some(150_000);
        input.cap_drop = vec!["chown".into(), "CAP_KILL".into()];
        input.cap_add = vec!["net_admin".into()];
        let json = serde_json::to_value(build_spec(&input).unwrap()).unwrap();
        assert_eq!(json["root"]["readonly"], true);
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 150_000);
        assert_eq!(json["linux"]["resources"]["cpu"]["period"], 100_000);
        let caps: Vec<&str> = json["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert!(caps.contains(&"CAP_NET_ADMIN"), "{caps:?}");
        assert!(
            !caps.contains(&"CAP_CHOWN") && !caps.contains(&"CAP_KILL"),
            "{caps:?}"
        );
        assert!(caps.contains(&"CAP_SETUID"), "{caps:?}");

        assert_eq!(capability_set(&[], &["ALL".into()]).unwrap(), vec![]);
        assert_eq!(
            capability_set(&["ALL".into()], &[]).unwrap().len(),
            ALL_CAPABILITIES.len()
        );
        let err = capability_set(&["NOPE".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("NOPE"), "{err}");
    }

    #[test]
    fn spec_carries_the_input() {
        let spec = build_spec(&sample_input()).unwrap();
        let json = serde_json::to_value(&spec).unwrap();

        assert_eq!(json["process"]["terminal"], false);
        assert_eq!(json["process"]["user"]["uid"], 1000);
        assert_eq!(json["process"]["user"]["gid"], 1001);
        assert_eq!(json["process"]["env"][1], "FOO=bar");
        assert_eq!(json["process"]["args"][2], "echo hi");
        assert_eq!(json["root"]["readonly"], false);
        assert_eq!(json["root"]["path"], "/var/lib/ferry/c1/rootfs");
        assert_eq!(json["hostname"], "web");
        assert_eq!(json["linux"]["cgroupsPath"], "/ferry-a/c1");
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(
            json["annotations"]["org.criu.config"],
            "/var/lib/ferry/c1/criu.conf"
        );

        let namespaces = json["linux"]["namespaces"].as_array().unwrap();
        let types: Vec<&str> = namespaces
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["pid", "ipc", "uts", "mount", "network"]);
        assert_eq!(namespaces[4]["path"], "/var/lib/ferry/netns/c1");
        assert!(namespaces[..4].iter().all(|n| n.get("path").is_none()));

        let mounts = json["mounts"].as_array().unwrap();
        let dests: Vec<&str> = mounts
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/data"
            ]
        );
        let data = &mounts[7];
        assert_eq!(data["type"], "bind");
        assert_eq!(data["source"], "/srv/data");
        let opts: Vec<&str> = data["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        assert!(opts.contains(&"rbind") && opts.contains(&"ro"), "{opts:?}");
        assert!(mounts[5]["options"]
            .as_array()
            .unwrap()
            .contains(&"ro".into()));
    }

    #[test]
    fn rlimits_never_exceed_hard_limits() {
        let spec = build_spec(&sample_input()).unwrap();
        let hard: HashMap<String, u64> = current_hard_limits().into_iter().collect();
        let rlimits = spec.process().as_ref().unwrap().rlimits().as_ref().unwrap();
        assert!(!rlimits.is_empty());
        for r in rlimits {
            let name = serde_json::to_value(r.typ()).unwrap();
            let name = name.as_str().unwrap();
            let limit = hard[name];
            assert!(r.hard() <= limit, "{name}: {} > {limit}", r.hard());
            assert!(r.soft() <= r.hard());
        }
        let nofile = rlimits
            .iter()
            .find(|r| r.typ() == PosixRlimitType::RlimitNofile)
            .unwrap();
        assert_eq!(nofile.hard(), hard["RLIMIT_NOFILE"].min(WANTED_NOFILE));
    }

    #[test]
    fn no_memory_limit_means_no_memory_section() {
        let mut input = sample_input();
        input.memory_limit = None;
        let json = serde_json::to_value(build_spec(&input).unwrap()).unwrap();
        assert!(json["linux"]["resources"].get("memory").is_none());
    }

    #[test]
    fn rejects_bad_input() {
        type Mutation = fn(&mut SpecInput);
        let cases: [(Mutation, &str); 6] = [
            (|i| i.args.clear(), "args"),
            (|i| i.cwd = "relative".into(), "cwd"),
            (|i| i.env.push("NOEQUALS".into()), "NOEQUALS"),
            (|i| i.cgroups_path = "ferry/c1".into(), "cgroups_path"),
            (|i| i.memory_limit = Some(0), "memory_limit"),
            (|i| i.mounts[0].destination = "data".into(), "mounts"),
        ];
        for (mutate, needle) in cases {
            let mut input = sample_input();
            mutate(&mut input);
            let err = build_spec(&input).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn bundle_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let spec = build_spec(&sample_input()).unwrap();
        write_bundle(&dir.path().join("b"), &spec).unwrap();
        let back = Spec::load(dir.path().join("b/config.json")).unwrap();
        assert_eq!(back, spec);
    }
}
