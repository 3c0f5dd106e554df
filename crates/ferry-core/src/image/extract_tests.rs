use super::*;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// A tar entry with raw (unvalidated) name and link bytes, as an attacker would write it.
pub(crate) fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    kind: EntryType,
    name: &[u8],
    link: &[u8],
    data: &[u8],
) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(1_600_000_000);
    h.set_uid(0);
    h.set_gid(0);
    {
        let g = h.as_gnu_mut().unwrap();
        g.name[..name.len()].copy_from_slice(name);
        g.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// (kind, name, link target, data)
pub(crate) type RawEntry<'a> = (EntryType, &'a [u8], &'a [u8], &'a [u8]);

pub(crate) fn tar_of(entries: &[RawEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (k, n, l, d) in entries {
        raw_entry(&mut b, *k, n, l, d);
    }
    b.into_inner().unwrap()
}

fn refused(entries: &[RawEntry], needle: &str) {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    fs::create_dir(&root).unwrap();
    let err = extract(&tar_of(entries)[..], &root, Whiteouts::Overlay).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ExtractError::Unsafe { .. }), "{msg}");
    assert!(msg.contains(needle), "error {msg:?} should name {needle:?}");
    // Nothing escaped next to the root.
    let outside: Vec<_> = fs::read_dir(base.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside, vec![std::ffi::OsString::from("root")]);
}

const F: EntryType = EntryType::Regular;
const S: EntryType = EntryType::Symlink;
const L: EntryType = EntryType::Link;

#[test]
fn dotdot_escape_refused() {
    refused(&[(F, b"../evil", b"", b"x")], "../evil");
    refused(&[(F, b"a/../../evil", b"", b"x")], "a/../../evil");
    refused(&[(F, b"/../evil", b"", b"x")], "/../evil");
}

#[test]
fn absolute_and_inner_dotdot_stay_inside() {
    let d = tempfile::tempdir().unwrap();
    let t = tar_of(&[(F, b"/etc/abs", b"", b"1"), (F, b"a/../b", b"", b"2")]);
    extract(&t[..], d.path(), Whiteouts::Overlay).unwrap();
    assert_eq!(fs::read(d.path().join("etc/abs")).unwrap(), b"1");
    assert_eq!(fs::read(d.path().join("b")).unwrap(), b"2");
}

#[test]
fn writing_through_symlink_refused() {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().to_str().unwrap().as_bytes().to_vec();
    refused(
        &[(S, b"lnk", &target, b""), (F, b"lnk/evil", b"", b"x")],
        "lnk/evil",
    );
    refused(
        &[(S, b"lnk", b"..", b""), (F, b"lnk/evil", b"", b"x")],
        "lnk/evil",
    );
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn hardlink_escapes_refused() {
    refused(&[(L, b"h", b"../outside", b"")], "h");
    refused(&[(L, b"h", b"/../../etc/passwd", b"")], "h");
    let out = tempfile::tempdir().unwrap();
    fs::write(out.path().join("secret"), b"s").unwrap();
    let target = out.path().to_str().unwrap().as_bytes().to_vec();
    refused(
        &[(S, b"lnk", &target, b""), (L, b"h", b"lnk/secret", b"")],
        "symlink",
    );
}

#[test]
fn symlinks_may_point_anywhere() {
    let d = tempfile::tempdir().unwrap();
    let t = tar_of(&[
        (S, b"abs", b"/etc/passwd", b""),
        (S, b"up", b"../../x", b""),
    ]);
    extract(&t[..], d.path(), Whiteouts::Overlay).unwrap();
    assert_eq!(
        fs::read_link(d.path().join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        fs::read_link(d.path().join("up")).unwrap(),
        Path::new("../../x")
    );
}

#[test]
fn truncated_archive_is_corrupt() {
    let data = vec![7u8; 20_000];
    let t = tar_of(&[(F, b"big", b"", &data)]);
    let cut = &t[..8_000];
    let d = tempfile::tempdir().unwrap();
    let err = extract(cut, d.path(), Whiteouts::Overlay).unwrap_err();
    assert!(matches!(err, ExtractError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("big"), "{err}");
    // Garbage is not a tar.
    let err = extract(&[1u8; 1024][..], d.path(), Whiteouts::Overlay).unwrap_err();
    assert!(matches!(err, ExtractError::Corrupt { .. }), "{err}");
}

#[test]
fn whiteouts_and_opaque_dirs() {
    let d = tempfile::tempdir().unwrap();
    let t = tar_of(&[
        (EntryType::Directory, b"dir/", b"", b""),
        (F, b"dir/.wh..wh..opq", b"", b""),
        (F, b"dir/keep", b"", b"k"),
        (F, b".wh.gone", b"", b""),
        (F, b"sub/.wh.file", b"", b""),
    ]);
    extract(&t[..], d.path(), Whiteouts::Overlay).unwrap();
    let m = fs::symlink_metadata(d.path().join("gone")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), 0);
    assert!(fs::symlink_metadata(d.path().join(".wh.gone")).is_err());
    assert!(fs::symlink_metadata(d.path().join("sub/file"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(
        xattr::get(d.path().join("dir"), OPAQUE_XATTR)
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(fs::read(d.path().join("dir/keep")).unwrap(), b"k");
    assert!(!d.path().join("dir/.wh..wh..opq").exists());

    // Literal mode keeps the names as files.
    let d2 = tempfile::tempdir().unwrap();
    extract(&t[..], d2.path(), Whiteouts::Literal).unwrap();
    assert!(d2.path().join(".wh.gone").is_file());
}

#[test]
fn metadata_links_devices_and_sparse_files() {
    let hdr = || {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_mode(0o644);
        h
    };
    let mut b = tar::Builder::new(Vec::new());
    let mut h = hdr();
    h.set_entry_type(EntryType::Directory);
    h.set_mode(0o750);
    h.set_uid(1234);
    h.set_gid(5678);
    h.set_mtime(1_500_000_000);
    h.set_size(0);
    b.append_data(&mut h, "ro", io::empty()).unwrap();
    let mut h = hdr();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o4755);
    h.set_uid(42);
    h.set_gid(43);
    h.set_mtime(1_400_000_000);
    let mut data = vec![0u8; 1 << 20];
    data[(1 << 20) - 1] = 9;
    h.set_size(data.len() as u64);
    b.append_pax_extensions([("mtime", &b"1400000000.5"[..])])
        .unwrap();
    b.append_data(&mut h, "ro/sparse", &data[..]).unwrap();
    let mut h = hdr();
    h.set_entry_type(EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, "ro/hard", "ro/sparse").unwrap();
    let mut h = hdr();
    h.set_entry_type(EntryType::Char);
    h.set_mode(0o666);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    h.set_size(0);
    b.append_data(&mut h, "null", io::empty()).unwrap();
    let mut h = hdr();
    h.set_entry_type(EntryType::Fifo);
    h.set_mode(0o600);
    h.set_size(0);
    b.append_data(&mut h, "fifo", io::empty()).unwrap();
    let t = b.into_inner().unwrap();

    let d = tempfile::tempdir().unwrap();
    let stats = extract(&t[..], d.path(), Whiteouts::Overlay).unwrap();
    assert_eq!(stats.bytes, 1 << 20);
    let ro = fs::metadata(d.path().join("ro")).unwrap();
    assert_eq!(
        (ro.mode() & 0o7777, ro.uid(), ro.gid()),
        (0o750, 1234, 5678)
    );
    assert_eq!(ro.mtime(), 1_500_000_000);
    let f = fs::metadata(d.path().join("ro/sparse")).unwrap();
    assert_eq!(f.mode() & 0o7777, 0o4755, "setuid survives chown");
    assert_eq!((f.uid(), f.gid(), f.len()), (42, 43, 1 << 20));
    assert_eq!((f.mtime(), f.mtime_nsec()), (1_400_000_000, 500_000_000));
    assert!(f.blocks() * 512 < (1 << 20), "zeros were not written out");
    assert_eq!(fs::read(d.path().join("ro/sparse")).unwrap(), data);
    assert_eq!(f.nlink(), 2);
    let n = fs::metadata(d.path().join("null")).unwrap();
    assert!(n.file_type().is_char_device());
    assert_eq!(n.rdev(), makedev(1, 3));
    assert!(fs::metadata(d.path().join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn later_entries_replace_earlier_ones() {
    let d = tempfile::tempdir().unwrap();
    let t = tar_of(&[
        (F, b"x", b"", b"old"),
        (EntryType::Directory, b"y/", b"", b""),
        (F, b"y/child", b"", b"c"),
        (F, b"x", b"", b"new"),
        (S, b"y", b"x", b""),
    ]);
    extract(&t[..], d.path(), Whiteouts::Literal).unwrap();
    assert_eq!(fs::read(d.path().join("x")).unwrap(), b"new");
    assert_eq!(fs::read_link(d.path().join("y")).unwrap(), Path::new("x"));
}
