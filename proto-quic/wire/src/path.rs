//! Validation of the paths a manifest names.
//!
//! A path in a manifest comes from the peer and is hostile until [`validate`] accepts it. An
//! accepted path is relative, `/`-separated, made only of normal components (no empty, `.` or
//! `..` component), free of NUL bytes, and at most [`crate::codec::MAX_STRING_LEN`] bytes. Joined
//! under a destination directory it can only name something inside that directory — provided no
//! component on the way is a symlink, which the receiver checks as it creates directories.
//! Names of the receiver's own files ([`is_reserved`]) are refused too.
//!
//! A Unix name is any bytes but `/` and NUL, while a path on the wire is UTF-8 text. Names that
//! are not valid UTF-8 (Latin-1 from an old system, say) cross as text through
//! [`name_from_bytes`] and become their own bytes again at the receiver through
//! [`name_to_bytes`]: see there.

use std::borrow::Cow;

use crate::codec::MAX_STRING_LEN;

/// The characters U+F780..=U+F7FF (Unicode's private use area) stand on the wire for the single
/// bytes 0x80..=0xFF of a name: a byte that is not part of valid UTF-8, or a byte of one of
/// these characters themselves where a name holds one.
const BYTE_BASE: u32 = 0xF700;

fn stands_for_a_byte(c: char) -> bool {
    (BYTE_BASE + 0x80..=BYTE_BASE + 0xFF).contains(&(c as u32))
}

/// The wire text of a name (or path, or link target) of bytes `raw`: valid UTF-8 as it is,
/// except that each byte of invalid UTF-8, and each byte of a character U+F780..=U+F7FF, becomes
/// the character U+F700 + byte. [`name_to_bytes`] gives `raw` back for every input, so any Unix
/// name arrives as it was; the bytes made this way are all 0x80 or more, never `/`, `.` or NUL,
/// so [`validate`] judges the text as it would the bytes. This is MirBSD's OPTU-8 idea; rsync
/// and scp send bytes, but Sluice's manifest is text so that logs and `--json` can show it.
pub fn name_from_bytes(raw: &[u8]) -> Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(raw) {
        if !s.chars().any(stands_for_a_byte) {
            return Cow::Borrowed(s);
        }
    }
    let mut out = String::with_capacity(raw.len() + 8);
    let escape = |bytes: &[u8], out: &mut String| {
        for &b in bytes {
            out.push(char::from_u32(BYTE_BASE + u32::from(b)).unwrap_or('?'));
        }
    };
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            if stands_for_a_byte(c) {
                escape(c.encode_utf8(&mut [0; 4]).as_bytes(), &mut out);
            } else {
                out.push(c);
            }
        }
        escape(chunk.invalid(), &mut out);
    }
    Cow::Owned(out)
}

/// The bytes a wire name stands for: the inverse of [`name_from_bytes`].
pub fn name_to_bytes(text: &str) -> Cow<'_, [u8]> {
    if !text.chars().any(stands_for_a_byte) {
        return Cow::Borrowed(text.as_bytes());
    }
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        if stands_for_a_byte(c) {
            out.push((c as u32 - BYTE_BASE) as u8);
        } else {
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        }
    }
    Cow::Owned(out)
}

/// `path` (wire text) for a message: quoted, and cut to its first and last 40 characters when longer, so
/// that a path of thousands of bytes does not fill the screen.
fn shown(path: &str) -> String {
    // The bytes a name stands for, as a terminal shows them, not the wire's private-use
    // characters.
    let raw = name_to_bytes(path);
    let path = String::from_utf8_lossy(&raw);
    let chars = path.chars().count();
    if chars <= 100 {
        return format!("{path:?}");
    }
    let head: String = path.chars().take(40).collect();
    let tail: String = path.chars().skip(chars - 40).collect();
    format!("{:?}", format!("{head}…{tail}"))
}

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
    /// The path held a NUL byte.
    #[error("path {} has a NUL byte", shown(.0))]
    Malformed(String),
    /// The path was longer on the wire than [`MAX_STRING_LEN`] bytes. A name that is not
    /// UTF-8 takes three bytes on the wire for each byte of it ([`name_from_bytes`]), so a
    /// path of bytes from, say, Latin-1 reaches the bound at about a third of it.
    #[error(
        "path {} is {} bytes as sent, over the limit of {MAX_STRING_LEN}{}",
        shown(.0),
        .0.len(),
        if .0.len() > name_to_bytes(.0).len() {
            " (each byte of a name that is not UTF-8 takes three)"
        } else {
            ""
        }
    )]
    TooLong(String),
    /// A component had the form of the receiver's partial files ([`is_reserved`]).
    #[error("path {0:?} has a name reserved for Sluice's partial files (.NAME{PART_SUFFIX}, .NAME{JOURNAL_SUFFIX})")]
    Reserved(String),
}

/// Checks a manifest path and returns its components.
pub fn validate(path: &str) -> Result<Vec<&str>, PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_STRING_LEN {
        return Err(PathError::TooLong(path.to_owned()));
    }
    if path.contains('\0') {
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
    fn any_bytes_cross_as_text_and_come_back() {
        let cases: [&[u8]; 8] = [
            b"plain.txt",
            "caf\u{e9}".as_bytes(),
            b"caf\xe9",
            b"\xff\xfe/\x80",
            b"cut \xe2\x82",
            "\u{f780}\u{f7ff}\u{f77f}".as_bytes(),
            b"\xef\x9e\x80",
            b"",
        ];
        for raw in cases {
            let text = name_from_bytes(raw);
            assert_eq!(&*name_to_bytes(&text), raw, "{text:?}");
        }
        assert!(matches!(
            name_from_bytes(b"d/f.txt"),
            Cow::Borrowed("d/f.txt")
        ));
        assert_eq!(name_from_bytes(b"a\xe9"), "a\u{f7e9}");
        // Two names that differ only in their invalid bytes stay two names.
        assert_ne!(name_from_bytes(b"\xe9"), name_from_bytes(b"\xe8"));
        // A real U+F7E9 and the invalid byte 0xE9 stay apart.
        assert_ne!(
            name_from_bytes("\u{f7e9}".as_bytes()),
            name_from_bytes(b"\xe9")
        );
        // Escaped bytes are never separators or dots.
        assert!(validate(&name_from_bytes(b"\xff/\x2e\xff")).is_ok());
    }

    #[test]
    fn exhaustively_over_short_byte_strings() {
        let mut seen = std::collections::HashSet::new();
        for a in 0..=255u8 {
            for b in [
                0x00, 0x2f, 0x41, 0x80, 0x9e, 0xbf, 0xc3, 0xe2, 0xef, 0xf0, 0xff,
            ] {
                for c in [0x80, 0x9f, 0xbf, 0x41] {
                    let raw = [a, b, c];
                    let text = name_from_bytes(&raw).into_owned();
                    assert_eq!(&*name_to_bytes(&text), raw);
                    assert!(seen.insert(text));
                }
            }
        }
    }

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
            Err(PathError::TooLong(_))
        ));
    }

    #[test]
    fn a_long_path_is_named_short_with_its_length() {
        let latin1 = name_from_bytes(&[0xe9; 1500]).into_owned();
        let e = validate(&latin1).unwrap_err().to_string();
        assert!(e.contains("4500 bytes as sent"), "{e}");
        assert!(e.contains("not UTF-8 takes three"), "{e}");
        assert!(e.len() < 400, "{} bytes: {e}", e.len());
        let ascii = validate(&"a".repeat(5000)).unwrap_err().to_string();
        assert!(!ascii.contains("three"), "{ascii}");
    }
}
