//! CRIU's image file framing: a head magic (common or service image), the image kind's magic,
//! then entries, each a u32 length followed by that many bytes of protobuf. Integers are in the
//! byte order of the host that wrote the image, which is always this host's for the images ferry
//! reads (stats are read where CRIU ran).

use std::io::{ErrorKind, Write};
use std::path::Path;

use super::CriuError;

/// Head magic of ordinary images.
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// Head magic of service images (stats, irmap cache).
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
/// Kind magic of `stats-dump` and `stats-restore`.
pub const STATS_MAGIC: u32 = 0x5709_3306;

/// No entry of the images ferry reads comes close; anything bigger is a damaged length.
const MAX_ENTRY_BYTES: u32 = 64 << 20;

/// The two magics that open an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageMagic {
    pub head: u32,
    pub kind: u32,
}

impl ImageMagic {
    pub const STATS: ImageMagic = ImageMagic {
        head: IMG_SERVICE_MAGIC,
        kind: STATS_MAGIC,
    };
}

/// Reads every entry's raw protobuf bytes. Images from CRIU releases that wrote no head magic
/// (the kind magic first) are accepted too.
pub fn read_image_entries(path: &Path, magic: ImageMagic) -> Result<Vec<Vec<u8>>, CriuError> {
    let data = std::fs::read(path).map_err(|e| CriuError::io(path, e))?;
    Ok(parse(path, &data, magic)?.1)
}

/// Rewrites an image's entries with `edit`, keeping its head bytes exactly as they were (CRIU
/// writes some images, the inventory among them, with no head magic), and replaces the file
/// atomically.
pub fn rewrite_image_entries(
    path: &Path,
    magic: ImageMagic,
    edit: impl FnOnce(&mut Vec<Vec<u8>>) -> Result<(), CriuError>,
) -> Result<(), CriuError> {
    let data = std::fs::read(path).map_err(|e| CriuError::io(path, e))?;
    let (head_len, mut entries) = parse(path, &data, magic)?;
    edit(&mut entries)?;
    let mut out = data[..head_len].to_vec();
    for e in &entries {
        let len = u32::try_from(e.len()).map_err(|_| CriuError::Image {
            path: path.to_owned(),
            problem: "an edited entry is over 4 GiB".into(),
        })?;
        out.extend_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(e);
    }
    crate::fsutil::write_atomic(path, &out, 0o600).map_err(|e| CriuError::io(path, e))
}

/// The length of the head (one or two magics) and every entry.
fn parse(path: &Path, data: &[u8], magic: ImageMagic) -> Result<(usize, Vec<Vec<u8>>), CriuError> {
    let bad = |problem: String| CriuError::Image {
        path: path.to_owned(),
        problem,
    };
    let mut rest = data;
    let first = take_u32(&mut rest).ok_or_else(|| bad("empty or shorter than its magic".into()))?;
    if first == magic.head {
        let kind =
            take_u32(&mut rest).ok_or_else(|| bad("truncated after the head magic".into()))?;
        if kind != magic.kind {
            return Err(bad(format!(
                "image magic is {kind:#010x}, expected {:#010x}",
                magic.kind
            )));
        }
    } else if first != magic.kind {
        return Err(bad(format!(
            "head magic is {first:#010x}, expected {:#010x} (is this a CRIU image?)",
            magic.head
        )));
    }
    let head_len = data.len() - rest.len();

    let mut entries = Vec::new();
    while !rest.is_empty() {
        let index = entries.len();
        let len =
            take_u32(&mut rest).ok_or_else(|| bad(format!("entry {index}: truncated length")))?;
        if len > MAX_ENTRY_BYTES {
            return Err(bad(format!("entry {index}: length {len} is implausible")));
        }
        let len = len as usize;
        if rest.len() < len {
            return Err(bad(format!(
                "entry {index}: truncated ({} of {len} bytes)",
                rest.len()
            )));
        }
        let (entry, tail) = rest.split_at(len);
        entries.push(entry.to_vec());
        rest = tail;
    }
    Ok((head_len, entries))
}

/// Writes an image the way CRIU does (for tests and tools that fabricate images).
pub fn write_image_entries(
    path: &Path,
    magic: ImageMagic,
    entries: &[Vec<u8>],
) -> Result<(), CriuError> {
    let write = || -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        f.write_all(&magic.head.to_ne_bytes())?;
        f.write_all(&magic.kind.to_ne_bytes())?;
        for e in entries {
            let len = u32::try_from(e.len())
                .map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "entry over 4 GiB"))?;
            f.write_all(&len.to_ne_bytes())?;
            f.write_all(e)?;
        }
        f.flush()
    };
    write().map_err(|e| CriuError::io(path, e))
}

fn take_u32(rest: &mut &[u8]) -> Option<u32> {
    let (head, tail) = rest.split_first_chunk::<4>()?;
    *rest = tail;
    Some(u32::from_ne_bytes(*head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let entries = vec![b"abc".to_vec(), Vec::new(), vec![7; 300]];
        write_image_entries(&p, ImageMagic::STATS, &entries).unwrap();
        assert_eq!(read_image_entries(&p, ImageMagic::STATS).unwrap(), entries);

        let other = ImageMagic {
            head: IMG_COMMON_MAGIC,
            kind: 0x1234_5678,
        };
        let err = read_image_entries(&p, other).unwrap_err().to_string();
        assert!(err.contains("head magic is 0x55105940"), "{err}");

        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        let err = read_image_entries(&p, ImageMagic::STATS)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("entry 2: truncated (299 of 300 bytes)"),
            "{err}"
        );

        std::fs::write(&p, b"").unwrap();
        let err = read_image_entries(&p, ImageMagic::STATS)
            .unwrap_err()
            .to_string();
        assert!(err.contains("shorter than its magic"), "{err}");
    }

    #[test]
    fn accepts_images_without_head_magic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let mut bytes = STATS_MAGIC.to_ne_bytes().to_vec();
        bytes.extend(2u32.to_ne_bytes());
        bytes.extend(b"hi");
        std::fs::write(&p, bytes).unwrap();
        assert_eq!(
            read_image_entries(&p, ImageMagic::STATS).unwrap(),
            vec![b"hi".to_vec()]
        );
    }
}
