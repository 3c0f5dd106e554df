use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::*;
use crate::checkpoint::layout::CheckpointLayout;

/// Incompressible, reproducible bytes (so zstd damage lands inside real data).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A checkpoint directory in Podman's layout, with its manifest.
fn sample_checkpoint(root: &Path) -> PathBuf {
    let dir = root.join("ckpt");
    let l = CheckpointLayout::new(&dir);
    std::fs::create_dir_all(l.criu_images()).unwrap();
    std::fs::create_dir_all(l.volumes()).unwrap();
    std::fs::write(l.criu_images().join("pages-1.img"), noise(300_000, 1)).unwrap();
    std::fs::write(l.criu_images().join("core-1.img"), noise(1_000, 2)).unwrap();
    std::fs::write(l.criu_images().join("empty.img"), b"").unwrap();
    std::fs::write(l.spec(), br#"{"ociVersion":"1.0.2"}"#).unwrap();
    std::fs::write(l.config(), br#"{"name":"redis"}"#).unwrap();
    std::fs::write(l.network_status(), br#"{"ip":"10.77.0.5"}"#).unwrap();
    std::fs::write(l.rootfs_diff(), noise(10_240, 3)).unwrap();
    std::fs::write(l.deleted_files(), br#"["/etc/motd"]"#).unwrap();
    std::fs::write(l.volume_tar("data"), noise(20_480, 4)).unwrap();
    write_manifest(&dir, "redis").unwrap();
    dir
}

fn export_sample(root: &Path, compression: ArchiveCompression) -> PathBuf {
    let dir = sample_checkpoint(root);
    let out = root.join(format!("ckpt.tar.{compression}"));
    let summary = export(&dir, &out, compression).unwrap();
    assert_eq!(summary.members, 9);
    assert_eq!(summary.bytes, std::fs::metadata(&out).unwrap().len());
    out
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Builds a plain tar by hand, so tests can write what export never would.
struct RawTar {
    builder: tar::Builder<Vec<u8>>,
}

impl RawTar {
    fn new() -> Self {
        RawTar {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    /// An entry with exactly this name (bypassing the tar crate's path checks).
    fn entry(mut self, name: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>) -> Self {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
        self
    }

    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, tar::EntryType::Regular, data, None)
    }

    fn manifest(self, version: &str, members: &[(&str, &[u8])]) -> Self {
        let manifest = Manifest {
            format: FORMAT.into(),
            version: version.into(),
            created: "2025-01-01T00:00:00Z".into(),
            container: "c".into(),
            ferry_version: "0.1.0".into(),
            members: members
                .iter()
                .map(|(n, d)| {
                    (
                        n.to_string(),
                        Member {
                            sha256: sha(d),
                            size: d.len() as u64,
                        },
                    )
                })
                .collect(),
        };
        let json = serde_json::to_vec(&manifest).unwrap();
        self.file("manifest.json", &json)
    }

    fn write(self, path: &Path) {
        std::fs::write(path, self.builder.into_inner().unwrap()).unwrap();
    }
}

/// Imports, expecting failure, and checks nothing was left behind.
fn import_fails(archive: &Path, root: &Path, limits: &Limits) -> String {
    let dest = root.join("imported");
    let err = import(archive, &dest, limits).unwrap_err().to_string();
    assert!(
        !dest.exists(),
        "{} left behind after: {err}",
        dest.display()
    );
    let leftovers: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".ferry-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?} after: {err}");
    err
}

#[test]
fn manifest_lists_every_file_with_digest() {
    let root = tempfile::tempdir().unwrap();
    let dir = sample_checkpoint(root.path());
    let m = verify_dir(&dir).unwrap();
    assert_eq!(m.format, "ferry-checkpoint");
    assert_eq!(m.version, "2.0");
    assert_eq!(m.container, "redis");
    let names: Vec<&str> = m.members.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "checkpoint/core-1.img",
            "checkpoint/empty.img",
            "checkpoint/pages-1.img",
            "config.dump",
            "deleted.files",
            "network.status",
            "rootfs-diff.tar",
            "spec.dump",
            "volumes/data.tar"
        ]
    );
    let pages = &m.members["checkpoint/pages-1.img"];
    assert_eq!(pages.size, 300_000);
    assert_eq!(pages.sha256, sha(&noise(300_000, 1)));
    assert_eq!(m.members["checkpoint/empty.img"].sha256, sha(b""));
}

#[test]
fn verify_dir_catches_changes() {
    let root = tempfile::tempdir().unwrap();
    let dir = sample_checkpoint(root.path());

    let mut spec = std::fs::read(dir.join("spec.dump")).unwrap();
    spec[0] ^= 1;
    std::fs::write(dir.join("spec.dump"), &spec).unwrap();
    let err = verify_dir(&dir).unwrap_err().to_string();
    assert_eq!(err, "member spec.dump: sha256 mismatch");
    spec[0] ^= 1;
    std::fs::write(dir.join("spec.dump"), &spec).unwrap();
    verify_dir(&dir).unwrap();

    std::fs::write(dir.join("checkpoint/extra.img"), b"x").unwrap();
    let err = verify_dir(&dir).unwrap_err().to_string();
    assert_eq!(err, "checkpoint/extra.img is not listed in the manifest");
    std::fs::remove_file(dir.join("checkpoint/extra.img")).unwrap();

    std::fs::remove_file(dir.join("deleted.files")).unwrap();
    let err = verify_dir(&dir).unwrap_err().to_string();
    assert_eq!(err, "member deleted.files: missing");
}

#[test]
fn write_manifest_refuses_symlinks_and_fifos() {
    let root = tempfile::tempdir().unwrap();
    let dir = sample_checkpoint(root.path());
    std::os::unix::fs::symlink("/etc/passwd", dir.join("checkpoint/link")).unwrap();
    let err = write_manifest(&dir, "c").unwrap_err().to_string();
    assert!(err.ends_with("checkpoint/link is a symlink; a checkpoint may contain only regular files and directories"), "{err}");
    std::fs::remove_file(dir.join("checkpoint/link")).unwrap();

    nix::unistd::mkfifo(
        &dir.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let err = write_manifest(&dir, "c").unwrap_err().to_string();
    assert!(err.contains("fifo is a FIFO"), "{err}");
}

#[test]
fn compression_names() {
    assert_eq!(
        "none".parse::<ArchiveCompression>().unwrap(),
        ArchiveCompression::None
    );
    assert_eq!(
        "zstd".parse::<ArchiveCompression>().unwrap(),
        ArchiveCompression::Zstd
    );
    assert!("gzip"
        .parse::<ArchiveCompression>()
        .unwrap_err()
        .contains("\"gzip\""));
    assert_eq!(ArchiveCompression::Zstd.to_string(), "zstd");
}

#[test]
fn round_trip_both_compressions() {
    for compression in [ArchiveCompression::None, ArchiveCompression::Zstd] {
        let root = tempfile::tempdir().unwrap();
        let out = export_sample(root.path(), compression);
        let head = std::fs::read(&out).unwrap();
        assert_eq!(
            head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
            compression == ArchiveCompression::Zstd
        );

        // manifest.json is the first entry.
        if compression == ArchiveCompression::None {
            let mut ar = tar::Archive::new(std::fs::File::open(&out).unwrap());
            let first = ar.entries().unwrap().next().unwrap().unwrap();
            assert_eq!(first.path().unwrap(), Path::new("manifest.json"));
        }

        let dest = root.path().join("imported");
        let Origin::Ferry(m) = import(&out, &dest, &Limits::default()).unwrap() else {
            panic!("a ferry archive read as Podman's");
        };
        assert_eq!(m, verify_dir(&dest).unwrap());
        assert_eq!(m, read_manifest(&root.path().join("ckpt")).unwrap());
        assert_eq!(
            std::fs::read(dest.join("checkpoint/pages-1.img")).unwrap(),
            noise(300_000, 1)
        );
        assert_eq!(
            std::fs::read(dest.join("manifest.json")).unwrap(),
            std::fs::read(root.path().join("ckpt/manifest.json")).unwrap()
        );

        // The destination must be fresh.
        let err = import(&out, &dest, &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("already exists"), "{err}");
    }
}

#[test]
fn export_refuses_a_member_changed_after_the_manifest() {
    let root = tempfile::tempdir().unwrap();
    let dir = sample_checkpoint(root.path());
    let mut data = noise(1_000, 2);
    data[500] ^= 0xff;
    std::fs::write(dir.join("checkpoint/core-1.img"), data).unwrap();
    let out = root.path().join("out.tar");
    let err = export(&dir, &out, ArchiveCompression::None)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "member checkpoint/core-1.img: sha256 mismatch");
    assert!(!out.exists());
    let leftovers = std::fs::read_dir(root.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".ferry-")
        })
        .count();
    assert_eq!(leftovers, 0);
}

#[test]
fn flipped_byte_plain_is_a_checksum_error() {
    let root = tempfile::tempdir().unwrap();
    let out = export_sample(root.path(), ArchiveCompression::None);
    let mut bytes = std::fs::read(&out).unwrap();
    let pages = noise(300_000, 1);
    let at = bytes.windows(64).position(|w| w == &pages[..64]).unwrap() + 150_000;
    bytes[at] ^= 0x01;
    std::fs::write(&out, &bytes).unwrap();
    let err = import_fails(&out, root.path(), &Limits::default());
    assert_eq!(err, "member checkpoint/pages-1.img: sha256 mismatch");
}

#[test]
fn flipped_byte_zstd_is_detected() {
    let root = tempfile::tempdir().unwrap();
    let out = export_sample(root.path(), ArchiveCompression::Zstd);
    let mut bytes = std::fs::read(&out).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&out, &bytes).unwrap();
    let err = import_fails(&out, root.path(), &Limits::default());
    assert!(
        err.contains("sha256 mismatch") || err.starts_with("archive is damaged"),
        "{err}"
    );
}

#[test]
fn truncated_archives_are_refused() {
    for compression in [ArchiveCompression::None, ArchiveCompression::Zstd] {
        let root = tempfile::tempdir().unwrap();
        let out = export_sample(root.path(), compression);
        let bytes = std::fs::read(&out).unwrap();
        // Cut inside a member, and exactly at a tar block boundary.
        for cut in [bytes.len() / 2, 512 * 8] {
            std::fs::write(&out, &bytes[..cut]).unwrap();
            let err = import_fails(&out, root.path(), &Limits::default());
            assert!(
                err.starts_with("archive is truncated") || err.starts_with("archive is damaged"),
                "{compression} cut at {cut}: {err}"
            );
        }
        std::fs::write(&out, b"").unwrap();
        let err = import_fails(&out, root.path(), &Limits::default());
        assert_eq!(err, "archive is truncated: the file is empty");
    }
}

#[test]
fn plain_truncation_is_named() {
    let root = tempfile::tempdir().unwrap();
    let out = export_sample(root.path(), ArchiveCompression::None);
    let bytes = std::fs::read(&out).unwrap();
    std::fs::write(&out, &bytes[..bytes.len() / 2]).unwrap();
    let err = import_fails(&out, root.path(), &Limits::default());
    assert!(
        err.starts_with("archive is truncated: member checkpoint/pages-1.img ends after"),
        "{err}"
    );
}

#[test]
fn parent_escape_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let archive = root.path().join("evil.tar");
    RawTar::new()
        .manifest("1.0", &[("spec.dump", b"{}")])
        .file("../x", b"owned")
        .file("spec.dump", b"{}")
        .write(&archive);
    let err = import_fails(&archive, root.path(), &Limits::default());
    assert_eq!(err, "entry ../x escapes the archive root");
    assert!(!root.path().join("x").exists());

    RawTar::new()
        .manifest("1.0", &[("spec.dump", b"{}")])
        .file("/etc/evil", b"owned")
        .write(&archive);
    let err = import_fails(&archive, root.path(), &Limits::default());
    assert_eq!(err, "entry /etc/evil is an absolute path");
}

#[test]
fn links_and_devices_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let archive = root.path().join("evil.tar");
    let cases = [
        (tar::EntryType::Symlink, "symlink"),
        (tar::EntryType::Link, "hard link"),
        (tar::EntryType::Char, "device"),
    ];
    for (kind, word) in cases {
        RawTar::new()
            .manifest("1.0", &[("spec.dump", b"{}")])
            .entry("spec.dump", kind, b"", Some("/etc/shadow"))
            .write(&archive);
        let err = import_fails(&archive, root.path(), &Limits::default());
        assert_eq!(
            err,
            format!("entry spec.dump is a {word}, which checkpoint archives may not contain")
        );
    }
}

#[test]
fn unknown_major_version_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let archive = root.path().join("future.tar");
    RawTar::new()
        .manifest("3.0", &[("spec.dump", b"{}")])
        .file("spec.dump", b"{}")
        .write(&archive);
    let err = import_fails(&archive, root.path(), &Limits::default());
    assert_eq!(
        err,
        "archive format version 3.0 is newer than this ferry supports (1.x to 2.x)"
    );
    RawTar::new()
        .manifest("0.9", &[("spec.dump", b"{}")])
        .file("spec.dump", b"{}")
        .write(&archive);
    let err = import_fails(&archive, root.path(), &Limits::default());
    assert_eq!(
        err,
        "archive format version 0.9 is older than this ferry supports (1.x to 2.x)"
    );

    // Any minor version of a major this ferry reads is read (1.x: before config.dump became Podman's).
    RawTar::new()
        .manifest("1.7", &[("spec.dump", b"{}")])
        .file("spec.dump", b"{}")
        .write(&archive);
    import(&archive, &root.path().join("ok"), &Limits::default()).unwrap();
}

#[test]
fn unlisted_duplicate_and_missing_members_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let archive = root.path().join("a.tar");

    RawTar::new()
        .manifest("1.0", &[("spec.dump", b"{}")])
        .file("spec.dump", b"{}")
        .file("checkpoint/extra.img", b"x")
        .write(&archive);
    let err = import_fails(&archive, root.path(), &Limits::default());
    assert_eq!(
        err,
        "entry checkpoint/extra.img is not listed in the manifest"
    );

    RawTar::new()
        .manifest("1.0", &[("spec.dump", b"{}")])
        .file("spec.dump", b"{}")
        .file("spec.dump", b"{}")
        .write(&archive);
    let err = import_fails(&archive, root.path(), &Limits::default());
    assert_eq!(err, "entry spec.dump appears twice");

    RawTar::new()
        .manifest("1.0", &[("spec.dump", b"{}"), ("config.dump", b"{}")])
        .file("spec.dump", b"{}")
        .write(&archive);
    let err = import_fails(&archive, root.path(), &Limits::default());
    assert_eq!(err, "archive is truncated: member config.dump is missing");

    RawTar::new()
        .file("spec.dump", b"{}")
        .manifest("1.0", &[("spec.dump", b"{}")])
        .write(&archive);
    let err = import_fails(&archive, root.path(), &Limits::default());
    // Without a manifest first, it could only be Podman's; it is not.
    assert_eq!(
        err,
        "not a checkpoint archive: it neither starts with ferry's manifest.json nor holds Podman's config.dump"
    );
}

#[test]
fn wrong_format_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let archive = root.path().join("a.tar");
    RawTar::new()
        .file("manifest.json", br#"{"format":"podman","version":"1.0","created":"","container":"","ferry_version":"","members":{}}"#)
        .write(&archive);
    let err = import_fails(&archive, root.path(), &Limits::default());
    assert_eq!(
        err,
        "not a ferry checkpoint: manifest format is \"podman\", expected \"ferry-checkpoint\""
    );

    // gzip is read (Podman's `--compress gzip`); a damaged stream is named.
    std::fs::write(&archive, [0x1f, 0x8b, 8, 0, 0, 0]).unwrap();
    let err = import_fails(&archive, root.path(), &Limits::default());
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn limits_are_enforced_before_extraction() {
    let root = tempfile::tempdir().unwrap();
    let out = export_sample(root.path(), ArchiveCompression::Zstd);
    let defaults = Limits::default();
    assert_eq!(defaults.max_total_bytes, 64 << 30);

    let err = import_fails(
        &out,
        root.path(),
        &Limits {
            max_total_bytes: 100_000,
            ..defaults
        },
    );
    assert!(
        err.starts_with("archive exceeds the import limits: "),
        "{err}"
    );
    assert!(
        err.contains("bytes in all, at most 100000 allowed"),
        "{err}"
    );

    let err = import_fails(
        &out,
        root.path(),
        &Limits {
            max_member_bytes: 200_000,
            ..defaults
        },
    );
    assert_eq!(
        err,
        "archive exceeds the import limits: member checkpoint/pages-1.img has 300000 bytes, at most 200000 allowed"
    );

    let err = import_fails(
        &out,
        root.path(),
        &Limits {
            max_members: 3,
            ..defaults
        },
    );
    assert_eq!(
        err,
        "archive exceeds the import limits: 9 members, at most 3 allowed"
    );
}

#[test]
fn size_in_header_must_match_manifest() {
    let root = tempfile::tempdir().unwrap();
    let archive = root.path().join("a.tar");
    RawTar::new()
        .manifest("1.0", &[("spec.dump", b"{}")])
        .file("spec.dump", b"{ }")
        .write(&archive);
    let err = import_fails(&archive, root.path(), &Limits::default());
    assert_eq!(
        err,
        "member spec.dump: size 3 in the archive differs from the manifest's 2"
    );
}

#[test]
fn an_archive_larger_than_the_free_space_is_refused_before_writing() {
    let root = tempfile::tempdir().unwrap();
    let free = crate::fsutil::free_bytes(root.path()).unwrap();
    // A manifest that declares one member of the whole free space (under the size limits),
    // followed by nothing: the check must fire on the manifest alone.
    let mut manifest_members = std::collections::BTreeMap::new();
    manifest_members.insert(
        "checkpoint/pages-1.img".to_owned(),
        Member {
            sha256: sha(b""),
            size: free,
        },
    );
    let manifest = Manifest {
        format: FORMAT.into(),
        version: "1.0".into(),
        created: "2025-01-01T00:00:00Z".into(),
        container: "c".into(),
        ferry_version: "0.1.0".into(),
        members: manifest_members,
    };
    let archive = root.path().join("bomb.tar");
    RawTar::new()
        .file("manifest.json", &serde_json::to_vec(&manifest).unwrap())
        .write(&archive);
    let limits = Limits {
        max_total_bytes: u64::MAX,
        max_member_bytes: u64::MAX,
        ..Limits::default()
    };
    let err = import_fails(&archive, root.path(), &limits);
    assert!(err.contains("bytes free"), "{err}");
}

#[test]
fn encrypted_archives_need_their_key_and_refuse_any_change() {
    let root = tempfile::tempdir().unwrap();
    let dir = sample_checkpoint(root.path());
    let key = ArchiveKey::from_bytes([3; 32]);
    for compression in [ArchiveCompression::None, ArchiveCompression::Zstd] {
        let out = root.path().join(format!("sealed-{compression}.tar"));
        export_sealed(&dir, &out, compression, Some(&key)).unwrap();
        let raw = std::fs::read(&out).unwrap();
        assert!(raw.starts_with(crypt::MAGIC));
        // The pages are not readable in the file.
        let pages = noise(300_000, 1);
        assert!(!raw.windows(64).any(|w| w == &pages[..64]));

        let dest = root.path().join(format!("ok-{compression}"));
        let Origin::Ferry(m) = import_sealed(&out, &dest, &Limits::default(), Some(&key)).unwrap()
        else {
            panic!("read as Podman's");
        };
        assert_eq!(m, verify_dir(&dest).unwrap());

        let err = import_fails(&out, root.path(), &Limits::default());
        assert!(
            err.contains("is encrypted") && err.contains("--decrypt"),
            "{err}"
        );

        let wrong = ArchiveKey::from_bytes([4; 32]);
        let dest = root.path().join("wrong");
        let err = import_sealed(&out, &dest, &Limits::default(), Some(&wrong))
            .unwrap_err()
            .to_string();
        assert!(err.contains("wrong key"), "{err}");
        assert!(!dest.exists());

        let mut bad = raw.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x40;
        let tampered = root.path().join("tampered.tar");
        std::fs::write(&tampered, &bad).unwrap();
        let dest = root.path().join("tampered");
        let err = import_sealed(&tampered, &dest, &Limits::default(), Some(&key))
            .unwrap_err()
            .to_string();
        assert!(err.contains("changed") || err.contains("damaged"), "{err}");
        assert!(!dest.exists());

        let cut = root.path().join("cut.tar");
        std::fs::write(&cut, &raw[..raw.len() - 40]).unwrap();
        let dest = root.path().join("cut");
        assert!(import_sealed(&cut, &dest, &Limits::default(), Some(&key)).is_err());
        assert!(!dest.exists());
    }
    // A key for a plain archive: it was expected to be sealed.
    let plain = export_sample(root.path(), ArchiveCompression::Zstd);
    let err = import_sealed(
        &plain,
        &root.path().join("p"),
        &Limits::default(),
        Some(&key),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not encrypted"), "{err}");
}
