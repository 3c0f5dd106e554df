//! `ferry run`, as a Docker or Podman user expects it: detached (`-d`) it prints the id; in
//! the foreground it shows the container's stdout on stdout and its stderr on stderr, forwards
//! the signals the CLI receives to the container's main process, and exits with the
//! container's exit code (128 + N when signal N ended it). With `-t` this terminal is attached
//! to the container's pty (see [`crate::attach`]); with `-i` this process's stdin goes to it.

use anyhow::{Context, Result};
use ferry_core::api::{KillRequest, RunReply, RunRequest};
use ferry_core::container::{ContainerRecord, Status};
use hyper::Method;

use crate::client::Client;
use crate::{enc, output, parse_bytes};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Run in the background and print the container's id.
    #[arg(short, long)]
    pub detach: bool,
    /// Keep the container's stdin open: this process's stdin goes to it (`ferry attach` later).
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the container a pseudo-terminal; detach with Ctrl-P Ctrl-Q. A container with a
    /// terminal (or -i) cannot be checkpointed or migrated.
    #[arg(short, long)]
    pub tty: bool,
    /// Environment: KEY=VALUE, or KEY to pass this shell's value (skipped when unset).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// The container's name (default: a generated adjective_noun).
    #[arg(long)]
    pub name: Option<String>,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Restart policy: no, on-failure[:N] or always.
    #[arg(long, value_name = "POLICY")]
    pub restart: Option<String>,
    /// USER[:GROUP], names (from the image's /etc/passwd) or ids.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory inside the container.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Replaces the image's entrypoint (and its default command); a JSON array is allowed.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Read environment entries from a file (KEY=VALUE or KEY lines; # comments).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<std::path::PathBuf>,
    /// KEY=VALUE metadata, shown by inspect (repeatable).
    #[arg(short, long = "label", value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// CPUs' worth of time, e.g. 0.5 or 2.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Add a Linux capability (repeatable; ALL for all).
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a Linux capability (repeatable; ALL for all).
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Publish a container port on this host: [IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]
    /// (repeatable). The mapping moves with the container when it migrates.
    #[arg(short, long = "publish", value_name = "[IP:]HOST:CTR[/PROTO]")]
    pub publish: Vec<String>,
    /// Static IP in the host's subnet (default: allocated).
    #[arg(long)]
    pub ip: Option<String>,
    /// Named volume: NAME:/path[:ro]
    #[arg(short, long = "volume")]
    pub volume: Vec<String>,
    /// Memory limit in bytes (suffixes k, m, g allowed).
    #[arg(long)]
    pub memory: Option<String>,
    /// The container's hostname (default: its short id).
    #[arg(long)]
    pub hostname: Option<String>,
    /// A nameserver for the container's /etc/resolv.conf, instead of the host's (repeatable).
    #[arg(long = "dns", value_name = "IP")]
    pub dns: Vec<String>,
    /// An entry for the container's /etc/hosts (repeatable).
    #[arg(long = "add-host", value_name = "NAME:IP")]
    pub add_host: Vec<String>,
    pub image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

/// Signals a foreground `run` passes on to the container (Docker's `--sig-proxy`).
const FORWARDED: [(libc::c_int, &str); 6] = [
    (libc::SIGINT, "SIGINT"),
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGHUP, "SIGHUP"),
    (libc::SIGQUIT, "SIGQUIT"),
    (libc::SIGUSR1, "SIGUSR1"),
    (libc::SIGUSR2, "SIGUSR2"),
];

pub async fn run(socket: &std::path::Path, a: RunArgs, json: bool) -> Result<()> {
    let c = &Client::new(socket.to_owned());
    if a.rm && !a.detach && a.restart.is_some() {
        anyhow::bail!("--rm and --restart cannot be combined: a removed container cannot restart");
    }
    let mut env = Vec::new();
    for f in &a.env_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading the env file {}", f.display()))?;
        env.extend(env_file_entries(&text));
    }
    env.extend(a.env.iter().cloned());
    let env = resolve_env(env, |k| std::env::var(k).ok());
    let entrypoint = a.entrypoint.as_deref().map(parse_entrypoint).transpose()?;
    let req = RunRequest {
        name: a.name.clone().unwrap_or_default(),
        image: a.image,
        cmd: a.cmd,
        env,
        ip: a.ip,
        volumes: a.volume,
        memory: a.memory.as_deref().map(parse_bytes).transpose()?,
        hostname: a.hostname,
        dns: a.dns,
        add_hosts: a.add_host,
        user: a.user,
        workdir: a.workdir,
        entrypoint,
        labels: a.label,
        cpus: a.cpus,
        read_only: a.read_only,
        cap_add: a.cap_add,
        cap_drop: a.cap_drop,
        // In the foreground the CLI removes the container itself once it has its exit code;
        // detached (or with a terminal one may detach from), ferryd does it.
        auto_remove: a.rm && (a.detach || a.tty),
        restart: a.restart,
        publish: a.publish,
        tty: a.tty,
        interactive: a.interactive,
    };
    // Listen before the container exists: a Ctrl-C right after it starts must reach it. With
    // a terminal that takes this one's keys (-it), Ctrl-C is a key for the container instead.
    let signals = if a.detach || (a.tty && a.interactive) {
        None
    } else {
        Some(SignalProxy::install()?)
    };
    let reply: RunReply = c.call(Method::POST, "/v1/containers", Some(req)).await?;
    // On stderr, before anything else: a peer that uses `--ip` (or could not be asked).
    for w in &reply.warnings {
        eprintln!("ferry: warning: {w}");
    }
    let name = reply.record.config.name.clone();
    if a.detach {
        if json {
            output::print_json(&reply)?;
        } else {
            println!("{}", reply.record.config.id);
        }
        return Ok(());
    }
    let forward = signals.map(|s| s.forward_to(socket.to_owned(), name.clone()));
    if a.tty {
        return run_tty(c, socket, &name, a.interactive).await;
    }
    if a.interactive {
        crate::attach::feed_stdin(socket, &name).await?;
    }
    // The container's stdout to ours, its stderr to ours, until it stops.
    let follow = crate::logs::Options {
        follow: true,
        ..Default::default()
    };
    let streamed = crate::logs::print(c, &name, &follow).await;
    if let Some(f) = forward {
        f.abort();
    }
    streamed?;
    let code = exit_code(c, &name).await?;
    if a.rm {
        let removed: Result<ContainerRecord> = c
            .call(
                Method::DELETE,
                &format!("/v1/containers/{}?force=true", enc(&name)),
                None::<()>,
            )
            .await;
        if let Err(e) = removed {
            eprintln!("ferry: --rm: could not remove {name}: {e:#}");
        }
    }
    std::process::exit(code);
}

/// `run -t`: this terminal attached to the container's pty until it exits (then its exit
/// code is ours) or the user detaches (exit 0, the container keeps running).
async fn run_tty(c: &Client, socket: &std::path::Path, name: &str, stdin: bool) -> Result<()> {
    match crate::attach::session(socket, name, stdin).await {
        Ok(crate::attach::Ended::Exited(code)) => std::process::exit(code),
        Ok(crate::attach::Ended::Detached) => Ok(()),
        // It exited before the CLI could attach: its output is in the log.
        Err(_) if !is_running(c, name).await => {
            crate::logs::print(c, name, &Default::default()).await?;
            std::process::exit(exit_code(c, name).await?)
        }
        Err(e) => Err(e),
    }
}

async fn is_running(c: &Client, name: &str) -> bool {
    let path = format!("/v1/containers/{}", enc(name));
    let rec: Result<ContainerRecord> = c.call(Method::GET, &path, None::<()>).await;
    rec.is_ok_and(|r| r.status == Status::Running)
}

/// `KEY=VALUE` entries pass as they are; a bare `KEY` takes this process's value, and is
/// skipped when there is none (Docker's rule).
fn resolve_env(entries: Vec<String>, lookup: impl Fn(&str) -> Option<String>) -> Vec<String> {
    entries
        .into_iter()
        .filter_map(|e| {
            if e.contains('=') {
                Some(e)
            } else {
                lookup(&e).map(|v| format!("{e}={v}"))
            }
        })
        .collect()
}

/// The entries of an `--env-file`: one per line, blank lines and `#` comments skipped.
fn env_file_entries(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim_start())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('\r').to_owned())
        .collect()
}

/// `--entrypoint /bin/sh` or `--entrypoint '["/bin/sh","-c"]'`; an empty string clears it.
fn parse_entrypoint(s: &str) -> Result<Vec<String>> {
    if s.trim_start().starts_with('[') {
        return serde_json::from_str(s)
            .with_context(|| format!("--entrypoint {s:?} is not a JSON array of strings"));
    }
    Ok(if s.is_empty() {
        Vec::new()
    } else {
        vec![s.to_owned()]
    })
}

/// Waits for the container to leave `running` and turns how it ended into an exit code.
async fn exit_code(c: &Client, name: &str) -> Result<i32> {
    let path = format!("/v1/containers/{}", enc(name));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let rec: ContainerRecord = c.call(Method::GET, &path, None::<()>).await?;
        match rec.status {
            Status::Running if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Status::Stopped => {
                let exit = rec.exit.as_ref();
                return Ok(
                    match (exit.and_then(|e| e.code), exit.and_then(|e| e.signal)) {
                        (Some(code), _) => code,
                        (None, Some(sig)) => 128 + sig,
                        // The shim could not tell (it died with the container): Docker's "unknown".
                        (None, None) => 125,
                    },
                );
            }
            other => {
                eprintln!(
                    "ferry: container {name} is {other}; it keeps its state (see `ferry ps -a`)"
                );
                return Ok(0);
            }
        }
    }
}

/// The signals a foreground `run` receives, caught so they reach the container instead of
/// ending the CLI.
struct SignalProxy {
    streams: Vec<(tokio::signal::unix::Signal, &'static str)>,
}

impl SignalProxy {
    fn install() -> Result<SignalProxy> {
        use tokio::signal::unix::{signal, SignalKind};
        let streams = FORWARDED
            .iter()
            .map(|(n, name)| {
                signal(SignalKind::from_raw(*n))
                    .map(|s| (s, *name))
                    .with_context(|| format!("catching {name} to forward it to the container"))
            })
            .collect::<Result<_>>()?;
        Ok(SignalProxy { streams })
    }

    /// Forwards every caught signal to the container's main process, as `ferry kill` would.
    fn forward_to(self, socket: std::path::PathBuf, name: String) -> tokio::task::JoinHandle<()> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
        for (mut s, sig) in self.streams {
            let tx = tx.clone();
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if tx.send(sig).is_err() {
                        return;
                    }
                }
            });
        }
        tokio::spawn(async move {
            let c = Client::new(socket);
            while let Some(sig) = rx.recv().await {
                let req = KillRequest {
                    signal: Some(sig.to_owned()),
                    all: false,
                };
                let sent: Result<serde_json::Value> = c
                    .call(
                        Method::POST,
                        &format!("/v1/containers/{}/kill", enc(&name)),
                        Some(req),
                    )
                    .await;
                if let Err(e) = sent {
                    eprintln!("ferry: could not forward {sig} to {name}: {e:#}");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_from_the_caller_and_from_files() {
        let lookup = |k: &str| (k == "HOME_X").then(|| "/home/x".to_owned());
        let env = resolve_env(
            vec!["A=1".into(), "HOME_X".into(), "UNSET_Y".into(), "B=".into()],
            lookup,
        );
        assert_eq!(env, ["A=1", "HOME_X=/home/x", "B="]);
        let f = env_file_entries("# c\n\nA=1\n  B=two words\r\nC\n");
        assert_eq!(f, ["A=1", "B=two words", "C"]);
        assert_eq!(parse_entrypoint("/bin/sh").unwrap(), ["/bin/sh"]);
        assert_eq!(
            parse_entrypoint(r#"["/bin/sh","-c"]"#).unwrap(),
            ["/bin/sh", "-c"]
        );
        assert!(parse_entrypoint("").unwrap().is_empty());
        assert!(parse_entrypoint("[oops").is_err());
    }
}
