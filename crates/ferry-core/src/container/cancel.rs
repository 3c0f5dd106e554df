//! Cancelling long work whose requester went away.
//!
//! ferryd runs an import on its blocking pool; when the client's connection closes (Ctrl-C
//! of the CLI), the request's future is dropped, and its [`CancelOnDrop`] sets the shared
//! [`Cancel`] flag. The work checks the flag as it reads its input and between its steps,
//! and stops with [`Cancel::error`], cleaning up through its drop guards as on any failure.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A flag shared by the requester and the work. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Self {
        Cancel::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err` once cancelled: for the checks between steps.
    pub fn check(&self) -> io::Result<()> {
        if self.is_cancelled() {
            return Err(Self::error());
        }
        Ok(())
    }

    /// The error a cancelled read returns.
    pub fn error() -> io::Error {
        io::Error::new(io::ErrorKind::Interrupted, CANCELLED)
    }

    /// `r`, failing at its next read once cancelled.
    pub fn reader<R: Read>(&self, r: R) -> CancelReader<R> {
        CancelReader {
            inner: r,
            cancel: self.clone(),
        }
    }

    /// A guard that cancels when dropped unless [`CancelOnDrop::disarm`]ed: held by the
    /// request's future, so the work stops when the client goes away.
    pub fn on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(Some(self.clone()))
    }
}

/// What a cancelled operation says.
pub const CANCELLED: &str = "cancelled: the client went away";

pub struct CancelReader<R> {
    inner: R,
    cancel: Cancel,
}

impl<R: Read> Read for CancelReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.cancel.check()?;
        self.inner.read(buf)
    }
}

pub struct CancelOnDrop(Option<Cancel>);

impl CancelOnDrop {
    /// The work finished: dropping the guard no longer cancels anything.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_guard_cancels_a_reader() {
        let c = Cancel::new();
        let mut r = c.reader(io::repeat(1));
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 8);
        drop(c.on_drop());
        let e = r.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
        assert!(e.to_string().contains("client went away"));

        let c = Cancel::new();
        c.on_drop().disarm();
        assert!(c.check().is_ok());
    }
}
