//! Extracting a checkpoint archive that has no ferry manifest: Podman's `checkpoint --export`.
//! Nothing lists what it should hold, so every entry is held to the rules a manifest would
//! have enforced anyway (regular files and directories only, paths inside the root, each once)
//! and the whole to the import limits and the free space, counted as it is written.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::import::{create_member, entry_name, owner_mode, read_error, refused_kind};
use super::{ArchiveError, Limits};
use crate::checkpoint::layout::{CONFIG_DUMP, CRIU_IMAGES_DIR, SPEC_DUMP};

/// Extracts `reader` (a tar stream) into the empty directory `root`.
pub(super) fn extract(reader: impl Read, root: &Path, limits: &Limits) -> Result<(), ArchiveError> {
    let free = crate::fsutil::free_bytes(root).map_err(|e| ArchiveError::io(root, e))?;
    let room = free.saturating_sub(crate::fsutil::FREE_SPACE_RESERVE);
    let budget = limits.max_total_bytes.min(room);
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| read_error(&e, "reading the archive"))?;
    let mut seen = BTreeSet::new();
    let mut total: u64 = 0;
    for entry in entries {
        let mut entry = entry.map_err(|e| read_error(&e, "reading an entry header"))?;
        // The root itself (`./`, written by tools that include the source dir) adds nothing.
        if matches!(&*entry.path_bytes(), b"." | b"./" | b"/") {
            continue;
        }
        let name = entry_name(&entry)?;
        let rel = name.trim_end_matches('/');
        if seen.len() >= limits.max_members {
            return Err(ArchiveError::OverLimit {
                detail: format!("more than {} members", limits.max_members),
            });
        }
        if !seen.insert(rel.to_owned()) {
            return Err(ArchiveError::entry(&name, "appears twice"));
        }
        let path = root.join(rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                crate::fsutil::create_private_dir_all(&path)
                    .map_err(|e| ArchiveError::io(&path, e))?;
            }
            tar::EntryType::Regular => {
                let size = entry.size();
                if size > limits.max_member_bytes {
                    return Err(ArchiveError::OverLimit {
                        detail: format!(
                            "member {rel} has {size} bytes, at most {} allowed",
                            limits.max_member_bytes
                        ),
                    });
                }
                total = total.saturating_add(size);
                if total > budget {
                    return Err(ArchiveError::OverLimit {
                        detail: format!(
                            "it expands to more than {budget} bytes (the import limit, or the free \
                             space of {} less a reserve of {})",
                            root.display(),
                            crate::fsutil::FREE_SPACE_RESERVE
                        ),
                    });
                }
                let mode = owner_mode(entry.header());
                let mut out = create_member(&path)?;
                let copied = std::io::copy(&mut (&mut entry).take(size), &mut out)
                    .map_err(|e| read_error(&e, &format!("member {rel}")))?;
                if copied != size {
                    return Err(ArchiveError::Truncated {
                        detail: format!("member {rel} ends after {copied} of {size} bytes"),
                    });
                }
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| ArchiveError::io(&path, e))?;
            }
            other => return Err(refused_kind(&name, other)),
        }
    }
    for required in [CONFIG_DUMP, SPEC_DUMP, CRIU_IMAGES_DIR] {
        if !seen.contains(required) && !seen.iter().any(|s| s.starts_with(&format!("{required}/")))
        {
            return Err(ArchiveError::NotACheckpoint { missing: required });
        }
    }
    Ok(())
}
