//! Issue 13, no leaks: what ferryd holds (open fds, mounts under its state root, scratch dirs)
//! returns to where it was after a round of every kind of operation, and scratch that a killed
//! ferryd left behind is swept at startup and periodically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_e2e::lab::{lab, wait_for, TestLab};
use ferry_e2e::{dir_names, Host};

/// What one ferryd holds: its open fds (by what they point to, counted), the mounts under
/// its state root (as its mount namespace sees them), and its scratch and state dirs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    fds: BTreeMap<String, usize>,
    mounts: Vec<String>,
    dirs: Vec<(String, Vec<String>)>,
}

impl Held {
    fn fd_count(&self) -> usize {
        self.fds.values().sum()
    }
}

fn held(pid: i32, root: &Path) -> Held {
    let mut fds = BTreeMap::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let target = std::fs::read_link(fd.path())
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".into());
        // Sockets and pipes differ by inode from one to the next: count them by kind.
        let kind = match target.split_once(":[") {
            Some((k, _)) => format!("{k}:"),
            None => target,
        };
        *fds.entry(kind).or_insert(0) += 1;
    }
    let root_s = root.display().to_string();
    let mut mounts: Vec<String> = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&root_s))
        .collect();
    mounts.sort();
    let dirs = [
        "tmp",
        "images/tmp",
        "pages",
        "containers",
        "checkpoints",
        "volumes",
    ]
    .iter()
    .map(|d| (d.to_string(), dir_names(&root.join(d))))
    .collect();
    Held { fds, mounts, dirs }
}

fn ferryd_pid(t: &TestLab, host: &str) -> i32 {
    t.lab.host(host).unwrap().pid().expect("ferryd's pid")
}

/// Waits (up to 30 s: a committed source removes its copy in the background) for `host`'s
/// ferryd to hold what it held at `baseline`; panics showing the difference.
fn assert_back_to(t: &TestLab, host: &str, baseline: &Held) {
    let (pid, root) = (ferryd_pid(t, host), t.host_root(host));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut now = held(pid, &root);
    while &now != baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        now = held(pid, &root);
    }
    assert_eq!(
        now.mounts, baseline.mounts,
        "{host}: mounts under the state root"
    );
    assert_eq!(now.dirs, baseline.dirs, "{host}: scratch and state dirs");
    assert_eq!(
        now.fds,
        baseline.fds,
        "{host}: open fds ({} now, {} before)\n{}",
        now.fd_count(),
        baseline.fd_count(),
        t.logs_tail()
    );
}

#[test]
fn fds_mounts_and_dirs_return_to_baseline_after_every_kind_of_operation() {
    let t = lab();
    let work = tempfile::Builder::new()
        .prefix("ferry-leaks-")
        .tempdir_in("/var/tmp")
        .unwrap();
    for h in ["host-a", "host-b"] {
        t.import(h, "busybox");
        // Warm-up: whatever ferryd opens once, on first use, is part of the baseline.
        t.ok(
            h,
            &["run", "-d", "--name", "warm", "busybox", "sleep", "60"],
        );
        t.ok(h, &["rm", "-f", "warm"]);
    }
    let base: Vec<Held> = ["host-a", "host-b"]
        .iter()
        .map(|h| held(ferryd_pid(&t, h), &t.host_root(h)))
        .collect();
    eprintln!(
        "baseline: host-a {} fds, {} mounts; host-b {} fds, {} mounts",
        base[0].fd_count(),
        base[0].mounts.len(),
        base[1].fd_count(),
        base[1].mounts.len()
    );

    let a = "host-a";
    let counter = ["busybox", "sh", "-c", ferry_e2e::COUNTER];
    let run = |name: &str| {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(&counter);
        t.ok(a, &args);
    };
    // run, checkpoint, restore.
    run("leaky");
    t.ok(a, &["checkpoint", "leaky"]);
    t.ok(a, &["restore", "leaky"]);
    // export, then import it again.
    let archive = work.path().join("leaky.tar.zst");
    t.ok(
        a,
        &["checkpoint", "leaky", "--export", archive.to_str().unwrap()],
    );
    t.ok(a, &["rm", "-f", "leaky"]);
    t.ok(a, &["restore", "--import", archive.to_str().unwrap()]);
    // A failed import: not an archive.
    let junk = work.path().join("junk.tar");
    std::fs::write(&junk, vec![0x42u8; 64 << 10]).unwrap();
    let out = t.ferry(a, &["restore", "--import", junk.to_str().unwrap()]);
    assert!(!out.status.success(), "a junk archive was imported");
    // A failed image import too.
    let out = t.ferry(a, &["image", "import", junk.to_str().unwrap()]);
    assert!(!out.status.success(), "a junk image was imported");
    // A migration there and back.
    for (from, to) in [("host-a", "host-b"), ("host-b", "host-a")] {
        let (ok, report, err) = t.migrate(from, "leaky", to);
        assert!(ok, "{from}→{to}: {err}\n{report}\n{}", t.logs_tail());
        wait_for("the container to run", Duration::from_secs(20), || {
            t.status(to, "leaky").as_deref() == Some("running")
        });
    }
    t.ok(a, &["rm", "-f", "leaky"]);

    for (i, h) in ["host-a", "host-b"].iter().enumerate() {
        assert_back_to(&t, h, &base[i]);
    }
}

/// Scratch a killed ferryd left goes when ferryd starts; scratch that goes stale while it runs
/// goes at the next periodic sweep; scratch a process still uses stays.
#[test]
fn stale_scratch_is_swept_at_startup_and_periodically() {
    // A sweep every second, of what is a minute old. The lab test of this binary may start
    // its ferryds with these too: harmless, as nothing of a live operation there is that old.
    std::env::set_var("FERRY_SCRATCH_SWEEP_EVERY", "1");
    std::env::set_var("FERRY_SCRATCH_MIN_AGE", "60");
    let mut h = Host::start();
    let root = h.root();
    let tmp = root.join("tmp");
    let make = |dir: &Path, old: bool| {
        std::fs::create_dir_all(dir.join("images")).unwrap();
        std::fs::write(dir.join("images/pages-1.img"), b"secret").unwrap();
        if old {
            for p in [
                dir.join("images/pages-1.img"),
                dir.join("images"),
                dir.to_owned(),
            ] {
                let ok = Command::new("touch")
                    .args(["-h", "-d", "2 hours ago"])
                    .arg(&p)
                    .status()
                    .unwrap()
                    .success();
                assert!(ok);
            }
        }
    };

    // Periodic: stale goes, fresh and in-use stay.
    let stale = tmp.join("import-stale");
    let fresh = tmp.join("import-fresh");
    let in_use = tmp.join("migrate-gone-x");
    make(&stale, true);
    make(&fresh, false);
    make(&in_use, true);
    let mut user = Command::new("sleep")
        .arg("60")
        .current_dir(&in_use)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    h.wait_for("the periodic sweep", Duration::from_secs(15), || {
        !stale.exists()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(fresh.exists(), "a fresh scratch dir was swept");
    assert!(in_use.exists(), "a scratch dir in use was swept");
    user.kill().unwrap();
    user.wait().unwrap();

    // Startup: everything of a killed ferryd goes, however fresh.
    h.kill_ferryd();
    let left: Vec<PathBuf> = vec![
        tmp.join("incoming-crash"),
        tmp.join("migrate-crash-y"),
        tmp.join("ckpt-image-crash"),
        root.join("images/tmp/stage-crash"),
    ];
    for d in &left {
        make(d, false);
    }
    h.start_ferryd();
    for d in left.iter().chain([&fresh, &in_use]) {
        assert!(!d.exists(), "{} survived the startup sweep", d.display());
    }
    assert!(h.ferryd_log().contains("removed a stale scratch dir"));
    h.ferry_ok(&["ps"]);
}
