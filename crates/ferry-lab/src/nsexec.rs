//! Commands that start inside a lab namespace (a host's or the client's netns, and a ferryd's
//! mount namespace).
//!
//! Namespaces are entered in the forked child just before exec (`pre_exec`), so the caller's
//! threads never move. Everything the child needs is prepared as C strings beforehand: between
//! fork and exec only plain syscalls run.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::stat::Mode;
use nix::unistd::{chdir, close, fchdir, mkdir, setsid};

fn cstring(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("lab paths contain no NUL byte")
}

fn open_ns(path: &CString) -> nix::Result<std::os::fd::OwnedFd> {
    let fd = open(
        path.as_c_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// Makes `cmd` start in the netns at `netns` and, if given, in the mount namespace of process
/// `mount_ns_of` (keeping the caller's working directory when it exists there).
pub fn enter(cmd: &mut Command, netns: &Path, mount_ns_of: Option<i32>) {
    let net = cstring(netns);
    let mnt = mount_ns_of.map(|pid| cstring(Path::new(&format!("/proc/{pid}/ns/mnt"))));
    let cwd = std::env::current_dir().ok().map(|d| cstring(&d));
    // SAFETY: the closure only makes syscalls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let net_fd = open_ns(&net)?;
            let mnt_fd = mnt.as_ref().map(open_ns).transpose()?;
            setns(&net_fd, CloneFlags::CLONE_NEWNET)?;
            if let Some(fd) = &mnt_fd {
                setns(fd, CloneFlags::CLONE_NEWNS)?;
                // Entering a mount namespace resets the working directory to its root.
                if let Some(dir) = &cwd {
                    let _ = chdir(dir.as_c_str());
                }
            }
            Ok(())
        });
    }
}

/// Makes `cmd` start as a session leader in the netns at `netns` and the existing mount
/// namespace at `mount_ns` (a host's, kept from its first ferryd), in `cwd`.
pub fn enter_as_restarted_daemon(cmd: &mut Command, netns: &Path, mount_ns: &Path, cwd: &Path) {
    let net = cstring(netns);
    let mnt = cstring(mount_ns);
    let dir = cstring(cwd);
    // SAFETY: the closure only makes syscalls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            setsid()?;
            let net_fd = open_ns(&net)?;
            let mnt_fd = open_ns(&mnt)?;
            setns(&net_fd, CloneFlags::CLONE_NEWNET)?;
            setns(&mnt_fd, CloneFlags::CLONE_NEWNS)?;
            chdir(dir.as_c_str())?;
            Ok(())
        });
    }
}

/// What a ferryd's private mount namespace shows of the lab directory.
pub struct PrivateView {
    /// Hidden under an empty tmpfs …
    pub lab_dir: std::path::PathBuf,
    /// … except these, bound back at the same paths.
    pub keep: Vec<std::path::PathBuf>,
}

/// Makes `cmd` start as a session leader in the netns at `netns` and in a new mount namespace
/// (private propagation) where the lab directory is an empty tmpfs except for `view.keep`: a
/// host's daemon cannot see other hosts' state, so nothing passes between hosts but the network.
pub fn enter_as_host_daemon(cmd: &mut Command, netns: &Path, view: &PrivateView) {
    let net = cstring(netns);
    let lab = cstring(&view.lab_dir);
    assert!(
        view.keep.len() <= MAX_KEPT_DIRS,
        "too many directories to keep"
    );
    assert!(
        view.keep
            .iter()
            .all(|k| k.parent() == Some(view.lab_dir.as_path())),
        "kept directories must be direct children of the lab directory"
    );
    let keep: Vec<CString> = view.keep.iter().map(|p| cstring(p)).collect();
    let root = CString::new("/").unwrap();
    let tmpfs = CString::new("tmpfs").unwrap();
    let tmpfs_opts = CString::new("mode=0755").unwrap();
    let dot = CString::new(".").unwrap();
    let final_cwd = keep.first().cloned().unwrap_or_else(|| root.clone());
    // SAFETY: the closure only makes syscalls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            setsid()?;
            let net_fd = open_ns(&net)?;
            setns(&net_fd, CloneFlags::CLONE_NEWNET)?;
            unshare(CloneFlags::CLONE_NEWNS)?;
            mount(
                None::<&std::ffi::CStr>,
                root.as_c_str(),
                None::<&std::ffi::CStr>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&std::ffi::CStr>,
            )?;
            // Handles on the directories to keep, opened in this namespace before the tmpfs
            // hides them (a bind source must belong to the caller's mount namespace).
            let mut kept = [None; MAX_KEPT_DIRS];
            for (slot, dir) in kept.iter_mut().zip(&keep) {
                *slot = Some(open(
                    dir.as_c_str(),
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?);
            }
            mount(
                Some(tmpfs.as_c_str()),
                lab.as_c_str(),
                Some(tmpfs.as_c_str()),
                MsFlags::empty(),
                Some(tmpfs_opts.as_c_str()),
            )?;
            for (fd, dir) in kept.iter().zip(&keep) {
                let Some(fd) = *fd else { break };
                mkdir(dir.as_c_str(), Mode::from_bits_truncate(0o755))?;
                fchdir(fd)?;
                mount(
                    Some(dot.as_c_str()),
                    dir.as_c_str(),
                    None::<&std::ffi::CStr>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&std::ffi::CStr>,
                )?;
                close(fd)?;
            }
            chdir(final_cwd.as_c_str())?;
            Ok(())
        });
    }
}

/// Most directories `enter_as_host_daemon` can keep.
pub const MAX_KEPT_DIRS: usize = 8;
