//! This host's memory, as an incoming migration needs it.
//!
//! On a virtual machine whose balloon reports free pages to the hypervisor (virtio-balloon
//! free page reporting, as on ferry's project machine), memory the guest has not used for a
//! couple of seconds is handed back, and the next first touch of each page traps to the
//! hypervisor: 0.4–0.7 s per GiB. A stop-and-copy destination writes the whole memory of the
//! container inside the frozen window (the received pages' scratch; the restore reuses it as it
//! reads, see `RestoreOpts::auto_dedup`), so that cost lands on the downtime. [`Warmed`]
//! touches the memory the incoming pages will need while the source still runs, and gives it
//! back in chunks just ahead of the pages as they arrive ([`Warmed::release_up_to`]): memory
//! freed more than about two seconds before it is used would be handed back to the hypervisor
//! again. It also makes reclaim (page cache to free memory) happen before the freeze instead
//! of in it.
//!
//! [`check_room`] refuses, before anything freezes, a container this host cannot hold.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

/// Memory left to everything else on this host when ferry warms or admits a container.
pub const HEADROOM: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HostMemError {
    #[error("reading {path}: {source}")]
    Meminfo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} has no MemAvailable line")]
    NoMemAvailable { path: PathBuf },
    #[error(
        "not enough memory: {available_mib} MiB available, the container uses {needed_mib} MiB \
         (and {headroom_mib} MiB stay free for the host)"
    )]
    NoRoom {
        available_mib: u64,
        needed_mib: u64,
        headroom_mib: u64,
    },
    #[error("warming {bytes} bytes of memory: {source}")]
    Warm { bytes: u64, source: std::io::Error },
}

const MEMINFO: &str = "/proc/meminfo";

/// `MemAvailable` of `/proc/meminfo`, in bytes: free memory plus what reclaim can free.
pub fn available() -> Result<u64, HostMemError> {
    let text = std::fs::read_to_string(MEMINFO).map_err(|source| HostMemError::Meminfo {
        path: MEMINFO.into(),
        source,
    })?;
    parse_available(&text).ok_or_else(|| HostMemError::NoMemAvailable {
        path: MEMINFO.into(),
    })
}

fn parse_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses a container of `needed` bytes when this host's available memory minus
/// [`HEADROOM`] cannot hold it.
pub fn check_room(needed: u64, available: u64) -> Result<(), HostMemError> {
    if needed.saturating_add(HEADROOM) > available {
        return Err(HostMemError::NoRoom {
            available_mib: available >> 20,
            needed_mib: needed >> 20,
            headroom_mib: HEADROOM >> 20,
        });
    }
    Ok(())
}

/// The unit in which warmed memory is held and given back.
pub const CHUNK: u64 = 64 << 20;

/// Memory touched and held, in [`CHUNK`]s (anonymous memfds, written). A
/// chunk given back goes to the kernel's free lists still backed by the hypervisor; dropping
/// gives back the rest.
#[derive(Debug)]
pub struct Warmed {
    /// Held chunks, the next to give back last.
    chunks: Vec<File>,
    bytes: u64,
    released: u64,
}

impl Warmed {
    /// Touches `bytes` of memory, rounded up to whole chunks, by writing zeroes into it
    /// (blocking; on this project's VM about 0.3 s per GiB while little memory is in use, and
    /// up to 1–2.5 s per GiB once the guest holds several GiB, which is when it matters most).
    ///
    /// Writing, not `fallocate`: fallocate gives a memfd its pages without writing them, and
    /// the hypervisor backs a page at its first write, so fallocated memory is as cold as
    /// free memory. Measured at Redis 4 GiB: with fallocate the pages part of the frozen window
    /// spent ~5 s in the destination's first writes into its scratch.
    pub fn touch(bytes: u64) -> Result<Self, HostMemError> {
        let n = bytes.div_ceil(CHUNK);
        let err = |source| HostMemError::Warm { bytes, source };
        let zeroes = vec![0u8; 1 << 20];
        let mut chunks = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let fd = memfd_create(c"ferry-warm", MemFdCreateFlag::MFD_CLOEXEC)
                .map_err(|e| err(e.into()))?;
            let mut chunk = File::from(fd);
            for _ in 0..CHUNK / zeroes.len() as u64 {
                chunk.write_all(&zeroes).map_err(err)?;
            }
            chunks.push(chunk);
        }
        Ok(Warmed {
            bytes: n * CHUNK,
            chunks,
            released: 0,
        })
    }

    /// Bytes touched.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Gives back whole chunks until at least `bytes` (from the start) are given back.
    pub fn release_up_to(&mut self, bytes: u64) {
        while self.released < bytes && self.chunks.pop().is_some() {
            self.released += CHUNK;
        }
    }

    /// Bytes still held.
    pub fn held(&self) -> u64 {
        self.chunks.len() as u64 * CHUNK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_available() {
        let text =
            "MemTotal:       24683520 kB\nMemFree:         1000 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(parse_available(text), Some(2048 * 1024));
        assert_eq!(parse_available("MemTotal: 1 kB\n"), None);
        assert!(available().unwrap() > 0);
    }

    #[test]
    fn refuses_a_container_that_does_not_fit() {
        let gib = 1u64 << 30;
        assert!(check_room(gib, 4 * gib).is_ok());
        let err = check_room(gib, gib).unwrap_err().to_string();
        assert!(err.contains("1024 MiB available"), "{err}");
        assert!(err.contains("the container uses 1024 MiB"), "{err}");
    }

    #[test]
    fn warmed_memory_is_held_then_given_back_chunk_by_chunk() {
        let mut warmed = Warmed::touch(CHUNK + 1).unwrap();
        assert_eq!(warmed.bytes(), 2 * CHUNK);
        for f in &warmed.chunks {
            // Every block was written, not just the size set.
            assert!(f.metadata().unwrap().blocks() * 512 >= CHUNK);
            // Written, not only allocated: tmpfs reports fallocated pages nobody wrote as a
            // hole, so the first hole is at the end only if every page was written.
            let hole = nix::unistd::lseek(f.as_raw_fd(), 0, nix::unistd::Whence::SeekHole).unwrap();
            assert_eq!(hole as u64, CHUNK);
        }
        warmed.release_up_to(1);
        assert_eq!(warmed.held(), CHUNK);
        warmed.release_up_to(CHUNK);
        assert_eq!(warmed.held(), CHUNK);
        warmed.release_up_to(u64::MAX);
        assert_eq!(warmed.held(), 0);
        assert_eq!(Warmed::touch(0).unwrap().bytes(), 0);
    }

    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
}
