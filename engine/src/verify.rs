//! Comparing a source tree with a destination directory without moving data: which entries are
//! missing, of another kind, or hold different bytes, and in which blocks.
//!
//! Both sides are hashed block by block with the same chaining values a transfer uses
//! ([`crate::merkle::block_cv`]), so a difference is reported at the granularity a delta transfer
//! would re-send.
//!
//! Metadata is compared as far as a copy by this process would keep it: permission bits of
//! files and directories always; owner, group, setuid and setgid only where this process may
//! give files away ([`crate::owners::may_give_away`], root), since elsewhere a copy leaves them
//! to its user ([`Report::owners_compared`] says which). Owners are compared by number: both
//! trees are on this host. Modification times are not compared.

use std::fs::{self, File};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use sluice_proto::geometry::Geometry;
use sluice_proto::message::EntryKind;

use crate::error::{Error, Result};
use crate::manifest;
use crate::Excludes;

/// How one entry differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// Nothing of that name at the destination.
    Missing(String),
    /// Something of another kind (file, directory, symlink) is there.
    Kind(String),
    /// A symlink points elsewhere, or a hard link is not the same file as the name it links to.
    LinkTarget(String),
    /// A regular file differs: its sizes, and the byte ranges that differ (per block compared,
    /// from its first differing byte to its last).
    Content {
        /// The entry's path.
        path: String,
        /// Size at the source.
        source_size: u64,
        /// Size at the destination.
        dest_size: u64,
        /// Differing byte ranges, adjacent ones merged.
        ranges: Vec<Range<u64>>,
    },
    /// At the destination, inside a directory the source has, but not at the source (what
    /// `--delete` would remove). Part files and journals of interrupted transfers are not
    /// counted: the entry they are for is reported missing or different already.
    Extra(String),
    /// Permission bits differ (`st_mode & 0o7777`, or without setuid and setgid where owners
    /// are not compared).
    Mode {
        /// The entry's path.
        path: String,
        /// The bits at the source.
        source: u32,
        /// The bits at the destination.
        dest: u32,
    },
    /// Owner or group differ: `(uid, gid)` at each end.
    Owner {
        /// The entry's path.
        path: String,
        /// Owner and group at the source.
        source: (u32, u32),
        /// Owner and group at the destination.
        dest: (u32, u32),
    },
    /// Could not be compared: the source or the destination could not be read there.
    Unreadable {
        /// The entry's path (the local path, for what the source's listing could not read).
        path: String,
        /// What failed.
        reason: String,
    },
}

/// The outcome of a comparison.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Entries compared.
    pub entries: u64,
    /// What differs.
    pub differences: Vec<Difference>,
    /// Whether owners, groups, setuid and setgid were compared: only by a process that may
    /// give files away (root), as only its copies keep them.
    pub owners_compared: bool,
}

/// Compares `sources` (as `sluice send` would name them) with what `dest` holds, leaving out
/// on both sides what `excludes` matches below the sources (as `send --exclude` would send
/// none of it, and its `--delete` would leave it alone).
pub fn compare_local(
    sources: &[PathBuf],
    dest: &Path,
    block_size: u32,
    excludes: &Excludes,
) -> Result<Report> {
    let (listing, dest) = match manifest::file_target(sources, dest) {
        Some((dir, name)) => (manifest::listed_as(&sources[0], &name, excludes)?, dir),
        None => (manifest::listed(sources, excludes)?, dest.to_path_buf()),
    };
    let manifest = listing.entries;
    let owners_compared = crate::owners::may_give_away();
    let mut report = Report {
        entries: (manifest.len() + listing.unread.len()) as u64,
        differences: Vec::new(),
        owners_compared,
    };
    let mode_mask = if owners_compared { 0o7777 } else { 0o1777 };
    // What could not be read cannot be said to be the same: listed, not the end of the check.
    for e in listing.unread {
        report.differences.push(Difference::Unreadable {
            path: e.file_path(),
            reason: e.to_string(),
        });
    }
    let names: std::collections::HashSet<&str> =
        manifest.iter().map(|e| e.entry.path.as_str()).collect();
    let mut a = vec![0u8; block_size as usize];
    let mut b = vec![0u8; block_size as usize];
    for e in &manifest {
        let path = e.entry.path.clone();
        let there = dest.join(crate::manifest::local_name(&path));
        let Ok(meta) = fs::symlink_metadata(&there) else {
            report.differences.push(Difference::Missing(path));
            continue;
        };
        let same_kind = match e.entry.kind {
            EntryKind::File | EntryKind::HardLink => meta.is_file(),
            EntryKind::Dir => meta.is_dir(),
            EntryKind::Symlink => meta.file_type().is_symlink(),
        };
        if !same_kind {
            report.differences.push(Difference::Kind(path));
            continue;
        }
        // A hard link's metadata is its file's, compared with the file; a symlink has no mode
        // of its own on Linux, but an owner.
        if matches!(e.entry.kind, EntryKind::File | EntryKind::Dir) {
            let (source, dest) = (e.entry.mode & mode_mask, meta.mode() & mode_mask);
            if source != dest {
                report.differences.push(Difference::Mode {
                    path: path.clone(),
                    source,
                    dest,
                });
            }
        }
        if owners_compared && e.entry.kind != EntryKind::HardLink {
            let o = &e.entry.owner;
            let source = (o.uid.unwrap_or(0), o.gid.unwrap_or(0));
            let dest = (meta.uid(), meta.gid());
            if source != dest {
                report.differences.push(Difference::Owner {
                    path: path.clone(),
                    source,
                    dest,
                });
            }
        }
        match e.entry.kind {
            EntryKind::Symlink => {
                let target = fs::read_link(&there).map_err(Error::file("reading link", &there))?;
                if target.as_os_str() != crate::manifest::local_name(&e.entry.link_target) {
                    report.differences.push(Difference::LinkTarget(path));
                }
            }
            EntryKind::File => {
                let ranges = match differing_ranges(
                    &e.local,
                    &there,
                    e.entry.size,
                    block_size,
                    &mut a,
                    &mut b,
                ) {
                    Ok(ranges) => ranges,
                    Err(e @ Error::File { .. }) => {
                        report.differences.push(Difference::Unreadable {
                            path,
                            reason: e.to_string(),
                        });
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if !ranges.is_empty() || meta.len() != e.entry.size {
                    report.differences.push(Difference::Content {
                        path,
                        source_size: e.entry.size,
                        dest_size: meta.len(),
                        ranges,
                    });
                }
            }
            EntryKind::HardLink => {
                // The same file as the one its target names there, not a copy of it.
                let target = dest.join(crate::manifest::local_name(&e.entry.link_target));
                let same = fs::symlink_metadata(&target)
                    .is_ok_and(|t| t.dev() == meta.dev() && t.ino() == meta.ino());
                if !same {
                    report.differences.push(Difference::LinkTarget(path));
                }
            }
            EntryKind::Dir => extras(
                &e.local,
                &there,
                &path,
                &names,
                excludes,
                &mut report.differences,
            ),
        }
    }
    Ok(report)
}

/// Reports what directory `there` (entry `path` of the manifest, read from `local`) holds that
/// the manifest, whose entries' paths are `names`, does not, and `excludes` does not match.
fn extras(
    local: &Path,
    there: &Path,
    path: &str,
    names: &std::collections::HashSet<&str>,
    excludes: &Excludes,
    differences: &mut Vec<Difference>,
) {
    let listing = match fs::read_dir(there) {
        Ok(l) => l,
        // What the source's directory holds is unknown too, and said already.
        Err(_) if fs::read_dir(local).is_err() => return,
        Err(e) => {
            differences.push(Difference::Unreadable {
                path: path.to_string(),
                reason: format!("listing {}: {e}", there.display()),
            });
            return;
        }
    };
    let mut found: Vec<String> = listing
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name();
            let n = n.as_bytes();
            !(n.starts_with(b".")
                && (n.ends_with(crate::dest::PART_SUFFIX.as_bytes())
                    || n.ends_with(crate::dest::JOURNAL_SUFFIX.as_bytes())))
        })
        .map(|e| {
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            (
                format!("{path}/{}", manifest::wire_name(&e.file_name())),
                is_dir,
            )
        })
        .filter(|(p, is_dir)| !names.contains(p.as_str()) && !excludes.excludes_entry(p, *is_dir))
        .map(|(p, _)| p)
        .collect();
    found.sort();
    differences.extend(found.into_iter().map(Difference::Extra));
}

fn differing_ranges(
    src: &Path,
    dst: &Path,
    size: u64,
    block_size: u32,
    a: &mut [u8],
    b: &mut [u8],
) -> Result<Vec<Range<u64>>> {
    let fa = File::open(src).map_err(Error::file("opening", src))?;
    let fb = File::open(dst).map_err(Error::file("opening", dst))?;
    let dst_len = fb
        .metadata()
        .map_err(Error::file("reading metadata of", dst))?
        .len();
    let geometry = Geometry::new(size, block_size);
    let mut ranges: Vec<Range<u64>> = Vec::new();
    let mut offset = 0;
    while offset < size {
        let len = geometry.len_at(offset) as usize;
        fa.read_exact_at(&mut a[..len], offset)
            .map_err(Error::file("reading", src))?;
        // What the destination holds of the block, byte for byte: the range reported runs from
        // the first byte that differs to the last (or to the block's end past the
        // destination's), as rsync users expect "byte ranges" to mean; not the whole block.
        let held = dst_len.saturating_sub(offset).min(len as u64) as usize;
        fb.read_exact_at(&mut b[..held], offset)
            .map_err(Error::file("reading", dst))?;
        let differs = |i: &usize| *i >= held || a[*i] != b[*i];
        let first = (0..len).find(differs);
        if let Some(first) = first {
            let last = (first..len).rev().find(differs).unwrap_or(first);
            let (start, end) = (offset + first as u64, offset + last as u64 + 1);
            match ranges.last_mut() {
                Some(r) if r.end == start => r.end = end,
                _ => ranges.push(start..end),
            }
        }
        offset += len as u64;
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_missing_entries_and_changed_blocks() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("s");
        fs::create_dir_all(&src).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(src.join("f"), &data).unwrap();
        fs::write(src.join("gone"), b"x").unwrap();
        let dest = d.path().join("d");
        fs::create_dir_all(dest.join("s")).unwrap();
        let mut changed = data.clone();
        changed[5000] ^= 1;
        fs::write(dest.join("s/f"), &changed).unwrap();
        fs::write(dest.join("s/new"), b"y").unwrap();
        fs::write(dest.join("s/.gone.sluice-part"), b"").unwrap();
        fs::write(dest.join("beside"), b"not the source's").unwrap();
        let r = compare_local(&[src], &dest, 1024, &Excludes::default()).unwrap();
        assert_eq!(r.entries, 3);
        assert_eq!(
            r.differences,
            [
                Difference::Extra("s/new".into()),
                Difference::Content {
                    path: "s/f".into(),
                    source_size: 10_000,
                    dest_size: 10_000,
                    ranges: std::iter::once(5000..5001).collect(),
                },
                Difference::Missing("s/gone".into()),
            ]
        );
    }
}
