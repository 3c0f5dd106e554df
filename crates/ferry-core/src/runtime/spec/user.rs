//! Resolving a `--user` string against the image's own /etc/passwd and /etc/group.
//!
//! The files are read through the rootfs with symlinks resolved inside it, so an image whose
//! /etc/passwd is a symlink to an absolute path cannot make ferry read the host's file.

use std::path::{Component, Path, PathBuf};

use super::SpecError;

/// Resolves `""`, `uid`, `uid:gid`, `name`, `name:group` (and mixes) to (uid, gid).
///
/// - `""` is root (0, 0).
/// - A user without a group gets its primary group from /etc/passwd; a numeric uid that is not
///   listed there gets gid 0.
/// - A name that is not listed is an error naming the file.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32), SpecError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if user_part.is_empty() || group_part == Some("") {
        return Err(SpecError::Invalid {
            field: "user",
            problem: format!("{user:?} is not user[:group]"),
        });
    }

    let passwd_path = path_in_root(rootfs, "/etc/passwd");
    let (uid, primary_gid) = match user_part.parse::<u32>() {
        Ok(uid) => {
            // Numeric uids need no passwd entry; use its primary group when it has one.
            let entries = read_db(&passwd_path, 7).unwrap_or_default();
            let gid = entries
                .iter()
                .find(|e| e.fields[2] == user_part)
                .map(|e| parse_id(&passwd_path, e, 3))
                .transpose()?;
            (uid, gid.unwrap_or(0))
        }
        Err(_) => {
            let entries = read_db(&passwd_path, 7)?;
            let entry = entries
                .iter()
                .find(|e| e.fields[0] == user_part)
                .ok_or_else(|| SpecError::UnknownUser {
                    name: user_part.to_owned(),
                    passwd: passwd_path.clone(),
                })?;
            (
                parse_id(&passwd_path, entry, 2)?,
                parse_id(&passwd_path, entry, 3)?,
            )
        }
    };

    let gid = match group_part {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let group_path = path_in_root(rootfs, "/etc/group");
                let entries = read_db(&group_path, 4)?;
                let entry = entries.iter().find(|e| e.fields[0] == g).ok_or_else(|| {
                    SpecError::UnknownGroup {
                        name: g.to_owned(),
                        group: group_path.clone(),
                    }
                })?;
                parse_id(&group_path, entry, 2)?
            }
        },
    };
    Ok((uid, gid))
}

/// One line of a colon-separated database file.
struct DbEntry {
    line: usize,
    fields: Vec<String>,
}

/// Reads /etc/passwd-style lines; `min_fields` guards the indexing done by callers.
fn read_db(path: &Path, min_fields: usize) -> Result<Vec<DbEntry>, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<String> = line.split(':').map(str::to_owned).collect();
        if fields.len() < min_fields {
            return Err(SpecError::BadEntry {
                path: path.to_owned(),
                line: i + 1,
                problem: format!("{} fields, expected {min_fields}", fields.len()),
            });
        }
        out.push(DbEntry {
            line: i + 1,
            fields,
        });
    }
    Ok(out)
}

fn parse_id(path: &Path, entry: &DbEntry, field: usize) -> Result<u32, SpecError> {
    entry.fields[field]
        .parse()
        .map_err(|_| SpecError::BadEntry {
            path: path.to_owned(),
            line: entry.line,
            problem: format!("{:?} is not a numeric id", entry.fields[field]),
        })
}

/// `path` (absolute, inside the container) as a host path under `root`, following symlinks as
/// the container would see them: absolute targets and `..` never leave `root`.
fn path_in_root(root: &Path, path: &str) -> PathBuf {
    const MAX_LINKS: usize = 40;
    let mut resolved = PathBuf::new(); // relative to root
    let mut pending: Vec<PathBuf> = vec![PathBuf::from(path)];
    let mut links = 0;
    // `pending` is a stack of remaining path suffixes, innermost (from symlinks) on top.
    while let Some(rest) = pending.pop() {
        let mut comps = rest.components();
        let Some(first) = comps.next() else { continue };
        let tail: PathBuf = comps.collect();
        if !tail.as_os_str().is_empty() {
            pending.push(tail);
        }
        match first {
            Component::RootDir => resolved.clear(),
            Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(name) => {
                let candidate = resolved.join(name);
                let host = root.join(&candidate);
                match std::fs::read_link(&host) {
                    Ok(target) if links < MAX_LINKS => {
                        links += 1;
                        // A relative target is relative to the link's directory, which is
                        // `resolved` as it stands.
                        pending.push(target);
                    }
                    _ => resolved = candidate,
                }
            }
        }
    }
    root.join(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\n# comment\nredis:x:999:998::/data:/bin/false\n",
        )
        .unwrap();
        std::fs::write(
            etc.join("group"),
            "root:x:0:\nredis:x:998:\nstaff:x:50:redis\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn resolves_all_forms() {
        let root = rootfs();
        let r = root.path();
        assert_eq!(resolve_user(r, "").unwrap(), (0, 0));
        assert_eq!(resolve_user(r, "redis").unwrap(), (999, 998));
        assert_eq!(resolve_user(r, "redis:staff").unwrap(), (999, 50));
        assert_eq!(resolve_user(r, "redis:7").unwrap(), (999, 7));
        assert_eq!(resolve_user(r, "999").unwrap(), (999, 998));
        assert_eq!(resolve_user(r, "1234").unwrap(), (1234, 0));
        assert_eq!(resolve_user(r, "1234:5").unwrap(), (1234, 5));
        assert_eq!(resolve_user(r, "0:staff").unwrap(), (0, 50));
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        let root = rootfs();
        let err = resolve_user(root.path(), "nobody").unwrap_err().to_string();
        assert!(
            err.contains("\"nobody\"") && err.contains("etc/passwd"),
            "{err}"
        );
        let err = resolve_user(root.path(), "redis:wheel")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"wheel\"") && err.contains("etc/group"),
            "{err}"
        );
        let err = resolve_user(root.path(), "redis:").unwrap_err().to_string();
        assert!(err.contains("user[:group]"), "{err}");
    }

    #[test]
    fn numeric_user_needs_no_passwd() {
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve_user(empty.path(), "1000:1000").unwrap(),
            (1000, 1000)
        );
        let err = resolve_user(empty.path(), "redis").unwrap_err().to_string();
        assert!(err.contains("etc/passwd"), "{err}");
    }

    #[test]
    fn symlinks_stay_inside_the_rootfs() {
        let root = rootfs();
        let etc = root.path().join("etc");
        std::fs::rename(etc.join("passwd"), etc.join("passwd.real")).unwrap();
        // An absolute target means the rootfs's own /etc/passwd.real, never the host's.
        std::os::unix::fs::symlink("/etc/passwd.real", etc.join("passwd")).unwrap();
        assert_eq!(resolve_user(root.path(), "redis").unwrap(), (999, 998));
        std::fs::remove_file(etc.join("passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/passwd.real", etc.join("passwd")).unwrap();
        assert_eq!(resolve_user(root.path(), "redis").unwrap(), (999, 998));
        assert_eq!(
            path_in_root(root.path(), "/etc/passwd"),
            root.path().join("etc/passwd.real")
        );
    }
}
