//! Making restored TCP connections resume at once instead of on their retransmit timer.
//!
//! While a container is frozen and moved, and while its restored copy is gated, what it sends
//! goes nowhere: a reply sent just before the freeze is lost unacknowledged, and one written
//! after the restore is refused by the gate and waits unsent. The kernel tries again only on
//! its timers, backing off each time, and the client waits seconds more than the downtime.
//! After the gate opens, ferry takes each established socket (pidfd_getfd) and
//! - pushes its unsent data now (setting TCP_NODELAY pushes pending frames);
//! - if data is unacknowledged, toggles `TCP_REPAIR` off three times: each time the kernel sends
//!   a window probe, the client answers each with the same ACK, and three duplicate ACKs make
//!   the socket fast-retransmit at once.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::error::NetError;

const TCP_ESTABLISHED: u8 = 1;
const PROBES: usize = 3;

fn sys(what: &'static str) -> impl Fn(std::io::Error) -> NetError {
    move |e| NetError::Socket {
        op: what,
        source: e,
    }
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_getfd(pidfd: &OwnedFd, target: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// (TCP state, unacknowledged segments) of a socket, or None if it is not TCP.
fn tcp_state(fd: &OwnedFd) -> Option<(u8, u32)> {
    // SAFETY: tcp_info is a plain C struct of integers; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: info and len describe a writable tcp_info.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some((info.tcpi_state, info.tcpi_unacked))
}

fn set_repair(fd: &OwnedFd, on: bool) -> std::io::Result<()> {
    set_tcp_opt(fd, libc::TCP_REPAIR, i32::from(on))
}

fn get_tcp_opt(fd: &OwnedFd, opt: libc::c_int) -> std::io::Result<libc::c_int> {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: val and len describe a writable c_int.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            opt,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(val)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Setting TCP_NODELAY on pushes whatever waits in the send queue; the app's own setting is
/// put back afterwards.
fn push_pending(fd: &OwnedFd) -> std::io::Result<()> {
    let was = get_tcp_opt(fd, libc::TCP_NODELAY)?;
    set_tcp_opt(fd, libc::TCP_NODELAY, 1)?;
    if was == 0 {
        set_tcp_opt(fd, libc::TCP_NODELAY, 0)?;
    }
    Ok(())
}

fn set_tcp_opt(fd: &OwnedFd, opt: libc::c_int, val: libc::c_int) -> std::io::Result<()> {
    // SAFETY: val is a live c_int for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Calls `f` once for each TCP socket held by `pids` (taken with pidfd_getfd), with its
/// (state, unacknowledged segments). Sockets that cannot be taken are skipped.
fn each_tcp_socket(
    pids: &[u32],
    mut f: impl FnMut(&OwnedFd, u8, u32) -> Result<(), NetError>,
) -> Result<(), NetError> {
    let mut seen = std::collections::HashSet::new();
    for &pid in pids {
        let Ok(pidfd) = pidfd_open(pid) else { continue };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for entry in fds.flatten() {
            let Ok(link) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let link = link.to_string_lossy().into_owned();
            // One socket can be open in several processes: once is enough.
            if !link.starts_with("socket:") || !seen.insert(link) {
                continue;
            }
            let Some(target) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(sock) = pidfd_getfd(&pidfd, target) else {
                continue;
            };
            if let Some((state, unacked)) = tcp_state(&sock) {
                f(&sock, state, unacked)?;
            }
        }
    }
    Ok(())
}

/// Kicks every established TCP socket held by `pids`. Returns how many were kicked. Sockets
/// that cannot be taken are skipped: this only saves time, it changes no data.
pub fn kick_tcp_retransmits(pids: &[u32]) -> Result<usize, NetError> {
    let mut kicked = 0;
    each_tcp_socket(pids, |sock, state, unacked| {
        if state != TCP_ESTABLISHED {
            return Ok(());
        }
        push_pending(sock).map_err(sys("TCP_NODELAY push"))?;
        if unacked > 0 {
            for _ in 0..PROBES {
                set_repair(sock, true).map_err(sys("TCP_REPAIR on"))?;
                // Off (not off-without-probe): the kernel sends a window probe.
                set_repair(sock, false).map_err(sys("TCP_REPAIR off"))?;
            }
        }
        kicked += 1;
        Ok(())
    })?;
    Ok(kicked)
}

/// Takes every TCP socket of `pids` out of repair mode (a CRIU killed mid-dump leaves them
/// there). Returns how many were in it.
pub fn leave_tcp_repair(pids: &[u32]) -> Result<usize, NetError> {
    let mut fixed = 0;
    each_tcp_socket(pids, |sock, _, _| {
        if get_tcp_opt(sock, libc::TCP_REPAIR).map_err(sys("TCP_REPAIR get"))? != 0 {
            set_repair(sock, false).map_err(sys("TCP_REPAIR off"))?;
            fixed += 1;
        }
        Ok(())
    })?;
    Ok(fixed)
}
