//! `rm` of a container another operation holds (a checkpoint, a restore, the end of a stop).
//!
//! `rm` used to wait for the container's lock for as long as the other operation took, with
//! no word. Now it waits at most [`RM_WAIT`] and then says what it waited for. With `--force`
//! it first kills the container's processes, as Docker's `rm -f` does: a checkpoint then
//! fails at once and lets go, so the removal goes on. A migrating container is never killed
//! (the migration decides where it lives); `rm` waits, then refuses.

use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use super::engine::Slot;
use super::{ContainerError, ContainerRecord, Engine, Status};

/// How long `rm` waits for another operation to let go of a container.
pub const RM_WAIT: Duration = Duration::from_secs(60);
/// How often the lock is tried meanwhile.
const POLL: Duration = Duration::from_millis(20);

impl Engine {
    /// `slot`'s lock for `rm`, within `wait` (see the module docs).
    pub(crate) fn lock_for_remove<'a>(
        &self,
        name: &str,
        slot: &'a Slot,
        force: bool,
        wait: Duration,
    ) -> Result<MutexGuard<'a, ContainerRecord>, ContainerError> {
        let t0 = Instant::now();
        let mut killed = false;
        loop {
            match slot.try_lock() {
                Ok(g) => return Ok(g),
                Err(std::sync::TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
            // What the other operation last saved: the reader's view, never waiting.
            let seen = self.inspect(name).ok();
            if force && !killed {
                if let Some(rec) = seen.as_ref().filter(|r| r.status != Status::Migrating) {
                    tracing::info!(container = %name, "rm -f of a busy container: killing it first");
                    if let Err(e) = self.runc().kill(&rec.config.id, "SIGKILL", true) {
                        // Not running any more, most likely: the wait below decides.
                        tracing::debug!(container = %name, error = %e, "rm -f: kill");
                    }
                    killed = true;
                }
            }
            if t0.elapsed() >= wait {
                let status = seen.map(|r| r.status).unwrap_or(Status::Running);
                let why = if status == Status::Migrating {
                    "it is being migrated; rm waits for the migration's end, and it did not end \
                     within {s} s: try again once it has"
                } else {
                    "another operation on it (a checkpoint, restore or stop) did not let go within \
                     {s} s; try again once it has ended"
                };
                return Err(ContainerError::WrongState {
                    name: name.to_owned(),
                    status,
                    why: why.replace("{s}", &wait.as_secs().to_string()),
                });
            }
            std::thread::sleep(POLL);
        }
    }
}
