//! The receiver's destination directory: the only place Sluice writes, and the guard that keeps
//! every write inside it.
//!
//! Paths from the manifest have already passed [`sluice_proto::path::validate`] (relative, no
//! `..`). [`Destination`] adds what a path string cannot show: no component on the way to an
//! entry may be a symlink, so a link — sent by a hostile peer or already present — cannot
//! redirect a write outside the destination. Symlinks from the manifest are created only after
//! every file is in place. Files are written under a temporary name in their final directory
//! (`.NAME.sluice-part`) and renamed over the final name only once verified, so the final name
//! never holds unverified content.

use std::collections::HashMap;
use std::fs::{self, File, FileTimes};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sluice_proto::exclude::Excludes;
use sluice_proto::message::Entry;

use crate::manifest::{local_name, wire_name};
use sluice_proto::path;

use crate::error::{Error, Result};
use crate::owners::{Given, Owners, Ownership};

mod removal;
use removal::{first_excluded, remove_tree, Removal};

pub use sluice_proto::path::{JOURNAL_SUFFIX, PART_SUFFIX};

/// Where a file entry goes, and what the destination already holds of it.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The final name.
    pub final_path: PathBuf,
    /// The in-progress name.
    pub part: PathBuf,
    /// A file whose blocks may be kept: the part file (resume) or the older final file (delta).
    pub existing: Option<PathBuf>,
    /// `existing` is the part file of an interrupted run.
    pub resume: bool,
    /// The part file's resume journal.
    pub journal: PathBuf,
    /// In a directory this run made: nothing is under the final name yet.
    pub fresh: bool,
    /// The mode to create the part file with, if, created so, it already has the owner, group
    /// and permissions the entry is to get (see [`Destination::created_mode`]).
    pub create_mode: Option<u32>,
}

/// A destination directory.
#[derive(Debug, Clone)]
pub struct Destination {
    root: PathBuf,
    /// Permission bits the receiving process's umask clears from every mode a sender asks for:
    /// under the usual 022 a sender cannot make a file group- or world-writable here.
    umask: u32,
    /// The umask the kernel applies to the mode of each file this process creates, if known.
    process_umask: Option<u32>,
    /// The owner and group of each file this process creates (outside setgid directories),
    /// asked once: the calls cost as much as the ones they save.
    creator: (u32, u32),
    /// Who entries are given to: the source's owners where this process may give files away
    /// (root), else nobody (they stay the receiving user's). Setuid and setgid are kept only
    /// with the owner and group given ([`Given::mode_mask`]), so a peer cannot plant a
    /// privileged executable that belongs to anyone but the owner it names.
    owners: Owners,
    claims: Claims,
    dirs: KnownDirs<Known>,
    /// Directories whose names were checked for being exact (see [`Destination::names_exact`]).
    exact: KnownDirs<bool>,
    /// Whether, and how, an entry of another type under a name the manifest gives is removed
    /// (`--delete`, as rsync replaces a directory by a file of the same name) instead of
    /// failing the entry.
    replace: Arc<Replacing>,
}

/// `--delete`'s replacement of entries whose type changed, shared by every clone of a
/// [`Destination`]: whether it is on, the sender's exclude patterns (what it leaves in place),
/// and what it removed, until the receiver reports it ([`Destination::take_replaced`]) as it
/// reports the rest of what `--delete` removes.
#[derive(Debug, Default)]
struct Replacing {
    on: std::sync::atomic::AtomicBool,
    excludes: Mutex<Arc<Excludes>>,
    removed: Mutex<Vec<(String, bool)>>,
}

/// Directories of the destination already checked in this run (a directory, not a symlink), and
/// what was found of each: whether this run made them, for one (a file in a directory this run
/// made has no older version, part file or journal to look for). Forgotten past
/// [`KnownDirs::MAX`] entries, so memory stays bounded; a forgotten directory is checked again.
#[derive(Debug, Clone)]
struct KnownDirs<T>(Arc<Mutex<HashMap<PathBuf, T>>>);

impl<T> Default for KnownDirs<T> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<T: Copy> KnownDirs<T> {
    const MAX: usize = 16_384;

    /// What was found of a directory already checked.
    fn get(&self, at: &Path) -> Option<T> {
        self.0.lock().ok()?.get(at).copied()
    }

    fn insert(&self, at: &Path, made: T) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= Self::MAX {
                m.clear();
            }
            m.insert(at.to_path_buf(), made);
        }
    }
}

/// A directory of the destination as this run found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// It was there before.
    Found,
    /// This run made it. `plain`: a file created in it gets this process's owner and group, and
    /// the mode it is created with less the umask: the directory's group is this process's (so
    /// neither a setgid directory nor a `grpid` mount gives it another) and it has no default ACL
    /// (which would take the umask's place).
    Made { plain: bool },
}

impl Destination {
    /// Opens (creating if needed) the destination directory.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        // Without a trailing slash: `ef/` naming a file said "File exists" (mkdir's words).
        let plain: PathBuf = root.components().collect();
        if let (Err(_), Ok(target)) = (fs::metadata(&plain), fs::read_link(&plain)) {
            return Err(Error::Destination {
                path: root.display().to_string(),
                why: format!(
                    "it is a symlink to {}, which does not exist: name the directory it should be",
                    target.display()
                ),
            });
        }
        if fs::metadata(&plain).is_ok_and(|m| !m.is_dir()) {
            // As cp says it ("not a directory"), rather than mkdir's "File exists".
            return Err(Error::Destination {
                path: root.display().to_string(),
                why: "it is a file, not a directory to put files in (`sluice copy` of one \
                      source file may name an existing file; several sources, and `sluice recv`, \
                      need a directory)"
                    .into(),
            });
        }
        fs::create_dir_all(&root).map_err(Error::file("creating destination", &root))?;
        let umask = process_umask();
        Ok(Self {
            root,
            // The usual one where it cannot be read.
            umask: umask.unwrap_or(0o022),
            process_umask: umask,
            creator: (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            ),
            owners: Owners::default(),
            claims: Claims::default(),
            dirs: KnownDirs::default(),
            exact: KnownDirs::default(),
            replace: Arc::default(),
        })
    }

    /// With `on`, an entry of another type in the way of a manifest entry is removed (a file
    /// where a directory is to be, a directory or symlink where a file, link or directory is
    /// to be), as `rsync --delete` does; without, the entry fails naming what is in the way.
    /// Never through a symlink: a link in the way is removed itself, and a directory is removed
    /// with what it holds, links inside it not followed.
    /// What is removed this way is reported as `--delete`'s other removals are
    /// ([`Destination::take_replaced`]); a directory holding entries the patterns given to
    /// [`Destination::keep_excluded`] match is not replaced, and the entry fails naming one.
    pub fn replace_in_the_way(&self, on: bool) {
        self.replace
            .on
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The sender's exclude patterns: a directory in the way of an entry is not replaced while
    /// it holds (or is) an entry they match, as `--delete` never deletes such an entry.
    pub fn keep_excluded(&self, excludes: Excludes) {
        if let Ok(mut kept) = self.replace.excludes.lock() {
            *kept = Arc::new(excludes);
        }
    }

    /// What replacing entries in the way removed since the last call, oldest first: each
    /// entry's path as the manifest would name it, and whether it was a directory (removed with
    /// all it held, named once).
    pub fn take_replaced(&self) -> Vec<(String, bool)> {
        self.replace
            .removed
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }

    fn replacing(&self) -> bool {
        self.replace.on.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn note_replaced(&self, removed: impl IntoIterator<Item = (String, bool)>) {
        if let Ok(mut r) = self.replace.removed.lock() {
            r.extend(removed);
        }
    }

    /// `at` (below the root) as the manifest would name it.
    fn rel_of(&self, at: &Path) -> String {
        let below = at.strip_prefix(&self.root).unwrap_or(at);
        below.iter().map(wire_name).collect::<Vec<_>>().join("/")
    }

    /// Removes the directory at `at`, in the way of `entry` (a file, symlink or hard link:
    /// `by` says which), for `--delete`, reporting what it removes. A directory holding an
    /// entry the sender's exclude patterns match (or matched itself) is left whole and the
    /// entry fails naming it: rsync keeps such entries too ("cannot delete non-empty
    /// directory"), and deleting the rest would not let the entry in anyway. An entry inside
    /// that cannot be removed fails the entry too, after what could be removed is gone and
    /// reported.
    fn replace_dir(&self, entry: &Entry, at: &Path, by: &str) -> Result<()> {
        let excludes = self
            .replace
            .excludes
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        if let Some(kept) = first_excluded(at, &entry.path, &excludes) {
            let what = if kept == entry.path {
                "is one the exclude patterns keep".to_string()
            } else {
                format!("holds {kept:?}, which the exclude patterns keep")
            };
            return Err(Error::Destination {
                path: entry.path.clone(),
                why: format!(
                    "the directory there cannot be replaced by {by}: it {what} (--delete-excluded \
                     would delete it); nothing in it was deleted"
                ),
            });
        }
        let mut removal = Removal::default();
        let gone = remove_tree(at, entry.path.clone(), true, &excludes, &mut removal);
        self.note_replaced(removal.removed);
        unlisted_warning(removal.unlisted, at);
        let more = removal.failures.saturating_sub(1);
        match removal.first_failure {
            Some((path, e)) => Err(Error::file("replacing", at)(io::Error::new(
                e.kind(),
                format!(
                    "not deleted: {}: {e}{}",
                    path.display(),
                    if more > 0 {
                        format!(" (and {more} more)")
                    } else {
                        String::new()
                    }
                ),
            ))),
            // Something matching the patterns appeared while it was removed.
            None if !gone => Err(Error::Destination {
                path: entry.path.clone(),
                why: format!(
                    "the directory there cannot be replaced by {by}: it holds entries the \
                     exclude patterns keep"
                ),
            }),
            None => Ok(()),
        }
    }

    /// Whether this process may create files in the destination directory (`access(2)` with
    /// write and search permission).
    pub fn writable(&self) -> io::Result<()> {
        rustix::fs::access(
            &self.root,
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
        )
        .map_err(io::Error::from)
    }

    /// Which file of this run each written inode belongs to (see [`Claims`]).
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// Whether the directory `dir` names files by their exact bytes, so that two entries'
    /// names can never reach one file there and [`Claims`] need not look at its files: a
    /// filesystem that never folds case or normalises names (ext2–4, Btrfs, F2FS, tmpfs; not
    /// XFS, which can be made case-insensitive as a whole) and no casefold attribute (`chattr
    /// +F`, which ext4, F2FS and tmpfs offer) on it or on any directory between it and the
    /// destination (a folding parent makes `Sub` and `sub` one directory). Anything else, or a
    /// check that fails, is taken as folding. Checked once per directory; each check costs a
    /// `statfs`, an `open` and an `ioctl`, against a `statx` per file saved twice over.
    pub fn names_exact(&self, dir: &Path) -> bool {
        if let Some(exact) = self.exact.get(dir) {
            return exact;
        }
        let mut exact = names_exact(dir);
        if exact && dir != self.root {
            exact = dir
                .parent()
                .is_some_and(|p| p.starts_with(&self.root) && self.names_exact(p));
        }
        self.exact.insert(dir, exact);
        exact
    }

    /// Whether the part file `part`'s claim may be skipped: its directory's names are exact
    /// ([`Destination::names_exact`]) and its name is one no other name shares. A name too long
    /// for a part name of its own is shortened with a hash ([`Destination::part_path`]), which
    /// another name could be made to match: those keep their claims.
    pub fn unclaimed(&self, part: &Path) -> bool {
        const SHORTENED: usize = 240;
        part.file_name().is_some_and(|n| n.len() < SHORTENED)
            && part.parent().is_some_and(|d| self.names_exact(d))
    }

    /// Gives entries the sender's permission bits without this process's umask (setuid and
    /// setgid still only with their owner and group, [`Destination::give_owners`]): for `copy`,
    /// whose one user owns both ends.
    pub fn exact_modes(&mut self) {
        self.umask = 0;
    }

    /// Gives entries the owners and groups the sender lists, as `ownership` says, if this
    /// process may give files away ([`crate::owners::may_give_away`]); otherwise (and by
    /// default) entries belong to the receiving user. Returns whether it will.
    pub fn give_owners(&mut self, ownership: Ownership) -> bool {
        self.owners = Owners::new(ownership);
        self.owners.gives()
    }

    /// The permission bits a manifest `mode` becomes here on an entry given `given`: setuid
    /// only with its owner given, setgid only with its group, the receiver's umask applied.
    fn mode(&self, mode: u32, given: Given) -> u32 {
        mode & given.mode_mask() & !self.umask
    }

    /// Gives the open entry `f` (at `path`) the owner and group `given` says, if any. A
    /// change of owner clears setuid and setgid, so the mode is set after.
    fn give(f: &File, given: Given, path: &Path) -> Result<()> {
        if !given.any() {
            return Ok(());
        }
        let (uid, gid) = given.rustix();
        rustix::fs::fchown(f, uid, gid).map_err(|e| owner_error(e, given, path))
    }

    /// The destination directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves a manifest path to a local path, creating missing parent directories and
    /// refusing any parent that is a symlink or not a directory.
    pub fn resolve(&self, rel: &str) -> Result<PathBuf> {
        let parts = path::validate(rel).map_err(|e| Error::Destination {
            path: rel.to_owned(),
            why: e.to_string(),
        })?;
        let mut at = self.root.clone();
        let (last, parents) = parts.split_last().ok_or_else(|| Error::Destination {
            path: rel.to_owned(),
            why: "empty path".into(),
        })?;
        for part in parents {
            at.push(local_name(part));
            self.ensure_dir(&at, rel)?;
        }
        at.push(local_name(last));
        // Linux refuses a path of PATH_MAX bytes or more (its part and journal names are
        // longer still): said here, in words, rather than by the first call that fails.
        const PATH_MAX: usize = 4096;
        let longest = hidden_sibling(&at, JOURNAL_SUFFIX).as_os_str().len();
        if longest >= PATH_MAX {
            return Err(Error::Destination {
                path: rel.to_owned(),
                why: format!(
                    "its path here (with Sluice's temporary name beside it) is {longest} bytes, \
                     too long for Linux's {PATH_MAX}-byte limit (PATH_MAX); choose a shorter \
                     destination directory"
                ),
            });
        }
        Ok(at)
    }

    fn ensure_dir(&self, at: &Path, rel: &str) -> Result<()> {
        if self.dirs.get(at).is_some() {
            return Ok(());
        }
        match fs::symlink_metadata(at) {
            Ok(m) if m.file_type().is_dir() => {
                // A directory of ours that its last copy left read-only (0555, as a Go module
                // cache is), or closed (000): opened up for the owner while this run writes into
                // it, as rsync does; its mode is set again with the other directory metadata at
                // the end. Root needs no such permission.
                let owner = rustix::process::geteuid();
                if m.mode() & 0o700 != 0o700 && !owner.is_root() && m.uid() == owner.as_raw() {
                    fs::set_permissions(at, fs::Permissions::from_mode(m.mode() | 0o700))
                        .map_err(Error::file("opening up", at))?;
                }
                self.dirs.insert(at, Known::Found);
                Ok(())
            }
            Ok(_) if self.replacing() => {
                // A file or symlink where the manifest has a directory (`--delete`): the entry
                // itself goes, never what a link points to, and is reported as deleted.
                fs::remove_file(at).map_err(Error::file("replacing", at))?;
                self.note_replaced([(self.rel_of(at), false)]);
                self.ensure_dir(at, rel)
            }
            Ok(m) if m.file_type().is_symlink() => Err(Error::Destination {
                path: rel.to_owned(),
                why: format!("{} is a symlink; it will not be followed", at.display()),
            }),
            Ok(_) => Err(Error::Destination {
                path: rel.to_owned(),
                why: format!(
                    "{} exists and is not a directory (--delete replaces it)",
                    at.display()
                ),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(at) {
                Ok(()) => {
                    self.dirs.insert(
                        at,
                        Known::Made {
                            plain: plain_dir(at, self.creator.1),
                        },
                    );
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => self.ensure_dir(at, rel),
                Err(e) => Err(Error::file("creating directory", at)(e)),
            },
            Err(e) => Err(Error::file("inspecting", at)(e)),
        }
    }

    /// Creates the directory of a manifest entry.
    pub fn create_dir(&self, entry: &Entry) -> Result<PathBuf> {
        let at = self.resolve(&entry.path)?;
        self.ensure_dir(&at, &entry.path)?;
        Ok(at)
    }

    /// The resume journal of the part file of `final_path`.
    pub fn journal_path(final_path: &Path) -> PathBuf {
        hidden_sibling(final_path, JOURNAL_SUFFIX)
    }

    /// Where a part file is set aside as the older version of a delta (see
    /// [`Destination::set_part_aside`]): the part name of the part file, which no entry can take
    /// (a reserved name is never sent).
    pub fn aside_path(final_path: &Path) -> PathBuf {
        hidden_sibling(&Self::part_path(final_path), PART_SUFFIX)
    }

    /// Removes the part file of `final_path`, its journal and a part file set aside, whichever
    /// exist.
    pub fn remove_part(final_path: &Path) -> io::Result<()> {
        for p in [
            Self::part_path(final_path),
            Self::journal_path(final_path),
            Self::aside_path(final_path),
        ] {
            remove_if_present(&p)?;
        }
        Ok(())
    }

    /// The in-progress name of the file that will be `final_path`.
    pub fn part_path(final_path: &Path) -> PathBuf {
        hidden_sibling(final_path, PART_SUFFIX)
    }

    /// Prepares a file entry: resolves its final path and part path, and finds what the
    /// destination already holds of it — a part file of an interrupted run (resumed unless
    /// `restart`), else an older version under the final name (the base of a delta).
    pub fn prepare_file(&self, entry: &Entry, restart: bool) -> Result<Prepared> {
        let final_path = self.resolve(&entry.path)?;
        let part = Self::part_path(&final_path);
        // In a directory this run made, nothing of the file can be there yet.
        if let Some(Known::Made { plain }) = final_path.parent().and_then(|d| self.dirs.get(d)) {
            return Ok(Prepared {
                journal: Self::journal_path(&final_path),
                final_path,
                part,
                existing: None,
                resume: false,
                fresh: true,
                create_mode: plain.then(|| self.created_mode(entry)).flatten(),
            });
        }
        let final_meta = fs::symlink_metadata(&final_path).ok();
        if final_meta.as_ref().is_some_and(|m| m.is_dir()) {
            if !self.replacing() {
                return Err(Error::Destination {
                    path: entry.path.clone(),
                    why: "a directory of that name is in the way (--delete replaces it)".into(),
                });
            }
            self.replace_dir(entry, &final_path, "a file")?;
            return self.prepare_file(entry, restart);
        }
        let part_meta = fs::symlink_metadata(&part).ok();
        // A part file with a second link is not one Sluice made: writing into it would write
        // through the other name too (perhaps outside the destination). It is discarded.
        let foreign = part_meta
            .as_ref()
            .is_some_and(|m| !m.is_file() || m.nlink() > 1);
        let mut resume = !restart && !foreign && part_meta.is_some();
        // A delta lays the older version into its part file before it writes any block, and a
        // journal is made with the first batch of blocks written. So a part file without a
        // journal that is shorter than the older version beside it holds only an interrupted
        // copy of that older version (or, after a fresh run, fewer blocks than one batch): the
        // older version itself is the better base. Resumed, the blocks past the part file's end
        // were sent whole (604 MB of a 1 GiB delta of 2 MB, killed half a second in).
        let older_len = final_meta.as_ref().filter(|m| m.is_file()).map(|m| m.len());
        let copy_cut_short = match (older_len, &part_meta) {
            (Some(older), Some(p)) if resume => {
                p.len() < older.min(entry.size) && !Self::journal_path(&final_path).exists()
            }
            _ => false,
        };
        if copy_cut_short {
            let _claim = Self::claim(&part)?;
            Self::remove_part(&final_path).map_err(Error::file("removing stale", &part))?;
            resume = false;
        }
        if restart || foreign {
            // Not a part file another transfer is writing now (`--restart` beside it).
            let _claim = (restart && !foreign && part_meta.is_some())
                .then(|| Self::claim(&part))
                .transpose()?;
            Self::remove_part(&final_path).map_err(Error::file("removing stale", &part))?;
        } else if !resume {
            // A journal without its part file (removed by hand, say) must not vouch for a new
            // part file that happens to get the same inode number.
            remove_if_present(&Self::journal_path(&final_path))
                .map_err(Error::file("removing stale", &part))?;
        }
        let existing = if resume {
            Some(part.clone())
        } else if final_meta.as_ref().is_some_and(|m| m.is_file()) {
            Some(final_path.clone())
        } else {
            // A part file set aside by a run that was interrupted before it made a new one.
            let aside = Self::aside_path(&final_path);
            fs::symlink_metadata(&aside)
                .is_ok_and(|m| m.is_file())
                .then_some(aside)
        };
        Ok(Prepared {
            journal: Self::journal_path(&final_path),
            final_path,
            part,
            existing,
            resume,
            fresh: false,
            create_mode: None,
        })
    }

    /// Sets aside a part file to resume whose blocks may have moved in the version now sent
    /// (`moved`: its journal was written while a file of another size was sent, or it has
    /// none), where no older version is under the final name to be the base of a delta. Written
    /// in place, a part file cannot be read at its blocks' old offsets once it is written to;
    /// so it becomes the older version of a delta instead, renamed to
    /// [`Destination::aside_path`]: its blocks are found at any shift and copied into a new part
    /// file, and it is removed once the file is in place. A resumed part file beside a final
    /// file keeps its place (the final file is the base of its moved blocks).
    pub fn set_part_aside(&self, p: &mut Prepared, moved: bool) -> Result<()> {
        if !p.resume || !moved {
            return Ok(());
        }
        if fs::symlink_metadata(&p.final_path).is_ok_and(|m| m.is_file()) {
            return Ok(());
        }
        // Not while another transfer writes it.
        let _claim = Self::claim(&p.part)?;
        let aside = Self::aside_path(&p.final_path);
        fs::rename(&p.part, &aside).map_err(Error::file("setting aside", &p.part))?;
        remove_if_present(&p.journal).map_err(Error::file("removing stale", &p.journal))?;
        p.existing = Some(aside);
        p.resume = false;
        Ok(())
    }

    /// The mode a new part file for `entry`, in a directory this run made where files are
    /// created plainly ([`Known::Made`]), is created with so that it already has what
    /// [`Destination::set_metadata`] would give it: its owner and group are the ones given
    /// (this process's, or none given), and the mode is the entry's final one, which the umask
    /// leaves whole. `None` where either call is still needed: another owner or group; setuid,
    /// setgid or sticky (a change of owner clears them, so they are set last); or a mode
    /// without read and write for the owner (the part file is written, and may be opened
    /// again, by its owner). A part file so made is never more open than its source's mode,
    /// as the 0600 one it replaces.
    fn created_mode(&self, entry: &Entry) -> Option<u32> {
        let umask = self.process_umask?;
        let given = self.owners.given(&entry.owner);
        let (uid, gid) = self.creator;
        let ours = given.uid.is_none_or(|u| u == uid) && given.gid.is_none_or(|g| g == gid);
        let mode = self.mode(entry.mode, given) & 0o7777;
        (ours && mode & 0o7000 == 0 && mode & 0o600 == 0o600 && mode & umask == 0).then_some(mode)
    }

    /// The regular file a manifest path names, if there is one, without creating anything
    /// (for comparisons). Refuses paths that pass through a symlink.
    pub fn existing_file(&self, rel: &str) -> Result<Option<PathBuf>> {
        let parts = path::validate(rel).map_err(|e| Error::Destination {
            path: rel.to_owned(),
            why: e.to_string(),
        })?;
        let mut at = self.root.clone();
        for (i, part) in parts.iter().enumerate() {
            at.push(local_name(part));
            let Ok(m) = fs::symlink_metadata(&at) else {
                return Ok(None);
            };
            let last = i + 1 == parts.len();
            if m.file_type().is_symlink() || (!last && !m.is_dir()) || (last && !m.is_file()) {
                return Ok(None);
            }
        }
        Ok(Some(at))
    }

    /// Opens (creating if needed) a part file for writing, refusing to follow a symlink. A new
    /// part file is readable by its owner alone (as rsync's temporary files are) until it is
    /// verified and takes the source's mode: a 0600 source is never world-readable here, even
    /// half-written after an interruption.
    pub fn open_part(part: &Path) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(part)
    }

    /// Creates the part file `part`, which must not exist yet, with the permission bits `mode`
    /// ([`Prepared::create_mode`]): made by this call, it has this process's owner and group
    /// and that mode, and [`Destination::set_mtime`] is all it still needs once verified.
    pub fn create_part(part: &Path, mode: u32) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        File::options()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(part)
    }

    /// Claims the existing file at `path` (a part file, or a file written in place) for this
    /// process until the returned handle is closed. Two transfers writing one destination file
    /// at once (two `copy` commands, or a second `recv` into the same directory) would otherwise
    /// write one part file together and rename a mix of both under the final name, each
    /// verified against its own hashes. The claim is an exclusive `flock`, taken before anything
    /// reads or writes the file and given up once it is renamed into place or removed; the
    /// second transfer's file fails at once. Opened read-only: the owner of a 0444 file written
    /// in place may claim it too.
    pub fn claim(path: &Path) -> Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(Error::file("opening", path))?;
        Self::lock(&f, path)?;
        Ok(f)
    }

    /// Takes the exclusive claim of [`Destination::claim`] on the open file `f`.
    pub fn lock(f: &File, part: &Path) -> Result<()> {
        match rustix::fs::flock(f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::Destination {
                path: part.display().to_string(),
                why: "another sluice is writing this file now (it holds a lock on it): run \
                      again once that transfer has ended"
                    .into(),
            }),
            // A filesystem without locks: the claim is only a safeguard.
            Err(_) => Ok(()),
        }
    }

    /// Opens a part file for `O_DIRECT` writes of aligned blocks, or `None` where the
    /// filesystem refuses direct I/O.
    pub fn open_part_direct(part: &Path) -> Option<File> {
        use std::os::unix::fs::OpenOptionsExt;
        File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECT)
            .open(part)
            .ok()
    }

    /// Gives a verified file its permissions and mtime, through a read-only handle: the owner
    /// may change both on a file it cannot write (a 0444 file, as in `.git/objects`), and a
    /// handle opened for writing would be refused there.
    pub fn apply_metadata(&self, entry: &Entry, path: &Path) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(Error::file("opening", path))?;
        self.set_metadata(&f, entry, path)
    }

    /// Gives the open verified file `f` (at `path`) the entry's owner and group (where this
    /// receiver gives them), then its permissions (under the receiver's umask) and mtime.
    pub fn set_metadata(&self, f: &File, entry: &Entry, path: &Path) -> Result<()> {
        let given = self.owners.given(&entry.owner);
        Self::give(f, given, path)?;
        f.set_permissions(fs::Permissions::from_mode(self.mode(entry.mode, given)))
            .map_err(Error::file("setting permissions of", path))?;
        Self::set_mtime(f, entry, path)
    }

    /// Gives the open verified file `f` (at `path`) the entry's mtime alone: for a part file
    /// made with its owner, group and mode already right ([`Destination::create_part`]).
    pub fn set_mtime(f: &File, entry: &Entry, path: &Path) -> Result<()> {
        f.set_times(FileTimes::new().set_modified(mtime(entry)))
            .map_err(Error::file("setting mtime of", path))
    }

    /// Renames a verified part file, its metadata set ([`Destination::set_metadata`]), over
    /// the final name.
    /// `journaled`: the part file may have a journal beside it, removed now.
    pub fn commit(&self, part: &Path, final_path: &Path, journaled: bool) -> Result<()> {
        fs::rename(part, final_path).map_err(Error::file("renaming into place", final_path))?;
        // The journal served its part file. A leftover one is removed by the next run that
        // prepares this name without a part file, so a failure here is not the transfer's.
        if journaled {
            let _ = fs::remove_file(Self::journal_path(final_path));
        }
        Ok(())
    }

    /// Makes `entry`, a [`EntryKind::HardLink`], a second name of the file its `link_target`
    /// names (in place by now), replacing what holds its name unless that already is this file.
    pub fn create_hard_link(&self, entry: &Entry) -> Result<()> {
        let at = self.resolve(&entry.path)?;
        let target = self.resolve(&entry.link_target)?;
        let file = fs::symlink_metadata(&target).map_err(Error::file("linking to", &target))?;
        if !file.is_file() {
            return Err(Error::Destination {
                path: entry.path.clone(),
                why: format!("{} is not a file here; not linked", entry.link_target),
            });
        }
        let there = fs::symlink_metadata(&at);
        if there
            .as_ref()
            .is_ok_and(|m| m.dev() == file.dev() && m.ino() == file.ino())
        {
            return Ok(());
        }
        self.clear_for_link(entry, &at, there)?;
        fs::hard_link(&target, &at).map_err(Error::file("creating hard link", &at))
    }

    /// Removes what holds `at` (`there`: its metadata), the name of link `entry`: a file or
    /// symlink, or a directory if entries whose type changed are replaced (`--delete`).
    fn clear_for_link(
        &self,
        entry: &Entry,
        at: &Path,
        there: std::io::Result<fs::Metadata>,
    ) -> Result<()> {
        match there {
            Ok(m) if m.is_dir() && self.replacing() => {
                let by = match entry.kind {
                    sluice_proto::message::EntryKind::HardLink => "a hard link",
                    _ => "a symlink",
                };
                self.replace_dir(entry, at, by)
            }
            Ok(m) if m.is_dir() => Err(Error::Destination {
                path: entry.path.clone(),
                why: "a directory of that name is in the way (--delete replaces it)".into(),
            }),
            Ok(_) => fs::remove_file(at).map_err(Error::file("replacing", at)),
            Err(_) => Ok(()),
        }
    }

    /// Creates a symlink entry, replacing a file or link of the same name.
    pub fn create_symlink(&self, entry: &Entry) -> Result<()> {
        let at = self.resolve(&entry.path)?;
        self.clear_for_link(entry, &at, fs::symlink_metadata(&at))?;
        std::os::unix::fs::symlink(local_name(&entry.link_target), &at)
            .map_err(Error::file("creating symlink", &at))?;
        // The link's own mtime, set on the link and not on what it points to (as `rsync -a`).
        // A filesystem that cannot keep it does not fail the transfer.
        let t = rustix::fs::Timespec {
            tv_sec: entry.mtime_sec,
            tv_nsec: entry.mtime_nsec.into(),
        };
        let times = rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        };
        if let Err(e) = rustix::fs::utimensat(
            rustix::fs::CWD,
            &at,
            &times,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        ) {
            tracing::debug!(path = %at.display(), "cannot set the symlink's mtime ({e})");
        }
        // The link's own owner (lchown), not its target's.
        let given = self.owners.given(&entry.owner);
        if given.any() {
            let (uid, gid) = given.rustix();
            rustix::fs::chownat(
                rustix::fs::CWD,
                &at,
                uid,
                gid,
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| owner_error(e, given, &at))?;
        }
        Ok(())
    }

    /// Part files and journals of earlier, interrupted transfers that this one did not use: in
    /// the directories of `entries` that were there before this run, those whose file is not in
    /// `entries` (its source was renamed or removed since) and that no transfer holds now. Their
    /// count and the first one's path; `--delete` removes them, nothing else does. A name cut
    /// short for its length (its final name cannot be told from it) is left out.
    pub fn stale_parts(&self, entries: &[Entry]) -> (u64, Option<PathBuf>) {
        let named: std::collections::HashSet<&str> =
            entries.iter().map(|e| e.path.as_str()).collect();
        let (mut count, mut first) = (0, None);
        let dirs = entries
            .iter()
            .filter(|e| e.kind == sluice_proto::message::EntryKind::Dir);
        for dir in dirs {
            let Ok(at) = self.resolve(&dir.path) else {
                continue;
            };
            if self.dirs.get(&at) != Some(Known::Found) {
                continue;
            }
            let Ok(children) = fs::read_dir(&at) else {
                continue;
            };
            for child in children.flatten() {
                let name = wire_name(&child.file_name());
                let Some(file) = [PART_SUFFIX, JOURNAL_SUFFIX]
                    .iter()
                    .find_map(|s| name.strip_suffix(s)?.strip_prefix('.'))
                else {
                    continue;
                };
                // A part file set aside ([`Destination::aside_path`]) belongs to the file its
                // inner part name names.
                let file = file
                    .strip_suffix(PART_SUFFIX)
                    .and_then(|f| f.strip_prefix('.'))
                    .filter(|f| !f.is_empty())
                    .unwrap_or(file);
                if file.is_empty() || named.contains(format!("{}/{file}", dir.path).as_str()) {
                    continue;
                }
                // Only regular files are looked into: opening a FIFO of that name would wait
                // for a writer, and a symlink's target is none of ours.
                if !child.file_type().is_ok_and(|t| t.is_file()) {
                    continue;
                }
                // Held by a transfer under way (its claim): not stale.
                let path = child.path();
                let opened = {
                    use std::os::unix::fs::OpenOptionsExt;
                    File::options()
                        .read(true)
                        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                        .open(&path)
                };
                let held = opened.is_ok_and(|f| {
                    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared)
                        .is_err_and(|e| e == rustix::io::Errno::WOULDBLOCK)
                });
                if !held {
                    count += 1;
                    first.get_or_insert(path);
                }
            }
        }
        (count, first)
    }

    /// Removes what the manifest's directories hold beyond what the manifest names (as
    /// `rsync --delete`); only inside directories the manifest names, never through a symlink,
    /// and never what `excludes` matches (the sender's exclude patterns: it left such entries
    /// out, so the manifest not naming them says nothing), nor a directory holding such an
    /// entry. `removed_one` hears of each entry removed (its path as the manifest would name
    /// it, and whether it was a directory, removed with all it held and then named once), also
    /// when another could not be removed and the call fails; each that could not is named in
    /// a warning, and the error names the first and counts the rest. Returns how many entries
    /// were removed.
    pub fn delete_extraneous(
        &self,
        entries: &[Entry],
        excludes: &Excludes,
        mut removed_one: impl FnMut(String, bool),
    ) -> Result<u64> {
        let named: std::collections::HashSet<&str> =
            entries.iter().map(|e| e.path.as_str()).collect();
        let mut removed = 0;
        let mut removal = Removal::default();
        for dir in entries
            .iter()
            .filter(|e| e.kind == sluice_proto::message::EntryKind::Dir)
        {
            let at = self.resolve(&dir.path)?;
            if !fs::symlink_metadata(&at).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            for child in fs::read_dir(&at).map_err(Error::file("listing", &at))? {
                let child = child.map_err(Error::file("listing", &at))?;
                let name = wire_name(&child.file_name());
                let rel = format!("{}/{name}", dir.path);
                if named.contains(rel.as_str()) {
                    continue;
                }
                let path = child.path();
                let is_dir = child.file_type().is_ok_and(|t| t.is_dir());
                if excludes.excludes_entry(&rel, is_dir) {
                    continue;
                }
                remove_tree(&path, rel, is_dir, excludes, &mut removal);
                for (rel, dir) in removal.removed.drain(..) {
                    removed_one(rel, dir);
                    removed += 1;
                }
                let unlisted = std::mem::take(&mut removal.unlisted);
                unlisted_warning(unlisted, &path);
                removed += unlisted;
            }
        }
        let more = removal.failures.saturating_sub(1);
        match removal.first_failure {
            None => Ok(removed),
            Some((path, e)) => {
                let mut why = e.to_string();
                if more > 0 {
                    why += &format!(" (and {more} more entries could not be deleted)");
                }
                // The summary is not printed when the run fails: the count is said here.
                why += &match removed {
                    0 => "; nothing was deleted".to_string(),
                    1 => "; 1 entry was deleted".to_string(),
                    n => format!("; {n} entries were deleted"),
                };
                Err(Error::file("deleting", &path)(io::Error::new(
                    e.kind(),
                    why,
                )))
            }
        }
    }

    /// Flushes to disk the directories that hold `entries` (each once), so renames and new
    /// names in them survive a crash.
    pub fn sync_dirs(&self, entries: &[Entry]) -> Result<()> {
        // Each directory once, by its name on the wire (no path built per entry).
        let parents: std::collections::BTreeSet<&str> = entries
            .iter()
            .map(|e| e.path.rsplit_once('/').map_or("", |(parent, _)| parent))
            .collect();
        for parent in parents {
            let dir = match parent {
                "" => self.root.clone(),
                p => self.root.join(local_name(p)),
            };
            // A directory that failed to be made has nothing to flush.
            let Ok(d) = File::open(&dir) else { continue };
            d.sync_all()
                .map_err(Error::file("flushing directory", &dir))?;
        }
        Ok(())
    }

    /// Sets a directory's owner and group (where this receiver gives them), permissions and
    /// mtime (done last, after its contents are in place).
    pub fn finish_dir(&self, entry: &Entry) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let at = self.resolve(&entry.path)?;
        if !fs::symlink_metadata(&at).is_ok_and(|m| m.is_dir()) {
            return Ok(());
        }
        // Times first: a mode without read permission (0o000, 0o311) would keep its owner from
        // opening it afterwards.
        let d = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
            .open(&at)
            .map_err(Error::file("opening", &at))?;
        d.set_times(FileTimes::new().set_modified(mtime(entry)))
            .map_err(Error::file("setting mtime of", &at))?;
        let given = self.owners.given(&entry.owner);
        Self::give(&d, given, &at)?;
        d.set_permissions(fs::Permissions::from_mode(self.mode(entry.mode, given)))
            .map_err(Error::file("setting permissions of", &at))
    }
}

/// Says how many entries a removal below `at` took without naming them (past the number it
/// lists, where the directory itself could not go).
fn unlisted_warning(unlisted: u64, at: &Path) {
    if unlisted > 0 {
        tracing::warn!(
            "{unlisted} more entries were deleted below {}, not named one by one",
            at.display()
        );
    }
}

/// A failed `chown`, naming the file and the owner it was to get, and what leaves owners alone.
fn owner_error(e: rustix::io::Errno, given: Given, path: &Path) -> Error {
    Error::file("setting owner and group of", path)(io::Error::new(
        io::Error::from(e).kind(),
        format!(
            "to {given}: {} (a filesystem that cannot keep owners? --no-owner and --no-group \
             leave them to the receiving user)",
            io::Error::from(e)
        ),
    ))
}

/// See [`Destination::names_exact`].
fn names_exact(dir: &Path) -> bool {
    const EXT: i64 = 0xEF53;
    const BTRFS: i64 = 0x9123_683E;
    const F2FS: i64 = 0xF2F5_2010;
    const TMPFS: i64 = 0x0102_1994;
    // FS_CASEFOLD_FL (linux/fs.h), which rustix does not name.
    const CASEFOLD: u32 = 0x4000_0000;
    let Ok(fs) = rustix::fs::statfs(dir) else {
        return false;
    };
    #[allow(clippy::unnecessary_cast)]
    let kind = fs.f_type as i64;
    if ![EXT, BTRFS, F2FS, TMPFS].contains(&kind) {
        return false;
    }
    let Ok(d) = File::open(dir) else {
        return false;
    };
    match rustix::fs::ioctl_getflags(&d) {
        Ok(flags) => flags.bits() & CASEFOLD == 0,
        // A tmpfs without inode attributes (before Linux 6.0) has no casefold either.
        Err(e) => kind == TMPFS && e == rustix::io::Errno::NOTTY,
    }
}

/// Which manifest entry each inode written in this run belongs to. Two entries must never reach
/// one file: a hostile manifest can try, and an honest one does where the destination folds
/// case (`xt_DSCP.h` and `xt_dscp.h` on exFAT, vfat or casefolded ext4) or normalises Unicode.
/// Names cannot show it; inode numbers can. Every part file is claimed when the writer opens it,
/// a file written in place when it is prepared, and a final name is checked before it is
/// given: an entry that meets another's inode fails, naming both.
#[derive(Debug, Clone, Default)]
pub struct Claims(Arc<Mutex<HashMap<Inode, (u32, String)>>>);

/// A file's device and inode numbers.
type Inode = (u64, u64);

impl Claims {
    /// Claims the file `f` (or `meta`) for entry `id` at manifest path `rel`; an error names
    /// the entry that already holds it.
    pub fn claim(&self, id: u32, rel: &str, meta: &fs::Metadata) -> Result<()> {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match held.get(&(meta.dev(), meta.ino())) {
            Some((other, other_rel)) if *other != id => Err(same_file(rel, other_rel)),
            Some(_) => Ok(()),
            None => {
                held.insert((meta.dev(), meta.ino()), (id, rel.to_owned()));
                Ok(())
            }
        }
    }

    /// Whether the file at `path` (if any) belongs to an entry other than `id`; an error names
    /// it.
    pub fn check_free(&self, id: u32, rel: &str, path: &Path) -> Result<()> {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return Ok(());
        };
        let held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match held.get(&(meta.dev(), meta.ino())) {
            Some((other, other_rel)) if *other != id => Err(same_file(rel, other_rel)),
            _ => Ok(()),
        }
    }

    /// Forgets entry `id`'s claim on `meta`'s inode (its part file was removed).
    pub fn release(&self, id: u32, meta: &fs::Metadata) {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if held
            .get(&(meta.dev(), meta.ino()))
            .is_some_and(|(o, _)| *o == id)
        {
            held.remove(&(meta.dev(), meta.ino()));
        }
    }
}

fn same_file(rel: &str, other: &str) -> Error {
    Error::Destination {
        path: rel.to_owned(),
        why: format!(
            "it names the same file here as {other:?} (is the destination case-insensitive?); \
             not written"
        ),
    }
}

/// The process's umask, read without changing it (`/proc/self/status`, Linux 4.7 and later);
/// `None` where it cannot be read.
fn process_umask() -> Option<u32> {
    fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
    })
}

/// Whether a file created in the directory `dir`, just made by this process (whose group is
/// `gid`), gets that group and the mode it is created with less the umask ([`Known::Made`]):
/// the directory's group is `gid`, so the group a new file takes is `gid` whichever rule gives
/// it (setgid directory, `grpid` mount or neither), and there is no default ACL. A check that
/// fails says no.
fn plain_dir(dir: &Path, gid: u32) -> bool {
    let ours = fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir() && m.gid() == gid);
    let no_default_acl = matches!(
        rustix::fs::lgetxattr_query(dir, "system.posix_acl_default"),
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP)
    );
    ours && no_default_acl
}

/// Removes the file at `p`, if there is one.
fn remove_if_present(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// `.NAME{suffix}` beside `path`.
/// `.NAME{suffix}` beside `path`. A name too long for that (the limit of a name is 255 bytes
/// on Linux filesystems) keeps as much of its start as fits, then `~` and 16 hex digits of its
/// BLAKE3 hash, as rsync shortens its temporary names: a 250-byte name is received like any
/// other, and two long names that share their start still get two part files.
fn hidden_sibling(path: &Path, suffix: &str) -> PathBuf {
    const NAME_MAX: usize = 255;
    let name = path.file_name().map(OsStrExt::as_bytes).unwrap_or_default();
    let hidden = |kept: &[u8], tag: &str| {
        let mut n = Vec::with_capacity(NAME_MAX);
        n.push(b'.');
        n.extend_from_slice(kept);
        n.extend_from_slice(tag.as_bytes());
        n.extend_from_slice(suffix.as_bytes());
        path.with_file_name(std::ffi::OsStr::from_bytes(&n))
    };
    if 1 + name.len() + suffix.len() <= NAME_MAX {
        return hidden(name, "");
    }
    let tag = format!("~{}", &blake3::hash(name).to_hex()[..16]);
    let mut cut = (NAME_MAX - 1 - tag.len() - suffix.len()).min(name.len());
    // A UTF-8 name is cut between characters (continuation bytes are 0b10xxxxxx).
    while cut > 0 && cut < name.len() && name[cut] & 0xC0 == 0x80 {
        cut -= 1;
    }
    hidden(&name[..cut], &tag)
}

fn mtime(entry: &Entry) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(entry.mtime_nsec));
    if entry.mtime_sec >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(entry.mtime_sec as u64) + nanos
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(entry.mtime_sec.unsigned_abs()) + nanos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_symlinked_parents() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let dest = Destination::new(d.path().join("dest")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dest.root().join("evil")).unwrap();
        let err = dest.resolve("evil/x").unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(dest.resolve("../x").is_err());
        assert!(dest.resolve("/etc/x").is_err());
        assert_eq!(dest.resolve("ok/x").unwrap(), dest.root().join("ok/x"));
        assert!(dest.root().join("ok").is_dir());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    /// A part file another transfer has claimed is neither resumed nor, with `--restart`,
    /// removed from under it: the file fails, saying so.
    #[test]
    fn a_claimed_part_file_is_left_to_its_transfer() {
        let d = tempfile::tempdir().unwrap();
        let dest = Destination::new(d.path()).unwrap();
        let entry = Entry {
            id: 0,
            kind: sluice_proto::message::EntryKind::File,
            path: "f".into(),
            mode: 0o644,
            mtime_sec: 0,
            mtime_nsec: 0,
            size: 10,
            link_target: String::new(),
            version: [0; 16],
            owner: Default::default(),
        };
        let part = Destination::part_path(&d.path().join("f"));
        fs::write(&part, b"other's").unwrap();
        let held = Destination::claim(&part).unwrap();
        // Another open file description: as another process's claim would be.
        for restart in [false, true] {
            let p = dest.prepare_file(&entry, restart).map(|p| p.resume);
            let claimed = p.and_then(|resume| {
                assert!(resume, "the part file is there to resume");
                Destination::claim(&part)
            });
            let err = claimed.unwrap_err().to_string();
            assert!(err.contains("another sluice is writing"), "{err}");
            assert_eq!(fs::read(&part).unwrap(), b"other's");
        }
        drop(held);
        assert!(dest.prepare_file(&entry, true).is_ok());
        assert!(!part.exists(), "--restart removes an unclaimed part file");
    }

    /// Two entries that reach one file (as `xt_DSCP.h` and `xt_dscp.h` do on a case-insensitive
    /// destination; a second hard link stands in for the second name here) are caught by inode,
    /// whatever their names.
    #[test]
    fn two_names_for_one_file_are_caught_by_inode() {
        let d = tempfile::tempdir().unwrap();
        let dest = Destination::new(d.path()).unwrap();
        let upper = d.path().join(".xt_DSCP.h.sluice-part");
        let lower = d.path().join(".xt_dscp.h.sluice-part");
        fs::write(&upper, b"part").unwrap();
        fs::hard_link(&upper, &lower).unwrap();
        let claims = dest.claims();
        claims
            .claim(1, "xt_DSCP.h", &fs::metadata(&upper).unwrap())
            .unwrap();
        // The same entry again is fine; another entry is refused, both named.
        claims
            .claim(1, "xt_DSCP.h", &fs::metadata(&upper).unwrap())
            .unwrap();
        let err = claims
            .claim(2, "xt_dscp.h", &fs::metadata(&lower).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("xt_dscp.h") && err.contains("xt_DSCP.h"),
            "{err}"
        );
        assert!(claims.check_free(2, "xt_dscp.h", &lower).is_err());
        assert!(claims.check_free(1, "xt_DSCP.h", &lower).is_ok());
        let other = d.path().join("other");
        fs::write(&other, b"x").unwrap();
        assert!(claims.check_free(2, "other", &other).is_ok());
        // Released (its part file removed), the inode is free again.
        claims.release(1, &fs::metadata(&upper).unwrap());
        assert!(claims.check_free(2, "xt_dscp.h", &lower).is_ok());
    }

    /// Names are exact on tmpfs (without casefold) and taken as folding on a filesystem not
    /// known to keep them exact (procfs stands for vfat, exFAT, CIFS, …): there inodes are
    /// claimed as before.
    #[test]
    #[allow(clippy::unnecessary_cast)]
    fn names_are_exact_only_where_the_filesystem_is_known() {
        assert!(!names_exact(Path::new("/proc")));
        assert!(!names_exact(Path::new("/no/such/directory")));
        let shm = Path::new("/dev/shm");
        let tmpfs = rustix::fs::statfs(shm).is_ok_and(|s| s.f_type as i64 == 0x0102_1994);
        if tmpfs {
            assert!(names_exact(shm));
        }
    }

    /// Modes asked for by the sender lose what the receiver's umask clears, and setuid and
    /// setgid unless the entry was given its owner and group.
    #[test]
    fn modes_lose_setuid_and_the_umask() {
        let d = tempfile::tempdir().unwrap();
        let mut dest = Destination::new(d.path()).unwrap();
        let none = Given::default();
        dest.umask = 0o022;
        assert_eq!(dest.mode(0o4777, none), 0o755);
        assert_eq!(dest.mode(0o666, none), 0o644);
        assert_eq!(dest.mode(0o1777, none), 0o1755);
        dest.umask = 0o077;
        assert_eq!(dest.mode(0o644, none), 0o600);
        dest.exact_modes();
        assert_eq!(dest.mode(0o6775, none), 0o775);
        assert_eq!(dest.mode(0o1777, none), 0o1777);
        let owner = Given {
            uid: Some(1234),
            gid: None,
        };
        assert_eq!(dest.mode(0o6775, owner), 0o4775);
        let both = Given {
            uid: Some(1234),
            gid: Some(5678),
        };
        assert_eq!(dest.mode(0o6775, both), 0o6775);
    }

    #[test]
    fn long_names_get_part_and_journal_names_that_fit() {
        let dir = Path::new("/d");
        for len in [1, 200, 236, 237, 240, 255] {
            // Multi-byte characters, so a cut must fall between them.
            let name: String = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let at = dir.join(&name);
            for p in [Destination::part_path(&at), Destination::journal_path(&at)] {
                let n = p.file_name().unwrap().to_str().unwrap();
                assert!(n.len() <= 255, "{len}: {} bytes", n.len());
                assert!(sluice_proto::path::is_reserved(n), "{n}");
                assert_eq!(p.parent(), Some(dir));
            }
        }
        // Two long names that share their first 230 bytes get two part files.
        let a = "a".repeat(230) + &"b".repeat(25);
        let b = "a".repeat(230) + &"c".repeat(25);
        assert_ne!(
            Destination::part_path(&dir.join(a)),
            Destination::part_path(&dir.join(b))
        );
    }
}
