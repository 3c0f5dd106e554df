//! Putting a migration's source container back, and proving it runs again.
//!
//! After a failed migration the source was told `fail` at CRIU's `post-dump` hook, which makes
//! CRIU unlock the network and thaw the container. That is not enough to claim a rollback:
//! CRIU can hang (seizing a task that was already stopped, inside the frozen cgroup), be killed,
//! or outlive the ferryd that started it. [`resume_source`] therefore does each step itself and
//! checks it, in this order:
//!
//! 1. gives CRIU a bounded time to finish its own rollback, then SIGKILLs the checkpoint's
//!    process group (runc, `criu swrk`, the hook) and waits until those processes are gone;
//! 2. thaws the container's freezer cgroup, checks it reads THAWED, that runc sees it running,
//!    and that no task is left in a tracing stop;
//! 3. removes CRIU's network lock from the container's netns and checks it is gone;
//! 4. re-attaches the host veth to the bridge and sends a gratuitous ARP;
//! 5. only then records the container as running. If any check failed, the record says
//!    `error` with the reason, and the error names every step that failed.
//!
//! A task the *workload* had stopped (state `T`, SIGSTOP/SIGTSTP) is left stopped: the rollback
//! puts the container back as it was before the migration, and waking a process its owner
//! stopped would change the application's behaviour. Such tasks are listed in the report. A
//! task in a *tracing* stop (`t`) is different: after step 1 nobody should trace it, so it is a
//! failure.
//!
//! The functions block (signals, polling, iptables); from async code run them on the blocking
//! pool (`spawn_blocking`), never on a runtime thread: step 4 drives netlink on its own
//! single-threaded runtime in the calling thread's network namespace (the host's).

use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::container::{ContainerConfig, Engine, Status};
use crate::network::{self, LockRemoval};
use crate::runtime::freezer::{Freezer, FreezerState, Task};
use crate::runtime::runc::RuncStatus;

const POLL: Duration = Duration::from_millis(20);
/// Between two looks at the tasks' states (see `tasks_running`).
const SETTLE: Duration = Duration::from_millis(100);

/// How long each step may wait. The defaults suit a daemon: a rollback is bounded by their sum
/// (about 20 s) even when every step has to wait out its limit.
#[derive(Debug, Clone)]
pub struct ResumeOptions {
    /// For CRIU to finish its own rollback (after the `fail` verdict) before it is killed.
    pub criu_grace: Duration,
    /// For the killed processes to disappear (a task in D state exits only when it wakes);
    /// waited again after the thaw, which is what wakes a CRIU stuck on the frozen cgroup.
    pub kill_wait: Duration,
    /// For the freezer to read THAWED.
    pub thaw_wait: Duration,
    /// For tasks still in a tracing stop to be released (the kernel detaches them when their
    /// tracer dies).
    pub task_wait: Duration,
}

impl Default for ResumeOptions {
    fn default() -> Self {
        ResumeOptions {
            criu_grace: Duration::from_secs(5),
            kill_wait: Duration::from_secs(5),
            thaw_wait: Duration::from_secs(5),
            task_wait: Duration::from_secs(3),
        }
    }
}

/// Identifies the process group of a `runc checkpoint` across a ferryd restart: the group id
/// plus its leader's start time, so a reused number is never mistaken for it. Save it in the
/// migration record right after spawning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub pgid: i32,
    /// `starttime` (field 22 of `/proc/PID/stat`, clock ticks since boot) of the leader.
    pub leader_start: u64,
}

impl GroupRecord {
    /// The record of `child`, which must have been spawned with `process_group(0)`. None when
    /// it already exited or is not a group leader.
    pub fn of_child(child: &Child) -> Option<Self> {
        let p = read_proc(child.id() as i32)?;
        (p.pgrp == p.pid).then_some(GroupRecord {
            pgid: p.pid,
            leader_start: p.start,
        })
    }
}

/// The `runc checkpoint` whose dump is being rolled back.
#[derive(Debug)]
pub enum CheckpointProcess {
    /// Spawned by this ferryd in its own process group
    /// (`std::os::unix::process::CommandExt::process_group(0)`): killing the group kills runc,
    /// `criu swrk` and the action-script hook.
    Child(Child),
    /// From a record that kept the group and its leader's start time, after ferryd restarted:
    /// the processes are no longer our children. A reused group number is recognised.
    Recorded(GroupRecord),
    /// From a record that kept only the group id. The group is killed only if every member is
    /// one of the checkpoint's programs (runc, criu, the hook), since the number may have been
    /// reused; prefer [`CheckpointProcess::Recorded`].
    Orphan { pgid: i32 },
}

/// `comm` of the programs a `runc checkpoint` group holds: runc, `criu swrk`, and the action
/// script (`criu-hook.sh`, which execs `ferryd criu-hook`).
const CHECKPOINT_COMMS: [&str; 5] = ["runc", "criu", "criu-hook.sh", "sh", "ferryd"];

/// The steps of a rollback, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    StopCheckpoint,
    Thaw,
    TasksRunning,
    TcpRepair,
    NetworkLock,
    Kick,
    Reattach,
    Announce,
    Record,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::StopCheckpoint => "stop the checkpoint",
            Step::Thaw => "thaw the cgroup",
            Step::TasksRunning => "tasks running",
            Step::TcpRepair => "take sockets out of TCP repair mode",
            Step::Kick => "kick the connections",
            Step::NetworkLock => "remove CRIU's network lock",
            Step::Reattach => "re-attach the veth",
            Step::Announce => "gratuitous ARP",
            Step::Record => "record the container's status",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StepOutcome {
    pub step: Step,
    pub ok: bool,
    /// What was found and done, or why it failed.
    pub detail: String,
    pub ms: u64,
}

/// Everything a rollback did and found; kept in the migration record.
#[derive(Debug, Clone, Serialize)]
pub struct ResumeReport {
    pub container: String,
    pub steps: Vec<StepOutcome>,
    /// Tasks the workload itself had stopped (`T`); left stopped on purpose (see module doc).
    pub stopped_by_user: Vec<Task>,
    pub network_lock: Option<LockRemoval>,
    /// Failed steps, as "step: detail" (the same as [`ResumeReport::failures`]); empty whenever
    /// [`resume_source`] returned Ok, since then every step held.
    pub cleanup_failures: Vec<String>,
    pub total_ms: u64,
}

impl ResumeReport {
    pub fn ok(&self) -> bool {
        self.steps.iter().all(|s| s.ok)
    }

    /// "step: detail" for every step that failed.
    pub fn failures(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter(|s| !s.ok)
            .map(|s| format!("{}: {}", s.step, s.detail))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The container could not be shown to run again; its record says `error` (unless even
    /// that could not be saved, which is then one of the failures).
    #[error("source container {container} is not verified running after the failed migration: {}", failed.join("; "))]
    NotResumed {
        container: String,
        failed: Vec<String>,
        report: Box<ResumeReport>,
    },
    /// The checkpoint's processes did not end by themselves (see [`wait_gone`]).
    #[error("the source's checkpoint did not end by itself: {0}")]
    Checkpoint(String),
}

impl ResumeError {
    /// What the rollback did, when it ran.
    pub fn report(&self) -> Option<&ResumeReport> {
        match self {
            ResumeError::NotResumed { report, .. } => Some(report),
            ResumeError::Checkpoint(_) => None,
        }
    }
}

/// After a committed migration (verdict `ok`): waits up to `timeout` for CRIU to finish the
/// source and for the whole checkpoint group to end; kills whatever is left after that. Err when
/// anything had to be killed or would not die.
pub fn wait_gone(p: CheckpointProcess, timeout: Duration) -> Result<(), ResumeError> {
    let opts = ResumeOptions {
        criu_grace: timeout,
        ..ResumeOptions::default()
    };
    let (res, lingering) = stop_checkpoint(p, &opts);
    let detail = res.map_err(ResumeError::Checkpoint)?;
    if !lingering.is_empty() || detail.contains("SIGKILLed") {
        return Err(ResumeError::Checkpoint(detail));
    }
    Ok(())
}

/// Post-copy lost its destination after the commit: kills the checkpoint at once, before CRIU
/// can thaw the source on its own (it would run with its network locked and without what it
/// did on the destination since), and keeps the tasks frozen. Ok(detail) once they are.
pub fn hold_frozen(
    engine: &Engine,
    cfg: &ContainerConfig,
    checkpoint: Option<CheckpointProcess>,
) -> Result<String, String> {
    let opts = ResumeOptions {
        criu_grace: Duration::ZERO,
        ..ResumeOptions::default()
    };
    let stopped = match checkpoint {
        Some(cp) => stop_checkpoint(cp, &opts).0,
        None => Ok("no checkpoint process to stop".into()),
    };
    let freezer = Freezer::for_container(&engine.config().cgroup_parent, &cfg.id);
    let frozen = freezer
        .freeze(opts.thaw_wait)
        .map_err(|e| format!("freezing {}: {e}", cfg.name));
    match (stopped, frozen) {
        (Ok(s), Ok(())) => Ok(format!("{s}; the tasks are frozen")),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// [`resume_source_with`] with the default limits.
pub fn resume_source(
    engine: &Engine,
    cfg: &ContainerConfig,
    checkpoint: Option<CheckpointProcess>,
) -> Result<ResumeReport, ResumeError> {
    resume_source_with(engine, cfg, checkpoint, &ResumeOptions::default())
}

/// Makes the source container `cfg` run again after a migration that did not commit, verifies
/// it, and records the outcome (see the module doc). `checkpoint` is the `runc checkpoint`
/// still possibly running, if any. Every step runs even when an earlier one failed, so the
/// container gets as far back as possible and the report says everything that is wrong.
pub fn resume_source_with(
    engine: &Engine,
    cfg: &ContainerConfig,
    checkpoint: Option<CheckpointProcess>,
    opts: &ResumeOptions,
) -> Result<ResumeReport, ResumeError> {
    let t0 = Instant::now();
    let mut r = ResumeReport {
        container: cfg.name.clone(),
        steps: Vec::new(),
        stopped_by_user: Vec::new(),
        network_lock: None,
        cleanup_failures: Vec::new(),
        total_ms: 0,
    };

    // 1. The checkpoint's processes: CRIU's own rollback, else SIGKILL. The tasks are held
    // frozen across it: a CRIU killed mid-dump leaves sockets in TCP repair mode, and a task
    // that ran before they leave it would read EINVAL and drop its clients. (A healthy CRIU
    // thaws them itself when it rolls back; the thaw below verifies either way.)
    let freezer = Freezer::for_container(&engine.config().cgroup_parent, &cfg.id);
    let held = checkpoint.is_some() && freezer.exists() && freezer.freeze(opts.thaw_wait).is_ok();
    let t = Instant::now();
    let (stop, lingering) = match checkpoint {
        Some(cp) => stop_checkpoint(cp, opts),
        None => (
            Ok("no checkpoint process to stop".to_owned()),
            Lingering::none(),
        ),
    };
    push(&mut r, Step::StopCheckpoint, t, stop);

    // Sockets out of repair mode while nothing runs.
    let t = Instant::now();
    let repair = task_pids(&freezer).and_then(|pids| {
        network::leave_tcp_repair(&pids)
            .map(|n| {
                let when = if held {
                    "while frozen"
                } else {
                    "(tasks were not held)"
                };
                format!("{n} sockets were in TCP repair mode; none is now {when}")
            })
            .map_err(|e| e.to_string())
    });
    push(&mut r, Step::TcpRepair, t, repair);

    // 2. The freezer, then what the container's tasks and runc say.
    let t = Instant::now();
    let thaw = thaw(&freezer, opts);
    push(&mut r, Step::Thaw, t, thaw);
    if !lingering.is_empty() {
        // A CRIU stuck on the frozen cgroup can only die now that it is thawed. Step 1 holds
        // exactly when everything it killed is gone, whenever that happened.
        let t = Instant::now();
        let res = lingering.wait(opts.kill_wait);
        let step = &mut r.steps[0];
        step.ms += t.elapsed().as_millis() as u64;
        match res {
            Ok(()) => {
                step.ok = true;
                step.detail += "; gone after the thaw";
            }
            Err(e) => {
                step.ok = false;
                step.detail += &format!("; after the thaw: {e}");
            }
        }
    }
    let t = Instant::now();
    let tasks = tasks_running(engine, cfg, &freezer, opts, &mut r.stopped_by_user);
    push(&mut r, Step::TasksRunning, t, tasks);

    // 3. CRIU's network lock.
    let t = Instant::now();
    let netns = engine.paths().netns(&cfg.id);
    let lock = if netns.exists() {
        match network::remove_criu_lock(&netns) {
            Ok(removal) => {
                let detail = describe_lock(&removal);
                r.network_lock = Some(removal);
                Ok(detail)
            }
            Err(errors) => Err(errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")),
        }
    } else {
        Err(format!(
            "the container's netns {} does not exist",
            netns.display()
        ))
    };
    push(&mut r, Step::NetworkLock, t, lock);

    // 4. Back on the fabric, and the clients told where the MAC is.
    let veth = Engine::host_veth(&cfg.id);
    let bridge = engine.config().bridge.name.clone();
    let t = Instant::now();
    let attach = crate::fsutil::block_on_fresh(network::attach_veth(&veth, &bridge))
        .map(|()| format!("{veth} is on {bridge} and up"))
        .map_err(|e| format!("attaching {veth} to {bridge}: {e}"));
    push(&mut r, Step::Reattach, t, attach);
    let t = Instant::now();
    let cn = engine.container_net(cfg);
    let garp =
        network::send_gratuitous_arp(&cn.netns_path, network::CONTAINER_IFNAME, cn.ip, cn.mac)
            .map(|()| format!("announced {} from {}", cn.ip, network::CONTAINER_IFNAME))
            .map_err(|e| e.to_string());
    push(&mut r, Step::Announce, t, garp);
    // What the clients sent into the network lock was dropped: each connection resends now
    // rather than after its backed-off retransmit timer.
    let t = Instant::now();
    let kick = task_pids(&freezer).and_then(|pids| {
        network::kick_tcp_retransmits(&pids)
            .map(|n| format!("{n} connections kicked"))
            .map_err(|e| e.to_string())
    });
    push(&mut r, Step::Kick, t, kick);

    // 5. The record: running only if everything above held.
    let t = Instant::now();
    let record = if r.ok() {
        engine
            .try_end_migration(&cfg.name, Status::Running)
            .map(|()| "running".to_owned())
            .map_err(|e| format!("saving status running: {e}"))
    } else {
        let reason = format!("rollback not verified: {}", r.failures().join("; "));
        match engine.fail_migration(&cfg.name, &reason) {
            Ok(()) => Ok("error (see the failed steps)".to_owned()),
            Err(e) => Err(format!("saving status error: {e}")),
        }
    };
    push(&mut r, Step::Record, t, record);
    r.total_ms = t0.elapsed().as_millis() as u64;
    r.cleanup_failures = r.failures();

    if r.ok() {
        tracing::info!(container = %cfg.name, ms = r.total_ms, "source resumed and verified");
        Ok(r)
    } else {
        let failed = r.failures();
        tracing::error!(container = %cfg.name, failed = ?failed, "source not verified running");
        Err(ResumeError::NotResumed {
            container: cfg.name.clone(),
            failed,
            report: Box::new(r),
        })
    }
}

fn push(r: &mut ResumeReport, step: Step, t: Instant, res: Result<String, String>) {
    let ok = res.is_ok();
    let detail = res.unwrap_or_else(|e| e);
    if !ok {
        tracing::warn!(container = %r.container, step = %step, %detail, "rollback step failed");
    }
    r.steps.push(StepOutcome {
        step,
        ok,
        detail,
        ms: t.elapsed().as_millis() as u64,
    });
}

fn describe_lock(removal: &LockRemoval) -> String {
    let mut s = if removal.removed.is_empty() {
        "no CRIU lock found".to_owned()
    } else {
        format!("removed {}", removal.removed.join(", "))
    };
    if !removal.nft_checked {
        s += " (nftables not checked: `nft` is not installed; ferry's CRIU uses the iptables lock)";
    }
    s
}

// ---- step 1: the checkpoint's processes ------------------------------------------------------

/// One process as `/proc/PID/stat` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Proc {
    pid: i32,
    comm: String,
    state: char,
    pgrp: i32,
    start: u64,
}

impl Proc {
    /// Gone for our purpose: a zombie holds no resources and no cgroup.
    fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

impl std::fmt::Display for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {}, state {})", self.comm, self.pid, self.state)
    }
}

fn read_proc(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, tail) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    // After the name: state(3) ppid(4) pgrp(5) ... starttime(22).
    let f: Vec<&str> = tail.split_whitespace().collect();
    Some(Proc {
        pid,
        comm,
        state: f.first()?.chars().next()?,
        pgrp: f.get(2)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

/// Live (non-zombie) members of process group `pgid`.
fn group_members(pgid: i32) -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_proc)
        .filter(|p| p.pgrp == pgid && !p.exited())
        .collect()
}

fn still_alive(procs: &[Proc]) -> Vec<Proc> {
    procs
        .iter()
        .filter_map(|p| read_proc(p.pid).filter(|now| now.start == p.start && !now.exited()))
        .collect()
}

fn list(procs: &[Proc]) -> String {
    procs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until none of `procs` is alive.
fn wait_procs_gone(procs: &[Proc], limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let left = still_alive(procs);
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "still alive {limit:?} after SIGKILL: {}",
                list(&left)
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// What survived SIGKILL, to be waited for again after the thaw (a CRIU stuck on the frozen
/// cgroup only dies once it is thawed).
#[derive(Debug, Default)]
struct Lingering {
    procs: Vec<Proc>,
    /// Our runc child if it was not reaped yet.
    child: Option<Child>,
}

impl Lingering {
    fn none() -> Self {
        Lingering::default()
    }

    fn procs(procs: Vec<Proc>) -> Self {
        Lingering { procs, child: None }
    }

    /// Waits for every lingering process, then reaps the child.
    fn wait(mut self, limit: Duration) -> Result<(), String> {
        wait_procs_gone(&self.procs, limit)?;
        if let Some(child) = self.child.as_mut() {
            // wait_gone saw it exit (a zombie), so this returns at once.
            child
                .wait()
                .map_err(|e| format!("reaping runc (pid {}): {e}", child.id()))?;
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.procs.is_empty() && self.child.is_none()
    }
}

/// Step 1. Ok(detail) when every process of the checkpoint is gone. Processes that survive the
/// kill are returned as well.
fn stop_checkpoint(
    cp: CheckpointProcess,
    opts: &ResumeOptions,
) -> (Result<String, String>, Lingering) {
    let own_pgrp = nix::unistd::getpgrp().as_raw();
    match cp {
        CheckpointProcess::Child(child) => stop_child(child, own_pgrp, opts),
        CheckpointProcess::Recorded(rec) => {
            stop_orphan(rec.pgid, Some(rec.leader_start), own_pgrp, opts)
        }
        CheckpointProcess::Orphan { pgid } => stop_orphan(pgid, None, own_pgrp, opts),
    }
}

fn stop_child(
    mut child: Child,
    own_pgrp: i32,
    opts: &ResumeOptions,
) -> (Result<String, String>, Lingering) {
    let pid = child.id() as i32;
    let leader = read_proc(pid);
    // Only a group of its own may be killed as a group: anything else could be ferryd's.
    let pgid = leader
        .as_ref()
        .filter(|p| p.pgrp == pid && p.pgrp != own_pgrp)
        .map(|p| p.pgrp);
    let deadline = Instant::now() + opts.criu_grace;
    let mut status = None;
    loop {
        if status.is_none() {
            match child.try_wait() {
                Ok(s) => status = s,
                Err(e) => {
                    return (
                        Err(format!("waiting for runc checkpoint (pid {pid}): {e}")),
                        Lingering::none(),
                    )
                }
            }
        }
        let members = pgid.map(group_members).unwrap_or_default();
        if let (Some(s), true) = (status, members.is_empty()) {
            return (
                Ok(format!(
                    "runc checkpoint (pid {pid}) ended by itself ({s}) within the grace period"
                )),
                Lingering::none(),
            );
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(POLL);
    }
    let Some(pgid) = pgid else {
        // Not a group leader: runc alone can be killed; its CRIU would survive unseen.
        let killed = child.kill();
        let waited = child.wait();
        return (
            Err(format!(
                "runc checkpoint (pid {pid}) was not started in its own process group, so only \
                 runc could be killed ({}); CRIU and the hook may still run",
                match (killed, waited) {
                    (Ok(()), Ok(s)) => format!("it ended: {s}"),
                    (Err(e), _) | (_, Err(e)) => format!("killing it failed: {e}"),
                }
            )),
            Lingering::none(),
        );
    };
    let members = group_members(pgid);
    let kill_res = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    let deadline = Instant::now() + opts.kill_wait;
    while status.is_none() && Instant::now() < deadline {
        match child.try_wait() {
            Ok(s) => status = s,
            Err(e) => {
                return (
                    Err(format!(
                        "waiting for killed runc checkpoint (pid {pid}): {e}"
                    )),
                    Lingering::procs(members),
                )
            }
        }
        if status.is_none() {
            std::thread::sleep(POLL);
        }
    }
    let rest = deadline.saturating_duration_since(Instant::now());
    let killed = format!(
        "CRIU did not finish its rollback within {:?}; SIGKILLed process group {pgid} ({})",
        opts.criu_grace,
        list(&members)
    );
    let result = match (kill_res, status) {
        (Err(e), _) if e != nix::errno::Errno::ESRCH => Err(format!("kill failed: {e}")),
        (_, None) => Err(format!(
            "runc (pid {pid}) did not exit within {:?}",
            opts.kill_wait
        )),
        (_, Some(_)) => wait_procs_gone(&members, rest),
    };
    let lingering = Lingering {
        procs: if result.is_ok() {
            Vec::new()
        } else {
            still_alive(&members)
        },
        // Kept to be reaped once it dies, or it would stay a zombie of ferryd.
        child: status.is_none().then_some(child),
    };
    (
        result
            .map(|()| format!("{killed}; all gone"))
            .map_err(|e| format!("{killed}: {e}")),
        lingering,
    )
}

fn stop_orphan(
    pgid: i32,
    leader_start: Option<u64>,
    own_pgrp: i32,
    opts: &ResumeOptions,
) -> (Result<String, String>, Lingering) {
    if pgid <= 1 || pgid == own_pgrp {
        return (
            Err(format!(
                "refusing to kill process group {pgid}: it is not a checkpoint's group"
            )),
            Lingering::none(),
        );
    }
    // A leader alive with another start time means the number was reused: not ours.
    if let (Some(leader), Some(start)) = (read_proc(pgid), leader_start) {
        if leader.start != start && !leader.exited() {
            return (
                Ok(format!(
                    "the checkpoint's process group {pgid} is gone (the number now belongs to {leader})"
                )),
                Lingering::none(),
            );
        }
    }
    let deadline = Instant::now() + opts.criu_grace;
    let mut members = group_members(pgid);
    while !members.is_empty() && Instant::now() < deadline {
        std::thread::sleep(POLL);
        members = group_members(pgid);
    }
    if members.is_empty() {
        return (
            Ok(format!("the checkpoint's process group {pgid} is gone")),
            Lingering::none(),
        );
    }
    let strangers: Vec<Proc> = members
        .iter()
        .filter(|p| !CHECKPOINT_COMMS.contains(&p.comm.as_str()))
        .cloned()
        .collect();
    if leader_start.is_none() && !strangers.is_empty() {
        return (
            Err(format!(
                "process group {pgid} holds {}, which is not runc, criu or the hook: not killed \
                 (the number may have been reused; the checkpoint's fate is unknown)",
                list(&strangers)
            )),
            Lingering::none(),
        );
    }
    let killed = format!(
        "the checkpoint's process group {pgid} outlived ferryd ({}); SIGKILLed it",
        list(&members)
    );
    if let Err(e) = killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
        if e != nix::errno::Errno::ESRCH {
            return (
                Err(format!("{killed}: kill failed: {e}")),
                Lingering::procs(members),
            );
        }
    }
    match wait_procs_gone(&members, opts.kill_wait) {
        Ok(()) => (Ok(format!("{killed}; all gone")), Lingering::none()),
        Err(e) => (
            Err(format!("{killed}: {e}")),
            Lingering::procs(still_alive(&members)),
        ),
    }
}

// ---- step 2: freezer and tasks --------------------------------------------------------------

/// The container's task ids (threads included).
fn task_pids(freezer: &Freezer) -> Result<Vec<u32>, String> {
    Ok(freezer
        .tasks()
        .map_err(|e| e.to_string())?
        .iter()
        .map(|t| t.tid as u32)
        .collect())
}

fn thaw(freezer: &Freezer, opts: &ResumeOptions) -> Result<String, String> {
    if !freezer.exists() {
        return Err(format!(
            "freezer cgroup {} does not exist: the container's processes are gone",
            freezer.dir().display()
        ));
    }
    let before = freezer.state().map_err(|e| e.to_string())?;
    freezer.thaw(opts.thaw_wait).map_err(|e| e.to_string())?;
    // Read back once more: this is the verification, not the write.
    let after = freezer.state().map_err(|e| e.to_string())?;
    Ok(format!("was {before}, reads {after}"))
}

fn tasks_running(
    engine: &Engine,
    cfg: &ContainerConfig,
    freezer: &Freezer,
    opts: &ResumeOptions,
    stopped_by_user: &mut Vec<Task>,
) -> Result<String, String> {
    let deadline = Instant::now() + opts.task_wait;
    let mut previous: Option<Vec<i32>> = None;
    let tasks = loop {
        let tasks = freezer.tasks().map_err(|e| e.to_string())?;
        if tasks.is_empty() {
            return Err(format!(
                "no task left in {}: the container is not running",
                freezer.dir().display()
            ));
        }
        let traced: Vec<&Task> = tasks.iter().filter(|t| t.trace_stopped()).collect();
        // A task CRIU had seized runs for an instant when its dead tracer lets go, then
        // re-enters the job-control stop it was in: only a stopped set seen twice is settled.
        let stopped: Vec<i32> = tasks
            .iter()
            .filter(|t| t.job_stopped())
            .map(|t| t.tid)
            .collect();
        let settled = previous.as_ref() == Some(&stopped);
        if traced.is_empty() && (settled || Instant::now() >= deadline) {
            break tasks;
        }
        previous = Some(stopped);
        if !traced.is_empty() && Instant::now() >= deadline {
            return Err(format!(
                "tasks still in a tracing stop {:?} after the checkpoint ended: {}",
                opts.task_wait,
                traced
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        std::thread::sleep(SETTLE);
    };
    // Checked again here, not left to runc: runc reports a cgroup frozen only through its
    // parent as running, but its tasks do not run.
    match freezer.state() {
        Ok(FreezerState::Thawed) => {}
        Ok(s) => {
            return Err(format!(
                "the cgroup reads {s}: its {} tasks cannot run",
                tasks.len()
            ))
        }
        Err(e) => return Err(e.to_string()),
    }
    // runc's view: "paused" here would mean the thaw did not hold.
    match engine.runc().state(&cfg.id) {
        Ok(Some(s)) if s.status == RuncStatus::Running => {}
        Ok(Some(s)) => return Err(format!("runc says the container is {}", s.status)),
        Ok(None) => return Err("runc no longer knows the container".to_owned()),
        Err(e) => return Err(format!("runc state: {e}")),
    }
    stopped_by_user.extend(tasks.iter().filter(|t| t.job_stopped()).cloned());
    let mut detail = format!(
        "{} tasks, none frozen or traced; runc says running",
        tasks.len()
    );
    if !stopped_by_user.is_empty() {
        detail += &format!(
            "; left stopped as the workload had them (SIGSTOP): {}",
            stopped_by_user
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(detail)
}

#[cfg(test)]
// Test workloads (sleep, sh) are processes to act on, not tools: spawned directly, not via Tool.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn sleeper_group() -> Child {
        std::process::Command::new("sh")
            .args(["-c", "sleep 1000 & sleep 1000; wait"])
            .process_group(0)
            .spawn()
            .expect("spawn sh")
    }

    fn quick() -> ResumeOptions {
        ResumeOptions {
            criu_grace: Duration::from_millis(200),
            kill_wait: Duration::from_secs(5),
            thaw_wait: Duration::from_secs(1),
            task_wait: Duration::from_secs(1),
        }
    }

    #[test]
    fn stat_fields_are_parsed() {
        let me = read_proc(std::process::id() as i32).unwrap();
        assert_eq!(me.pgrp, nix::unistd::getpgrp().as_raw());
        assert!(me.start > 0);
    }

    /// A real process group of several processes (like runc + criu + hook) is killed whole.
    #[test]
    fn child_group_is_killed_whole() {
        let child = sleeper_group();
        let pgid = child.id() as i32;
        let rec = GroupRecord::of_child(&child).expect("group leader");
        assert_eq!(rec.pgid, pgid);
        let deadline = Instant::now() + Duration::from_secs(5);
        while group_members(pgid).len() < 3 {
            assert!(Instant::now() < deadline, "the sleeps never started");
            std::thread::sleep(POLL);
        }
        let (res, lingering) = stop_checkpoint(CheckpointProcess::Child(child), &quick());
        let detail = res.expect("stopped");
        assert!(detail.contains("SIGKILLed process group"), "{detail}");
        assert!(lingering.is_empty());
        assert!(group_members(pgid).is_empty());
        // The orphaned sleeps are zombies until init reaps them; then the group is no more.
        let deadline = Instant::now() + Duration::from_secs(5);
        while killpg(Pid::from_raw(pgid), None) != Err(nix::errno::Errno::ESRCH) {
            assert!(Instant::now() < deadline, "group {pgid} still exists");
            std::thread::sleep(POLL);
        }
    }

    /// After a restart only the record is left; the group is found and killed by number.
    #[test]
    fn orphan_group_is_killed_by_record() {
        let mut child = sleeper_group();
        let rec = GroupRecord::of_child(&child).expect("group leader");
        let (res, _) = stop_checkpoint(CheckpointProcess::Recorded(rec), &quick());
        assert!(res.expect("stopped").contains("SIGKILLed"));
        child.wait().expect("reap");
        assert!(group_members(rec.pgid).is_empty());
    }

    /// A record whose leader number now belongs to another process is not killed.
    #[test]
    fn reused_group_number_is_left_alone() {
        let mut child = sleeper_group();
        let mut rec = GroupRecord::of_child(&child).expect("group leader");
        rec.leader_start -= 1;
        let (res, _) = stop_checkpoint(CheckpointProcess::Recorded(rec), &quick());
        assert!(res.expect("ok").contains("now belongs to"));
        assert!(
            !group_members(rec.pgid).is_empty(),
            "someone else's group was killed"
        );
        killpg(Pid::from_raw(rec.pgid), Signal::SIGKILL).unwrap();
        child.wait().expect("reap");
    }

    /// A child that shares our process group is never killed as a group.
    #[test]
    fn child_without_own_group_only_kills_the_child() {
        let child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        let (res, _) = stop_checkpoint(CheckpointProcess::Child(child), &quick());
        let e = res.unwrap_err();
        assert!(e.contains("not started in its own process group"), "{e}");
    }

    /// Ending by itself within the grace period is the normal case: nothing is killed.
    #[test]
    fn checkpoint_that_ends_by_itself() {
        let child = std::process::Command::new("true")
            .process_group(0)
            .spawn()
            .unwrap();
        let (res, _) = stop_checkpoint(CheckpointProcess::Child(child), &quick());
        assert!(res.unwrap().contains("ended by itself"));
    }

    /// With only a group id, a group that holds anything but the checkpoint's programs is
    /// not killed: the number may belong to someone else now.
    #[test]
    fn pgid_only_record_kills_only_what_looks_like_a_checkpoint() {
        let mut stranger = std::process::Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = stranger.id() as i32;
        let (res, _) = stop_checkpoint(CheckpointProcess::Orphan { pgid }, &quick());
        let e = res.unwrap_err();
        assert!(e.contains("not runc, criu or the hook"), "{e}");
        assert!(
            stranger.try_wait().unwrap().is_none(),
            "a stranger was killed"
        );
        stranger.kill().unwrap();
        stranger.wait().unwrap();

        // An `sh` (as the hook runs) waiting on its stdin: looks like a checkpoint's group.
        let mut hook_like = std::process::Command::new("sh")
            .args(["-c", "read x"])
            .stdin(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = hook_like.id() as i32;
        let (res, _) = stop_checkpoint(CheckpointProcess::Orphan { pgid }, &quick());
        assert!(res.unwrap().contains("SIGKILLed"));
        hook_like.wait().unwrap();
    }

    /// The committed path: a checkpoint that ends by itself is fine, one that must be killed
    /// is reported.
    #[test]
    fn wait_gone_reports_a_kill() {
        let quick_exit = std::process::Command::new("true")
            .process_group(0)
            .spawn()
            .unwrap();
        wait_gone(CheckpointProcess::Child(quick_exit), Duration::from_secs(5)).unwrap();
        let e = wait_gone(
            CheckpointProcess::Child(sleeper_group()),
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(e.to_string().contains("SIGKILLed"), "{e}");
    }
}
