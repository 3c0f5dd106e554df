//! The dump's inventory image, as a migration's destination adjusts it before the restore.

use std::path::Path;

use prost::encoding::{decode_key, encode_key, encode_varint, skip_field, DecodeContext, WireType};

use super::image::{rewrite_image_entries, ImageMagic, IMG_COMMON_MAGIC};
use super::CriuError;

/// Kind magic of `inventory.img` (CRIU writes it with no head magic).
const INVENTORY_MAGIC: u32 = 0x5831_3116;
const INVENTORY: &str = "inventory.img";
/// `network_lock_method` of `inventory_entry` (CRIU's `images/inventory.proto`).
const NETWORK_LOCK_FIELD: u32 = 11;
/// CRIU's `NETWORK_LOCK_SKIP` (`criu/include/cr_options.h`: iptables 0, nftables 1, skip 2).
const NETWORK_LOCK_SKIP: u64 = 2;

/// Makes the restore's network unlock a no-op, for a restore whose traffic ferry gates itself.
///
/// CRIU's restore ignores `--network-lock` and takes the method from the dump's inventory; at
/// its end it "unlocks" the container's netns with it. A ferry container's netns is external to
/// CRIU: the dump locked the *source's* netns, and nothing locked the destination's, whose
/// traffic ferry's own gate holds until the commit. With the default iptables method, that
/// unlock is several `iptables-restore` runs, each failing on a chain that is not there:
/// 70–90 ms of the frozen window on this project's machine. With `skip` CRIU runs none of
/// them; it still turns off the TCP repair mode of the restored sockets.
pub fn skip_restore_network_unlock(images: &Path) -> Result<(), CriuError> {
    let path = images.join(INVENTORY);
    let magic = ImageMagic {
        head: IMG_COMMON_MAGIC,
        kind: INVENTORY_MAGIC,
    };
    rewrite_image_entries(&path, magic, |entries| {
        let [entry] = entries.as_mut_slice() else {
            return Err(CriuError::Image {
                path: path.clone(),
                problem: format!("{} entries, an inventory has one", entries.len()),
            });
        };
        *entry =
            with_varint_field(entry, NETWORK_LOCK_FIELD, NETWORK_LOCK_SKIP).map_err(|problem| {
                CriuError::Image {
                    path: path.clone(),
                    problem,
                }
            })?;
        Ok(())
    })
}

/// `msg` with every occurrence of varint field `field` replaced by one carrying `value`; every
/// other field is kept byte for byte (the inventory has fields ferry does not describe).
fn with_varint_field(msg: &[u8], field: u32, value: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(msg.len() + 4);
    let mut rest = msg;
    while !rest.is_empty() {
        let start = msg.len() - rest.len();
        let (tag, wire) = decode_key(&mut rest).map_err(|e| format!("at byte {start}: {e}"))?;
        skip_field(wire, tag, &mut rest, DecodeContext::default())
            .map_err(|e| format!("field {tag} at byte {start}: {e}"))?;
        if tag != field {
            out.extend_from_slice(&msg[start..msg.len() - rest.len()]);
        }
    }
    encode_key(field, WireType::Varint, &mut out);
    encode_varint(value, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inventory CRIU 4.2.1 wrote for a runc container here (no head magic; one entry,
    /// `network_lock_method` 0 = iptables, then the plugins entry and the run id).
    const INVENTORY_4_2_1: &[u8] = &[
        0x16, 0x31, 0x31, 0x58, 0x4e, 0x00, 0x00, 0x00, 0x08, 0x02, 0x10, 0x01, 0x1a, 0x18, 0x08,
        0x01, 0x10, 0x01, 0x18, 0x01, 0x20, 0x01, 0x28, 0x01, 0x30, 0x02, 0x38, 0x03, 0x40, 0x04,
        0x48, 0x06, 0x50, 0x07, 0x58, 0x08, 0x60, 0x05, 0x20, 0x01, 0x28, 0x01, 0x30, 0x00, 0x58,
        0x00, 0x62, 0x00, 0x6a, 0x24, b'6', b'2', b'5', b'0', b'7', b'c', b'9', b'b', b'-', b'b',
        b'b', b'6', b'2', b'-', b'4', b'c', b'f', b'b', b'-', b'9', b'b', b'e', b'7', b'-', b'5',
        b'0', b'c', b'b', b'0', b'5', b'e', b'a', b'a', b'0', b'9', b'e',
    ];

    #[test]
    fn the_method_becomes_skip_and_everything_else_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(INVENTORY);
        std::fs::write(&path, INVENTORY_4_2_1).unwrap();
        skip_restore_network_unlock(dir.path()).unwrap();
        let out = std::fs::read(&path).unwrap();

        // Same head (the kind magic alone), same length: one 2-byte field out, one in.
        assert_eq!(out[..4], INVENTORY_4_2_1[..4]);
        assert_eq!(out.len(), INVENTORY_4_2_1.len());
        let body = &out[8..];
        let mut expected = INVENTORY_4_2_1[8..].to_vec();
        let at = expected.windows(2).position(|w| w == [0x58, 0x00]).unwrap();
        expected.drain(at..at + 2);
        expected.extend_from_slice(&[0x58, 0x02]);
        assert_eq!(body, expected.as_slice());

        // Idempotent: a second pass leaves one field with the same value.
        skip_restore_network_unlock(dir.path()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), out);
    }

    #[test]
    fn a_missing_field_is_added() {
        let out = with_varint_field(&[0x08, 0x02], NETWORK_LOCK_FIELD, 2).unwrap();
        assert_eq!(out, [0x08, 0x02, 0x58, 0x02]);
    }

    #[test]
    fn a_damaged_inventory_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(INVENTORY);
        // The entry claims a 10-byte string that is not there.
        let damaged = [&INVENTORY_4_2_1[..4], &[4, 0, 0, 0, 0x6a, 0x0a, b'a', b'b']].concat();
        std::fs::write(&path, &damaged).unwrap();
        let err = skip_restore_network_unlock(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("inventory.img") && err.contains("field 13"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), damaged);

        std::fs::remove_file(&path).unwrap();
        let err = skip_restore_network_unlock(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("inventory.img"), "{err}");
    }
}
