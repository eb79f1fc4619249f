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

/// What [`remove_tree`] did: the entries it removed, in the order they went, and those it
/// could not remove, with why.
#[derive(Debug, Default)]
pub(super) struct Removal {
    /// Each entry removed, as the manifest would name it, and whether it was a directory. A
    /// directory removed with all it held stands for its contents: they are not listed.
    pub(super) removed: Vec<(String, bool)>,
    /// Each entry that could not be removed.
    pub(super) failed: Vec<(PathBuf, io::Error)>,
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
        removal.failed.push((path.to_path_buf(), e));
        false
    };
    if !is_dir {
        return match fs::remove_file(path) {
            Ok(()) => {
                removal.removed.push((rel, false));
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
    let listed = removal.removed.len();
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
            removal.removed.push((rel, true));
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
