//! The ferryd HTTP/JSON API: request and response bodies shared by the daemon and the CLI.
//!
//! Paths (all under `/v1`) are listed in `ferryd`'s router; this module only holds the shapes,
//! and is where the CLI and ferryd take them from. Bodies that are also an operation's own
//! options or result (a checkpoint's, an exec's, a migration's) are defined beside that
//! operation, which must not depend on the HTTP edge, and named here. Records the API returns
//! as they are stored (`ContainerRecord`, `VolumeInfo`, `MigrationRecord`, ...) stay with
//! their owners.

use serde::{Deserialize, Serialize};

use crate::container::{
    parse_labels, parse_ports, parse_volume, ContainerError, RestartPolicy, RunOptions,
};

pub use crate::container::checkpoint::{
    CheckpointReport, CheckpointRequest, RestoreReport, RestoreRequest, SnapshotInfo,
};
pub use crate::exec::{AttachRequest, ExecRequest};
pub use crate::migration::MigrateRequest;

/// Every error body the daemon returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub error: String,
    /// A stable machine-readable category: `not_found`, `conflict`, `invalid` (the caller's
    /// input), `ambiguous` (an ID prefix of several containers), `unauthorized` (a registry
    /// refused the credentials), `unavailable` (a peer or registry could not be reached),
    /// `peer` / `registry` (one answered wrongly or refused), `internal` (this host's fault).
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    pub host: String,
    pub version: String,
    pub root: String,
    pub runc_version: String,
    pub criu: serde_json::Value,
    pub bridge: String,
    pub subnet: String,
    pub peer_listen: Option<String>,
    pub containers: usize,
    pub images: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportImageRequest {
    /// Path on the daemon's host: an OCI layout (dir or tar) or a rootfs tarball.
    pub path: String,
    pub name: Option<String>,
}

/// `ferry image save`: write the image as an OCI archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveImageRequest {
    /// Absolute path on the daemon's host; must not exist yet.
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaveImageReport {
    pub id: String,
    pub reference: String,
    pub path: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageSummary {
    pub id: String,
    pub names: Vec<String>,
    pub layers: usize,
    pub size: u64,
    pub created: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Empty: ferryd generates a Docker-like `adjective_noun` name.
    #[serde(default)]
    pub name: String,
    pub image: String,
    /// Overrides the image's CMD (the entrypoint stays).
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    pub ip: Option<String>,
    /// `NAME:/path[:ro]`
    #[serde(default)]
    pub volumes: Vec<String>,
    pub memory: Option<i64>,
    /// The container's hostname (default: its short id, as Podman).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Nameservers for the container's /etc/resolv.conf instead of the host's.
    #[serde(default)]
    pub dns: Vec<String>,
    /// `NAME:IP` entries added to the container's /etc/hosts.
    #[serde(default)]
    pub add_hosts: Vec<String>,
    /// `user[:group]`, names or ids, instead of the image's user.
    #[serde(default)]
    pub user: Option<String>,
    /// Absolute working directory instead of the image's.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Replaces the image's entrypoint, and drops its CMD (Docker's rule).
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE` (or `KEY`, empty value).
    #[serde(default)]
    pub labels: Vec<String>,
    /// CPUs' worth of time, e.g. 0.5.
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// Remove the container once it has stopped.
    #[serde(default)]
    pub auto_remove: bool,
    /// `no`, `on-failure`, `on-failure:N` or `always`.
    #[serde(default)]
    pub restart: Option<String>,
    /// `[IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]`
    #[serde(default)]
    pub publish: Vec<String>,
    /// `-t`: the container's stdio is a pty (held by its shim, for `ferry attach`).
    #[serde(default)]
    pub tty: bool,
    /// `-i`: the container's stdin stays open for `ferry attach`.
    #[serde(default)]
    pub interactive: bool,
}

/// The API edge of `ferry run`: the request's strings parsed into the engine's terms. Parse
/// errors are the caller's (`Invalid`); the rest is checked by [`RunOptions::validate`].
impl TryFrom<&RunRequest> for RunOptions {
    type Error = ContainerError;

    fn try_from(req: &RunRequest) -> Result<Self, ContainerError> {
        let ip = match &req.ip {
            Some(s) => Some(
                s.parse()
                    .map_err(|_| ContainerError::Invalid(format!("invalid IP address {s:?}")))?,
            ),
            None => None,
        };
        Ok(RunOptions {
            name: Some(req.name.clone()).filter(|n| !n.is_empty()),
            image: req.image.clone(),
            cmd: req.cmd.clone(),
            entrypoint: req.entrypoint.clone(),
            env: req.env.clone(),
            ip,
            volumes: req
                .volumes
                .iter()
                .map(|v| parse_volume(v))
                .collect::<Result<_, _>>()?,
            memory: req.memory,
            hostname: req.hostname.clone(),
            dns: req.dns.clone(),
            add_hosts: req.add_hosts.clone(),
            user: req.user.clone(),
            workdir: req.workdir.clone(),
            labels: parse_labels(&req.labels)?,
            cpus: req.cpus,
            read_only: req.read_only,
            cap_add: req.cap_add.clone(),
            cap_drop: req.cap_drop.clone(),
            auto_remove: req.auto_remove,
            restart: match &req.restart {
                Some(r) => r.parse()?,
                None => RestartPolicy::No,
            },
            ports: parse_ports(&req.publish)?,
            tty: req.tty,
            interactive: req.interactive,
        })
    }
}

/// `POST /v1/containers`' answer: the new container's record (its fields at the top level, as
/// before), and what the user should know about it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunReply {
    #[serde(flatten)]
    pub record: crate::container::ContainerRecord,
    /// Said to the user (on stderr) but not fatal: a peer that uses `--ip`, or could not be asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// What each known peer said about `--ip`, when it was given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_check: Vec<crate::peer::query::PeerIpReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Seconds to wait after SIGTERM before SIGKILL.
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillRequest {
    /// `KILL`, `SIGKILL` or `9` (default SIGKILL).
    pub signal: Option<String>,
    /// Every process of the container, not only its main process.
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostAddRequest {
    pub name: String,
    pub addr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostEntry {
    pub name: String,
    pub addr: String,
}

/// `POST /v1/migrations/{id}/resolve`: an operator's decision for an in-doubt migration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    pub decision: crate::migration::commit::Decision,
}

/// `GET /v1/events`: one of these per line (NDJSON), as things change on this host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    /// When ferryd saw the change (RFC3339).
    pub time: String,
    /// `container` or `migration`.
    pub kind: String,
    /// Containers: create, start, restart, die, checkpoint, restore, migrating, error, destroy.
    /// Migrations: the stage the record reached (preparing, in-doubt, committed, ...).
    pub action: String,
    /// The container's name.
    pub name: String,
    /// The container's ID, or the migration's.
    pub id: String,
    /// More about it: the exit of a `die`, the error of an `error`, a migration's role and peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `POST /v1/images/pull`: answered with an NDJSON stream of
/// [`crate::image::registry::TransferEvent`]s, ending in `done` or `failed`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    pub reference: String,
    /// Plain HTTP to this registry (`--insecure` / `--tls-verify=false`).
    #[serde(default)]
    pub insecure: bool,
}

/// `POST /v1/images/push`: the same stream as a pull.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// The local image (name, id or id prefix).
    pub image: String,
    /// Where to push it; default: `image`, when that is a name with a registry.
    pub reference: Option<String>,
    #[serde(default)]
    pub insecure: bool,
}

/// `POST /v1/images/tag`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagRequest {
    pub image: String,
    pub name: String,
}

/// `POST /v1/registries/login`: ferryd checks the credentials with the registry, then keeps
/// them in `<root>/auth.json` (0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub registry: String,
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub insecure: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    pub registry: String,
    pub username: String,
    /// The file ferryd stored the credentials in.
    pub stored_in: String,
}

/// `POST /v1/registries/logout`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    pub registry: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogoutResponse {
    pub registry: String,
    /// False when ferryd had no credentials for it.
    pub removed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_request_parses_into_run_options() {
        let req = RunRequest {
            image: "alpine".into(),
            ip: Some("10.88.0.9".into()),
            volumes: vec!["data:/data:ro".into()],
            labels: vec!["tier=web".into(), "bare".into()],
            restart: Some("on-failure:3".into()),
            publish: vec!["8080:80".into()],
            ..Default::default()
        };
        let opts = RunOptions::try_from(&req).unwrap();
        assert_eq!(opts.name, None, "no name: one is generated");
        assert_eq!(opts.ip, Some(std::net::Ipv4Addr::new(10, 88, 0, 9)));
        assert!(opts.volumes[0].readonly);
        assert_eq!(opts.labels["tier"], "web");
        assert_eq!(opts.labels["bare"], "");
        assert_eq!(
            opts.restart,
            RestartPolicy::OnFailure {
                max_retries: Some(3)
            }
        );
        assert_eq!(opts.ports.len(), 1);
        opts.validate().unwrap();

        for (bad, says) in [
            (
                RunRequest {
                    ip: Some("10.88.0".into()),
                    ..req.clone()
                },
                "invalid IP address",
            ),
            (
                RunRequest {
                    publish: vec!["8080:80".into(), "8080:81".into()],
                    ..req.clone()
                },
                "published twice",
            ),
            (
                RunRequest {
                    labels: vec!["=x".into()],
                    ..req.clone()
                },
                "invalid label",
            ),
        ] {
            let err = RunOptions::try_from(&bad).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        }
        let mut named = RunOptions::try_from(&req).unwrap();
        named.name = Some("../x".into());
        assert!(named.validate().is_err());
        named.name = None;
        named.auto_remove = true;
        let err = named.validate().unwrap_err().to_string();
        assert!(
            err.contains("--rm and --restart cannot be combined"),
            "{err}"
        );
    }
}
