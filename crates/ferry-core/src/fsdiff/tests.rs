use super::*;
use std::collections::HashMap;
use std::os::unix::fs::{symlink, PermissionsExt};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use sha2::{Digest as _, Sha256};

/// An overlay mount that is unmounted on drop, even when the test fails.
struct Overlay {
    merged: PathBuf,
}

impl Overlay {
    fn mount(lower: &Path, upper: &Path, work: &Path, merged: &Path) -> Overlay {
        for d in [upper, work, merged] {
            fs::create_dir_all(d).unwrap();
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .unwrap_or_else(|e| panic!("overlay mount {opts}: {e}"));
        Overlay {
            merged: merged.to_owned(),
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = umount2(&self.merged, MntFlags::MNT_DETACH);
    }
}

/// Everything observable about a tree: kind, mode, owner, size, mtime, content hash, link
/// target, device number, and which paths share an inode.
fn fingerprint(root: &Path) -> Vec<String> {
    let mut first_of_inode: HashMap<u64, String> = HashMap::new();
    let mut out = Vec::new();
    for w in walk::walk(root).unwrap() {
        let m = &w.meta;
        let rel = format!("/{}", w.rel.display());
        let abs = root.join(&w.rel);
        let ft = m.file_type();
        let detail = if ft.is_file() {
            let mut h = Sha256::new();
            h.update(fs::read(&abs).unwrap());
            format!("file {}", hex::encode(h.finalize()))
        } else if ft.is_symlink() {
            format!("link -> {}", fs::read_link(&abs).unwrap().display())
        } else if ft.is_dir() {
            "dir".into()
        } else {
            format!("special rdev={}", m.rdev())
        };
        let link = if !ft.is_dir() && m.nlink() > 1 {
            first_of_inode
                .entry(m.ino())
                .or_insert_with(|| rel.clone())
                .clone()
        } else {
            String::new()
        };
        // The root's mtime follows whatever the mount did; everything else must match.
        let mtime = if w.rel.as_os_str().is_empty() {
            0
        } else {
            m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
        };
        out.push(format!(
            "{rel:?} {detail} mode={:o} {}:{} size={} mtime={mtime} hl={link}",
            m.mode(),
            m.uid(),
            m.gid(),
            if ft.is_dir() { 0 } else { m.len() },
        ));
    }
    out
}

fn write(p: &Path, data: &[u8]) {
    fs::write(p, data).unwrap();
}

fn make_lower(lower: &Path) {
    fs::create_dir_all(lower.join("d")).unwrap();
    fs::create_dir_all(lower.join("rep/sub")).unwrap();
    write(&lower.join("a.txt"), b"lower a");
    write(&lower.join("del.txt"), b"to delete");
    write(&lower.join("d/x"), b"x");
    write(&lower.join("d/y"), b"y");
    write(&lower.join("rep/z"), b"z");
    write(&lower.join("rep/sub/deep"), b"deep");
}

/// Changes made through the merged mount, as a running container would.
fn first_changes(m: &Path) {
    write(&m.join("a.txt"), b"changed a");
    write(&m.join("new.txt"), b"new");
    fs::remove_file(m.join("del.txt")).unwrap();
    fs::remove_dir_all(m.join("rep")).unwrap();
    fs::create_dir(m.join("rep")).unwrap();
    write(&m.join("rep/fresh"), b"fresh");
    symlink("/etc/passwd", m.join("abs-link")).unwrap();
    symlink("a.txt", m.join("rel-link")).unwrap();
    write(&m.join("hard1"), b"shared inode");
    fs::hard_link(m.join("hard1"), m.join("d/hard2")).unwrap();
    write(&m.join("empty"), b"");
    write(&m.join("with space\nand newline"), b"odd name");
    let sparse = fs::File::create(m.join("sparse")).unwrap();
    sparse.set_len(32 << 20).unwrap();
    {
        use std::io::{Seek, SeekFrom};
        let mut f = &sparse;
        f.seek(SeekFrom::Start(20 << 20)).unwrap();
        f.write_all(b"data in the middle").unwrap();
    }
    write(&m.join("owned"), b"owned");
    std::os::unix::fs::chown(m.join("owned"), Some(1000), Some(2000)).unwrap();
    fs::set_permissions(m.join("owned"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::create_dir_all(m.join("n1/n2/n3")).unwrap();
    write(&m.join("n1/n2/n3/leaf"), b"leaf");
    fs::set_permissions(m.join("n1/n2"), fs::Permissions::from_mode(0o700)).unwrap();
    nix::unistd::mkfifo(
        &m.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    xattr::set(m.join("new.txt"), "user.note", b"kept").unwrap();
}

fn second_changes(m: &Path) {
    write(&m.join("a.txt"), b"changed again");
    fs::remove_file(m.join("new.txt")).unwrap();
    fs::remove_file(m.join("d/x")).unwrap();
    fs::remove_dir_all(m.join("n1/n2")).unwrap();
    write(&m.join("later.txt"), b"later");
    fs::hard_link(m.join("hard1"), m.join("hard3")).unwrap();
    fs::remove_file(m.join("rel-link")).unwrap();
    fs::create_dir(m.join("rel-link")).unwrap();
    write(&m.join("rel-link/inside"), b"was a symlink");
    write(&m.join("del.txt"), b"recreated over a whiteout");
}

#[test]
fn overlay_upper_full_then_delta_roundtrip() {
    let t = tempfile::tempdir().unwrap();
    let p = |s: &str| t.path().join(s);
    make_lower(&p("lower"));
    let src = Overlay::mount(&p("lower"), &p("upper"), &p("work"), &p("merged"));
    first_changes(&src.merged);

    let mut tar1 = Vec::new();
    let s1 = export_upper(&p("upper"), &mut tar1, None).unwrap();
    assert!(
        s1.deleted.contains(&"/del.txt".to_string()),
        "{:?}",
        s1.deleted
    );
    assert!(s1.opaque.contains(&"/rep".to_string()), "{:?}", s1.opaque);
    assert!(s1.removed.is_empty());
    assert!(s1.bytes >= 32 << 20);

    apply_to_upper(&p("upper2"), &tar1[..], &s1).unwrap();
    {
        let dst = Overlay::mount(&p("lower"), &p("upper2"), &p("work2"), &p("merged2"));
        assert_eq!(fingerprint(&src.merged), fingerprint(&dst.merged));
        assert_eq!(
            xattr::get(dst.merged.join("new.txt"), "user.note")
                .unwrap()
                .as_deref(),
            Some(&b"kept"[..])
        );
        let sparse = fs::metadata(dst.merged.join("sparse")).unwrap();
        assert!(
            sparse.blocks() * 512 < (1 << 20),
            "sparse file stayed sparse"
        );
        assert!(
            !dst.merged.join("rep/z").exists(),
            "opaque dir hides lower content"
        );
    }

    second_changes(&src.merged);
    let mut tar2 = Vec::new();
    let s2 = export_upper(&p("upper"), &mut tar2, Some(&s1.snapshot)).unwrap();
    assert!(
        s2.removed.contains(&"/new.txt".to_string()),
        "{:?}",
        s2.removed
    );
    assert!(
        s2.removed.contains(&"/n1/n2/n3/leaf".to_string()),
        "{:?}",
        s2.removed
    );
    assert!(s2.deleted.contains(&"/d/x".to_string()), "{:?}", s2.deleted);
    assert!(
        !s2.deleted.contains(&"/del.txt".to_string()),
        "{:?}",
        s2.deleted
    );
    assert!(
        s2.bytes < 1 << 20,
        "delta must not resend the sparse file: {}",
        s2.bytes
    );

    apply_to_upper(&p("upper2"), &tar2[..], &s2).unwrap();
    let dst = Overlay::mount(&p("lower"), &p("upper2"), &p("work2"), &p("merged2"));
    assert_eq!(fingerprint(&src.merged), fingerprint(&dst.merged));

    // Nothing changed: an empty delta.
    let mut tar3 = Vec::new();
    let s3 = export_upper(&p("upper"), &mut tar3, Some(&s2.snapshot)).unwrap();
    assert_eq!(s3.bytes, 0);
    assert!(s3.removed.is_empty());
    assert_eq!(s3.files, 1, "only the root entry");
}

#[test]
fn pack_and_unpack_volume() {
    let t = tempfile::tempdir().unwrap();
    let v = t.path().join("vol");
    fs::create_dir_all(v.join("sub")).unwrap();
    write(&v.join("sub/f"), b"data");
    write(&v.join(".wh.literal"), b"not a whiteout in a volume");
    symlink("../outside", v.join("sub/l")).unwrap();
    fs::hard_link(v.join("sub/f"), v.join("f2")).unwrap();
    fs::set_permissions(&v, fs::Permissions::from_mode(0o711)).unwrap();
    let mut buf = Vec::new();
    let n = pack_dir(&v, &mut buf).unwrap();
    assert_eq!(n, buf.len() as u64);
    let out = t.path().join("restored");
    unpack_dir(&buf[..], &out).unwrap();
    let root_mode = fs::metadata(&out).unwrap().permissions().mode() & 0o7777;
    assert_eq!(root_mode, 0o711);
    assert_eq!(fingerprint(&v), fingerprint(&out));
}

#[test]
fn apply_refuses_paths_that_escape() {
    let t = tempfile::tempdir().unwrap();
    let upper = t.path().join("upper");
    fs::create_dir_all(&upper).unwrap();
    symlink("/", upper.join("lnk")).unwrap();
    let empty = {
        let mut b = tar::Builder::new(Vec::new());
        b.finish().unwrap();
        b.into_inner().unwrap()
    };
    for (field, path) in [
        ("removed", "/../x"),
        ("deleted", "/lnk/etc/x"),
        ("opaque", "/lnk/tmp"),
    ] {
        let mut s = DiffSummary::default();
        match field {
            "removed" => s.removed.push(path.into()),
            "deleted" => s.deleted.push(path.into()),
            _ => s.opaque.push(path.into()),
        }
        let err = apply_to_upper(&upper, &empty[..], &s).unwrap_err();
        assert!(
            matches!(err, FsDiffError::Extract(ExtractError::Unsafe { .. })),
            "{field}: {err}"
        );
    }
}
