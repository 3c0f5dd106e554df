//! Writing to stdout without panicking when its reader is gone.
//!
//! `println!` panics on a write error, and Rust ignores SIGPIPE, so `ferry --json ps | head`
//! used to end in a panic. `outln!` writes the same way and, when the pipe is closed, ends
//! the process quietly with status 0: the reader has what it wanted.

use std::io::Write;

/// `println!` for command output; see the module doc.
macro_rules! outln {
    () => {
        $crate::out::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out::write_line(format_args!($($arg)*))
    };
}

pub fn write_line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        gone(&e);
    }
}

/// Writes raw bytes (log output) and flushes.
pub fn write_bytes(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        gone(&e);
    }
}

/// Writes raw bytes to stderr (a container's stderr output) and flushes; a closed stderr ends
/// the process as a closed stdout does.
pub fn write_err_bytes(bytes: &[u8]) {
    let mut err = std::io::stderr().lock();
    if let Err(e) = err.write_all(bytes).and_then(|()| err.flush()) {
        gone(&e);
    }
}

/// Ends the process after a failed write to stdout.
pub fn gone(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("ferry: error: cannot write the output to stdout: {e}");
    std::process::exit(1);
}
