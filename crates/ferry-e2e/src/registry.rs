//! A real OCI registry for the tests: Debian's `docker-registry` (distribution 2.8), started in
//! a given network namespace on a given address, with a temp storage dir, optionally with TLS
//! (a CA made here) and htpasswd auth (bcrypt, from apache2-utils' `htpasswd`). Stopped and
//! removed by Drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How to run one registry.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// The network namespace it listens in (`/run/netns/NAME`).
    pub netns: PathBuf,
    /// The address it listens on, e.g. `127.0.0.1` or a lab fabric address.
    pub ip: String,
    pub tls: bool,
    /// `(user, password)` for htpasswd auth.
    pub htpasswd: Option<(String, String)>,
}

pub struct Registry {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// `IP:PORT`.
    pub addr: String,
    /// The CA certificate (PEM) that signed its TLS certificate.
    pub ca: Option<PathBuf>,
    netns: PathBuf,
}

/// True when the registry binary is installed (scripts/setup.sh installs it); a test without
/// it says so loudly and skips.
pub fn available() -> bool {
    let ok = Path::new(REGISTRY_BIN).exists();
    if !ok {
        eprintln!(
            "SKIPPED: {REGISTRY_BIN} is missing; install Debian's docker-registry (scripts/setup.sh)"
        );
    }
    ok
}

impl Registry {
    pub fn start(opts: &RegistryOptions) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("ferry-registry-")
            .tempdir_in("/var/tmp")
            .expect("registry tempdir");
        let mut ca = None;
        let mut tls = String::new();
        if opts.tls {
            let ca_dir = dir.path().join("ca");
            let out = dir.path().join("tls");
            let c = ferry_core::peer::tls::ClusterCa::create(&ca_dir).expect("test CA");
            let ip: std::net::IpAddr = opts.ip.parse().expect("registry ip");
            c.issue_host("registry", &[ip], &out)
                .expect("registry certificate");
            tls = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                out.join("host.pem").display(),
                out.join("host.key").display()
            );
            ca = Some(ca_dir.join("ca.pem"));
        }
        let mut auth = String::new();
        if let Some((user, pass)) = &opts.htpasswd {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("run htpasswd (apache2-utils)");
            assert!(out.status.success(), "htpasswd: {out:?}");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).expect("write htpasswd");
            auth = format!(
                "auth:\n  htpasswd:\n    realm: ferry-test\n    path: {}\n",
                file.display()
            );
        }
        let mut reg = Registry {
            dir,
            child: None,
            addr: String::new(),
            ca,
            netns: opts.netns.clone(),
        };
        // A few tries: the port is picked at random in a namespace the test owns.
        for _ in 0..5 {
            use rand::Rng;
            let port = rand::thread_rng().gen_range(20000..40000);
            let addr = format!("{}:{port}", opts.ip);
            let config = reg.dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     http:\n  addr: {addr}\n{tls}{auth}",
                    reg.dir.path().join("storage").display()
                ),
            )
            .expect("write registry config");
            reg.addr = addr;
            reg.spawn();
            if reg.wait_ready() {
                return reg;
            }
            eprintln!("registry did not start on {}:\n{}", reg.addr, reg.log());
            reg.stop();
        }
        panic!("docker-registry did not start");
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("registry.log")).expect("log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(REGISTRY_BIN)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        self.child = Some(child);
    }

    /// Starts it again after [`Registry::stop`], same address, same storage.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        assert!(
            self.wait_ready(),
            "registry did not restart:\n{}",
            self.log()
        );
    }

    /// Waits for "listening on" in its log; false when it exited first.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.log().contains("listening on") {
                return true;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Where it keeps its blobs: `docker/registry/v2/blobs/sha256/AB/ABCD…/data`.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Makes `ferryd --root root` trust this registry's CA (`certs.d/IP:PORT/ca.crt`).
    pub fn trust(&self, root: &Path) {
        let ca = self.ca.as_ref().expect("a TLS registry");
        let d = root.join("certs.d").join(&self.addr);
        std::fs::create_dir_all(&d).expect("certs.d");
        std::fs::copy(ca, d.join("ca.crt")).expect("copy ca.crt");
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
