//! Test support for ferry's end-to-end tests: a ferryd in a private network namespace, the
//! `ferry` CLI pointed at it, and fixture images built from what Debian installed.
//!
//! Everything a test creates is torn down by `Drop`, also when the test fails.

pub use ferry_lab::workload::{redis, writer};

pub mod lab;
pub mod podman;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ferry_core::image::fixture::{build_layout, FixtureSpec};

pub use ferry_lab::workload::{COUNTER, REDIS_SERVER};

/// The inotify image's workload: watches on a lower dir (copied up by the writes) and on a
/// lower-only file, and a file written every 0.2 s to fire them.
pub const INOTIFY_WATCHER: &str = "/bin/inotify-watch /data /data/conf & \
     i=0; while true; do i=$((i+1)); echo x > /data/f$i; sleep 0.2; done";

/// The numbers of the `tick N` lines in a log, in order.
pub fn ticks(logs: &str) -> Vec<u64> {
    logs.lines()
        .filter_map(|l| l.strip_prefix("tick "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// `target/debug` (or release), where cargo put ferry's binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`)",
        p.display()
    );
    p
}

/// Fixture OCI layouts, built once per test process.
pub fn fixture(kind: &str) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static BUILDING: Mutex<()> = Mutex::new(());
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"));
    let out = dir.path().join(kind);
    // Tests run in parallel; one builds, the others wait for it.
    let _guard = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    if !out.exists() {
        let spec = match kind {
            "busybox" => FixtureSpec::busybox(),
            "redis" => FixtureSpec::redis(),
            // Debian's ffmpeg and its library closure, for the MPEG-TS stream demo.
            "ffmpeg" => FixtureSpec::busybox().map(|mut spec| {
                spec.name = "ffmpeg:latest".into();
                let ff = PathBuf::from("/usr/bin/ffmpeg");
                spec.files.push((ff.clone(), ff));
                spec.with_ldd_closure = true;
                spec
            }),
            other => panic!("unknown fixture {other}"),
        }
        .unwrap_or_else(|e| panic!("fixture spec {kind}: {e}"));
        build_layout(&out, &spec).unwrap_or_else(|e| panic!("building fixture {kind}: {e}"));
    }
    out
}

pub(crate) fn unique(prefix: &str) -> String {
    use rand::Rng;
    format!(
        "{prefix}{:06x}",
        rand::thread_rng().gen::<u32>() & 0xff_ffff
    )
}

/// One ferryd "host" in its own network namespace, with its own state dir.
pub struct Host {
    pub netns: String,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub cgroup_parent: String,
    ferryd: Option<Child>,
}

pub const BRIDGE_IP: &str = "10.78.0.1";

impl Host {
    pub fn start() -> Host {
        // Not the lab's prefix (`ferrye2e`): a lab refuses to come up next to netns that look
        // like another lab's, and single-host and lab tests share some test binaries.
        let netns = unique("fe2ehost-");
        run_ok(Command::new("ip").args(["netns", "add", &netns]));
        run_ok(Command::new("ip").args(["-n", &netns, "link", "set", "lo", "up"]));
        let dir = tempfile::Builder::new()
            .prefix("ferry-e2e-")
            .tempdir_in("/var/tmp")
            .expect("state tempdir");
        let socket = dir.path().join("ferry.sock");
        let cgroup_parent = netns.clone();
        let mut h = Host {
            netns,
            dir,
            socket,
            cgroup_parent,
            ferryd: None,
        };
        h.start_ferryd();
        h
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn start_ferryd(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("ferryd.log"))
            .expect("ferryd log");
        let child = self
            .netns_cmd(bin("ferryd"))
            .args(["--root"])
            .arg(self.root())
            .arg("--socket")
            .arg(&self.socket)
            .arg("--runc-root")
            .arg(self.dir.path().join("runc"))
            .args(["--cgroup-parent", &self.cgroup_parent])
            .args(["--bridge", "ferry0", "--bridge-address"])
            .arg(format!("{BRIDGE_IP}/16"))
            .args(["--ip-range", "10.78.1.1-10.78.1.254", "--host-name", "e2e"])
            .env("FERRY_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn ferryd");
        self.ferryd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.ferry(&["info"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ferryd did not become ready:\n{}", self.ferryd_log());
    }

    /// Kills ferryd (SIGKILL: no chance to clean up) and starts it again.
    pub fn restart_ferryd(&mut self) {
        self.kill_ferryd();
        self.start_ferryd();
    }

    /// Runs `f` with an `Engine` over this host's state, on a thread inside its netns (where
    /// the bridge and the host veths are). ferryd must be stopped: one engine per state dir.
    pub fn with_engine<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ferry_core::container::Engine) -> T + Send + 'static,
    ) -> T {
        use ferry_core::container::{Engine, EngineConfig};
        let cfg = EngineConfig {
            paths: ferry_core::paths::HostPaths::new(
                self.root().canonicalize().expect("state root"),
            ),
            host_name: "e2e".into(),
            runc_binary: "runc".into(),
            runc_root: self.dir.path().join("runc"),
            cgroup_parent: self.cgroup_parent.clone(),
            bridge: ferry_core::network::BridgeConfig {
                name: "ferry0".into(),
                address: BRIDGE_IP.parse().unwrap(),
                prefix: 16,
                // ferryd's pinned bridge MAC for this address (ferryd::bridge_mac).
                mac: [0x02, 0xfb, 10, 78, 0, 1],
            },
            ip_range: Some(("10.78.1.1".parse().unwrap(), "10.78.1.254".parse().unwrap())),
            shim_exe: bin("ferryd"),
        };
        let ns = PathBuf::from(format!("/run/netns/{}", self.netns));
        ferry_core::network::in_netns(&ns, move || {
            let engine = Engine::open(cfg).expect("open the engine");
            f(&engine)
        })
        .expect("enter the host's netns")
    }

    /// Stops ferryd as an operator would (SIGTERM) and waits for it to exit.
    pub fn stop_ferryd(&mut self) {
        if let Some(mut c) = self.ferryd.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    pub fn kill_ferryd(&mut self) {
        if let Some(mut c) = self.ferryd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn ferryd_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ferryd.log")).unwrap_or_default()
    }

    /// A command run inside this host's network namespace.
    pub fn netns_cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(program);
        c
    }

    pub fn ferry(&self, args: &[&str]) -> Output {
        Command::new(bin("ferry"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ferry")
    }

    /// Runs ferry and returns stdout; panics with stderr and the daemon log on failure.
    pub fn ferry_ok(&self, args: &[&str]) -> String {
        let out = self.ferry(args);
        assert!(
            out.status.success(),
            "ferry {args:?} failed: {}\n--- ferryd log tail:\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail(&self.ferryd_log(), 30)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ferry run -d --name NAME OPTS... IMAGE CMD...`, which must succeed; returns stdout (the
    /// container's id). The one way the tests start a detached container on a [`Host`].
    pub fn run_detached(&self, name: &str, opts: &[&str], image: &str, cmd: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(opts);
        args.push(image);
        args.extend_from_slice(cmd);
        self.ferry_ok(&args)
    }

    /// Runs ferry expecting failure; returns stderr.
    pub fn ferry_err(&self, args: &[&str]) -> String {
        let out = self.ferry(args);
        assert!(
            !out.status.success(),
            "ferry {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn import(&self, kind: &str) {
        let layout = fixture(kind);
        self.ferry_ok(&["image", "import", layout.to_str().expect("utf8 path")]);
    }

    /// Runs the busybox [`COUNTER`] as `name` (plus `extra` run options) and waits for `ticks`
    /// ticks in its log.
    pub fn run_counter(&self, name: &str, extra: &[&str], ticks_wanted: usize) {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["busybox", "sh", "-c", COUNTER]);
        self.ferry_ok(&args);
        self.wait_for("counter ticks", Duration::from_secs(20), || {
            ticks(&self.logs(name)).len() >= ticks_wanted
        });
    }

    pub fn inspect(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.ferry_ok(&["inspect", name])).expect("inspect json")
    }

    pub fn logs(&self, name: &str) -> String {
        self.ferry_ok(&["logs", name])
    }

    /// Waits until `f` holds, or panics after `timeout` with `what`.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting for {what}\n--- ferryd log tail:\n{}",
            tail(&self.ferryd_log(), 40)
        );
    }

    /// Redis command from this host's namespace to a container IP.
    pub fn redis_cli(&self, ip: &str, args: &[&str]) -> String {
        let out = self
            .netns_cmd("redis-cli")
            .args(["-h", ip])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if self.ferryd.is_some() {
            if let Ok(out) = std::process::Command::new(bin("ferry"))
                .arg("--socket")
                .arg(&self.socket)
                .args(["ps", "-a", "--json"])
                .output()
            {
                if let Ok(list) = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout) {
                    for c in list {
                        if let Some(n) = c["config"]["name"].as_str() {
                            let _ = self.ferry(&["rm", "-f", n]);
                        }
                    }
                }
            }
        }
        self.kill_ferryd();
        cleanup_runc(&self.dir.path().join("runc"));
        unmount_under(self.dir.path());
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        remove_cgroups(&self.cgroup_parent);
    }
}

/// Names in `dir`, sorted (empty when it does not exist).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn run_ok(c: &mut Command) {
    let out = c.output().expect("spawn");
    assert!(
        out.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills whatever runc still knows under `root` (a test that failed half-way).
pub fn cleanup_runc(root: &Path) {
    let Ok(out) = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["list", "-q"])
        .output()
    else {
        return;
    };
    for id in String::from_utf8_lossy(&out.stdout).lines() {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["delete", "-f", id])
            .output();
    }
}

/// Unmounts every mount below `dir` (overlays, netns files), deepest first.
pub fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut mps: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| mp.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    mps.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mp in mps {
        let _ = nix_umount(&mp);
    }
}

fn nix_umount(path: &str) -> std::io::Result<()> {
    let out = Command::new("umount").args(["-l", path]).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

pub fn remove_cgroups(parent: &str) {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for ctl in entries.flatten() {
        let dir = ctl.path().join(parent);
        if let Ok(children) = std::fs::read_dir(&dir) {
            for c in children.flatten() {
                if c.path().is_dir() {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

/// `event N wd W …` lines of the inotify watcher: (N, W).
pub fn events(logs: &str) -> Vec<(u64, u32)> {
    logs.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "event").then_some(())?;
            let n = w.next()?.parse().ok()?;
            (w.next()? == "wd").then_some(())?;
            Some((n, w.next()?.parse().ok()?))
        })
        .collect()
}

/// busybox plus a static inotify watcher at /bin/inotify-watch and a /data dir with one file,
/// built into `dir` as an OCI layout named `inotify`.
pub fn inotify_image(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inotify_watch.c");
    let bin = dir.join("inotify-watch");
    let out = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("run cc (the Rust toolchain's linker)");
    assert!(
        out.status.success(),
        "cc -static {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut spec = FixtureSpec::busybox().expect("busybox fixture");
    spec.name = "inotify:latest".into();
    spec.files.push((bin, PathBuf::from("/bin/inotify-watch")));
    spec.extra_dirs.push((PathBuf::from("/data"), 0o755));
    spec.text_files
        .push((PathBuf::from("/data/conf"), "v1\n".into(), 0o644));
    let layout = dir.join("layout");
    build_layout(&layout, &spec).expect("build inotify image");
    layout
}
