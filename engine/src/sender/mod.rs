//! The sending side: manifest, storage thread, and QUIC streams.
//!
//! ```text
//!  sluice-read thread                        sluice-net thread (tokio, current-thread)
//!  ───────────────────                       ─────────────────────────────────────────
//!  take Buffer from ring  ─┐                 control task: Hello → Manifest → FileDone… → Finish
//!  io_uring Read at offset │  blocks (mpsc,  stream tasks × N: pull a block, write header +
//!  BLAKE3 chaining value   ├─ bounded by ──▶   payload (Bytes owned by the ring buffer, no copy)
//!  Bytes::from_owner(buf) ─┘  the ring)      quinn encrypts and sends; ACK drops the Bytes and
//!  FileDone{root} ───────────── events ────▶   the buffer returns to the ring
//! ```
//!
//! The ring bounds memory: the reader blocks when every buffer is in flight. The reader owns
//! hashing so the network thread does nothing but QUIC.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sluice_proto::codec::encode_block_header;
use sluice_proto::geometry::Geometry;
use sluice_proto::message::{
    group_digest, piece_hash, piece_size, BlockHeader, Digest, EntryKind, Message, PieceHash,
    GROUP_BLOCKS, HELLO_DELETE, HELLO_DRY_RUN, HELLO_INPLACE, HELLO_REHASH, HELLO_RESTART,
};
use sluice_proto::session::{SenderEvent, SenderSession};
use sluice_proto::splice;
use sluice_proto::ticket::Ticket;
use tokio::sync::mpsc;

use crate::blockio::{self, Completion, Op, Request};
use crate::config::Config;
use crate::control::Control;
use crate::error::{Error, Result};
use crate::lanes::{queued, Block, Lanes, RingGrowth};
use crate::manifest::{self, SourceEntry};
use crate::merkle;
use crate::pack::Packer;
use crate::progress::{Event, Progress, StallWatch, Summary};
use crate::ring::BufferPool;
use crate::transport::{self, Link};

mod board;
mod hashes;
mod moves;

use board::{HaveBoard, Held};

/// What the reader tells the control task.
enum ReadEvent {
    FileDone {
        id: u32,
        root: Digest,
        sent: u64,
    },
    /// The file will not be sent: its source vanished or changed (see [`Reader::abandon`]).
    Abandoned {
        id: u32,
        reason: String,
    },
    WantDetail {
        id: u32,
        group: u64,
    },
    WantPieces {
        id: u32,
        index: u64,
    },
    Failed(Error),
    AllRead,
}

/// The receiver's answers the reader acts on.
struct ReaderInput {
    /// What the receiver holds.
    have: Arc<HaveBoard>,
    /// Blocks to send again.
    resend: std::sync::mpsc::Receiver<Again>,
}

/// A block the receiver asks for again.
struct Again {
    id: u32,
    offset: u64,
    /// A moved block that failed verification: its offset in the older version, its prefix's
    /// length, and the piece hashes of what the receiver put together
    /// ([`Message::MovedPieces`]).
    moved: Option<(u64, u32, Vec<sluice_proto::message::PieceHash>)>,
}

/// Sends files and directory trees to a receiver.
#[derive(Debug, Clone, Default)]
pub struct Sender {
    config: Config,
}

impl Sender {
    /// A sender with this configuration.
    pub fn new(config: Config) -> Self {
        Self { config }
    }

    /// Sends `sources` to the receiver named by `ticket` and returns once the receiver has
    /// verified every file. Blocks the calling thread; `progress` is updated meanwhile.
    pub fn send(
        &self,
        sources: &[PathBuf],
        ticket: &Ticket,
        progress: Arc<Progress>,
    ) -> Result<Summary> {
        self.send_listing(
            manifest::listed(sources, &self.config.excludes)?,
            ticket,
            progress,
        )
    }

    /// Sends the one file or tree `source` as `name` at the top of the receiver's directory
    /// (`sluice copy a.bin b.bin`).
    pub fn send_as(
        &self,
        source: &Path,
        name: &str,
        ticket: &Ticket,
        progress: Arc<Progress>,
    ) -> Result<Summary> {
        self.send_listing(
            manifest::listed_as(source, name, &self.config.excludes)?,
            ticket,
            progress,
        )
    }

    /// Sends what could be listed; what could not (below the sources) fails the run once the
    /// rest has arrived, as with `cp -a` or `rsync`, and holds `--delete` back.
    fn send_listing(
        &self,
        listing: manifest::Listing,
        ticket: &Ticket,
        progress: Arc<Progress>,
    ) -> Result<Summary> {
        let manifest::Listing {
            entries: mut manifest,
            unread,
        } = listing;
        crate::owners::name_entries(
            manifest.iter_mut().map(|e| &mut e.entry),
            self.config.ownership,
        );
        let mut config = self.config.clone();
        if config.delete && !unread.is_empty() {
            tracing::warn!("deleting nothing at the destination: part of the source could not be read, and what is missing from the listing is not missing from the source");
            config.delete = false;
        }
        for e in &unread {
            progress.push(Event::FileFailed {
                path: e.file_path(),
                reason: e.to_string(),
            });
        }
        let total = files_in(&manifest);
        progress.set_totals(
            total,
            manifest
                .iter()
                .filter(|e| e.entry.kind == EntryKind::File)
                .map(|e| e.entry.size)
                .sum(),
        );
        let total = total as usize;
        let rt = transport::runtime()?;
        let result = rt.block_on(run(&config, manifest, ticket, progress));
        let Some(first) = unread.first() else {
            return result;
        };
        let (failed, total) = match &result {
            Ok(_) => (0, total),
            Err(Error::FilesFailed { failed, total, .. }) => (*failed, *total),
            Err(_) => return result,
        };
        Err(Error::FilesFailed {
            // What could not be read may be a directory.
            items: "entries",
            failed: failed + unread.len(),
            total: total + unread.len(),
            first: first.to_string(),
            kind: first.kind(),
        })
    }
}

async fn run(
    config: &Config,
    manifest: Vec<SourceEntry>,
    ticket: &Ticket,
    progress: Arc<Progress>,
) -> Result<Summary> {
    let link = transport::connect(config, ticket).await?;
    let started = Instant::now();
    let result = transfer(config, manifest, ticket, &link, progress).await;
    let result = transport::explain(
        result,
        &*link,
        "receiver",
        config.idle_timeout,
        "it stopped or the network failed (partial files are kept at the receiver: send again to resume, to a new `sluice recv` into the same directory if this one stopped)",
    )
    .await;
    tracing::debug!("transfer ended");
    match &result {
        Ok(_) => link.close(0, b"done").await,
        Err(e) => link.close(1, e.to_string().as_bytes()).await,
    }
    tracing::debug!("sender closed");
    transport::finish_summary(result, started, &*link)
}

async fn transfer(
    config: &Config,
    manifest: Vec<SourceEntry>,
    ticket: &Ticket,
    link: &Arc<dyn Link>,
    progress: Arc<Progress>,
) -> Result<Summary> {
    let peer = link.peer();
    let conn_err = transport::conn_error(peer);
    let mut control = Control::new(link.open_control().await?, peer.to_string());
    let sizes: Vec<Option<u64>> = manifest
        .iter()
        .map(|e| (e.entry.kind == EntryKind::File).then_some(e.entry.size))
        .collect();
    let mut session = SenderSession::new(sizes.clone(), config.block_size);

    let flags = if config.restart { HELLO_RESTART } else { 0 }
        | if config.inplace { HELLO_INPLACE } else { 0 }
        | if config.delete { HELLO_DELETE } else { 0 }
        | if config.dry_run { HELLO_DRY_RUN } else { 0 }
        | if config.rehash { HELLO_REHASH } else { 0 };
    // The manifest follows the Hello without waiting for the Welcome: a round trip less before
    // the first block (0.3 s at 300 ms). The receiver reads nothing past a Hello it refuses.
    control.queue(&SenderSession::hello(
        ticket.secret,
        config.block_size,
        flags,
    ));
    // What was left out here, `--delete` must leave alone there (unless `--delete-excluded`).
    if config.delete && !config.delete_excluded {
        for pattern in config.excludes.patterns() {
            control.queue(&Message::Exclude {
                pattern: pattern.clone(),
            });
        }
    }
    for e in &manifest {
        control.queue(&Message::Entry(e.entry.clone()));
    }
    control.queue(&Message::ManifestEnd {
        count: manifest.len() as u32,
    });
    control.flush().await?;
    // Nor does the reader wait for it: the first file's first blocks fill the round trip
    // (`Reader::send_early`). The Welcome is the first message the loop below reads.

    // Blocks flow reader → stream tasks; the channel holds at most the ring's worth.
    let (ring_first, ring_ceiling) = config.sending_ring();
    let pool = BufferPool::growable(ring_first, ring_ceiling, config.block_size as usize)
        .map_err(Error::io("allocating the buffer ring"))?;
    let mut ring = RingGrowth::new(pool.clone(), config.block_size, &**link);
    let (block_tx, block_rx) = mpsc::channel::<Block>(config.ring_buffers);
    // To see the queue in a stall report without keeping the channel open.
    let queue_probe = block_tx.downgrade();
    let block_rx = Arc::new(tokio::sync::Mutex::new(block_rx));
    let (event_tx, mut event_rx) = mpsc::unbounded_channel();
    let board = Arc::new(HaveBoard::default());
    let (resend_tx, resend_rx) = std::sync::mpsc::channel();
    // The reader works through the files by their place in the manifest, which it shares.
    let manifest = Arc::new(manifest);
    let file_ids: Vec<u32> = manifest
        .iter()
        .enumerate()
        .filter(|(_, e)| e.entry.kind == EntryKind::File)
        .map(|(i, _)| i as u32)
        .collect();
    let reader = {
        let config = config.clone();
        let pool = pool.clone();
        let progress = progress.clone();
        // The handshake's round trip: on a LAN the receiver's answer comes before a block could
        // be read. Never towards loopback, whatever the round trip (a loaded host's handshake
        // took more than 4 ms there): early blocks go neither packed nor as holes.
        let early = !peer.ip().to_canonical().is_loopback() && link.path().rtt >= EARLY_MIN_RTT;
        let input = ReaderInput {
            have: board.clone(),
            resend: resend_rx,
        };
        let manifest = manifest.clone();
        std::thread::Builder::new()
            .name("sluice-read".into())
            .spawn(move || {
                let mut reader = Reader {
                    config: &config,
                    files: FileList {
                        all: &manifest,
                        files: &file_ids,
                    },
                    pool: &pool,
                    blocks: &block_tx,
                    events: &event_tx,
                    progress: &progress,
                    board: None,
                    finishing: Default::default(),
                    abandoned: Default::default(),
                    deferred: std::rc::Rc::new(Deferred::new(block_tx.clone(), event_tx.clone())),
                    search: Default::default(),
                    past_moves: Default::default(),
                    early,
                    in_memory: Default::default(),
                    packer: std::cell::RefCell::new(Packer::new(
                        config.compress,
                        config.compress_level,
                        peer.ip().to_canonical().is_loopback(),
                    )),
                };
                if let Err(e) = reader.run(&input) {
                    let _ = event_tx.send(ReadEvent::Failed(e));
                }
            })
            .map_err(Error::io("starting reader thread"))?
    };

    let mut streams = tokio::task::JoinSet::new();
    let lanes = Lanes {
        link: link.clone(),
        blocks: block_rx,
        progress: progress.clone(),
        stream_window: config.transport_to(Some(peer.ip())).stream_window,
        queue: queue_probe.clone(),
        pace: crate::lanes::Pace::new(config.max_rate),
        until: None,
        carried: Default::default(),
        taken: Default::default(),
        in_flight: Default::default(),
    };
    let mut open_streams = 0;
    let first = config.streams.max(1);
    lanes.grow(&mut open_streams, first, first, &mut streams);
    let mut stall = StallWatch::new();
    let (mut answered_flow, mut last_tx) = (0u64, 0u64);
    let mut silence = transport::Silence::new();
    let mut grow = tokio::time::interval(std::time::Duration::from_millis(100));
    grow.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // Whatever way this function ends, the reader must not wait on the board forever.
    struct CloseBoard<'a>(&'a HaveBoard);
    impl Drop for CloseBoard<'_> {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let _closer = CloseBoard(&board);
    let mut reading = true;
    // Until the reader has read everything: what it had read when the receiver last heard
    // that this side is at work (see `Working` below).
    let mut working = Some((0u64, std::time::Instant::now()));
    let mut roots = std::collections::HashMap::new();
    // Per file under way, the bytes the receiver said it verified so far (`VerifiedSoFar`).
    let mut verified_so_far: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
    let mut failures: Vec<String> = Vec::new();
    // Entries short in the receiver's summary: directories or links it could not make.
    let short;
    // What the first failure was, as the receiver said.
    let mut first_kind = crate::error::ErrorKind::Verification;
    let total_files = files_in(&manifest);
    let summary = loop {
        // What the last turns queued (FileDone of many small files) goes out in one write, once
        // the reader's events waiting now are taken.
        control.flush_unless(!event_rx.is_empty()).await?;
        tokio::select! {
            ev = event_rx.recv(), if reading => match ev {
                Some(ReadEvent::FileDone { id, root, sent }) => {
                    roots.insert(id, root);
                    control.queue(&Message::FileDone { id, root, sent });
                }
                // The receiver answers FileFailed, which counts it as failed here.
                Some(ReadEvent::Abandoned { id, reason }) => control.queue(&Message::Abandon { id, reason }),
                Some(ReadEvent::WantDetail { id, group }) => {
                    control.send(&Message::WantDetail { id, group }).await?;
                }
                Some(ReadEvent::WantPieces { id, index }) => {
                    tracing::trace!(id, index, "asking for piece hashes");
                    board.ask_pieces(id, index);
                    control.send(&Message::WantPieces { id, index }).await?;
                }
                Some(ReadEvent::AllRead) => {
                    working = None;
                    control.send(&Message::Finish).await?
                }
                Some(ReadEvent::Failed(e)) => {
                    let _ = control
                        .send(&Message::Error {
                            code: sluice_proto::message::ErrorCode::Io,
                            message: e.to_string(),
                        })
                        .await;
                    // Let the message reach QUIC before the connection is closed; bounded.
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), control.sync()).await;
                    return Err(e);
                }
                None => reading = false,
            },
            Some(res) = streams.join_next() => {
                match res {
                    Ok(Ok(())) => {}
                    // Data streams open before the Welcome: a receiver that refuses this
                    // session closes them too, and why is on the control stream.
                    Ok(Err(e)) if !session.welcomed() => {
                        let said = tokio::time::timeout(std::time::Duration::from_secs(1), control.recv()).await;
                        if let Ok(Ok(Some(msg))) = said {
                            session.on_message(msg)?;
                        }
                        return Err(e);
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(e) => return Err(conn_err(&e)),
                }
            }
            _ = grow.tick() => {
                let path = link.path();
                // What this end sends counts as data flowing only while the receiver answers:
                // to a stopped receiver, retransmissions and probes go on for many seconds.
                if stall.heard(path.udp_rx_bytes) {
                    answered_flow += path.udp_tx_bytes.saturating_sub(last_tx);
                }
                last_tx = path.udp_tx_bytes;
                let left = answered_flow;
                progress.set_path(path);
                let snapshot = progress.snapshot();
                let sent = snapshot.bytes_sent;
                // Blocks found held move the transfer on as blocks sent do: a large unchanged
                // file is read for minutes with nothing to send. The receiver, which then hears
                // nothing, is told about once a second.
                if stall.stalled(sent + snapshot.bytes_kept + progress.bytes_read(), left) {
                    let waiting = queue_probe.upgrade().map_or(0, |q| queued(&q));
                    tracing::warn!(
                        "nothing moved for {} s: waiting for the receiver",
                        stall.quiet_for().max(StallWatch::AFTER).as_secs()
                    );
                    tracing::debug!(
                        "stalled: {open_streams} data streams, {} blocks queued, reader {}; {}",
                        waiting,
                        if reading { "running" } else { "done" },
                        link.flow_figures()
                    );
                }
                // Per block read, not per group found held: a group of 64 blocks on a slow
                // disk can take longer than the receiver's stall timeout.
                let read = progress.bytes_read();
                if let (Some((before, at)), Some(id)) = (working, board.reading()) {
                    if read != before && at.elapsed() >= crate::progress::WORKING_EVERY {
                        control.send(&Message::Working { id, done: read }).await?;
                        working = Some((read, std::time::Instant::now()));
                    }
                }
                silence.check(&**link, config.idle_timeout, "receiver", "partial files are kept at the receiver: send again to resume, to a new `sluice recv` into the same directory if this one stopped")?;
                // Keep-alives keep the link up; they do not move the transfer on. While blocks
                // remain to be sent, a receiver that takes none and says nothing is stalled.
                if reading && stall.quiet_for() >= config.stall_timeout {
                    return Err(crate::progress::stalled_error(&peer.to_string(), config.stall_timeout, "receiver", stall.answering()));
                }
                if reading {
                    lanes.grow(&mut open_streams, first, config.max_streams.max(first), &mut streams);
                    ring.tick(sent, path.rtt, open_streams);
                }
            }
            msg = control.recv() => {
                let Some(msg) = msg? else {
                    return Err(conn_err(&"receiver closed the control stream early"));
                };
                stall.touch();
                match session.on_message(msg)? {
                    SenderEvent::Have { id, first, cvs } => board.add(id, first, cvs),
                    SenderEvent::HaveGroups { id, first, digests } => board.add_groups(id, first, digests),
                    SenderEvent::HaveDone(id) => board.done(id),
                    // Progress of the receiver's own (counted above as any message is).
                    SenderEvent::Working { id, done } => tracing::debug!(id, done, "the receiver copies the older version"),
                    SenderEvent::Anchors { id, first, anchors } => board.add_anchors(id, first, anchors),
                    SenderEvent::Holding { id, len, vouching } => board.holding(id, len, vouching),
                    SenderEvent::Vouched { id, first, cvs } if !config.rehash => board.add_vouched(id, first, cvs),
                    SenderEvent::Vouched { .. } => {}
                    SenderEvent::Pieces { id, index, hashes } => {
                        tracing::trace!(id, index, "piece hashes arrived");
                        board.add_pieces(id, index, hashes)
                    }
                    SenderEvent::Resend { id, offset } => {
                        progress.add_resent();
                        let _ = resend_tx.send(Again { id, offset, moved: None });
                    }
                    SenderEvent::MovedPieces { id, index, from, prefix, hashes } => {
                        // Not damage: the older version's bytes differ somewhere in the block.
                        let offset = index * u64::from(config.block_size);
                        let _ = resend_tx.send(Again { id, offset, moved: Some((from, prefix, hashes)) });
                    }
                    SenderEvent::VerifiedSoFar { id, done } => {
                        // Blocks of a file under way that the receiver verified: counted
                        // now, the rest of the file with its FileVerified.
                        let told = verified_so_far.entry(id).or_insert(0);
                        let done = done.min(manifest[id as usize].entry.size);
                        progress.add_verified(done.saturating_sub(*told));
                        *told = (*told).max(done);
                    }
                    SenderEvent::Verified(id) => {
                        let e = &manifest[id as usize].entry;
                        let root = roots.remove(&id).unwrap_or_default();
                        // The sender's count of verified bytes is whole files the receiver
                        // verified (`--json`'s `bytes_verified` stayed 0 here), less what it
                        // told of them before.
                        let told = verified_so_far.remove(&id).unwrap_or(0);
                        progress.add_verified(e.size.saturating_sub(told));
                        progress.push(Event::FileVerified { path: e.path.clone(), size: e.size, root });
                    }
                    SenderEvent::Failed { id, reason, cause } => {
                        if failures.is_empty() {
                            first_kind = crate::error::ErrorKind::of_cause(cause);
                        }
                        let path = manifest[id as usize].entry.path.clone();
                        failures.push(format!("{path}: {reason}"));
                        progress.push(Event::FileFailed { path, reason });
                    }
                    SenderEvent::Summary { entries, bytes, deleted } => {
                        // The receiver names only files that failed; a directory or link it
                        // could not make shows as an entry short of the manifest.
                        let expected = manifest.len().saturating_sub(failures.len()) as u64;
                        short = expected.saturating_sub(u64::from(entries)) as usize;
                        if short > 0 && failures.is_empty() {
                            first_kind = crate::error::ErrorKind::Destination;
                        }
                        let s = progress.snapshot();
                        break Summary {
                            entries: u64::from(entries),
                            files: total_files - failures.len() as u64,
                            bytes,
                            payload_bytes: s.bytes_sent,
                            kept_bytes: s.bytes_kept,
                            vouched_bytes: s.bytes_vouched,
                            resent_blocks: s.blocks_resent,
                            deleted,
                            packed_bytes: s.bytes_packed,
                            zero_bytes: s.bytes_zero,
                            packed_wire_bytes: s.packed_wire,
                            wire_bytes: 0,
                            path: Default::default(),
                            elapsed: Default::default(),
                            compared_only: false,
                            transport: "",
                        };
                    }
                    SenderEvent::Welcomed => progress.push(Event::Connected {
                        peer: peer.to_string(),
                    }),
                }
            }
        }
    };
    control.finish();
    // The reader waits for re-send requests until this sender is dropped.
    drop(resend_tx);
    board.close();
    let _ = reader.join();
    if !failures.is_empty() || short > 0 {
        // Directories and links that failed count among entries, not files.
        let (items, total) = if short > 0 {
            ("entries", manifest.len())
        } else {
            ("files", total_files as usize)
        };
        let first = failures.first().cloned().unwrap_or_else(|| {
            let what = if short == 1 {
                "directory or link"
            } else {
                "directories or links"
            };
            format!("{short} {what} could not be made at the receiver (its messages say which)")
        });
        return Err(Error::FilesFailed {
            items,
            failed: failures.len() + short,
            total,
            first,
            kind: first_kind,
        });
    }
    Ok(summary)
}

/// Why a file was abandoned when its source changed: `detail`, what was seen.
fn changed_while_sent(detail: &str) -> String {
    format!("changed while being sent: {detail}; send it again when it is quiet")
}

fn files_in(manifest: &[SourceEntry]) -> u64 {
    manifest
        .iter()
        .filter(|e| e.entry.kind == EntryKind::File)
        .count() as u64
}

/// The files being read, by their place in the file list: only those between their first block
/// and their FileDone, so memory follows the files in flight, not the manifest's length.
type Readings = std::collections::HashMap<usize, Reading>;

/// Per-file state while its blocks are being read.
struct Reading {
    cvs: hashes::BlockHashes,
    remaining: u64,
    sent: u64,
    /// Per group, blocks not hashed yet.
    group_left: Vec<u32>,
    /// Groups the receiver holds whole, with its digest, while ours is being computed.
    group_digests: std::collections::HashMap<u64, Digest>,
    /// Groups that differ and whose block hashes were asked for.
    pending: Vec<u64>,
    /// Compare only: blocks that differ, not sent.
    differs: Vec<u64>,
    /// Blocks the receiver holds another version of, whose piece hashes were asked for: only
    /// their differing bytes are sent, as a patch, once the file is read.
    patches: Vec<u64>,
    /// Of those, blocks found in the older version behind a long literal prefix: `(index,
    /// from, prefix)`, sent so if their piece hashes do not place more of them.
    moved_later: Vec<(u64, u64, usize)>,
    /// Blocks settled on the word of the receiver's resume journal, unread.
    vouched: std::collections::HashSet<u64>,
    /// Blocks vouched for that are read all the same, as a spot check, with the hash vouched.
    spot: std::collections::HashMap<u64, Digest>,
    /// The receiver's older version, once it reported anchors of it: where a differing block
    /// may be found shifted.
    moves: Option<Box<moves::Moves>>,
    /// Blocks that differ, read while the receiver's anchors of earlier groups were still to
    /// come (those groups differ too): looked for again, and sent, once they are in.
    later: Vec<(u64, Option<Digest>)>,
    /// The file being read, and its version when opened: looked at again once every block is
    /// read, to tell a file written to meanwhile ([`Reader::account`]).
    file: Arc<File>,
    version: sluice_proto::message::SourceVersion,
    /// Blocks were read again while finishing (groups that differ, patches): the version is
    /// looked at once more before the FileDone.
    reread: bool,
    /// Its metadata when opened, to say what changed.
    opened: std::fs::Metadata,
}

impl Reading {
    /// What changed, if the file, open as `path`, is another version than when it was opened.
    fn changed(&self, path: &std::path::Path) -> Result<Option<String>> {
        let now = self
            .file
            .metadata()
            .map_err(Error::file("reading metadata of", path))?;
        if manifest::source_version(&now) == self.version {
            return Ok(None);
        }
        Ok(Some(what_changed(&self.opened, &now)))
    }
}

/// What changed between two looks at one open file's metadata, in a user's words. Only the
/// change time moving (a `chmod`, a link made or removed, a rename) is named as such: the bytes
/// may be the same, but a write that put the modification time back looks the same, so the file
/// is given up all the same; what arrived of it is kept for the next run.
fn what_changed(then: &std::fs::Metadata, now: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    if now.size() != then.size() {
        format!(
            "its size went from {} to {} bytes while it was being sent",
            then.size(),
            now.size()
        )
    } else if (now.mtime(), now.mtime_nsec()) != (then.mtime(), then.mtime_nsec()) {
        "written to while it was being sent".into()
    } else if now.nlink() == 0 {
        "removed while it was being sent".into()
    } else {
        "its permissions, owner or links changed while it was being sent (its change time \
         moved, as it does after a write that puts the modification time back)"
            .into()
    }
}

/// One held block in this many the receiver's journal vouches for is read and checked all the
/// same (and the last one held): a source that is not the version the journal was written for,
/// although its tag says so (a filesystem whose change times lie), fails the transfer instead of
/// mixing two versions. It costs 1/64 of the reading that vouching saves.
const SPOT_CHECK: u64 = 64;

/// The most bytes of the first file sent before the receiver says what it holds of it (at least
/// one block): more than a fresh start's first window ([`sluice_quic::congestion::START_RATE`]
/// × the round trip: 375 KB at 300 ms), which is all that can leave in that round trip, and
/// all that is wasted when the receiver holds the file already.
const EARLY_BYTES: u64 = 1 << 20;

/// Reads of at most this many bytes from a file in memory are done at once on the reader
/// thread rather than queued ([`Reader::in_memory`]).
const SHORT_READ: usize = 64 << 10;

/// The shortest handshake round trip at which [`EARLY_BYTES`] go early.
const EARLY_MIN_RTT: std::time::Duration = std::time::Duration::from_millis(4);

/// The manifest's files in order, read through the manifest itself (no second copy of every
/// entry: 200,000 files held 50 MB more at the sender with one).
#[derive(Clone, Copy)]
struct FileList<'a> {
    all: &'a [SourceEntry],
    /// The files' places in `all`.
    files: &'a [u32],
}

impl<'a> FileList<'a> {
    fn iter(self) -> impl Iterator<Item = &'a SourceEntry> {
        self.files.iter().map(move |&i| &self.all[i as usize])
    }
}

impl std::ops::Index<usize> for FileList<'_> {
    type Output = SourceEntry;

    fn index(&self, fi: usize) -> &SourceEntry {
        &self.all[self.files[fi] as usize]
    }
}

/// The storage thread: reads every block of every file through the ring, hashes it, and passes
/// on the blocks the receiver lacks; then serves re-send requests until the transfer ends.
struct Reader<'a> {
    config: &'a Config,
    files: FileList<'a>,
    pool: &'a Arc<BufferPool>,
    blocks: &'a mpsc::Sender<Block>,
    events: &'a mpsc::UnboundedSender<ReadEvent>,
    progress: &'a Progress,
    board: Option<Arc<HaveBoard>>,
    /// Files whose blocks are all read, waiting for the receiver's answers before their last
    /// blocks and FileDone go out.
    finishing: std::cell::RefCell<Vec<usize>>,
    /// Files given up because their source changed or vanished ([`Reader::abandon`]), by id.
    abandoned: std::cell::RefCell<std::collections::HashSet<u32>>,
    /// Packs blocks with zstd where that pays (`--compress`).
    packer: std::cell::RefCell<Packer>,
    /// Short blocks and the `FileDone`s behind them, handed to the network thread in bursts.
    deferred: std::rc::Rc<Deferred>,
    /// A block and the bytes after it, looked through for the receiver's anchors.
    search: std::cell::RefCell<Vec<u8>>,
    /// What the anchors showed of the last files read ([`PAST_MOVES`] of them): a moved block
    /// that fails at the receiver comes back after its file was read, and may go again as a
    /// spliced block ([`Reader::send_moved_patch`]).
    past_moves: std::cell::RefCell<std::collections::VecDeque<(u32, moves::Shifts)>>,
    /// Whether the first file's first blocks go before the receiver's answer
    /// ([`Reader::send_early`]): only where the round trip is long enough to matter.
    early: bool,
    /// Devices whose files live in memory (tmpfs, ramfs), by `st_dev` ([`Reader::in_memory`]).
    in_memory: std::cell::RefCell<std::collections::HashMap<u64, bool>>,
}

/// Short blocks (small files, last blocks) held back by the reader with the `FileDone` events
/// that follow them, and handed to the network thread together: one wake-up of it for up to
/// [`Deferred::MAX`] small files instead of two per file (a block, then its `FileDone`). They go
/// before the reader blocks on anything (`crate::burst`), before any other event, and with the
/// next full block.
struct Deferred {
    blocks: std::cell::RefCell<Vec<Block>>,
    events: std::cell::RefCell<Vec<ReadEvent>>,
    block_tx: mpsc::Sender<Block>,
    event_tx: mpsc::UnboundedSender<ReadEvent>,
}

impl Deferred {
    /// Most short blocks held.
    const MAX: usize = 32;
    /// Blocks shorter than this (and than a whole block) are held.
    const BELOW: usize = 64 << 10;

    fn new(block_tx: mpsc::Sender<Block>, event_tx: mpsc::UnboundedSender<ReadEvent>) -> Self {
        Self {
            blocks: Default::default(),
            events: Default::default(),
            block_tx,
            event_tx,
        }
    }

    /// Hands over everything held: the blocks, then the events behind them.
    fn flush(&self) -> Result<()> {
        let blocks = std::mem::take(&mut *self.blocks.borrow_mut());
        let events = std::mem::take(&mut *self.events.borrow_mut());
        for block in blocks {
            self.block_tx
                .blocking_send(block)
                .map_err(|_| network_stopped())?;
        }
        for e in events {
            let _ = self.event_tx.send(e);
        }
        Ok(())
    }
}

impl crate::burst::Held for Deferred {
    fn holds(&self) -> bool {
        !self.blocks.borrow().is_empty() || !self.events.borrow().is_empty()
    }

    fn hand_over(&self) {
        let _ = self.flush();
    }
}

fn network_stopped() -> Error {
    Error::Connection {
        peer: "receiver".into(),
        detail: "network task stopped".into(),
    }
}

/// How long [`Reader::finish_file`] may wait for the receiver's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Not at all: finish only if every answer is in.
    No,
    /// For the group answers, not for piece hashes.
    Detail,
    /// For everything.
    All,
}

/// Most files waiting for answers at once; past it the reader waits for them (this bounds the
/// per-file block tables held).
const MAX_FINISHING: usize = 64;

type Tag = (usize, u64);

impl Reader<'_> {
    fn run(&mut self, input: &ReaderInput) -> Result<()> {
        crate::burst::hold_on_this_thread(Some(self.deferred.clone()));
        let result = self.read_all(input);
        crate::burst::hold_on_this_thread(None);
        result
    }

    /// Gives file `fi` up: its source vanished, could not be opened, or changed (`why`). The
    /// receiver is told (`Abandon`) and drops what it holds of it; reads still in flight for it
    /// are dropped as they complete; the other files go on. At most once per file.
    fn abandon(&self, fi: usize, why: String, state: &mut Readings) -> Result<()> {
        let src = &self.files[fi];
        let id = src.entry.id;
        if !self.abandoned.borrow_mut().insert(id) {
            return Ok(());
        }
        tracing::info!(path = %src.local.display(), "{why}; not sent");
        state.remove(&fi);
        self.finishing.borrow_mut().retain(|&f| f != fi);
        if let Some(board) = &self.board {
            board.forget(id);
        }
        self.event(ReadEvent::Abandoned { id, reason: why })
    }

    /// Sends `e` after everything held back.
    fn event(&self, e: ReadEvent) -> Result<()> {
        self.deferred.flush()?;
        let _ = self.events.send(e);
        Ok(())
    }

    /// A file's `FileDone`: behind its short block if that is held back, else at once.
    fn file_done(&self, e: ReadEvent) {
        if self.deferred.blocks.borrow().is_empty() {
            let _ = self.events.send(e);
        } else {
            self.deferred.events.borrow_mut().push(e);
        }
    }

    fn read_all(&mut self, input: &ReaderInput) -> Result<()> {
        let (mut io, _) = blockio::open::<Tag>(self.config.io_uring, self.config.read_depth);
        let mut state = Readings::default();
        let mut done = Vec::new();
        let mut spare = Vec::new();
        self.board = Some(input.have.clone());
        let by_id: std::collections::HashMap<u32, usize> = self
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.entry.id, i))
            .collect();

        for (fi, src) in self.files.iter().enumerate() {
            self.serve_resends(input, &by_id, &state)?;
            let waiting = self.finishing.borrow().len();
            self.finish_files(&mut state, waiting >= MAX_FINISHING)?;
            let size = src.entry.size;
            let opened = File::open(&src.local).and_then(|f| f.metadata().map(|m| (f, m)));
            let (file, meta) = match opened {
                Ok(opened) => opened,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.abandon(fi, "vanished before it was sent".into(), &mut state)?;
                    continue;
                }
                Err(e) => {
                    self.abandon(fi, format!("cannot be read: {e}"), &mut state)?;
                    continue;
                }
            };
            // The file opened must be the one listed: its data may be journaled at the
            // receiver under the listed version, and vouched for by a later run.
            let now = meta.len();
            let changed = if now != size {
                Some(format!("size was {size} bytes when listed, {now} now"))
            } else if src.entry.version != [0; 16]
                && manifest::source_version(&meta) != src.entry.version
            {
                Some("replaced or written to since it was listed".to_string())
            } else {
                None
            };
            if let Some(detail) = changed {
                self.abandon(fi, changed_while_sent(&detail), &mut state)?;
                continue;
            }
            let geometry = Geometry::new(size, self.config.block_size);
            let count = geometry.blocks();
            if count == 0 {
                // Not before the receiver has taken the file up (its HaveDone): it takes files
                // up a window at a time, and a run of empty files must not outrun it.
                if let Some(board) = &self.board {
                    let _ = board.wait_held(src.entry.id);
                    board.forget(src.entry.id);
                }
                self.file_done(ReadEvent::FileDone {
                    id: src.entry.id,
                    root: *blake3::hash(&[]).as_bytes(),
                    sent: 0,
                });
                continue;
            }
            let file = Arc::new(file);
            state.insert(
                fi,
                Reading {
                    file: file.clone(),
                    version: manifest::source_version(&meta),
                    reread: false,
                    opened: meta.clone(),
                    cvs: hashes::BlockHashes::new(geometry),
                    remaining: count,
                    sent: 0,
                    group_left: (0..geometry.groups())
                        .map(|g| {
                            let blocks = geometry.group_blocks(g);
                            (blocks.end - blocks.start) as u32
                        })
                        .collect(),
                    group_digests: std::collections::HashMap::new(),
                    pending: Vec::new(),
                    differs: Vec::new(),
                    patches: Vec::new(),
                    moved_later: Vec::new(),
                    vouched: Default::default(),
                    spot: Default::default(),
                    moves: None,
                    later: Vec::new(),
                },
            );
            // Fewer bytes allocated than the length: the file has holes.
            let sparse = {
                use std::os::unix::fs::MetadataExt;
                meta.blocks().saturating_mul(512) < size
            };
            // Blocks from the one holding byte `len` on are (almost all) missing for certain: read
            // and send them first, while the receiver is still scanning the part it holds.
            if let Some(b) = &self.board {
                b.set_reading(src.entry.id);
            }
            // The manifest's first file does not wait for the receiver's answer to start: its
            // first blocks fill the round trip that answer takes.
            let early = if fi == 0 {
                self.send_early(fi, &file)?
            } else {
                Vec::new()
            };
            let holding = self.board.as_ref().and_then(|b| b.wait_held(src.entry.id));
            let held_blocks = holding.map_or(0, |len| (len / geometry.block_size()).min(count));
            // A receiver that holds something of the file (it sent a Holding) dropped them; one
            // that holds nothing took them as any other blocks.
            let early_taken = if holding.is_some() {
                let dropped: u64 = early.iter().map(|&(i, _)| geometry.block_len(i)).sum();
                self.progress.take_back_sent(dropped);
                0
            } else {
                let st = state
                    .get_mut(&fi)
                    .ok_or_else(|| Error::io("reader")(std::io::Error::other("lost its file")))?;
                st.sent += early.len() as u64;
                for &(index, cv) in &early {
                    self.account(fi, index, cv, &mut state)?;
                }
                early.len() as u64
            };
            tracing::debug!(
                id = src.entry.id,
                held_blocks,
                count,
                "receiver's holding known"
            );
            // Blocks the receiver's resume journal vouches for are taken on its word, unread,
            // if the file is still the version the manifest names (and the journal's).
            let vouching = held_blocks > 0
                && !self.config.rehash
                && src.entry.version != [0; 16]
                && self
                    .board
                    .as_ref()
                    .is_some_and(|b| b.is_vouching(src.entry.id))
                && manifest::keeps_change_times(&file);
            // While the network is the bottleneck (no free buffer for the next missing block),
            // the reader checks held blocks meanwhile, into a buffer of its own: a held block
            // that matches never needs a ring buffer.
            let mut checked = 0;
            let mut next_missing = held_blocks.max(early_taken);
            while (next_missing < count || checked < held_blocks) && state.contains_key(&fi) {
                // As soon as the receiver has reported it, or when nothing else is left.
                if vouching
                    && checked < held_blocks
                    && (next_missing == count || self.held_status_known(src, checked))
                    && self.take_vouched(fi, checked, &mut state)?
                {
                    checked += 1;
                    continue;
                }
                let index = if next_missing < count {
                    next_missing
                } else {
                    checked
                };
                if index == 0 && held_blocks > 0 {
                    tracing::debug!(
                        id = src.entry.id,
                        "missing tail queued; reading the held part"
                    );
                }
                let offset = geometry.offset(index);
                let buf = match self.pool.try_take() {
                    Some(b) => b,
                    None if next_missing < count
                        && checked < held_blocks
                        && self.held_status_known(src, checked) =>
                    {
                        self.drain(&mut *io, &mut done, &mut state)?;
                        self.check_held(fi, &file, checked, &mut spare, &mut state)?;
                        checked += 1;
                        continue;
                    }
                    None => {
                        // Finish what is in flight before blocking on the network's pace.
                        self.drain(&mut *io, &mut done, &mut state)?;
                        self.pool.take_blocking()
                    }
                };
                if next_missing < count {
                    next_missing += 1;
                } else {
                    checked += 1;
                }
                let len = geometry.len_at(offset) as usize;
                let mut req = Request {
                    op: Op::Read,
                    file: file.clone(),
                    offset,
                    buf,
                    len,
                    tag: (fi, index),
                };
                if sparse && blockio::in_hole(&file, offset, len) {
                    // Reading a hole would fill the page cache with zero pages (a 100 GiB
                    // sparse file: 100 GiB of them); the zeros are known without it.
                    req.buf.as_mut_slice()[..len].fill(0);
                    done.push(Completion {
                        req,
                        result: Ok(len),
                    });
                } else if len <= SHORT_READ && self.in_memory(&file, &meta) {
                    // io_uring cannot read tmpfs without blocking and hands each such read
                    // to a worker thread; for a short read that hand-off costs more than the
                    // copy (`docs/decisions.md`, "Short reads of files in memory").
                    let result =
                        blockio::read_full(&req.file, &mut req.buf.as_mut_slice()[..len], offset);
                    done.push(Completion { req, result });
                } else {
                    io.submit(req, &mut done)
                        .map_err(Error::file("reading", &src.local))?;
                }
                self.handle(&mut done, &mut state)?;
                if io.in_flight() >= self.config.read_depth as usize {
                    io.wait(1, &mut done).map_err(Error::io("io_uring"))?;
                    self.handle(&mut done, &mut state)?;
                }
            }
        }
        self.drain(&mut *io, &mut done, &mut state)?;
        self.finish_files(&mut state, true)?;
        tracing::debug!("every block read");
        self.event(ReadEvent::AllRead)?;
        // Re-send requests can come until every file is verified; the control task hangs up then.
        while let Ok(again) = input.resend.recv() {
            self.resend(&by_id, again, &Readings::default())?;
            self.deferred.flush()?;
        }
        Ok(())
    }

    /// Whether the file of `meta` lives in memory (tmpfs, ramfs): its reads never wait for a
    /// device. Asked of the filesystem once per device.
    fn in_memory(&self, file: &File, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        *self
            .in_memory
            .borrow_mut()
            .entry(meta.dev())
            .or_insert_with(|| blockio::in_memory(file))
    }

    /// The block indices of `group` in a file of `size` bytes.
    fn group_range(&self, group: u64, size: u64) -> Range<u64> {
        Geometry::new(size, self.config.block_size).group_blocks(group)
    }

    fn bytes_of(&self, blocks: &Range<u64>, size: u64) -> u64 {
        let geometry = Geometry::new(size, self.config.block_size);
        geometry.offset(blocks.end).min(size) - geometry.offset(blocks.start)
    }

    fn drain(
        &self,
        io: &mut dyn blockio::BlockIo<Tag>,
        done: &mut Vec<Completion<Tag>>,
        state: &mut Readings,
    ) -> Result<()> {
        while io.in_flight() > 0 {
            io.wait(io.in_flight(), done)
                .map_err(Error::io("io_uring"))?;
            self.handle(done, state)?;
        }
        Ok(())
    }

    fn serve_resends(
        &self,
        input: &ReaderInput,
        by_id: &std::collections::HashMap<u32, usize>,
        state: &Readings,
    ) -> Result<()> {
        while let Ok(again) = input.resend.try_recv() {
            self.resend(by_id, again, state)?;
        }
        Ok(())
    }

    /// Reads one block again, synchronously, and sends it (a moved block that failed, as a
    /// moved patch).
    /// `state`: the files being read, whose anchors may show where the block's bytes went.
    fn resend(
        &self,
        by_id: &std::collections::HashMap<u32, usize>,
        again: Again,
        state: &Readings,
    ) -> Result<()> {
        let Again { id, offset, moved } = again;
        let Some((fi, src)) = by_id.get(&id).map(|&i| (i, &self.files[i])) else {
            return Ok(());
        };
        if self.abandoned.borrow().contains(&id) {
            return Ok(());
        }
        match moved {
            Some((from, prefix, theirs)) => {
                let reading = state
                    .get(&fi)
                    .and_then(|st| st.moves.as_deref())
                    .map(moves::Moves::shifts);
                self.send_moved_patch(src, offset, (from, prefix), &theirs, reading)
            }
            None => self.send_again(src, offset, None),
        }
    }

    /// Sends the block at `offset` of `src` again after the receiver found it, sent as moved
    /// (from `from`, its first `prefix` bytes literal), to differ from what it put together,
    /// whose piece hashes are `theirs`: as a moved patch carrying the bytes from the first
    /// differing piece to the last (the whole block if the receiver's pieces do not fit it).
    fn send_moved_patch(
        &self,
        src: &SourceEntry,
        offset: u64,
        (from, prefix): (u64, u32),
        theirs: &[PieceHash],
        reading: Option<&moves::Shifts>,
    ) -> Result<()> {
        let size = src.entry.size;
        let len = Geometry::new(size, self.config.block_size).len_at(offset) as usize;
        let block = self.read_again(src, offset, len)?;
        let cv = merkle::block_cv(&block, offset, size);
        let prefix_len = prefix as usize;
        let range = match self.differing_span(&block, theirs) {
            Some(span) if prefix_len < len => span.start.max(prefix_len)..span.end,
            _ => 0..0,
        };
        // Past its prefix, what the receiver put together is the older version's bytes from
        // `from` on, so those pieces are the older version's: an edit inside the block may be
        // spliced around, at the shifts found near it (relative to the one it was sent at).
        let spliced = (!range.is_empty() && u64::from(prefix) <= from)
            .then(|| {
                let past = self.past_moves.borrow();
                let m = reading.or_else(|| {
                    past.iter()
                        .rev()
                        .find(|(id, _)| *id == src.entry.id)
                        .map(|(_, m)| m)
                })?;
                let sent_at = (offset + u64::from(prefix)) as i64 - from as i64;
                let shifts: Vec<i64> = m
                    .around(offset / u64::from(self.config.block_size))
                    .into_iter()
                    .map(|d| d - sent_at)
                    .collect();
                let start = from - u64::from(prefix);
                let old = splice::OldBytes {
                    start,
                    len: m.old_len().saturating_sub(start).min(len as u64) as usize,
                    piece: piece_size(self.config.block_size) as usize,
                    skip: prefix_len,
                };
                splice::plan(&block, old, theirs, &shifts)
                    .filter(|(runs, _)| splice::encoded_len(runs) + old.piece <= range.len())
            })
            .flatten();
        if let Some((runs, literal)) = spliced {
            tracing::debug!(
                id = src.entry.id,
                offset,
                from,
                runs = runs.len(),
                literal,
                "moved block differs at the receiver; splicing it"
            );
            self.progress.take_back_kept(literal as u64);
            return self.send_spliced(src.entry.id, offset, cv, (&runs, literal), &block);
        }
        tracing::debug!(
            id = src.entry.id,
            offset,
            from,
            patch = ?range,
            "moved block differs at the receiver; sending the bytes that differ"
        );
        if range.is_empty() {
            // As any block sent again: its bytes cross twice where they once were kept.
            self.progress.take_back_kept(len as u64);
            return self.send_block(src.entry.id, offset, cv, block);
        }
        // Counted kept when it was sent as moved: these bytes cross after all (and the prefix
        // again).
        self.progress
            .take_back_kept((range.len() + prefix_len) as u64);
        let mut payload =
            Vec::with_capacity(sluice_proto::codec::MOVED_LEN + prefix_len + range.len());
        payload.extend_from_slice(&from.to_le_bytes());
        payload.extend_from_slice(&block[..prefix_len]);
        payload.extend_from_slice(&block[range.clone()]);
        self.send_frame(
            BlockHeader {
                file: src.entry.id,
                offset: offset + range.start as u64,
                len: range.len() as u32,
                hash: cv,
                patch: true,
                packed: prefix,
                zero: false,
                moved: true,
                early: false,
                spliced: false,
            },
            Bytes::from(payload),
        )
    }

    /// Reads the block at `offset` of `src` again and sends it; with `expected`, the hash it
    /// had when first read, a block that no longer has it is an error (the source changed).
    fn send_again(&self, src: &SourceEntry, offset: u64, expected: Option<Digest>) -> Result<()> {
        let size = src.entry.size;
        let len = Geometry::new(size, self.config.block_size).len_at(offset) as usize;
        let block = self.read_again(src, offset, len)?;
        let cv = merkle::block_cv(&block, offset, size);
        if expected.is_some_and(|e| e != cv) {
            return Err(Error::SourceChanged {
                path: src.local.clone(),
                detail: format!("the block at offset {offset} changed while it was being sent"),
            });
        }
        self.send_block(src.entry.id, offset, cv, block)
    }

    /// `e`, met while finishing file `fi`, if it does not mean that its source vanished or
    /// changed; if it does, the file is abandoned ([`Reader::abandon`]) and the others go on.
    fn abandon_on(&self, fi: usize, e: Error, state: &mut Readings) -> Result<bool> {
        let why = match &e {
            Error::SourceChanged { detail, .. } => changed_while_sent(detail),
            Error::File { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                "vanished while it was being sent".into()
            }
            Error::File { source, .. } if source.kind() == std::io::ErrorKind::UnexpectedEof => {
                changed_while_sent("it is shorter than when it was read")
            }
            _ => return Err(e),
        };
        self.abandon(fi, why, state)?;
        Ok(true)
    }

    /// Reads `len` bytes at `offset` of `src` again, into a ring buffer if one is free, else into
    /// a buffer of its own: this thread may itself hold the ring's other buffers (reads in
    /// flight for the next file), so waiting for one could wait forever with a small ring.
    fn read_again(&self, src: &SourceEntry, offset: u64, len: usize) -> Result<Bytes> {
        use std::os::unix::fs::FileExt;
        let file = File::open(&src.local).map_err(Error::file("opening", &src.local))?;
        let read = |b: &mut [u8]| {
            file.read_exact_at(b, offset)
                .map_err(Error::file("reading", &src.local))
        };
        match self.pool.try_take() {
            Some(mut buf) => {
                read(&mut buf.as_mut_slice()[..len])?;
                Ok(buf.freeze(len))
            }
            None => {
                let mut v = vec![0u8; len];
                read(&mut v)?;
                Ok(Bytes::from(v))
            }
        }
    }

    /// The bytes of `block` from the first piece whose hash differs from the receiver's,
    /// `theirs`, to the end of the last; `None` if nothing differs, or `theirs` is empty or has
    /// more hashes than the block has pieces. Fewer: the receiver's copy ends inside the block
    /// (its hashes are those of the whole pieces it holds), and the pieces past it differ.
    fn differing_span(&self, block: &[u8], theirs: &[PieceHash]) -> Option<Range<usize>> {
        let piece = piece_size(self.config.block_size) as usize;
        let ours: Vec<_> = block.chunks(piece).map(piece_hash).collect();
        if theirs.is_empty() || theirs.len() > ours.len() {
            return None;
        }
        let differs = |i: &usize| theirs.get(*i) != Some(&ours[*i]);
        let first = (0..ours.len()).find(differs)?;
        let last = (0..ours.len()).rev().find(differs)?;
        Some(first * piece..((last + 1) * piece).min(block.len()))
    }

    /// Whether a differing block of `len` bytes is worth a piece-hash round trip: it must have
    /// at least two pieces.
    fn patchable(&self, len: usize) -> bool {
        len >= 2 * piece_size(self.config.block_size) as usize
    }

    /// Sends block `index` of `src` as a patch: reads it again, compares its piece hashes with
    /// the receiver's copy's, and sends the bytes from the first differing piece to the last
    /// (the whole block if the receiver could not say). Where the older version is known to be
    /// shifted near the block (`near`), the block may go as a spliced block instead, or as the
    /// moved block it was found to be: whichever carries the fewest bytes.
    ///
    /// Returns the shift a spliced block ends at ([`splice::last_shift`]).
    fn send_patch(
        &self,
        src: &SourceEntry,
        index: u64,
        cv: Digest,
        near: &Near,
    ) -> Result<Option<i64>> {
        let theirs = match &self.board {
            Some(b) => b.wait_pieces(src.entry.id, index),
            None => Vec::new(),
        };
        let size = src.entry.size;
        let geometry = Geometry::new(size, self.config.block_size);
        let (offset, len) = (geometry.offset(index), geometry.block_len(index) as usize);
        let block = self.read_again(src, offset, len)?;
        if merkle::block_cv(&block, offset, size) != cv {
            return Err(Error::SourceChanged {
                path: src.local.clone(),
                detail: format!("the block at offset {offset} changed while it was being sent"),
            });
        }
        let range = self.differing_span(&block, &theirs).unwrap_or(0..len);
        let piece = piece_size(self.config.block_size) as usize;
        let splice = match near.old_len {
            // Also where no anchor showed a shift near the block (the edit is in the file's
            // last block, or the file has one block): the splice tries the block's own offset
            // and probes the gaps around what it finds.
            Some(old_len) if !theirs.is_empty() => {
                let old = splice::OldBytes {
                    start: offset,
                    len: old_len.saturating_sub(offset).min(len as u64) as usize,
                    piece,
                    skip: 0,
                };
                splice::plan(&block, old, &theirs, &near.shifts)
                    .filter(|(runs, _)| splice::encoded_len(runs) + piece <= range.len())
            }
            _ => None,
        };
        let moved = near
            .moved
            .filter(|&(_, prefix)| prefix + piece <= range.len())
            .filter(|&(_, prefix)| {
                splice
                    .as_ref()
                    .is_none_or(|(runs, _)| prefix < splice::encoded_len(runs))
            });
        if let Some((from, prefix)) = moved {
            self.progress.add_kept((len - prefix) as u64);
            return self
                .send_moved_block(src.entry.id, (offset, len), cv, from, &block[..prefix])
                .map(|()| None);
        }
        if let Some((runs, literal)) = splice {
            tracing::trace!(
                id = src.entry.id,
                index,
                runs = runs.len(),
                literal,
                "spliced from the older version"
            );
            self.progress.add_kept((len - literal) as u64);
            self.send_spliced(src.entry.id, offset, cv, (&runs, literal), &block)?;
            return Ok(splice::last_shift(&runs, offset));
        }
        let payload = block.slice(range.clone());
        self.progress.add_kept((len - payload.len()) as u64);
        self.send_frame(
            BlockHeader {
                file: src.entry.id,
                offset: offset + range.start as u64,
                len: payload.len() as u32,
                hash: cv,
                patch: range.len() < len,
                packed: 0,
                zero: false,
                moved: false,
                early: false,
                spliced: false,
            },
            payload,
        )
        .map(|()| None)
    }

    /// Settles block `i` of `src`, hashed in the first pass, against the receiver's hash of it,
    /// `their`, once the file is read: kept if equal; else sent as moved where the older version
    /// holds it shifted, or as [`Reader::decide`] says (read again and sent whole, or queued for
    /// a patch).
    fn settle_read(
        &self,
        st: &mut Reading,
        src: &SourceEntry,
        i: u64,
        their: Option<Digest>,
    ) -> Result<()> {
        let geometry = Geometry::new(src.entry.size, self.config.block_size);
        let (cv, len) = (st.cvs.get(i), geometry.block_len(i) as usize);
        if their != Some(cv) && self.send_moved(st, src, i, (cv, their), None)? {
            return Ok(());
        }
        if self.decide(st, src.entry.id, i, their, cv, len) {
            self.send_again(src, geometry.offset(i), Some(cv))?;
        }
        Ok(())
    }

    /// Sends block `index` of `src` (hash `cv`; `block`, its bytes, if at hand) as moved, if
    /// the receiver's older version holds it at another offset ([`moves`]): `true` if it was.
    /// A block found only behind a long literal prefix (the edit that shifted the rest lies in
    /// it) is queued as a patch instead, if the receiver holds a block at its offset (`their`):
    /// the piece hashes of that block may place most of the prefix too ([`Reader::send_patch`]).
    fn send_moved(
        &self,
        st: &mut Reading,
        src: &SourceEntry,
        index: u64,
        (cv, their): (Digest, Option<Digest>),
        block: Option<&[u8]>,
    ) -> Result<bool> {
        use std::os::unix::fs::FileExt;
        let Some(board) = self.board.as_ref().filter(|_| !self.config.dry_run) else {
            return Ok(false);
        };
        let id = src.entry.id;
        let fresh = board.anchors_since(id, st.moves.as_ref().map_or(0, |m| m.seen));
        if st.moves.is_none() && !fresh.is_empty() {
            // Holding came before the anchors: this does not wait.
            if let Some(old_len) = board.wait_held(id) {
                st.moves = Some(Box::new(moves::Moves::new(self.config.block_size, old_len)));
            }
        }
        let Some(moves) = st.moves.as_mut() else {
            return Ok(false);
        };
        moves.add(&fresh);
        let size = src.entry.size;
        let geometry = Geometry::new(size, self.config.block_size);
        let (offset, len) = (geometry.offset(index), geometry.block_len(index) as usize);
        if !moves.looks_at(offset) {
            return Ok(false);
        }
        // The block and the bytes after it, where an anchor starting in its last bytes ends.
        let end = (offset + len as u64 + sluice_proto::anchor::ANCHOR_LEN as u64 - 1).min(size);
        let mut data = self.search.borrow_mut();
        data.clear();
        let from_file = match block {
            Some(b) => {
                data.extend_from_slice(b);
                offset + len as u64
            }
            None => offset,
        };
        let have = data.len();
        data.resize(have + (end - from_file) as usize, 0);
        let file = File::open(&src.local).map_err(Error::file("opening", &src.local))?;
        file.read_exact_at(&mut data[have..], from_file)
            .map_err(Error::file("reading", &src.local))?;
        let Some((from, prefix)) = moves.find(&data, offset, len) else {
            return Ok(false);
        };
        if prefix >= 2 * piece_size(self.config.block_size) as usize
            && their.is_some()
            && self.patchable(len)
        {
            tracing::trace!(
                id,
                index,
                from,
                prefix,
                "found behind a long prefix; asking for its pieces"
            );
            st.sent += 1;
            st.moved_later.push((index, from, prefix));
            st.patches.push(index);
            let _ = self.event(ReadEvent::WantPieces { id, index });
            return Ok(true);
        }
        tracing::trace!(
            id,
            index,
            from,
            prefix,
            "block found in the older version, shifted"
        );
        st.sent += 1;
        self.progress.add_kept((len - prefix) as u64);
        self.send_moved_block(id, (offset, len), cv, from, &data[..prefix])?;
        Ok(true)
    }

    /// Sends the block at `offset` of file `file` (`len` bytes, hash `cv`) as moved: the
    /// older version's bytes from `from` on, after the literal `prefix`.
    fn send_moved_block(
        &self,
        file: u32,
        (offset, len): (u64, usize),
        cv: Digest,
        from: u64,
        prefix: &[u8],
    ) -> Result<()> {
        // The offset, then the block's first bytes as they are.
        let mut payload = Vec::with_capacity(sluice_proto::codec::MOVED_LEN + prefix.len());
        payload.extend_from_slice(&from.to_le_bytes());
        payload.extend_from_slice(prefix);
        self.send_frame(
            BlockHeader {
                file,
                offset,
                len: len as u32,
                hash: cv,
                patch: false,
                packed: prefix.len() as u32,
                zero: false,
                moved: true,
                early: false,
                spliced: false,
            },
            Bytes::from(payload),
        )
    }

    /// Sends `block`, at `offset` of file `file` (hash `cv`), as a spliced block of `runs`,
    /// which carry `literal` of its bytes.
    fn send_spliced(
        &self,
        file: u32,
        offset: u64,
        cv: Digest,
        (runs, literal): (&[splice::Run], usize),
        block: &[u8],
    ) -> Result<()> {
        let mut payload = Vec::with_capacity(splice::encoded_len(runs));
        splice::encode(runs, block, &mut payload);
        let header = BlockHeader {
            file,
            offset,
            len: block.len() as u32,
            hash: cv,
            patch: false,
            packed: payload.len() as u32,
            zero: false,
            moved: false,
            early: false,
            spliced: true,
        };
        // Its literal bytes; the runs that say where the rest lies are as its header.
        self.send_frame_carrying(header, Bytes::from(payload), literal as u64)
    }

    fn send_block(&self, file: u32, offset: u64, hash: Digest, payload: Bytes) -> Result<()> {
        self.send_whole(file, offset, hash, payload, false)
    }

    /// Sends a whole block, as an early block ([`Reader::send_early`]) if `early`.
    fn send_whole(
        &self,
        file: u32,
        offset: u64,
        hash: Digest,
        payload: Bytes,
        early: bool,
    ) -> Result<()> {
        self.send_frame(
            BlockHeader {
                file,
                offset,
                len: payload.len() as u32,
                hash,
                patch: false,
                packed: 0,
                zero: false,
                moved: false,
                early,
                spliced: false,
            },
            payload,
        )
    }

    /// Sends the first blocks of file `fi` (the manifest's first), up to [`EARLY_BYTES`], before
    /// the receiver has said what it holds of it: at a long round trip the first window would
    /// otherwise leave empty while that answer crosses. Stops once the answer is in. Returns
    /// each block sent, with its hash.
    fn send_early(&self, fi: usize, file: &File) -> Result<Vec<(u64, Digest)>> {
        let src = &self.files[fi];
        let id = src.entry.id;
        let forced = crate::fault::early_blocks();
        let Some(board) = self
            .board
            .as_ref()
            .filter(|_| (self.early || forced.is_some()) && !self.config.dry_run)
        else {
            return Ok(Vec::new());
        };
        let geometry = Geometry::new(src.entry.size, self.config.block_size);
        let blocks = geometry
            .blocks()
            .min(forced.unwrap_or((EARLY_BYTES / geometry.block_size()).max(1)));
        let mut sent = Vec::new();
        for index in 0..blocks {
            if forced.is_none() && board.answered(id) {
                break;
            }
            let (offset, len) = (geometry.offset(index), geometry.block_len(index) as usize);
            let mut buf = self.pool.take_blocking();
            let n = blockio::read_full(file, &mut buf.as_mut_slice()[..len], offset)
                .map_err(Error::file("reading", &src.local))?;
            if n != len {
                // Shorter than listed: the usual reading says so.
                break;
            }
            let cv = merkle::block_cv(&buf.as_slice()[..n], offset, src.entry.size);
            self.progress.add_read(n as u64);
            self.send_whole(id, offset, cv, buf.freeze(n), true)?;
            sent.push((index, cv));
        }
        // A small block would wait for company.
        self.deferred.flush()?;
        if !sent.is_empty() {
            tracing::debug!(id, blocks = sent.len(), "sent before the receiver's answer");
        }
        Ok(sent)
    }

    fn send_frame(&self, header: BlockHeader, payload: Bytes) -> Result<()> {
        // A moved block's offset in the older version is no byte of the file: as its header,
        // not counted as payload.
        let carries = if header.moved {
            payload.len().saturating_sub(sluice_proto::codec::MOVED_LEN)
        } else {
            payload.len()
        } as u64;
        self.send_frame_carrying(header, payload, carries)
    }

    /// [`Reader::send_frame`] of a frame that carries `carries` bytes of the file.
    fn send_frame_carrying(
        &self,
        mut header: BlockHeader,
        mut payload: Bytes,
        carries: u64,
    ) -> Result<()> {
        let mut packer = self.packer.borrow_mut();
        if header.moved || header.early || header.spliced {
            // An early block goes as it is, so that the receiver can tell it: not as zeros,
            // not packed. A moved block is an offset, not the block: neither a hole nor worth
            // packing.
        } else if !header.patch && blockio::all_zero(&payload) {
            // A sparse file's hole, or zeros written out: the header alone says it.
            header.zero = true;
            payload = Bytes::new();
            self.progress.add_zero(carries);
        } else if !header.patch && packer.is_on() {
            let queue_behind = 2 * queued(self.blocks) >= self.blocks.max_capacity();
            let path = self.progress.path();
            let link = (!path.rtt.is_zero()).then(|| path.cwnd as f64 / path.rtt.as_secs_f64());
            let behind = packer.network_behind(queue_behind, link);
            if let Some(packed) = packer.pack(&payload, behind) {
                self.progress.add_packed(carries, packed.len() as u64);
                header.packed = packed.len() as u32;
                payload = packed;
            }
        }
        let header = encode_block_header(&header);
        let block = Block {
            header: Bytes::copy_from_slice(&header),
            payload,
            carries,
        };
        if (carries as usize) < Deferred::BELOW.min(self.config.block_size as usize) {
            let full = {
                let mut held = self.deferred.blocks.borrow_mut();
                held.push(block);
                held.len() >= Deferred::MAX
            };
            return if full { self.deferred.flush() } else { Ok(()) };
        }
        self.deferred.flush()?;
        self.blocks
            .blocking_send(block)
            .map_err(|_| network_stopped())
    }

    /// Whether the receiver has reported block `index` of `src` yet: checking it now would not
    /// wait (a slow scan of the receiver's disk must not stall the missing blocks).
    fn held_status_known(&self, src: &SourceEntry, index: u64) -> bool {
        let block = Geometry::new(src.entry.size, self.config.block_size).block_range(index);
        self.board
            .as_ref()
            .is_none_or(|b| b.status_known(src.entry.id, index, block))
    }

    /// Reads held block `index` of file `fi` into `spare`, a buffer outside the ring, and
    /// settles it; only if the receiver's copy differs does the block take a ring buffer.
    fn check_held(
        &self,
        fi: usize,
        file: &File,
        index: u64,
        spare: &mut Vec<u8>,
        state: &mut Readings,
    ) -> Result<()> {
        let src = &self.files[fi];
        let geometry = Geometry::new(src.entry.size, self.config.block_size);
        let (offset, len) = (geometry.offset(index), geometry.block_len(index) as usize);
        spare.resize(len, 0);
        let n =
            blockio::read_full(file, spare, offset).map_err(Error::file("reading", &src.local))?;
        self.settle(fi, index, offset, len, n, Data::Spare(spare), state)
    }

    fn handle(&self, done: &mut Vec<Completion<Tag>>, state: &mut Readings) -> Result<()> {
        for c in done.drain(..) {
            let (fi, index) = c.req.tag;
            if !state.contains_key(&fi) {
                // Abandoned while this read was in flight.
                continue;
            }
            let n = match c.result {
                Ok(n) => n,
                Err(e) => {
                    // As rsync and tar: a source that cannot be read fails alone.
                    self.abandon(fi, format!("cannot be read: {e}"), state)?;
                    continue;
                }
            };
            let (offset, len) = (c.req.offset, c.req.len);
            self.settle(fi, index, offset, len, n, Data::Ring(c.req.buf), state)?;
        }
        Ok(())
    }

    /// Hashes block `index` of file `fi`, just read (`n` of `len` bytes at `offset`), and sends
    /// it unless the receiver holds it; finishes the file after its last block.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &self,
        fi: usize,
        index: u64,
        offset: u64,
        len: usize,
        n: usize,
        data: Data<'_>,
        state: &mut Readings,
    ) -> Result<()> {
        let src = &self.files[fi];
        let size = src.entry.size;
        if n != len {
            let why = changed_while_sent(&format!(
                "read {n} of {len} bytes at offset {offset}: the file is shorter than when the transfer started"
            ));
            return self.abandon(fi, why, state);
        }
        if let Some(pause) = crate::fault::slow_read() {
            std::thread::sleep(pause);
        }
        let cv = merkle::block_cv(&data.as_slice()[..n], offset, size);
        self.progress.add_read(n as u64);
        let Some(st) = state.get_mut(&fi) else {
            return Ok(());
        };
        if st.spot.remove(&index).is_some_and(|vouched| vouched != cv) {
            return Err(Error::SourceChanged {
                path: src.local.clone(),
                detail: format!(
                    "block {index} differs from what the receiver's resume journal recorded for this version of the file, \
                     although the file's identity and times are the same (its filesystem's change times cannot be trusted); \
                     run again with --rehash"
                ),
            });
        }
        let held = match &self.board {
            Some(b) => b.wait_status(src.entry.id, index, offset..offset + n as u64),
            None => Held::Block(None),
        };
        // A block that differs may lie in the receiver's older version at another offset. Where
        // groups before it differ too, whose anchors are still to come, it waits for them.
        let wait_anchors = |st: &Reading| {
            (!st.pending.is_empty() || !st.group_digests.is_empty())
                && self
                    .board
                    .as_ref()
                    .is_some_and(|b| b.has_anchors(src.entry.id))
        };
        let moved = match &held {
            Held::Block(their) if *their != Some(cv) && wait_anchors(st) => {
                tracing::trace!(index, "waits for the anchors of the groups before it");
                st.later.push((index, *their));
                Ok(true)
            }
            Held::Block(their) if *their != Some(cv) => {
                self.send_moved(st, src, index, (cv, *their), Some(&data.as_slice()[..n]))
            }
            _ => Ok(false),
        };
        let moved = match moved {
            Ok(moved) => moved,
            Err(e) => {
                drop(data);
                self.abandon_on(fi, e, state)?;
                return Ok(());
            }
        };
        let whole = match held {
            _ if moved => false,
            Held::Block(their) => self.decide(st, src.entry.id, index, their, cv, n),
            // Decided when the whole group is hashed; a differing block is read again then.
            Held::Group(d) => {
                st.group_digests.insert(index / GROUP_BLOCKS, d);
                false
            }
        };
        if whole {
            let payload = match data {
                Data::Ring(buf) => buf.freeze(n),
                Data::Spare(bytes) => {
                    let mut buf = self.pool.take_blocking();
                    buf.as_mut_slice()[..n].copy_from_slice(&bytes[..n]);
                    buf.freeze(n)
                }
            };
            self.send_block(src.entry.id, offset, cv, payload)?;
        } else {
            // The block's buffer goes back to the ring before the file's last work, which may
            // need one.
            drop(data);
        }
        self.account(fi, index, cv, state)?;
        Ok(())
    }

    /// Settles block `index` of file `id` (`len` bytes, our hash `cv`) against the receiver's
    /// hash of it, `their`: kept if they are equal; else counted as sent and, in a dry run,
    /// noted as differing, or, if the receiver holds another version worth patching, queued for
    /// a patch (its piece hashes asked for). `true`: the caller sends the block whole.
    fn decide(
        &self,
        st: &mut Reading,
        id: u32,
        index: u64,
        their: Option<Digest>,
        cv: Digest,
        len: usize,
    ) -> bool {
        if their == Some(cv) {
            self.progress.add_kept(len as u64);
            return false;
        }
        st.sent += 1;
        if self.config.dry_run {
            st.differs.push(index);
            false
        } else if their.is_some() && self.patchable(len) {
            st.patches.push(index);
            let _ = self.event(ReadEvent::WantPieces { id, index });
            false
        } else {
            true
        }
    }

    /// Settles held block `index` of file `fi` without reading it, on the word of the
    /// receiver's resume journal, if it vouched for the block and its report of the block
    /// agrees; waits for that report. `false`: the block is to be read as usual.
    fn take_vouched(&self, fi: usize, index: u64, state: &mut Readings) -> Result<bool> {
        let src = &self.files[fi];
        let Some(board) = &self.board else {
            return Ok(false);
        };
        let geometry = Geometry::new(src.entry.size, self.config.block_size);
        let (offset, len) = (geometry.offset(index), geometry.block_len(index));
        // `Vouched` comes before the report, so once the report is in, so is the vouch.
        let held = board.wait_status(src.entry.id, index, offset..offset + len);
        let Some(cv) = board.take_vouched(src.entry.id, index) else {
            return Ok(false);
        };
        let Some(st) = state.get_mut(&fi) else {
            return Ok(false);
        };
        let held_blocks = board
            .wait_held(src.entry.id)
            .map_or(0, |l| l / geometry.block_size())
            .min(geometry.blocks());
        if index % SPOT_CHECK == 0 || index + 1 == held_blocks {
            // Read as usual, and checked against the vouched hash (`settle`).
            st.spot.insert(index, cv);
            return Ok(false);
        }
        match held {
            Held::Block(Some(h)) if h == cv => self.progress.add_kept(len),
            Held::Group(d) => {
                st.group_digests.insert(index / GROUP_BLOCKS, d);
            }
            // The report disagrees with the vouch: read the block after all.
            Held::Block(_) => return Ok(false),
        }
        st.vouched.insert(index);
        self.progress.add_vouched(len);
        self.account(fi, index, cv, state)?;
        Ok(true)
    }

    /// Records the hash of block `index` of file `fi`, settled: compares its group with the
    /// receiver's once the whole group is known, and queues the file for finishing after its
    /// last block.
    fn account(&self, fi: usize, index: u64, cv: Digest, state: &mut Readings) -> Result<()> {
        let src = &self.files[fi];
        let size = src.entry.size;
        let group = index / GROUP_BLOCKS;
        let Some(st) = state.get_mut(&fi) else {
            return Ok(());
        };
        st.cvs.set(index, cv);
        st.remaining -= 1;
        st.group_left[group as usize] -= 1;
        if st.group_left[group as usize] == 0 {
            if let Some(theirs) = st.group_digests.remove(&group) {
                let range = self.group_range(group, size);
                let ours = group_digest(st.cvs.group(group));
                if ours == theirs {
                    self.progress.add_kept(self.bytes_of(&range, size));
                } else {
                    st.pending.push(group);
                    let _ = self.event(ReadEvent::WantDetail {
                        id: src.entry.id,
                        group,
                    });
                }
            }
            // Its block hashes are looked at again only where the group differs from the
            // receiver's, or one of its blocks waits for a patch or for anchors.
            let in_play = |i: &u64| i / GROUP_BLOCKS == group;
            if !st.pending.contains(&group)
                && !st.patches.iter().any(in_play)
                && !st.later.iter().any(|(i, _)| in_play(i))
            {
                st.cvs.fold(group);
            }
        }
        if st.remaining == 0 {
            // Written to while it was read (the last read has completed: not merely been
            // queued): the blocks sent may mix two versions, each block verified but the whole
            // matching neither. Stopped here, named, like rsync's "file has vanished" and tar's
            // "file changed as we read it".
            if let Some(what) = st.changed(&src.local)? {
                return self.abandon(fi, changed_while_sent(&what), state);
            }
            // Finished when the receiver's answers about it are in (finish_files), so the
            // reader goes on with the next file meanwhile: on a long link a round trip per
            // changed file would add up.
            self.finishing.borrow_mut().push(fi);
        }
        Ok(())
    }

    /// Finishes the files whose blocks are all read, as far as the receiver's answers allow
    /// (`wait`: waiting for them, until every such file is finished).
    fn finish_files(&self, state: &mut Readings, wait: bool) -> Result<()> {
        let mut list = std::mem::take(&mut *self.finishing.borrow_mut());
        if wait {
            // Every file's group answers first, which sends every WantPieces, then every
            // patch: one round trip for all the files, not one per file.
            let mut still = Vec::new();
            for fi in list {
                if !self.finish_file(fi, state, Wait::Detail)? {
                    still.push(fi);
                }
            }
            list = still;
        }
        let mode = if wait { Wait::All } else { Wait::No };
        let mut left = Vec::new();
        for fi in list {
            if !self.finish_file(fi, state, mode)? {
                left.push(fi);
            }
        }
        let mut finishing = self.finishing.borrow_mut();
        left.append(&mut finishing);
        *finishing = left;
        Ok(())
    }

    /// Sends what is left of file `fi` once its blocks are all read — blocks of groups that
    /// differ, patches — then its FileDone. Unless `wait` allows waiting, returns `false` (and does nothing
    /// more) while an answer it needs from the receiver is still to come.
    fn finish_file(&self, fi: usize, state: &mut Readings, wait: Wait) -> Result<bool> {
        let src = &self.files[fi];
        let size = src.entry.size;
        let Some(st) = state.get_mut(&fi) else {
            return Ok(true);
        };
        // Groups that differ: send the blocks whose hashes differ.
        let geometry = Geometry::new(size, self.config.block_size);
        let id = src.entry.id;
        if wait == Wait::No
            && self
                .board
                .as_ref()
                .is_some_and(|b| !st.pending.iter().all(|&g| b.detail_known(id, g)))
        {
            return Ok(false);
        }
        st.reread |= !st.pending.is_empty() || !st.later.is_empty() || !st.patches.is_empty();
        // Every differing group's answer first: each brings the anchors of its older blocks,
        // where any block of the file may be found shifted.
        let answers: Vec<(u64, Vec<Option<Digest>>)> = std::mem::take(&mut st.pending)
            .into_iter()
            .map(|group| {
                let range = self.group_range(group, size);
                let theirs = match &self.board {
                    Some(b) => b.wait_detail(src.entry.id, group, range),
                    None => Vec::new(),
                };
                (group, theirs)
            })
            .collect();
        for (group, theirs) in answers {
            let range = self.group_range(group, size);
            for i in range.clone() {
                let their = theirs.get((i - range.start) as usize).copied().flatten();
                if their != Some(st.cvs.get(i)) && st.vouched.remove(&i) {
                    // The receiver's journal vouched for this block of its part file, and its
                    // scan of the part file now finds other bytes there (changed since, or
                    // damaged): it is read and sent as any block the receiver lacks.
                    tracing::warn!(
                        "{}: the receiver's copy of block {i}, which its journal vouched for, \
                         differs; sending it",
                        src.local.display()
                    );
                    self.progress.take_back_vouched(geometry.block_len(i));
                }
                if let Err(e) = self.settle_read(st, src, i, their) {
                    return self.abandon_on(fi, e, state);
                }
            }
        }
        // Blocks of the last group that waited for the anchors above.
        for (i, their) in std::mem::take(&mut st.later) {
            if let Err(e) = self.settle_read(st, src, i, their) {
                return self.abandon_on(fi, e, state);
            }
        }
        if wait != Wait::All
            && self
                .board
                .as_ref()
                .is_some_and(|b| !st.patches.iter().all(|&i| b.pieces_known(id, i)))
        {
            return Ok(false);
        }
        // In block order: a missing tail is queued first, but the shift a splice ends at is
        // what the blocks after it try.
        let mut patches = std::mem::take(&mut st.patches);
        patches.sort_unstable();
        for i in patches {
            let near = Near {
                shifts: st
                    .moves
                    .as_ref()
                    .map_or(Vec::new(), |m| m.shifts().around(i)),
                old_len: st
                    .moves
                    .as_ref()
                    .map(|m| m.shifts().old_len())
                    .or_else(|| self.board.as_ref().and_then(|b| b.wait_held(src.entry.id))),
                moved: st
                    .moved_later
                    .iter()
                    .find(|m| m.0 == i)
                    .map(|&(_, from, prefix)| (from, prefix)),
            };
            match self.send_patch(src, i, st.cvs.get(i), &near) {
                // The blocks after it may be where the older version stands after this one.
                Ok(Some(shift)) => {
                    if let Some(m) = st.moves.as_mut() {
                        m.note(i, shift);
                    }
                }
                Ok(None) => {}
                Err(e) => return self.abandon_on(fi, e, state),
            }
        }
        // Blocks were read again just now: written to since the first pass, the file may mix
        // versions in what was sent (rsync's and tar's "file changed as we read it").
        if let Some(what) = st
            .reread
            .then(|| st.changed(&src.local))
            .transpose()?
            .flatten()
        {
            self.abandon(fi, changed_while_sent(&what), state)?;
            return Ok(true);
        }
        let root = st.cvs.root();
        if !st.differs.is_empty() {
            st.differs.sort_unstable();
            let mut ranges: Vec<Range<u64>> = Vec::new();
            for &i in &st.differs {
                let r = geometry.block_range(i);
                match ranges.last_mut() {
                    Some(last) if last.end == r.start => last.end = r.end,
                    _ => ranges.push(r),
                }
            }
            self.progress.push(Event::Differs {
                path: src.entry.path.clone(),
                ranges,
            });
        }
        if let Some(m) = st.moves.take().map(|m| m.into_shifts()).filter(|m| m.any()) {
            let mut past = self.past_moves.borrow_mut();
            if past.len() == PAST_MOVES {
                past.pop_front();
            }
            past.push_back((src.entry.id, m));
        }
        let sent = st.sent;
        state.remove(&fi);
        if let Some(b) = &self.board {
            b.forget(src.entry.id);
        }
        self.file_done(ReadEvent::FileDone {
            id: src.entry.id,
            root,
            sent,
        });
        Ok(true)
    }
}

/// Files whose [`moves::Moves`] the reader keeps once they are read.
const PAST_MOVES: usize = 16;

/// What is known of the receiver's older version around a block about to be patched
/// ([`Reader::send_patch`]).
struct Near {
    /// Shifts of the older version found near the block (new offset − old offset).
    shifts: Vec<i64>,
    /// The older version's length.
    old_len: Option<u64>,
    /// Where the block was found behind a long literal prefix: `(from, prefix)`.
    moved: Option<(u64, usize)>,
}

/// The bytes of a block just read: in a ring buffer, or in the reader's spare buffer.
enum Data<'a> {
    Ring(crate::ring::Buffer),
    Spare(&'a [u8]),
}

impl Data<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Data::Ring(buf) => buf.as_slice(),
            Data::Spare(bytes) => bytes,
        }
    }
}
