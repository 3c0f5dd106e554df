//! CRIU's statistics images: `stats-dump` (written by every dump, and by the page server) and
//! `stats-restore` (written by restore into its work directory).
//!
//! [`CriuDumpStats`] and [`CriuRestoreStats`] are what CRIU wrote, field for field; their JSON is
//! what `ferry checkpoint`/`restore` and a migration report's `criu_dump` show. What the peers
//! tell each other about a dump or restore is `ferry_proto::{DumpStats, RestoreStats}`, a
//! different thing with its own (fixed) field names; `migration::stats` builds it from these.

use std::path::Path;

use prost::Message;
use serde::{Deserialize, Serialize};

use super::image::{read_image_entries, ImageMagic};
use super::proto;
use super::CriuError;

pub const STATS_DUMP: &str = "stats-dump";
pub const STATS_RESTORE: &str = "stats-restore";

/// What a dump cost. Times in microseconds, counts in pages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriuDumpStats {
    /// From the freeze request until every task was frozen.
    pub freezing_time_us: u64,
    /// How long the tasks stayed frozen: the downtime of a stop-and-copy dump.
    pub frozen_time_us: u64,
    pub memdump_time_us: u64,
    pub memwrite_time_us: u64,
    pub irmap_resolve_us: Option<u64>,
    pub pages_scanned: u64,
    /// Unchanged since the parent (pre-dump) image, so not written again.
    pub pages_skipped_parent: u64,
    pub pages_written: u64,
    /// Left on the source for the lazy-pages daemon to pull (post-copy).
    pub pages_lazy: u64,
    pub page_pipes: Option<u64>,
    pub page_pipe_bufs: Option<u64>,
    pub shpages_scanned: Option<u64>,
    pub shpages_skipped_parent: Option<u64>,
    pub shpages_written: Option<u64>,
}

/// What a restore cost. Times in microseconds, counts in pages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriuRestoreStats {
    pub pages_compared: u64,
    pub pages_skipped_cow: u64,
    pub forking_time_us: u64,
    pub restore_time_us: u64,
    pub pages_restored: Option<u64>,
}

impl From<proto::DumpStatsEntry> for CriuDumpStats {
    fn from(e: proto::DumpStatsEntry) -> Self {
        CriuDumpStats {
            freezing_time_us: e.freezing_time.into(),
            frozen_time_us: e.frozen_time.into(),
            memdump_time_us: e.memdump_time.into(),
            memwrite_time_us: e.memwrite_time.into(),
            irmap_resolve_us: e.irmap_resolve.map(u64::from),
            pages_scanned: e.pages_scanned,
            pages_skipped_parent: e.pages_skipped_parent,
            pages_written: e.pages_written,
            pages_lazy: e.pages_lazy,
            page_pipes: e.page_pipes,
            page_pipe_bufs: e.page_pipe_bufs,
            shpages_scanned: e.shpages_scanned,
            shpages_skipped_parent: e.shpages_skipped_parent,
            shpages_written: e.shpages_written,
        }
    }
}

impl From<proto::RestoreStatsEntry> for CriuRestoreStats {
    fn from(e: proto::RestoreStatsEntry) -> Self {
        CriuRestoreStats {
            pages_compared: e.pages_compared,
            pages_skipped_cow: e.pages_skipped_cow,
            forking_time_us: e.forking_time.into(),
            restore_time_us: e.restore_time.into(),
            pages_restored: e.pages_restored,
        }
    }
}

/// Parses `images_dir/stats-dump`.
pub fn read_dump_stats(images_dir: &Path) -> Result<CriuDumpStats, CriuError> {
    let path = images_dir.join(STATS_DUMP);
    let entry = read_stats_entry(&path)?;
    entry
        .dump
        .map(CriuDumpStats::from)
        .ok_or_else(|| CriuError::Image {
            path,
            problem: "stats entry has no dump section".into(),
        })
}

/// Parses `dir/stats-restore` (`dir` is the restore's work directory, by default the images dir).
pub fn read_restore_stats(dir: &Path) -> Result<CriuRestoreStats, CriuError> {
    let path = dir.join(STATS_RESTORE);
    let entry = read_stats_entry(&path)?;
    entry
        .restore
        .map(CriuRestoreStats::from)
        .ok_or_else(|| CriuError::Image {
            path,
            problem: "stats entry has no restore section".into(),
        })
}

fn read_stats_entry(path: &Path) -> Result<proto::StatsEntry, CriuError> {
    let entries = read_image_entries(path, ImageMagic::STATS)?;
    let [entry] = entries.as_slice() else {
        return Err(CriuError::Image {
            path: path.to_owned(),
            problem: format!("expected one stats entry, found {}", entries.len()),
        });
    };
    proto::StatsEntry::decode(entry.as_slice()).map_err(|e| CriuError::Image {
        path: path.to_owned(),
        problem: format!("bad stats entry: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::super::image::write_image_entries;
    use super::super::testutil::{dump_sleeper, restore_detached, serial, RestoredProcess};
    use super::*;
    use crate::criu::testutil::{absent, Need};

    fn write_stats(dir: &Path, name: &str, entry: &proto::StatsEntry) {
        write_image_entries(&dir.join(name), ImageMagic::STATS, &[entry.encode_to_vec()]).unwrap();
    }

    #[test]
    fn synthetic_dump_stats() {
        let dir = tempfile::tempdir().unwrap();
        let entry = proto::StatsEntry {
            dump: Some(proto::DumpStatsEntry {
                freezing_time: 101_000,
                frozen_time: 533_000,
                memdump_time: 292_000,
                memwrite_time: 250_000,
                pages_scanned: 70_000,
                pages_skipped_parent: 0,
                pages_written: 65_536,
                irmap_resolve: None,
                pages_lazy: 12,
                page_pipes: Some(3),
                page_pipe_bufs: Some(9),
                shpages_scanned: None,
                shpages_skipped_parent: None,
                shpages_written: Some(4),
            }),
            restore: None,
        };
        write_stats(dir.path(), STATS_DUMP, &entry);
        let s = read_dump_stats(dir.path()).unwrap();
        assert_eq!(s.freezing_time_us, 101_000);
        assert_eq!(s.frozen_time_us, 533_000);
        assert_eq!(s.memdump_time_us, 292_000);
        assert_eq!(s.memwrite_time_us, 250_000);
        assert_eq!(s.pages_scanned, 70_000);
        assert_eq!(s.pages_written, 65_536);
        assert_eq!(s.pages_lazy, 12);
        assert_eq!(s.irmap_resolve_us, None);
        assert_eq!(s.page_pipes, Some(3));
        assert_eq!(s.shpages_written, Some(4));

        // A stats-dump holds no restore section.
        std::fs::rename(dir.path().join(STATS_DUMP), dir.path().join(STATS_RESTORE)).unwrap();
        let err = read_restore_stats(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("stats-restore: stats entry has no restore section"),
            "{err}"
        );
    }

    #[test]
    fn synthetic_restore_stats() {
        let dir = tempfile::tempdir().unwrap();
        let entry = proto::StatsEntry {
            dump: None,
            restore: Some(proto::RestoreStatsEntry {
                pages_compared: 5,
                pages_skipped_cow: 6,
                forking_time: 700,
                restore_time: 160_000,
                pages_restored: Some(65_536),
            }),
        };
        write_stats(dir.path(), STATS_RESTORE, &entry);
        let s = read_restore_stats(dir.path()).unwrap();
        assert_eq!(
            s,
            CriuRestoreStats {
                pages_compared: 5,
                pages_skipped_cow: 6,
                forking_time_us: 700,
                restore_time_us: 160_000,
                pages_restored: Some(65_536),
            }
        );
    }

    #[test]
    fn damaged_stats_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_dump_stats(dir.path()).unwrap_err().to_string();
        assert!(err.contains("stats-dump"), "{err}");

        write_image_entries(
            &dir.path().join(STATS_DUMP),
            ImageMagic::STATS,
            &[vec![0x0a, 0x05, 0x08]],
        )
        .unwrap();
        let err = read_dump_stats(dir.path()).unwrap_err().to_string();
        assert!(err.contains("bad stats entry"), "{err}");

        write_image_entries(&dir.path().join(STATS_DUMP), ImageMagic::STATS, &[]).unwrap();
        let err = read_dump_stats(dir.path()).unwrap_err().to_string();
        assert!(err.contains("expected one stats entry, found 0"), "{err}");
    }

    /// A real dump and restore of a small process with the installed CRIU.
    #[test]
    fn real_dump_and_restore_stats() {
        if absent(&[Need::Root, Need::Criu]) {
            return;
        }
        let _turn = serial();
        let dir = tempfile::tempdir().unwrap();
        let tag = dump_sleeper(dir.path(), &[]);

        let d = read_dump_stats(dir.path()).unwrap();
        assert!(d.pages_written > 0, "{d:?}");
        assert!(d.pages_scanned >= d.pages_written, "{d:?}");
        assert!(d.frozen_time_us > 0, "{d:?}");
        assert!(d.frozen_time_us >= d.memdump_time_us, "{d:?}");
        assert_eq!(d.pages_lazy, 0, "{d:?}");
        // The pages really are in the images: pages-*.img holds pages_written 4 KiB pages.
        let page_bytes: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert_eq!(page_bytes, d.pages_written * 4096, "{d:?}");

        let restored: RestoredProcess = restore_detached(dir.path(), &tag, &[]);
        assert!(restored.is_alive());
        let r = read_restore_stats(dir.path()).unwrap();
        assert!(r.restore_time_us > 0, "{r:?}");
        assert!(r.forking_time_us > 0, "{r:?}");
        if let Some(restored_pages) = r.pages_restored {
            assert_eq!(restored_pages, d.pages_written, "{r:?}");
        }
    }
}
