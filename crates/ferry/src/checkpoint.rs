//! `ferry checkpoint` and `ferry restore`.
//!
//! `ferry checkpoint CTR` (or `ferry checkpoint create CTR`) checkpoints; `checkpoint list`
//! and `checkpoint remove` manage checkpoints. Their short aliases `ls` and `rm` never shadow a
//! container: when a container is named `ls` or `rm`, `ferry checkpoint ls` checkpoints it
//! (see [`container_form`]). Podman's flags that name what ferry always does
//! (`--tcp-established`, `--file-locks`, `--keep`) are accepted and change nothing.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Result;
use hyper::Method;

use crate::client::Client;
use crate::error::CliError;
use crate::{enc, output};

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CheckpointArgs {
    #[command(subcommand)]
    sub: Option<CheckpointSub>,
    #[command(flatten)]
    create: CreateArgs,
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The container to checkpoint (name, ID or ID prefix).
    container: Option<String>,
    /// Keep the container running after the checkpoint.
    #[arg(short = 'R', long)]
    leave_running: bool,
    /// Name of the checkpoint (default: a timestamp).
    #[arg(long)]
    name: Option<String>,
    /// Also write the checkpoint to this archive file (Podman's --export layout).
    #[arg(short = 'e', long)]
    export: Option<PathBuf>,
    /// Also make the checkpoint an image with this name, in the format Podman's
    /// `--create-image` writes and CRI-O restores from; `ferry restore IMAGE` restores it.
    #[arg(long, value_name = "REF")]
    create_image: Option<String>,
    /// Encrypt the exported archive (ChaCha20-Poly1305) with the 32-byte key in KEYFILE
    /// (64 hex digits, mode 0600; e.g. `openssl rand -hex 32 > key && chmod 600 key`).
    #[arg(long, value_name = "KEYFILE", requires = "export")]
    encrypt: Option<PathBuf>,
    /// Archive compression: zstd or none.
    #[arg(short = 'c', long, default_value = "zstd")]
    compress: String,
    /// Print CRIU's statistics.
    #[arg(long)]
    print_stats: bool,
    /// Accepted for Podman: ferry always keeps established TCP connections.
    #[arg(long)]
    tcp_established: bool,
    /// Accepted for Podman: ferry always checkpoints file locks.
    #[arg(long)]
    file_locks: bool,
    /// Accepted for Podman: ferry always keeps the checkpoint (until `checkpoint remove`)
    /// and, after a failure, CRIU's log.
    #[arg(short = 'k', long)]
    keep: bool,
}

#[derive(clap::Subcommand, Debug)]
enum CheckpointSub {
    /// Checkpoint a container (the same as `ferry checkpoint CONTAINER`).
    Create(CreateArgs),
    /// List checkpoints, of one container or of all (alias `ls`, unless a container is
    /// named ls).
    #[command(visible_alias = "ls")]
    List { container: Option<String> },
    /// Remove a checkpoint (alias `rm`, unless a container is named rm).
    #[command(visible_alias = "rm")]
    Remove { container: String, snapshot: String },
}

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// The container to restore, or a checkpoint image (ferry's or Podman's) to create one
    /// from (not with --import).
    container: Option<String>,
    /// Checkpoint to restore (default: the newest).
    #[arg(long)]
    from: Option<String>,
    /// Create a container from an exported archive.
    #[arg(short = 'i', long)]
    import: Option<PathBuf>,
    /// With --import or an image: a new name.
    #[arg(short = 'n', long)]
    name: Option<String>,
    /// With --import or an image: a new IP (impossible if the checkpoint holds established TCP
    /// connections).
    #[arg(long)]
    ip: Option<String>,
    /// With --import: the key file of an encrypted archive (see `checkpoint --encrypt`).
    #[arg(long, value_name = "KEYFILE", requires = "import")]
    decrypt: Option<PathBuf>,
    /// Print CRIU's statistics.
    #[arg(long)]
    print_stats: bool,
    /// Accepted for Podman: ferry always restores established TCP connections.
    #[arg(long)]
    tcp_established: bool,
    /// Accepted for Podman: ferry always restores file locks.
    #[arg(long)]
    file_locks: bool,
    /// Accepted for Podman: ferry always keeps the checkpoint after a restore.
    #[arg(short = 'k', long)]
    keep: bool,
}

/// `argv` with `checkpoint ls|rm` read as the container `ls` or `rm`: the rewritten command
/// line and the container's name, when the command line has that form. The caller uses it
/// only if such a container exists.
pub fn container_form(argv: &[OsString]) -> Option<(Vec<OsString>, String)> {
    let at = argv
        .windows(2)
        .position(|w| w[0] == "checkpoint" && (w[1] == "ls" || w[1] == "rm"))?;
    let name = argv[at + 1].to_string_lossy().into_owned();
    let mut out = argv.to_vec();
    out.insert(at + 1, OsString::from("create"));
    Some((out, name))
}

pub async fn checkpoint(c: &Client, a: CheckpointArgs, json: bool) -> Result<()> {
    use ferry_core::api::SnapshotInfo;
    match a.sub {
        Some(CheckpointSub::List { container }) => {
            let q = container
                .map(|n| format!("?container={}", enc(&n)))
                .unwrap_or_default();
            let list: Vec<SnapshotInfo> = c
                .call(Method::GET, &format!("/v1/checkpoints{q}"), None::<()>)
                .await?;
            if json {
                output::print_json(&list)?;
            } else {
                output::checkpoints_table(&list);
            }
        }
        Some(CheckpointSub::Remove {
            container,
            snapshot,
        }) => {
            let _: serde_json::Value = c
                .call(
                    Method::DELETE,
                    &format!(
                        "/v1/containers/{}/checkpoints/{}",
                        enc(&container),
                        enc(&snapshot)
                    ),
                    None::<()>,
                )
                .await?;
            if json {
                output::print_json(&serde_json::json!({
                    "container": container,
                    "removed": snapshot,
                }))?;
            } else {
                outln!("removed checkpoint {snapshot} of {container}");
            }
        }
        Some(CheckpointSub::Create(create)) => create_one(c, create, json).await?,
        None => create_one(c, a.create, json).await?,
    }
    Ok(())
}

async fn create_one(c: &Client, a: CreateArgs, json: bool) -> Result<()> {
    use ferry_core::api::{CheckpointReport, CheckpointRequest};
    let name = a.container.ok_or_else(|| {
        CliError::new(
            "usage",
            "give the container to checkpoint: `ferry checkpoint CONTAINER` (or list / remove)",
        )
    })?;
    let export = match a.export {
        Some(p) => Some(absolute(&p)?),
        None => None,
    };
    let req = CheckpointRequest {
        leave_running: a.leave_running,
        name: a.name,
        export,
        create_image: a.create_image,
        encrypt: a.encrypt.as_deref().map(absolute).transpose()?,
        compress: Some(a.compress),
    };
    let rep: CheckpointReport = c
        .call(
            Method::POST,
            &format!("/v1/containers/{}/checkpoint", enc(&name)),
            Some(req),
        )
        .await?;
    if json {
        output::print_json(&rep)?;
    } else {
        outln!("{}/{}", rep.container, rep.snapshot);
        if let Some(e) = &rep.exported {
            outln!("exported to {e}");
        }
        if let Some(i) = &rep.image {
            outln!("checkpoint image {i}");
        }
        if a.print_stats {
            output::checkpoint_stats(&rep);
        }
    }
    Ok(())
}

pub async fn restore(c: &Client, a: RestoreArgs, json: bool) -> Result<()> {
    use ferry_core::api::{RestoreReport, RestoreRequest};
    let import = match &a.import {
        Some(p) => Some(absolute(p)?),
        None => None,
    };
    let req = RestoreRequest {
        from: a.from,
        import,
        name: a.name,
        ip: a.ip,
        decrypt: a.decrypt.as_deref().map(absolute).transpose()?,
    };
    let path = match (&req.import, &a.container) {
        (Some(_), None) => "/v1/restore".to_owned(),
        (Some(_), Some(_)) => {
            return Err(CliError::new(
                "usage",
                "give either a container or --import FILE, not both (use --name for a new name)",
            )
            .into())
        }
        (None, Some(n)) => format!("/v1/containers/{}/restore", enc(n)),
        (None, None) => {
            return Err(
                CliError::new("usage", "give the container to restore, or --import FILE").into(),
            )
        }
    };
    let rep: RestoreReport = c.call(Method::POST, &path, Some(req)).await?;
    if json {
        output::print_json(&rep)?;
    } else {
        outln!("{}", rep.container);
        if a.print_stats {
            output::restore_stats(&rep);
        }
    }
    Ok(())
}

pub fn absolute(p: &std::path::Path) -> Result<String> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    Ok(abs.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_form_rewrites_only_the_aliases() {
        let argv = |s: &str| s.split(' ').map(OsString::from).collect::<Vec<_>>();
        let (out, name) =
            container_form(&argv("ferry --json checkpoint ls --leave-running")).unwrap();
        assert_eq!(
            out,
            argv("ferry --json checkpoint create ls --leave-running")
        );
        assert_eq!(name, "ls");
        assert!(container_form(&argv("ferry checkpoint list")).is_none());
        assert!(container_form(&argv("ferry checkpoint web")).is_none());
    }
}
