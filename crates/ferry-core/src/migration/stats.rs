//! The statistics the peers exchange, built from what this host measured. CRIU's numbers
//! ([`crate::criu::CriuRestoreStats`]) become the protocol's ([`RestoreStats`]) here and only
//! here, so `container` and `criu` know nothing of the protocol.

use std::net::SocketAddr;
use std::path::Path;

use ferry_proto::RestoreStats;

use crate::container::checkpoint::RestoredImages;
use crate::container::{ContainerError, Engine};
use crate::criu::LazyPagesDaemon;

/// Restores an incoming container ([`Engine::restore_incoming`]) and says what that cost in
/// the protocol's terms (the caller adds the destination's own timings); in post-copy, also
/// the daemon still pulling pages.
pub(super) fn restore(
    engine: &Engine,
    name: &str,
    images: &Path,
    lazy: Option<SocketAddr>,
) -> Result<(RestoreStats, Option<LazyPagesDaemon>), ContainerError> {
    let restored = engine.restore_incoming(name, images, lazy)?;
    Ok((restore_stats(&restored), restored.lazy))
}

/// The part of the destination's [`RestoreStats`] the restore itself knows: `runc restore`'s
/// wall time and CRIU's numbers (0 where CRIU wrote none).
fn restore_stats(r: &RestoredImages) -> RestoreStats {
    let criu = r.stats.as_ref();
    RestoreStats {
        restore_us: r.restore_ms * 1000,
        forking_us: criu.map(|s| s.forking_time_us).unwrap_or(0),
        pages_restored: criu.and_then(|s| s.pages_restored).unwrap_or(0),
        criu_restore_us: criu.map(|s| s.restore_time_us).unwrap_or(0),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu::CriuRestoreStats;

    #[test]
    fn criu_restore_numbers_land_in_the_protocol_fields() {
        let mut r = RestoredImages {
            pid: 1,
            restore_ms: 412,
            stats: Some(CriuRestoreStats {
                pages_compared: 3,
                pages_skipped_cow: 4,
                forking_time_us: 1_500,
                restore_time_us: 320_250,
                pages_restored: Some(65_536),
            }),
            lazy: None,
        };
        assert_eq!(
            restore_stats(&r),
            RestoreStats {
                restore_us: 412_000,
                forking_us: 1_500,
                pages_restored: 65_536,
                criu_restore_us: 320_250,
                ..Default::default()
            }
        );
        // No stats-restore (CRIU did not write one): runc's time only.
        r.stats = None;
        assert_eq!(
            restore_stats(&r),
            RestoreStats {
                restore_us: 412_000,
                ..Default::default()
            }
        );
    }
}
