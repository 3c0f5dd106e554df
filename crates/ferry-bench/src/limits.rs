//! The machine's limit, measured in the same run as the moves: how fast it writes fresh
//! memory, how fast the fabric between the lab hosts carries bytes, and how long runc + CRIU
//! take to freeze and restore a near-empty container.

use std::io::Write;
use std::os::fd::FromRawFd;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::ctx::{Ctx, DESTINATION, SOURCE};
use crate::fabric::{self, Payload, Transfer};

const CHUNK: usize = 1 << 20;

/// Writes `bytes` into a fresh memfd: every page is touched for the first time, as a restore
/// touches the restored process's memory. Milliseconds.
pub fn fresh_write_ms(bytes: u64) -> Result<f64> {
    let name = c"ferry-bench-fresh";
    // SAFETY: memfd_create with a valid C string; the result is checked and owned at once.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .context("memfd_create for the fresh-memory test");
    }
    // SAFETY: fd was just returned by memfd_create and is owned by nothing else.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let buf = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        f.write_all(&buf[..n]).context("writing into the memfd")?;
        left -= n as u64;
    }
    let elapsed = start.elapsed();
    drop(f);
    Ok(elapsed.as_secs_f64() * 1000.0)
}

/// Raw TCP from host-a's netns to host-b's.
pub fn fabric(ctx: &Ctx, bytes: u64) -> Result<Transfer> {
    let a = ctx.host(SOURCE)?;
    let b = ctx.host(DESTINATION)?;
    fabric::transfer(
        &a.netns_path,
        &b.netns_path,
        b.address,
        Payload::Generated(bytes),
    )
    .context("measuring the fabric between host-a and host-b")
}

/// `ferry checkpoint` and `ferry restore` of an idle busybox on host-a: (checkpoint ms of
/// `runc checkpoint`, restore ms of `runc restore`), as ferry reports them.
pub fn empty_checkpoint_restore(ctx: &Ctx, name: &str) -> Result<(f64, f64)> {
    ctx.ferry(
        SOURCE,
        &["run", "-d", "--name", name, "busybox", "sleep", "1000000"],
    )?;
    let result = (|| -> Result<(f64, f64)> {
        let cp: serde_json::Value = serde_json::from_str(
            &ctx.ferry(SOURCE, &["checkpoint", name, "--name", "empty", "--json"])?,
        )
        .context("parsing ferry checkpoint --json")?;
        let rs: serde_json::Value = serde_json::from_str(
            &ctx.ferry(SOURCE, &["restore", name, "--from", "empty", "--json"])?,
        )
        .context("parsing ferry restore --json")?;
        Ok((
            cp["checkpoint_ms"]
                .as_f64()
                .context("no checkpoint_ms in ferry's report")?,
            rs["restore_ms"]
                .as_f64()
                .context("no restore_ms in ferry's report")?,
        ))
    })();
    let _ = ctx.ferry(SOURCE, &["checkpoint", "rm", name, "empty"]);
    let removed = ctx.ferry(SOURCE, &["rm", "-f", name]);
    let r = result?;
    removed?;
    Ok(r)
}
