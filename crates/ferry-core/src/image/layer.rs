//! Unpacking one layer blob into a directory, checking both its blob digest and its diff_id.

use std::fs::File;
use std::path::Path;

use super::compress::decompress;
use super::digest::{Digest, HashingReader};
use super::extract::{Extractor, Whiteouts};
use super::guard::ImportGuard;
use super::{io_err, ImageError};

/// The mode of a layer's root when its archive has no `./` entry: containers/storage's.
pub const DEFAULT_ROOT_MODE: u32 = 0o555;

/// Unpacks the layer blob at `blob` into the existing empty directory `dest`. The layer may
/// expand to what the free space at `dest` allows (less a reserve), and no more: a small
/// compressed bomb fails before it fills the disk.
pub(crate) fn unpack_layer(
    blob: &Path,
    blob_digest: &Digest,
    diff_id: &Digest,
    dest: &Path,
    guard: &ImportGuard,
) -> Result<(), ImageError> {
    // containers/storage's mode for a layer root its archive does not set (no `./` entry);
    // it becomes the container's `/` (see `RootfsDirs::create`), which CRIU checks on restore.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(DEFAULT_ROOT_MODE))
            .map_err(io_err(dest))?;
    }
    let room = crate::fsutil::free_bytes(dest).map_err(io_err(dest))?;
    let max = room.saturating_sub(crate::fsutil::FREE_SPACE_RESERVE);
    let what = format!("layer {blob_digest}");
    let corrupt = |why: String| ImageError::Corrupt {
        what: what.clone(),
        why,
    };
    let file = File::open(blob).map_err(io_err(blob))?;
    let mut raw = HashingReader::new(file);
    {
        let (_, dec) = decompress(&mut raw).map_err(|e| corrupt(e.to_string()))?;
        let mut plain = HashingReader::new(guard.capped(dec, max));
        let mut x = Extractor::new(dest, Whiteouts::Overlay);
        x.unpack(&mut plain)
            .map_err(|e| match ImageError::from(e) {
                ImageError::Corrupt { why, .. } => corrupt(why),
                other => other,
            })?;
        x.finish()?;
        let (actual, _) = plain
            .finish()
            .map_err(|e| corrupt(format!("decompression failed: {e}")))?;
        if &actual != diff_id {
            return Err(ImageError::DigestMismatch {
                what: format!("uncompressed {what} (diff_id)"),
                expected: diff_id.clone(),
                actual,
            });
        }
    }
    let (actual, _) = raw.finish().map_err(io_err(blob))?;
    if &actual != blob_digest {
        return Err(ImageError::DigestMismatch {
            what,
            expected: blob_digest.clone(),
            actual,
        });
    }
    Ok(())
}
