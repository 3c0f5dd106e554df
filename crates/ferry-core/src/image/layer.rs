//! Unpacking one layer blob into a directory, checking both its blob digest and its diff_id.

use std::fs::File;
use std::path::Path;

use super::compress::decompress;
use super::digest::{Digest, HashingReader};
use super::extract::{Extractor, Whiteouts};
use super::{io_err, ImageError};

/// Unpacks the layer blob at `blob` into the existing empty directory `dest`.
pub fn unpack_layer(
    blob: &Path,
    blob_digest: &Digest,
    diff_id: &Digest,
    dest: &Path,
) -> Result<(), ImageError> {
    let what = format!("layer {blob_digest}");
    let corrupt = |why: String| ImageError::Corrupt {
        what: what.clone(),
        why,
    };
    let file = File::open(blob).map_err(io_err(blob))?;
    let mut raw = HashingReader::new(file);
    {
        let (_, dec) = decompress(&mut raw).map_err(|e| corrupt(e.to_string()))?;
        let mut plain = HashingReader::new(dec);
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
