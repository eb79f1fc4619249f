//! The receiving side: one authenticated sender, blocks verified on arrival, files renamed into
//! place only when their root matches.
//!
//! ```text
//!  sluice-scan thread: hashes what the destination already holds of each file (a part file
//!    of an interrupted run, or an older version) → Holding, HaveGroups/Have, HaveDone, so
//!    only missing or changed blocks are sent
//!  sluice-net thread (tokio, current-thread)            sluice-write thread
//!  ─────────────────────────────────────────            ───────────────────
//!  control task: Hello/secret, manifest, FileDone,      hash block (BLAKE3 chaining value)
//!    per-file block table, root check, rename  ◀─ done ─ compare with header → io_uring Write
//!  stream tasks × N: header → check against manifest ─ jobs ─▶ (positional: blocks arrive
//!    → take ring Buffer → read payload into it                  out of order)
//! ```
//!
//! Invariants: nothing is written outside the destination ([`crate::dest`]); a block is written
//! only after its hash matched its header; each block of a file is accepted once, so nothing can
//! be written to a file after it was verified; the final name is only ever given to a file
//! whose BLAKE3 root equals the sender's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sluice_proto::anchor::NO_ANCHOR;
use sluice_proto::codec::MAX_HAVE;
use sluice_proto::geometry::Geometry;
use sluice_proto::message::{
    group_digest, piece_size, Digest, Entry, EntryKind, ErrorCode, Message, GROUP_BLOCKS,
};
use sluice_proto::session::{ReceiverEvent, ReceiverSession, SessionError};
use sluice_proto::ticket::Ticket;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use crate::burst::{self, Burst};
use crate::config::Config;
use crate::control::Control;
use crate::dest::Destination;
use crate::error::{Error, ErrorKind, Result};
use crate::journal;
use crate::merkle;
use crate::progress::{Event, Progress, StallWatch, Summary};
use crate::ring::BufferPool;
use crate::transport::{self, LaneRx, Link, Listener};

mod scan;
mod writer;

use scan::{hash_pieces, scan_files, PieceJob, Pieces, ScanJob, Scanned};
use writer::{write_blocks, Job, Written};

/// State shared by the control task and the stream tasks.
struct Shared {
    session: ReceiverSession,
    /// Per file, which blocks have been claimed by a stream (each block is accepted once,
    /// unless it failed verification and was asked for again).
    /// Sized by what arrives, not by what the manifest claims.
    /// A file's set is dropped once the file is verified or failed ([`Shared::close_done`]):
    /// what a run holds is bounded by the files in progress, not by every block of the run.
    claimed: HashMap<u32, Claimed>,
    /// Files are taken up in manifest order: every file entry before this one has been (the
    /// sender may send a file's blocks only after its `HaveDone`, but for the first file's
    /// early blocks, and that file is taken up as its entry arrives).
    taken_up: u32,
    /// Whether this side sent a `Holding` for the manifest's first file: then that file's early
    /// blocks (sent before the sender knew what is held here) are read and dropped, and the
    /// sender, which learns the same from the `Holding`, sends what is missing again.
    first_held: bool,
}

/// The blocks of one file that streams have taken.
enum Claimed {
    Open(Bits),
    /// The file is verified or failed: its blocks are read off the stream and dropped.
    Closed,
}

/// A set of block indices as one bit each, grown to the highest index taken: 128 KiB for a
/// 1 TiB file of 1 MiB blocks, where a hash set took ~24 bytes a block.
#[derive(Default)]
struct Bits(Vec<u64>);

impl Bits {
    /// Adds `i`; false if it was there.
    fn insert(&mut self, i: u64) -> bool {
        let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        let fresh = self.0[word] & bit == 0;
        self.0[word] |= bit;
        fresh
    }

    fn remove(&mut self, i: u64) {
        if let Some(w) = self.0.get_mut((i / 64) as usize) {
            *w &= !(1u64 << (i % 64));
        }
    }
}

impl Shared {
    /// Forgets the blocks of files no longer in progress (not in `files`).
    fn close_done(&mut self, files: &HashMap<u32, Box<Incoming>>) {
        for (id, c) in self.claimed.iter_mut() {
            if matches!(c, Claimed::Open(_)) && !files.contains_key(id) {
                *c = Claimed::Closed;
            }
        }
    }
}

/// How many times one block may fail verification before its file fails.
const MAX_RETRIES: u32 = 3;

/// Files whose verified bytes are told the sender in one round ([`tell_verified`]), the ones
/// that moved most first; the others wait for the next second.
const VERIFIED_TOLD_AT_ONCE: usize = 64;

/// Tells the sender how much of each file under way has been verified, where that grew since
/// it was last told (about once a second): of a single large file, the sender showed nothing
/// verified until its end.
fn tell_verified(files: &mut HashMap<u32, Box<Incoming>>, control: &mut Control) {
    let mut grew: Vec<(u64, u32)> = files
        .iter()
        .filter(|(_, f)| f.verified > f.verified_told && !f.sealing)
        .map(|(id, f)| (f.verified - f.verified_told, *id))
        .collect();
    grew.sort_unstable_by(|a, b| b.cmp(a));
    for (_, id) in grew.into_iter().take(VERIFIED_TOLD_AT_ONCE) {
        if let Some(f) = files.get_mut(&id) {
            f.verified_told = f.verified;
            control.queue(&Message::VerifiedSoFar {
                id,
                done: f.verified,
            });
        }
    }
}

/// A file being received.
struct Incoming {
    rel: String,
    final_path: PathBuf,
    part: PathBuf,
    /// The older version under the final name, whose matching blocks are kept (delta).
    base: Option<PathBuf>,
    /// The file the scan read (the part file of a resume, or the older version): patches are
    /// completed from it.
    held_at: Option<PathBuf>,
    /// The older version under the final name (a delta, or a part file resumed beside one; not
    /// in place): its anchors go to the sender, and moved blocks are read from it.
    older: Option<PathBuf>,
    /// Blocks whose piece hashes the sender asked for (once each).
    pieces_asked: std::collections::HashSet<u64>,
    /// Blocks are written into the existing final file, where the kept ones already are.
    inplace: bool,
    /// The part file may have a resume journal beside it.
    journaled: bool,
    /// Hashes of blocks received in this run, until their group is whole.
    /// Sized by the blocks that arrive, not by the size the manifest claims.
    received: HashMap<u64, Digest>,
    /// Groups of [`GROUP_BLOCKS`] blocks all received in this run, folded into their chaining
    /// value ([`merkle::span_cv`]): what a run holds per file is 48 bytes per 64 blocks once
    /// they are in, not ~100 bytes per block (files of more than one group only).
    folded: HashMap<u64, Digest>,
    /// Per group not yet folded, how many of its blocks were received.
    group_got: HashMap<u64, u32>,
    /// How the file is cut into blocks and groups.
    geometry: Geometry,
    got: u64,
    /// Bytes of the blocks received in this run and verified, and the figure last told the
    /// sender ([`Message::VerifiedSoFar`]).
    verified: u64,
    verified_told: u64,
    /// Hashes of blocks the destination held before (from the scan), once it is complete.
    local: Option<Vec<Option<Digest>>>,
    /// The scan's results so far.
    local_partial: Option<Vec<Option<Digest>>>,
    /// The [`sluice_proto::anchor::anchor`] of each block of the older version (`older`), as far
    /// as the scan went: sent before each `Have` of those blocks, so the sender can find them at
    /// other offsets. Empty otherwise.
    anchors: Vec<u64>,
    /// Whole groups announced to the sender so far.
    groups_sent: u64,
    root: Option<Digest>,
    sent: Option<u64>,
    retries: HashMap<u64, u32>,
    /// Verified and handed to the writer to be sealed ([`Job::Seal`]); renamed once it is.
    sealing: bool,
    /// Bytes of the verified file that were already here (kept blocks), for the summary.
    kept_bytes: u64,
    /// Compare only: the length of the file here, or `None` if there is none.
    compare_only: Option<Option<u64>>,
    /// This transfer's claim of the part file it resumes, or of the file it writes in place
    /// ([`Destination::claim`]); held until the file is renamed into place or its part file
    /// removed.
    lock: Option<std::fs::File>,
}

impl Incoming {
    /// A file laid out as `geometry`, nothing known of it yet.
    fn new(rel: String, final_path: PathBuf, part: PathBuf, geometry: Geometry) -> Self {
        Self {
            rel,
            final_path,
            part,
            base: None,
            held_at: None,
            older: None,
            pieces_asked: Default::default(),
            inplace: false,
            journaled: true,
            received: HashMap::new(),
            folded: HashMap::new(),
            group_got: HashMap::new(),
            geometry,
            got: 0,
            verified: 0,
            verified_told: 0,
            local: None,
            local_partial: None,
            anchors: Vec::new(),
            groups_sent: 0,
            root: None,
            sent: None,
            retries: HashMap::new(),
            sealing: false,
            kept_bytes: 0,
            compare_only: None,
            lock: None,
        }
    }

    /// The anchors of blocks `blocks` of the older version, if any of them has one (only a
    /// delta's older version has anchors, and only a file of more than one block sends them: a
    /// single block has nowhere else to be).
    fn anchors_of(&self, blocks: std::ops::Range<u64>) -> Option<Vec<u64>> {
        if self.geometry.blocks() < 2 {
            return None;
        }
        let end = (blocks.end as usize).min(self.anchors.len());
        let found = self.anchors.get(blocks.start as usize..end)?;
        found
            .iter()
            .any(|&a| a != NO_ANCHOR)
            .then(|| found.to_vec())
    }

    /// Counts one more received block of group `group` (called once per block) and folds the
    /// group into its chaining value once every block of it was received.
    fn fold(&mut self, group: u64) {
        let g = self.geometry;
        if g.groups() <= 1 {
            return;
        }
        let blocks = g.group_blocks(group);
        let size = blocks.end - blocks.start;
        let got = self.group_got.entry(group).or_insert(0);
        *got += 1;
        if u64::from(*got) < size {
            return;
        }
        self.group_got.remove(&group);
        let cvs: Vec<Digest> = blocks.filter_map(|i| self.received.remove(&i)).collect();
        // Blocks of many groups can be unfolded at once (headers of zero blocks are 53 bytes,
        // so a stream's window holds tens of thousands of them, and the streams are read
        // unevenly); a map never gives back what it grew to unless asked.
        if self.received.capacity() > 4096 && self.received.len() * 4 < self.received.capacity() {
            self.received.shrink_to(self.received.len() * 2);
        }
        debug_assert_eq!(cvs.len() as u64, size, "a folded group lacks a block");
        self.folded.insert(
            group,
            merkle::span_cv(&cvs, g.group_len(group), g.block_size() as u32),
        );
    }

    fn compare_only(
        entry: &Entry,
        existing: Option<PathBuf>,
        local_len: Option<u64>,
        block_size: u32,
    ) -> Self {
        let path = existing.unwrap_or_default();
        Self {
            compare_only: Some(local_len),
            ..Self::new(
                entry.path.clone(),
                path.clone(),
                path,
                Geometry::new(entry.size, block_size),
            )
        }
    }
}

/// Files prepared and not yet finished, at most (see `prepare_pending` in [`receive`]). Enough
/// for the files in flight on a long path: 4,096 cost 13 % at 300 ms RTT (20,000 files of 4 KiB
/// over 200 Mbit/s: 7.42 s against 6.57), where the sender's HaveDone waits covered less than
/// what its buffers held; 16,384 took 6.57–6.63 s.
const PREPARED_AHEAD: usize = 16384;

/// The file an event from the sender is about, if it needs that file prepared.
fn names_file(event: &ReceiverEvent) -> Option<u32> {
    match event {
        ReceiverEvent::FileDone { id, .. }
        | ReceiverEvent::WantDetail { id, .. }
        | ReceiverEvent::WantPieces { id, .. }
        | ReceiverEvent::Abandoned { id, .. } => Some(*id),
        _ => None,
    }
}

/// Compare only: whether the file here is the sender's, from how many blocks the sender found
/// different and the lengths.
fn compare_verdict(id: u32, f: Incoming, size: u64, root: Digest, differing: u64) -> Outcome {
    let local_len = f.compare_only.flatten();
    let reason = match local_len {
        None => Some("missing at the destination".to_owned()),
        Some(len) if differing == 0 && len == size => None,
        Some(len) if len != size => Some(format!(
            "{differing} blocks differ; {len} bytes at the destination, {size} at the source"
        )),
        Some(_) => Some(format!("{differing} blocks differ")),
    };
    match reason {
        None => Outcome::Verified {
            id,
            path: f.rel,
            size,
            root,
            kept: 0,
        },
        Some(reason) => Outcome::Failed {
            id,
            path: f.rel,
            reason,
            kind: ErrorKind::Verification,
        },
    }
}

/// Waits for one sender and receives its files into a destination directory.
#[derive(Debug)]
pub struct Receiver {
    config: Config,
    dest: Destination,
    rt: tokio::runtime::Runtime,
    listener: Listener,
    stop: Arc<tokio::sync::Notify>,
}

/// Ends a [`Receiver::run`] that is still waiting for its sender (see [`Receiver::stopper`]).
#[derive(Debug, Clone)]
pub struct Stopper(Arc<tokio::sync::Notify>);

impl Stopper {
    /// Makes the receiver's wait for a sender end with an error; a transfer already under
    /// way is not affected.
    pub fn stop(&self) {
        self.0.notify_one();
    }
}

impl Receiver {
    /// Listens on `listen` (UDP for QUIC and TCP on the same port number, or the one transport
    /// `config.transport` names) with a fresh certificate and secret. `advertise`, if given, is
    /// the address written into the ticket (needed when `listen` is a wildcard).
    pub fn bind(
        dest: impl Into<PathBuf>,
        listen: SocketAddr,
        advertise: Option<SocketAddr>,
        config: Config,
    ) -> Result<Self> {
        // The address first: a port in use must not leave a new, empty destination behind.
        let (rt, listener) = crate::endpoint::listening(listen, advertise, &config)?;
        let mut dest = Destination::new(dest)?;
        if config.exact_modes {
            dest.exact_modes();
        }
        dest.give_owners(config.ownership);
        // Said before the ticket is handed out, not when a sender has connected: a transfer
        // into it will fail, comparing (`sluice verify`) will not.
        if let Err(e) = dest.writable() {
            tracing::warn!(
                "cannot write into {} ({e}): a transfer there will fail (comparing with \
                 `sluice verify` needs no write)",
                dest.root().display()
            );
        }
        Ok(Self {
            config,
            dest,
            rt,
            listener,
            stop: Arc::default(),
        })
    }

    /// A handle that stops this receiver's wait for a sender, from another thread: for a
    /// sender in the same process that failed before it connected (`copy` of a missing source).
    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop.clone())
    }

    /// The ticket to hand to the sender.
    pub fn ticket(&self) -> &Ticket {
        self.listener.ticket()
    }

    /// Waits for one sender, receives its transfer, and returns when every entry is in place, or
    /// the transfer failed. Part files survive an interruption (connection or I/O errors) so the
    /// next run resumes from them; a refused transfer (protocol violation) removes them.
    pub fn run(self, progress: Arc<Progress>) -> Result<Summary> {
        let Self {
            config,
            dest,
            rt,
            mut listener,
            stop,
        } = self;
        rt.block_on(async move {
            let secret = listener.ticket().secret;
            let (link, control) = tokio::select! {
                proven = proven_sender(&mut listener, &config, 0) => proven?,
                _ = stop.notified() => {
                    return Err(Error::Connection {
                        peer: "none".into(),
                        detail: "stopped before a sender connected".into(),
                    })
                }
            };
            // The sender is proven: nobody else is let in (its own lanes still are).
            listener.stop_accepting();
            let started = Instant::now();
            let mut parts = Vec::new();
            let result = receive(
                &config, &dest, secret, &link, control, &progress, &mut parts,
            )
            .await;
            let result = transport::explain(
                result,
                &*link,
                "sender",
                config.idle_timeout,
                "partial files are kept: the same files sent to a new `sluice recv` into this directory resume",
            )
            .await;
            if let Err(e) = &result {
                link.close(1, e.to_string().as_bytes()).await;
                // An interrupted transfer keeps its part files: the next run resumes from what
                // they hold. A refused one (a protocol violation) leaves nothing behind.
                if !matches!(
                    e,
                    Error::Connection { .. } | Error::Io { .. } | Error::File { .. }
                ) {
                    for p in &parts {
                        let _ = std::fs::remove_file(p);
                    }
                }
            } else {
                // The sender closes once it has read the summary. Closing first would cut
                // what is still queued for it (over TCP a reset drops the summary), which over
                // a slow return path takes a while: bounded by the idle timeout.
                let wait = config.idle_timeout.max(std::time::Duration::from_secs(5));
                let _ = tokio::time::timeout(wait, link.closed()).await;
            }
            link.close(0, b"").await;
            transport::finish_summary(result, started, &*link)
        })
    }
}

/// Connections that fail before their Hello proves the ticket's secret after which the receiver
/// gives up waiting.
const MAX_UNPROVEN: u32 = 16;

/// Waits for a connection whose first message is a Hello this receiver accepts (the ticket's
/// secret, a version and block size it speaks, what its [`Policy`](sluice_proto::session::Policy)
/// allows) within [`transport::HELLO_DEADLINE`]. Anything else is told why, closed, and the wait
/// goes on: without the secret nobody can end or hold a receiver. Returns the connection with its
/// Hello given back to be read again.
pub(crate) async fn proven_sender(
    listener: &mut Listener,
    config: &Config,
    kind: u8,
) -> Result<(Arc<dyn Link>, Control)> {
    let secret = listener.ticket().secret;
    let mut failed = 0;
    loop {
        let (link, channel) = listener.accept().await?;
        let peer = link.peer();
        let mut control = Control::new(channel, peer.to_string());
        let first = tokio::time::timeout(transport::HELLO_DEADLINE, control.recv()).await;
        let refused = match first {
            Ok(Ok(Some(hello))) => match hello_for(&hello, kind, secret, config) {
                Ok(()) => {
                    control.unread(hello);
                    return Ok((link, control));
                }
                Err(e) => Error::from(e),
            },
            Ok(Ok(None)) => transport::conn_error(peer)(&"closed before its Hello"),
            Ok(Err(e)) => e,
            Err(_) => transport::conn_error(peer)(&format!(
                "no Hello within {} s",
                transport::HELLO_DEADLINE.as_secs()
            )),
        };
        failed += 1;
        tracing::warn!("connection from {peer} refused: {refused}");
        if let Error::Session(s) = &refused {
            let _ = control
                .send(&Message::Error {
                    code: s.code(),
                    message: s.to_string(),
                })
                .await;
            control.finish();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), control.sync()).await;
        }
        link.close(1, refused.to_string().as_bytes()).await;
        if failed >= MAX_UNPROVEN {
            return Err(refused);
        }
    }
}

/// Checks a first message as a file receiver would (version, secret, block size, flags), with
/// the session-kind flags (`HELLO_KIND`) set aside and required to be `kind`'s: a receiver of
/// one kind refuses another's sender by name, once the sender has shown the ticket's secret.
fn hello_for(
    hello: &Message,
    kind: u8,
    secret: [u8; 32],
    config: &Config,
) -> std::result::Result<(), sluice_proto::session::SessionError> {
    use sluice_proto::message::HELLO_KIND;
    let (flags, plain) = match hello {
        Message::Hello {
            version,
            secret,
            block_size,
            flags,
        } => (
            *flags,
            Message::Hello {
                version: *version,
                secret: *secret,
                block_size: *block_size,
                flags: flags & !HELLO_KIND,
            },
        ),
        other => (kind, other.clone()),
    };
    ReceiverSession::with_policy(secret, policy(config)).on_message(plain)?;
    if flags & HELLO_KIND != kind {
        return Err(sluice_proto::session::SessionError::WrongKind {
            ours: kind,
            theirs: flags,
        });
    }
    Ok(())
}

fn policy(config: &Config) -> sluice_proto::session::Policy {
    sluice_proto::session::Policy {
        allow_delete: config.allow_delete,
        allow_inplace: config.allow_inplace,
        max_entries: config.max_entries,
        max_depth: config.max_depth,
    }
}

async fn receive(
    config: &Config,
    dest: &Destination,
    secret: [u8; 32],
    link: &Arc<dyn Link>,
    mut control: Control,
    progress: &Arc<Progress>,
    parts: &mut Vec<PathBuf>,
) -> Result<Summary> {
    let peer = link.peer();
    let conn_err = transport::conn_error(peer);
    control.limit_backlog(config.control_queue);
    let shared = Arc::new(Mutex::new(Shared {
        session: ReceiverSession::with_policy(secret, policy(config)),
        claimed: HashMap::new(),
        taken_up: 0,
        first_held: false,
    }));
    let (ready_tx, ready_rx) = watch::channel(false);
    let (job_tx, job_rx) = burst::channel::<Job>();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Vec<Written>>();
    let (scan_tx, scan_rx) = std_mpsc::channel::<ScanJob>();
    let (scanned_tx, mut scanned_rx) = mpsc::unbounded_channel::<Scanned>();

    // Set when the transfer ends in error: the writer abandons long local copies then.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let config = config.clone();
        let writer_stop = stop.clone();
        let dest = dest.clone();
        std::thread::Builder::new()
            .name("sluice-write".into())
            .spawn(move || write_blocks(&config, &dest, job_rx, done_tx, writer_stop))
            .map_err(Error::io("starting writer thread"))?
    };
    let (piece_tx, piece_rx) = std_mpsc::channel::<PieceJob>();
    let (pieces_out, mut pieces_in) = mpsc::unbounded_channel::<Pieces>();
    let pieces = {
        let out = pieces_out;
        std::thread::Builder::new()
            .name("sluice-pieces".into())
            .spawn(move || hash_pieces(piece_rx, out))
            .map_err(Error::io("starting piece thread"))?
    };
    let scanner = std::thread::Builder::new()
        .name("sluice-scan".into())
        .spawn(move || scan_files(scan_rx, scanned_tx))
        .map_err(Error::io("starting scanner thread"))?;

    let mut streams = tokio::task::JoinSet::new();
    let mut files: HashMap<u32, Box<Incoming>> = HashMap::new();
    let mut symlinks: Vec<Entry> = Vec::new();
    let mut finished = false;
    let mut failures = 0u64;
    let mut first_failure = Failed::default();
    let mut verified_bytes = 0u64;
    let mut block_size = 0u32;
    let mut dry_run = false;
    let mut scans_pending = 0u64;
    // Data streams are accepted once the hello fixed the block size and the buffer ring.
    let mut pool: Option<Arc<BufferPool>> = None;
    let mut accepting = true;

    let mut stall = StallWatch::new();
    let mut silence = transport::Silence::new();
    let mut watch_tick = tokio::time::interval(std::time::Duration::from_secs(1));
    watch_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: std::collections::VecDeque<u32> = Default::default();
    let result: Result<Summary> = async {
        // Files are prepared (their part file's place found, what is held here scanned and
        // announced) in manifest order, at most PREPARED_AHEAD ahead of those finished, so that
        // what a run holds per file follows the files in flight, not the manifest's length; and
        // at once up to a file the sender names before its turn (an empty file's FileDone, a
        // file it gave up).
        macro_rules! prepare_pending {
            ($upto:expr) => {
                while let Some(&id) = pending.front() {
                    if files.len() >= PREPARED_AHEAD && $upto.is_none_or(|n: u32| id > n) {
                        break;
                    }
                    pending.pop_front();
                    let (entry, first) = {
                        let mut s = shared.lock().map_err(|_| poisoned())?;
                        let first = s.taken_up == 0;
                        s.taken_up = id + 1;
                        (s.session.entries()[id as usize].clone(), first)
                    };
                let (restart, inplace, rehash) = {
                    let s = shared.lock().map_err(|_| poisoned())?;
                    (s.session.restart(), s.session.inplace(), s.session.rehash())
                };
                // A file that cannot be placed (a file or directory in the way, a
                // path past PATH_MAX, another entry's file under a name that
                // differs only in case) fails alone; the sender is told and
                // sends nothing for it.
                // In place: write straight into the existing file (a partial file
                // of an earlier run still takes precedence), but never through a
                // file with a second link: that would change the other name's
                // content too, perhaps outside the destination. Such a file is
                // replaced by a new one, as without --inplace. A file written in
                // place is claimed now; a part file when the writer opens it.
                let key = journal::Key { block_size, size: entry.size, version: entry.version };
                let placed = dest.prepare_file(&entry, restart).and_then(|mut p| {
                    // A part file written while a file of another size was sent (an insertion
                    // or a deletion may have shifted its blocks), or of too few blocks to have a
                    // journal, becomes the older version of a delta where it can: its blocks are
                    // found at any shift. One of a file of the same size (its journal may vouch,
                    // or name another version) is resumed in place: its blocks are compared
                    // where they are.
                    let moved = p.resume && journal::size_of(&p.journal) != Some(entry.size);
                    dest.set_part_aside(&mut p, moved)?;
                    if !p.fresh && !dest.unclaimed(&p.part) {
                        dest.claims().check_free(entry.id, &entry.path, &p.final_path)?;
                    }
                    let single_link = p.existing.as_ref().and_then(|e| std::fs::symlink_metadata(e).ok()).filter(|m| {
                        use std::os::unix::fs::MetadataExt;
                        m.nlink() == 1
                    });
                    // Only into a file under the final name (not a part file set aside).
                    let inplace = inplace && !p.resume && p.existing.as_ref() == Some(&p.final_path) && single_link.is_some();
                    if let (true, Some(meta)) = (inplace, &single_link) {
                        dest.claims().claim(entry.id, &entry.path, meta)?;
                    }
                    // Another transfer may be at this file: a part file to resume is claimed
                    // before it is scanned, a file written in place before anything is written
                    // into it; any other part file by the writer as it opens it.
                    let claimed = if inplace { Some(&p.final_path) } else { p.resume.then_some(&p.part) };
                    let lock = claimed.map(|at| Destination::claim(at)).transpose()?;
                    Ok((p, inplace, lock))
                });
                let (prepared, inplace, lock) = match placed {
                    Ok(placed) => placed,
                    Err(e) if e.kind() == ErrorKind::NoSpace => return Err(e),
                    Err(e) => {
                        report(Outcome::failed(entry.id, &entry.path, &e), &mut control, progress, &mut failures, &mut first_failure, &mut verified_bytes).await?;
                        hold_nothing(&scan_tx, &entry, block_size, &mut scans_pending);
                        continue;
                    }
                };
                let target = if inplace { prepared.final_path.clone() } else { prepared.part.clone() };
                // Decided once, here: the scanner vouches only if Holding said so.
                // `--rehash`: the part file is read whole, its journal believed for nothing.
                let trusted = prepared.resume && !rehash;
                let vouching = trusted && journal::vouches(&prepared.journal, &prepared.part, &key);
                if let Some(len) = prepared.existing.as_ref().and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len()) {
                    // Before the manifest ends, so before any data stream is read.
                    if first {
                        shared.lock().map_err(|_| poisoned())?.first_held = true;
                    }
                    control.send(&Message::Holding { id: entry.id, len, vouching }).await?;
                }
                tracing::debug!(id = entry.id, "file prepared");
                let base = (!prepared.resume && !inplace).then(|| prepared.existing.clone()).flatten();
                // Where moved blocks come from: the older version under the final name (or a part
                // file set aside), also when a part file is resumed beside it (an interrupted
                // delta), never in place.
                let older = match (&base, prepared.resume && !inplace) {
                    (Some(b), _) => Some(b.clone()),
                    (None, true) => [prepared.final_path.clone(), Destination::aside_path(&prepared.final_path)]
                        .into_iter()
                        .find(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file())),
                    (None, false) => None,
                };
                let geometry = Geometry::new(entry.size, block_size);
                // A journal pays from its first batch of blocks on; a fresh
                // file shorter than that has none (a resumed one keeps its own,
                // whose records must be superseded).
                let journaled = !inplace && (prepared.resume || geometry.blocks() >= journal::BATCH as u64);
                let _ = job_tx.send(Job::Open {
                    file: entry.id,
                    path: target,
                    held_at: prepared.existing.clone(),
                    base: base.clone(),
                    older: older.clone(),
                    journal: journaled.then(|| prepared.journal.clone()),
                    key,
                    fresh: prepared.fresh && !inplace,
                    create_mode: prepared.create_mode.filter(|_| !inplace),
                    claim: lock.is_none() && !inplace,
                });
                let mut incoming = Incoming {
                    held_at: prepared.existing.clone(),
                    older: older.clone(),
                    base,
                    inplace,
                    journaled,
                    lock,
                    ..Incoming::new(entry.path.clone(), prepared.final_path, prepared.part, geometry)
                };
                if prepared.existing.is_none() && scans_pending == 0 {
                    // Nothing here to scan, and no earlier file's scan to wait
                    // for (HaveDone goes in manifest order): answered now, not
                    // by a round trip through the scanner.
                    announce_scan(&mut control, entry.id, &mut incoming, 0, (Vec::new(), Vec::new()), true);
                } else {
                    let _ = scan_tx.send(ScanJob {
                        id: entry.id,
                        path: prepared.existing.clone(),
                        journal: trusted.then(|| prepared.journal.clone()),
                        size: entry.size,
                        block_size,
                        version: entry.version,
                        vouch: vouching,
                        anchors_from: older,
                    });
                    scans_pending += 1;
                }
                files.insert(entry.id, Box::new(incoming));
                }
            };
        }
        loop {
            // What the last turns queued goes out in one write: per-file answers (FileVerified,
            // HaveDone) of many small files share packets instead of taking one each. Messages,
            // scans and writer reports already waiting are taken first (a message only if the
            // loop will read it now: not while the backlog holds reading back).
            let busy = (control.ready() && !control.over_backlog())
                || !done_rx.is_empty()
                || !scanned_rx.is_empty();
            control.flush_unless(busy).await?;
            // Every file answered, and every scan done (so every HaveDone is sent).
            prepare_pending!(None);
            if finished && files.is_empty() && scans_pending == 0 && pending.is_empty() {
                let entries = shared.lock().map_err(|_| poisoned())?.session.entries().to_vec();
                for e in symlinks.iter().filter(|_| !dry_run) {
                    match e.kind {
                        // Only once every file arrived: a failed file would be linked in its
                        // older version, if any. The run fails anyway; the rerun links.
                        EntryKind::HardLink if first_failure.paths.contains(&e.link_target) => {
                            tracing::warn!("not linked: {} (the file it names, {}, failed)", e.path, e.link_target);
                        }
                        EntryKind::HardLink => made_or_failed(dest.create_hard_link(e), e, progress, &mut failures, &mut first_failure)?,
                        _ => made_or_failed(dest.create_symlink(e), e, progress, &mut failures, &mut first_failure)?,
                    }
                }
                // What `--delete` removed to make room for entries whose type changed counts and
                // is listed with what it removes below.
                let mut deleted = report_replaced(dest, progress);
                if shared.lock().map_err(|_| poisoned())?.session.delete() && failures == 0 && !dry_run {
                    let excludes = shared.lock().map_err(|_| poisoned())?.session.excludes().clone();
                    deleted += dest.delete_extraneous(&entries, &excludes, |path, dir| progress.push(Event::Deleted { path, dir }))?;
                    if deleted > 0 {
                        tracing::info!(deleted, "removed entries the source no longer has");
                    }
                }
                if !dry_run && !shared.lock().map_err(|_| poisoned())?.session.delete() {
                    // What an interrupted run left for files this one no longer has would stay
                    // hidden for good.
                    if let (n, Some(first)) = dest.stale_parts(&entries) {
                        tracing::warn!(
                            "{n} partial file(s) of an earlier, interrupted transfer remain that this one did not use (their files are not in it), such as {}: `--delete` removes them",
                            first.display()
                        );
                    }
                }
                for e in entries.iter().rev().filter(|e| e.kind == EntryKind::Dir && !dry_run) {
                    // A directory that could not be made has failed already.
                    if !first_failure.paths.contains(&e.path) {
                        made_or_failed(dest.finish_dir(e), e, progress, &mut failures, &mut first_failure)?;
                    }
                }
                // The renames are on disk before the sender hears that they happened: without
                // this a crash could undo a rename the summary reported.
                if !dry_run {
                    dest.sync_dirs(&entries)?;
                }
                let file_count = entries.iter().filter(|e| e.kind == EntryKind::File).count();
                let failed_files = entries
                    .iter()
                    .filter(|e| e.kind == EntryKind::File && first_failure.paths.contains(&e.path))
                    .count();
                let summary = Summary {
                    entries: (entries.len() as u64).saturating_sub(failures),
                    files: (file_count - failed_files) as u64,
                    bytes: verified_bytes,
                    payload_bytes: progress.snapshot().bytes_verified,
                    kept_bytes: progress.snapshot().bytes_kept,
                    vouched_bytes: 0,
                    resent_blocks: progress.snapshot().blocks_resent,
                    deleted,
                    packed_bytes: 0,
                    zero_bytes: 0,
                    packed_wire_bytes: 0,
                    wire_bytes: 0,
                    path: Default::default(),
                    elapsed: Default::default(),
                    compared_only: dry_run,
                    transport: "",
                };
                control
                    .send(&Message::Summary {
                        entries: summary.entries as u32,
                        bytes: summary.bytes,
                        deleted,
                    })
                    .await?;
                control.finish();
                if let Some((first, kind)) = first_failure.first.take().filter(|_| !dry_run) {
                    // The sender was told file by file; the receiver's exit says it too.
                    let wait = config.idle_timeout.max(std::time::Duration::from_secs(5));
                    let _ = tokio::time::timeout(wait, link.closed()).await;
                    // Directories and links that failed count among entries, not files.
                    let (items, total) = if failed_files as u64 == failures {
                        ("files", file_count)
                    } else {
                        ("entries", entries.len())
                    };
                    return Err(Error::FilesFailed {
                        items,
                        failed: failures as usize,
                        total,
                        first,
                        kind,
                    });
                }
                return Ok(summary);
            }
            tokio::select! {
                _ = watch_tick.tick() => {
                    shared.lock().map_err(|_| poisoned())?.close_done(&files);
                    tell_verified(&mut files, &mut control);
                    let s = progress.snapshot();
                    // The path as this end sees it, for the progress lines (they said 0).
                    let path = link.path();
                    let arrived = path.udp_rx_bytes;
                    progress.set_path(path);
                    stall.heard(arrived);
                    if !finished && stall.stalled(s.bytes_verified + s.bytes_kept, arrived) {
                        tracing::warn!(
                            "nothing arrived for {} s: waiting for the sender",
                            stall.quiet_for().max(StallWatch::AFTER).as_secs()
                        );
                        tracing::debug!(
                            "stalled: {} data streams read, {} of the ring's buffers free, {} files open; {}",
                            streams.len(),
                            pool.as_ref().map_or(0, |p| p.available()),
                            files.len(),
                            link.flow_figures()
                        );
                    }
                    silence.check(&**link, config.idle_timeout, "sender", "partial files are kept: the same files sent to a new `sluice recv` into this directory resume")?;
                    // Keep-alives keep the link up; they do not move the transfer on. A sender
                    // stalled in the middle of a block would otherwise hold both ends forever.
                    if !finished && stall.quiet_for() >= config.stall_timeout {
                        return Err(crate::progress::stalled_error(&peer.to_string(), config.stall_timeout, "sender", stall.answering()));
                    }
                }
                stream = link.accept_lane(), if accepting && pool.is_some() => match (stream, &pool) {
                    (Some(stream), Some(pool)) => {
                        streams.spawn(read_stream(stream, peer, shared.clone(), pool.clone(), ready_rx.clone(), job_tx.clone()));
                    }
                    // The connection ending is the control stream's business.
                    _ => accepting = false,
                },
                // A sender that asks and does not read its answers waits until it reads them.
                _ = control.drained(), if control.over_backlog() => {}
                msg = control.recv(), if !control.over_backlog() => {
                    let Some(msg) = msg? else {
                        return Err(conn_err(&"sender closed the control stream before finishing"));
                    };
                    stall.touch();
                    let event = shared.lock().map_err(|_| poisoned())?.session.on_message(msg)?;
                    // The patterns are complete with the first entry; replacing an entry whose
                    // type changed leaves what they match alone from then on.
                    if matches!(&event, ReceiverEvent::Entry(e) if e.id == 0) {
                        dest.keep_excluded(shared.lock().map_err(|_| poisoned())?.session.excludes().clone());
                    }
                    if let Some(id) = names_file(&event) {
                        prepare_pending!(Some(id));
                    }
                    match event {
                        ReceiverEvent::Reply(m) => {
                            block_size = shared.lock().map_err(|_| poisoned())?.session.block_size();
                            dry_run = shared.lock().map_err(|_| poisoned())?.session.dry_run();
                            // `--delete` also replaces an entry whose type changed (as rsync).
                            dest.replace_in_the_way(shared.lock().map_err(|_| poisoned())?.session.delete() && !dry_run);
                            control.send(&m).await?;
                            tracing::debug!("hello answered");
                            progress.push(Event::Connected { peer: peer.to_string() });
                            let (ring, allowed) = crate::lanes::receiving_ring(config, block_size)?;
                            pool = Some(ring);
                            link.allow_lanes(allowed);
                        }
                        ReceiverEvent::Entry(entry) if dry_run => {
                            // Compare only: note what is there, create nothing.
                            if entry.kind == EntryKind::File {
                                let existing = dest.existing_file(&entry.path)?;
                                let local_len = existing.as_ref().and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len());
                                if let Some(len) = local_len {
                                    control.send(&Message::Holding { id: entry.id, len, vouching: false }).await?;
                                }
                                let _ = scan_tx.send(ScanJob { id: entry.id, path: existing.clone(), journal: None, size: entry.size, block_size, version: entry.version, vouch: false, anchors_from: None });
                                scans_pending += 1;
                                files.insert(entry.id, Box::new(Incoming::compare_only(&entry, existing, local_len, block_size)));
                            }
                        }
                        ReceiverEvent::Entry(entry) => match entry.kind {
                            EntryKind::Dir => {
                                // One directory that cannot be made (a file in the way, a
                                // path past PATH_MAX) fails itself, not the transfer; what it
                                // holds fails as it arrives.
                                if let Err(e) = dest.create_dir(&entry) {
                                    if e.kind() == ErrorKind::NoSpace {
                                        return Err(e);
                                    }
                                    report_local(Outcome::failed(entry.id, &entry.path, &e), progress, &mut failures, &mut first_failure);
                                }
                            }
                            // Made at the end, a hard link once the file it names is in place.
                            EntryKind::Symlink | EntryKind::HardLink => symlinks.push(entry),
                            EntryKind::File => pending.push_back(entry.id),
                        },
                        ReceiverEvent::ManifestComplete => {
                            let s = shared.lock().map_err(|_| poisoned())?;
                            let entries = s.session.entries();
                            progress.set_totals(
                                entries.iter().filter(|e| e.kind == EntryKind::File).count() as u64,
                                entries.iter().map(|e| e.size).sum(),
                            );
                            drop(s);
                            let _ = ready_tx.send(true);
                        }
                        ReceiverEvent::FileDone { id, root, sent } if dry_run => {
                            let size = shared.lock().map_err(|_| poisoned())?.session.entries()[id as usize].size;
                            let outcome = match files.remove(&id) {
                                Some(f) => compare_verdict(id, *f, size, root, sent),
                                None => Outcome::Pending,
                            };
                            report(outcome, &mut control, progress, &mut failures, &mut first_failure, &mut verified_bytes).await?;
                        }
                        ReceiverEvent::FileDone { id, root, sent } => {
                            tracing::debug!(id, sent, "file done at the sender");
                            if let Some(f) = files.get_mut(&id) {
                                f.root = Some(root);
                                f.sent = Some(sent);
                            }
                            let outcome = try_finish(id, &mut files, &shared, dest, block_size, &job_tx)?;
                            report(outcome, &mut control, progress, &mut failures, &mut first_failure, &mut verified_bytes).await?;
                        }
                        ReceiverEvent::WantDetail { id, group } => {
                            start_base_copy(id, &files, &shared, &job_tx)?;
                            let start = group * GROUP_BLOCKS;
                            let cvs: Vec<Digest> = match files.get(&id) {
                                Some(f) => {
                                    if let Some(anchors) = f.anchors_of(f.geometry.group_blocks(group)) {
                                        control.queue(&Message::Anchors { id, first: start, anchors });
                                    }
                                    let local = f.local.as_ref().or(f.local_partial.as_ref());
                                    f.geometry.group_blocks(group)
                                        .map(|i| local.and_then(|l| l.get(i as usize).copied().flatten()).unwrap_or([0; 32]))
                                        .collect()
                                }
                                // A file that already failed here: "nothing held".
                                None => vec![[0; 32]; 1],
                            };
                            control.send(&Message::Have { id, first: start, cvs }).await?;
                        }
                        ReceiverEvent::WantPieces { id, index } => {
                            tracing::trace!(id, index, "piece hashes asked for");
                            if let Some(f) = files.get_mut(&id) {
                                if !f.pieces_asked.insert(index) {
                                    return Err(SessionError::Unexpected {
                                        state: "the pieces of this block were already sent",
                                        got: "WantPieces",
                                    }
                                    .into());
                                }
                            }
                            start_base_copy(id, &files, &shared, &job_tx)?;
                            // Hashed on the piece thread, which reads the block.
                            let size = shared.lock().map_err(|_| poisoned())?.session.entries()[id as usize].size;
                            match files.get(&id).and_then(|f| f.held_at.clone()) {
                                Some(path) => {
                                    let geometry = Geometry::new(size, block_size);
                                    let _ = piece_tx.send(PieceJob {
                                        id,
                                        index,
                                        path,
                                        offset: geometry.offset(index),
                                        len: geometry.block_len(index) as usize,
                                        piece: piece_size(block_size) as usize,
                                    });
                                }
                                None => control.send(&Message::Pieces { id, index, hashes: Vec::new() }).await?,
                            }
                        }
                        ReceiverEvent::Abandoned { id, reason } => {
                            tracing::info!(id, %reason, "the sender gave a file up");
                            // Its blocks still on the way are read off their streams and dropped.
                            shared.lock().map_err(|_| poisoned())?.claimed.insert(id, Claimed::Closed);
                            let outcome = give_up_file(id, &mut files, &job_tx, reason);
                            report(outcome, &mut control, progress, &mut failures, &mut first_failure, &mut verified_bytes).await?;
                        }
                        ReceiverEvent::Finish => finished = true,
                        ReceiverEvent::Exclude { pattern } => tracing::debug!(%pattern, "--delete leaves what this matches alone"),
                        // Counted as progress above, as every message is.
                        ReceiverEvent::Working { id, done } => tracing::debug!(id, done, "the sender reads blocks held here"),
                    }
                }
                answer = pieces_in.recv() => {
                    let Some(Pieces { id, index, hashes }) = answer else {
                        return Err(Error::io("piece thread")(std::io::Error::other("stopped before the transfer ended")));
                    };
                    stall.touch();
                    tracing::trace!(id, index, "sending piece hashes");
                    control.send(&Message::Pieces { id, index, hashes }).await?;
                }
                scanned = scanned_rx.recv() => {
                    let Some(scanned) = scanned else {
                        return Err(Error::io("scanner thread")(std::io::Error::other("stopped before the transfer ended")));
                    };
                    stall.touch();
                    let Scanned { id, first, cvs, anchors, done, vouched } = scanned;
                    if vouched {
                        let cvs = cvs.into_iter().flatten().collect();
                        control.send(&Message::Vouched { id, first, cvs }).await?;
                        continue;
                    }
                    if done {
                        scans_pending -= 1;
                    }
                    // Tell the sender what we hold as soon as it is known: a digest per whole
                    // group of blocks, block hashes for a trailing partial group.
                    if let Some(f) = files.get_mut(&id) {
                        announce_scan(&mut control, id, f, first, (cvs, anchors), done);
                    } else if done {
                        control.queue(&Message::HaveDone { id });
                    }
                    if !done {
                        continue;
                    }
                    let outcome = try_finish(id, &mut files, &shared, dest, block_size, &job_tx)?;
                    report(outcome, &mut control, progress, &mut failures, &mut first_failure, &mut verified_bytes).await?;
                }
                burst = done_rx.recv() => {
                    let Some(burst) = burst else {
                        return Err(Error::io("writer thread")(std::io::Error::other("stopped before the transfer ended")));
                    };
                    stall.touch();
                    for w in burst {
                    let outcome = match w {
                        Written::Block { file, index, cv, carried } => {
                            let Some(f) = files.get_mut(&file) else { continue };
                            if f.sealing {
                                // Written after its root was checked: not covered by it.
                                let outcome = fail_file(file, &mut files, &job_tx, format!("block {index} arrived after the file was verified"), ErrorKind::Refused);
                                report(outcome, &mut control, progress, &mut failures, &mut first_failure, &mut verified_bytes).await?;
                                continue;
                            }
                            let len = f.geometry.block_len(index);
                            if index < f.geometry.blocks() && f.received.insert(index, cv).is_none() {
                                f.got += 1;
                                f.verified += len;
                                f.fold(Geometry::group_of(index));
                            }
                            // Payload that crossed: for a patch, less than the block.
                            progress.add_verified(u64::from(carried).min(len));
                            try_finish(file, &mut files, &shared, dest, block_size, &job_tx)?
                        }
                        Written::MovedPieces { file, index, from, prefix, hashes } => {
                            // Not damage on the way: the older version's bytes were not all the
                            // block's. The sender sends the pieces that differ.
                            let Some(f) = files.get_mut(&file) else { continue };
                            let tries = f.retries.entry(index).or_insert(0);
                            *tries += 1;
                            if let Some(Claimed::Open(c)) = shared.lock().map_err(|_| poisoned())?.claimed.get_mut(&file) {
                                c.remove(index);
                            }
                            tracing::debug!(file, index, from, "moved block differs from the older version's bytes; asking for the pieces that differ");
                            control.send(&Message::MovedPieces { id: file, index, from, prefix, hashes }).await?;
                            Outcome::Pending
                        }
                        Written::Corrupt { file, index, offset } => {
                            let Some(f) = files.get_mut(&file) else { continue };
                            let tries = f.retries.entry(index).or_insert(0);
                            *tries += 1;
                            if *tries > MAX_RETRIES {
                                fail_file(file, &mut files, &job_tx, format!(
                                    "block at offset {offset} failed verification {} times", MAX_RETRIES + 1
                                ), ErrorKind::Verification)
                            } else {
                                // Accept the block once more and ask for it.
                                if let Some(Claimed::Open(c)) = shared.lock().map_err(|_| poisoned())?.claimed.get_mut(&file) {
                                    c.remove(index);
                                }
                                progress.add_resent();
                                tracing::info!(file, offset, "block failed verification; asking for it again");
                                control.send(&Message::Resend { id: file, offset }).await?;
                                Outcome::Pending
                            }
                        }
                        Written::Working { file, done } => {
                            // The sender hears of it as progress (its stall timeout), as this
                            // loop did above.
                            control.queue(&Message::Working { id: file, done });
                            continue;
                        }
                        Written::Sealed { file } => {
                            tracing::debug!(file, "sealed");
                            commit(file, &mut files, &shared, dest, &job_tx, false)?
                        }
                        Written::Failed { file, error } => {
                            if let Error::File { source, .. } = &error {
                                if source.raw_os_error() == Some(libc::ENOSPC) {
                                    return Err(error);
                                }
                            }
                            fail_file(file, &mut files, &job_tx, error.to_string(), error.kind())
                        }
                    };
                    report(outcome, &mut control, progress, &mut failures, &mut first_failure, &mut verified_bytes).await?;
                    }
                }
                Some(res) = streams.join_next() => {
                    match res {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(e) => return Err(conn_err(&e)),
                    }
                }
            }
        }
    }
    .await;
    // A run that failed still says what was removed to make room for entries.
    report_replaced(dest, progress);
    if result.is_err() {
        // The part files of the files still in progress (those verified were renamed, those
        // that failed removed): the caller removes them if the run was refused. Collected now,
        // not as files arrive, so what is kept is bounded by the files in progress.
        for f in files
            .values()
            .filter(|f| !f.inplace && f.compare_only.is_none())
        {
            parts.push(f.part.clone());
            parts.push(Destination::journal_path(&f.final_path));
        }
    }
    if let Err(e) = &result {
        // Tell the sender why, unless it is the one who aborted.
        let code = match e {
            Error::Session(SessionError::Peer { .. }) | Error::Connection { .. } => None,
            Error::Session(s) => Some(s.code()),
            Error::Decode(_) => Some(ErrorCode::Protocol),
            e if e.kind() == ErrorKind::NoSpace => Some(ErrorCode::NoSpace),
            _ => Some(ErrorCode::Io),
        };
        if let Some(code) = code {
            let _ = control
                .send(&Message::Error {
                    code,
                    message: e.to_string(),
                })
                .await;
            control.finish();
            // Closing now could discard the message in flight; the sender closes on reading it.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), link.closed()).await;
        }
    }
    // Stream tasks hold job senders: they must be gone before the writer can see the end.
    streams.shutdown().await;
    drop(job_tx);
    if result.is_err() {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    drop(scan_tx);
    drop(piece_tx);
    if let Err(e) = &result {
        tracing::debug!("transfer ended: {e}");
    }
    // Joined off this thread: the QUIC connection lives on it and must keep answering (and
    // carry the error message above to the sender) while the threads finish. Joining here
    // once left the receiver silent until the sender's idle timeout, with the reason unsaid.
    let _ = tokio::task::spawn_blocking(move || {
        let _ = writer.join();
        let _ = scanner.join();
        let _ = pieces.join();
    })
    .await;
    if result.is_ok() {
        parts.clear();
    }
    result
}

fn poisoned() -> Error {
    Error::io("receiver state")(std::io::Error::other("a task panicked"))
}

/// A file's outcome, to be told to the sender and the user.
enum Outcome {
    Pending,
    Verified {
        id: u32,
        path: String,
        size: u64,
        root: Digest,
        /// Bytes of it that were already here (kept, not received).
        kept: u64,
    },
    Failed {
        id: u32,
        path: String,
        reason: String,
        kind: ErrorKind,
    },
}

impl Outcome {
    /// Entry `id` (at manifest path `path`) failed with `e`.
    fn failed(id: u32, path: &str, e: &Error) -> Self {
        Self::Failed {
            id,
            path: path.to_owned(),
            reason: e.to_string(),
            kind: e.kind(),
        }
    }
}

async fn report(
    outcome: Outcome,
    control: &mut Control,
    progress: &Progress,
    failures: &mut u64,
    first_failure: &mut Failed,
    verified_bytes: &mut u64,
) -> Result<()> {
    match outcome {
        Outcome::Pending => Ok(()),
        Outcome::Verified {
            id,
            path,
            size,
            root,
            kept,
        } => {
            *verified_bytes += size;
            progress.add_kept(kept);
            progress.push(Event::FileVerified { path, size, root });
            control.queue(&Message::FileVerified { id });
            Ok(())
        }
        Outcome::Failed {
            id,
            path,
            reason,
            kind,
        } => {
            *failures += 1;
            first_failure.add(&path, &reason, kind);
            // Said to the user through the event (the command line prints it once).
            tracing::debug!(%path, %reason, "file failed");
            progress.push(Event::FileFailed {
                path,
                reason: reason.clone(),
            });
            control.queue(&Message::FileFailed {
                id,
                reason,
                cause: kind.cause(),
            });
            Ok(())
        }
    }
}

/// A file that failed before it was prepared still gets its place in the scanner's queue (an
/// empty scan): the sender expects every file's `HaveDone`, in manifest order.
fn hold_nothing(
    scans: &std_mpsc::Sender<ScanJob>,
    entry: &Entry,
    block_size: u32,
    pending: &mut u64,
) {
    let _ = scans.send(ScanJob {
        id: entry.id,
        path: None,
        journal: None,
        size: entry.size,
        block_size,
        version: entry.version,
        vouch: false,
        anchors_from: None,
    });
    *pending += 1;
}

/// Counts a failure of an entry the sender is not told about (a directory) and shows it.
/// The files that failed in this run: the first one's words and kind, and every one's path.
#[derive(Debug, Default)]
struct Failed {
    first: Option<(String, ErrorKind)>,
    paths: std::collections::HashSet<String>,
    /// Local failures warned of, by reason: a directory that cannot be made fails each
    /// directory below it with its reason, said a few times, not once per entry.
    warned: HashMap<String, u32>,
}

impl Failed {
    fn add(&mut self, path: &str, reason: &str, kind: ErrorKind) {
        self.first
            .get_or_insert_with(|| (format!("{path}: {reason}"), kind));
        self.paths.insert(path.to_owned());
    }
}

/// Lists what `--delete` removed to make room for entries whose type changed
/// ([`Destination::take_replaced`]) as `Deleted` events, as it lists the rest of what it
/// removes; returns how many.
fn report_replaced(dest: &Destination, progress: &Progress) -> u64 {
    let replaced = dest.take_replaced();
    let count = replaced.len() as u64;
    for (path, dir) in replaced {
        progress.push(Event::Deleted { path, dir });
    }
    count
}

/// A link made, or a directory's mode and times set, at the end of the run: one that fails
/// (a path the destination refuses, a permission) fails that entry, not the transfer; a full
/// disk still ends it.
fn made_or_failed(
    made: Result<()>,
    entry: &Entry,
    progress: &Progress,
    failures: &mut u64,
    first_failure: &mut Failed,
) -> Result<()> {
    match made {
        Err(e) if e.kind() == ErrorKind::NoSpace => Err(e),
        Err(e) => {
            report_local(
                Outcome::failed(entry.id, &entry.path, &e),
                progress,
                failures,
                first_failure,
            );
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

fn report_local(
    outcome: Outcome,
    progress: &Progress,
    failures: &mut u64,
    first_failure: &mut Failed,
) {
    if let Outcome::Failed {
        path, reason, kind, ..
    } = outcome
    {
        *failures += 1;
        first_failure.add(&path, &reason, kind);
        // Entries the sender hears nothing of (directories, links): said here, as the sender
        // says a failed file, the run going on; the same reason a few times at most.
        let said = first_failure.warned.entry(reason.clone()).or_default();
        *said += 1;
        if *said <= 3 {
            tracing::warn!("{path}: {reason}");
        }
        progress.push(Event::FileFailed { path, reason });
    }
}

/// [`fail_file`] for a file the sender gave up (its source changed or vanished while it was
/// sent): what arrived of it was verified block by block and stays in its part file for the
/// next run to resume from (it scans the part file and keeps only what the source still holds),
/// unless an older version under the final name is what the next run should build on (a delta:
/// the part file holds only the blocks that differ).
fn give_up_file(
    id: u32,
    files: &mut HashMap<u32, Box<Incoming>>,
    jobs: &Burst<Job>,
    reason: String,
) -> Outcome {
    let keep = files
        .get(&id)
        .is_some_and(|f| f.base.is_none() && f.older.is_none());
    close_failed(id, files, jobs, reason, ErrorKind::Local, keep)
}

/// Fails file `id`: its part file and journal are removed, what failed is reported.
fn fail_file(
    id: u32,
    files: &mut HashMap<u32, Box<Incoming>>,
    jobs: &Burst<Job>,
    reason: String,
    kind: ErrorKind,
) -> Outcome {
    close_failed(id, files, jobs, reason, kind, false)
}

/// [`fail_file`], keeping the part file and journal if `keep_part`.
fn close_failed(
    id: u32,
    files: &mut HashMap<u32, Box<Incoming>>,
    jobs: &Burst<Job>,
    reason: String,
    kind: ErrorKind,
    keep_part: bool,
) -> Outcome {
    let Some(f) = files.remove(&id) else {
        return Outcome::Pending;
    };
    // The writer removes the part file and its journal after the jobs queued before (so none
    // re-creates them); never a file in place, nor anything in a compare-only run.
    let remove = if keep_part || f.inplace || f.compare_only.is_some() {
        Vec::new()
    } else {
        vec![f.part.clone(), Destination::journal_path(&f.final_path)]
    };
    // The claim is given up once they are gone, not before: another transfer must not take
    // up a part file about to be removed.
    let lock = f.lock;
    if let Err(std::sync::mpsc::SendError(Job::Close { remove, .. })) = jobs.send_now(Job::Close {
        file: id,
        remove,
        lock,
    }) {
        for p in remove {
            let _ = std::fs::remove_file(p);
        }
    }
    Outcome::Failed {
        id,
        path: f.rel,
        reason,
        kind,
    }
}

/// If every block the sender sent is written, the scan is done and the root is known, checks
/// the root over received and kept blocks, then has the writer seal the file (copy a delta's
/// kept blocks, set its length, `fdatasync`); it is renamed into place on `Sealed`. An unchanged
/// file is put in place at once.
fn try_finish(
    id: u32,
    files: &mut HashMap<u32, Box<Incoming>>,
    shared: &Mutex<Shared>,
    dest: &Destination,
    block_size: u32,
    jobs: &Burst<Job>,
) -> Result<Outcome> {
    let Some(f) = files.get(&id) else {
        return Ok(Outcome::Pending);
    };
    let (Some(expected), Some(sent), Some(local)) = (f.root, f.sent, f.local.as_ref()) else {
        return Ok(Outcome::Pending);
    };
    if f.got < sent || f.sealing {
        return Ok(Outcome::Pending);
    }
    let size = f.geometry.size();
    // Grows only as far as blocks are present: a manifest's size claim alone allocates nothing.
    // A file of more than one group is rebuilt group by group: folded groups as they are, the
    // others from their blocks' hashes (received, or kept from what was here).
    let mut group_cvs = Vec::new();
    let mut cvs = Vec::new();
    // Kept ranges, adjacent ones merged.
    let mut kept: Vec<(u64, usize)> = Vec::new();
    let geometry = f.geometry;
    let grouped = geometry.groups() > 1;
    for group in 0..geometry.groups() {
        if let Some(cv) = f.folded.get(&group) {
            group_cvs.push(*cv);
            continue;
        }
        for i in geometry.group_blocks(group) {
            match (f.received.get(&i), local.get(i as usize).copied().flatten()) {
                (Some(cv), _) => cvs.push(*cv),
                (None, Some(cv)) => {
                    cvs.push(cv);
                    let offset = geometry.offset(i);
                    let len = geometry.block_len(i) as usize;
                    match kept.last_mut() {
                        Some(last) if last.0 + last.1 as u64 == offset => last.1 += len,
                        _ => kept.push((offset, len)),
                    }
                }
                (None, None) => {
                    return Ok(fail_file(
                        id,
                        files,
                        jobs,
                        format!("block {i} was neither sent nor held here"),
                        ErrorKind::Verification,
                    ));
                }
            }
        }
        if grouped {
            group_cvs.push(merkle::span_cv(&cvs, geometry.group_len(group), block_size));
            cvs.clear();
        }
    }
    let root = if grouped {
        merkle::root_from_cvs(&group_cvs, size, GROUP_BLOCKS as u32 * block_size)
    } else {
        merkle::root_from_cvs(&cvs, size, block_size)
    };
    if root != expected {
        return Ok(fail_file(
            id,
            files,
            jobs,
            format!(
                "BLAKE3 root {} does not match the sender's {}",
                sluice_proto::ticket::hex(&root),
                sluice_proto::ticket::hex(&expected)
            ),
            ErrorKind::Verification,
        ));
    }
    // Unchanged (every block held, same length): nothing was written, the file stands as it is
    // (an older version under the final name, in place or not; not a part file, which an
    // earlier run wrote).
    let unchanged_at = if f.inplace {
        Some(&f.final_path)
    } else {
        // Not a part file set aside: that is copied into a new part file.
        f.base.as_ref().filter(|b| **b == f.final_path)
    };
    let unchanged = f.got == 0 && unchanged_at.is_some_and(|p| same_len(p, size));
    let base = f.base.clone();
    if let Some(f) = files.get_mut(&id) {
        f.kept_bytes = kept.iter().map(|&(_, len)| len as u64).sum();
    }
    if unchanged {
        return commit(id, files, shared, dest, jobs, true);
    }
    // A delta's kept blocks are copied from the old version first (unless the whole of it
    // already was); then the file is made durable, and renamed once the writer says so.
    let keep = base.filter(|_| !kept.is_empty()).map(|b| (b, kept));
    let entry = shared.lock().map_err(|_| poisoned())?.session.entries()[id as usize].clone();
    let rename = files
        .get(&id)
        .filter(|f| !f.inplace)
        .map(|f| (f.final_path.clone(), f.journaled));
    let _ = jobs.send(Job::Seal {
        file: id,
        entry,
        keep,
        rename,
    });
    if let Some(f) = files.get_mut(&id) {
        f.sealing = true;
    }
    Ok(Outcome::Pending)
}

/// The sender asked about file `id`'s blocks, so it differs: if it is a delta against an older
/// version, have the writer copy that version into the part file now.
fn start_base_copy(
    id: u32,
    files: &HashMap<u32, Box<Incoming>>,
    shared: &Mutex<Shared>,
    jobs: &Burst<Job>,
) -> Result<()> {
    if files.get(&id).is_some_and(|f| f.base.is_some()) {
        let file_len = shared.lock().map_err(|_| poisoned())?.session.entries()[id as usize].size;
        let _ = jobs.send(Job::CopyBase { file: id, file_len });
    }
    Ok(())
}

/// Puts a verified file in place. A sealed one (its length, mode and mtime set, on disk): renames
/// its part file over the final name, or, in place, nothing more. An `unchanged` one (the final
/// file already held every block): updates its mode and mtime.
fn commit(
    id: u32,
    files: &mut HashMap<u32, Box<Incoming>>,
    shared: &Mutex<Shared>,
    dest: &Destination,
    jobs: &Burst<Job>,
    unchanged: bool,
) -> Result<Outcome> {
    let entry = shared.lock().map_err(|_| poisoned())?.session.entries()[id as usize].clone();
    let Some(f) = files.remove(&id) else {
        return Ok(Outcome::Pending);
    };
    // A sealed part file: the writer let go of it at the seal, and the sealer renamed it.
    if unchanged || f.inplace {
        let _ = jobs.send(Job::Close {
            file: id,
            remove: Vec::new(),
            lock: f.lock,
        });
    }
    let kept = f.kept_bytes;
    let root_outcome = |root| Outcome::Verified {
        id,
        path: entry.path.clone(),
        size: entry.size,
        root,
        kept,
    };
    let root = f.root.unwrap_or_default();
    if unchanged {
        // The file under the final name is verified as it stands.
        dest.apply_metadata(&entry, &f.final_path)?;
        return Ok(root_outcome(root));
    }
    // Sealed: its length, mode and mtime are set, it is on disk and (unless in place) renamed.
    // A part file set aside as its older version has served.
    if let Some(older) = f.older.as_ref().filter(|o| **o != f.final_path) {
        if let Err(e) = std::fs::remove_file(older) {
            tracing::warn!("{}: cannot remove {} ({e})", entry.path, older.display());
        }
    }
    tracing::debug!(id, "in place");
    Ok(root_outcome(root))
}

/// Records a run of scan results for a file and queues what the sender needs to know: a
/// [`Message::HaveGroups`] digest for each group of blocks now wholly scanned, and at the end
/// of the scan the block hashes of a trailing partial group and [`Message::HaveDone`].
fn announce_scan(
    control: &mut Control,
    id: u32,
    f: &mut Incoming,
    first: u64,
    (cvs, anchors): (Vec<Option<Digest>>, Vec<u64>),
    done: bool,
) {
    let geometry = f.geometry;
    if f.older.is_some() && anchors.len() == cvs.len() && !anchors.is_empty() {
        let end = first as usize + anchors.len();
        if f.anchors.len() < end {
            f.anchors.resize(end, NO_ANCHOR);
        }
        f.anchors[first as usize..end].copy_from_slice(&anchors);
    }
    let local = f.local_partial.get_or_insert_with(Vec::new);
    let end = first as usize + cvs.len();
    if local.len() < end {
        local.resize(end, None);
    }
    local[first as usize..end].copy_from_slice(&cvs);
    // The scanner reports a contiguous prefix of held blocks.
    let scanned = local.iter().take_while(|c| c.is_some()).count() as u64;
    let first_group = f.groups_sent;
    let mut digests = Vec::new();
    while f.groups_sent < geometry.groups() {
        let std::ops::Range { start, end } = geometry.group_blocks(f.groups_sent);
        if scanned < end {
            break;
        }
        let group: Vec<Digest> = local[start as usize..end as usize]
            .iter()
            .map(|c| c.unwrap_or_default())
            .collect();
        digests.push(group_digest(&group));
        f.groups_sent += 1;
    }
    for (i, chunk) in digests.chunks(MAX_HAVE).enumerate() {
        control.queue(&Message::HaveGroups {
            id,
            first: first_group + (i * MAX_HAVE) as u64,
            digests: chunk.to_vec(),
        });
    }
    if done {
        let start = f.groups_sent * GROUP_BLOCKS;
        if scanned > start {
            let tail: Vec<Digest> = local[start as usize..scanned as usize]
                .iter()
                .map(|c| c.unwrap_or_default())
                .collect();
            if let Some(anchors) = f.anchors_of(start..scanned) {
                control.queue(&Message::Anchors {
                    id,
                    first: start,
                    anchors,
                });
            }
            control.queue(&Message::Have {
                id,
                first: start,
                cvs: tail,
            });
        }
        control.queue(&Message::HaveDone { id });
        // As long as what was scanned; blocks past it are not held.
        f.local = Some(f.local_partial.take().unwrap_or_default());
    }
}

fn same_len(path: &std::path::Path, size: u64) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() == size)
}

/// Reads blocks from one data stream until it ends.
async fn read_stream(
    mut stream: LaneRx,
    peer: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    pool: Arc<BufferPool>,
    mut ready: watch::Receiver<bool>,
    jobs: Burst<Job>,
) -> Result<()> {
    ready
        .wait_for(|r| *r)
        .await
        .map_err(|_| transport::conn_error(peer)(&"receiver stopped"))?;
    while read_block(&mut stream, &shared, &pool, &jobs, peer).await? {}
    Ok(())
}

/// Reads one header and payload. Returns false at the clean end of the stream.
async fn read_block(
    stream: &mut LaneRx,
    shared: &Mutex<Shared>,
    pool: &Arc<BufferPool>,
    jobs: &Burst<Job>,
    peer: SocketAddr,
) -> Result<bool> {
    let conn_err = transport::conn_error(peer);
    let Some(header) = crate::lanes::read_header(stream, peer).await? else {
        return Ok(false);
    };
    let (index, file_len, block_size, drop_it) = {
        let mut s = shared.lock().map_err(|_| poisoned())?;
        let index = s.session.check_block(&header)?;
        if s.session.dry_run() {
            return Err(sluice_proto::session::SessionError::BadBlock {
                file: header.file,
                offset: header.offset,
                len: header.len,
                why: "data in a compare-only run",
            }
            .into());
        }
        if header.file >= s.taken_up {
            // Against the protocol: the writer would have nowhere to put it, and the file
            // would never finish.
            return Err(sluice_proto::session::SessionError::BadBlock {
                file: header.file,
                offset: header.offset,
                len: header.len,
                why: "a block before the file's HaveDone",
            }
            .into());
        }
        let file_len = s.session.entries()[header.file as usize].size;
        let block_size = u64::from(s.session.block_size());
        if header.early && s.first_held {
            // Sent before our Holding reached the sender, which sends the block again if the
            // file needs it: read and dropped, not claimed.
            (index, file_len, block_size, true)
        } else {
            let taken = s
                .claimed
                .entry(header.file)
                .or_insert_with(|| Claimed::Open(Default::default()));
            match taken {
                Claimed::Open(blocks) => {
                    if !blocks.insert(index) {
                        return Err(sluice_proto::session::SessionError::BadBlock {
                            file: header.file,
                            offset: header.offset,
                            len: header.len,
                            why: "block sent twice",
                        }
                        .into());
                    }
                    (index, file_len, block_size, false)
                }
                // The file failed here before the sender knew (or, against the protocol, was
                // already verified): the block is read and dropped.
                Claimed::Closed => (index, file_len, block_size, true),
            }
        }
    };
    // A moved block's offset in the older version comes first, then its literal prefix.
    let from = if header.moved {
        let mut from = [0u8; sluice_proto::codec::MOVED_LEN];
        stream
            .read_exact(&mut from)
            .await
            .map_err(|e| conn_err(&e))?;
        Some(u64::from_le_bytes(from))
    } else {
        None
    };
    // A spliced block's runs and literal bytes, checked before anything is read from the
    // older version.
    let splice = if header.spliced {
        let mut payload = vec![0u8; header.packed as usize];
        stream
            .read_exact(&mut payload)
            .await
            .map_err(|e| conn_err(&e))?;
        let (runs, literal_at) = sluice_proto::splice::decode(&payload, header.len)
            .map_err(sluice_proto::codec::DecodeError::from)?;
        Some(writer::Spliced {
            runs,
            payload,
            literal_at,
        })
    } else {
        None
    };
    let mut buf = pool.take().await;
    // A packed block arrives at the buffer's start, for the writer to unpack; a patch lands
    // where its bytes sit in the block, and the writer fills in the rest; a moved block's
    // prefix (`packed` bytes, maybe none) is the block's start, and a moved patch's bytes
    // follow it, at their place in the block.
    let within = (header.offset - index * block_size) as usize;
    let mut parts = [(0, 0); 2];
    parts[0] = match header.packed {
        0 if !header.moved => (within, header.len as usize),
        n => (0, n as usize),
    };
    if header.moved && header.patch {
        parts[1] = (within, header.len as usize);
    }
    if header.spliced {
        // All of it came above.
    } else if header.zero {
        // Nothing on the wire: the writer checks the hash on these zeros.
        let (at, len) = parts[0];
        buf.as_mut_slice()[at..at + len].fill(0);
    } else {
        for (at, len) in parts {
            stream
                .read_exact(&mut buf.as_mut_slice()[at..at + len])
                .await
                .map_err(|e| conn_err(&e))?;
        }
    }
    if drop_it {
        return Ok(true);
    }
    let job = if header.patch || header.moved || header.spliced {
        Job::Patch {
            file: header.file,
            index,
            header,
            file_len,
            block_size,
            buf,
            from,
            splice,
        }
    } else {
        Job::Write {
            file: header.file,
            index,
            header,
            file_len,
            buf,
            carried: header.len,
            moved: None,
        }
    };
    // A large block goes at once (with what is pending before it): held for the rest of the
    // runtime's turn it would hold its ring buffer, and 64 of them are the whole ring. Small
    // blocks — small files, last blocks — go in bursts.
    if header.len >= BURST_BELOW {
        let _ = jobs.send_now(job);
    } else {
        let _ = jobs.send(job);
    }
    Ok(true)
}

/// Blocks shorter than this reach the writer in bursts ([`Burst`]); longer ones at once.
const BURST_BELOW: u32 = 64 << 10;

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of many groups held unfolded at once (zero blocks' headers, read unevenly from
    /// the streams) do not keep their map's memory once the groups fold.
    #[test]
    fn folded_groups_give_their_memory_back() {
        let blocks = 64 * 1024u64;
        let g = Geometry::new(blocks * 1024, 1024);
        let mut f = Incoming::new("f".into(), "f".into(), ".f.part".into(), g);
        // Every group but its last block, then the last blocks.
        for index in (0..blocks).filter(|i| i % 64 != 63) {
            f.received.insert(index, [1; 32]);
            f.fold(Geometry::group_of(index));
        }
        let grown = f.received.capacity();
        assert!(grown >= 60_000, "{grown}");
        for index in (0..blocks).filter(|i| i % 64 == 63) {
            f.received.insert(index, [1; 32]);
            f.fold(Geometry::group_of(index));
        }
        assert!(f.received.is_empty());
        assert!(
            f.received.capacity() < grown / 8,
            "{}",
            f.received.capacity()
        );
        assert_eq!(f.folded.len() as u64, g.groups());
    }
}
