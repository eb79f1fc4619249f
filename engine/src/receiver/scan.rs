//! The receiver's scanner thread: hashes, block by block, what the destination already holds of
//! each file — a part file of an interrupted run, or an older version under the final name — and
//! streams the hashes to the control task, which turns them into `HaveGroups`/`Have`/`HaveDone`
//! for the sender. Files are scanned one at a time, in manifest order. Every block is read, those
//! of a part file that its resume journal records (see [`crate::journal`]) too: the journal may
//! vouch for them to the sender, which then need not read its source again, but what the
//! receiver reports and finally verifies is what its part file holds now (another program may
//! have changed it between the runs).

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;

use sluice_proto::anchor::anchor;
use sluice_proto::codec::MAX_HAVE;
use sluice_proto::geometry::Geometry;
use sluice_proto::message::{piece_hash, Digest, PieceHash, SourceVersion};
use tokio::sync::mpsc;

use crate::journal;
use crate::merkle;

/// A request to hash what the destination holds of a file.
pub(super) struct ScanJob {
    pub(super) id: u32,
    pub(super) path: Option<PathBuf>,
    /// The resume journal of `path` (a part file), whose blocks may be vouched for.
    pub(super) journal: Option<PathBuf>,
    pub(super) size: u64,
    pub(super) block_size: u32,
    /// The source version being sent: a journal written while it was sent vouches for its
    /// blocks.
    pub(super) version: SourceVersion,
    /// `Holding` told the sender the journal would vouch: only then may it.
    pub(super) vouch: bool,
    /// The older version whose blocks' anchors are reported: `path` itself for a delta, the
    /// final file beside a resumed part file, or none.
    pub(super) anchors_from: Option<PathBuf>,
}

/// A request to hash the pieces of one block the destination holds (the sender's
/// `WantPieces`).
pub(super) struct PieceJob {
    pub(super) id: u32,
    pub(super) index: u64,
    pub(super) path: PathBuf,
    pub(super) offset: u64,
    pub(super) len: usize,
    pub(super) piece: usize,
}

/// Piece hashes of a block: of each whole piece the copy holds (all of them, or those before
/// the copy's end where it ends inside the block); empty if it holds none.
pub(super) struct Pieces {
    pub(super) id: u32,
    pub(super) index: u64,
    pub(super) hashes: Vec<PieceHash>,
}

/// Hashes of a run of blocks the destination holds (`None` where it holds nothing whole),
/// streamed as the scan goes so the sender can start comparing at once; `done` ends a file.
/// With `vouched`, the run is only an announcement, sent before the rest of the file's scan:
/// the resume journal records these blocks and vouches for them (`Message::Vouched`); they are
/// reported again in ordinary runs.
pub(super) struct Scanned {
    pub(super) id: u32,
    pub(super) first: u64,
    pub(super) cvs: Vec<Option<Digest>>,
    /// The [`anchor`] of each block of `cvs` (empty for a vouched run).
    pub(super) anchors: Vec<u64>,
    pub(super) done: bool,
    pub(super) vouched: bool,
}

/// The piece thread: answers piece requests on its own, so a sender waiting for one does not
/// wait for the scan of every file queued before it.
pub(super) fn hash_pieces(jobs: std_mpsc::Receiver<PieceJob>, out: mpsc::UnboundedSender<Pieces>) {
    let mut buf = Vec::new();
    while let Ok(job) = jobs.recv() {
        let len = job.len;
        buf.resize(len, 0);
        let piece = job.piece.max(1);
        // Up to the copy's end, which may lie inside the block (an older, shorter version).
        let held = File::open(&job.path)
            .and_then(|f| crate::blockio::read_full(&f, &mut buf[..len], job.offset))
            .unwrap_or(0);
        // Whole pieces only: a piece the copy holds part of differs anyway.
        let whole = if held == len {
            len
        } else {
            held / piece * piece
        };
        let hashes = buf[..whole].chunks(piece).map(piece_hash).collect();
        let answer = Pieces {
            id: job.id,
            index: job.index,
            hashes,
        };
        if out.send(answer).is_err() {
            return;
        }
    }
}

/// The scanner thread: hashes, block by block, what the destination holds of each file, and
/// streams the results in runs of [`MAX_HAVE`] blocks.
pub(super) fn scan_files(jobs: std_mpsc::Receiver<ScanJob>, out: mpsc::UnboundedSender<Scanned>) {
    let mut buf = Vec::new();
    while let Ok(job) = jobs.recv() {
        if let Some(path) = &job.path {
            let started = std::time::Instant::now();
            if let Err(e) = scan_one(path, &job, &mut buf, &out) {
                tracing::warn!(
                    "cannot read what is already there of {} ({e}); the rest is sent whole",
                    path.display()
                );
            }
            tracing::debug!(id = job.id, elapsed = ?started.elapsed(), "scanned what the destination holds");
        }
        let end = Scanned {
            id: job.id,
            first: 0,
            cvs: Vec::new(),
            anchors: Vec::new(),
            done: true,
            vouched: false,
        };
        if out.send(end).is_err() {
            return;
        }
    }
}

fn scan_one(
    path: &std::path::Path,
    job: &ScanJob,
    buf: &mut Vec<u8>,
    out: &mpsc::UnboundedSender<Scanned>,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = File::open(path)?;
    let have = file.metadata()?.len();
    let geometry = Geometry::new(job.size, job.block_size);
    let count = geometry.blocks();
    let key = journal::Key {
        block_size: job.block_size,
        size: job.size,
        version: job.version,
    };
    let journaled = job
        .journal
        .as_deref()
        .and_then(|j| journal::load(j, path, &key))
        .unwrap_or_default();
    if job.vouch && journaled.vouched {
        announce_vouched(job, &journaled.blocks, have, out);
    }
    let journaled = journaled.blocks;
    // The older version's anchors: from the blocks read here (a delta), or read apart, 64
    // bytes a block, from the final file beside a resumed part file.
    // `None`: no anchors; `Some(None)`: from the blocks read here; `Some(Some(f))`: from `f`.
    // A final file that cannot be opened gives none (not the part file's, which moved blocks
    // are not read from).
    let source: Option<Option<File>> = match &job.anchors_from {
        Some(from) if from.as_path() == path => Some(None),
        Some(from) => File::open(from).ok().map(Some),
        None => None,
    };
    let anchor_at = |i: u64, data: &[u8]| -> u64 {
        match &source {
            Some(Some(f)) => {
                let mut start = [0u8; sluice_proto::anchor::ANCHOR_LEN];
                f.read_exact_at(&mut start, geometry.offset(i))
                    .map_or(sluice_proto::anchor::NO_ANCHOR, |()| anchor(&start))
            }
            Some(None) => anchor(data),
            None => sluice_proto::anchor::NO_ANCHOR,
        }
    };
    buf.resize(job.block_size as usize, 0);
    let mut run = Vec::with_capacity(MAX_HAVE);
    let mut anchors = Vec::with_capacity(MAX_HAVE);
    let mut first = 0;
    for i in 0..count {
        let (offset, len) = (geometry.offset(i), geometry.block_len(i));
        if offset + len > have {
            break;
        }
        let data = &mut buf[..len as usize];
        file.read_exact_at(data, offset)?;
        let cv = merkle::block_cv(data, offset, job.size);
        if journaled.get(&i).is_some_and(|&j| j != cv) {
            // The sender takes a vouched block only where this report agrees, so it is sent
            // again.
            tracing::warn!("{}: the part file changed since its resume journal recorded block {i}; it is sent again", path.display());
        }
        run.push(Some(cv));
        anchors.push(anchor_at(i, data));
        if run.len() == MAX_HAVE {
            let cvs = std::mem::replace(&mut run, Vec::with_capacity(MAX_HAVE));
            let anchors = std::mem::replace(&mut anchors, Vec::with_capacity(MAX_HAVE));
            let _ = out.send(Scanned {
                id: job.id,
                first,
                cvs,
                anchors,
                done: false,
                vouched: false,
            });
            first = i + 1;
        }
    }
    if !run.is_empty() {
        let _ = out.send(Scanned {
            id: job.id,
            first,
            cvs: run,
            anchors,
            done: false,
            vouched: false,
        });
    }
    Ok(())
}

/// Sends the journal's records of blocks wholly within the `have` bytes of the part file as
/// vouched runs of consecutive blocks, at most [`MAX_HAVE`] each.
fn announce_vouched(
    job: &ScanJob,
    records: &std::collections::HashMap<u64, Digest>,
    have: u64,
    out: &mpsc::UnboundedSender<Scanned>,
) {
    let geometry = Geometry::new(job.size, job.block_size);
    let mut indices: Vec<u64> = records
        .keys()
        .copied()
        .filter(|&i| i < geometry.blocks() && geometry.block_range(i).end <= have)
        .collect();
    indices.sort_unstable();
    let mut i = 0;
    while i < indices.len() {
        let first = indices[i];
        let mut cvs = Vec::new();
        while i < indices.len() && indices[i] == first + cvs.len() as u64 && cvs.len() < MAX_HAVE {
            cvs.push(Some(records[&indices[i]]));
            i += 1;
        }
        let _ = out.send(Scanned {
            id: job.id,
            first,
            cvs,
            anchors: Vec::new(),
            done: false,
            vouched: true,
        });
    }
}
