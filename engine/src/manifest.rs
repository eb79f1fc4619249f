//! Turning the sender's command-line sources into a manifest.
//!
//! Each source contributes its own name at the top of the destination, as `scp -r` and `rsync`
//! (without a trailing slash) do: sending `data/` and `notes.txt` creates `DEST/data/…` and
//! `DEST/notes.txt`. Directories are walked depth first in name order, a directory before its
//! contents; symlinks are sent as links and never followed; sockets, FIFOs and devices are
//! skipped with a warning. Ids are assigned in walk order.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sluice_proto::message::{Entry, EntryKind};

use crate::error::{Error, Result};

/// A manifest entry and where its bytes come from on the sender.
#[derive(Debug, Clone)]
pub struct SourceEntry {
    /// What is sent.
    pub entry: Entry,
    /// The local path it is read from.
    pub local: PathBuf,
}

/// Walks `sources` and returns the manifest, ids in order.
pub fn build(sources: &[PathBuf]) -> Result<Vec<SourceEntry>> {
    let mut out = Vec::new();
    let mut top_names = std::collections::HashSet::new();
    for src in sources {
        let name = src
            .file_name()
            .map(ToOwned::to_owned)
            .or_else(|| src.canonicalize().ok()?.file_name().map(ToOwned::to_owned))
            .ok_or(Error::Source {
                path: src.clone(),
                why: "it has no file name (is it the root directory?)",
            })?;
        let name = name.to_str().ok_or(Error::Source {
            path: src.clone(),
            why: "its name is not valid UTF-8",
        })?;
        if !top_names.insert(name.to_owned()) {
            return Err(Error::Source {
                path: src.clone(),
                why: "another source has the same name",
            });
        }
        walk(src, name.to_owned(), &mut out)?;
    }
    Ok(out)
}

fn walk(root: &Path, root_name: String, out: &mut Vec<SourceEntry>) -> Result<()> {
    let mut stack = vec![(root.to_path_buf(), root_name)];
    while let Some((local, rel)) = stack.pop() {
        let meta =
            fs::symlink_metadata(&local).map_err(Error::file("reading metadata of", &local))?;
        let ft = meta.file_type();
        let (kind, size, link_target) = if ft.is_file() {
            (EntryKind::File, meta.len(), String::new())
        } else if ft.is_dir() {
            (EntryKind::Dir, 0, String::new())
        } else if ft.is_symlink() {
            let target = fs::read_link(&local).map_err(Error::file("reading link", &local))?;
            let target = target
                .into_os_string()
                .into_string()
                .map_err(|_| Error::Source {
                    path: local.clone(),
                    why: "its link target is not valid UTF-8",
                })?;
            (EntryKind::Symlink, 0, target)
        } else {
            tracing::warn!(path = %local.display(), "skipping: not a file, directory or symlink");
            continue;
        };
        if let Err(e) = sluice_proto::path::validate(&rel) {
            return Err(Error::Destination {
                path: rel,
                why: e.to_string(),
            });
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
            },
            local: local.clone(),
        });
        if kind == EntryKind::Dir {
            let mut children = Vec::new();
            for child in fs::read_dir(&local).map_err(Error::file("listing", &local))? {
                let child = child.map_err(Error::file("listing", &local))?;
                let name = child.file_name().into_string().map_err(|_| Error::Source {
                    path: child.path(),
                    why: "its name is not valid UTF-8",
                })?;
                children.push(name);
            }
            // Reverse order on the stack pops them in name order.
            children.sort_unstable_by(|a, b| b.cmp(a));
            for name in children {
                stack.push((local.join(&name), format!("{rel}/{name}")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
