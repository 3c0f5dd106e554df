//! Bounds on an import's input: a deadline for the whole import, a cap on how much a
//! compressed stream may expand, and the requester's cancel. A reader past any fails, and the
//! import names the bound.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cancel::Cancel;

/// Which bound stopped an import (0: none).
const DEADLINE: u8 = 1;
const EXPANSION: u8 = 2;

/// The bounds of one import, shared by every reader of its input.
#[derive(Debug, Clone)]
pub(crate) struct ImportGuard {
    deadline: Option<Instant>,
    limit: Duration,
    tripped: Arc<AtomicU8>,
    cancel: Option<Cancel>,
}

impl ImportGuard {
    pub(crate) fn new(limit: Duration) -> Self {
        ImportGuard {
            deadline: Instant::now().checked_add(limit),
            limit,
            tripped: Arc::new(AtomicU8::new(0)),
            cancel: None,
        }
    }

    /// Also stops every read once `cancel` is set (the requester went away).
    pub(crate) fn with_cancel(mut self, cancel: &Cancel) -> Self {
        self.cancel = Some(cancel.clone());
        self
    }

    /// A guard that never trips (images that arrive from a peer, under its own deadlines).
    pub(crate) fn none() -> Self {
        ImportGuard {
            deadline: None,
            limit: Duration::MAX,
            tripped: Arc::new(AtomicU8::new(0)),
            cancel: None,
        }
    }

    /// `r`, failing once the deadline passed.
    pub(crate) fn timed<R: Read>(&self, r: R) -> Guarded<R> {
        self.capped(r, u64::MAX)
    }

    /// `r`, failing once the deadline passed or after `max` bytes.
    pub(crate) fn capped<R: Read>(&self, r: R, max: u64) -> Guarded<R> {
        Guarded {
            inner: r,
            guard: self.clone(),
            max,
            read: 0,
        }
    }

    /// Why the import was stopped, if a bound stopped it.
    pub(crate) fn why(&self) -> Option<String> {
        match self.tripped.load(Ordering::Relaxed) {
            DEADLINE => Some(format!(
                "it took longer than its deadline of {} s",
                self.limit.as_secs()
            )),
            EXPANSION => {
                Some("it expands to more than the free space of the image store allows".to_owned())
            }
            _ => None,
        }
    }
}

pub(crate) struct Guarded<R> {
    inner: R,
    guard: ImportGuard,
    max: u64,
    read: u64,
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(c) = &self.guard.cancel {
            c.check()?;
        }
        if self.guard.deadline.is_some_and(|d| Instant::now() >= d) {
            self.guard.tripped.store(DEADLINE, Ordering::Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "import deadline passed",
            ));
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.max {
            self.guard.tripped.store(EXPANSION, Ordering::Relaxed);
            return Err(io::Error::other(format!("expands past {} bytes", self.max)));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_reader_stops_and_says_why() {
        let g = ImportGuard::new(Duration::from_secs(60));
        let mut r = g.capped(io::repeat(0), 1000);
        let mut sink = Vec::new();
        assert!(r.read_to_end(&mut sink).is_err());
        assert!(sink.len() <= 1000 + 8192);
        assert!(g.why().unwrap().contains("free space"));
    }

    #[test]
    fn an_endless_reader_stops_at_the_deadline() {
        let g = ImportGuard::new(Duration::from_millis(50));
        let mut r = g.timed(io::repeat(0));
        let e = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(g.why().unwrap().contains("deadline"));
    }

    #[test]
    fn a_cancelled_import_stops_reading_at_once() {
        let cancel = Cancel::new();
        let g = ImportGuard::new(Duration::from_secs(60)).with_cancel(&cancel);
        let mut r = g.timed(io::repeat(0));
        let mut buf = [0u8; 4096];
        assert_eq!(r.read(&mut buf).unwrap(), 4096);
        cancel.cancel();
        let e = r.read(&mut buf).unwrap_err();
        assert_eq!(e.to_string(), Cancel::error().to_string());
    }
}
