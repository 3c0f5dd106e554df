//! Debian's Podman next to a test [`Host`]: inside the host's network namespace (its bridge
//! and addresses stay there), with storage of its own that `Drop` removes. On this machine
//! Podman needs the cgroupfs manager, explicit ulimits (root lacks CAP_SYS_RESOURCE) and
//! ferry's CRIU (its runc would find Debian's otherwise).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::{fixture, tail, unmount_under, Host};

/// The ulimits every `podman run` here needs.
pub const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=4096:4096",
];

pub struct Podman {
    netns: String,
    dir: tempfile::TempDir,
    runroot: PathBuf,
}

impl Podman {
    /// Podman in `host`'s netns, or None (said loudly) when Podman is not installed.
    pub fn beside(host: &Host) -> Option<Podman> {
        if Command::new("podman").arg("--version").output().is_err() {
            eprintln!(
                "SKIPPED: podman is not installed, so the Podman interop cannot be tested \
                 (scripts/setup.sh installs it)"
            );
            return None;
        }
        // Lowercase (hex, not tempfile's mixed case): Podman names an OCI layout it pulls
        // after the layout's path.
        let dir = tempfile::Builder::new()
            .prefix(&crate::unique("ferry-e2e-podman-"))
            .rand_bytes(0)
            .tempdir_in("/var/tmp")
            .expect("podman tempdir");
        let runroot = PathBuf::from(format!(
            "/run/ferry-e2e-podman/{}",
            dir.path().file_name().unwrap().to_string_lossy()
        ));
        Some(Podman {
            netns: host.netns.clone(),
            dir,
            runroot,
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .args(["--", "podman", "--root"])
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(&self.runroot)
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .args(["--runtime", "runc", "--runtime-flag"])
            .arg("criu=/usr/local/sbin/criu")
            .args(args)
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run podman")
    }

    /// Runs podman; its stdout, or a panic with its stderr.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}",
            tail(&String::from_utf8_lossy(&out.stderr), 30)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Loads one of the e2e fixture images under the name ferry gives it (`busybox:latest`…),
    /// so both engines hold the same image with the same id.
    pub fn load_fixture(&self, kind: &str) {
        let layout = fixture(kind);
        let name = format!("{kind}:latest");
        // Podman names an OCI layout after its path, which must then be lowercase.
        let link = self.dir.path().join(format!("oci-{kind}"));
        if !link.exists() {
            std::os::unix::fs::symlink(&layout, &link).expect("link the fixture layout");
        }
        let id = self.ok(&["pull", "-q", &format!("oci:{}:{name}", link.display())]);
        self.ok(&["tag", id.trim(), &name]);
    }

    /// The container's address on Podman's network.
    pub fn ip(&self, name: &str) -> String {
        self.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", name])
            .trim()
            .to_owned()
    }

    pub fn logs(&self, name: &str) -> String {
        self.ok(&["logs", name])
    }

    /// Names of the running containers.
    pub fn running(&self) -> Vec<String> {
        self.ok(&["ps", "--format", "{{.Names}}"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-a", "-f", "-t", "0"]);
        let _ = self.run(&["rmi", "-a", "-f"]);
        unmount_under(self.dir.path());
        unmount_under(&self.runroot);
        let _ = std::fs::remove_dir_all(&self.runroot);
    }
}
