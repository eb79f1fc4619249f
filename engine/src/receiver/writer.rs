//! The receiver's writer thread: verifies each block against the hash in its header, then writes
//! it at its offset (io_uring; `O_DIRECT` for whole 4 KiB-aligned blocks), and assembles delta
//! files from the kept blocks of the old version. It reports every outcome to the control task.
//!
//! It owns the part files' handles: a file is opened on its first block and closed when the
//! control task says so, after the file is verified or has failed.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use sluice_proto::geometry::Geometry;
use sluice_proto::message::{piece_hash, piece_size, BlockHeader, Digest, Entry, PieceHash};
use tokio::sync::mpsc;

use crate::blockio::{self, Completion, Op, Request};
use crate::burst::Jobs;
use crate::config::Config;
use crate::dest::Destination;
use crate::error::{Error, Result};
use crate::journal::{self, JournalWriter};
use crate::merkle;
use crate::ring::{Buffer, ALIGN};

/// Work for the writer thread.
pub(super) enum Job {
    Write {
        file: u32,
        index: u64,
        header: BlockHeader,
        file_len: u64,
        buf: Buffer,
        /// Bytes of it that came over the wire.
        carried: u32,
        /// A moved block (not a moved patch), as it came: the older version's offset, its
        /// prefix's length and the piece size. If it fails verification, the sender hears which
        /// of its pieces the receiver holds ([`Written::MovedPieces`]), not merely that it failed.
        moved: Option<Moved>,
    },
    /// Bytes of one block (a patch, at their place in `buf`): the rest of the block comes from
    /// the file the receiver reported holding, then it is verified and written like a block.
    /// A moved block (`from`): its literal prefix is at the start of `buf` (`header.packed`
    /// bytes), and the rest comes from that file, from offset `from`.
    Patch {
        file: u32,
        index: u64,
        header: BlockHeader,
        file_len: u64,
        block_size: u64,
        buf: Buffer,
        from: Option<u64>,
        /// A spliced block: its runs and literal bytes (the older version's runs come from the
        /// file the patches complete from).
        splice: Option<Spliced>,
    },
    Open {
        file: u32,
        path: PathBuf,
        /// The file the receiver's copy of this file's blocks is in (patches complete from it).
        held_at: Option<PathBuf>,
        /// The older version a delta keeps blocks of: copied whole into the part file before
        /// the file's first block is written (see [`Job::Seal`]).
        base: Option<PathBuf>,
        /// The older version moved blocks are read from (`base`, or the final file beside a
        /// resumed part file).
        older: Option<PathBuf>,
        /// Where to journal the blocks written, for a part file (not in place).
        journal: Option<PathBuf>,
        /// What the journal is for.
        key: journal::Key,
        /// The part file is new, in a directory this run made: empty until written.
        fresh: bool,
        /// A new part file is created with this mode, its final one: made so, it needs only
        /// its mtime once verified ([`crate::dest::Prepared::create_mode`]).
        create_mode: Option<u32>,
        /// The writer takes this transfer's claim of the part file when it first opens it for
        /// writing ([`Destination::claim`]): the receiver holds none for it (it holds one
        /// for a part file it resumes, taken before the scan).
        claim: bool,
    },
    /// The sender found file `file` changed: copy its older version into the part file now,
    /// while the comparison goes on (see [`Job::Seal`]).
    CopyBase { file: u32, file_len: u64 },
    /// The file is verified: give the file it was written into (part file, or the final file in
    /// place) its length and make it durable (`fdatasync`), after copying `keep`, the kept
    /// blocks of a delta, into it from the old version. Answered by [`Written::Sealed`]; only
    /// then does the file take its final name.
    ///
    /// Nothing is copied if the whole old version was copied as soon as the file was known to
    /// differ (the sender's first `WantDetail`/`WantPieces` for it, or its first block): an
    /// unchanged file never gets a part file, and a changed one has its copy made while the
    /// comparison goes on, instead of after it (1 GiB, ten edits: the copy is ~0.5 s of disk
    /// writes).
    Seal {
        file: u32,
        /// Its manifest entry: size, mode and mtime to give it.
        entry: Entry,
        keep: Option<(PathBuf, Vec<(u64, usize)>)>,
        /// The final name a part file is renamed to once it is durable (`None` in place), and
        /// whether a resume journal may lie beside it.
        rename: Option<(PathBuf, bool)>,
    },
    /// The file is done with (verified, or failed): forget it, and remove these files once
    /// every earlier job has run (so none of them re-creates what was removed).
    Close {
        file: u32,
        remove: Vec<PathBuf>,
        /// The receiver's claim of the part file, given up once `remove` is done.
        lock: Option<File>,
    },
}

/// A spliced block as it came ([`sluice_proto::splice`]): its runs, and its payload, whose
/// literal bytes start at `literal_at`.
pub(super) struct Spliced {
    pub(super) runs: Vec<sluice_proto::splice::Run>,
    pub(super) payload: Vec<u8>,
    pub(super) literal_at: usize,
}

/// A moved block as the sender named it ([`Job::Write`]).
#[derive(Clone, Copy)]
pub(super) struct Moved {
    pub(super) from: u64,
    pub(super) prefix: u32,
    pub(super) piece: usize,
}

/// What the writer thread reports back.
pub(super) enum Written {
    /// Verified and written; `carried` of its bytes came over the wire (less than the block for
    /// a patch).
    Block {
        file: u32,
        index: u64,
        cv: Digest,
        carried: u32,
    },
    Corrupt {
        file: u32,
        index: u64,
        offset: u64,
    },
    /// A moved block failed verification: the older version's bytes are not all the block's.
    /// The piece hashes of the block as put together, for the sender to send the pieces that
    /// differ.
    MovedPieces {
        file: u32,
        index: u64,
        from: u64,
        prefix: u32,
        hashes: Vec<PieceHash>,
    },
    Failed {
        file: u32,
        error: Error,
    },
    /// [`Job::Seal`] is done: the file is durable and, if it was a part file, renamed.
    Sealed {
        file: u32,
    },
    /// Still copying the older version into the file's part file: `done` bytes so far (about
    /// once every [`WORKING_EVERY`]).
    Working {
        file: u32,
        done: u64,
    },
}

use crate::progress::WORKING_EVERY;

/// What a long copy for `file` calls as it goes: a [`Written::Working`], handed over at once,
/// about once every [`WORKING_EVERY`].
fn working(out: &Outbox, file: u32) -> impl FnMut(u64) + '_ {
    let mut last = std::time::Instant::now();
    move |done| {
        if last.elapsed() >= WORKING_EVERY {
            last = std::time::Instant::now();
            let _ = out.send(Written::Working { file, done });
            let _ = out.flush();
        }
    }
}

/// Reports to the control task, handed over in bursts: a thread that finishes many small files
/// in a row wakes the control task once for them, not once per file. Flushed before the thread
/// waits for anything, and every [`Outbox::BURST`] reports.
pub(super) struct Outbox {
    tx: mpsc::UnboundedSender<Vec<Written>>,
    pending: std::cell::RefCell<Vec<Written>>,
}

/// The control task is gone.
pub(super) struct Gone;

/// Where a worker thread takes its jobs from.
trait Queue<T> {
    fn try_recv(&mut self) -> std::result::Result<T, std_mpsc::TryRecvError>;
    fn recv(&mut self) -> Option<T>;
}

impl<T> Queue<T> for std_mpsc::Receiver<T> {
    fn try_recv(&mut self) -> std::result::Result<T, std_mpsc::TryRecvError> {
        std_mpsc::Receiver::try_recv(self)
    }
    fn recv(&mut self) -> Option<T> {
        std_mpsc::Receiver::recv(self).ok()
    }
}

impl<T> Queue<T> for Jobs<T> {
    fn try_recv(&mut self) -> std::result::Result<T, std_mpsc::TryRecvError> {
        Jobs::try_recv(self)
    }
    fn recv(&mut self) -> Option<T> {
        Jobs::recv(self)
    }
}

impl Outbox {
    const BURST: usize = 64;

    pub(super) fn new(tx: mpsc::UnboundedSender<Vec<Written>>) -> Self {
        Self {
            tx,
            pending: Default::default(),
        }
    }

    pub(super) fn send(&self, w: Written) -> std::result::Result<(), Gone> {
        let full = {
            let mut p = self.pending.borrow_mut();
            p.push(w);
            p.len() >= Self::BURST
        };
        if full {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// The next job of `jobs`: one already queued at once, else (after handing over what is
    /// pending, since this thread may now sleep) the next to come; `None` once `jobs` is closed.
    fn next<T>(&self, jobs: &mut impl Queue<T>) -> Option<T> {
        match jobs.try_recv() {
            Ok(job) => Some(job),
            Err(std_mpsc::TryRecvError::Empty) => {
                let _ = self.flush();
                jobs.recv()
            }
            Err(std_mpsc::TryRecvError::Disconnected) => None,
        }
    }

    pub(super) fn flush(&self) -> std::result::Result<(), Gone> {
        let burst = std::mem::take(&mut *self.pending.borrow_mut());
        if burst.is_empty() {
            return Ok(());
        }
        self.tx.send(burst).map_err(|_| Gone)
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// The writer thread: verifies each block against its header and writes it at its offset.
pub(super) fn write_blocks(
    config: &Config,
    dest: &Destination,
    mut jobs: Jobs<Job>,
    done_tx: mpsc::UnboundedSender<Vec<Written>>,
    stop: Arc<AtomicBool>,
) {
    let done = Outbox::new(done_tx);
    let (mut io, _) = blockio::open::<(u32, u64, Digest, u32)>(config.io_uring, config.write_depth);
    // `fdatasync` of verified files runs on a thread of its own, so a file's sync holds up
    // neither the writes of the next files nor the control task. 1,000 files of 1–64 KiB,
    // interleaved runs: 0.39–0.49 s against 0.35–0.50 s without the sync; on the control task
    // it was 0.45–0.65 s, on this (writer) thread 0.69–0.80 s.
    // At most SEALS_QUEUED files wait for it with a handle open; past that the writer waits.
    let (seal_tx, seal_rx) = std_mpsc::sync_channel::<Seal>(SEALS_QUEUED);
    let sealer_done = done.tx.clone();
    let sealer_dest = dest.clone();
    let sealer = std::thread::Builder::new()
        .name("sluice-seal".into())
        .spawn({
            let uring = config.io_uring;
            move || seal_files(&sealer_dest, seal_rx, sealer_done, uring)
        })
        .ok();
    // Without the thread (it could not be started), files are sealed here.
    let seal_tx = sealer.is_some().then_some(seal_tx);
    let mut faults = crate::fault::corrupt_blocks();
    // Packed blocks: the packed bytes are copied out of the block's buffer and unpacked into it.
    let mut unpacker = zstd::bulk::Decompressor::new().ok();
    let mut packed_copy = Vec::new();
    // What the writer knows of each file it has been told of, until it is sealed or closed.
    let mut targets: HashMap<u32, Target> = HashMap::new();
    let mut finished = Vec::new();
    let report = |finished: &mut Vec<Completion<(u32, u64, Digest, u32)>>,
                  targets: &mut HashMap<u32, Target>| {
        for c in finished.drain(..) {
            let (file, index, cv, carried) = c.req.tag;
            let target = targets.get_mut(&file);
            // A short write (the device took part of the block, typically a full disk): write
            // the rest through the page cache, which either completes it or names the error.
            let result = match (c.result, target.as_ref().and_then(|t| t.handles.as_ref())) {
                (Ok(n), Some((buffered, _))) if n < c.req.len => {
                    use std::os::unix::fs::FileExt;
                    let rest = &c.req.buf.as_slice()[n..c.req.len];
                    buffered
                        .write_all_at(rest, c.req.offset + n as u64)
                        .map(|()| c.req.len)
                }
                (other, _) => other,
            };
            let msg = match result {
                Ok(n) if n == c.req.len => {
                    if let Some(t) = target {
                        if let Some(j) = t.journal.as_mut() {
                            j.record(index, cv);
                            if j.wants_flush() {
                                if let Some(error) = t.flush_journal() {
                                    let _ = done.send(Written::Failed { file, error });
                                }
                            }
                        }
                    }
                    Written::Block {
                        file,
                        index,
                        cv,
                        carried,
                    }
                }
                other => {
                    let path = target.and_then(|t| t.path.clone()).unwrap_or_default();
                    let source = match other {
                        Err(e) => e,
                        Ok(n) => std::io::Error::new(
                            std::io::ErrorKind::WriteZero,
                            format!(
                                "wrote {n} of {} bytes at offset {} (disk full?)",
                                c.req.len, c.req.offset
                            ),
                        ),
                    };
                    Written::Failed {
                        file,
                        error: Error::File {
                            op: "writing",
                            path,
                            source,
                        },
                    }
                }
            };
            let _ = done.send(msg);
        }
    };
    loop {
        let job = if io.in_flight() == 0 {
            match done.next(&mut jobs) {
                Some(j) => j,
                None => break,
            }
        } else {
            match jobs.try_recv() {
                Ok(j) => j,
                Err(std_mpsc::TryRecvError::Empty) => {
                    let _ = done.flush();
                    if let Err(e) = io.wait(1, &mut finished) {
                        // Blocks in flight can no longer be accounted for: stop, and the
                        // control task fails the transfer when it sees this thread gone.
                        tracing::error!("io_uring wait failed: {e}");
                        return;
                    }
                    report(&mut finished, &mut targets);
                    continue;
                }
                Err(std_mpsc::TryRecvError::Disconnected) => break,
            }
        };
        let job = match job {
            Job::Patch {
                file,
                index,
                header,
                file_len,
                block_size,
                buf,
                from,
                splice,
            } => match complete_patch(
                targets.get(&file).and_then(|t| match from {
                    Some(_) => t.older.as_ref(),
                    None => t.held_at.as_ref(),
                }),
                index,
                (&header, from, splice.as_ref()),
                file_len,
                block_size,
                buf,
            ) {
                Ok((whole, buf)) => Job::Write {
                    file,
                    index,
                    header: whole,
                    file_len,
                    buf,
                    // A moved block's bytes did not cross, but for its prefix (and a moved
                    // patch's bytes).
                    carried: match from {
                        _ if header.spliced => splice
                            .as_ref()
                            .map_or(0, |s| (s.payload.len() - s.literal_at) as u32),
                        Some(_) if header.patch => header.packed + header.len,
                        Some(_) => header.packed,
                        None => header.len,
                    },
                    moved: from.filter(|_| !header.patch).map(|from| Moved {
                        from,
                        prefix: header.packed,
                        piece: piece_size(block_size as u32) as usize,
                    }),
                },
                // The receiver's copy could not be read: as a block damaged on the way, it is
                // asked for again (whole).
                Err(e) => {
                    tracing::info!(
                        file,
                        index,
                        "cannot complete a patch or moved block ({e}); asking for the block"
                    );
                    let _ = done.send(Written::Corrupt {
                        file,
                        index,
                        offset: index * block_size,
                    });
                    continue;
                }
            },
            other => other,
        };
        match job {
            Job::Patch { .. } => unreachable!("patches became writes above"),
            Job::Open {
                file,
                path,
                held_at,
                base,
                older,
                journal,
                key,
                fresh,
                create_mode,
                claim,
            } => {
                targets.insert(
                    file,
                    Target {
                        path: Some(path),
                        held_at,
                        base,
                        older,
                        journal_at: journal.map(|j| (j, key)),
                        fresh,
                        create_mode,
                        to_claim: claim,
                        ..Target::default()
                    },
                );
            }
            Job::Close { file, remove, lock } => {
                // Verified and sealed, or failed (its part file and journal go): what is not
                // journaled yet no longer matters, and later jobs for the file (a late
                // CopyBase) find nothing to touch.
                let target = targets.remove(&file).unwrap_or_default();
                // Closed after the removals: the handle may hold this transfer's claim.
                let (handles, claim) = (target.handles, target.claim);
                // Only a part file this transfer claimed: one it could not claim is another
                // transfer's.
                let claimed = lock.is_some() || handles.is_some() || claim.is_some();
                for p in remove.into_iter().filter(|_| claimed) {
                    // Never a file another entry holds (two names for one file on a
                    // case-insensitive destination): that entry's part file stays its own.
                    if let Ok(meta) = std::fs::symlink_metadata(&p) {
                        if dest.claims().check_free(file, "", &p).is_ok() {
                            dest.claims().release(file, &meta);
                            let _ = std::fs::remove_file(p);
                        }
                    }
                }
                drop(handles);
                drop(claim);
                drop(lock);
            }
            Job::CopyBase { file, file_len } => {
                // A long copy: what is already written is reported first.
                let _ = done.flush();
                let Some(t) = targets.get_mut(&file) else {
                    continue;
                };
                if let Err(error) = t.copy_base(
                    file,
                    file_len,
                    (config, dest),
                    (&stop, &mut working(&done, file)),
                ) {
                    // Nothing more is written for it (its part file may be another's).
                    t.path = None;
                    let _ = done.send(Written::Failed { file, error });
                }
            }
            Job::Seal {
                file,
                entry,
                keep,
                rename,
            } => {
                // Every write in flight lands, and is reported, before the file is sealed: one
                // that completed later would change the file after its root was checked (a
                // sender that announced fewer blocks than it sent), and be renamed with it.
                while io.in_flight() > 0 {
                    if let Err(e) = io.wait(1, &mut finished) {
                        tracing::error!("io_uring wait failed: {e}");
                        return;
                    }
                    report(&mut finished, &mut targets);
                }
                // The file is verified: this thread is done with it. Forgetting it also drops
                // any block a sender might still send for it (against the protocol), which must
                // not land after the seal; its journal's records no longer matter (it is about
                // to be renamed, and the journal removed).
                let Some((mut t, target)) = targets
                    .get_mut(&file)
                    .and_then(|t| t.path.take())
                    .and_then(|p| Some((targets.remove(&file)?, p)))
                else {
                    // (Failed before: what it holds stays until its close.)
                    let _ = done.send(Written::Failed {
                        file,
                        error: Error::Io {
                            what: "sealing a verified file",
                            source: std::io::Error::other("the writer does not know the file"),
                        },
                    });
                    continue;
                };
                let mut sealed = Ok(());
                if let Some((base, blocks)) = keep {
                    // Not if the whole older version is there already (or blocks were written
                    // over it).
                    if !t.copied {
                        let copying = (&*stop, &mut working(&done, file) as &mut dyn FnMut(u64));
                        sealed = copy_blocks(&base, &target, &blocks, config.direct_io, copying);
                    }
                }
                // The handle the blocks were written through goes to the sealer: a write-back
                // error is reported on it, and only once.
                let handle = match t.handles.take() {
                    Some((buffered, _)) => Ok(buffered),
                    None => open_claimed(dest, file, &target, t.to_claim, t.create_mode.take())
                        .map(|(f, as_created)| {
                            t.as_created = as_created;
                            Arc::new(f)
                        }),
                };
                // A new part file holds its length already if one write filled it, or if it is
                // to stay empty.
                let sized = t.whole || (t.fresh && entry.size == 0);
                let job = match sealed.and(handle) {
                    Ok(f) => Seal {
                        file,
                        f,
                        path: target,
                        entry,
                        rename,
                        sized,
                        as_created: t.as_created,
                        _claim: t.claim.take(),
                    },
                    Err(error) => {
                        // A claim the base's copy took is kept until the close removes the
                        // part file.
                        let claim = t.claim.take();
                        targets.insert(
                            file,
                            Target {
                                claim,
                                ..Target::default()
                            },
                        );
                        let _ = done.send(Written::Failed { file, error });
                        continue;
                    }
                };
                // The file's blocks are reported before the sealer can report the seal.
                let _ = done.flush();
                let unsent = match &seal_tx {
                    Some(tx) => tx.send(job).err().map(|e| e.0),
                    None => Some(job),
                };
                if let Some(job) = unsent {
                    let _ = done.send(seal(dest, job));
                }
            }
            Job::Write {
                file,
                index,
                header,
                file_len,
                mut buf,
                carried,
                moved,
            } => {
                let len = header.len as usize;
                if header.packed != 0 {
                    let n = header.packed as usize;
                    packed_copy.clear();
                    packed_copy.extend_from_slice(&buf.as_slice()[..n]);
                    let unpacked = match unpacker.as_mut() {
                        Some(z) => {
                            crate::pack::unpack(z, &packed_copy, &mut buf.as_mut_slice()[..len])
                        }
                        None => Err(std::io::Error::other("zstd unavailable")),
                    };
                    if let Err(e) = unpacked {
                        // Damaged on the way, like a block that fails its hash: sent again.
                        tracing::warn!(file, index, "cannot unpack a packed block: {e}");
                        let _ = done.send(Written::Corrupt {
                            file,
                            index,
                            offset: header.offset,
                        });
                        continue;
                    }
                }
                if faults.remove(&(file, index)) {
                    // Test builds only (`crate::fault`, SLUICE_FAULT_CORRUPT): damage the block as if
                    // it had been corrupted on the way, before verification.
                    buf.as_mut_slice()[len / 2] ^= 0x55;
                }
                let cv = merkle::block_cv(&buf.as_slice()[..len], header.offset, file_len);
                if let Some(m) = moved.filter(|_| cv != header.hash) {
                    // Its anchor matched, but an edit lies further in: the sender sends the
                    // pieces that differ from what was put together here.
                    let hashes = buf.as_slice()[..len]
                        .chunks(m.piece)
                        .map(piece_hash)
                        .collect();
                    let _ = done.send(Written::MovedPieces {
                        file,
                        index,
                        from: m.from,
                        prefix: m.prefix,
                        hashes,
                    });
                    continue;
                }
                if cv != header.hash {
                    let _ = done.send(Written::Corrupt {
                        file,
                        index,
                        offset: header.offset,
                    });
                    continue;
                }
                // A file sealed, failed or never announced: nothing is written for it.
                let Some(t) = targets.get_mut(&file).filter(|t| t.path.is_some()) else {
                    continue;
                };
                // The first changed block of a delta: lay the old version down first, so this
                // and later blocks overwrite it (the writer runs jobs in order).
                if let Err(error) = t.copy_base(
                    file,
                    file_len,
                    (config, dest),
                    (&stop, &mut working(&done, file)),
                ) {
                    t.path = None;
                    let _ = done.send(Written::Failed { file, error });
                    continue;
                }
                // A file of one block: written at once through the page cache, without a
                // second (O_DIRECT) handle or a trip through io_uring's workers: for many
                // small files those cost more than the write.
                let whole_file = header.offset == 0 && u64::from(header.len) == file_len;
                let handles = match &t.handles {
                    Some(h) => h.clone(),
                    None => {
                        let Some(path) = &t.path else {
                            continue;
                        };
                        let claim = std::mem::take(&mut t.to_claim);
                        match open_claimed(dest, file, path, claim, t.create_mode.take()) {
                            Ok((f, as_created)) => {
                                t.as_created = as_created;
                                let direct = (config.direct_io && !whole_file)
                                    .then(|| Destination::open_part_direct(path))
                                    .flatten()
                                    .map(Arc::new);
                                if let Some((at, key)) = &t.journal_at {
                                    match JournalWriter::open(at, &f, key) {
                                        Ok(j) => {
                                            t.journal = Some(Box::new(j));
                                        }
                                        Err(e) => tracing::warn!(
                                            "no resume journal for {} ({e}); an interrupted run will re-read the part file",
                                            at.display()
                                        ),
                                    }
                                }
                                let h = (Arc::new(f), direct);
                                t.handles = Some(h.clone());
                                h
                            }
                            Err(error) => {
                                // Nothing more is written for it (its part file may be another
                                // transfer's).
                                t.path = None;
                                let _ = done.send(Written::Failed { file, error });
                                continue;
                            }
                        }
                    }
                };
                if let Some(j) = t.journal.as_mut() {
                    if let Err(e) = j.before_write(index) {
                        // Without the tombstone an old record could vouch for this block after
                        // an interruption: stop journaling this file.
                        tracing::warn!(file, "cannot update the resume journal ({e})");
                        t.journal = None;
                        if let Some((at, _)) = &t.journal_at {
                            let _ = std::fs::remove_file(at);
                        }
                    }
                }
                // Some blocks are written at once, not through io_uring:
                // - one with runs of zeros inside: they become holes (a few calls), so that a
                //   disk image or a database file with scattered pages does not arrive filled in;
                // - a file of one block, through the page cache (above);
                // - a block of zeros, which becomes a hole where the filesystem can make one
                //   (whatever the part file held there before) and counts as written.
                let data = &buf.as_slice()[..len];
                let at_once = if !header.zero && has_hole(data) {
                    Some(write_sparse(
                        &handles.0,
                        handles.1.as_deref(),
                        data,
                        header.offset,
                    ))
                } else if whole_file && !header.zero {
                    use std::os::unix::fs::FileExt;
                    let result = handles.0.write_all_at(data, 0);
                    if result.is_ok() && t.fresh {
                        t.whole = true;
                    }
                    Some(result)
                } else if header.zero && blockio::punch_hole(&handles.0, header.offset, len) {
                    Some(Ok(()))
                } else {
                    None
                };
                if let Some(result) = at_once {
                    finished.push(Completion {
                        req: Request {
                            op: Op::Write,
                            file: handles.0.clone(),
                            offset: header.offset,
                            buf,
                            len,
                            tag: (file, index, cv, carried),
                        },
                        result: result.map(|()| len),
                    });
                    report(&mut finished, &mut targets);
                    continue;
                }
                // O_DIRECT takes whole 4 KiB pages at 4 KiB offsets (ring buffers are aligned).
                let aligned = header.offset % ALIGN as u64 == 0 && len % ALIGN == 0;
                let handle = match (&handles.1, aligned) {
                    (Some(direct), true) => direct.clone(),
                    _ => handles.0.clone(),
                };
                let req = Request {
                    op: Op::Write,
                    file: handle,
                    offset: header.offset,
                    buf,
                    len,
                    tag: (file, index, cv, carried),
                };
                if let Err(source) = io.submit(req, &mut finished) {
                    let path = t.path.clone().unwrap_or_default();
                    let _ = done.send(Written::Failed {
                        file,
                        error: Error::File {
                            op: "writing",
                            path,
                            source,
                        },
                    });
                }
                report(&mut finished, &mut targets);
            }
        }
    }
    while io.in_flight() > 0 {
        if io.wait(io.in_flight(), &mut finished).is_err() {
            break;
        }
        report(&mut finished, &mut targets);
    }
    // The transfer is ending (done, or interrupted): journal what is on disk.
    for t in targets.values_mut() {
        if let Some(e) = t.flush_journal() {
            tracing::warn!("{e}; its blocks are not journaled");
        }
    }
    drop(seal_tx);
    if let Some(t) = sealer {
        let _ = t.join();
    }
}

/// What the writer knows of one file, from its [`Job::Open`] until its seal or close.
#[derive(Default)]
struct Target {
    /// The file its blocks are written into (part file, or the final file in place); `None` once
    /// nothing more may be written to it (it failed, or its part file is another transfer's).
    path: Option<PathBuf>,
    /// Once opened: the page-cache handle, and an `O_DIRECT` one for aligned whole blocks.
    handles: Option<(Arc<File>, Option<Arc<File>>)>,
    /// Where its journal goes, and what for; the journal itself once the part file is open.
    journal_at: Option<(PathBuf, journal::Key)>,
    /// Boxed: most files never have one, and a file taken up ahead holds its slot (16,384 of
    /// them, `PREPARED_AHEAD`).
    journal: Option<Box<JournalWriter>>,
    /// Where the receiver's copy of its blocks is (patches complete from it).
    held_at: Option<PathBuf>,
    /// The older version its moved blocks are read from.
    older: Option<PathBuf>,
    /// The older version of a delta, copied whole into the part file once (`copied`).
    base: Option<PathBuf>,
    copied: bool,
    /// The part file is new (see `Job::Open`), and, if so, whether one write filled it: its
    /// length is right already, and sealing skips setting it.
    fresh: bool,
    whole: bool,
    /// This writer takes the part file's claim on its first open (see `Job::Open`'s `claim`).
    to_claim: bool,
    /// The mode its first open creates the part file with (see `Job::Open`'s `create_mode`),
    /// and whether that open made it so: then its seal sets only its mtime.
    create_mode: Option<u32>,
    as_created: bool,
    /// A claim taken by a handle that is not kept for writing (the copy of a delta's base).
    claim: Option<File>,
}

impl Target {
    /// Makes the written blocks durable and journals them. A failure to make the part file's
    /// data durable is the file's (returned: its written blocks may be lost, and the error is
    /// reported only once, here); one to append to the journal only costs a re-scan after an
    /// interruption.
    fn flush_journal(&mut self) -> Option<Error> {
        let (part, _) = self.handles.as_ref()?;
        let journal = self.journal.as_mut()?;
        if !journal.is_pending() {
            return None;
        }
        let path = self.path.clone().unwrap_or_default();
        if let Err(e) = part.sync_data() {
            journal.abandon();
            return Some(Error::file("flushing to disk", &path)(e));
        }
        if let Err(e) = journal.append() {
            tracing::warn!(
                "cannot journal the blocks written to {} ({e})",
                path.display()
            );
        }
        None
    }

    /// Copies the older version of a delta whole into the part file, once: never again once
    /// anything was written into the part file (a block, the kept blocks).
    fn copy_base(
        &mut self,
        file: u32,
        file_len: u64,
        (config, dest): (&Config, &Destination),
        copying: (&AtomicBool, &mut dyn FnMut(u64)),
    ) -> Result<()> {
        if std::mem::replace(&mut self.copied, true) {
            return Ok(());
        }
        let (Some(base), Some(part)) = (&self.base, &self.path) else {
            return Ok(());
        };
        let keep = std::fs::metadata(base).map_or(0, |m| m.len()).min(file_len);
        let whole = [(0, keep as usize)];
        // The claim is taken before anything is written, and held until the seal or the close.
        let claim = std::mem::take(&mut self.to_claim);
        let (f, _) = open_claimed(dest, file, part, claim, self.create_mode.take())?;
        if claim {
            self.claim = Some(f);
        }
        let started = std::time::Instant::now();
        let r = copy_blocks(base, part, &whole, config.direct_io, copying);
        tracing::debug!(file, bytes = keep, elapsed = ?started.elapsed(), "copied the older version");
        r
    }
}

/// Files waiting for the sealing thread, each with a handle open.
const SEALS_QUEUED: usize = 64;

/// A verified file to seal: its id, the handle its blocks were written through, its path (for
/// errors) and its manifest entry.
struct Seal {
    file: u32,
    f: Arc<File>,
    path: PathBuf,
    entry: Entry,
    rename: Option<(PathBuf, bool)>,
    /// The file's length is right already (see `Job::Open`'s `fresh`).
    sized: bool,
    /// Its owner, group and mode are right already (see `Job::Open`'s `create_mode`).
    as_created: bool,
    /// This transfer's claim of the part file when `f` does not hold it: kept (never read)
    /// until the job is dropped, after the rename.
    _claim: Option<File>,
}

/// Opens (creating if needed) the part file of entry `file` at `path` and claims its inode for
/// that entry: another entry's file under a name that only differs in case (a case-insensitive
/// destination) is refused instead of shared.
///
/// `claim`: also take this transfer's claim of the part file ([`Destination::claim`]),
/// held by this handle, which goes to the sealer, until it is closed after the rename (or the
/// part file's removal); where the receiver resumes a part file it took the claim itself, before
/// the file's scan.
///
/// `create`: the part file should be new, and is created with this mode
/// ([`Destination::create_part`]); if it cannot be (something is there after all), it is opened
/// as any other. Also returns whether it was created so.
fn open_claimed(
    dest: &Destination,
    file: u32,
    path: &std::path::Path,
    claim: bool,
    create: Option<u32>,
) -> Result<(File, bool)> {
    let created = create.and_then(|mode| Destination::create_part(path, mode).ok());
    let as_created = created.is_some();
    let f = match created {
        Some(f) => f,
        None => Destination::open_part(path).map_err(Error::file("opening", path))?,
    };
    if claim {
        Destination::lock(&f, path)?;
    }
    if dest.unclaimed(path) {
        return Ok((f, as_created));
    }
    let meta = f.metadata().map_err(Error::file("inspecting", path))?;
    let name = path
        .file_name()
        .map(crate::manifest::wire_name)
        .unwrap_or_default();
    dest.claims().claim(file, &name, &meta)?;
    Ok((f, as_created))
}

/// Gives a verified file its length (a resumed part file may hold bytes past the end of a source
/// that shrank), its mode and mtime, makes it durable with `fdatasync`, and renames it into
/// place.
fn seal(dest: &Destination, job: Seal) -> Written {
    let prepared = prepare_seal(dest, &job).and_then(|()| {
        job.f
            .sync_data()
            .map_err(Error::file("flushing to disk", &job.path))
    });
    finish_seal(dest, job, prepared)
}

/// A verified file's length, mode and mtime.
fn prepare_seal(dest: &Destination, job: &Seal) -> Result<()> {
    if !job.sized {
        job.f
            .set_len(job.entry.size)
            .map_err(Error::file("setting length of", &job.path))?;
    }
    if job.as_created {
        return Destination::set_mtime(&job.f, &job.entry, &job.path);
    }
    dest.set_metadata(&job.f, &job.entry, &job.path)
}

/// Renames a file made durable (`prepared` is how that went) into place, and reports it.
fn finish_seal(dest: &Destination, job: Seal, prepared: Result<()>) -> Written {
    let Seal {
        file,
        path,
        entry,
        rename,
        ..
    } = job;
    // Durable: it takes its final name here, not on the control task (one call fewer there
    // per file, which counts with many small files).
    let sealed = prepared.and_then(|()| match rename {
        Some((final_path, journaled)) => {
            let free = if dest.unclaimed(&path) {
                Ok(())
            } else {
                dest.claims().check_free(file, &entry.path, &final_path)
            };
            if let Err(e) = free {
                // Another entry of this run already took this final name (a case-insensitive
                // destination): its file stays, this one's part file and journal go.
                let _ = Destination::remove_part(&final_path);
                return Err(e);
            }
            dest.commit(&path, &final_path, journaled)
        }
        None => Ok(()),
    });
    match sealed {
        Ok(()) => Written::Sealed { file },
        Err(error) => Written::Failed { file, error },
    }
}

/// Files sealed together: their `fdatasync`s go to the kernel at once (see
/// [`crate::blockio::uring::SyncRing`]).
const SEAL_BATCH: usize = 64;

/// The sealing thread: [`seal`]s each verified file and reports it (see [`Job::Seal`]). Only then
/// is the file renamed: after a crash the final name holds the verified bytes or the old file,
/// never blocks the disk had not written yet. The files waiting when it comes round are sealed
/// as one batch, their syncs side by side on an io_uring (`uring`), each renamed once its own
/// sync succeeded.
fn seal_files(
    dest: &Destination,
    mut jobs: std_mpsc::Receiver<Seal>,
    done: mpsc::UnboundedSender<Vec<Written>>,
    uring: bool,
) {
    let done = Outbox::new(done);
    let mut ring = if uring {
        crate::blockio::uring::SyncRing::new(SEAL_BATCH as u32).ok()
    } else {
        None
    };
    while let Some(first) = done.next(&mut jobs) {
        let mut batch = vec![first];
        while batch.len() < SEAL_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let sealed: Vec<Written> = match ring.as_mut() {
            Some(r) if batch.len() > 1 => {
                let (sealed, working) = seal_batch(dest, batch, r);
                if !working {
                    tracing::warn!(
                        "io_uring failed while syncing files; syncing one by one from now on"
                    );
                    ring = None;
                }
                sealed
            }
            _ => batch.into_iter().map(|job| seal(dest, job)).collect(),
        };
        for written in sealed {
            if done.send(written).is_err() {
                return;
            }
        }
    }
}

/// [`seal`] for several files, their syncs at once; also whether the ring still works.
fn seal_batch(
    dest: &Destination,
    batch: Vec<Seal>,
    ring: &mut crate::blockio::uring::SyncRing,
) -> (Vec<Written>, bool) {
    let started = std::time::Instant::now();
    let mut prepared: Vec<Result<()>> = batch.iter().map(|job| prepare_seal(dest, job)).collect();
    let to_sync: Vec<usize> = (0..batch.len()).filter(|&i| prepared[i].is_ok()).collect();
    let files: Vec<&File> = to_sync.iter().map(|&i| &*batch[i].f).collect();
    let (synced, working) = ring.sync_data(&files);
    for (i, synced) in to_sync.iter().zip(synced) {
        if let Err(e) = synced {
            prepared[*i] = Err(Error::file("flushing to disk", &batch[*i].path)(e));
        }
    }
    tracing::debug!(files = batch.len(), elapsed = ?started.elapsed(), "sealed a batch");
    let sealed = batch
        .into_iter()
        .zip(prepared)
        .map(|(job, prepared)| finish_seal(dest, job, prepared))
        .collect();
    (sealed, working)
}

/// Completes a patch into its whole block: reads the bytes around the patch from `held_at`,
/// the receiver's copy. Returns the block's header (whole-block offset and length, the same
/// hash) and the buffer holding the block.
fn complete_patch(
    held_at: Option<&PathBuf>,
    index: u64,
    (header, from, splice): (&BlockHeader, Option<u64>, Option<&Spliced>),
    file_len: u64,
    block_size: u64,
    mut buf: Buffer,
) -> std::io::Result<(BlockHeader, Buffer)> {
    use std::os::unix::fs::FileExt;
    let path = held_at
        .ok_or_else(|| std::io::Error::other("a patch for a file the receiver holds no copy of"))?;
    let geometry = Geometry::new(file_len, block_size as u32);
    let start = geometry.offset(index);
    let block_len = geometry.block_len(index) as usize;
    let copy = File::open(path)?;
    let data = buf.as_mut_slice();
    match (splice, from) {
        // The runs cover the block exactly (checked when it came); an older-version run past
        // the copy's end fails to read, and the block is asked for whole.
        (Some(s), _) => sluice_proto::splice::assemble(
            &s.runs,
            &s.payload[s.literal_at..],
            &mut data[..block_len],
            |from, out| copy.read_exact_at(out, from),
        )?,
        // A moved patch: its bytes are in place; the older version's fill in around them.
        (None, Some(from)) if header.patch => {
            let prefix = header.packed as usize;
            let at = (header.offset - start) as usize;
            let end = at + header.len as usize;
            if at < prefix || end > block_len {
                return Err(std::io::Error::other("a moved patch outside its block"));
            }
            copy.read_exact_at(&mut data[prefix..at], from)?;
            let after = from
                .checked_add((end - prefix) as u64)
                .ok_or_else(|| std::io::Error::other("a moved patch past any file's end"))?;
            copy.read_exact_at(&mut data[end..block_len], after)?;
        }
        // Past the end of the copy: `read_exact_at` fails, and the block is asked for.
        (None, Some(from)) => {
            copy.read_exact_at(&mut data[header.packed as usize..block_len], from)?
        }
        (None, None) => {
            let at = (header.offset - start) as usize;
            let end = at + header.len as usize;
            copy.read_exact_at(&mut data[..at], start)?;
            copy.read_exact_at(&mut data[end..block_len], start + end as u64)?;
        }
    }
    let whole = BlockHeader {
        offset: start,
        len: block_len as u32,
        patch: false,
        packed: 0,
        zero: false,
        moved: false,
        early: false,
        spliced: false,
        ..*header
    };
    Ok((whole, buf))
}

/// The most bytes [`copy_blocks`] moves per read and write.
const COPY_RUN: usize = 8 << 20;

/// Copies kept blocks of the old version of a file into its part file, at the same offsets:
/// adjacent blocks in runs of up to 8 MiB, read through the page cache (the scan just read them)
/// and written with `O_DIRECT` where offset and length allow. Through the page cache, the copy of
/// a 1 GiB file cost 3.0 s of system time on this project's VM (fresh page-cache pages are its
/// most expensive operation); with `O_DIRECT`, under 1 s.
fn copy_blocks(
    base: &std::path::Path,
    part: &std::path::Path,
    blocks: &[(u64, usize)],
    direct: bool,
    (stop, tick): (&AtomicBool, &mut dyn FnMut(u64)),
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let from = File::open(base).map_err(Error::file("opening", base))?;
    let to = Destination::open_part(part).map_err(Error::file("opening", part))?;
    let to_direct = direct
        .then(|| Destination::open_part_direct(part))
        .flatten();
    // Page-aligned, as O_DIRECT needs.
    let mut buf =
        memmap2::MmapMut::map_anon(COPY_RUN).map_err(Error::io("allocating a copy buffer"))?;
    let slow = crate::fault::slow_copy();
    let mut done = 0u64;
    for (offset, len) in runs(blocks, COPY_RUN) {
        tick(done);
        done += len as u64;
        if let Some(pause) = slow {
            std::thread::sleep(pause);
        }
        if stop.load(Ordering::Relaxed) {
            return Err(Error::io("copying kept blocks")(std::io::Error::other(
                "the transfer ended",
            )));
        }
        // A hole of the older version stays a hole: a one-byte change to a sparse disk image
        // must not fill in every hole of it (it wrote the whole 512 MiB of a 2 MiB image).
        if blockio::in_hole(&from, offset, len) && blockio::punch_hole(&to, offset, len) {
            continue;
        }
        let data = &mut buf[..len];
        from.read_exact_at(data, offset)
            .map_err(Error::file("reading", base))?;
        // Stretches of zeros (holes that read as data on a filesystem that cannot say, or zeros
        // written out) become holes too, where the filesystem can make them.
        write_sparse(&to, to_direct.as_ref(), data, offset)
            .map_err(Error::file("writing", part))?;
    }
    Ok(())
}

/// The least run of zeros [`write_sparse`] leaves as a hole: four 4 KiB pages, so that a block
/// whose pages alternate between data and zeros costs a few calls, not one per page.
const HOLE_MIN: usize = 4 * ALIGN;

/// Whether `data` holds a run of at least [`HOLE_MIN`] zeros on page boundaries (pages counted
/// from its start). Data that is not zeros costs one 64-byte look per page.
fn has_hole(data: &[u8]) -> bool {
    data.len() >= HOLE_MIN
        && data
            .chunks(ALIGN)
            .scan(0usize, |run, page| {
                *run = if blockio::all_zero(page) {
                    *run + page.len()
                } else {
                    0
                };
                Some(*run)
            })
            .any(|run| run >= HOLE_MIN)
}

/// The stretches of `data` in order, `(start, end, zero)`: runs of whole zero pages of at least
/// [`HOLE_MIN`] bytes, and the data between them (shorter runs of zeros included).
fn stretches(data: &[u8]) -> Vec<(usize, usize, bool)> {
    let mut out: Vec<(usize, usize, bool)> = Vec::new();
    for (i, page) in data.chunks(ALIGN).enumerate() {
        let (start, end, zero) = (i * ALIGN, i * ALIGN + page.len(), blockio::all_zero(page));
        match out.last_mut() {
            Some(last) if last.2 == zero => last.1 = end,
            _ => out.push((start, end, zero)),
        }
    }
    // A short run of zeros is written with the data around it.
    let mut merged: Vec<(usize, usize, bool)> = Vec::with_capacity(out.len());
    for (start, end, zero) in out {
        let zero = zero && end - start >= HOLE_MIN;
        match merged.last_mut() {
            Some(last) if last.2 == zero => last.1 = end,
            _ => merged.push((start, end, zero)),
        }
    }
    merged
}

/// Writes `data` at `at` of `to`, leaving its runs of zeros (see [`stretches`]) as holes where
/// the filesystem can make them — whatever `to` held there before, so it serves a new part file,
/// a resumed one and a file written in place alike — and writing the rest (through `direct`,
/// an `O_DIRECT` handle, where offset, length and memory allow). The caller sets the file's
/// length: a hole at its end does not extend it.
fn write_sparse(to: &File, direct: Option<&File>, data: &[u8], at: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    for (start, end, zero) in stretches(data) {
        let piece_at = at + start as u64;
        if zero && blockio::punch_hole(to, piece_at, end - start) {
            continue;
        }
        let piece = &data[start..end];
        let aligned = piece_at % ALIGN as u64 == 0
            && piece.len() % ALIGN == 0
            && piece.as_ptr() as usize % ALIGN == 0;
        match direct {
            Some(d) if aligned => d.write_all_at(piece, piece_at),
            _ => to.write_all_at(piece, piece_at),
        }?;
    }
    Ok(())
}

/// Byte ranges `(offset, len)` merged where adjacent and cut into pieces of at most `max`
/// bytes (a block may be larger than `max`: blocks go up to 16 MiB).
fn runs(ranges: &[(u64, usize)], max: usize) -> Vec<(u64, usize)> {
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for &(offset, len) in ranges {
        match merged.last_mut() {
            Some(last) if last.1 == offset => last.1 += len as u64,
            _ => merged.push((offset, offset + len as u64)),
        }
    }
    let mut out = Vec::new();
    for (start, end) in merged {
        let mut at = start;
        while at < end {
            let n = (end - at).min(max as u64);
            out.push((at, n as usize));
            at += n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::BufferPool;

    /// A moved block is taken from the older version at the offset the sender named; one that
    /// names bytes the older version does not have, or a file with no older version, is not
    /// completed (the block is asked for again), whatever the sender says.
    #[test]
    fn runs_of_zero_pages_are_holes_and_short_ones_stay_data() {
        let page = ALIGN;
        let mut data = vec![0u8; 40 * page + 100];
        data[0] = 1; // page 0: data
        data[3 * page] = 1; // pages 1-2: two zero pages, too short for a hole
        data[20 * page + 5] = 1; // pages 4-19: a hole of 16 pages
                                 // pages 21-39 and the last 100 bytes: a hole to the end
        assert!(has_hole(&data));
        assert_eq!(
            stretches(&data),
            vec![
                (0, 4 * page, false),
                (4 * page, 20 * page, true),
                (20 * page, 21 * page, false),
                (21 * page, 40 * page + 100, true),
            ]
        );
        assert!(!has_hole(&data[..4 * page]));
        let noise: Vec<u8> = (0..64 * page).map(|i| (i % 251) as u8 | 1).collect();
        assert!(!has_hole(&noise));
        assert_eq!(stretches(&noise), vec![(0, 64 * page, false)]);
    }

    #[test]
    fn a_moved_block_comes_from_the_older_version_or_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        let old = d.path().join("f");
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 13 % 256) as u8).collect();
        std::fs::write(&old, &bytes).unwrap();
        let pool = BufferPool::new(2, 4096).unwrap();
        let header = BlockHeader {
            file: 0,
            offset: 4096,
            len: 4096,
            hash: [0; 32],
            patch: false,
            packed: 0,
            zero: false,
            moved: true,
            early: false,
            spliced: false,
        };
        let (whole, buf) = complete_patch(
            Some(&old),
            1,
            (&header, Some(777), None),
            8192,
            4096,
            pool.take_blocking(),
        )
        .unwrap();
        assert_eq!(&buf.as_slice()[..4096], &bytes[777..777 + 4096]);
        assert!(!whole.moved && whole.offset == 4096 && whole.len == 4096);
        drop(buf);
        // With a literal prefix: the block's first 100 bytes came with it, the rest is the
        // older version's from `from` on.
        let mut buf = pool.take_blocking();
        buf.as_mut_slice()[..100].fill(0xee);
        let prefixed = BlockHeader {
            packed: 100,
            ..header
        };
        let (whole, buf) =
            complete_patch(Some(&old), 1, (&prefixed, Some(777), None), 8192, 4096, buf).unwrap();
        assert!(buf.as_slice()[..100].iter().all(|&b| b == 0xee));
        assert_eq!(&buf.as_slice()[100..4096], &bytes[777..777 + 3996]);
        assert_eq!(whole.packed, 0);
        drop(buf);
        // A moved patch: the prefix and the patch's bytes came with it, the older version's
        // bytes fill in around the patch.
        let mut buf = pool.take_blocking();
        buf.as_mut_slice()[..100].fill(0xee);
        buf.as_mut_slice()[1000..1200].fill(0xdd);
        let patched = BlockHeader {
            offset: 4096 + 1000,
            len: 200,
            patch: true,
            packed: 100,
            ..header
        };
        let (whole, buf) =
            complete_patch(Some(&old), 1, (&patched, Some(777), None), 8192, 4096, buf).unwrap();
        assert!(buf.as_slice()[..100].iter().all(|&b| b == 0xee));
        assert_eq!(&buf.as_slice()[100..1000], &bytes[777..777 + 900]);
        assert!(buf.as_slice()[1000..1200].iter().all(|&b| b == 0xdd));
        assert_eq!(&buf.as_slice()[1200..4096], &bytes[777 + 1100..777 + 3996]);
        assert!(!whole.moved && !whole.patch && whole.offset == 4096 && whole.len == 4096);
        drop(buf);
        for (held, from) in [
            (Some(&old), 10_000 - 4095),
            (Some(&old), u64::MAX - 10),
            (None, 0),
        ] {
            let r = complete_patch(
                held,
                1,
                (&header, Some(from), None),
                8192,
                4096,
                pool.take_blocking(),
            );
            assert!(r.is_err(), "from {from}");
        }
    }

    /// A file sealed while writes of its blocks are still in flight: every one of them is
    /// reported before the seal is, so no write can land after the file's root was checked and
    /// the file renamed.
    #[test]
    fn writes_in_flight_are_reported_before_their_file_is_sealed() {
        let d = tempfile::tempdir().unwrap();
        let dest = Destination::new(d.path()).unwrap();
        let config = Config {
            write_depth: 16,
            ..Config::default()
        };
        let bs = 64 << 10;
        let blocks = 12u64;
        let file_len = bs * blocks;
        let pool = BufferPool::new(blocks as usize, bs as usize).unwrap();
        let (job_tx, job_rx) = crate::burst::channel();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let part = d.path().join(".f.sluice-part");
        job_tx
            .send(Job::Open {
                file: 0,
                path: part.clone(),
                held_at: None,
                base: None,
                older: None,
                journal: None,
                key: journal::Key {
                    block_size: bs as u32,
                    size: file_len,
                    version: Default::default(),
                },
                fresh: false,
                create_mode: None,
                claim: true,
            })
            .unwrap();
        for index in 0..blocks {
            let mut buf = pool.take_blocking();
            buf.as_mut_slice()[..bs as usize].fill(index as u8 + 1);
            let offset = index * bs;
            let hash = merkle::block_cv(&buf.as_slice()[..bs as usize], offset, file_len);
            job_tx
                .send(Job::Write {
                    file: 0,
                    index,
                    header: BlockHeader {
                        file: 0,
                        offset,
                        len: bs as u32,
                        hash,
                        patch: false,
                        packed: 0,
                        zero: false,
                        moved: false,
                        early: false,
                        spliced: false,
                    },
                    file_len,
                    buf,
                    carried: bs as u32,
                    moved: None,
                })
                .unwrap();
        }
        let entry = sluice_proto::message::Entry {
            id: 0,
            kind: sluice_proto::message::EntryKind::File,
            path: "f".into(),
            mode: 0o644,
            mtime_sec: 0,
            mtime_nsec: 0,
            size: file_len,
            link_target: String::new(),
            version: [0; 16],
            owner: Default::default(),
        };
        job_tx
            .send(Job::Seal {
                file: 0,
                entry,
                keep: None,
                rename: None,
            })
            .unwrap();
        drop(job_tx);
        let stop = Arc::new(AtomicBool::new(false));
        write_blocks(&config, &dest, job_rx, done_tx, stop);
        let mut written = 0;
        let mut sealed = false;
        while let Ok(burst) = done_rx.try_recv() {
            for w in burst {
                match w {
                    Written::Block { .. } => {
                        assert!(!sealed, "a block was reported after its file was sealed");
                        written += 1;
                    }
                    Written::Sealed { .. } => sealed = true,
                    Written::Working { .. } => {}
                    Written::Corrupt { index, .. } | Written::MovedPieces { index, .. } => {
                        panic!("block {index} corrupt")
                    }
                    Written::Failed { error, .. } => panic!("{error}"),
                }
            }
        }
        assert!(sealed);
        assert_eq!(written, blocks);
        let data = std::fs::read(&part).unwrap();
        assert_eq!(data.len() as u64, file_len);
        assert!(data
            .chunks(bs as usize)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == i as u8 + 1)));
    }
}
