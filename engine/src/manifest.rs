//! Turning the sender's command-line sources into a manifest.
//!
//! Each source contributes its own name at the top of the destination, as `scp -r` and `rsync`
//! (without a trailing slash) do: sending `data/` and `notes.txt` creates `DEST/data/…` and
//! `DEST/notes.txt`. Directories are walked depth first in name order, a directory before its
//! contents; symlinks are sent as links and never followed; sockets, FIFOs and devices are
//! skipped with a warning. Ids are assigned in walk order. Entries below a source that an
//! exclude pattern matches ([`Excludes`]) are left out, an excluded directory with all it holds
//! (it is not even listed); the sources themselves are always listed.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sluice_proto::codec::MAX_STRING_LEN;
use sluice_proto::exclude::Excludes;
use sluice_proto::message::{Entry, EntryKind, Owner, SourceVersion};

use crate::error::{Error, Result};

/// The manifest's text for a local name, path or link target: any bytes, UTF-8 or not
/// ([`sluice_proto::path::name_from_bytes`]).
pub fn wire_name(local: &OsStr) -> String {
    sluice_proto::path::name_from_bytes(local.as_bytes()).into_owned()
}

/// The local name, path or link target a manifest's text stands for: the inverse of
/// [`wire_name`].
pub fn local_name(wire: &str) -> OsString {
    OsString::from_vec(sluice_proto::path::name_to_bytes(wire).into_owned())
}

/// A manifest entry and where its bytes come from on the sender.
#[derive(Debug, Clone)]
pub struct SourceEntry {
    /// What is sent.
    pub entry: Entry,
    /// The local path it is read from.
    pub local: PathBuf,
}

/// Where `copy SRC DEST` and `verify SRC DEST` put one source that is not a directory, as `cp`
/// and `rsync` do: onto `DEST` when it is an existing file (updated by delta and replaced once
/// verified), and as `DEST` when nothing has that name and it does not end in `/` (`cp a.bin
/// b.bin`; its directory is made if missing). Returns `DEST`'s directory and name; `None` when
/// `DEST` is the directory to copy into (an existing directory, several sources, a directory
/// source, or a name ending in `/`).
pub fn file_target(sources: &[PathBuf], dest: &Path) -> Option<(PathBuf, String)> {
    let [src] = sources else { return None };
    if fs::symlink_metadata(src).ok()?.is_dir() {
        return None;
    }
    match fs::metadata(dest) {
        Ok(m) if m.is_file() => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A dangling symlink is not nothing: its target is left to the directory rule.
            if fs::symlink_metadata(dest).is_ok() || dest.as_os_str().as_bytes().ends_with(b"/") {
                return None;
            }
        }
        _ => return None,
    }
    let name = wire_name(dest.file_name()?);
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Some((parent, name))
}

/// The manifest of one source sent under another top-level name (see [`file_target`]).
pub fn build_as(src: &Path, name: &str) -> Result<Vec<SourceEntry>> {
    strict(listed_as(src, name, &Excludes::default())?)
}

/// Walks `sources` and returns the manifest, ids in order.
pub fn build(sources: &[PathBuf]) -> Result<Vec<SourceEntry>> {
    strict(listed(sources, &Excludes::default())?)
}

/// A manifest, and what below the sources could not be read into it.
#[derive(Debug, Default)]
pub struct Listing {
    /// The entries, ids in order.
    pub entries: Vec<SourceEntry>,
    /// Entries below a source that could not be listed or read (a directory without read
    /// permission, a vanished file, a path too long for the system): left out, each an error
    /// naming it, as `cp -a` and `rsync` go on past them. The sources themselves are never here.
    pub unread: Vec<Error>,
}

/// Like [`build_as`], going on past what cannot be read below `src`, and leaving out what
/// `excludes` matches below it.
pub fn listed_as(src: &Path, name: &str, excludes: &Excludes) -> Result<Listing> {
    let mut out = Listing::default();
    walk(
        src,
        name.to_owned(),
        excludes,
        &mut out,
        &mut Default::default(),
    )?;
    Ok(out)
}

/// Like [`build`], going on past what cannot be read below the sources, and leaving out what
/// `excludes` matches below them.
pub fn listed(sources: &[PathBuf], excludes: &Excludes) -> Result<Listing> {
    let mut out = Listing::default();
    let mut links = Default::default();
    for (src, name) in sources.iter().zip(top_names(sources)?) {
        walk(src, name, excludes, &mut out, &mut links)?;
    }
    Ok(out)
}

/// The entries of `listing`, or the first thing it could not read.
fn strict(listing: Listing) -> Result<Vec<SourceEntry>> {
    match listing.unread.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(listing.entries),
    }
}

/// The names `sources` take at the top of the destination, once each is known to exist; the
/// first that is missing, unnamed or named twice is an error. Cheap: `copy` asks it before it
/// makes the destination, so that a mistyped source leaves nothing behind.
pub fn top_names(sources: &[PathBuf]) -> Result<Vec<String>> {
    let mut names = Vec::with_capacity(sources.len());
    let mut top_names = std::collections::HashSet::new();
    for src in sources {
        fs::symlink_metadata(src).map_err(Error::file("reading metadata of", src))?;
        let name = src
            .file_name()
            .map(ToOwned::to_owned)
            .or_else(|| src.canonicalize().ok()?.file_name().map(ToOwned::to_owned))
            .ok_or(Error::Source {
                path: src.clone(),
                why: "it has no file name (is it the root directory?)",
            })?;
        let name = wire_name(&name);
        if !top_names.insert(name.clone()) {
            return Err(Error::Source {
                path: src.clone(),
                why: "another source has the same name",
            });
        }
        names.push(name);
    }
    Ok(names)
}

/// The [`Entry::version`] of a file with metadata `meta`: a BLAKE3 hash (in a context of its
/// own) of its device, inode, size, and modification and change times to the nanosecond.
/// Writing to a file, or replacing it, changes its change time (which, unlike the modification
/// time, no user can set back on the filesystems of [`keeps_change_times`]), so an equal tag
/// means the same bytes as far as the kernel can tell. Hashing keeps the fields to 16 bytes; it
/// is not meant to hide them (the receiver knows the size and modification time anyway).
pub fn source_version(meta: &fs::Metadata) -> SourceVersion {
    let mut h = blake3::Hasher::new_derive_key("sluice 2026-11-25 source version tag");
    if crate::fault::frozen_versions() {
        h.update(&meta.size().to_le_bytes());
        let mut tag = [0; 16];
        tag.copy_from_slice(&h.finalize().as_bytes()[..16]);
        return tag;
    }
    for field in [
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime() as u64,
        meta.mtime_nsec() as u64,
        meta.ctime() as u64,
        meta.ctime_nsec() as u64,
    ] {
        h.update(&field.to_le_bytes());
    }
    let mut tag = [0; 16];
    tag.copy_from_slice(&h.finalize().as_bytes()[..16]);
    tag
}

/// How long ago a file must have last changed for its [`source_version`] to be trusted. A file
/// changed again within the same tick of its filesystem's clock keeps its change time (ticks
/// are 1–10 ms on Linux filesystems, 1 or 2 s on some others); one that had not changed for
/// longer than any tick when it was listed cannot change afterwards without its change time
/// moving on (the "racy git" problem, solved as git does).
pub const SETTLED: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether the file with metadata `meta` last changed (by its change and its modification
/// time) at least [`SETTLED`] before `now`.
fn settled(meta: &fs::Metadata, now: std::time::SystemTime) -> bool {
    let at = |sec: i64, nsec: i64| {
        std::time::UNIX_EPOCH
            + std::time::Duration::new(sec.max(0) as u64, nsec.clamp(0, 999_999_999) as u32)
    };
    let changed = at(meta.ctime(), meta.ctime_nsec()).max(at(meta.mtime(), meta.mtime_nsec()));
    now.duration_since(changed).is_ok_and(|age| age >= SETTLED)
}

/// Whether `file` lives on a filesystem whose change times move with every write and cannot be
/// set: ext2/3/4, XFS, Btrfs, F2FS, ZFS, bcachefs, tmpfs, and overlayfs (containers; a write
/// copies the file up to the upper layer, one of the others, and moves its change time there).
/// Elsewhere a file's [`source_version`]
/// is not trusted to name its bytes: read-only images (squashfs, ISO 9660, EROFS) report the
/// modification time stored in the image as change time, FAT reports its creation time, and
/// network and FUSE filesystems may answer from a cache.
pub fn keeps_change_times(file: &fs::File) -> bool {
    const TRUSTED: [u32; 8] = [
        0xEF53,      // ext2/3/4
        0x5846_5342, // XFS
        0x9123_683E, // Btrfs
        0xF2F5_2010, // F2FS
        0x2FC1_2FC1, // ZFS
        0xCA45_1A4E, // bcachefs
        0x0102_1994, // tmpfs
        0x794C_7630, // overlayfs
    ];
    crate::fault::frozen_versions()
        || rustix::fs::fstatfs(file).is_ok_and(|s| TRUSTED.contains(&(s.f_type as u32)))
}

/// The first path listed for each file of several names (device, inode), so that its other
/// names go as [`EntryKind::HardLink`]s to it.
type FirstNames = std::collections::HashMap<(u64, u64), String>;

fn walk(
    root: &Path,
    root_name: String,
    excludes: &Excludes,
    listing: &mut Listing,
    links: &mut FirstNames,
) -> Result<()> {
    let listed_at = std::time::SystemTime::now();
    let mut stack = vec![(root.to_path_buf(), root_name)];
    let Listing {
        entries: out,
        unread,
    } = listing;
    // Below the source, what cannot be read is noted and left out; the source itself must be.
    let mut unreadable = |e: Error, local: &Path| {
        if local == root {
            return Err(e);
        }
        // Said once, by the sender, as a failed entry (the run goes on, and fails at its end).
        unread.push(e);
        Ok(())
    };
    while let Some((local, rel)) = stack.pop() {
        let meta = match fs::symlink_metadata(&local) {
            Ok(meta) => meta,
            Err(e) => {
                unreadable(Error::file("reading metadata of", &local)(e), &local)?;
                continue;
            }
        };
        let ft = meta.file_type();
        let (kind, size, link_target) = if ft.is_file() && meta.nlink() > 1 {
            match links.get(&(meta.dev(), meta.ino())) {
                Some(first) => (EntryKind::HardLink, 0, first.clone()),
                None => (EntryKind::File, meta.len(), String::new()),
            }
        } else if ft.is_file() {
            (EntryKind::File, meta.len(), String::new())
        } else if ft.is_dir() {
            (EntryKind::Dir, 0, String::new())
        } else if ft.is_symlink() {
            match fs::read_link(&local) {
                // A target too long to cross would be cut: the link fails alone instead.
                Ok(target) if wire_name(target.as_os_str()).len() > MAX_STRING_LEN => {
                    let why = format!(
                        "its target is {} bytes as sent, over the limit of {MAX_STRING_LEN} \
                         (each byte of a name that is not UTF-8 takes three)",
                        wire_name(target.as_os_str()).len()
                    );
                    unreadable(
                        Error::file("cannot send", &local)(std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            why,
                        )),
                        &local,
                    )?;
                    continue;
                }
                Ok(target) => (EntryKind::Symlink, 0, wire_name(target.as_os_str())),
                Err(e) => {
                    unreadable(Error::file("reading link", &local)(e), &local)?;
                    continue;
                }
            }
        } else if local == root {
            // Named on the command line: said, as scp says it, rather than "0 files" and exit 0.
            return Err(Error::Source {
                path: local,
                why: "it is not a regular file, directory or symlink (a FIFO, socket or device)",
            });
        } else {
            use std::os::unix::fs::FileTypeExt;
            let kind = if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_socket() {
                "a socket"
            } else if ft.is_block_device() {
                "a block device"
            } else if ft.is_char_device() {
                "a character device"
            } else {
                "not a regular file, directory or symlink"
            };
            // As rsync says "skipping non-regular file": the rest of the tree goes.
            tracing::warn!("skipping {}: {kind}", local.display());
            continue;
        };
        match sluice_proto::path::validate(&rel) {
            Ok(_) => {}
            // A file left behind by an interrupted transfer into this tree: not data of its
            // own. A receiver refuses the name.
            Err(sluice_proto::path::PathError::Reserved(_))
                if kind == EntryKind::File && rel.contains('/') =>
            {
                tracing::warn!("skipping {}: a partial file of an interrupted Sluice transfer (the name is reserved)", local.display());
                continue;
            }
            Err(sluice_proto::path::PathError::Reserved(_)) => {
                return Err(Error::Source {
                    path: local.clone(),
                    why: "its name is reserved for Sluice's partial files (.NAME.sluice-part, .NAME.sluice-journal)",
                })
            }
            // Too long to cross: this entry fails alone, named, and the rest goes (as a path
            // the system itself finds too long).
            Err(sluice_proto::path::PathError::TooLong(_)) if local != root => {
                let why = format!(
                    "its path is {} bytes as sent, over the limit of {MAX_STRING_LEN}{}",
                    rel.len(),
                    if rel.len() > sluice_proto::path::name_to_bytes(&rel).len() {
                        " (each byte of a name that is not UTF-8 takes three)"
                    } else {
                        ""
                    }
                );
                unreadable(
                    Error::file("cannot send", &local)(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        why,
                    )),
                    &local,
                )?;
                continue;
            }
            Err(e) => {
                return Err(Error::Destination {
                    path: rel,
                    why: e.to_string(),
                })
            }
        }
        if kind == EntryKind::File && meta.nlink() > 1 {
            links.insert((meta.dev(), meta.ino()), rel.clone());
        }
        let id = u32::try_from(out.len()).map_err(|_| Error::Source {
            path: local.clone(),
            why: "more than 4 billion entries",
        })?;
        out.push(SourceEntry {
            entry: Entry {
                id,
                kind,
                path: rel.clone(),
                mode: meta.permissions().mode() & 0o7777,
                mtime_sec: meta.mtime(),
                mtime_nsec: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
                size,
                link_target,
                version: if kind == EntryKind::File
                    && (settled(&meta, listed_at) || crate::fault::frozen_versions())
                {
                    source_version(&meta)
                } else {
                    [0; 16]
                },
                // Numbers only: names are the sender's to add (`owners::name_entries`).
                owner: Owner {
                    uid: Some(meta.uid()),
                    gid: Some(meta.gid()),
                    ..Owner::default()
                },
            },
            local: local.clone(),
        });
        if kind == EntryKind::Dir {
            let mut children = Vec::new();
            // A directory that cannot be listed still arrives, empty.
            let read = fs::read_dir(&local).and_then(|dir| {
                dir.map(|child| {
                    child.map(|c| {
                        // The directory's own record of the type (no stat); a symlink to a
                        // directory is no directory here, as it is not sent as one.
                        let is_dir = c.file_type().is_ok_and(|t| t.is_dir());
                        (
                            format!("{rel}/{}", wire_name(&c.file_name())),
                            c.path(),
                            is_dir,
                        )
                    })
                })
                .filter(|child| {
                    child.as_ref().map_or(true, |(path, _, is_dir)| {
                        !excludes.excludes_entry(path, *is_dir)
                    })
                })
                .collect::<std::io::Result<Vec<_>>>()
            });
            match read {
                Ok(read) => children = read,
                Err(e) => unreadable(Error::file("listing", &local)(e), &local)?,
            }
            // Reverse order on the stack pops them in name order.
            children.sort_unstable_by(|a, b| b.0.cmp(&a.0));
            for (path, local, _) in children {
                stack.push((local, path));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_files_of_an_interrupted_transfer_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("top");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("x"), b"x").unwrap();
        fs::write(root.join(".x.sluice-part"), b"half").unwrap();
        fs::write(root.join(".x.sluice-journal"), b"j").unwrap();
        let m = build(std::slice::from_ref(&root)).unwrap();
        let names: Vec<_> = m.iter().map(|e| e.entry.path.as_str()).collect();
        assert_eq!(names, ["top", "top/x"]);
        // A directory of such a name is no leftover (the receiver makes none): it cannot be
        // sent, and the error says why; nor can a file named on the command line.
        fs::create_dir_all(root.join(".d.sluice-part")).unwrap();
        let e = build(std::slice::from_ref(&root)).unwrap_err().to_string();
        assert!(
            e.contains(".d.sluice-part") && e.contains("reserved"),
            "{e}"
        );
        let e = build(&[root.join(".x.sluice-part")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("reserved"), "{e}");
    }

    #[test]
    fn source_version_holds_until_the_file_is_touched() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, b"one").unwrap();
        let v = source_version(&fs::metadata(&f).unwrap());
        assert_eq!(v, source_version(&fs::metadata(&f).unwrap()));
        assert_ne!(v, [0; 16]);
        // Just written: it could change again within the same tick, so no version is claimed.
        let listed = build(std::slice::from_ref(&f)).unwrap();
        assert_eq!(listed[0].entry.version, [0; 16]);
        let meta = fs::metadata(&f).unwrap();
        assert!(!settled(&meta, std::time::SystemTime::now()));
        assert!(settled(
            &meta,
            std::time::SystemTime::now() + SETTLED + std::time::Duration::from_millis(10)
        ));
        // Same size, modification time put back: the change time still moves.
        let mtime = fs::metadata(&f).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&f, b"two").unwrap();
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_ne!(source_version(&fs::metadata(&f).unwrap()), v);
    }

    #[test]
    fn walks_tree_parents_first_with_links() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("top");
        fs::create_dir_all(root.join("b/c")).unwrap();
        fs::write(root.join("a.txt"), b"hi").unwrap();
        fs::write(root.join("b/c/d"), b"x").unwrap();
        std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
        let m = build(&[root]).unwrap();
        let names: Vec<_> = m
            .iter()
            .map(|e| (e.entry.path.as_str(), e.entry.kind))
            .collect();
        assert_eq!(
            names,
            [
                ("top", EntryKind::Dir),
                ("top/a.txt", EntryKind::File),
                ("top/b", EntryKind::Dir),
                ("top/b/c", EntryKind::Dir),
                ("top/b/c/d", EntryKind::File),
                ("top/link", EntryKind::Symlink),
            ]
        );
        assert_eq!(m[5].entry.link_target, "a.txt");
        assert!(m.iter().enumerate().all(|(i, e)| e.entry.id as usize == i));
    }

    #[test]
    fn duplicate_top_names_are_refused() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("x/f")).unwrap();
        fs::create_dir_all(d.path().join("y/f")).unwrap();
        let err = build(&[d.path().join("x/f"), d.path().join("y/f")]).unwrap_err();
        assert!(err.to_string().contains("same name"), "{err}");
    }
}
