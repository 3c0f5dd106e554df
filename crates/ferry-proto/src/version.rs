//! Protocol version negotiation: each side states the range it speaks; the highest common
//! version wins.

/// The newest message protocol this build speaks.
pub const PROTOCOL_VERSION: u16 = 2;
/// The oldest message protocol this build still speaks. v1 lacked the fenced commit
/// (`Inquire`/`Verdict`), so a v1 peer could leave two copies running: it is refused.
pub const MIN_SUPPORTED: u16 = 2;

/// Inclusive range of protocol versions, `(min, max)`.
pub type VersionRange = (u16, u16);

/// The highest version in both ranges, or `None` if they do not overlap (or one is empty).
pub fn negotiate(local: VersionRange, remote: VersionRange) -> Option<u16> {
    let low = local.0.max(remote.0);
    let high = local.1.min(remote.1);
    (local.0 <= local.1 && remote.0 <= remote.1 && low <= high).then_some(high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_highest_common() {
        assert_eq!(negotiate((1, 1), (1, 1)), Some(1));
        assert_eq!(negotiate((1, 3), (2, 5)), Some(3));
        assert_eq!(negotiate((2, 5), (1, 3)), Some(3));
        assert_eq!(negotiate((1, 2), (3, 4)), None);
        assert_eq!(negotiate((3, 1), (1, 3)), None, "empty local range");
        assert_eq!(negotiate((1, 3), (3, 1)), None, "empty remote range");
    }
}
