//! The socket a stop-and-copy dump sends its pages into.
//!
//! `runc checkpoint --page-server ADDR` makes CRIU connect to a page server over TCP. On the
//! source that server was ferryd's own tunnel, so every page crossed loopback TCP before it was
//! framed for the peer, and the TCP stack on both ends of that leg cost about 0.35 CPU-seconds per
//! 1.4 GiB on the project's 2-core machine (bench/README.md), inside the frozen window. CRIU can
//! instead send into a socket it is handed (`--ps-socket FD`). runc has no flag for it, but it
//! passes its environment and its inherited fds on to CRIU, and CRIU reads options from the
//! config file named by `CRIU_CONFIG_FILE`. So a [`PageSocket`] is a unix socket pair: ferryd
//! reads one end, CRIU gets the other at the same fd number, and a config file in the dump's
//! work dir says `ps-socket N`.
//!
//! runc keeps its copy of CRIU's end until it exits, so CRIU closing its own never reads as the
//! end of the stream here; the owner ends the tunnel's input (`peer::tunnel::EndInput`) once CRIU
//! reports `post-dump` (which it runs after the page server answered its CLOSE).
//!
//! runc still needs `--page-server` (it is what turns the page server on, and runc drops it when
//! the port is 0); [`PageSocket::ADDR`] is never connected to. Should a CRIU ever ignore the
//! config file, it would try that address, where nothing listens (binding port 1 takes root,
//! which could read the container's memory anyway), and the dump would fail instead of sending
//! the pages elsewhere.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::CriuError;

/// The variable CRIU reads an extra config file from (after its global and user ones, before
/// the RPC settings, which runc leaves alone for this option).
pub const CONFIG_FILE_ENV: &str = "CRIU_CONFIG_FILE";
const CONFIG_FILE: &str = "criu-page-socket.conf";

/// A unix socket pair for CRIU's page stream; see the module docs.
#[derive(Debug)]
pub struct PageSocket {
    /// CRIU's end, close-on-exec here: only the dump's child inherits it ([`Self::pass_to`]).
    criu: Option<OwnedFd>,
    config: PathBuf,
}

impl PageSocket {
    /// runc's `--page-server`: port 1 of loopback (see the module docs).
    pub const ADDR: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);

    /// The pair, and the config file naming CRIU's end, in `work` (the dump's CRIU work dir).
    /// Returns ferryd's end alongside.
    pub fn new(work: &Path) -> Result<(Self, UnixStream), CriuError> {
        let (ours, criu) = UnixStream::pair().map_err(|e| CriuError::io(work, e))?;
        let criu = OwnedFd::from(criu);
        let config = work.join(CONFIG_FILE);
        crate::fsutil::write_atomic(
            &config,
            format!("ps-socket {}\n", criu.as_raw_fd()).as_bytes(),
            0o600,
        )
        .map_err(|e| CriuError::io(&config, e))?;
        let socket = PageSocket {
            criu: Some(criu),
            config,
        };
        Ok((socket, ours))
    }

    /// The config file for [`CONFIG_FILE_ENV`] in runc's environment.
    pub fn config_file(&self) -> &Path {
        &self.config
    }

    /// Lets the child of `cmd` (and only it) inherit CRIU's end.
    pub fn pass_to(&self, cmd: &mut Command) {
        if let Some(fd) = &self.criu {
            crate::tool::inherit_fd(cmd, fd.as_raw_fd());
        }
    }

    /// Drops our copy of CRIU's end once the child has it: then only the child's copies keep it
    /// open (runc's among them, see the module docs).
    pub fn spawned(&mut self) {
        self.criu = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// bash, not sh: dash cannot redirect to an fd above 9, which CRIU's end often is.
    fn sh(script: &str) -> Command {
        crate::tool::Tool::new("bash")
            .args(["-c", script])
            .command()
    }

    /// The fd number the config file names.
    fn named_fd(ps: &PageSocket) -> i32 {
        let conf = std::fs::read_to_string(ps.config_file()).unwrap();
        conf.strip_prefix("ps-socket ")
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn the_config_names_the_fd_the_child_inherits() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ps, mut ours) = PageSocket::new(dir.path()).unwrap();
        let fd = named_fd(&ps);

        // A child writes into the fd the config names; we read it on our end.
        let mut cmd = sh(&format!("printf pages >&{fd}"));
        ps.pass_to(&mut cmd);
        let status = cmd.status().unwrap();
        ps.spawned();
        assert!(status.success());
        let mut got = String::new();
        ours.read_to_string(&mut got).unwrap(); // EOF: no copy of CRIU's end is left here
        assert_eq!(got, "pages");

        // A child that keeps CRIU's end open (as runc does): we read what it sent; the end of
        // the stream is then the tunnel's to declare (see `peer::tunnel::EndInput`).
        let (mut ps3, mut ours) = PageSocket::new(dir.path()).unwrap();
        let mut cmd = sh(&format!("printf last >&{}; exec sleep 5", named_fd(&ps3)));
        ps3.pass_to(&mut cmd);
        let mut holder = cmd.spawn().unwrap();
        ps3.spawned();
        let mut first = [0u8; 4];
        ours.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"last");
        holder.kill().unwrap();
        holder.wait().unwrap();
        let mut rest = Vec::new();
        ours.read_to_end(&mut rest).unwrap(); // the holder gone, so is the last copy
        assert!(rest.is_empty());

        // A child spawned without pass_to does not get it.
        let (ps2, _ours) = PageSocket::new(dir.path()).unwrap();
        let out = sh(&format!("printf x >&{}", named_fd(&ps2)))
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "the fd leaked into an unrelated child"
        );
    }
}
