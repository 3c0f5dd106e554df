//! Removes scratch dirs that belong to no live operation: at startup (after the interrupted
//! migrations are recovered) and every [`SweepPolicy::every`] while ferryd runs.
//!
//! Every operation cleans its own scratch through a drop guard, so what is left was left by a
//! ferryd that was killed, or by a guard whose removal failed. A dir is live, and kept, when
//! - it is a migration's (`migrate-ID-*`) whose record is not final (an in-doubt source keeps
//!   its CRIU hook socket there), or an `incoming-*` while any arrival is not final;
//! - a process has a file in it open, or works in it (a CRIU that outlived its ferryd);
//! - in the periodic sweep only: anything in it changed within [`SweepPolicy::min_age`], which
//!   is longer than any operation's deadline or idle timeout (a live operation of this ferryd
//!   writes to its scratch far more often than that).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ferry_core::migration::record::{self, Role};
use ferry_core::paths::HostPaths;

/// Names of the scratch dirs ferry's operations make, by where they are made.
const TMP_PREFIXES: [&str; 4] = ["migrate-", "incoming-", "import-", "ckpt-image-"];
const IMAGE_TMP_PREFIXES: [&str; 1] = ["stage-"];
/// How deep the age check looks into a scratch dir.
const AGE_DEPTH: usize = 4;

#[derive(Debug, Clone, Copy)]
pub struct SweepPolicy {
    pub every: Duration,
    pub min_age: Duration,
}

impl Default for SweepPolicy {
    fn default() -> Self {
        SweepPolicy {
            every: Duration::from_secs(10 * 60),
            // Beyond the import deadline (30 min) with room to spare.
            min_age: Duration::from_secs(2 * 60 * 60),
        }
    }
}

/// One sweep. `min_age` is `None` at startup (no operation of this ferryd has begun yet).
/// Returns the dirs it removed.
pub fn sweep(paths: &HostPaths, min_age: Option<Duration>) -> Vec<PathBuf> {
    let records = record::list(paths);
    let live_migrations: Vec<String> = records
        .iter()
        .filter(|r| !r.stage.is_final())
        .map(|r| format!("migrate-{}-", r.migration_id))
        .collect();
    let arrivals = records
        .iter()
        .any(|r| r.role == Role::Destination && !r.stage.is_final());
    let candidates = scratch_dirs(&paths.tmp(), &TMP_PREFIXES)
        .into_iter()
        .chain(scratch_dirs(&paths.page_scratch(), &["incoming-"]))
        .chain(scratch_dirs(
            &paths.images().join("tmp"),
            &IMAGE_TMP_PREFIXES,
        ));
    let mut open: Option<Vec<PathBuf>> = None;
    let mut removed = Vec::new();
    for dir in candidates {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if live_migrations.iter().any(|p| name.starts_with(p))
            || (arrivals && name.starts_with("incoming-"))
        {
            continue;
        }
        if let Some(age) = min_age {
            if newest_change(&dir, AGE_DEPTH).is_some_and(|t| t.elapsed().unwrap_or_default() < age)
            {
                continue;
            }
        }
        // Read once per sweep, and only when something is a candidate.
        let open = open.get_or_insert_with(paths_in_use);
        if open.iter().any(|p| p.starts_with(&dir)) {
            tracing::debug!(dir = %dir.display(), "scratch dir in use by a process: kept");
            continue;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "removed a stale scratch dir");
                removed.push(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "removing a stale scratch dir")
            }
        }
    }
    removed
}

/// The dirs in `parent` whose names start with one of `prefixes` (no symlinks followed).
fn scratch_dirs(parent: &Path, prefixes: &[&str]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            prefixes.iter().any(|p| n.starts_with(p))
        })
        .map(|e| e.path())
        .collect()
}

/// The latest modification time of `path` and what lies under it, `depth` levels down.
fn newest_change(path: &Path, depth: usize) -> Option<SystemTime> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let mut newest = meta.modified().ok()?;
    if meta.is_dir() && depth > 0 {
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                if let Some(t) = newest_change(&e.path(), depth - 1) {
                    newest = newest.max(t);
                }
            }
        }
    }
    Some(newest)
}

/// Every file any process has open, and every process's working directory.
fn paths_in_use() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let pid = p.path();
        if !p
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(cwd) = std::fs::read_link(pid.join("cwd")) {
            out.push(cwd);
        }
        if let Ok(fds) = std::fs::read_dir(pid.join("fd")) {
            out.extend(
                fds.flatten()
                    .filter_map(|fd| std::fs::read_link(fd.path()).ok()),
            );
        }
    }
    out
}

/// Sweeps every `policy.every`, on the blocking pool, for as long as ferryd runs.
pub fn spawn_periodic(paths: HostPaths, policy: SweepPolicy) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(policy.every).await;
            let p = paths.clone();
            let _ = tokio::task::spawn_blocking(move || sweep(&p, Some(policy.min_age))).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_scratch_goes_and_live_scratch_stays() {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths::new(dir.path());
        let tmp = paths.tmp();
        let images_tmp = paths.images().join("tmp");
        for d in [&tmp, &images_tmp] {
            std::fs::create_dir_all(d).unwrap();
        }
        let stale = [
            tmp.join("migrate-m1-abc"),
            tmp.join("incoming-x"),
            tmp.join("import-y"),
            images_tmp.join("stage-z"),
        ];
        for d in &stale {
            std::fs::create_dir_all(d.join("sub")).unwrap();
            std::fs::write(d.join("sub/file"), b"x").unwrap();
        }
        let foreign = tmp.join("not-ours");
        std::fs::create_dir(&foreign).unwrap();
        // Held open by this process: kept.
        let held = tmp.join("import-held");
        std::fs::create_dir(&held).unwrap();
        let _f = std::fs::File::create(held.join("f")).unwrap();

        // The periodic sweep keeps what changed recently.
        assert!(sweep(&paths, Some(Duration::from_secs(3600))).is_empty());
        // Startup: no age rule.
        let mut removed = sweep(&paths, None);
        removed.sort();
        let mut want = stale.to_vec();
        want.sort();
        assert_eq!(removed, want);
        assert!(foreign.exists() && held.exists());
    }
}
