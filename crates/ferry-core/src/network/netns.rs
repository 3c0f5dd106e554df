//! Network namespaces as bind-mounted files: creating (with loopback up) and deleting them.
//! Running code inside one is [`super::enter`]'s job.
//!
//! A namespace file lives wherever the caller says (a host's state dir), not in /run/netns,
//! because several ferryd share one machine in the lab.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::error::NetError;
use crate::fsutil::block_on_fresh;

/// `statfs` magic of nsfs, the filesystem behind /proc/*/ns/*.
const NSFS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x6e73_6673);

fn is_nsfs_mount(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == NSFS_MAGIC)
        .unwrap_or(false)
}

/// Creates a new network namespace and bind-mounts it at `path` (a regular file, created with
/// its parent directories). Loopback is brought up and IPv6 is switched off inside.
pub fn create_netns(path: &Path) -> Result<(), NetError> {
    if is_nsfs_mount(path) {
        return Err(NetError::NetnsExists {
            path: path.to_owned(),
        });
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(NetError::io("create directory", dir))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(NetError::io("create netns file", path))?;

    let target = path.to_owned();
    let worker = std::thread::Builder::new()
        .name("ferry-netns-new".into())
        .spawn(move || new_netns_on_this_thread(&target))
        .map_err(NetError::Thread)?;
    let result = match worker.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    if result.is_err() {
        let _ = delete_netns(path);
    }
    result
}

fn new_netns_on_this_thread(target: &Path) -> Result<(), NetError> {
    let fail = |op: &'static str| {
        let path = target.to_owned();
        move |e: nix::Error| NetError::Netns {
            path,
            op,
            source: e.into(),
        }
    };
    unshare(CloneFlags::CLONE_NEWNET).map_err(fail("unshare"))?;
    mount(
        Some("/proc/thread-self/ns/net"),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(fail("bind mount"))?;
    // /proc/sys/net resolves against the opening thread's namespace: this one.
    for knob in ["all", "default", "lo"] {
        let p = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6"));
        match std::fs::write(&p, "1") {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {} // kernel without IPv6
            Err(e) => return Err(NetError::io("write", p)(e)),
        }
    }
    // set_link_up opens its netlink socket on this thread, so in the new namespace.
    block_on_fresh(super::link::set_link_up("lo"))
}

/// Unmounts (lazily) and removes a namespace file. Missing or already unmounted is fine.
pub fn delete_netns(path: &Path) -> Result<(), NetError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => {
            return Err(NetError::Netns {
                path: path.to_owned(),
                op: "unmount",
                source: e.into(),
            })
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetError::io("remove netns file", path)(e)),
    }
}
