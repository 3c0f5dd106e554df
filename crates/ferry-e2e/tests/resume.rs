//! Issue 9, "rollbacks that are true": `migration::resume::resume_source` on real runc
//! containers, real freezer cgroups, a real netns lock and a real hung CRIU.
//!
//! Each test runs Redis under a ferryd, then stops that ferryd (as if it had crashed mid-
//! migration), opens the same state with an in-process `Engine` inside the host's netns, breaks
//! the container the way a failed migration does, and resumes it. Then a fresh ferryd must
//! list it as running, and Redis must answer on its IP.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_core::container::{Engine, Status};
use ferry_core::migration::resume::{
    resume_source_with, CheckpointProcess, GroupRecord, ResumeOptions, ResumeReport, Step,
};
use ferry_core::network::{self};
use ferry_core::runtime::freezer::{Freezer, FreezerState};
use ferry_e2e::Host;

const REDIS_ARGS: &str =
    "redis-server --bind 0.0.0.0 --protected-mode no --save '' --appendonly no";

/// Redis as `name` on `ip`, optionally next to a `sleep` task, answering PING.
fn start_redis(h: &Host, name: &str, ip: &str, with_sleeper: bool) {
    let script = if with_sleeper {
        format!("sleep 1000 & exec {REDIS_ARGS}")
    } else {
        format!("exec {REDIS_ARGS}")
    };
    h.run_detached(name, &["--ip", ip], "redis", &["sh", "-c", &script]);
    h.wait_for("redis PONG", Duration::from_secs(20), || answers(h, ip));
}

/// PING over the container's IP from the host's netns, bounded so a dropped SYN fails fast.
fn answers(h: &Host, ip: &str) -> bool {
    answers_in(&h.netns, ip)
}

fn answers_in(host_netns: &str, ip: &str) -> bool {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{host_netns}"))
        .args(["timeout", "3", "redis-cli", "-h", ip, "PING"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim() == "PONG"
}

fn opts() -> ResumeOptions {
    ResumeOptions {
        criu_grace: Duration::from_secs(1),
        ..ResumeOptions::default()
    }
}

fn step(r: &ResumeReport, s: Step) -> &str {
    &r.steps
        .iter()
        .find(|o| o.step == s)
        .expect("step ran")
        .detail
}

/// True once no process (zombies included: init reaps orphans a moment later) has `pgid`.
fn group_gone(pgid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let gone = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None)
            == Err(nix::errno::Errno::ESRCH);
        if gone || Instant::now() >= deadline {
            return gone;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Frozen cgroup, veth off the bridge, a stuck "CRIU" process group: all undone and verified.
#[test]
fn frozen_detached_with_stuck_group_is_resumed() {
    let mut h = Host::start();
    h.import("redis");
    start_redis(&h, "r1", "10.78.1.61", false);
    h.kill_ferryd();
    let (report, pgid) = h.with_engine(|engine| {
        let cfg = engine.begin_migration("r1").expect("claim").config;
        let freezer = Freezer::for_container(&engine.config().cgroup_parent, &cfg.id);
        freezer.freeze(Duration::from_secs(5)).expect("freeze");
        let veth = Engine::host_veth(&cfg.id);
        let out = Command::new("ip")
            .args(["link", "set", &veth, "nomaster", "down"])
            .output()
            .unwrap();
        assert!(out.status.success(), "detach {veth}: {out:?}");
        // Stands in for runc + a hung criu + the hook: a group that never ends by itself.
        let stuck = Command::new("sh")
            .args(["-c", "sleep 1000 & sleep 1000"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = stuck.id() as i32;
        let report =
            resume_source_with(engine, &cfg, Some(CheckpointProcess::Child(stuck)), &opts())
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(freezer.state().unwrap(), FreezerState::Thawed);
        let tasks = freezer.tasks().unwrap();
        assert!(!tasks.is_empty());
        assert!(
            tasks.iter().all(|t| !t.job_stopped() && !t.trace_stopped()),
            "{tasks:?}"
        );
        assert_eq!(engine.inspect("r1").unwrap().status, Status::Running);
        (report, pgid)
    });
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert!(report.ok());
    assert!(group_gone(pgid), "process group {pgid} survived");
    assert!(step(&report, Step::StopCheckpoint).contains("SIGKILLed"));
    assert!(step(&report, Step::Thaw).contains("was FROZEN, reads THAWED"));
    assert!(
        answers(&h, "10.78.1.61"),
        "redis does not answer after resume"
    );
    h.start_ferryd();
    assert_eq!(h.inspect("r1")["status"], "running");
}

/// A `CRIU` chain left in the netns (as a killed CRIU leaves it) drops everything; resume
/// removes it, and a restarted ferryd finds the orphaned group gone by its record.
#[test]
fn criu_network_lock_is_removed() {
    let mut h = Host::start();
    h.import("redis");
    start_redis(&h, "r2", "10.78.1.62", false);
    h.kill_ferryd();
    let host_netns = h.netns.clone();
    let (report, netns, rec, mut orphan) = h.with_engine(move |engine| {
        let cfg = engine.begin_migration("r2").expect("claim").config;
        let ns = engine.paths().netns(&cfg.id);
        network::install_criu_lock_like_criu(&ns).expect("lock like CRIU");
        assert!(
            !answers_in(&host_netns, "10.78.1.62"),
            "the lock should drop PING"
        );
        // An orphaned group from "before the restart", found only by its record.
        let orphan = Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap();
        let rec = GroupRecord::of_child(&orphan).expect("group leader");
        let report = resume_source_with(
            engine,
            &cfg,
            Some(CheckpointProcess::Recorded(rec)),
            &opts(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(engine.inspect("r2").unwrap().status, Status::Running);
        (report, ns, rec, orphan)
    });
    orphan.wait().unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    let lock = step(&report, Step::NetworkLock);
    assert!(lock.contains("iptables: chain CRIU"), "{lock}");
    assert!(lock.contains("ip6tables: chain CRIU"), "{lock}");
    for tool in ["iptables-save", "ip6tables-save"] {
        let saved = saved_rules(&netns, tool);
        assert!(
            !saved.contains("CRIU"),
            "{tool} still has the lock:\n{saved}"
        );
    }
    assert!(group_gone(rec.pgid));
    assert!(
        answers(&h, "10.78.1.62"),
        "redis does not answer after resume"
    );
    h.start_ferryd();
    assert_eq!(h.inspect("r2")["status"], "running");
}

fn saved_rules(netns: &Path, tool: &str) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg(tool)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The real thing: CRIU hangs seizing a task the workload had stopped, inside the frozen
/// cgroup. Resume kills runc and CRIU, thaws, and the container serves again. The stopped
/// task stays stopped: the workload stopped it, the rollback must not wake it.
#[test]
fn real_criu_hang_on_stopped_task_is_resumed() {
    let mut h = Host::start();
    h.import("redis");
    start_redis(&h, "r3", "10.78.1.63", true);
    h.kill_ferryd();
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let work_path = work.path().to_owned();
    let (report, pgid, sleeper) = h.with_engine(move |engine| {
        let cfg = engine.begin_migration("r3").expect("claim").config;
        let freezer = Freezer::for_container(&engine.config().cgroup_parent, &cfg.id);
        let sleeper = freezer
            .tasks()
            .unwrap()
            .into_iter()
            .find(|t| t.comm == "sleep")
            .expect("the sleep task")
            .tid;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(sleeper),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .unwrap();
        wait_until("sleep stopped", Duration::from_secs(5), || {
            state_of(sleeper) == Some('T')
        });
        let (images, criu_work) = (work_path.join("images"), work_path.join("work"));
        std::fs::create_dir_all(&images).unwrap();
        std::fs::create_dir_all(&criu_work).unwrap();
        let tool = engine
            .runc()
            .checkpoint_command(&cfg.id, &engine.checkpoint_opts(&images, &criu_work));
        let child = tool
            .command()
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work_path.join("runc.err")).unwrap())
            .spawn()
            .unwrap();
        let pgid = child.id() as i32;
        wait_until("the cgroup FROZEN by CRIU", Duration::from_secs(30), || {
            freezer.state().ok() == Some(FreezerState::Frozen)
        });
        // Let CRIU reach the stopped task and hang there.
        wait_until("criu in the group", Duration::from_secs(10), || {
            group_comms(pgid).iter().any(|c| c == "criu")
        });
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            child_alive(pgid),
            "runc checkpoint ended: CRIU did not hang ({})",
            std::fs::read_to_string(work_path.join("runc.err")).unwrap_or_default()
        );
        eprintln!("before resume: group {pgid} = {:?}", group_comms(pgid));
        let report =
            resume_source_with(engine, &cfg, Some(CheckpointProcess::Child(child)), &opts())
                .unwrap_or_else(|e| panic!("{e}\n{:#?}", e.report()));
        assert_eq!(freezer.state().unwrap(), FreezerState::Thawed);
        assert_eq!(engine.inspect("r3").unwrap().status, Status::Running);
        (report, pgid, sleeper)
    });
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert!(group_gone(pgid), "runc/criu group {pgid} survived");
    assert_eq!(
        state_of(sleeper),
        Some('T'),
        "the user's stopped task was woken"
    );
    assert_eq!(report.stopped_by_user.len(), 1, "{report:?}");
    assert!(
        answers(&h, "10.78.1.63"),
        "redis does not answer after resume"
    );
    h.start_ferryd();
    assert_eq!(h.inspect("r3")["status"], "running");
}

fn state_of(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn child_alive(pid: i32) -> bool {
    !matches!(state_of(pid), None | Some('Z') | Some('X'))
}

/// `comm` of every process in group `pgid`.
fn group_comms(pgid: i32) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = tail.split_whitespace().collect();
        if f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) {
            out.push(head.split_once('(').map(|x| x.1).unwrap_or("").to_owned());
        }
    }
    out
}

/// A rollback that cannot be verified must not say running: here a frozen parent cgroup keeps
/// the container frozen whatever its own freezer is told. The error names the failed steps,
/// the record says error with that reason, and a restarted ferryd keeps it that way.
#[test]
fn unverifiable_resume_records_error() {
    let mut h = Host::start();
    h.import("redis");
    start_redis(&h, "r4", "10.78.1.64", false);
    h.kill_ferryd();
    let parent =
        Freezer::at(Path::new(ferry_core::runtime::freezer::FREEZER_ROOT).join(&h.cgroup_parent));
    parent
        .freeze(Duration::from_secs(5))
        .expect("freeze the parent cgroup");
    let err = h.with_engine(|engine| {
        let cfg = engine.begin_migration("r4").expect("claim").config;
        let quick = ResumeOptions {
            thaw_wait: Duration::from_millis(500),
            ..opts()
        };
        let err = resume_source_with(engine, &cfg, None, &quick)
            .expect_err("a frozen parent cannot be resumed");
        let rec = engine.inspect("r4").unwrap();
        assert_eq!(rec.status, Status::Error);
        let reason = rec.error.expect("a reason");
        assert!(reason.contains("a parent cgroup is frozen"), "{reason}");
        err
    });
    // Thawed by hand so the container can be cleaned up, whatever the asserts say.
    parent
        .thaw(Duration::from_secs(5))
        .expect("thaw the parent cgroup");
    let msg = err.to_string();
    eprintln!(
        "{}",
        serde_json::to_string_pretty(err.report().expect("report")).unwrap()
    );
    assert!(
        msg.contains("source container r4 is not verified running"),
        "{msg}"
    );
    assert!(msg.contains("thaw the cgroup"), "{msg}");
    assert!(
        msg.contains("tasks running: the cgroup reads FROZEN"),
        "{msg}"
    );
    assert!(err
        .report()
        .expect("report")
        .steps
        .iter()
        .any(|s| s.step == Step::Record && s.ok));
    h.start_ferryd();
    let rec = h.inspect("r4");
    assert_eq!(rec["status"], "error", "{rec}");
    assert!(h.ferry_ok(&["ps", "-a"]).contains("error"));
}
