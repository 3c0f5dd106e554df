//! Identifiers that become file names: one validated type per kind.
//!
//! A container id, a container or volume name, a snapshot name or a migration id ends up as a
//! component of a path under the state root (`containers/ID`, `volumes/NAME/_data`,
//! `checkpoints/ID/SNAP`, `migrations/ID.json`). Each arrives from somewhere ferry does not
//! control: the CLI, the API, an archive's `config.dump`, a peer's `Prepare`. A value of one of
//! these types passed its rule, so it is one plain path component: no `/`, no `..`, no leading
//! dot, nothing but ASCII letters, digits and a few punctuation marks. Path builders
//! ([`crate::paths::HostPaths`]) take these types, not strings.
//!
//! Every type is a string on the wire and on disk (serde `transparent` with validation), so
//! parsing a hostile document fails with an error that names the value and the rule.

use std::fmt;
use std::ops::Deref;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

/// A value that is not a valid identifier of its kind; the caller's input is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {rule}")]
pub struct IdError {
    /// "container id", "container name", ...
    pub kind: &'static str,
    /// The refused value (truncated to 200 characters, so a huge value does not flood a log).
    pub value: String,
    /// The rule it broke, in words.
    pub rule: &'static str,
}

/// The character rule shared by names: Docker's, so scripts carry over.
const NAME_RULE: &str =
    "use 1 to 63 ASCII letters, digits, '_', '.' or '-', starting with a letter or digit";
const ID_RULE: &str =
    "use 1 to 64 ASCII letters, digits, '_' or '-', starting with a letter or digit";

fn check(
    kind: &'static str,
    rule: &'static str,
    value: &str,
    max: usize,
    dots: bool,
) -> Result<(), IdError> {
    let mut chars = value.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok =
        chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || (dots && c == '.'));
    if first_ok && rest_ok && value.len() <= max {
        Ok(())
    } else {
        Err(IdError {
            kind,
            value: value.chars().take(200).collect(),
            rule,
        })
    }
}

/// What a path builder ([`crate::paths::HostPaths`]) accepts as an identifier of kind `T`:
/// the validated type, or a string from a document whose parsing already checked it (a
/// `ContainerConfig`'s `id`). A string is checked again here, and one that breaks its rule
/// means a source skipped validation: that is a bug, and it panics rather than build a path
/// that could leave the state root.
pub trait PathComponent<T> {
    /// The identifier, safe to use as one path component.
    fn component(&self) -> &str;
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $rule:expr, $max:literal, dots: $dots:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// What the error calls this kind of identifier.
            pub const KIND: &'static str = $kind;

            /// Checks `value` against the rule of this kind.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check($kind, $rule, &value, $max, $dots)?;
                Ok($name(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        /// A validated identifier is one safe path component: `dir.join(&id)` is fine.
        impl AsRef<Path> for $name {
            fn as_ref(&self) -> &Path {
                Path::new(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                $name::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                $name::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PathComponent<$name> for $name {
            fn component(&self) -> &str {
                &self.0
            }
        }

        /// For code that keeps this identifier as a string (a parsed `ContainerConfig`):
        /// checked here again, see [`PathComponent`].
        impl PathComponent<$name> for str {
            fn component(&self) -> &str {
                if let Err(e) = check($kind, $rule, self, $max, $dots) {
                    panic!("ferry bug: an unvalidated identifier reached a path builder: {e}");
                }
                self
            }
        }

        impl PathComponent<$name> for String {
            fn component(&self) -> &str {
                PathComponent::<$name>::component(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

identifier!(
    /// A container's id: ferry makes 32 hex digits; an archive or a peer may bring any value
    /// that fits the rule. Names `containers/ID`, `netns/ID`, `checkpoints/ID`, the runc id
    /// and the cgroup.
    ContainerId, "container id", ID_RULE, 64, dots: false
);
identifier!(
    /// A container's name (Docker's rule). Names nothing on disk today, but it is the
    /// container's hostname and the key every command uses.
    ContainerName, "container name", NAME_RULE, 63, dots: true
);
identifier!(
    /// A named volume: `volumes/NAME/_data`, and `volumes/NAME.tar` in a checkpoint.
    VolumeName, "volume name", NAME_RULE, 63, dots: true
);
identifier!(
    /// A checkpoint's name: `checkpoints/ID/SNAPSHOT`.
    SnapshotName, "checkpoint name", NAME_RULE, 63, dots: true
);
identifier!(
    /// A migration's id: `migrations/ID.json` and `migrations/ID/` (logs).
    MigrationId, "migration id", ID_RULE, 64, dots: false
);

/// serde `deserialize_with` helpers for documents that keep identifiers as plain strings
/// (so code that reads them as `String` is unchanged) but must never hold an invalid one.
pub mod de {
    use super::*;

    fn validated<'de, D, T>(d: D) -> Result<String, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<String, Error = IdError> + Into<String>,
    {
        let s = String::deserialize(d)?;
        T::try_from(s)
            .map(Into::into)
            .map_err(serde::de::Error::custom)
    }

    pub fn container_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        validated::<D, ContainerId>(d)
    }

    pub fn container_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        validated::<D, ContainerName>(d)
    }

    pub fn volume_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        validated::<D, VolumeName>(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values an attacker or a careless user has tried, or would.
    pub(crate) const HOSTILE: &[&str] = &[
        "",
        ".",
        "..",
        "../x",
        "x/../../../../etc",
        "/etc",
        "a/b",
        "a\\b",
        ".hidden",
        "-rf",
        "a b",
        "a\nb",
        "a\0b",
        "é",
        "x:y",
        "*",
    ];

    #[test]
    fn hostile_values_are_refused_by_every_kind() {
        for v in HOSTILE {
            assert!(ContainerId::new(*v).is_err(), "container id {v:?}");
            assert!(ContainerName::new(*v).is_err(), "container name {v:?}");
            assert!(VolumeName::new(*v).is_err(), "volume name {v:?}");
            assert!(SnapshotName::new(*v).is_err(), "snapshot {v:?}");
            assert!(MigrationId::new(*v).is_err(), "migration id {v:?}");
        }
    }

    #[test]
    fn ordinary_values_pass() {
        ContainerId::new("0123456789abcdef0123456789abcdef").unwrap();
        ContainerName::new("web-1.prod_a").unwrap();
        VolumeName::new("data").unwrap();
        SnapshotName::new("20240102T030405.678Z").unwrap();
        MigrationId::new("m0123abcd").unwrap();
    }

    #[test]
    fn lengths_are_bounded() {
        assert!(ContainerName::new("x".repeat(63)).is_ok());
        assert!(ContainerName::new("x".repeat(64)).is_err());
        assert!(ContainerId::new("a".repeat(64)).is_ok());
        assert!(ContainerId::new("a".repeat(65)).is_err());
        // Ids carry no dots: nothing that could read as an extension or a hidden file.
        assert!(ContainerId::new("a.b").is_err());
    }

    #[test]
    fn the_error_names_the_kind_the_value_and_the_rule() {
        let e = VolumeName::new("x/../../y").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("volume name"), "{msg}");
        assert!(msg.contains("x/../../y"), "{msg}");
        assert!(msg.contains("letters, digits"), "{msg}");
        let long = ContainerId::new("a/".repeat(1000)).unwrap_err();
        assert_eq!(long.value.chars().count(), 200);
    }

    #[test]
    #[should_panic(expected = "unvalidated identifier")]
    fn a_path_is_never_built_from_a_bad_string() {
        PathComponent::<VolumeName>::component("../../etc");
    }

    #[test]
    fn deserializing_validates() {
        let ok: ContainerId = serde_json::from_str("\"abc123\"").unwrap();
        assert_eq!(ok, "abc123");
        let err = serde_json::from_str::<ContainerId>("\"x/../../../../tmp\"").unwrap_err();
        assert!(err.to_string().contains("invalid container id"), "{err}");
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"abc123\"");
    }
}
