//! A two-host lab for one test at a time, with the helpers the migration tests share:
//! running ferry on a host, Redis under a writer, link faults, and cleanliness checks.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::redis::{RedisConn, Reply};
use crate::writer::{verify_acked_keyed, Writer};
use crate::{fixture, tail, REDIS_SERVER};
use ferry_lab::{Lab, LabConfig};

/// Labs share the machine's fabric names and two cores, so tests take turns.
static TURN: Mutex<()> = Mutex::new(());

pub struct TestLab {
    pub lab: Lab,
    _turn: MutexGuard<'static, ()>,
}

pub fn lab() -> TestLab {
    let turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    // Another run of these tests on the same machine needs its own lab: FERRY_E2E_LAB=name.
    let name = std::env::var("FERRY_E2E_LAB").unwrap_or_else(|_| "ferrye2e".into());
    let mut cfg = LabConfig::new(format!("/run/{name}-lab"), 2);
    cfg.prefix = name;
    let lab = Lab::up_with(cfg).expect("lab up");
    TestLab { lab, _turn: turn }
}

impl TestLab {
    pub fn ferry(&self, host: &str, args: &[&str]) -> Output {
        self.lab
            .host_command(host, "ferry")
            .expect("host")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ferry")
    }

    pub fn ok(&self, host: &str, args: &[&str]) -> String {
        let out = self.ferry(host, args);
        assert!(
            out.status.success(),
            "ferry {args:?} on {host} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn logs_tail(&self) -> String {
        self.lab
            .hosts()
            .iter()
            .map(|h| {
                format!(
                    "--- {} ferryd log:\n{}",
                    h.name,
                    tail(&std::fs::read_to_string(&h.log).unwrap_or_default(), 25)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn import(&self, host: &str, kind: &str) {
        let layout = fixture(kind);
        self.ok(host, &["image", "import", layout.to_str().unwrap()]);
    }

    pub fn status(&self, host: &str, name: &str) -> Option<String> {
        let list: Vec<serde_json::Value> =
            serde_json::from_str(&self.ok(host, &["ps", "-a", "--json"])).unwrap();
        list.iter()
            .find(|c| c["config"]["name"] == name)
            .map(|c| c["status"].as_str().unwrap_or_default().to_owned())
    }

    pub fn logs(&self, host: &str, name: &str) -> String {
        self.ok(host, &["logs", name])
    }

    pub fn migrate(&self, from: &str, name: &str, to: &str) -> (bool, serde_json::Value, String) {
        self.migrate_mode(from, name, to, "stop-copy")
    }

    /// `ferry migrate --mode MODE` (`stop-copy`, `lazy` or `auto`).
    pub fn migrate_mode(
        &self,
        from: &str,
        name: &str,
        to: &str,
        mode: &str,
    ) -> (bool, serde_json::Value, String) {
        let out = self.ferry(
            from,
            &["migrate", name, "--to", to, "--mode", mode, "--json"],
        );
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (
            out.status.success(),
            report,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn client_ns(&self) -> String {
        self.lab.client_netns().display().to_string()
    }

    pub fn host_root(&self, host: &str) -> std::path::PathBuf {
        self.lab.host(host).unwrap().root.clone()
    }

    /// Nothing of a failed incoming migration is left on `host`.
    /// A committed source finishes removing its copy after the verdict is recorded (CRIU
    /// must end first), so this waits a little for the container to go.
    pub fn assert_clean(&self, host: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut ps = self.ok(host, &["ps", "-a", "--json"]);
        while ps.trim() != "[]" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
            ps = self.ok(host, &["ps", "-a", "--json"]);
        }
        assert_eq!(ps.trim(), "[]", "{what}: {host} has no containers");
        let h = self.lab.host(host).unwrap();
        let runc = Command::new("runc")
            .arg("--root")
            .arg(&h.runc_root)
            .args(["list", "-q"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&runc.stdout).trim().is_empty(),
            "{what}: runc on {host} knows no container"
        );
        let leftovers: Vec<_> = std::fs::read_dir(h.root.join("containers"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(
            leftovers.is_empty(),
            "{what}: no container dirs on {host}: {leftovers:?}"
        );
        // Nor a netns, a cgroup, a staged migration dir or pages waiting in the scratch. They
        // go a moment after the container does, so allow a few seconds.
        let state_dirs = [
            h.root.join("netns"),
            h.root.join("tmp"),
            h.root.join("pages"),
        ];
        let cgroups = ["pids", "freezer"].map(|c| {
            std::path::Path::new("/sys/fs/cgroup")
                .join(c)
                .join(&h.cgroup_parent)
        });
        let entries = |d: &std::path::Path| -> Vec<std::path::PathBuf> {
            std::fs::read_dir(d)
                .map(|r| r.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        };
        let left = || -> Vec<std::path::PathBuf> {
            let mut v: Vec<_> = state_dirs.iter().flat_map(|d| entries(d)).collect();
            // A cgroup dir holds control files; a container's cgroup is a sub-directory.
            v.extend(
                cgroups
                    .iter()
                    .flat_map(|d| entries(d))
                    .filter(|p| p.is_dir()),
            );
            v
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !left().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            left().is_empty(),
            "{what}: nothing left on {host}: {:?}",
            left()
        );
    }

    /// Runs a command in the fabric's netns (where each host's uplink `fab-<host>` is).
    fn fabric(&self, program: &str, args: &[&str]) {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.lab.fabric_netns().display()))
            .arg(program)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Slows a host's uplink so a memory transfer lasts long enough to interfere with.
    pub fn throttle(&self, host: &str, rate: &str) {
        let dev = format!("fab-{host}");
        self.fabric(
            "tc",
            &[
                "qdisc", "replace", "dev", &dev, "root", "tbf", "rate", rate, "burst", "64kb",
                "latency", "2s",
            ],
        );
    }

    /// Takes a host's uplink down (both directions cut) or up.
    pub fn link(&self, host: &str, up: bool) {
        let dev = format!("fab-{host}");
        self.fabric("ip", &["link", "set", &dev, if up { "up" } else { "down" }]);
    }

    /// Drops every frame the fabric bridge forwards to `host` (a one-way partition), or stops.
    pub fn cut_toward(&self, host: &str, cut: bool) {
        let dev = format!("fab-{host}");
        let op = if cut { "-A" } else { "-D" };
        self.fabric("ebtables", &[op, "FORWARD", "-o", &dev, "-j", "DROP"]);
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// Waits (90 s at most) until the ferryd stopped by `pause-<role>-<step>` in `fault_dir` (a
/// host's `inject-fault/`) says it got there. A ferryd built without the `fault-injection`
/// feature never does; the panic says so.
pub fn wait_fault_reached(fault_dir: &std::path::Path, role: &str, step: &str) {
    let reached = fault_dir.join(format!("reached-{role}-{step}"));
    wait_for(
        &format!(
            "the {role} reaching {step} ({} never appeared: is target/debug/ferryd built with \
             `--features ferryd/fault-injection`, as scripts/test.sh does?)",
            reached.display()
        ),
        Duration::from_secs(90),
        || reached.exists(),
    );
}

pub fn redis_args(ip: &str) -> Vec<String> {
    ["run", "-d", "--name", "redis", "--ip", ip, "redis"]
        .iter()
        .chain(REDIS_SERVER.iter())
        .map(|s| s.to_string())
        .collect()
}

pub fn start_redis(t: &TestLab, host: &str, ip: &str, populate_keys: u64) {
    t.import(host, "redis");
    let args = redis_args(ip);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    t.ok(host, &args);
    let ns = t.client_ns();
    wait_for(
        "redis answers from the client",
        Duration::from_secs(20),
        || {
            RedisConn::connect(&ns, ip)
                .and_then(|mut c| c.cmd(&["PING"]))
                .is_ok_and(|r| r == Reply::Status("PONG".into()))
        },
    );
    if populate_keys > 0 {
        let mut c = RedisConn::connect(&ns, ip).unwrap();
        let n = populate_keys.to_string();
        assert_eq!(
            c.cmd(&["DEBUG", "POPULATE", &n, "bulk", "1024"]).unwrap(),
            Reply::Status("OK".into())
        );
    }
}

pub fn phase_ms(report: &serde_json::Value) -> String {
    report["phases"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| format!("{}={}ms", p["phase"].as_str().unwrap_or("?"), p["ms"]))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// `ferry migrate NAME --to host-b` started in the background, its output discarded.
pub fn spawn_migrate(t: &TestLab, name: &str) -> std::process::Child {
    migrate_command(t, name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

pub fn migrate_command(t: &TestLab, name: &str) -> Command {
    migrate_command_mode(t, name, "stop-copy")
}

/// `ferry migrate NAME --to host-b --mode MODE --json` on host-a, not started.
pub fn migrate_command_mode(t: &TestLab, name: &str, mode: &str) -> Command {
    let mut c = t.lab.host_command("host-a", "ferry").unwrap();
    c.args(["migrate", name, "--to", "host-b", "--mode", mode, "--json"]);
    c
}

/// `ferry migration ls --json` on `host`: this host's migration records.
pub fn migration_records(t: &TestLab, host: &str) -> Vec<serde_json::Value> {
    let out = t.ferry(host, &["migration", "ls", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Runs `ferry migrate` in the background and calls `on_pages` once memory starts to flow.
pub fn migrate_and_interfere(mut cmd: Command, on_pages: impl FnOnce()) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = String::new();
    let mut on_pages = Some(on_pages);
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("\"bytes\"") && line.contains("\"phase\":\"dump\"") {
            if let Some(f) = on_pages.take() {
                f();
                break;
            }
        }
    }
    for line in lines.map_while(Result::ok) {
        seen.push_str(&line);
        seen.push('\n');
    }
    let out = child.wait_with_output().unwrap();
    assert!(on_pages.is_none(), "memory never started to flow:\n{seen}");
    (out.status.success(), seen)
}

pub fn assert_redis_intact(t: &TestLab, ip: &str, w: Writer, what: &str) {
    let at = w.acked();
    wait_for(
        "writes continue on the source",
        Duration::from_secs(30),
        || w.acked() > at + 100,
    );
    let mut r = w.stop();
    assert!(
        r.error.is_none(),
        "{what}: the client saw no error: {:?}",
        r.error
    );
    verify_acked_keyed(&mut r.conn, "f:", r.acked_sets, r.acked_incrs);
    assert_eq!(
        t.status("host-a", "redis").as_deref(),
        Some("running"),
        "{what}: source runs"
    );
    let mut c = RedisConn::connect(&t.client_ns(), ip).unwrap();
    assert!(
        c.int(&["DBSIZE"]).unwrap() as u64 >= 32 * 1024,
        "{what}: the dataset is intact"
    );
}
