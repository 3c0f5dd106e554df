//! What a container is: its configuration (fixed at creation, moves with it) and its
//! lifecycle record (status on this host).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::ContainerError;
use crate::ids::{self, ContainerId, ContainerName, IdError, VolumeName};

/// Everything needed to recreate the container on any host. This is what a checkpoint's
/// `config.dump` and a migration's `Prepare` carry.
///
/// The id, the name and the volume names become paths on this host. They are plain strings
/// (the code that reads them, and the wire and disk formats, stay as they were), but parsing
/// a config checks each against its rule in [`crate::ids`]: a `config.dump` or a `Prepare`
/// with `"id": "x/../../etc"` does not parse. A config built or edited in code is checked by
/// [`ContainerConfig::validate`] before the engine registers it.
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
    /// Restored from a Podman checkpoint, whose CRIU images hold Podman's bind mounts at
    /// /dev/shm and /run/.containerenv: ferry recreates them (see `checkpoint::podman`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub podman_mounts: bool,
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
        }
    }
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
