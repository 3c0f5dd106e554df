//! `ferry pull`, `push`, `tag`, `image inspect`, `login` and `logout`. ferryd does the work;
//! pull and push follow its NDJSON progress stream and draw a bar per blob.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context, Result};
use ferry_core::api::{
    LoginRequest, LoginResponse, LogoutRequest, LogoutResponse, PullRequest, PushRequest,
    TagRequest,
};
use ferry_core::image::registry::{TransferEvent, TransferResult};
use ferry_core::image::Image;
use http_body_util::BodyExt;
use hyper::Method;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::client::{api_error, Client};
use crate::output::{human_bytes, print_json};

/// Plain HTTP, for a registry without TLS.
#[derive(clap::Args, Debug, Clone)]
pub struct TlsArgs {
    /// Reach the registry over plain HTTP (it has no TLS). Same as --tls-verify=false.
    #[arg(long)]
    insecure: bool,
    /// false: reach the registry over plain HTTP (Podman's spelling of --insecure).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    tls_verify: bool,
}

impl TlsArgs {
    fn insecure(&self) -> bool {
        self.insecure || !self.tls_verify
    }
}

#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// [REGISTRY/]REPOSITORY[:TAG|@DIGEST]
    reference: String,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// The local image: name, id or id prefix.
    image: String,
    /// Where to push it: REGISTRY/REPOSITORY[:TAG] (default: IMAGE).
    reference: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// The registry, HOST[:PORT].
    registry: String,
    #[arg(short, long)]
    username: Option<String>,
    /// Read the password from stdin (one line), e.g. `echo "$PW" | ferry login --password-stdin`.
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    tls: TlsArgs,
}

pub async fn pull(c: &Client, a: PullArgs, json: bool) -> Result<()> {
    let req = PullRequest {
        reference: a.reference.clone(),
        insecure: a.tls.insecure(),
    };
    let r = transfer(c, "/v1/images/pull", serde_json::to_value(req)?, json).await?;
    if json {
        print_json(&r)?;
    } else {
        println!("{}", r.id);
    }
    Ok(())
}

pub async fn push(c: &Client, a: PushArgs, json: bool) -> Result<()> {
    let req = PushRequest {
        image: a.image,
        reference: a.reference,
        insecure: a.tls.insecure(),
    };
    let r = transfer(c, "/v1/images/push", serde_json::to_value(req)?, json).await?;
    if json {
        print_json(&r)?;
    } else {
        println!("{}@{}", r.reference, r.registry_digest);
    }
    Ok(())
}

pub async fn tag(c: &Client, image: String, name: String, json: bool) -> Result<()> {
    let img: Image = c
        .call(
            Method::POST,
            "/v1/images/tag",
            Some(TagRequest { image, name }),
        )
        .await?;
    if json {
        print_json(&img)?;
    } else {
        println!("{}", img.names.join(" "));
    }
    Ok(())
}

pub async fn inspect(c: &Client, reference: String) -> Result<()> {
    let img: Image = c
        .call(
            Method::GET,
            &format!("/v1/images/{}/json", crate::enc(&reference)),
            None::<()>,
        )
        .await?;
    print_json(&img)
}

pub async fn login(c: &Client, a: LoginArgs, json: bool) -> Result<()> {
    let username = match a.username {
        Some(u) => u,
        None => {
            if a.password_stdin {
                bail!("--password-stdin needs --username");
            }
            prompt("Username: ")?
        }
    };
    let password = if a.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        prompt_hidden("Password: ")?
    };
    if password.is_empty() {
        bail!("empty password");
    }
    let resp: LoginResponse = c
        .call(
            Method::POST,
            "/v1/registries/login",
            Some(LoginRequest {
                registry: a.registry,
                username,
                password,
                insecure: a.tls.insecure(),
            }),
        )
        .await?;
    if json {
        print_json(&resp)?;
    } else {
        println!(
            "Login Succeeded: {} as {} (stored by ferryd in {})",
            resp.registry, resp.username, resp.stored_in
        );
    }
    Ok(())
}

pub async fn logout(c: &Client, registry: String, json: bool) -> Result<()> {
    let resp: LogoutResponse = c
        .call(
            Method::POST,
            "/v1/registries/logout",
            Some(LogoutRequest { registry }),
        )
        .await?;
    if json {
        print_json(&resp)?;
    } else if resp.removed {
        println!("Removed login credentials for {}", resp.registry);
    } else {
        println!("Not logged in to {}", resp.registry);
    }
    Ok(())
}

fn prompt(label: &str) -> Result<String> {
    eprint!("{label}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

/// Reads a line from the terminal with echo off (restored on the way out).
fn prompt_hidden(label: &str) -> Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("no terminal to ask for the password: use --password-stdin");
    }
    let saved = tcgetattr(&stdin).context("reading the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("turning echo off")?;
    let line = prompt(label);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    eprintln!();
    line
}

/// Sends a pull or push and follows its stream to the result, drawing progress on a
/// terminal (with --json, events go to stderr as they come, like `ferry migrate --json`).
async fn transfer(
    c: &Client,
    path: &str,
    body: serde_json::Value,
    json: bool,
) -> Result<TransferResult> {
    let resp = c.send(Method::POST, path, Some(body)).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let bytes = body.collect().await?.to_bytes();
        return Err(api_error(&bytes, status));
    }
    let mut bars = Bars::new(!json && std::io::stderr().is_terminal());
    let mut buf: Vec<u8> = Vec::new();
    let mut last = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.context(
            "ferryd ended the stream early (did it stop?); an interrupted pull registers nothing",
        )?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        buf.extend_from_slice(data);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let ev: TransferEvent = serde_json::from_slice(&line)?;
            if json {
                if !matches!(
                    ev,
                    TransferEvent::Done { .. } | TransferEvent::Failed { .. }
                ) {
                    eprintln!("{}", String::from_utf8_lossy(&line).trim_end());
                }
            } else {
                bars.show(&ev);
            }
            last = Some(ev);
        }
    }
    bars.finish();
    match last {
        Some(TransferEvent::Done { result }) => {
            if !json {
                eprintln!(
                    "{}: {} blobs moved ({}), {} already there, {} ms",
                    result.reference,
                    result.blobs_moved,
                    human_bytes(result.bytes),
                    result.blobs_present,
                    result.ms
                );
            }
            Ok(result)
        }
        Some(TransferEvent::Failed { error }) => bail!("{error}"),
        _ => bail!("ferryd ended the stream without a result; see its log"),
    }
}

/// One bar per blob, on a terminal only.
struct Bars {
    multi: Option<MultiProgress>,
    bars: HashMap<String, ProgressBar>,
}

impl Bars {
    fn new(draw: bool) -> Self {
        Bars {
            multi: draw.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            bars: HashMap::new(),
        }
    }

    fn show(&mut self, ev: &TransferEvent) {
        let Some(multi) = &self.multi else {
            if let TransferEvent::Note { message } = ev {
                eprintln!("{message}");
            }
            return;
        };
        let style = ProgressStyle::with_template(
            "{prefix:.bold} {bar:30} {bytes:>10}/{total_bytes:<10} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        match ev {
            TransferEvent::Resolved {
                reference,
                digest,
                blobs,
            } => {
                let _ = multi.println(format!("{reference}: {digest}"));
                for b in blobs {
                    let bar = multi.add(ProgressBar::new(b.size));
                    bar.set_style(style.clone());
                    let short = b.digest.strip_prefix("sha256:").unwrap_or(&b.digest);
                    bar.set_prefix(format!("{:<6} {}", b.kind, &short[..short.len().min(12)]));
                    self.bars.insert(b.digest.clone(), bar);
                }
            }
            TransferEvent::Blob { digest, bytes, .. } => {
                if let Some(b) = self.bars.get(digest) {
                    b.set_position(*bytes);
                }
            }
            TransferEvent::BlobDone {
                digest,
                size,
                skipped,
            } => {
                if let Some(b) = self.bars.get(digest) {
                    b.set_position(*size);
                    b.finish_with_message(if *skipped { "already there" } else { "done" });
                }
            }
            TransferEvent::Note { message } => {
                let _ = multi.println(message);
            }
            TransferEvent::Done { .. } | TransferEvent::Failed { .. } => {}
        }
    }

    fn finish(&mut self) {
        for b in self.bars.values() {
            if !b.is_finished() {
                b.abandon();
            }
        }
        if self.multi.is_some() && !self.bars.is_empty() {
            // The bars stay; what follows starts on a line of its own.
            eprintln!();
        }
    }
}
