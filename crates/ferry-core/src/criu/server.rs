//! The long-running CRIU process on a post-copy destination, the lazy-pages daemon (pulls pages
//! from the source on demand after the restore), and what runs CRIU processes that must signal
//! readiness: CRIU's `--status-fd`, so `spawn` returns only once they listen, and fails with
//! CRIU's log excerpt if they die first. (A stop-and-copy destination needs no CRIU process
//! for the pages: ferryd receives them itself, see `page_receiver`.)

use std::io::Read;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::fcntl::OFlag;

use super::log::explain_log;
use super::{criu_tool, CriuError};
use crate::tool::Tool;

/// How long CRIU may take to start listening before ferry gives up on it.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A CRIU process that signalled readiness, with its log and its stderr drained in the background
/// (an undrained pipe would block CRIU once full).
#[derive(Debug)]
pub(super) struct CriuChild {
    what: &'static str,
    child: Option<Child>,
    log_path: PathBuf,
    stderr: Option<JoinHandle<String>>,
}

impl CriuChild {
    pub(super) fn spawn_ready(
        what: &'static str,
        tool: Tool,
        log_path: &Path,
    ) -> Result<Self, CriuError> {
        let mut ready = ReadySignal::new()?;
        let tool = tool.arg("--status-fd").arg(ready.fd().to_string());
        tracing::debug!(tool = %tool.name(), args = %tool.display_args(), "spawn");
        let mut cmd = tool.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        ready.pass_to(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| tool.spawn_error(e))?;
        ready.spawned();
        let stderr = child.stderr.take().map(|mut s| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                String::from_utf8_lossy(&buf).trim().to_owned()
            })
        });
        let mut this = CriuChild {
            what,
            child: Some(child),
            log_path: log_path.to_owned(),
            stderr,
        };
        match ready.wait(READY_TIMEOUT) {
            Ok(()) => Ok(this),
            Err(why) => {
                this.kill_now();
                let status = this
                    .child
                    .as_mut()
                    .and_then(|c| c.wait().ok())
                    .map(|s| s.to_string())
                    .unwrap_or(why);
                Err(CriuError::NotReady {
                    what,
                    status,
                    stderr: this.take_stderr(),
                    excerpt: explain_log(&this.log_path),
                })
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub(super) fn wait(mut self) -> Result<(), CriuError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let status = child.wait().map_err(|e| CriuError::io(&self.log_path, e))?;
        let stderr = self.take_stderr();
        if status.success() {
            return Ok(());
        }
        Err(CriuError::Failed {
            what: self.what,
            status,
            stderr,
            excerpt: explain_log(&self.log_path),
        })
    }

    fn try_wait(&mut self) -> Result<Option<()>, CriuError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(Some(()));
        };
        match child
            .try_wait()
            .map_err(|e| CriuError::io(&self.log_path, e))?
        {
            None => Ok(None),
            Some(status) => {
                self.child = None;
                let stderr = self.take_stderr();
                if status.success() {
                    Ok(Some(()))
                } else {
                    Err(CriuError::Failed {
                        what: self.what,
                        status,
                        stderr,
                        excerpt: explain_log(&self.log_path),
                    })
                }
            }
        }
    }

    /// Kills our own child (by its pid, via std) and reaps it; a no-op once it has exited.
    fn kill_now(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
        }
    }

    fn kill(&mut self) {
        self.kill_now();
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        self.take_stderr();
    }

    fn take_stderr(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for CriuChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// CRIU's readiness signal (`--status-fd`, also passed on by `runc checkpoint --lazy-pages`):
/// a pipe whose write end only the child inherits. CRIU writes one byte once it listens; end
/// of file means it exited first.
#[derive(Debug)]
pub struct ReadySignal {
    rx: OwnedFd,
    tx: Option<OwnedFd>,
}

impl ReadySignal {
    pub fn new() -> Result<Self, CriuError> {
        let (rx, tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| CriuError::Io {
            path: PathBuf::from("pipe"),
            source: e.into(),
        })?;
        Ok(ReadySignal { rx, tx: Some(tx) })
    }

    /// The fd number to name in `--status-fd`.
    pub fn fd(&self) -> i32 {
        self.tx.as_ref().map(|t| t.as_raw_fd()).unwrap_or(-1)
    }

    /// Lets the child of `cmd` (and only it) inherit the write end.
    pub fn pass_to(&self, cmd: &mut Command) {
        crate::tool::inherit_fd(cmd, self.fd());
    }

    /// Drops our write end once the child has it, so its exit reads as end of file.
    pub fn spawned(&mut self) {
        self.tx = None;
    }

    /// Blocks until the byte arrives (Ok), the child exits first, or `timeout` passes.
    pub fn wait(self, timeout: Duration) -> Result<(), String> {
        let (tx, result) = mpsc::channel();
        let rx = self.rx;
        std::thread::spawn(move || {
            let mut file = std::fs::File::from(rx);
            let mut byte = [0u8; 1];
            let _ = tx.send(file.read(&mut byte).map(|n| n == 1));
        });
        match result.recv_timeout(timeout) {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err("exited".into()),
            Ok(Err(e)) => Err(format!("status pipe: {e}")),
            Err(_) => Err(format!("not ready after {}s", timeout.as_secs())),
        }
    }
}

/// A port on `addr`'s IP that is free right now.
pub(super) fn free_port(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0))?;
    listener.local_addr()
}

/// A loopback port free right now, for a CRIU server that cannot take port 0.
pub fn free_loopback_port() -> std::io::Result<u16> {
    free_port(SocketAddr::from(([127, 0, 0, 1], 0))).map(|a| a.port())
}

/// `criu lazy-pages` on the post-copy destination: serves page faults of the restored process
/// (through `lazy-pages.socket` in `work_dir`, which must be the restore's work dir) by pulling
/// pages from the source's page server at `source`. Exits once every page has been moved.
#[derive(Debug)]
pub struct LazyPagesDaemon {
    proc: CriuChild,
}

impl LazyPagesDaemon {
    pub fn spawn(
        images_dir: &Path,
        work_dir: &Path,
        source: SocketAddr,
        log: &Path,
    ) -> Result<Self, CriuError> {
        let tool = criu_tool()
            .arg("lazy-pages")
            .arg("--page-server")
            .arg("--address")
            .arg(source.ip().to_string())
            .arg("--port")
            .arg(source.port().to_string())
            .arg("--images-dir")
            .arg(images_dir)
            .arg("--work-dir")
            .arg(work_dir)
            .arg("-o")
            .arg(log)
            .arg("-v4");
        Ok(LazyPagesDaemon {
            proc: CriuChild::spawn_ready("lazy-pages", tool, log)?,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn log_path(&self) -> &Path {
        &self.proc.log_path
    }

    /// Waits until every page has been moved and the daemon exited.
    pub fn wait(self) -> Result<(), CriuError> {
        self.proc.wait()
    }

    /// `Some(())` once it exited successfully, `None` while it runs.
    pub fn try_wait(&mut self) -> Result<Option<()>, CriuError> {
        self.proc.try_wait()
    }

    /// Stops the daemon (also done on drop). The restored process loses its missing pages.
    pub fn kill(&mut self) {
        self.proc.kill()
    }
}

/// What a lazy-pages daemon moved, read from its log (verbosity 4): pages it had to handle,
/// pages it copied in, and page faults it served on demand (the rest went in the background).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LazyTransfer {
    pub total_pages: u64,
    pub copied_pages: u64,
    pub faults: u64,
}

impl LazyTransfer {
    pub fn from_log(text: &str) -> Self {
        let mut t = LazyTransfer::default();
        for line in text.lines() {
            if line.contains("#PF at 0x") {
                t.faults += 1;
            } else if let Some(rest) = after(line, "Found ") {
                if rest.contains("pages to be handled by UFFD") {
                    t.total_pages += leading_number(rest);
                }
            } else if let Some(rest) = after(line, "UFFD transferred pages: (") {
                t.copied_pages += leading_number(rest);
            }
        }
        t
    }

    pub fn read(log: &Path) -> Self {
        std::fs::read_to_string(log)
            .map(|s| Self::from_log(&s))
            .unwrap_or_default()
    }
}

fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| &line[i + marker.len()..])
}

fn leading_number(s: &str) -> u64 {
    let digits: String = s.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{absent, copy_images, restore_detached, serial, Need, Sleeper};
    use super::super::{read_dump_stats, CriuError};
    use super::*;

    fn loopback_any_port() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    #[test]
    fn lazy_transfer_is_read_from_the_daemon_log() {
        let log = "(00.01) uffd: 7-5: Found 300 pages to be handled by UFFD\n\
                   (00.02) uffd: 7-5: #PF at 0x7f0000001000\n\
                   (00.02) uffd: 7-5: uffd_copy: 0x7f0000001000/4096\n\
                   (00.03) uffd: 9-6: Found 20 pages to be handled by UFFD\n\
                   (00.03) uffd: 9-6: #PF at 0x5000\n\
                   (00.09) uffd: 7-5: UFFD transferred pages: (300/300)\n\
                   (00.09) uffd: 9-6: UFFD transferred pages: (19/20)\n";
        let t = LazyTransfer::from_log(log);
        assert_eq!(
            t,
            LazyTransfer {
                total_pages: 320,
                copied_pages: 319,
                faults: 2
            }
        );
    }

    /// A CRIU process that must be ready, for [`CriuChild`]'s own tests: a page server on `addr`.
    fn page_server(dir: &Path, addr: SocketAddr, log: &Path) -> Result<CriuChild, CriuError> {
        let tool = criu_tool()
            .arg("page-server")
            .arg("--images-dir")
            .arg(dir)
            .arg("--address")
            .arg(addr.ip().to_string())
            .arg("--port")
            .arg(addr.port().to_string())
            .arg("-o")
            .arg(log)
            .arg("-v4");
        CriuChild::spawn_ready("page-server", tool, log)
    }

    #[test]
    fn a_criu_that_cannot_get_ready_explains_why() {
        if absent(&[Need::Criu]) {
            return;
        }
        let dst = tempfile::tempdir().unwrap();
        let log = dst.path().join("ps.log");
        // TEST-NET-1: not an address of this host, so bind fails.
        let err = page_server(dst.path(), "192.0.2.1:7000".parse().unwrap(), &log).unwrap_err();
        assert!(matches!(err, CriuError::NotReady { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("criu page-server exited before it was ready"),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("see {}: Error (", log.display())),
            "{msg}"
        );
        assert!(msg.contains("Can't bind page server"), "{msg}");
    }

    #[test]
    fn a_killed_criu_is_reaped() {
        if absent(&[Need::Criu]) {
            return;
        }
        let dst = tempfile::tempdir().unwrap();
        let addr = free_port(loopback_any_port()).unwrap();
        let mut child = page_server(dst.path(), addr, &dst.path().join("ps.log")).unwrap();
        assert_eq!(child.try_wait().unwrap(), None);
        let pid = child.pid();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        child.kill();
        assert!(child.try_wait().unwrap().is_some());
        drop(child);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    /// Post-copy: the source dump keeps the pages and serves them; the restored process pulls
    /// them through the lazy-pages daemon.
    #[test]
    fn lazy_pages_daemon_serves_a_real_post_copy_restore() {
        if absent(&[Need::Root, Need::Criu]) {
            return;
        }
        let _turn = serial();
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let sleeper = Sleeper::spawn_in_pid_namespace();
        let pid = sleeper.pid();
        let dump_log = src.path().join("dump.log");
        let source_addr = free_port(loopback_any_port()).unwrap();
        let dump = criu_tool()
            .args(["dump", "-t", &pid.to_string(), "-D"])
            .arg(src.path())
            .args(["--lazy-pages", "--address", "127.0.0.1", "--port"])
            .arg(source_addr.port().to_string())
            .arg("-o")
            .arg(&dump_log)
            .arg("-v4");
        let source = CriuChild::spawn_ready("dump", dump, &dump_log).unwrap();

        copy_images(src.path(), dst.path());
        let daemon = LazyPagesDaemon::spawn(
            dst.path(),
            dst.path(),
            source_addr,
            &dst.path().join("lazy.log"),
        )
        .unwrap();
        assert!(dst.path().join("lazy-pages.socket").exists());

        let restored = restore_detached(dst.path(), &sleeper.tag(), &["--lazy-pages"]);
        let lazy_log = daemon.log_path().to_owned();
        daemon.wait().unwrap();
        source.wait().unwrap();
        let moved = LazyTransfer::read(&lazy_log);
        assert!(moved.total_pages > 0, "{moved:?}");
        assert_eq!(
            moved.copied_pages, moved.total_pages,
            "every page arrived: {moved:?}"
        );
        sleeper.reap();
        // Its argv lives in lazily restored memory: /proc/PID/cmdline can read empty for a
        // moment while the last pages land, so look again briefly before calling it dead.
        let alive = (0..50).any(|_| {
            restored.is_alive() || {
                std::thread::sleep(std::time::Duration::from_millis(40));
                false
            }
        });
        assert!(alive, "the lazily restored process runs on");
        // CRIU 4.2.1 writes stats-dump of a lazy dump only when the lazy transfer ends, and from
        // the page server's counters: it parses, but holds no page counts.
        read_dump_stats(src.path()).unwrap();
    }
}
