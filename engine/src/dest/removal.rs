//! `--delete`'s removal of an entry the destination holds and the transfer does not (or holds
//! as another type): a walk, depth first, that keeps what the sender's exclude patterns match
//! and the directories holding it, goes on past what it cannot remove, and reports every entry
//! it removed ([`Removal`]); the caller turns that into `Deleted` events and the error that
//! names what stayed. Never follows a symlink.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sluice_proto::exclude::Excludes;

use crate::manifest::wire_name;

/// Most removed entries [`Removal::removed`] lists at once; past it they are counted
/// ([`Removal::unlisted`]), so memory stays bounded whatever the size of a directory whose
/// removal fails part-way.
const MAX_LISTED: usize = 100_000;

/// What [`remove_tree`] did: the entries it removed, in the order they went, and the first it
/// could not remove, with why, and how many could not.
#[derive(Debug)]
pub(super) struct Removal {
    /// Each entry removed, as the manifest would name it, and whether it was a directory. A
    /// directory removed with all it held stands for its contents: they are not listed.
    pub(super) removed: Vec<(String, bool)>,
    /// Entries removed past `limit` listed ones, counted but not named.
    pub(super) unlisted: u64,
    /// The first entry that could not be removed (each is named in a warning).
    pub(super) first_failure: Option<(PathBuf, io::Error)>,
    /// How many entries could not be removed.
    pub(super) failures: u64,
    /// Most entries `removed` holds ([`MAX_LISTED`]).
    limit: usize,
}

impl Default for Removal {
    fn default() -> Self {
        Self {
            removed: Vec::new(),
            unlisted: 0,
            first_failure: None,
            failures: 0,
            limit: MAX_LISTED,
        }
    }
}

impl Removal {
    fn note(&mut self, rel: String, dir: bool) {
        if self.removed.len() < self.limit {
            self.removed.push((rel, dir));
        } else {
            self.unlisted += 1;
        }
    }
}

/// Removes `path` (`rel` as the manifest would name it; a directory if `is_dir`) for
/// `--delete`, with what it holds, and returns whether it is gone. Entries `excludes` matches
/// are kept, and the directories holding them with them (rsync keeps them too: "cannot delete
/// non-empty directory"); what cannot be removed (a directory its user may not write, a file
/// in one) is named in a warning and in `removal.failed`, and the walk goes on with the rest,
/// as rsync deletes what it can. Every entry removed is in `removal.removed`: a directory that
/// went whole is listed once, and its contents are listed one by one only where it could not
/// go, so nothing is removed unreported (`remove_dir_all` stopped at its first failure with
/// what it had removed unsaid, and took excluded entries with the rest). Never follows a
/// symlink. What a directory held is kept in `removal.removed` until it is known whether the
/// directory goes whole, so that list grows with the entries of the directory being removed.
pub(super) fn remove_tree(
    path: &Path,
    rel: String,
    is_dir: bool,
    excludes: &Excludes,
    removal: &mut Removal,
) -> bool {
    let fail = |e: io::Error, removal: &mut Removal| {
        tracing::warn!("not deleted: {}: {e}", path.display());
        removal.failures += 1;
        if removal.first_failure.is_none() {
            removal.first_failure = Some((path.to_path_buf(), e));
        }
        false
    };
    if !is_dir {
        return match fs::remove_file(path) {
            Ok(()) => {
                removal.note(rel, false);
                true
            }
            // Gone already (removed by another program meanwhile): nothing to report.
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => fail(e, removal),
        };
    }
    let children = match fs::read_dir(path) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
        Err(e) => return fail(e, removal),
    };
    let (listed, unlisted) = (removal.removed.len(), removal.unlisted);
    let mut emptied = true;
    for child in children {
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                fail(e, removal);
                emptied = false;
                break;
            }
        };
        let child_rel = format!("{rel}/{}", wire_name(&child.file_name()));
        let child_dir = child.file_type().is_ok_and(|t| t.is_dir());
        if excludes.excludes_entry(&child_rel, child_dir) {
            emptied = false;
            continue;
        }
        emptied &= remove_tree(&child.path(), child_rel, child_dir, excludes, removal);
    }
    if !emptied {
        return false;
    }
    match fs::remove_dir(path) {
        Ok(()) => {
            // Named once, for all it held.
            removal.removed.truncate(listed);
            removal.unlisted = unlisted;
            removal.note(rel, true);
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => fail(e, removal),
    }
}

/// The first entry at or below directory `path` (`rel` as the manifest would name it) that
/// `excludes` matches, as the manifest would name it; `None` if there is none (or none that can
/// be read: removing then names what fails).
pub(super) fn first_excluded(path: &Path, rel: &str, excludes: &Excludes) -> Option<String> {
    if excludes.is_empty() {
        return None;
    }
    if excludes.excludes_entry(rel, true) {
        return Some(rel.to_owned());
    }
    for child in fs::read_dir(path).ok()?.flatten() {
        let child_rel = format!("{rel}/{}", wire_name(&child.file_name()));
        let is_dir = child.file_type().is_ok_and(|t| t.is_dir());
        if excludes.excludes_entry(&child_rel, is_dir) {
            return Some(child_rel);
        }
        if is_dir {
            if let Some(kept) = first_excluded(&child.path(), &child_rel, excludes) {
                return Some(kept);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past its limit a removal counts what it removed instead of naming it; a directory that
    /// goes whole is still named once, for all it held.
    #[test]
    fn what_a_removal_lists_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let top = d.path().join("top");
        fs::create_dir_all(top.join("full")).unwrap();
        for i in 0..10 {
            fs::write(top.join(format!("full/f{i}")), b"x").unwrap();
        }
        let excludes = Excludes::new(["keep"]).unwrap();
        fs::write(top.join("keep"), b"kept").unwrap();
        let mut removal = Removal {
            limit: 4,
            ..Removal::default()
        };
        assert!(!remove_tree(
            &top,
            "top".into(),
            true,
            &excludes,
            &mut removal
        ));
        // `full` went whole and is named once; `top` stays for what it keeps.
        assert_eq!(removal.removed, [("top/full".to_string(), true)]);
        assert_eq!(removal.unlisted, 0);
        assert!(top.join("keep").exists() && !top.join("full").exists());

        fs::create_dir(top.join("many")).unwrap();
        for i in 0..10 {
            fs::write(top.join(format!("many/f{i}")), b"x").unwrap();
        }
        fs::write(top.join("many/keep"), b"kept").unwrap();
        let mut removal = Removal {
            limit: 4,
            ..Removal::default()
        };
        assert!(!remove_tree(
            &top.join("many"),
            "top/many".into(),
            true,
            &excludes,
            &mut removal
        ));
        assert_eq!(removal.removed.len(), 4);
        assert_eq!(removal.unlisted, 6);
        assert_eq!(removal.failures, 0);
    }
}
