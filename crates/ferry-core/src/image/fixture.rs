//! Builds real OCI image layouts from host files, for tests, the demo and the benchmarks
//! (the lab has no registry access). Output is deterministic: the same spec and host files
//! give the same digests.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use super::digest::{Digest, HashingWriter};
use super::oci::{self, ConfigFile, ContainerConfig, Descriptor, Index, Manifest, RootFs};
use super::{io_err, normalize_name, ImageError};
use crate::tool::Tool;

/// Every entry gets this mtime so layer digests do not depend on when they were built.
const FIXTURE_MTIME: u64 = 1_700_000_000;
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to put in a one-layer fixture image.
#[derive(Debug, Clone, Default)]
pub struct FixtureSpec {
    /// Reference written as the `org.opencontainers.image.ref.name` annotation.
    pub name: String,
    /// (host file, path in the image). Host symlinks are followed.
    pub files: Vec<(PathBuf, PathBuf)>,
    /// Also add the shared libraries of every file in `files`, as `ldd` finds them.
    pub with_ldd_closure: bool,
    /// (path in the image, symlink target).
    pub symlinks: Vec<(PathBuf, PathBuf)>,
    /// (path in the image, content, mode).
    pub text_files: Vec<(PathBuf, String, u32)>,
    /// (path in the image, mode), e.g. `/tmp` with 0o1777.
    pub extra_dirs: Vec<(PathBuf, u32)>,
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    pub working_dir: String,
}

fn host_busybox() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/bin/busybox"))
}

impl FixtureSpec {
    /// busybox-static at /bin/busybox, a symlink in /bin for every applet, minimal /etc.
    pub fn busybox() -> Result<FixtureSpec, ImageError> {
        let bb = host_busybox();
        let list = Tool::new(&bb).arg("--list").run_text()?;
        let mut symlinks: Vec<(PathBuf, PathBuf)> = list
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
            .map(|a| (Path::new("/bin").join(a), PathBuf::from("busybox")))
            .collect();
        symlinks.sort();
        Ok(FixtureSpec {
            name: "busybox:latest".into(),
            files: vec![(bb, PathBuf::from("/bin/busybox"))],
            with_ldd_closure: false,
            symlinks,
            text_files: vec![
                (
                    PathBuf::from("/etc/passwd"),
                    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n".into(),
                    0o644,
                ),
                (
                    PathBuf::from("/etc/group"),
                    "root:x:0:\nnogroup:x:65534:\n".into(),
                    0o644,
                ),
            ],
            extra_dirs: vec![
                (PathBuf::from("/tmp"), 0o1777),
                (PathBuf::from("/root"), 0o700),
                (PathBuf::from("/proc"), 0o755),
                (PathBuf::from("/sys"), 0o755),
                (PathBuf::from("/dev"), 0o755),
                (PathBuf::from("/usr/bin"), 0o755),
            ],
            env: vec![PATH_ENV.into()],
            cmd: vec!["sh".into()],
            entrypoint: Vec::new(),
            working_dir: "/".into(),
        })
    }

    /// redis-server and redis-cli with their shared-library closure, busybox for a shell,
    /// and a /data directory.
    pub fn redis() -> Result<FixtureSpec, ImageError> {
        let mut spec = FixtureSpec::busybox()?;
        spec.name = "redis:latest".into();
        for bin in ["redis-server", "redis-cli"] {
            let p = Path::new("/usr/bin").join(bin);
            spec.files.push((p.clone(), p));
        }
        spec.with_ldd_closure = true;
        spec.extra_dirs.push((PathBuf::from("/data"), 0o755));
        spec.cmd = vec![
            "redis-server".into(),
            "--protected-mode".into(),
            "no".into(),
            "--dir".into(),
            "/data".into(),
        ];
        spec.working_dir = "/data".into();
        Ok(spec)
    }
}

/// The shared libraries (and loader) `ldd` lists for `bin`; none for static binaries.
pub fn ldd_closure(bin: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let out = match Tool::new("ldd").arg(bin).run_text() {
        Ok(o) => o,
        Err(e)
            if e.stderr()
                .is_some_and(|s| s.contains("not a dynamic executable"))
                || e.to_string().contains("not a dynamic executable") =>
        {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e.into()),
    };
    let mut libs = Vec::new();
    for line in out.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

enum Node {
    Dir(u32),
    HostFile(PathBuf, u32),
    Text(Vec<u8>, u32),
    Symlink(PathBuf),
}

/// Image path → archive path (relative, normalized); refuses `..`.
fn in_image(p: &Path) -> Result<PathBuf, ImageError> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            _ => {
                return Err(ImageError::BadName {
                    name: p.display().to_string(),
                    why: "fixture paths must not contain '..'".into(),
                })
            }
        }
    }
    Ok(out)
}

fn add_parents(tree: &mut BTreeMap<PathBuf, Node>, p: &Path) {
    let mut cur = p.parent();
    while let Some(d) = cur {
        if d.as_os_str().is_empty() {
            break;
        }
        tree.entry(d.to_owned()).or_insert(Node::Dir(0o755));
        cur = d.parent();
    }
}

/// Writes an OCI image layout (oci-layout, index.json with the ref name, blobs) for `spec`
/// into `out_dir` and returns the manifest digest.
pub fn build_layout(out_dir: &Path, spec: &FixtureSpec) -> Result<Digest, ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let name = normalize_name(&spec.name)?;
    let mut tree: BTreeMap<PathBuf, Node> = BTreeMap::new();
    let mut host_files: Vec<(PathBuf, PathBuf)> = spec.files.clone();
    if spec.with_ldd_closure {
        for (src, _) in &spec.files {
            for lib in ldd_closure(src)? {
                host_files.push((lib.clone(), lib));
            }
        }
    }
    for (src, dst) in &host_files {
        let meta = fs::metadata(src).map_err(io_err(src))?;
        let p = in_image(dst)?;
        tree.insert(
            p,
            Node::HostFile(src.clone(), meta.permissions().mode() & 0o7777),
        );
    }
    for (dst, text, mode) in &spec.text_files {
        tree.insert(in_image(dst)?, Node::Text(text.clone().into_bytes(), *mode));
    }
    for (dst, target) in &spec.symlinks {
        tree.entry(in_image(dst)?)
            .or_insert(Node::Symlink(target.clone()));
    }
    for (dst, mode) in &spec.extra_dirs {
        tree.insert(in_image(dst)?, Node::Dir(*mode));
    }
    let paths: Vec<PathBuf> = tree.keys().cloned().collect();
    for p in &paths {
        add_parents(&mut tree, p);
    }

    let blobs = out_dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;

    // Layer: tar → (diff_id hash) → gzip → (blob hash) → file.
    let tmp_layer = blobs.join(".layer.tmp");
    let file = File::create(&tmp_layer).map_err(io_err(&tmp_layer))?;
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(HashingWriter::new(file), flate2::Compression::fast());
    let mut builder = tar::Builder::new(HashingWriter::new(gz));
    let tar_err = |e: std::io::Error| io_err(&tmp_layer)(e);
    for (path, node) in &tree {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(FIXTURE_MTIME);
        match node {
            Node::Dir(mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                builder
                    .append_data(&mut h, path, std::io::empty())
                    .map_err(tar_err)?;
            }
            Node::HostFile(src, mode) => {
                let f = File::open(src).map_err(io_err(src))?;
                let len = f.metadata().map_err(io_err(src))?.len();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(len);
                builder.append_data(&mut h, path, f).map_err(tar_err)?;
            }
            Node::Text(bytes, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(bytes.len() as u64);
                builder
                    .append_data(&mut h, path, bytes.as_slice())
                    .map_err(tar_err)?;
            }
            Node::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                builder.append_link(&mut h, path, target).map_err(tar_err)?;
            }
        }
    }
    let plain = builder.into_inner().map_err(tar_err)?;
    let (gz, diff_id, _) = plain.finish();
    let hashed = gz.finish().map_err(tar_err)?;
    let (mut file, layer_digest, layer_size) = hashed.finish();
    file.flush().map_err(tar_err)?;
    let layer_path = blobs.join(layer_digest.hex());
    fs::rename(&tmp_layer, &layer_path).map_err(io_err(&layer_path))?;

    let opt = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let config = ConfigFile {
        created: Some("2023-11-14T22:13:20Z".into()),
        architecture: oci::host_arch().into(),
        os: "linux".into(),
        config: Some(ContainerConfig {
            env: opt(&spec.env),
            entrypoint: opt(&spec.entrypoint),
            cmd: opt(&spec.cmd),
            working_dir: (!spec.working_dir.is_empty()).then(|| spec.working_dir.clone()),
            user: None,
        }),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![diff_id.to_string()],
        },
    };
    let config_digest = write_json_blob(&blobs, &config)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(oci::OCI_MANIFEST.into()),
        config: descriptor(oci::OCI_CONFIG, &config_digest.0, config_digest.1),
        layers: vec![descriptor(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            &layer_digest,
            layer_size,
        )],
    };
    let (manifest_digest, manifest_size) = write_json_blob(&blobs, &manifest)?;
    let mut top = descriptor(oci::OCI_MANIFEST, &manifest_digest, manifest_size);
    top.platform = Some(oci::Platform {
        architecture: oci::host_arch().into(),
        os: "linux".into(),
        variant: None,
    });
    top.annotations
        .insert(oci::ANNOTATION_REF_NAME.into(), name);
    let index = Index {
        schema_version: 2,
        media_type: Some(oci::OCI_INDEX.into()),
        manifests: vec![top],
    };
    write_file(&out_dir.join("index.json"), &to_json(&index)?)?;
    write_file(
        &out_dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    Ok(manifest_digest)
}

fn descriptor(media_type: &str, d: &Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: d.to_string(),
        size,
        platform: None,
        annotations: Default::default(),
    }
}

fn to_json(v: &impl serde::Serialize) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(v).map_err(|e| ImageError::Corrupt {
        what: "fixture document".into(),
        why: e.to_string(),
    })
}

fn write_json_blob(blobs: &Path, v: &impl serde::Serialize) -> Result<(Digest, u64), ImageError> {
    let bytes = to_json(v)?;
    let d = Digest::of(&bytes);
    write_file(&blobs.join(d.hex()), &bytes)?;
    Ok((d, bytes.len() as u64))
}

fn write_file(p: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    fs::write(p, bytes).map_err(io_err(p))
}

/// Packs an OCI layout directory into a tar (optionally gzip/zstd) — the "layout as an
/// archive" form `import` accepts.
pub fn layout_to_tar(
    layout: &Path,
    out: &Path,
    compression: super::LayerCompression,
) -> Result<(), ImageError> {
    let f = File::create(out).map_err(io_err(out))?;
    let err = |e: std::io::Error| io_err(out)(e);
    let w: Box<dyn Write> = match compression {
        super::LayerCompression::None => Box::new(f),
        super::LayerCompression::Gzip => Box::new(flate2::write::GzEncoder::new(
            f,
            flate2::Compression::fast(),
        )),
        super::LayerCompression::Zstd => Box::new(
            zstd::stream::write::Encoder::new(f, 3)
                .map_err(err)?
                .auto_finish(),
        ),
    };
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    b.append_dir_all(".", layout).map_err(err)?;
    b.into_inner().map_err(err)?.flush().map_err(err)?;
    Ok(())
}
