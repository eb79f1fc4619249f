//! The resume journal: which blocks of a part file are verified and on disk.
//!
//! Beside each part file `.NAME.sluice-part` the writer thread keeps `.NAME.sluice-journal`: a
//! 48-byte header, then one 40-byte record per block written. The journal is made at its first
//! record, so a file finished within one batch never has one (10,000 files of 4 KiB: 2.1–3.0 s
//! against 2.8–5.0 s on this VM's ext4, 0.74–0.92 s against 0.88–0.98 s on tmpfs). A record is appended only after
//! the block was verified against the sender's hash, written, and made durable with
//! `fdatasync` on the part file (in batches of [`BATCH`] blocks), so every record names bytes
//! that are on disk. When a transfer resumes, the receiver reports the journaled blocks as held
//! without reading them back — the point: re-reading a part file written with `O_DIRECT` comes
//! from the disk, not the page cache, and competes with the new writes (a 1 GiB resume after a
//! kill at 50 % took longer than a full copy). Blocks of the part file without a record are
//! hashed as before. A resumed run that rewrites a block an earlier run journaled (the source
//! changed in between) first appends a durable tombstone for it, so the old record can never
//! vouch for the new bytes.
//!
//! Trust: the journal is believed only for the part file it was written for (same inode, same
//! file size and block size), and a journal without a part file is removed before a new part file
//! is made (inode numbers are reused). The header also names the source version
//! ([`sluice_proto::message::Entry::version`]) being sent when it was written; a run that sends
//! another version starts the journal afresh when it writes its first block. When a resumed run sends the same version, the
//! receiver vouches for the recorded blocks to the sender ([`sluice_proto::message::Message::Vouched`]),
//! which then need not read them at its end either. It cannot see a part file changed by another program between two
//! runs; the part file is a hidden file of our own, and such a change is treated like one to
//! the destination after a transfer.
//!
//! ```text
//! header:  magic "SLUICEJ2" (8) | block size u32 LE | 0u32 | file size u64 LE | part inode u64 LE
//!          | source version (16)
//! record:  block index u64 LE | BLAKE3 chaining value of the block (32)
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use sluice_proto::message::{Digest, SourceVersion};
use sluice_proto::session::block_count;

const MAGIC: [u8; 8] = *b"SLUICEJ2";
const HEADER_LEN: usize = 48;
const RECORD_LEN: usize = 40;

/// Blocks per `fdatasync` of the part file and append to the journal. 16 (16 MiB at the default
/// block size): a kill loses at most 16 blocks' records (those blocks are hashed on resume
/// instead), and the sync costs ~1 % of a full copy's time (see `docs/decisions.md`).
pub const BATCH: usize = 16;

/// What a journal describes, besides its part file: the file's size, the block size it is cut
/// into, and the source version being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// Block size of the transfer.
    pub block_size: u32,
    /// The file's size.
    pub size: u64,
    /// The source version (all zero: unknown).
    pub version: SourceVersion,
}

fn header(key: &Key, inode: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&key.block_size.to_le_bytes());
    h[16..24].copy_from_slice(&key.size.to_le_bytes());
    h[24..32].copy_from_slice(&inode.to_le_bytes());
    h[32..48].copy_from_slice(&key.version);
    h
}

/// The header of the journal at `path`, if it has one.
fn read_header(path: &Path) -> Option<[u8; HEADER_LEN]> {
    let mut head = [0u8; HEADER_LEN];
    File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?
        .read_exact(&mut head)
        .ok()?;
    Some(head)
}

/// The file size the journal at `path` was written for, if it is a journal.
pub fn size_of(path: &Path) -> Option<u64> {
    let head = read_header(path)?;
    (head[..8] == MAGIC).then(|| u64::from_le_bytes(head[16..24].try_into().unwrap_or_default()))
}

/// What a journal records of its part file.
#[derive(Debug, Default)]
pub struct Journaled {
    /// Blocks verified and on disk, with their hashes.
    pub blocks: HashMap<u64, Digest>,
    /// The journal was written while the same (known) source version was sent, so its records
    /// can be vouched for to the sender.
    pub vouched: bool,
}

/// Appends records for one part file.
#[derive(Debug)]
pub struct JournalWriter {
    /// The journal, once there is one: a file without an earlier journal gets one at its first
    /// record, so a file finished within one batch (small files) never makes one.
    file: Option<File>,
    header: [u8; HEADER_LEN],
    pending: Vec<(u64, Digest)>,
    /// Blocks an earlier run recorded: rewriting one first needs a durable tombstone, or the
    /// old record would vouch for bytes no longer there if this run stops before its own.
    earlier: std::collections::HashSet<u64>,
    path: std::path::PathBuf,
    /// A write failed: the journal was removed and nothing more is journaled.
    broken: bool,
}

/// The hash a tombstone record carries: "forget what was recorded for this block".
const TOMBSTONE: Digest = [0; 32];

impl JournalWriter {
    /// Opens the journal at `path` for the open part file `part`: appends to it if it was
    /// written for this part file and `key` (source version included), else starts it afresh.
    /// A torn last record (a run stopped inside a write) is cut off first, so what is appended
    /// starts on a record boundary.
    pub fn open(path: &Path, part: &File, key: &Key) -> io::Result<Self> {
        let want = header(key, part.metadata()?.ino());
        let earlier = match read(path, part.metadata()?.ino(), key) {
            Some((head, blocks)) if head == want => Some(blocks.into_keys().collect()),
            _ => None,
        };
        let file = match earlier {
            Some(_) => {
                let f = File::options()
                    .append(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)?;
                let len = f.metadata()?.len();
                let whole = HEADER_LEN as u64
                    + (len.saturating_sub(HEADER_LEN as u64) / RECORD_LEN as u64)
                        * RECORD_LEN as u64;
                if whole != len {
                    f.set_len(whole)?;
                }
                Some(f)
            }
            // Another journal (another part file, file size, block size or source version)
            // must not outlive this run's first write: started afresh now.
            None if std::fs::symlink_metadata(path).is_ok() => Some(create(path, &want)?),
            None => None,
        };
        Ok(Self {
            file,
            header: want,
            path: path.to_path_buf(),
            pending: Vec::new(),
            earlier: earlier.unwrap_or_default(),
            broken: false,
        })
    }

    /// The journal file, made (with its header) if there is none yet.
    fn file(&mut self) -> io::Result<&mut File> {
        match &mut self.file {
            Some(f) => Ok(f),
            file => Ok(file.insert(create(&self.path, &self.header)?)),
        }
    }

    /// After a failed write the journal may end in a torn record: it is removed (the part file
    /// is then re-hashed on resume) and nothing more is journaled.
    fn fail(&mut self, e: io::Error) -> io::Error {
        self.broken = true;
        self.pending.clear();
        if std::fs::remove_file(&self.path).is_err() {
            if let Some(f) = &self.file {
                let _ = f.set_len(0);
            }
        }
        e
    }

    /// Call before block `index` is written: if an earlier run recorded it, appends a tombstone
    /// and makes it durable first.
    pub fn before_write(&mut self, index: u64) -> io::Result<()> {
        if self.broken || !self.earlier.remove(&index) {
            return Ok(());
        }
        let mut rec = [0u8; RECORD_LEN];
        rec[..8].copy_from_slice(&index.to_le_bytes());
        rec[8..].copy_from_slice(&TOMBSTONE);
        let written = self
            .file()
            .and_then(|f| f.write_all(&rec).and_then(|()| f.sync_data()));
        match written {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Notes a block verified and written; it is journaled at the next [`JournalWriter::flush`].
    pub fn record(&mut self, index: u64, cv: Digest) {
        if !self.broken {
            self.pending.push((index, cv));
        }
    }

    /// Whether a batch is full.
    pub fn wants_flush(&self) -> bool {
        self.pending.len() >= BATCH
    }

    /// Whether blocks are noted and not journaled yet.
    pub fn is_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Forgets the noted blocks for good: the part file's data could not be made durable, so no
    /// record may ever name them. The journal is removed.
    pub fn abandon(&mut self) {
        let _ = self.fail(io::Error::other("abandoned"));
    }

    /// Makes the part file's data durable, then appends the noted blocks. If the data cannot be
    /// made durable, the journal is abandoned ([`JournalWriter::abandon`]).
    pub fn flush(&mut self, part: &File) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = part.sync_data() {
            self.abandon();
            return Err(e);
        }
        self.append()
    }

    /// Appends the noted blocks; the caller has made the part file's data durable.
    pub fn append(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(self.pending.len() * RECORD_LEN);
        for (index, cv) in self.pending.drain(..) {
            buf.extend_from_slice(&index.to_le_bytes());
            buf.extend_from_slice(&cv);
        }
        match self.file().and_then(|f| f.write_all(&buf)) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }
}

/// Makes the journal at `path` afresh, holding only `header`; readable by its owner alone, as
/// the part file it describes.
fn create(path: &Path, header: &[u8; HEADER_LEN]) -> io::Result<File> {
    let mut f = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(header)?;
    Ok(f)
}

/// Whether the header of the journal at `path` says it was written for the part file at `part`
/// and for `key` with a known source version: its records are then vouched for.
pub fn vouches(path: &Path, part: &Path, key: &Key) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(part) else {
        return false;
    };
    key.version != [0; 16] && read_header(path) == Some(header(key, meta.ino()))
}

/// The blocks the journal at `path` records as verified and on disk, if it was written for the
/// part file at `part` and a file of `key.size` bytes in blocks of `key.block_size` (under any
/// source version: the records describe the part file either way). `None` for a missing,
/// foreign or damaged journal (a torn last record is ignored).
pub fn load(path: &Path, part: &Path, key: &Key) -> Option<Journaled> {
    let inode = std::fs::symlink_metadata(part).ok()?.ino();
    let (head, blocks) = read(path, inode, key)?;
    Some(Journaled {
        blocks,
        vouched: key.version != [0; 16] && head == header(key, inode),
    })
}

/// The header and records (tombstones applied) of the journal at `path`, read through one
/// handle, if it is a journal for the part file with inode `inode` and a file of `key.size`
/// bytes in blocks of `key.block_size`, whatever source version it names.
fn read(path: &Path, inode: u64, key: &Key) -> Option<([u8; HEADER_LEN], HashMap<u64, Digest>)> {
    let count = block_count(key.size, key.block_size);
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    // A block is recorded about once per run that writes it (plus a tombstone when rewritten);
    // anything far longer is not ours, and costs only a re-scan.
    let limit = HEADER_LEN as u64 + RECORD_LEN as u64 * (4 * count + 64);
    if f.metadata().ok()?.len() > limit {
        return None;
    }
    // Streamed: memory grows with the records, not with the journal's bytes as well.
    let mut r = io::BufReader::new(f);
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head).ok()?;
    // Magic, block size, file size and part file; the version is the caller's business.
    if head[..32] != header(key, inode)[..32] {
        return None;
    }
    let mut blocks = HashMap::new();
    let mut rec = [0u8; RECORD_LEN];
    // A torn last record (a short read) ends the journal.
    while r.read_exact(&mut rec).is_ok() {
        let index = u64::from_le_bytes(rec[..8].try_into().ok()?);
        if index >= count {
            return None;
        }
        let cv: Digest = rec[8..].try_into().ok()?;
        if cv == TOMBSTONE {
            blocks.remove(&index);
        } else {
            blocks.insert(index, cv);
        }
    }
    Some((head, blocks))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory holding an empty part file `p` (open) and room for its journal `j`.
    pub(super) fn fixture() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        std::path::PathBuf,
        File,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("p");
        let journal = dir.path().join("j");
        let p = File::create(&part).unwrap();
        (dir, part, journal, p)
    }

    fn key(block_size: u32, size: u64) -> Key {
        Key {
            block_size,
            size,
            version: [7; 16],
        }
    }

    #[test]
    fn records_survive_and_belong_to_their_part_file() {
        let (_dir, part, journal, p) = fixture();
        let mut w = JournalWriter::open(&journal, &p, &key(1024, 10_000)).unwrap();
        w.record(3, [3; 32]);
        w.record(9, [9; 32]);
        assert!(!w.wants_flush());
        w.flush(&p).unwrap();
        drop(w);
        // Reopened for the same part file: appends.
        let mut w = JournalWriter::open(&journal, &p, &key(1024, 10_000)).unwrap();
        w.record(4, [4; 32]);
        w.flush(&p).unwrap();
        let got = load(&journal, &part, &key(1024, 10_000)).unwrap();
        assert!(got.vouched);
        assert!(vouches(&journal, &part, &key(1024, 10_000)));
        let got = got.blocks;
        assert_eq!(got.len(), 3);
        assert_eq!(got[&9], [9; 32]);
        // Another size, block size or part file: not believed.
        assert!(load(&journal, &part, &key(1024, 10_001)).is_none());
        assert!(load(&journal, &part, &key(2048, 10_000)).is_none());
        std::fs::remove_file(&part).unwrap();
        File::create(&part).unwrap();
        assert!(load(&journal, &part, &key(1024, 10_000)).is_none());
    }

    #[test]
    fn rewriting_an_earlier_block_buries_its_record_first() {
        let (_dir, part, journal, p) = fixture();
        let mut w = JournalWriter::open(&journal, &p, &key(1024, 8192)).unwrap();
        w.record(2, [2; 32]);
        w.record(5, [5; 32]);
        w.flush(&p).unwrap();
        drop(w);
        // A later run rewrites block 2 and stops before journaling it.
        let mut w = JournalWriter::open(&journal, &p, &key(1024, 8192)).unwrap();
        w.before_write(2).unwrap();
        w.before_write(7).unwrap();
        w.record(2, [9; 32]);
        drop(w);
        let got = load(&journal, &part, &key(1024, 8192)).unwrap().blocks;
        assert_eq!(got.len(), 1, "block 2 no longer vouched for: {got:?}");
        assert_eq!(got[&5], [5; 32]);
    }

    #[test]
    fn a_torn_record_is_ignored_and_a_foreign_index_refuses_the_journal() {
        let (_dir, part, journal, p) = fixture();
        let mut w = JournalWriter::open(&journal, &p, &key(1024, 4096)).unwrap();
        w.record(1, [1; 32]);
        w.flush(&p).unwrap();
        drop(w);
        let mut f = File::options().append(true).open(&journal).unwrap();
        f.write_all(&[7; 20]).unwrap();
        assert_eq!(
            load(&journal, &part, &key(1024, 4096))
                .unwrap()
                .blocks
                .len(),
            1
        );
        let mut bad = Vec::new();
        bad.extend_from_slice(&99u64.to_le_bytes());
        bad.extend_from_slice(&[0; 32]);
        let f = File::options().write(true).open(&journal).unwrap();
        f.set_len((HEADER_LEN + RECORD_LEN) as u64).unwrap();
        drop(f);
        let mut f = File::options().append(true).open(&journal).unwrap();
        f.write_all(&bad).unwrap();
        assert!(load(&journal, &part, &key(1024, 4096)).is_none());
    }

    #[test]
    fn a_journal_is_made_at_the_first_record_only() {
        let (_dir, part, journal, p) = fixture();
        let k = key(1024, 8192);
        // A file finished within one batch: nothing was ever flushed, no journal was made.
        let mut w = JournalWriter::open(&journal, &p, &k).unwrap();
        w.record(0, [1; 32]);
        drop(w);
        assert!(!journal.exists());
        let mut w = JournalWriter::open(&journal, &p, &k).unwrap();
        w.record(0, [1; 32]);
        w.flush(&p).unwrap();
        drop(w);
        assert_eq!(load(&journal, &part, &k).unwrap().blocks.len(), 1);
        // One for another source version is started afresh at once, before any write.
        let other = Key {
            version: [9; 16],
            ..k
        };
        let w = JournalWriter::open(&journal, &p, &other).unwrap();
        drop(w);
        let got = load(&journal, &part, &other).unwrap();
        assert!(got.blocks.is_empty() && got.vouched);
    }

    #[test]
    fn a_resumed_writer_cuts_a_torn_record_before_appending() {
        let (_dir, part, journal, p) = fixture();
        let k = key(1024, 8192);
        let mut w = JournalWriter::open(&journal, &p, &k).unwrap();
        w.record(1, [1; 32]);
        w.flush(&p).unwrap();
        drop(w);
        // A run stopped inside a write: the start of a record for block 2.
        let mut f = File::options().append(true).open(&journal).unwrap();
        f.write_all(&2u64.to_le_bytes()).unwrap();
        f.write_all(&[2; 12]).unwrap();
        drop(f);
        // Appended as is, the next record would be read from the torn one's bytes on.
        let mut w = JournalWriter::open(&journal, &p, &k).unwrap();
        w.record(3, [3; 32]);
        w.flush(&p).unwrap();
        drop(w);
        let got = load(&journal, &part, &k).unwrap().blocks;
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[&1], [1; 32]);
        assert_eq!(got[&3], [3; 32]);
    }
}

#[cfg(test)]
mod version_tests {
    use super::tests::fixture;
    use super::*;

    #[test]
    fn another_source_version_reads_the_records_but_vouches_for_none_and_restarts_the_journal() {
        let (_dir, part, journal, p) = fixture();
        let v1 = Key {
            block_size: 1024,
            size: 8192,
            version: [1; 16],
        };
        let v2 = Key {
            version: [2; 16],
            ..v1
        };
        let unknown = Key {
            version: [0; 16],
            ..v1
        };
        let mut w = JournalWriter::open(&journal, &p, &v1).unwrap();
        w.record(1, [1; 32]);
        w.flush(&p).unwrap();
        drop(w);
        // The records still describe the part file, whatever is being sent now.
        let got = load(&journal, &part, &v2).unwrap();
        assert_eq!(got.blocks.len(), 1);
        assert!(!got.vouched, "written for another source version");
        assert!(!vouches(&journal, &part, &v2));
        assert!(vouches(&journal, &part, &v1));
        // An unknown version is never vouched for, even when the journal says the same.
        let w = JournalWriter::open(&journal, &p, &unknown).unwrap();
        drop(w);
        assert!(!load(&journal, &part, &unknown).unwrap().vouched);
        assert!(!vouches(&journal, &part, &unknown));
        // Sending another version starts the journal afresh: no record of v1 survives to be
        // vouched for under v2.
        let w = JournalWriter::open(&journal, &p, &v2).unwrap();
        drop(w);
        let got = load(&journal, &part, &v2).unwrap();
        assert!(got.vouched);
        assert!(got.blocks.is_empty());
    }
}
