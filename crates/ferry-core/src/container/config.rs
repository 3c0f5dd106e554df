//! What a container is: its configuration (fixed at creation, moves with it) and its
//! lifecycle record (status on this host).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::ContainerError;
use crate::ids::{self, ContainerId, ContainerName, IdError, VolumeName};
use crate::network::dns::{self, DnsError, EtcFiles};
use crate::network::ports::{self, PortMapping};

/// Everything needed to recreate the container on any host. This is what a checkpoint's
/// `config.dump` and a migration's `Prepare` carry.
///
/// The id, the name and the volume names become paths on this host. They are plain strings
/// (the code that reads them, and the wire and disk formats, stay as they were), but parsing
/// a config checks each against its rule in [`crate::ids`]: a `config.dump` or a `Prepare`
/// with `"id": "x/../../etc"` does not parse. A config built or edited in code is checked by
/// [`ContainerConfig::validate`] before the engine registers it.
///
/// **Persisted and sent to peers.** This struct is written to disk (`container.json`, a
/// checkpoint's `config.dump`) and carried by a migration's `Prepare` to another ferry, which
/// may be older or newer. Changing its fields (adding, removing, renaming, or changing a
/// type or a default) needs a protocol version bump: see the `ferry_proto` crate docs,
/// Versioning.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerConfig {
    #[serde(deserialize_with = "ids::de::container_id")]
    pub id: String,
    #[serde(deserialize_with = "ids::de::container_name")]
    pub name: String,
    /// Image manifest digest (`sha256:…`) and the reference the user gave.
    pub image: String,
    pub image_ref: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub mac: String,
    pub volumes: Vec<VolumeMount>,
    pub memory: Option<i64>,
    pub created: String,
    /// Restored from a Podman checkpoint, whose CRIU images hold Podman's bind mount at
    /// /dev/shm (a host directory, not a tmpfs of the container's): ferry recreates it (see
    /// `checkpoint::podman`). The other files Podman bind-mounts are every container's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub podman_shm: bool,
    /// The container's hostname (`--hostname`, else its short id). Empty in configs written
    /// before ferry had it: those containers keep their name as hostname.
    #[serde(default)]
    pub hostname: String,
    /// `--dns` servers: replace the host's in the container's /etc/resolv.conf.
    #[serde(default)]
    pub dns: Vec<String>,
    /// `--add-host NAME:IP` entries for the container's /etc/hosts.
    #[serde(default)]
    pub add_hosts: Vec<String>,
    /// `--label KEY=VALUE`: the user's own metadata, not interpreted by ferry.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// `--read-only`: a read-only root filesystem.
    #[serde(default)]
    pub read_only: bool,
    /// `--cpus`: CPUs' worth of time (1.5 = one and a half CPUs).
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// `--rm`: ferryd removes the container once it has stopped.
    #[serde(default)]
    pub auto_remove: bool,
    /// `--restart`: what ferryd does when the container exits on its own.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// `-p`: host ports sent to the container, on whichever host it runs.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
}

/// `--restart no|on-failure[:N]|always`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", tag = "name")]
pub enum RestartPolicy {
    #[default]
    No,
    /// Restart after a non-zero exit (or a signal), at most `max_retries` times if given.
    OnFailure { max_retries: Option<u32> },
    /// Restart after every exit, except after `ferry stop`.
    Always,
}

impl std::str::FromStr for RestartPolicy {
    type Err = ContainerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            ContainerError::Invalid(format!(
                "invalid restart policy {s:?}: use no, on-failure, on-failure:N or always"
            ))
        };
        match s.split_once(':') {
            None if s == "no" => Ok(RestartPolicy::No),
            None if s == "always" => Ok(RestartPolicy::Always),
            None if s == "on-failure" => Ok(RestartPolicy::OnFailure { max_retries: None }),
            Some(("on-failure", n)) => Ok(RestartPolicy::OnFailure {
                max_retries: Some(n.parse().map_err(|_| bad())?),
            }),
            _ => Err(bad()),
        }
    }
}

/// How long ferryd waits before restarting a container that exited after `restarts`
/// restarts, having run for `ran`: Docker's doubling back-off from 100 ms up to a minute, so
/// a container that crashes at once does not spin; one that ran 10 s or more restarts at once.
pub fn restart_delay(restarts: u32, ran: std::time::Duration) -> std::time::Duration {
    use std::time::Duration;
    if ran >= Duration::from_secs(10) {
        return Duration::ZERO;
    }
    Duration::from_millis(100u64 << restarts.min(10)).min(Duration::from_secs(60))
}

impl RestartPolicy {
    /// Whether a container that exited with `exit` on its own, after `restarts` restarts,
    /// starts again.
    pub fn wants_restart(self, exit: Option<&ExitInfo>, restarts: u32) -> bool {
        let failed = exit.is_none_or(|e| e.code != Some(0));
        match self {
            RestartPolicy::No => false,
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure { max_retries } => {
                failed && max_retries.is_none_or(|max| restarts < max)
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeMount {
    #[serde(deserialize_with = "ids::de::volume_name")]
    pub name: String,
    pub destination: String,
    pub readonly: bool,
}

impl ContainerConfig {
    /// Checks every identifier that becomes a path (id, name, volume names) against its rule.
    pub fn validate(&self) -> Result<(), IdError> {
        ContainerId::new(self.id.as_str())?;
        ContainerName::new(self.name.as_str())?;
        for v in &self.volumes {
            VolumeName::new(v.name.as_str())?;
        }
        Ok(())
    }

    /// The id, as the validated type path builders take. A config's id was checked when it
    /// was parsed or registered, so this fails only for a config edited in code since.
    pub fn container_id(&self) -> Result<ContainerId, IdError> {
        ContainerId::new(self.id.as_str())
    }

    /// The UTS hostname and the name in /etc/hostname.
    pub fn effective_hostname(&self) -> &str {
        if self.hostname.is_empty() {
            &self.name
        } else {
            &self.hostname
        }
    }

    /// What the container's /etc/hosts, /etc/resolv.conf, /etc/hostname and
    /// /run/.containerenv say. The entries were checked when the container was created.
    pub fn etc_files(&self) -> Result<EtcFiles, DnsError> {
        Ok(EtcFiles {
            hostname: self.effective_hostname().to_owned(),
            name: self.name.clone(),
            id: self.id.clone(),
            ip: self.ip,
            dns: self
                .dns
                .iter()
                .map(|s| dns::parse_server(s))
                .collect::<Result<_, _>>()?,
            add_hosts: self
                .add_hosts
                .iter()
                .map(|s| dns::parse_add_host(s))
                .collect::<Result<_, _>>()?,
            image: self.image_ref.clone(),
            image_id: self.image.clone(),
        })
    }
}

/// Podman's default hostname: the first 12 characters of the id.
pub fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Being set up; not yet started.
    Created,
    Running,
    /// Exited or stopped; can be started again.
    Stopped,
    /// Stopped by a checkpoint; can be restored.
    Checkpointed,
    /// Frozen or being moved by a migration; do not touch.
    Migrating,
    /// A rollback could not verify that the container runs again (still frozen, CRIU still
    /// alive, network still locked...). `ContainerRecord::error` says what; an operator must
    /// look. Never shown as running.
    Error,
}

/// What each lifecycle operation accepts, in one place (as youki's `ContainerStatus` does).
impl Status {
    /// `start`: a container that never ran, exited, or was checkpointed. A checkpointed
    /// container starts afresh (its checkpoints stay for a later `restore`), as with Podman.
    pub fn can_start(self) -> bool {
        matches!(
            self,
            Status::Created | Status::Stopped | Status::Checkpointed
        )
    }

    /// `stop` and `kill`: only a running container has processes to signal.
    pub fn can_stop(self) -> bool {
        self == Status::Running
    }

    /// `rm` without `--force`: anything not running and not being moved.
    pub fn can_remove(self) -> bool {
        !matches!(self, Status::Running | Status::Migrating)
    }

    /// `restore` from one of its own checkpoints: a container that is not running.
    pub fn can_restore(self) -> bool {
        matches!(self, Status::Checkpointed | Status::Stopped)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Checkpointed => "checkpointed",
            Status::Migrating => "migrating",
            Status::Error => "error",
        };
        f.write_str(s)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub finished_at: Option<String>,
}

/// The persisted state of one container on this host (`containers/ID/container.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub config: ContainerConfig,
    pub status: Status,
    pub pid: Option<u32>,
    pub shim_pid: Option<u32>,
    pub started_at: Option<String>,
    pub exit: Option<ExitInfo>,
    /// Where the container came from, when it was restored or migrated in.
    #[serde(default)]
    pub restored_from: Option<String>,
    /// Arrived by migration and not committed yet: discarded if ferryd restarts before commit.
    #[serde(default)]
    pub incoming_uncommitted: bool,
    /// Why the status is [`Status::Error`]; None otherwise.
    #[serde(default)]
    pub error: Option<String>,
    /// Times ferryd restarted it under its restart policy.
    #[serde(default)]
    pub restart_count: u32,
    /// Stopped by `ferry stop` (or killed with SIGKILL): the restart policy leaves it alone
    /// until it is started again.
    #[serde(default)]
    pub stopped_by_user: bool,
}

impl ContainerRecord {
    /// A container that exists on this host but has not started (yet).
    pub fn created(config: ContainerConfig, restored_from: Option<String>) -> Self {
        ContainerRecord {
            config,
            status: Status::Created,
            pid: None,
            shim_pid: None,
            started_at: None,
            exit: None,
            restored_from,
            incoming_uncommitted: false,
            error: None,
            restart_count: 0,
            stopped_by_user: false,
        }
    }
}

/// What `ferry run` asks for, in the engine's terms: the API edge parses a request into this
/// (`TryFrom<&api::RunRequest>` in [`crate::api`]); [`RunOptions::validate`] checks it, and
/// `Engine::run` calls that before anything is created, so bad input changes nothing.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `None`: a Docker-like `adjective_noun` name is generated.
    pub name: Option<String>,
    /// The image reference the user gave.
    pub image: String,
    /// Overrides the image's CMD (the entrypoint stays).
    pub cmd: Vec<String>,
    /// Replaces the image's entrypoint, and drops its CMD (Docker's rule).
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE` entries, over the image's.
    pub env: Vec<String>,
    /// `None`: the next free address of this host's range.
    pub ip: Option<Ipv4Addr>,
    pub volumes: Vec<VolumeMount>,
    /// Bytes.
    pub memory: Option<i64>,
    /// Default: the container's short id, as Podman.
    pub hostname: Option<String>,
    /// Nameservers instead of the host's.
    pub dns: Vec<String>,
    /// `NAME:IP` entries added to /etc/hosts.
    pub add_hosts: Vec<String>,
    /// `user[:group]`, names or ids, instead of the image's user.
    pub user: Option<String>,
    /// Absolute working directory instead of the image's.
    pub workdir: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    /// CPUs' worth of time, e.g. 0.5.
    pub cpus: Option<f64>,
    pub read_only: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// Remove the container once it has stopped.
    pub auto_remove: bool,
    pub restart: RestartPolicy,
    pub ports: Vec<PortMapping>,
    /// The container's stdio is a pty held by its shim.
    pub tty: bool,
    /// The container's stdin stays open for `ferry attach`.
    pub interactive: bool,
}

impl RunOptions {
    /// Checks everything that needs nothing of this host's state (the image and the other
    /// containers are checked by `Engine::run`).
    pub fn validate(&self) -> Result<(), ContainerError> {
        let invalid = |m: String| Err(ContainerError::Invalid(m));
        if let Some(n) = &self.name {
            validate_name(n)?;
        }
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') {
                return invalid(format!("working directory {w:?} must be absolute"));
            }
        }
        if let Some(u) = &self.user {
            if u.is_empty() || u.starts_with(':') || u.ends_with(':') {
                return invalid(format!(
                    "invalid user {u:?}: expected USER[:GROUP], names or ids"
                ));
            }
        }
        if let Some(c) = self.cpus {
            let host = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            if !(0.01..=host).contains(&c) {
                return invalid(format!(
                    "--cpus {c} is out of range: from 0.01 to this host's {host} CPUs"
                ));
            }
        }
        for cap in self.cap_add.iter().chain(&self.cap_drop) {
            if !cap.eq_ignore_ascii_case("all") {
                crate::runtime::spec::parse_capability(cap)?;
            }
        }
        if self.auto_remove && self.restart != RestartPolicy::No {
            return invalid(
                "--rm and --restart cannot be combined: a removed container cannot restart".into(),
            );
        }
        for e in &self.env {
            validate_env(e)?;
        }
        // Volume names become paths.
        for v in &self.volumes {
            validate_volume_name(&v.name)?;
        }
        if let Some(m) = self.memory {
            if m < 4 * 1024 * 1024 {
                return invalid(format!(
                    "memory limit {m} bytes is too small (minimum 4 MiB)"
                ));
            }
        }
        if let Some(h) = &self.hostname {
            dns::validate_hostname(h)?;
        }
        for d in &self.dns {
            dns::parse_server(d)?;
        }
        for a in &self.add_hosts {
            dns::parse_add_host(a)?;
        }
        Ok(())
    }
}

/// `KEY=VALUE` (or `KEY`, empty value) labels, as `ferry run --label` gives them.
pub fn parse_labels(
    labels: &[String],
) -> Result<std::collections::BTreeMap<String, String>, ContainerError> {
    let mut parsed = std::collections::BTreeMap::new();
    for l in labels {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        if k.is_empty() || k.contains(char::is_whitespace) {
            return Err(ContainerError::Invalid(format!(
                "invalid label {l:?}: expected KEY=VALUE"
            )));
        }
        parsed.insert(k.to_owned(), v.to_owned());
    }
    Ok(parsed)
}

/// `ferry run -p` specs, each host port once.
pub fn parse_ports(specs: &[String]) -> Result<Vec<PortMapping>, ContainerError> {
    let mut published: Vec<PortMapping> = Vec::new();
    for p in specs {
        let m = ports::parse_publish(p)?;
        if let Some(other) = published.iter().find(|o| o.clashes_with(&m)) {
            return Err(ContainerError::Invalid(format!(
                "-p {p}: host port {} is published twice ({other})",
                m.host_port
            )));
        }
        published.push(m);
    }
    Ok(published)
}

const ADJECTIVES: [&str; 32] = [
    "agile", "bold", "brave", "calm", "clever", "cosy", "eager", "fancy", "gentle", "happy",
    "jolly", "keen", "kind", "lively", "lucid", "merry", "nimble", "noble", "proud", "quiet",
    "quick", "rapid", "serene", "sharp", "shiny", "steady", "sunny", "swift", "tender", "vivid",
    "wise", "zesty",
];
const NOUNS: [&str; 32] = [
    "albatross",
    "badger",
    "barge",
    "beacon",
    "canoe",
    "cutter",
    "dinghy",
    "dolphin",
    "ferry",
    "frigate",
    "gull",
    "harbor",
    "heron",
    "jetty",
    "kayak",
    "ketch",
    "lighthouse",
    "marlin",
    "narwhal",
    "otter",
    "pelican",
    "pier",
    "puffin",
    "raft",
    "schooner",
    "seal",
    "skiff",
    "sloop",
    "tern",
    "trawler",
    "walrus",
    "yacht",
];

/// A Docker-like `adjective_noun` name that `taken` does not know; a number is added once the
/// plain names get crowded.
pub(crate) fn generate_name(taken: impl Fn(&str) -> bool) -> String {
    use rand::seq::SliceRandom;
    let mut rng = rand::thread_rng();
    for attempt in 0u32.. {
        let adj = ADJECTIVES.choose(&mut rng).expect("adjectives");
        let noun = NOUNS.choose(&mut rng).expect("nouns");
        let name = if attempt < 16 {
            format!("{adj}_{noun}")
        } else {
            format!("{adj}_{noun}{}", attempt)
        };
        if !taken(&name) {
            return name;
        }
    }
    unreachable!("an unbounded loop either returns or runs forever")
}

/// Container names: the same rule Docker uses, so scripts carry over (see [`ContainerName`]).
pub fn validate_name(name: &str) -> Result<(), ContainerError> {
    ContainerName::new(name)?;
    Ok(())
}

/// Volume names follow the container-name rule (see [`VolumeName`]).
pub fn validate_volume_name(name: &str) -> Result<(), ContainerError> {
    VolumeName::new(name)?;
    Ok(())
}

/// Parses `NAME:/path[:ro|:rw]`.
pub fn parse_volume(spec: &str) -> Result<VolumeMount, ContainerError> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (name, dest, mode) = match parts.as_slice() {
        [n, d] => (*n, *d, "rw"),
        [n, d, m] => (*n, *d, *m),
        _ => {
            return Err(ContainerError::Invalid(format!(
                "invalid volume {spec:?}: expected NAME:/path[:ro]"
            )))
        }
    };
    if name.starts_with('/') || name.starts_with('.') {
        return Err(ContainerError::Invalid(format!(
            "volume {spec:?}: host paths cannot be mounted (they could not move with the container); use a named volume"
        )));
    }
    validate_volume_name(name)?;
    if !dest.starts_with('/') || dest.split('/').any(|c| c == "..") || dest == "/" {
        return Err(ContainerError::Invalid(format!(
            "volume {spec:?}: the mount point must be an absolute path inside the container, not / and without '..'"
        )));
    }
    let readonly = match mode {
        "ro" => true,
        "rw" => false,
        other => {
            return Err(ContainerError::Invalid(format!(
                "volume {spec:?}: unknown mode {other:?} (use ro or rw)"
            )))
        }
    };
    Ok(VolumeMount {
        name: name.to_owned(),
        destination: dest.to_owned(),
        readonly,
    })
}

pub fn validate_env(entry: &str) -> Result<(), ContainerError> {
    match entry.split_once('=') {
        Some((k, _)) if !k.is_empty() && !k.contains(char::is_whitespace) => Ok(()),
        _ => Err(ContainerError::Invalid(format!(
            "invalid environment entry {entry:?}: expected KEY=VALUE"
        ))),
    }
}

/// Image env first, then the user's; a later KEY replaces an earlier one.
pub fn merge_env(image_env: &[String], user_env: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in image_env.iter().chain(user_env) {
        let key = e.split('=').next().unwrap_or(e);
        out.retain(|x| x.split('=').next() != Some(key));
        out.push(e.clone());
    }
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "redis", "web-1", "x.y_z", "A1"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "-a", "a/b", "a b", "../x", &"x".repeat(64), "é"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn volumes() {
        let v = parse_volume("data:/data").unwrap();
        assert_eq!(v.name, "data");
        assert!(!v.readonly);
        assert!(parse_volume("data:/data:ro").unwrap().readonly);
        for bad in [
            "/host:/data",
            "data",
            "data:rel",
            "data:/a/../b",
            "data:/",
            "d:/x:zz",
            "bad name:/x",
        ] {
            assert!(parse_volume(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn config_json(id: &str, name: &str, volume: &str) -> serde_json::Value {
        serde_json::json!({
            "id": id, "name": name, "image": "sha256:00", "image_ref": "x", "args": ["sh"],
            "env": [], "cwd": "/", "user": "", "ip": "10.88.0.5", "prefix": 16,
            "mac": "02:00:00:00:00:01",
            "volumes": [{"name": volume, "destination": "/data", "readonly": false}],
            "memory": null, "created": "now"
        })
    }

    #[test]
    fn a_config_with_a_hostile_identifier_does_not_parse() {
        let ok: ContainerConfig =
            serde_json::from_value(config_json("abc123", "web", "data")).unwrap();
        ok.validate().unwrap();
        for (json, what) in [
            (
                config_json("x/../../../../tmp", "web", "data"),
                "container id",
            ),
            (config_json("abc", "../web", "data"), "container name"),
            (config_json("abc", "web", "../../../tmp/v"), "volume name"),
            (config_json("/etc", "web", "data"), "container id"),
            (config_json("abc", "web", ".."), "volume name"),
        ] {
            let err = serde_json::from_value::<ContainerConfig>(json).unwrap_err();
            assert!(
                err.to_string().contains(&format!("invalid {what}")),
                "{err}"
            );
        }
        let mut edited = ok;
        edited.volumes[0].name = "a/b".into();
        assert!(edited.validate().is_err());
    }

    #[test]
    fn generated_names_are_valid_and_avoid_taken_ones() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let n = generate_name(|n| seen.contains(n));
            validate_name(&n).unwrap();
            assert!(n.contains('_'), "{n}");
            assert!(seen.insert(n));
        }
    }

    #[test]
    fn restart_policies() {
        use RestartPolicy::*;
        let exit = |code| ExitInfo {
            code: Some(code),
            signal: None,
            finished_at: None,
        };
        assert_eq!("no".parse::<RestartPolicy>().unwrap(), No);
        assert_eq!("always".parse::<RestartPolicy>().unwrap(), Always);
        let three: RestartPolicy = "on-failure:3".parse().unwrap();
        assert_eq!(
            three,
            OnFailure {
                max_retries: Some(3)
            }
        );
        for bad in ["", "sometimes", "on-failure:x", "always:2"] {
            assert!(bad.parse::<RestartPolicy>().is_err(), "{bad:?}");
        }
        assert!(!No.wants_restart(Some(&exit(1)), 0));
        assert!(Always.wants_restart(Some(&exit(0)), 99));
        assert!(three.wants_restart(Some(&exit(1)), 2));
        assert!(!three.wants_restart(Some(&exit(1)), 3));
        assert!(!three.wants_restart(Some(&exit(0)), 0));
        assert!(
            three.wants_restart(None, 0),
            "killed by a signal is a failure"
        );
        use std::time::Duration;
        assert_eq!(restart_delay(0, Duration::ZERO), Duration::from_millis(100));
        assert_eq!(restart_delay(3, Duration::ZERO), Duration::from_millis(800));
        assert_eq!(restart_delay(40, Duration::ZERO), Duration::from_secs(60));
        assert_eq!(restart_delay(40, Duration::from_secs(11)), Duration::ZERO);
        let json = serde_json::to_value(three).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "on-failure", "max_retries": 3})
        );
    }

    #[test]
    fn status_rules() {
        use Status::*;
        let all = [Created, Running, Stopped, Checkpointed, Migrating, Error];
        let names = |f: fn(Status) -> bool| {
            all.iter()
                .filter(|s| f(**s))
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(Status::can_start),
            ["created", "stopped", "checkpointed"]
        );
        assert_eq!(names(Status::can_stop), ["running"]);
        assert_eq!(
            names(Status::can_remove),
            ["created", "stopped", "checkpointed", "error"]
        );
        assert_eq!(names(Status::can_restore), ["stopped", "checkpointed"]);
    }

    #[test]
    fn env_merge_overrides_and_adds_path() {
        let m = merge_env(&["A=1".into(), "B=2".into()], &["A=3".into()]);
        assert_eq!(m[0].split('=').next(), Some("PATH"));
        assert!(m.contains(&"A=3".to_owned()));
        assert!(!m.contains(&"A=1".to_owned()));
        assert!(validate_env("NOEQ").is_err());
        assert!(validate_env("=x").is_err());
        validate_env("K=").unwrap();
    }
}
