//! `ferry volume ls|inspect|rm|prune`: named volumes outlive their containers; these manage
//! them. `rm` refuses a volume any container mounts (running or not), naming the container.

use anyhow::Result;
use ferry_core::container::VolumeInfo;
use hyper::Method;

use crate::client::Client;
use crate::enc;
use crate::error::Reported;
use crate::output::{self, Table};

#[derive(clap::Subcommand, Debug)]
pub enum VolumeCmd {
    /// List volumes and the containers that use them.
    #[command(visible_alias = "list")]
    Ls {
        /// Only the names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show volumes in full (path, size, users).
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes and their data (refused while a container uses one).
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove every volume no container uses.
    Prune,
}

pub async fn run(c: &Client, cmd: VolumeCmd, json: bool) -> Result<()> {
    match cmd {
        VolumeCmd::Ls { quiet } => {
            let list: Vec<VolumeInfo> = c.call(Method::GET, "/v1/volumes", None::<()>).await?;
            if json {
                output::print_json(&list)?;
            } else if quiet {
                for v in list {
                    outln!("{}", v.name);
                }
            } else {
                let mut t = Table::new(vec!["VOLUME NAME".into(), "USED BY".into()]);
                for v in list {
                    let users = if v.used_by.is_empty() {
                        "-".to_owned()
                    } else {
                        v.used_by.join(",")
                    };
                    t.row(vec![v.name, users]);
                }
                t.print();
            }
        }
        VolumeCmd::Inspect { names } => {
            each(
                &names,
                json,
                |n| async move {
                    c.call::<VolumeInfo>(
                        Method::GET,
                        &format!("/v1/volumes/{}", enc(&n)),
                        None::<()>,
                    )
                    .await
                },
                true,
            )
            .await?
        }
        VolumeCmd::Rm { names } => {
            each(
                &names,
                json,
                |n| async move {
                    c.call::<VolumeInfo>(
                        Method::DELETE,
                        &format!("/v1/volumes/{}", enc(&n)),
                        None::<()>,
                    )
                    .await
                },
                false,
            )
            .await?
        }
        VolumeCmd::Prune => {
            let removed: Vec<VolumeInfo> = c
                .call(
                    Method::POST,
                    "/v1/volumes/prune",
                    Some(serde_json::json!({})),
                )
                .await?;
            if json {
                output::print_json(&removed)?;
            } else {
                for v in &removed {
                    outln!("{}", v.name);
                }
                let bytes: u64 = removed.iter().filter_map(|v| v.size).sum();
                outln!(
                    "removed {} volume{}, {}",
                    removed.len(),
                    if removed.len() == 1 { "" } else { "s" },
                    output::human_bytes(bytes)
                );
            }
        }
    }
    Ok(())
}

/// Each name in turn, going on past failures (as `names::each` does for containers).
/// Human output: the name per success (`rm`), or the records as JSON (`inspect`).
async fn each<F, Fut>(names: &[String], json: bool, act: F, records: bool) -> Result<()>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<VolumeInfo>>,
{
    let mut docs = Vec::new();
    let mut failed = 0;
    for n in names {
        match act(n.clone()).await {
            Ok(v) => {
                if !json && !records {
                    outln!("{n}");
                }
                docs.push(serde_json::to_value(&v)?);
            }
            Err(e) if names.len() == 1 => return Err(e),
            Err(e) => {
                failed += 1;
                if json {
                    let mut v = crate::error::json_error(&e);
                    v["name"] = n.clone().into();
                    docs.push(v);
                } else {
                    eprintln!("ferry: error: {e:#}");
                }
            }
        }
    }
    if json || records {
        match (names.len(), docs.pop()) {
            (1, Some(d)) => output::print_json(&d)?,
            (_, last) => {
                docs.extend(last);
                output::print_json(&docs)?;
            }
        }
    }
    if failed > 0 {
        return Err(Reported(1).into());
    }
    Ok(())
}
