//! Test fixtures for real containers: a busybox rootfs, a netns, a bundle, and cleanup guards.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::runc::Runc;
use super::spec::{build_spec, write_bundle, BindMount, SpecInput};
use crate::tool::Tool;

/// A name unique to this test process and call.
pub(crate) fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

const BUSYBOX: &str = "/usr/bin/busybox";
const APPLETS: [&str; 10] = [
    "sh", "echo", "sleep", "cat", "id", "ls", "touch", "grep", "env", "nc",
];

/// A minimal root filesystem: a static busybox with a few applets, and passwd/group files.
pub(crate) fn busybox_rootfs(rootfs: &Path) {
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in ["etc", "proc", "dev", "sys", "tmp", "data"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    let busybox = if Path::new(BUSYBOX).exists() {
        BUSYBOX
    } else {
        "/bin/busybox"
    };
    std::fs::copy(busybox, bin.join("busybox"))
        .unwrap_or_else(|e| panic!("copy {busybox} (busybox-static must be installed): {e}"));
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nworker:x:1000:1000::/tmp:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nworker:x:1000:\n").unwrap();
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub(crate) struct Netns {
    pub name: String,
}

impl Netns {
    pub(crate) fn new() -> Netns {
        let name = unique("ferry-rt-");
        Tool::new("ip")
            .args(["netns", "add", &name])
            .run()
            .expect("ip netns add");
        Netns { name }
    }

    pub(crate) fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Tool::new("ip").args(["netns", "del", &self.name]).run();
    }
}

/// cgroup parent of one test container: its own, so no test removes a dir another one uses.
fn cgroup_parent(id: &str) -> String {
    format!("ferry-rt-test-{id}")
}

/// One test container: temp dir with rootfs, bundle, container dir and runc root, its netns;
/// killed, deleted and its cgroups removed on drop.
pub(crate) struct TestContainer {
    pub id: String,
    pub runc: Runc,
    pub bundle: PathBuf,
    pub ctrdir: PathBuf,
    pub netns: Netns,
    pub input: SpecInput,
    pub dir: tempfile::TempDir,
}

impl TestContainer {
    /// A container running `sh -c <script>`.
    pub(crate) fn new(script: &str) -> TestContainer {
        Self::with(script, |_| {})
    }

    pub(crate) fn with(script: &str, customize: impl FnOnce(&mut SpecInput)) -> TestContainer {
        let dir = tempfile::tempdir().unwrap();
        let id = unique("rt");
        let bundle = dir.path().join("bundle");
        let rootfs = bundle.join("rootfs");
        busybox_rootfs(&rootfs);
        let netns = Netns::new();
        let mut input = SpecInput {
            id: id.clone(),
            hostname: id.clone(),
            args: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: (0, 0),
            rootfs,
            netns_path: netns.path(),
            cgroups_path: format!("/{}/{id}", cgroup_parent(&id)),
            memory_limit: None,
            mounts: Vec::<BindMount>::new(),
            criu_config: PathBuf::new(),
            readonly_rootfs: false,
            cpu_quota: None,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
        };
        customize(&mut input);
        write_bundle(&bundle, &build_spec(&input).unwrap()).unwrap();
        let runc = Runc::new(dir.path().join("runc-root"));
        TestContainer {
            id,
            runc,
            bundle,
            ctrdir: dir.path().join("ctr"),
            netns,
            input,
            dir,
        }
    }

    /// The container's cgroup dir in one v1 hierarchy.
    pub(crate) fn cgroup_dir(&self, subsystem: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(subsystem)
            .join(self.input.cgroups_path.trim_start_matches('/'))
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        let _ = self.runc.kill(&self.id, "KILL", true);
        for _ in 0..50 {
            if self.runc.delete(&self.id, true).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        for h in hierarchies.flatten() {
            let parent = h.path().join(cgroup_parent(&self.id));
            let _ = std::fs::remove_dir(parent.join(&self.id));
            let _ = std::fs::remove_dir(parent);
        }
    }
}
