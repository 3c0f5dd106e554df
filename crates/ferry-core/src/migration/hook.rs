//! Holding a dumped source container at CRIU's `post-dump` until the migration's verdict.
//!
//! Each container's CRIU config names an action script that runs `ferryd criu-hook`. When a
//! migration checkpoints, it sets `FERRY_HOOK_SOCKET` in runc's environment (CRIU passes it on
//! to the script). The hook reports every action to the socket and, at `post-dump`, waits for
//! the verdict: `ok` lets CRIU kill the source; anything else makes CRIU unlock the network and
//! thaw the source, so the container keeps running where it was. Without the variable (a plain
//! `ferry checkpoint`) the hook returns at once.
//!
//! If ferryd dies while the hook waits, the hook reads the migration's durable record
//! (`FERRY_HOOK_RECORD`): before `Commit` was sent it resumes the source at once; once the
//! migration is in doubt it keeps the source frozen and waits for the restarted ferryd, which
//! rebinds the same socket and answers after asking the destination (see `commit`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::record::Stage;
use crate::runtime::freezer::Freezer;

pub use crate::criu::HOOK_SOCKET_ENV;
pub const HOOK_RECORD_ENV: &str = "FERRY_HOOK_RECORD";

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CRIU did not reach {action} within {waited:?}")]
    Timeout { action: String, waited: Duration },
    #[error("the checkpoint ended before reaching {0}")]
    Ended(String),
}

/// One CRIU action reported by the hook, with the time it arrived.
#[derive(Debug, Clone)]
pub struct HookEvent {
    pub action: String,
    pub at: Instant,
}

/// How long the hook's own freeze may take before it leaves the freezing to CRIU.
const PRE_DUMP_FREEZE: Duration = Duration::from_secs(2);

/// The migration's side: listens for the hook and answers it.
pub struct HookServer {
    path: PathBuf,
    events: mpsc::Receiver<HookEvent>,
    verdict_tx: mpsc::Sender<bool>,
    seen: Vec<HookEvent>,
}

impl HookServer {
    pub fn bind(path: &Path) -> Result<Self, HookError> {
        Self::bind_freezing(path, None)
    }

    /// [`HookServer::bind`]; at CRIU's `pre-dump` (which runs just before CRIU freezes the
    /// container) the hook freezes `freezer` itself first. CRIU's own cgroup-v1 freeze looks
    /// at the state every 100 ms and, seeing FREEZING at first, costs the frozen window 100 ms;
    /// a cgroup already FROZEN it takes as it is. If this freeze fails, CRIU freezes as usual.
    /// A dump that fails then leaves the cgroup frozen: the rollback thaws it (and checks).
    pub fn bind_freezing(path: &Path, freezer: Option<Freezer>) -> Result<Self, HookError> {
        let _ = std::fs::remove_file(path);
        let io_err = |source| HookError::Io {
            path: path.to_owned(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(io_err)?;
        let (ev_tx, events) = mpsc::channel();
        let (verdict_tx, verdict_rx) = mpsc::channel::<bool>();
        std::thread::spawn(move || serve(&listener, &ev_tx, &verdict_rx, freezer.as_ref()));
        Ok(HookServer {
            path: path.to_owned(),
            events,
            verdict_tx,
            seen: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every action seen so far, in order.
    pub fn seen(&self) -> &[HookEvent] {
        &self.seen
    }

    /// Waits for `action`; `alive` says whether the checkpoint process still runs.
    pub fn wait_for(
        &mut self,
        action: &str,
        timeout: Duration,
        mut alive: impl FnMut() -> bool,
    ) -> Result<HookEvent, HookError> {
        if let Some(e) = self.seen.iter().find(|e| e.action == action) {
            return Ok(e.clone());
        }
        let start = Instant::now();
        loop {
            match self.events.recv_timeout(Duration::from_millis(20)) {
                Ok(ev) => {
                    self.seen.push(ev.clone());
                    if ev.action == action {
                        return Ok(ev);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if !alive() {
                        // Drain anything that raced with the exit.
                        while let Ok(ev) = self.events.try_recv() {
                            self.seen.push(ev.clone());
                            if ev.action == action {
                                return Ok(ev);
                            }
                        }
                        return Err(HookError::Ended(action.to_owned()));
                    }
                    if start.elapsed() > timeout {
                        return Err(HookError::Timeout {
                            action: action.to_owned(),
                            waited: timeout,
                        });
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(HookError::Ended(action.to_owned()))
                }
            }
        }
    }

    /// Non-blocking: the event for `action` if it has arrived (for async callers that poll).
    pub fn poll(&mut self, action: &str) -> Option<HookEvent> {
        while let Ok(ev) = self.events.try_recv() {
            self.seen.push(ev);
        }
        self.seen.iter().find(|e| e.action == action).cloned()
    }

    /// Answers the waiting `post-dump`: true kills the source, false resumes it.
    pub fn verdict(&self, commit: bool) {
        let _ = self.verdict_tx.send(commit);
    }
}

impl Drop for HookServer {
    fn drop(&mut self) {
        // Never leave CRIU hanging: no verdict means resume.
        let _ = self.verdict_tx.send(false);
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(
    listener: &UnixListener,
    events: &mpsc::Sender<HookEvent>,
    verdict: &mpsc::Receiver<bool>,
    freezer: Option<&Freezer>,
) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let mut line = String::new();
        if BufReader::new(&conn).read_line(&mut line).is_err() {
            continue;
        }
        let action = line.trim().to_owned();
        let at = Instant::now();
        if action == "pre-dump" {
            if let Some(f) = freezer {
                if let Err(e) = f.freeze(PRE_DUMP_FREEZE) {
                    tracing::warn!(error = %e, "freezing at pre-dump; CRIU freezes instead");
                }
            }
        }
        if events
            .send(HookEvent {
                action: action.clone(),
                at,
            })
            .is_err()
        {
            let _ = conn.write_all(b"fail\n");
            return;
        }
        let answer = if action == "post-dump" {
            match verdict.recv() {
                Ok(true) => "ok",
                _ => "fail",
            }
        } else {
            "ok"
        };
        let _ = conn.write_all(format!("{answer}\n").as_bytes());
        if action == "post-dump" {
            return;
        }
    }
}

/// The hook itself (`ferryd criu-hook`): returns the exit code CRIU should see.
pub fn run_hook() -> i32 {
    let Some(sock) = std::env::var_os(HOOK_SOCKET_ENV) else {
        return 0;
    };
    let action = std::env::var("CRTOOLS_SCRIPT_ACTION").unwrap_or_default();
    let record = std::env::var_os(HOOK_RECORD_ENV).map(PathBuf::from);
    loop {
        match ask(Path::new(&sock), &action) {
            Some(answer) => return i32::from(answer != "ok"),
            // Post-copy: the lazy page server is up, after `post-dump` was answered (the hook
            // socket is closed by then). Nothing to decide here; failing would end the
            // transfer and thaw the source.
            None if action == "status-ready" => return 0,
            // ferryd is gone. Before post-dump nothing is held: fail, CRIU resumes.
            None if action != "post-dump" => return 1,
            // Held at post-dump: the record decides. Committed: let the source go. In doubt
            // (the destination may already serve): wait for the restarted ferryd's verdict.
            // Anything else: resume.
            None => match recorded_stage(record.as_deref()) {
                Some(Stage::Committed) => return 0,
                Some(Stage::InDoubt) => std::thread::sleep(Duration::from_millis(500)),
                _ => return 1,
            },
        }
    }
}

/// One exchange with ferryd; `None` if it is not there or went away before answering.
fn ask(sock: &Path, action: &str) -> Option<String> {
    let mut conn = UnixStream::connect(sock).ok()?;
    conn.write_all(format!("{action}\n").as_bytes()).ok()?;
    let mut answer = String::new();
    match BufReader::new(&conn).read_line(&mut answer) {
        Ok(n) if n > 0 => Some(answer.trim().to_owned()),
        _ => None,
    }
}

fn recorded_stage(record: Option<&Path>) -> Option<Stage> {
    let bytes = std::fs::read(record?).ok()?;
    serde_json::from_slice::<super::record::MigrationRecord>(&bytes)
        .ok()
        .map(|r| r.stage)
}

#[cfg(test)]
// Test workloads (sleep, sh) are processes to act on, not tools: spawned directly, not via Tool.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn client(sock: &Path, action: &str) -> std::thread::JoinHandle<String> {
        let sock = sock.to_owned();
        let action = action.to_owned();
        std::thread::spawn(move || {
            let mut c = UnixStream::connect(&sock).unwrap();
            c.write_all(format!("{action}\n").as_bytes()).unwrap();
            let mut a = String::new();
            BufReader::new(&c).read_line(&mut a).unwrap();
            a.trim().to_owned()
        })
    }

    #[test]
    fn post_dump_waits_for_verdict() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("hook.sock");
        let mut srv = HookServer::bind(&sock).unwrap();
        assert_eq!(client(&sock, "network-lock").join().unwrap(), "ok");
        let waiting = client(&sock, "post-dump");
        srv.wait_for("post-dump", Duration::from_secs(5), || true)
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !waiting.is_finished(),
            "post-dump must block until the verdict"
        );
        srv.verdict(true);
        assert_eq!(waiting.join().unwrap(), "ok");
        assert_eq!(srv.seen()[0].action, "network-lock");
    }

    #[test]
    fn dropped_server_resumes_the_source() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("hook.sock");
        let mut srv = HookServer::bind(&sock).unwrap();
        let waiting = client(&sock, "post-dump");
        srv.wait_for("post-dump", Duration::from_secs(5), || true)
            .unwrap();
        drop(srv);
        assert_eq!(waiting.join().unwrap(), "fail");
    }

    #[test]
    fn ended_checkpoint_is_reported() {
        let t = tempfile::tempdir().unwrap();
        let mut srv = HookServer::bind(&t.path().join("h.sock")).unwrap();
        let e = srv
            .wait_for("post-dump", Duration::from_secs(5), || false)
            .unwrap_err();
        assert!(matches!(e, HookError::Ended(_)));
    }

    #[test]
    fn pre_dump_freezes_the_container_before_criu_would() {
        let root = Path::new(crate::runtime::freezer::FREEZER_ROOT);
        if !root.exists() {
            eprintln!("SKIPPED: no cgroup-v1 freezer at {}", root.display());
            return;
        }
        let cg = root.join(format!("ferry-hook-test-{}", std::process::id()));
        std::fs::create_dir(&cg).unwrap();
        let mut task = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(cg.join("tasks"), task.id().to_string()).unwrap();
        let freezer = Freezer::at(&cg);
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("hook.sock");
        let srv = HookServer::bind_freezing(&sock, Some(freezer.clone())).unwrap();
        assert_eq!(client(&sock, "pre-dump").join().unwrap(), "ok");
        let state = freezer.state().unwrap();
        freezer.thaw(Duration::from_secs(5)).unwrap();
        drop(srv);
        let _ = task.kill();
        let _ = task.wait();
        let _ = std::fs::remove_dir(&cg);
        assert_eq!(state, crate::runtime::freezer::FreezerState::Frozen);
    }
}
