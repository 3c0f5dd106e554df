use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::fixture::{build_layout, layout_to_tar, FixtureSpec};
use super::oci::{self, ConfigFile, Descriptor, Index, Manifest, RootFs};
use super::*;
use crate::paths::HostPaths;

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: ImageStore,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let store = ImageStore::open(&HostPaths::new(root.join("state"))).unwrap();
    Env {
        _dir: dir,
        root,
        store,
    }
}

/// A small deterministic fixture (no ldd) for fast tests.
fn small_spec(name: &str) -> FixtureSpec {
    FixtureSpec {
        name: name.into(),
        files: vec![(
            PathBuf::from("/etc/hostname"),
            PathBuf::from("/etc/hostname-copy"),
        )],
        symlinks: vec![(PathBuf::from("/bin/sh"), PathBuf::from("busybox"))],
        text_files: vec![(PathBuf::from("/bin/busybox"), "#!fake\n".into(), 0o755)],
        extra_dirs: vec![(PathBuf::from("/tmp"), 0o1777)],
        env: vec!["PATH=/bin".into()],
        cmd: vec!["sh".into()],
        ..Default::default()
    }
}

/// Lists everything in the store's state dir except the lock file, to prove "unchanged".
fn state_listing(store: &ImageStore) -> Vec<String> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(store.root()).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(store.root()).unwrap();
        if rel == Path::new("lock") {
            continue;
        }
        out.push(rel.display().to_string());
    }
    out
}

/// An OCI layout around one raw layer tar (gzip-compressed here), for malicious layers.
fn layout_with_layer(dir: &Path, plain_tar: &[u8]) -> Digest {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(plain_tar).unwrap();
    let layer = gz.finish().unwrap();
    let put = |bytes: &[u8]| {
        let d = Digest::of(bytes);
        fs::write(blobs.join(d.hex()), bytes).unwrap();
        d
    };
    let layer_d = put(&layer);
    let config = ConfigFile {
        architecture: oci::host_arch().into(),
        os: "linux".into(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![Digest::of(plain_tar).to_string()],
        },
        ..Default::default()
    };
    let cbytes = serde_json::to_vec(&config).unwrap();
    let config_d = put(&cbytes);
    let desc = |mt: &str, d: &Digest, size: usize| Descriptor {
        media_type: mt.into(),
        digest: d.to_string(),
        size: size as u64,
        platform: None,
        annotations: Default::default(),
    };
    let m = Manifest {
        schema_version: 2,
        media_type: Some(oci::OCI_MANIFEST.into()),
        config: desc(oci::OCI_CONFIG, &config_d, cbytes.len()),
        layers: vec![desc(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            &layer_d,
            layer.len(),
        )],
    };
    let mbytes = serde_json::to_vec(&m).unwrap();
    let m_d = put(&mbytes);
    let index = Index {
        schema_version: 2,
        media_type: Some(oci::OCI_INDEX.into()),
        manifests: vec![desc(oci::OCI_MANIFEST, &m_d, mbytes.len())],
    };
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    m_d
}

#[test]
fn import_layout_dir_resolve_and_reimport() {
    let e = env();
    let layout = e.root.join("layout");
    let built = build_layout(&layout, &small_spec("demo")).unwrap();
    let img = e.store.import(&layout, None).unwrap();
    assert_eq!(img.digest, built);
    assert_eq!(img.names, vec!["demo:latest".to_string()]);
    assert_eq!(img.config.cmd, vec!["sh".to_string()]);
    assert_eq!(img.config.env, vec!["PATH=/bin".to_string()]);
    assert_eq!(img.layers.len(), 1);

    for r in [
        "demo",
        "demo:latest",
        img.digest.as_str(),
        &img.digest.hex()[..12],
    ] {
        assert_eq!(
            e.store.resolve(r).unwrap().digest,
            img.digest,
            "resolve {r}"
        );
    }
    let prefixed = format!("sha256:{}", &img.digest.hex()[..16]);
    assert_eq!(e.store.resolve(&prefixed).unwrap().digest, img.digest);
    assert!(matches!(
        e.store.resolve(&img.digest.hex()[..8]),
        Err(ImageError::NotFound(_))
    ));
    assert!(matches!(
        e.store.resolve("other"),
        Err(ImageError::NotFound(_))
    ));

    let dirs = e.store.layer_dirs(&img).unwrap();
    assert_eq!(dirs.len(), 1);
    assert_eq!(
        fs::read_link(dirs[0].join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::read(dirs[0].join("etc/hostname-copy")).unwrap(),
        fs::read("/etc/hostname").unwrap()
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(dirs[0].join("tmp"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );

    // A second import of the same image changes nothing.
    let before = state_listing(&e.store);
    let index_before = fs::read(e.store.root().join("images.json")).unwrap();
    let again = e.store.import(&layout, None).unwrap();
    assert_eq!(again, img);
    assert_eq!(state_listing(&e.store), before);
    assert_eq!(
        fs::read(e.store.root().join("images.json")).unwrap(),
        index_before
    );
    assert_eq!(e.store.list().unwrap().len(), 1);

    // Importing under another name adds the name to the same image.
    let tagged = e.store.import(&layout, Some("demo:v2")).unwrap();
    assert_eq!(tagged.digest, img.digest);
    assert_eq!(
        tagged.names,
        vec!["demo:latest".to_string(), "demo:v2".to_string()]
    );
}

#[test]
fn import_layout_tar_plain_gzip_zstd() {
    let e = env();
    let layout = e.root.join("layout");
    let built = build_layout(&layout, &small_spec("tarred:1")).unwrap();
    for (i, c) in [
        LayerCompression::None,
        LayerCompression::Gzip,
        LayerCompression::Zstd,
    ]
    .into_iter()
    .enumerate()
    {
        let t = e.root.join(format!("layout-{i}.tar"));
        layout_to_tar(&layout, &t, c).unwrap();
        let img = e.store.import(&t, None).unwrap();
        assert_eq!(img.digest, built, "{c:?}");
        assert_eq!(img.names, vec!["tarred:1".to_string()]);
    }
    assert_eq!(e.store.list().unwrap().len(), 1);
    assert!(fs::read_dir(e.store.root().join("tmp"))
        .unwrap()
        .next()
        .is_none());
}

fn rootfs_tar(dir: &Path) -> Vec<u8> {
    let src = dir.join("rootfs-src");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/motd"), b"hello").unwrap();
    std::os::unix::fs::symlink("/etc/motd", src.join("motd-link")).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", &src).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn import_plain_rootfs_tarball() {
    let e = env();
    let plain = rootfs_tar(&e.root);
    let zst = e.root.join("rootfs.tar.zst");
    fs::write(&zst, zstd::encode_all(&plain[..], 3).unwrap()).unwrap();
    let img = e.store.import(&zst, Some("myroot")).unwrap();
    assert_eq!(img.names, vec!["myroot:latest".to_string()]);
    assert_eq!(img.diff_ids, vec![Digest::of(&plain)]);
    let dirs = e.store.layer_dirs(&img).unwrap();
    assert_eq!(fs::read(dirs[0].join("etc/motd")).unwrap(), b"hello");
    assert_eq!(
        fs::read_link(dirs[0].join("motd-link")).unwrap(),
        Path::new("/etc/motd")
    );
    // Same tarball again: same image id, nothing new.
    let again = e.store.import(&zst, None).unwrap();
    assert_eq!(again.digest, img.digest);
    assert_eq!(e.store.list().unwrap().len(), 1);
    // Without a name it is listed by digest only.
    let tar = e.root.join("rootfs.tar");
    fs::write(&tar, &plain).unwrap();
    let anon = e.store.import(&tar, None).unwrap();
    assert!(anon.names.is_empty());
    assert_ne!(
        anon.digest, img.digest,
        "different layer blob (uncompressed)"
    );
    assert_eq!(anon.diff_ids, img.diff_ids);
}

#[test]
fn remove_deletes_unshared_blobs_and_layers() {
    let e = env();
    let empty = state_listing(&e.store);
    let layout = e.root.join("layout");
    build_layout(&layout, &small_spec("gone")).unwrap();
    let img = e.store.import(&layout, None).unwrap();
    let layer_dir = e.store.layer_dirs(&img).unwrap().remove(0);
    assert!(layer_dir.is_dir());
    let removed = e.store.remove("gone").unwrap();
    assert_eq!(removed.digest, img.digest);
    assert!(e.store.list().unwrap().is_empty());
    assert!(!layer_dir.exists());
    let mut now = state_listing(&e.store);
    now.retain(|p| p != "images.json");
    assert_eq!(now, empty);
    assert!(matches!(
        e.store.remove("gone"),
        Err(ImageError::NotFound(_))
    ));
}

#[test]
fn bad_layer_digest_leaves_store_unchanged() {
    let e = env();
    let layout = e.root.join("layout");
    build_layout(&layout, &small_spec("bad")).unwrap();
    // Corrupt the layer blob (the biggest blob) without renaming it.
    let biggest = fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&biggest).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    fs::write(&biggest, &bytes).unwrap();
    let before = state_listing(&e.store);
    let err = e.store.import(&layout, None).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&biggest.file_name().unwrap().to_string_lossy().to_string()),
        "{err}"
    );
    assert_eq!(state_listing(&e.store), before);
}

#[test]
fn wrong_diff_id_is_refused() {
    let e = env();
    let layout = e.root.join("layout");
    let tar = super::extract::tests::tar_of(&[(tar::EntryType::Regular, b"f", b"", b"x")]);
    layout_with_layer(&layout, &tar);
    // Rewrite the config with a wrong diff_id, then fix up manifest and index digests.
    let other = super::extract::tests::tar_of(&[(tar::EntryType::Regular, b"g", b"", b"y")]);
    let fake = e.root.join("fake");
    layout_with_layer(&fake, &other);
    // Take the layer of `layout` but the config of `fake`: blobs are valid, diff_id is not.
    let idx: Index = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m_d = Digest::parse(&idx.manifests[0].digest).unwrap();
    let mut m: Manifest =
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(m_d.hex())).unwrap())
            .unwrap();
    let fidx: Index = serde_json::from_slice(&fs::read(fake.join("index.json")).unwrap()).unwrap();
    let fm_d = Digest::parse(&fidx.manifests[0].digest).unwrap();
    let fm: Manifest =
        serde_json::from_slice(&fs::read(fake.join("blobs/sha256").join(fm_d.hex())).unwrap())
            .unwrap();
    let fc = Digest::parse(&fm.config.digest).unwrap();
    fs::copy(
        fake.join("blobs/sha256").join(fc.hex()),
        layout.join("blobs/sha256").join(fc.hex()),
    )
    .unwrap();
    m.config = fm.config;
    let mbytes = serde_json::to_vec(&m).unwrap();
    let new_m = Digest::of(&mbytes);
    fs::write(layout.join("blobs/sha256").join(new_m.hex()), &mbytes).unwrap();
    let mut idx2 = idx;
    idx2.manifests[0].digest = new_m.to_string();
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&idx2).unwrap(),
    )
    .unwrap();
    let before = state_listing(&e.store);
    let err = e.store.import(&layout, None).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("diff_id"), "{err}");
    assert_eq!(state_listing(&e.store), before);
}

#[test]
fn traversal_layers_refused_and_nothing_left() {
    use tar::EntryType::{Link, Regular, Symlink};
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "../escape",
            super::extract::tests::tar_of(&[(Regular, b"../escape", b"", b"x")]),
        ),
        (
            "/../abs",
            super::extract::tests::tar_of(&[(Regular, b"/../abs", b"", b"x")]),
        ),
        (
            "lnk/through",
            super::extract::tests::tar_of(&[
                (Symlink, b"lnk", b"/", b""),
                (Regular, b"lnk/through", b"", b"x"),
            ]),
        ),
        (
            "hl",
            super::extract::tests::tar_of(&[(Link, b"hl", b"../../etc/passwd", b"")]),
        ),
        (
            "hl2",
            super::extract::tests::tar_of(&[
                (Symlink, b"etc", b"/etc", b""),
                (Link, b"hl2", b"etc/passwd", b""),
            ]),
        ),
    ];
    for (i, (entry, tar)) in cases.into_iter().enumerate() {
        let e = env();
        let layout = e.root.join(format!("evil-{i}"));
        layout_with_layer(&layout, &tar);
        let before = state_listing(&e.store);
        let err = e.store.import(&layout, Some("evil")).unwrap_err();
        assert!(
            matches!(err, ImageError::Traversal { .. }),
            "{entry}: {err}"
        );
        assert!(err.to_string().contains(entry), "{err} should name {entry}");
        assert_eq!(state_listing(&e.store), before, "{entry}");
        assert!(!e.root.join("escape").exists() && !e.root.join("abs").exists());
    }
}

#[test]
fn truncated_layout_tar_refused() {
    let e = env();
    let layout = e.root.join("layout");
    build_layout(&layout, &small_spec("cut")).unwrap();
    let t = e.root.join("layout.tar");
    layout_to_tar(&layout, &t, LayerCompression::Gzip).unwrap();
    let bytes = fs::read(&t).unwrap();
    fs::write(&t, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let before = state_listing(&e.store);
    let err = e.store.import(&t, None).unwrap_err();
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");
    assert_eq!(state_listing(&e.store), before);
    // Plain rootfs tar cut inside a file.
    let plain = rootfs_tar(&e.root);
    let cut = e.root.join("cut.tar");
    fs::write(&cut, &plain[..600]).unwrap();
    let err = e.store.import(&cut, Some("cut")).unwrap_err();
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");
    assert_eq!(state_listing(&e.store), before);
}

#[test]
fn blobs_transfer_and_register_on_another_store() {
    let a = env();
    let b = env();
    let layout = a.root.join("layout");
    build_layout(&layout, &small_spec("moved")).unwrap();
    let img = a.store.import(&layout, None).unwrap();
    let blobs = a.store.blobs_of(&img);
    assert_eq!(blobs.len(), 3);
    assert_eq!(blobs[0].0, img.digest);
    // A wrong digest is refused and leaves nothing.
    let wrong = Digest::of(b"something else");
    let err = b.store.write_blob(&wrong, &b"payload"[..]).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }));
    assert!(!b.store.has_blob(&wrong));
    for (d, size) in &blobs {
        assert!(!b.store.has_blob(d));
        let n = b
            .store
            .write_blob(d, a.store.open_blob(d).unwrap())
            .unwrap();
        assert_eq!(n, *size);
    }
    let got = b
        .store
        .register(&img.digest, &["moved".to_string()])
        .unwrap();
    assert_eq!(got.digest, img.digest);
    assert_eq!(got.names, vec!["moved:latest".to_string()]);
    assert_eq!(got.layers, img.layers);
    let dirs = b.store.layer_dirs(&got).unwrap();
    assert!(dirs[0].join("bin/busybox").is_file());
    // Missing blob → clear error.
    let c = env();
    let err = c.store.register(&img.digest, &[]).unwrap_err();
    assert!(err.to_string().contains(&img.digest.to_string()), "{err}");
}

#[test]
fn layer_dirs_unpacks_on_demand() {
    let e = env();
    let layout = e.root.join("layout");
    build_layout(&layout, &small_spec("lazy")).unwrap();
    let img = e.store.import(&layout, None).unwrap();
    let dir = e.store.layer_dirs(&img).unwrap().remove(0);
    fs::remove_dir_all(&dir).unwrap();
    let again = e.store.layer_dirs(&img).unwrap().remove(0);
    assert_eq!(again, dir);
    assert!(dir.join("bin/busybox").is_file());
}

#[test]
fn nested_index_picks_host_platform() {
    let e = env();
    let layout = e.root.join("layout");
    let m_amd = build_layout(&layout, &small_spec("multi")).unwrap();
    // Wrap the manifest in a nested index next to a foreign-arch entry and an attestation.
    let idx: Index = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mut ours = idx.manifests[0].clone();
    ours.annotations.clear();
    let mut foreign = ours.clone();
    foreign.platform = Some(oci::Platform {
        architecture: "s390x".into(),
        os: "linux".into(),
        variant: None,
    });
    foreign.digest = Digest::of(b"not there").to_string();
    let mut attest = ours.clone();
    attest.platform = Some(oci::Platform {
        architecture: "unknown".into(),
        os: "unknown".into(),
        variant: None,
    });
    attest.digest = Digest::of(b"attestation").to_string();
    let nested = Index {
        schema_version: 2,
        media_type: Some(oci::OCI_INDEX.into()),
        manifests: vec![foreign, ours, attest],
    };
    let nbytes = serde_json::to_vec(&nested).unwrap();
    let nd = Digest::of(&nbytes);
    fs::write(layout.join("blobs/sha256").join(nd.hex()), &nbytes).unwrap();
    let mut top = idx.manifests[0].clone();
    top.media_type = oci::OCI_INDEX.into();
    top.digest = nd.to_string();
    top.size = nbytes.len() as u64;
    top.platform = None;
    top.annotations.insert(
        oci::ANNOTATION_CONTAINERD_NAME.into(),
        "docker.io/library/multi:3".into(),
    );
    let top_idx = Index {
        schema_version: 2,
        media_type: Some(oci::OCI_INDEX.into()),
        manifests: vec![top],
    };
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&top_idx).unwrap(),
    )
    .unwrap();
    let img = e.store.import(&layout, None).unwrap();
    assert_eq!(img.digest, m_amd);
    assert_eq!(img.names, vec!["docker.io/library/multi:3".to_string()]);
}

#[test]
fn docker_save_archive_imports() {
    let e = env();
    let plain =
        super::extract::tests::tar_of(&[(tar::EntryType::Regular, b"hello", b"", b"world")]);
    let config = ConfigFile {
        architecture: "amd64".into(),
        os: "linux".into(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![Digest::of(&plain).to_string()],
        },
        ..Default::default()
    };
    let cbytes = serde_json::to_vec(&config).unwrap();
    let cname = format!("{}.json", Digest::of(&cbytes).hex());
    let manifest =
        format!(r#"[{{"Config":"{cname}","RepoTags":["saved:7"],"Layers":["abc/layer.tar"]}}]"#);
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        (cname.as_str(), &cbytes[..]),
        ("abc/layer.tar", &plain[..]),
        ("manifest.json", manifest.as_bytes()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    }
    let t = e.root.join("saved.tar");
    fs::write(&t, b.into_inner().unwrap()).unwrap();
    let img = e.store.import(&t, None).unwrap();
    assert_eq!(img.names, vec!["saved:7".to_string()]);
    let dirs = e.store.layer_dirs(&img).unwrap();
    assert_eq!(fs::read(dirs[0].join("hello")).unwrap(), b"world");
}

#[test]
fn names_are_normalized() {
    assert_eq!(normalize_name("busybox").unwrap(), "busybox:latest");
    assert_eq!(
        normalize_name("reg:5000/a/b").unwrap(),
        "reg:5000/a/b:latest"
    );
    assert_eq!(normalize_name("a/b:1.2").unwrap(), "a/b:1.2");
    assert!(normalize_name("a b").is_err());
    assert!(normalize_name("a@sha256:00").is_err());
    assert!(normalize_name("a:").is_err());
}

#[test]
fn busybox_and_redis_presets_build_and_import() {
    let e = env();
    let bb = e.root.join("bb");
    build_layout(&bb, &FixtureSpec::busybox().unwrap()).unwrap();
    let img = e.store.import(&bb, None).unwrap();
    assert_eq!(img.names, vec!["busybox:latest".to_string()]);
    let dir = e.store.layer_dirs(&img).unwrap().remove(0);
    for applet in ["sh", "sleep", "echo", "cat", "nc", "date", "seq"] {
        assert_eq!(
            fs::read_link(dir.join("bin").join(applet)).unwrap(),
            Path::new("busybox")
        );
    }
    // The image's shell really runs (chroot into the unpacked layer).
    let out = crate::tool::Tool::new("chroot")
        .args([
            dir.to_str().unwrap(),
            "/bin/sh",
            "-c",
            "echo hi; seq 3 | wc -l",
        ])
        .run_text()
        .unwrap();
    assert_eq!(out, "hi\n3");

    let rd = e.root.join("redis");
    build_layout(&rd, &FixtureSpec::redis().unwrap()).unwrap();
    let img = e.store.import(&rd, None).unwrap();
    assert_eq!(img.names, vec!["redis:latest".to_string()]);
    let dir = e.store.layer_dirs(&img).unwrap().remove(0);
    assert!(dir.join("data").is_dir());
    let out = crate::tool::Tool::new("chroot")
        .args([dir.to_str().unwrap(), "/usr/bin/redis-server", "--version"])
        .run_text()
        .unwrap();
    assert!(out.contains("Redis server"), "{out}");
}

#[test]
fn endless_and_special_inputs_are_refused_before_reading() {
    let e = env();
    let before = state_listing(&e.store);
    let fifo = e.root.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for (src, kind) in [
        (Path::new("/dev/zero"), "character device"),
        (&*fifo, "FIFO"),
    ] {
        let t = std::time::Instant::now();
        let err = e.store.import(src, None).unwrap_err();
        assert!(matches!(err, ImageError::BadSource { .. }), "{err}");
        assert!(err.to_string().contains(kind), "{err}");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }
    assert_eq!(state_listing(&e.store), before);
}

#[test]
fn an_import_past_its_deadline_is_refused_and_leaves_nothing() {
    let e = env();
    let tar = e.root.join("rootfs.tar");
    fs::write(&tar, rootfs_tar(&e.root)).unwrap();
    let before = state_listing(&e.store);
    let err = e
        .store
        .import_within(&tar, Some("late"), std::time::Duration::ZERO)
        .unwrap_err();
    assert!(matches!(err, ImageError::OverLimit { .. }), "{err}");
    assert!(err.to_string().contains("deadline"), "{err}");
    assert_eq!(state_listing(&e.store), before);
    // The same input within the default deadline imports.
    e.store.import(&tar, Some("late")).unwrap();
}
