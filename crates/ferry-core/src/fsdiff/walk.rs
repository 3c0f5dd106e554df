//! Walking a directory tree, parents before children, without following symlinks, tolerant
//! of entries vanishing underneath (the container may be running).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::FsDiffError;

pub(super) struct Walked {
    /// Relative to the walked root; empty for the root itself.
    pub rel: PathBuf,
    pub meta: fs::Metadata,
}

pub(super) fn walk(root: &Path) -> Result<Vec<Walked>, FsDiffError> {
    let mut out = Vec::new();
    let meta = fs::symlink_metadata(root).map_err(|source| FsDiffError::Io {
        path: root.to_owned(),
        source,
    })?;
    out.push(Walked {
        rel: PathBuf::new(),
        meta,
    });
    // A directory is always in `out` before its children are read, so parents come first.
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        let abs = root.join(&dir);
        let rd = match fs::read_dir(&abs) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(FsDiffError::Io { path: abs, source }),
        };
        let mut children = Vec::new();
        for e in rd {
            let e = e.map_err(|source| FsDiffError::Io {
                path: abs.clone(),
                source,
            })?;
            let rel = dir.join(e.file_name());
            match fs::symlink_metadata(root.join(&rel)) {
                Ok(meta) => children.push(Walked { rel, meta }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(FsDiffError::Io {
                        path: root.join(&rel),
                        source,
                    })
                }
            }
        }
        children.sort_by(|a, b| a.rel.cmp(&b.rel));
        for c in children.iter().rev() {
            if c.meta.is_dir() {
                stack.push(c.rel.clone());
            }
        }
        out.extend(children);
    }
    Ok(out)
}
