//! Validation of the paths a manifest names.
//!
//! A path in a manifest comes from the peer and is hostile until [`validate`] accepts it. An
//! accepted path is relative, `/`-separated, made only of normal components (no empty, `.` or
//! `..` component), free of NUL bytes, and at most [`crate::codec::MAX_STRING_LEN`] bytes. Joined
//! under a destination directory it can only name something inside that directory — provided no
//! component on the way is a symlink, which the receiver checks as it creates directories.
//! Names of the receiver's own files ([`is_reserved`]) are refused too.

use crate::codec::MAX_STRING_LEN;

/// Suffix of the receiver's in-progress files: `.NAME.sluice-part` beside `NAME`.
pub const PART_SUFFIX: &str = ".sluice-part";
/// Suffix of the resume journal beside a part file: `.NAME.sluice-journal`.
pub const JOURNAL_SUFFIX: &str = ".sluice-journal";

/// Whether `name` (one path component) has the form of the receiver's own files beside a file
/// `NAME`: `.NAME.sluice-part` or `.NAME.sluice-journal`, in any case (a case-insensitive
/// filesystem would take `.x.SLUICE-PART` for the part file of `x`). A manifest entry of that
/// name would collide with them — e.g. be renamed over the part file of `NAME` while `NAME` is
/// being written into it — so such names are refused.
pub fn is_reserved(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [PART_SUFFIX, JOURNAL_SUFFIX].iter().any(|suffix| {
        name.strip_suffix(suffix)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|inner| !inner.is_empty())
    })
}

/// Why a manifest path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path was empty.
    #[error("empty path")]
    Empty,
    /// The path was absolute.
    #[error("absolute path {0:?}: only paths relative to the destination are accepted")]
    Absolute(String),
    /// A component was `..`.
    #[error("path {0:?} climbs out of the destination with '..'")]
    ParentComponent(String),
    /// A component was empty or `.`.
    #[error("path {0:?} has an empty or '.' component")]
    OddComponent(String),
    /// The path held a NUL byte or was too long.
    #[error("path {0:?} has a NUL byte or is longer than {MAX_STRING_LEN} bytes")]
    Malformed(String),
    /// A component had the form of the receiver's partial files ([`is_reserved`]).
    #[error("path {0:?} has a name reserved for Sluice's partial files (.NAME{PART_SUFFIX}, .NAME{JOURNAL_SUFFIX})")]
    Reserved(String),
}

/// Checks a manifest path and returns its components.
pub fn validate(path: &str) -> Result<Vec<&str>, PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_STRING_LEN || path.contains('\0') {
        return Err(PathError::Malformed(path.to_owned()));
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute(path.to_owned()));
    }
    let parts: Vec<&str> = path.split('/').collect();
    for part in &parts {
        match *part {
            ".." => return Err(PathError::ParentComponent(path.to_owned())),
            "" | "." => return Err(PathError::OddComponent(path.to_owned())),
            name if is_reserved(name) => return Err(PathError::Reserved(path.to_owned())),
            _ => {}
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_relative_paths() {
        assert_eq!(validate("a").unwrap(), ["a"]);
        assert_eq!(validate("dir/sub/f.txt").unwrap(), ["dir", "sub", "f.txt"]);
        assert_eq!(validate("..hidden/x..y").unwrap(), ["..hidden", "x..y"]);
    }

    #[test]
    fn refuses_the_names_of_partial_files() {
        for bad in [
            ".x.sluice-part",
            "d/.x.sluice-journal",
            ".x.sluice-part/y",
            "..sluice-part.sluice-part",
            ".x.SLUICE-Part",
        ] {
            assert!(
                matches!(validate(bad), Err(PathError::Reserved(_))),
                "{bad}"
            );
        }
        for good in [
            ".sluice-part",
            "x.sluice-part",
            "..sluice-journal",
            ".x.sluice-partial",
        ] {
            assert!(validate(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn refuses_every_escape() {
        assert!(matches!(validate(""), Err(PathError::Empty)));
        assert!(matches!(validate("/etc/x"), Err(PathError::Absolute(_))));
        assert!(matches!(
            validate("../x"),
            Err(PathError::ParentComponent(_))
        ));
        assert!(matches!(
            validate("a/../../x"),
            Err(PathError::ParentComponent(_))
        ));
        assert!(matches!(
            validate("a/.."),
            Err(PathError::ParentComponent(_))
        ));
        assert!(matches!(validate("a//b"), Err(PathError::OddComponent(_))));
        assert!(matches!(validate("a/./b"), Err(PathError::OddComponent(_))));
        assert!(matches!(validate("a/"), Err(PathError::OddComponent(_))));
        assert!(matches!(validate("a\0b"), Err(PathError::Malformed(_))));
        assert!(matches!(
            validate(&"a".repeat(5000)),
            Err(PathError::Malformed(_))
        ));
    }
}
