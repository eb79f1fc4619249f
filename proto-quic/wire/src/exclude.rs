//! Exclude patterns (`--exclude`, `--exclude-from`): which entries below a transferred
//! directory a transfer leaves out, and which entries of the destination `--delete` leaves
//! alone.
//!
//! A pattern means what an rsync exclude pattern means, as far as `globset` matches it:
//!
//! - without a `/` it matches a name at any depth: `*.o`, `target`, `.git`;
//! - with a `/` inside it, it is matched against the path below the transferred directory
//!   (`data` in `sluice send data …`), ending at any depth: `docs/*.md` matches `docs/a.md` and
//!   `x/docs/a.md`; a leading `/` anchors it at the transferred directory: `/docs/*.md` matches
//!   only the first;
//! - a trailing `/` matches directories only: `build/`;
//! - `*` matches within one path component, `?` one character but `/`, `[...]` one of a class
//!   (`[!...]` none of it), `\` escapes the next character; `**` as a whole component matches
//!   any number of components (`a/**/b`, `**/x`, `x/**`). Unlike rsync, `{a,b}` means either
//!   (globset's alternatives), and `**` inside a component (`a**`) stays within it.
//!
//! An excluded directory is not descended into. Sources named on the command line are always
//! sent: patterns judge what is below them. Paths are matched as they cross the wire
//! ([`crate::path::name_from_bytes`]), so a pattern names a name that is not UTF-8 by the
//! characters that stand for its bytes.
//!
//! The sender leaves excluded entries out of its manifest. With `HELLO_DELETE` it also sends
//! its patterns ([`crate::message::Message::Exclude`], before the first entry) so that the
//! receiver's deletion leaves excluded entries alone, as `rsync --delete` does. Patterns only
//! ever keep: an entry a pattern matches is not deleted, one it does not match is judged as
//! without patterns, so no pattern can make a receiver remove anything it would not have
//! removed anyway. From a peer they are bounded ([`MAX_PATTERNS`], [`MAX_PATTERN_LEN`],
//! [`MAX_PATTERN_BYTES`]) and compiled like the sender's own.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// The most patterns one transfer carries. rsync users' exclude files run to tens or hundreds of
/// lines; the bound keeps what a receiver compiles for a hostile sender small.
pub const MAX_PATTERNS: usize = 1024;
/// The longest pattern: a path's limit (`PATH_MAX`, and the wire's longest string).
pub const MAX_PATTERN_LEN: usize = crate::codec::MAX_STRING_LEN;
/// The most bytes of all patterns together: each compiles into a regular expression, and 64 KiB
/// of the costliest patterns tried (sixteen of 4 KiB, each all `*a`, `?`, `[!a]` or `**/x`)
/// compiled in 0.03–0.08 s, where a real exclude file's take well under a millisecond.
pub const MAX_PATTERN_BYTES: usize = 64 << 10;

/// Why a list of patterns was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExcludeError {
    /// One pattern cannot be read.
    #[error("exclude pattern {:?}: {why}", shown(pattern))]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        why: String,
    },
    /// More than [`MAX_PATTERNS`] patterns.
    #[error("more than {MAX_PATTERNS} exclude patterns")]
    TooMany,
    /// The patterns hold more than [`MAX_PATTERN_BYTES`] bytes together.
    #[error("exclude patterns of more than {MAX_PATTERN_BYTES} bytes in all")]
    TooLong,
}

/// A pattern as an error shows it: its first 100 characters (one from a peer may be 4 KiB).
fn shown(pattern: &str) -> String {
    match pattern.char_indices().nth(100) {
        Some((cut, _)) => format!("{}…", &pattern[..cut]),
        None => pattern.to_owned(),
    }
}

/// A compiled list of exclude patterns; the default excludes nothing.
#[derive(Debug, Clone, Default)]
pub struct Excludes {
    patterns: Vec<String>,
    /// Patterns without a trailing `/`: any kind of entry.
    any: GlobSet,
    /// Patterns with a trailing `/`: directories only.
    dirs: GlobSet,
}

/// One pattern as a glob over the path below the transferred directory, and whether it
/// matches directories only.
fn parse(pattern: &str) -> Result<(globset::Glob, bool), ExcludeError> {
    let refuse = |why: String| ExcludeError::Pattern {
        pattern: pattern.to_owned(),
        why,
    };
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(refuse(format!("longer than {MAX_PATTERN_LEN} bytes")));
    }
    let (rest, dir_only) = match pattern.strip_suffix('/') {
        Some(rest) => (rest, true),
        None => (pattern, false),
    };
    let (rest, anchored) = match rest.strip_prefix('/') {
        Some(rest) => (rest, true),
        None => (rest, false),
    };
    if rest.is_empty() {
        return Err(refuse("it names nothing".into()));
    }
    // Floating: the path may have any components before it. `**/` already says so (and
    // globset reads `**/**` as something else).
    let glob = if anchored || rest == "**" || rest.starts_with("**/") {
        rest.to_owned()
    } else {
        format!("**/{rest}")
    };
    let glob = GlobBuilder::new(&glob)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| refuse(e.kind().to_string()))?;
    Ok((glob, dir_only))
}

impl Excludes {
    /// Compiles `patterns`, refusing the first that cannot be read, more than
    /// [`MAX_PATTERNS`] or more than [`MAX_PATTERN_BYTES`] in all.
    pub fn new<S: AsRef<str>>(patterns: impl IntoIterator<Item = S>) -> Result<Self, ExcludeError> {
        let mut any = GlobSetBuilder::new();
        let mut dirs = GlobSetBuilder::new();
        let mut kept = Vec::new();
        let mut bytes = 0;
        for p in patterns {
            let p = p.as_ref();
            Self::check_bounds(kept.len(), bytes, p)?;
            let (glob, dir_only) = parse(p)?;
            if dir_only {
                dirs.add(glob);
            } else {
                any.add(glob);
            }
            bytes += p.len();
            kept.push(p.to_owned());
        }
        let compiled = |set: GlobSetBuilder| {
            set.build().map_err(|e| ExcludeError::Pattern {
                pattern: e.glob().unwrap_or_default().to_owned(),
                why: e.kind().to_string(),
            })
        };
        Ok(Self {
            any: compiled(any)?,
            dirs: compiled(dirs)?,
            patterns: kept,
        })
    }

    /// Whether a pattern `next` may follow `count` patterns of `bytes` bytes in all, and can
    /// be read: what a receiver checks of each pattern as it arrives.
    pub fn check_next(count: usize, bytes: usize, next: &str) -> Result<(), ExcludeError> {
        Self::check_bounds(count, bytes, next)?;
        parse(next).map(|_| ())
    }

    fn check_bounds(count: usize, bytes: usize, next: &str) -> Result<(), ExcludeError> {
        if count >= MAX_PATTERNS {
            return Err(ExcludeError::TooMany);
        }
        if bytes.saturating_add(next.len()) > MAX_PATTERN_BYTES {
            return Err(ExcludeError::TooLong);
        }
        Ok(())
    }

    /// The patterns, as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether the entry at `path` below a transferred directory (`sub/x.o` for
    /// `data/sub/x.o` when `data` is sent), a directory if `is_dir`, is excluded.
    pub fn excludes(&self, path: &str, is_dir: bool) -> bool {
        !self.is_empty() && (self.any.is_match(path) || (is_dir && self.dirs.is_match(path)))
    }

    /// Whether the entry a manifest names `path` (its first component the source's name at the
    /// top of the destination) is excluded. A source itself never is.
    pub fn excludes_entry(&self, path: &str, is_dir: bool) -> bool {
        path.split_once('/')
            .is_some_and(|(_, below)| self.excludes(below, is_dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which of `paths` (a trailing `/` marks a directory) `patterns` exclude.
    fn excluded<'a>(patterns: &[&str], paths: &[&'a str]) -> Vec<&'a str> {
        let ex = Excludes::new(patterns).unwrap();
        paths
            .iter()
            .copied()
            .filter(|p| match p.strip_suffix('/') {
                Some(dir) => ex.excludes(dir, true),
                None => ex.excludes(p, false),
            })
            .collect()
    }

    const TREE: &[&str] = &[
        "a.o",
        "src/",
        "src/main.c",
        "src/main.o",
        "src/deep/er/x.o",
        "build/",
        "build/out",
        "src/build/",
        "src/build",
        "docs/",
        "docs/a.md",
        "docs/sub/b.md",
        "x/docs/a.md",
        ".git/",
        "ab",
        "a/b",
        "abc",
        "a[1]",
    ];

    #[test]
    fn a_name_matches_at_any_depth() {
        assert_eq!(
            excluded(&["*.o"], TREE),
            ["a.o", "src/main.o", "src/deep/er/x.o"]
        );
        assert_eq!(
            excluded(&["build"], TREE),
            ["build/", "src/build/", "src/build"]
        );
        assert_eq!(excluded(&[".git"], TREE), [".git/"]);
        // `*` and `?` stay within a component, `[...]` is a class.
        assert_eq!(excluded(&["a?"], TREE), ["ab"]);
        assert_eq!(
            excluded(&["a*"], TREE),
            ["a.o", "docs/a.md", "x/docs/a.md", "ab", "abc", "a[1]"]
        );
        assert_eq!(excluded(&["a[bc]"], TREE), ["ab"]);
        assert_eq!(excluded(&["a[!b]c"], TREE), Vec::<&str>::new());
        assert_eq!(excluded(&["[!a]b[c]"], TREE), Vec::<&str>::new());
        assert_eq!(excluded(&[r"a\[1\]"], TREE), ["a[1]"]);
    }

    #[test]
    fn a_trailing_slash_matches_directories_only() {
        assert_eq!(excluded(&["build/"], TREE), ["build/", "src/build/"]);
        assert_eq!(excluded(&["main.c/"], TREE), Vec::<&str>::new());
    }

    #[test]
    fn a_slash_matches_the_path_and_a_leading_one_anchors_it() {
        assert_eq!(excluded(&["docs/*.md"], TREE), ["docs/a.md", "x/docs/a.md"]);
        assert_eq!(excluded(&["/docs/*.md"], TREE), ["docs/a.md"]);
        assert_eq!(excluded(&["/build"], TREE), ["build/"]);
        assert_eq!(excluded(&["/src/build/"], TREE), ["src/build/"]);
        assert_eq!(excluded(&["a/b"], TREE), ["a/b"]);
        // `*` does not cross a `/`.
        assert_eq!(excluded(&["/src/*.o"], TREE), ["src/main.o"]);
        assert_eq!(excluded(&["/*.o"], TREE), ["a.o"]);
    }

    #[test]
    fn double_stars_cross_components() {
        assert_eq!(
            excluded(&["/src/**/*.o"], TREE),
            ["src/main.o", "src/deep/er/x.o"]
        );
        assert_eq!(
            excluded(&["docs/**"], TREE),
            ["docs/a.md", "docs/sub/b.md", "x/docs/a.md"]
        );
        assert_eq!(
            excluded(&["/docs/**"], TREE),
            ["docs/a.md", "docs/sub/b.md"]
        );
        assert_eq!(excluded(&["**/b.md"], TREE), ["docs/sub/b.md"]);
        assert_eq!(excluded(&["**"], TREE).len(), TREE.len());
        assert_eq!(excluded(&["/**"], TREE).len(), TREE.len());
    }

    #[test]
    fn several_patterns_exclude_what_any_excludes() {
        assert_eq!(
            excluded(&["*.md", "build/", "/a.o"], TREE),
            [
                "a.o",
                "build/",
                "src/build/",
                "docs/a.md",
                "docs/sub/b.md",
                "x/docs/a.md"
            ]
        );
        let none = Excludes::default();
        assert!(none.is_empty() && !none.excludes("anything", true));
    }

    #[test]
    fn a_manifest_path_is_judged_below_its_source() {
        let ex = Excludes::new(["/data", "*.o"]).unwrap();
        assert!(!ex.excludes_entry("data", true), "a source itself");
        assert!(!ex.excludes_entry("x.o", false), "a source itself");
        assert!(ex.excludes_entry("top/data", true));
        assert!(!ex.excludes_entry("top/sub/data", true));
        assert!(ex.excludes_entry("top/sub/y.o", false));
    }

    #[test]
    fn unreadable_patterns_are_refused_by_name() {
        for (bad, why) in [
            ("src/[ab", "unclosed character class"),
            ("", "names nothing"),
            ("/", "names nothing"),
            ("a{b", "unclosed alternate group"),
            ("a\\", "dangling"),
        ] {
            let err = Excludes::new(["ok", bad]).unwrap_err();
            assert!(
                matches!(&err, ExcludeError::Pattern { pattern, .. } if pattern == bad),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn patterns_are_bounded_in_count_and_bytes() {
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("p{i}")).collect();
        assert_eq!(Excludes::new(&many).unwrap_err(), ExcludeError::TooMany);
        assert!(Excludes::new(&many[..MAX_PATTERNS]).is_ok());
        let long = "x".repeat(MAX_PATTERN_LEN);
        let err = Excludes::new([format!("{long}y")]).unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
        let big = vec![long; MAX_PATTERN_BYTES / MAX_PATTERN_LEN + 1];
        assert_eq!(Excludes::new(&big).unwrap_err(), ExcludeError::TooLong);
        assert!(Excludes::check_next(3, MAX_PATTERN_BYTES - 2, "ab").is_ok());
        assert_eq!(
            Excludes::check_next(3, MAX_PATTERN_BYTES - 2, "abc"),
            Err(ExcludeError::TooLong)
        );
    }
}
