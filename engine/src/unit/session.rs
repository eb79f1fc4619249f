//! Sessions of units that are not files: a source cuts each unit into blocks, the blocks cross on a lane of
//! their own, and a sink takes them in order and commits the unit whole. A PostgreSQL table
//! range is such a unit (`sluice db`): its length is known only at its end, its bytes must reach
//! the sink in order (a `COPY FROM STDIN` stream), and its commit is a transaction.
//!
//! The exchange: `Hello` (secret, block size) → `Welcome`, then the units the destination
//! already holds (`Held`, ended by an empty key) so an interrupted run does not send them
//! again. Units go in phases (a database's schema before its rows, its indexes after them);
//! within a phase up to `jobs` units are in flight, each on its own lane (see
//! [`sluice_proto::unit`]). The receiver answers each unit with `FileVerified` once committed or
//! `FileFailed` with its reason. A unit that failed for a reason that passes (a deadlock, a
//! connection cut while its server still takes new ones: [`Error::is_transient`]) is sent again,
//! up to [`ATTEMPTS`] times; one that failed a check is not (the same check would fail again),
//! and the others go on. Any other failure (a server gone, a permission, a missing table) would
//! fail every attempt and every unit after it the same way: the receiving end says it and ends
//! the session, and the run ends with that one error. `Finish` → `Summary`.
//!
//! Every block is checked against the sender's BLAKE3 hash before the sink sees it, and the
//! closing frame's byte count and trailer (the source's own account: rows and a digest for a
//! table range) are handed to the sink's commit, which refuses a unit that does not match.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_proto::codec::{
    decode_block_header, encode_block_header, BLOCK_HEADER_LEN, BLOCK_TAG, PACKED_TAG,
};
use sluice_proto::message::{BlockHeader, ErrorCode, FailCause, Message, HELLO_UNITS};
use sluice_proto::session::{SenderSession, SessionError};
use sluice_proto::ticket::Ticket;
use sluice_proto::unit::{self as frames, CLOSE_PREFIX, OPEN_PREFIX, UNIT_CLOSE_TAG};
use sluice_proto::PROTOCOL_VERSION;
use tokio::io::AsyncReadExt;

use crate::config::Config;
use crate::control::Control;
use crate::endpoint::OneSender;
use crate::error::{Error, ErrorKind, Result};
use crate::merkle;
use crate::progress::Progress;
use crate::ring::{BufferPool, ALIGN};
use crate::transport::{self, Fut, LaneRx, Link};

/// The length blocks are hashed against: a unit's end is not known in advance, so no block is
/// ever its root.
pub(crate) const ENDLESS: u64 = u64::MAX;

/// The most units a receiver takes at once (each holds a lane, two buffers and, for a
/// database, a connection).
pub const MAX_LANES: usize = 16;

/// How many times a unit is sent before the run gives up on it.
pub const ATTEMPTS: u32 = 3;

/// One unit to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// A name stable across runs, by which the destination remembers it has committed the unit.
    pub key: String,
    /// What the sink needs to know to take the unit (its table, columns, format…); at most
    /// [`sluice_proto::codec::MAX_STRING_LEN`] bytes.
    pub meta: String,
    /// What the unit is part of, for progress (a table for a range); empty for none.
    pub group: String,
    /// A group every unit of which must be committed before this unit starts (a table's
    /// indexes wait for its rows); it must be in this unit's phase or an earlier one.
    pub after: Option<String>,
    /// What the source expects the unit to hold, for progress and estimates.
    pub hint: Hint,
}

/// What a unit is expected to hold before it is read: for progress and estimates only, never
/// checked. 0 where unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hint {
    /// Bytes (for a table range: its share of the table's size on disk, which its `COPY` bytes
    /// only approach).
    pub bytes: u64,
    /// Records (rows of a table range: its share of the server's estimate).
    pub items: u64,
}

/// Where units come from.
pub trait UnitSource: Send + Sync {
    /// Starts reading `unit`.
    fn open<'a>(&'a self, unit: &'a Unit) -> Fut<'a, Result<Box<dyn UnitReader>>>;

    /// The units to send given what the destination already `held` (the keys of units an
    /// interrupted run committed): `phases` as planned, or re-cut around what is held; an error
    /// ends the session before anything is sent.
    fn resume(&self, _held: &HashSet<String>, phases: Vec<Vec<Unit>>) -> Result<Vec<Vec<Unit>>> {
        Ok(phases)
    }
}

/// One unit's bytes, in order.
pub trait UnitReader: Send {
    /// Fills `buf` with the next bytes; fewer than `buf.len()` only at the unit's end.
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> Fut<'a, Result<usize>>;
    /// After the end: the source's account of the unit, checked by the sink's commit (at most
    /// [`sluice_proto::unit::MAX_TRAILER`] bytes).
    fn trailer(&mut self) -> Fut<'_, Result<Vec<u8>>>;
    /// After the trailer: how many records the unit held (rows of a table range), for
    /// progress; 0 for a unit without records.
    fn items(&self) -> u64 {
        0
    }
}

/// Where units go.
pub trait UnitSink: Send + Sync {
    /// Keys of the units already committed here.
    fn held(&self) -> Fut<'_, Result<Vec<String>>>;
    /// Starts taking the unit described by `meta`.
    fn open<'a>(&'a self, meta: &'a str) -> Fut<'a, Result<Box<dyn UnitWriter>>>;
}

/// One unit being taken: verified bytes in order, then a commit or, if dropped, nothing.
pub trait UnitWriter: Send {
    /// The next verified bytes.
    fn put(&mut self, data: Bytes) -> Fut<'_, Result<()>>;
    /// The unit ended after `bytes` bytes with the source's `trailer`: check it and make the
    /// unit durable and visible as a whole, or fail and leave nothing.
    fn commit(self: Box<Self>, bytes: u64, trailer: Vec<u8>) -> Fut<'static, Result<()>>;
}

/// What a unit session did.
#[derive(Debug, Clone, Default)]
pub struct UnitsSummary {
    /// Units committed by this run.
    pub units: u64,
    /// Units the destination already held.
    pub held: u64,
    /// Units sent more than once (failed at the receiver, then sent again).
    pub retried: u64,
    /// Payload bytes committed.
    pub bytes: u64,
    /// From connecting to the receiver's summary.
    pub elapsed: Duration,
}

/// The sender's side of [`welcome`]: opens the control channel, says `Hello` with the session
/// kind `kind` (`HELLO_UNITS`, `HELLO_BENCH`) and waits for `Welcome`. A refusal (a wrong
/// secret, another version or kind of receiver) is the peer's error, exit 4 as for files.
pub(crate) async fn greet(
    link: &Arc<dyn Link>,
    secret: [u8; 32],
    block_size: u32,
    kind: u8,
) -> Result<Control> {
    let peer = link.peer();
    let mut control = Control::new(link.open_control().await?, peer.to_string());
    control
        .send(&SenderSession::hello(secret, block_size, kind))
        .await?;
    match control.recv().await? {
        Some(Message::Welcome { .. }) => Ok(control),
        Some(Message::Error { code, message }) => {
            Err(Error::Session(SessionError::Peer { code, message }))
        }
        other => Err(transport::conn_error(peer)(&format!(
            "expected Welcome, got {other:?}"
        ))),
    }
}

/// The receiver's answer to `Hello`, shared by every session that is not a file transfer:
/// checks the version and the secret, answers `Welcome`, and returns the block size. (The
/// session kind was checked before, when the sender was proven: `receiver::proven_sender`.)
pub(crate) async fn welcome(
    control: &mut Control,
    secret: [u8; 32],
    peer: SocketAddr,
) -> Result<u32> {
    let err = transport::conn_error(peer);
    let block_size = match control.recv().await? {
        Some(Message::Hello {
            version,
            secret: theirs,
            block_size,
            ..
        }) => {
            let refusal = if version != PROTOCOL_VERSION {
                Some((
                    ErrorCode::Version,
                    format!("protocol version {version}, this end speaks {PROTOCOL_VERSION}"),
                ))
            } else if blake3::Hash::from(theirs) != blake3::Hash::from(secret) {
                Some((
                    ErrorCode::Auth,
                    "wrong secret: the sender does not hold this ticket".into(),
                ))
            } else if !block_size.is_power_of_two() || !(1024..=16 << 20).contains(&block_size) {
                Some((
                    ErrorCode::Protocol,
                    format!("block size {block_size} is not a power of two from 1 KiB to 16 MiB"),
                ))
            } else {
                None
            };
            if let Some((code, message)) = refusal {
                let _ = control
                    .send(&Message::Error {
                        code,
                        message: message.clone(),
                    })
                    .await;
                let _ = tokio::time::timeout(Duration::from_secs(2), control.sync()).await;
                return Err(err(&message));
            }
            block_size
        }
        other => return Err(err(&format!("expected Hello, got {other:?}"))),
    };
    control
        .send(&Message::Welcome {
            version: PROTOCOL_VERSION,
        })
        .await?;
    Ok(block_size)
}

/// The receiving end of a unit session.
#[derive(Debug)]
pub struct UnitServer(OneSender);

impl UnitServer {
    /// Listens as a receiver does (see [`crate::transport::Listener::bind`]).
    pub fn bind(listen: SocketAddr, advertise: Option<SocketAddr>, config: Config) -> Result<Self> {
        OneSender::bind(listen, advertise, config).map(Self)
    }

    /// The ticket for the sending end.
    pub fn ticket(&self) -> &Ticket {
        self.0.ticket()
    }

    /// Serves one sender into `sink`; `progress` counts the verified bytes.
    pub fn run(self, sink: Arc<dyn UnitSink>, progress: Arc<Progress>) -> Result<UnitsSummary> {
        self.run_until(sink, progress, Arc::new(tokio::sync::Notify::new()))
    }

    /// [`UnitServer::run`], giving up waiting for a sender once `stop` is notified.
    pub fn run_until(
        mut self,
        sink: Arc<dyn UnitSink>,
        progress: Arc<Progress>,
        stop: Arc<tokio::sync::Notify>,
    ) -> Result<UnitsSummary> {
        let resume = "units committed so far are kept; run the same command again";
        let (mut summary, _, started) = self.0.serve(
            false,
            stop,
            HELLO_UNITS,
            resume,
            |config, secret, link, control| async move {
                serve(&config, secret, &link, control, sink, &progress).await
            },
        )?;
        summary.elapsed = started.elapsed();
        Ok(summary)
    }
}

/// How one lane's unit ended at the receiver.
enum Landed {
    /// Committed, with this many bytes.
    Committed(u32, u64),
    /// Refused by verification, or by the sink for a reason that passes, and why; the lane was
    /// read to its end.
    Failed(u32, String, ErrorKind),
    /// Refused by the sink for a reason that another attempt would meet again (see
    /// [`ends_the_session`]).
    Refused(u32, Error),
}

/// Whether the sink's failure `e` ends the session: not a check that failed (the sender is told
/// and goes on with the other units), nor a failure that passes (the unit is sent again).
fn ends_the_session(e: &Error) -> bool {
    !e.is_transient() && e.kind() != ErrorKind::Verification
}

/// How one lane's unit ended, with the unit's description (the same for each sending of it).
struct Outcome {
    meta: String,
    landed: Landed,
}

async fn serve(
    config: &Config,
    secret: [u8; 32],
    link: &Arc<dyn Link>,
    mut control: Control,
    sink: Arc<dyn UnitSink>,
    progress: &Arc<Progress>,
) -> Result<UnitsSummary> {
    let peer = link.peer();
    let err = transport::conn_error(peer);
    let block_size = welcome(&mut control, secret, peer).await?;
    let mut summary = UnitsSummary::default();
    for key in sink.held().await? {
        control.queue(&Message::Held { key });
        // Committed by an earlier run: the sender skips those its plan still has.
        summary.held += 1;
    }
    control.send(&Message::Held { key: String::new() }).await?;
    // Each lane's reader holds a buffer while its block arrives and until the sink has taken
    // it: two per lane, within the configured ring whatever the sender's block size.
    let budget = config.ring_buffers as u64 * u64::from(config.block_size);
    let count = (budget / u64::from(block_size).max(ALIGN as u64)).clamp(2, 2 * MAX_LANES as u64);
    let pool = BufferPool::new(count as usize, block_size as usize)
        .map_err(Error::io("allocating the buffer ring"))?;
    link.allow_lanes((count as usize / 2).max(1));

    let mut lanes = tokio::task::JoinSet::new();
    let mut finished = false;
    // Units refused and not committed since (a sender sends a failed unit again), by their
    // description: what the receiving end failed to take when the session ends.
    let mut failed: std::collections::HashMap<String, (String, ErrorKind)> = Default::default();
    loop {
        if finished && lanes.is_empty() {
            break;
        }
        tokio::select! {
            lane = link.accept_lane(), if !finished => match lane {
                Some(lane) => {
                    let (pool, sink, progress) = (pool.clone(), sink.clone(), progress.clone());
                    lanes.spawn(async move {
                        receive_unit(lane, &pool, &*sink, block_size, peer, &progress).await
                    });
                }
                None => return Err(err(&"the link ended before the sender finished")),
            },
            msg = control.recv() => match msg? {
                Some(Message::Finish) => finished = true,
                Some(Message::Error { message, .. }) => return Err(err(&format!("sender aborted: {message}"))),
                Some(other) => return Err(err(&format!("unexpected message {other:?}"))),
                None => return Err(err(&"the sender closed the control channel before finishing")),
            },
            Some(done) = lanes.join_next() => match done {
                Ok(Ok(Outcome { meta, landed: Landed::Committed(id, bytes) })) => {
                    // Sent again and committed: no longer a failure of this session.
                    failed.remove(&meta);
                    summary.units += 1;
                    summary.bytes += bytes;
                    progress.add_unit_done();
                    control.send(&Message::FileVerified { id }).await?;
                }
                Ok(Ok(Outcome { landed: Landed::Refused(id, e), .. })) => {
                    // One error, at once, rather than three attempts of every unit left, each
                    // warned of at both ends. A lost server's error reaches the sender with the
                    // link's end; any other's as this unit's failure, for the sender's exit code.
                    if e.kind() != ErrorKind::Connection {
                        let (reason, cause) = (e.to_string(), e.kind().cause());
                        control.send(&Message::FileFailed { id, reason, cause }).await?;
                        let _ = tokio::time::timeout(Duration::from_secs(2), control.sync()).await;
                    }
                    return Err(e);
                }
                Ok(Ok(Outcome { meta, landed: Landed::Failed(id, reason, kind) })) => {
                    tracing::warn!("unit {id} failed: {reason}");
                    failed.insert(meta, (reason.clone(), kind));
                    let cause = kind.cause();
                    control.send(&Message::FileFailed { id, reason, cause }).await?;
                }
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(err(&e)),
            },
        }
    }
    control
        .send(&Message::Summary {
            entries: summary.units.min(u64::from(u32::MAX)) as u32,
            bytes: summary.bytes,
            deleted: 0,
        })
        .await?;
    control.finish();
    // The sender ends with these failures too; this end must not say all went well.
    if let Some((first, kind)) = failed.values().next().cloned() {
        return Err(Error::FilesFailed {
            items: "units",
            failed: failed.len(),
            total: summary.units as usize + failed.len(),
            first,
            kind,
        });
    }
    Ok(summary)
}

/// Reads one unit from `lane` into a writer of `sink`. A unit the sink refuses or that fails
/// verification is reported as [`Landed::Failed`] once the rest of the lane has been read (the
/// sender sends it again); a lane out of frame is an error that ends the session.
async fn receive_unit(
    mut lane: LaneRx,
    pool: &Arc<BufferPool>,
    sink: &dyn UnitSink,
    block_size: u32,
    peer: SocketAddr,
    progress: &Progress,
) -> Result<Outcome> {
    let err = transport::conn_error(peer);
    let mut prefix = [0u8; OPEN_PREFIX];
    lane.read_exact(&mut prefix).await.map_err(|e| err(&e))?;
    let (id, meta_len) = frames::decode_open_prefix(&prefix)?;
    let mut meta = vec![0u8; meta_len];
    lane.read_exact(&mut meta).await.map_err(|e| err(&e))?;
    let meta = frames::decode_meta(&meta)?;
    let landed = land(
        &mut lane,
        (pool, sink),
        (id, &meta),
        block_size,
        peer,
        progress,
    )
    .await?;
    Ok(Outcome { meta, landed })
}

/// The rest of [`receive_unit`], once unit `id`'s description `meta` is read.
async fn land(
    lane: &mut LaneRx,
    (pool, sink): (&Arc<BufferPool>, &dyn UnitSink),
    (id, meta): (u32, &str),
    block_size: u32,
    peer: SocketAddr,
    progress: &Progress,
) -> Result<Landed> {
    let err = transport::conn_error(peer);
    let mut writer = match sink.open(meta).await {
        Ok(w) => Some(w),
        Err(e) if ends_the_session(&e) => return Ok(Landed::Refused(id, e)),
        Err(e) => {
            drain(lane, peer).await?;
            return Ok(Landed::Failed(id, e.to_string(), e.kind()));
        }
    };
    let mut failure: Option<(String, ErrorKind)> = None;
    let mut unpacker: Option<zstd::bulk::Decompressor<'static>> = None;
    // A packed block's bytes, one buffer for the lane (at most a block).
    let mut packed: Vec<u8> = Vec::new();
    let mut offset = 0u64;
    loop {
        let mut tag = [0u8; 1];
        lane.read_exact(&mut tag).await.map_err(|e| err(&e))?;
        if tag[0] == UNIT_CLOSE_TAG {
            let mut close = [0u8; CLOSE_PREFIX];
            close[0] = tag[0];
            lane.read_exact(&mut close[1..])
                .await
                .map_err(|e| err(&e))?;
            let (bytes, trailer_len) = frames::decode_close_prefix(&close)?;
            let mut trailer = vec![0u8; trailer_len];
            lane.read_exact(&mut trailer).await.map_err(|e| err(&e))?;
            // Anything after the closing frame is out of frame.
            let mut extra = [0u8; 1];
            if lane.read(&mut extra).await.map_err(|e| err(&e))? != 0 {
                return Err(err(&format!("unit {id}: bytes after its closing frame")));
            }
            if let Some((reason, kind)) = failure {
                return Ok(Landed::Failed(id, reason, kind));
            }
            if bytes != offset {
                return Ok(Landed::Failed(
                    id,
                    format!("the sender counted {bytes} bytes, {offset} arrived"),
                    ErrorKind::Verification,
                ));
            }
            let writer = writer.take().expect("the writer is kept until the close");
            return Ok(match writer.commit(bytes, trailer).await {
                Ok(()) => Landed::Committed(id, bytes),
                Err(e) if ends_the_session(&e) => Landed::Refused(id, e),
                Err(e) => Landed::Failed(id, e.to_string(), e.kind()),
            });
        }
        let mut raw = [0u8; BLOCK_HEADER_LEN];
        raw[0] = tag[0];
        lane.read_exact(&mut raw[1..]).await.map_err(|e| err(&e))?;
        let header: BlockHeader = decode_block_header(&raw)?;
        if !(raw[0] == BLOCK_TAG || raw[0] == PACKED_TAG && header.packed < header.len)
            || header.file != id
            || header.offset != offset
            || header.len == 0
            || header.len > block_size
        {
            return Err(err(&format!(
                "unit {id}: block out of order or out of bounds: unit {}, {} bytes at {} \
                 (expected {offset})",
                header.file, header.len, header.offset
            )));
        }
        let len = header.len as usize;
        let mut buf = pool.take().await;
        if header.packed > 0 {
            packed.resize(header.packed as usize, 0);
            lane.read_exact(&mut packed).await.map_err(|e| err(&e))?;
            let unpacker = match &mut unpacker {
                Some(z) => z,
                None => unpacker
                    .insert(zstd::bulk::Decompressor::new().map_err(Error::io("starting zstd"))?),
            };
            if let Err(e) = crate::pack::unpack(unpacker, &packed, &mut buf.as_mut_slice()[..len]) {
                failure.get_or_insert((
                    format!("the block at {offset}: {e}"),
                    ErrorKind::Verification,
                ));
                writer = None;
            }
        } else {
            lane.read_exact(&mut buf.as_mut_slice()[..len])
                .await
                .map_err(|e| err(&e))?;
        }
        offset += len as u64;
        if failure.is_some() {
            continue;
        }
        if merkle::block_cv(&buf.as_slice()[..len], header.offset, ENDLESS) != header.hash {
            failure = Some((
                format!("the block at {} does not match its hash", header.offset),
                ErrorKind::Verification,
            ));
            writer = None;
            continue;
        }
        progress.add_verified(len as u64);
        let w = writer.as_mut().expect("kept while no failure");
        if let Err(e) = w.put(buf.freeze(len)).await {
            if ends_the_session(&e) {
                return Ok(Landed::Refused(id, e));
            }
            failure = Some((e.to_string(), e.kind()));
            writer = None;
        }
    }
}

/// Reads `lane` to its end, for a unit already refused.
async fn drain(lane: &mut LaneRx, peer: SocketAddr) -> Result<()> {
    let mut sink = tokio::io::sink();
    tokio::io::copy(lane, &mut sink)
        .await
        .map_err(|e| transport::conn_error(peer)(&e))?;
    Ok(())
}

/// Sends `phases` of units from `source` to the receiver named by `ticket`, each phase
/// committed before the next starts, with up to `jobs` units in flight.
pub fn send(
    config: &Config,
    ticket: &Ticket,
    phases: Vec<Vec<Unit>>,
    source: Arc<dyn UnitSource>,
    jobs: usize,
    progress: Arc<Progress>,
) -> Result<UnitsSummary> {
    let rt = transport::runtime()?;
    rt.block_on(send_on(config, ticket, phases, source, jobs, progress))
}

/// [`send`] on the caller's runtime (where a source's own connections run).
pub async fn send_on(
    config: &Config,
    ticket: &Ticket,
    phases: Vec<Vec<Unit>>,
    source: Arc<dyn UnitSource>,
    jobs: usize,
    progress: Arc<Progress>,
) -> Result<UnitsSummary> {
    let started = Instant::now();
    let resume = "run the same command again: committed units are not sent twice";
    let (mut summary, _) = crate::endpoint::dial(config, ticket, resume, |link| async move {
        push(
            config,
            ticket,
            &link,
            phases,
            source,
            jobs.max(1),
            &progress,
        )
        .await
    })
    .await?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

async fn push(
    config: &Config,
    ticket: &Ticket,
    link: &Arc<dyn Link>,
    phases: Vec<Vec<Unit>>,
    source: Arc<dyn UnitSource>,
    jobs: usize,
    progress: &Arc<Progress>,
) -> Result<UnitsSummary> {
    let peer = link.peer();
    let err = transport::conn_error(peer);
    let mut control = greet(link, ticket.secret, config.block_size, HELLO_UNITS).await?;
    // What a receiver may name is bounded by what this run sends (plus leftovers of other
    // runs, which the source judges), so a receiver cannot grow this side without end.
    let most_held = phases.iter().map(Vec::len).sum::<usize>() + 1024;
    let mut held = HashSet::new();
    loop {
        match control.recv().await? {
            Some(Message::Held { key }) if key.is_empty() => break,
            Some(Message::Held { key }) => {
                held.insert(key);
                if held.len() > most_held {
                    return Err(err(&format!(
                        "the receiver names more than {most_held} units as already committed"
                    )));
                }
            }
            other => return Err(err(&format!("expected Held, got {other:?}"))),
        }
    }
    let phases = source.resume(&held, phases)?;
    // A unit's reader fills one buffer while the one before is on its way.
    let pool = BufferPool::new(2 * jobs + 2, config.block_size as usize)
        .map_err(Error::io("allocating the buffer ring"))?;
    let total: u64 = phases.iter().map(|p| p.len() as u64).sum();
    progress.set_totals(total, progress.snapshot().bytes_total);
    // The user's ceiling, shared by every unit's lane as the file sender's lanes share it.
    let pace = crate::lanes::Pace::new(config.max_rate);

    // Progress by group: units in each, and committed so far (by earlier runs too).
    let mut groups: std::collections::HashMap<String, (u64, u64)> = Default::default();
    // Each named group once, in the order its first unit comes, with what it is expected to
    // hold: the order a front end estimates each group's end in.
    let mut planned: Vec<(String, Hint)> = Vec::new();
    let mut place: std::collections::HashMap<&str, usize> = Default::default();
    for unit in phases.iter().flatten() {
        let g = groups.entry(unit.group.clone()).or_default();
        g.1 += 1;
        if held.contains(&unit.key) {
            g.0 += 1;
        }
        if !unit.group.is_empty() {
            let i = *place.entry(&unit.group).or_insert_with(|| {
                planned.push((unit.group.clone(), Hint::default()));
                planned.len() - 1
            });
            planned[i].1.bytes += unit.hint.bytes;
            planned[i].1.items += unit.hint.items;
        }
    }
    for (group, hint) in planned {
        let (done, total) = groups[&group];
        progress.push(crate::progress::Event::GroupPlanned {
            group,
            units: total,
            units_done: done,
            bytes_hint: hint.bytes,
            items_hint: hint.items,
        });
    }
    let mut summary = UnitsSummary::default();
    let mut next_id = 0u32;
    let mut failures: Vec<String> = Vec::new();
    let mut first_kind = ErrorKind::Verification;
    for phase in phases {
        let mut queue: VecDeque<(Unit, u32)> = VecDeque::new();
        for unit in phase {
            if held.contains(&unit.key) {
                summary.held += 1;
            } else {
                queue.push_back((unit, 0));
            }
        }
        // In flight: id → (unit, attempts so far, what its reader counted).
        let mut flying: std::collections::HashMap<u32, (Unit, u32, Arc<Flight>)> =
            Default::default();
        let mut writing = tokio::task::JoinSet::new();
        while !queue.is_empty() || !flying.is_empty() {
            // `jobs` units being written, and as many more written and waiting for the
            // receiver's commit: a job starts its next unit without waiting a round trip and
            // the commit (on a long path that wait would idle the job once per unit).
            while writing.len() < jobs && flying.len() < 2 * jobs {
                // The first unit in order whose group to wait for is all committed.
                let ready = queue.iter().position(|(u, _)| {
                    u.after
                        .as_ref()
                        .is_none_or(|g| groups.get(g).is_none_or(|&(done, total)| done >= total))
                });
                let Some((unit, attempts)) = ready.and_then(|i| queue.remove(i)) else {
                    break;
                };
                let id = next_id;
                next_id = next_id.wrapping_add(1);
                let flight = Arc::new(Flight {
                    id,
                    ..Flight::default()
                });
                flying.insert(id, (unit.clone(), attempts + 1, flight.clone()));
                let (link, source, pool, progress, pace) = (
                    link.clone(),
                    source.clone(),
                    pool.clone(),
                    progress.clone(),
                    pace.clone(),
                );
                let packing = (config.compress, config.compress_level);
                writing.spawn(async move {
                    let out = Outlet {
                        link: &link,
                        pool: &pool,
                        progress: &progress,
                        pace: pace.as_deref(),
                        packing,
                    };
                    send_unit(&out, &flight, &unit, &*source).await
                });
            }
            if writing.is_empty() && flying.is_empty() && !queue.is_empty() {
                // What is left waits on a group that failed, or (a caller's mistake) on one
                // whose units come in a later phase: nothing more can start.
                if failures.is_empty() {
                    let (unit, _) = &queue[0];
                    return Err(err(&format!(
                        "{} waits for the group {:?}, whose units come in a later phase",
                        unit.key,
                        unit.after.as_deref().unwrap_or_default()
                    )));
                }
                break;
            }
            tokio::select! {
                Some(done) = writing.join_next() => match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(e) => return Err(err(&e)),
                },
                msg = control.recv() => match msg? {
                    Some(Message::FileVerified { id }) => {
                        let Some((unit, _, flight)) = flying.remove(&id) else {
                            return Err(err(&format!("the receiver committed unit {id}, which is not in flight")));
                        };
                        summary.units += 1;
                        progress.add_unit_done();
                        let g = groups.entry(unit.group.clone()).or_default();
                        g.0 += 1;
                        progress.push(crate::progress::Event::UnitCommitted {
                            key: unit.key,
                            group: unit.group,
                            group_done: g.0,
                            group_total: g.1,
                            bytes: flight.bytes.load(Relaxed),
                            items: flight.items.load(Relaxed),
                            bytes_hint: unit.hint.bytes,
                        });
                    }
                    Some(Message::FileFailed { id, reason, cause }) => {
                        let Some((unit, attempts, _)) = flying.remove(&id) else {
                            return Err(err(&format!("the receiver failed unit {id}, which is not in flight")));
                        };
                        // A check that failed fails the same way again (the same snapshot
                        // read again, the same target checked again): only a failure that
                        // passes (a deadlock, a connection cut while the server still takes
                        // new ones) is worth another attempt. The check at the end of a copy
                        // failed three times over with the same message.
                        let again = attempts < ATTEMPTS && cause == FailCause::Lost;
                        if !matches!(cause, FailCause::Lost | FailCause::Verification) {
                            // Refused for good, and the receiving end has ended its session:
                            // every unit left would be refused the same way (a server stopped
                            // mid-copy was tried three times over for every range, hundreds
                            // of warnings before the one error).
                            return Err(Error::FilesFailed {
                                items: "units",
                                failed: failures.len() + 1,
                                total: total as usize,
                                first: format!("{}: {reason}", unit.key),
                                kind: ErrorKind::of_cause(cause),
                            });
                        }
                        tracing::warn!("{}: {reason} (attempt {attempts} of {ATTEMPTS})", unit.key);
                        if again {
                            summary.retried += 1;
                            queue.push_back((unit, attempts));
                        } else {
                            if failures.is_empty() {
                                first_kind = ErrorKind::of_cause(cause);
                            }
                            failures.push(format!("{}: {reason}", unit.key));
                        }
                    }
                    Some(Message::Error { message, .. }) => return Err(err(&format!("the receiving end failed: {message}"))),
                    other => return Err(err(&format!("unexpected {other:?} while sending"))),
                },
            }
        }
        // A later phase depends on every unit of this one.
        if !failures.is_empty() {
            break;
        }
    }
    control.send(&Message::Finish).await?;
    let bytes = match control.recv().await? {
        Some(Message::Summary { bytes, .. }) => bytes,
        Some(Message::Error { message, .. }) => {
            return Err(err(&format!("the receiving end failed: {message}")))
        }
        other => return Err(err(&format!("expected Summary, got {other:?}"))),
    };
    summary.bytes = bytes;
    if let Some(first) = failures.first() {
        return Err(Error::FilesFailed {
            items: "units",
            failed: failures.len(),
            total: total as usize,
            first: first.clone(),
            kind: first_kind,
        });
    }
    Ok(summary)
}

/// What every unit's sending shares: the link, the buffers, the counters, the user's ceiling
/// and how to pack.
#[derive(Clone, Copy)]
struct Outlet<'a> {
    link: &'a Arc<dyn Link>,
    pool: &'a Arc<BufferPool>,
    progress: &'a Progress,
    pace: Option<&'a crate::lanes::Pace>,
    packing: (crate::pack::Compress, i32),
}

/// Sends one unit on a lane of its own.
async fn send_unit(
    out: &Outlet<'_>,
    flight: &Flight,
    unit: &Unit,
    source: &dyn UnitSource,
) -> Result<()> {
    let Outlet {
        link,
        pool,
        progress,
        pace,
        packing: (compress, level),
    } = *out;
    let id = flight.id;
    let err = transport::conn_error(link.peer());
    let mut packer = crate::pack::Packer::new(
        compress,
        level,
        link.peer().ip().to_canonical().is_loopback(),
    );
    let mut reader = source.open(unit).await?;
    let mut lane = open_lane(link).await?;
    let mut open = [Bytes::from(frames::encode_open(id, &unit.meta))];
    lane.write(&mut open).await.map_err(|e| err(&e))?;
    let mut offset = 0u64;
    loop {
        let mut buf = pool.take().await;
        let size = buf.len();
        let n = reader.read(buf.as_mut_slice()).await?;
        if n > 0 {
            let data = &buf.as_slice()[..n];
            let hash = merkle::block_cv(data, offset, ENDLESS);
            // As a file's blocks: packed where the link, not the CPU, is what holds back, and
            // the block shrinks; the hash is of the bytes as they were.
            let path = link.path();
            let rate = (!path.rtt.is_zero()).then(|| path.cwnd as f64 / path.rtt.as_secs_f64());
            let behind = packer.network_behind(false, rate);
            let packed = if packer.is_on() {
                packer.pack(data, behind)
            } else {
                None
            };
            let header = encode_block_header(&BlockHeader {
                file: id,
                offset,
                len: n as u32,
                packed: packed.as_ref().map_or(0, |p| p.len() as u32),
                zero: false,
                moved: false,
                early: false,
                spliced: false,
                hash,
                patch: false,
            });
            if let Some(p) = &packed {
                progress.add_packed(n as u64, p.len() as u64);
            }
            let payload = packed.unwrap_or_else(|| buf.freeze(n));
            if let Some(pace) = pace {
                pace.take((header.len() + payload.len()) as u64, None).await;
            }
            let mut chunks = [Bytes::copy_from_slice(&header), payload];
            lane.write(&mut chunks).await.map_err(|e| err(&e))?;
            progress.add_sent(n as u64);
            offset += n as u64;
        }
        if n < size {
            break;
        }
    }
    let trailer = reader.trailer().await?;
    // Before the close: the receiver cannot commit the unit before it is counted.
    flight.bytes.store(offset, Relaxed);
    flight.items.store(reader.items(), Relaxed);
    let mut close = [Bytes::from(frames::encode_close(offset, &trailer))];
    lane.write(&mut close).await.map_err(|e| err(&e))?;
    lane.finish().await;
    Ok(())
}

/// One sending of a unit: its id on the wire, and what its reader held, counted as it went.
#[derive(Debug, Default)]
struct Flight {
    id: u32,
    bytes: AtomicU64,
    items: AtomicU64,
}

/// Opens a lane, waiting while the receiver has every lane it allows busy (a unit's lane is
/// counted out once the receiver has committed it).
async fn open_lane(link: &Arc<dyn Link>) -> Result<Box<dyn crate::transport::LaneTx>> {
    loop {
        if let Some(lane) = link.open_lane().await? {
            return Ok(lane);
        }
        if let Some(ended) = link.ended() {
            return Err(transport::conn_error(link.peer())(&format!(
                "the link ended while waiting for a lane: {ended:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Both ends in this process over loopback: a receiving end into `sink` on a thread of its
/// own, and `send` (given the ticket) on the caller's thread.
pub fn copy<T>(
    config: &Config,
    sink: Arc<dyn UnitSink>,
    send: impl FnOnce(&Ticket) -> Result<T>,
) -> Result<T> {
    crate::endpoint::pair(
        config,
        "sluice-units-recv",
        move |server, stop| UnitServer(server).run_until(sink, Arc::new(Progress::default()), stop),
        send,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Each unit's bytes are its key, repeated.
    struct Keys;

    struct KeyReader(Option<Bytes>);

    impl UnitSource for Keys {
        fn open<'a>(&'a self, unit: &'a Unit) -> Fut<'a, Result<Box<dyn UnitReader>>> {
            let bytes = Bytes::from(unit.key.repeat(1000));
            Box::pin(async move { Ok(Box::new(KeyReader(Some(bytes))) as Box<dyn UnitReader>) })
        }
    }

    impl UnitReader for KeyReader {
        fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> Fut<'a, Result<usize>> {
            Box::pin(async move {
                let Some(b) = self.0.as_mut() else {
                    return Ok(0);
                };
                let n = b.len().min(buf.len());
                buf[..n].copy_from_slice(&b.split_to(n));
                if b.is_empty() {
                    self.0 = None;
                }
                Ok(n)
            })
        }
        fn trailer(&mut self) -> Fut<'_, Result<Vec<u8>>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    /// Records when each unit opened and committed; units named `slow…` take 300 ms to commit.
    #[derive(Default)]
    struct Log(Mutex<Vec<(String, &'static str, Instant)>>);

    struct LogSink(Arc<Log>);

    struct LogWriter(Arc<Log>, String);

    impl UnitSink for LogSink {
        fn held(&self) -> Fut<'_, Result<Vec<String>>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn open<'a>(&'a self, meta: &'a str) -> Fut<'a, Result<Box<dyn UnitWriter>>> {
            Box::pin(async move {
                let log = self.0.clone();
                log.0
                    .lock()
                    .unwrap()
                    .push((meta.to_string(), "open", Instant::now()));
                Ok(Box::new(LogWriter(log, meta.to_string())) as Box<dyn UnitWriter>)
            })
        }
    }

    impl UnitWriter for LogWriter {
        fn put(&mut self, _data: Bytes) -> Fut<'_, Result<()>> {
            Box::pin(async { Ok(()) })
        }
        fn commit(self: Box<Self>, _bytes: u64, _trailer: Vec<u8>) -> Fut<'static, Result<()>> {
            Box::pin(async move {
                if self.1.starts_with("slow") {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                self.0
                     .0
                    .lock()
                    .unwrap()
                    .push((self.1, "commit", Instant::now()));
                Ok(())
            })
        }
    }

    fn unit(key: &str, group: &str, after: Option<&str>) -> Unit {
        Unit {
            key: key.into(),
            meta: key.into(),
            group: group.into(),
            after: after.map(str::to_string),
            hint: Hint::default(),
        }
    }

    /// A unit that waits for a group starts as soon as the group's last unit is committed,
    /// ahead of the units after it in its phase, and its slow commit (a table's index build)
    /// runs beside them; the next phase waits for all of it.
    #[test]
    fn a_unit_after_a_group_starts_once_the_group_is_in_and_runs_beside_the_rest() {
        let log = Arc::new(Log::default());
        let phases = vec![
            vec![
                unit("a1", "a", None),
                unit("a2", "a", None),
                unit("slow-a", "", Some("a")),
                unit("b1", "b", None),
                unit("b2", "b", None),
                unit("b3", "b", None),
                unit("b4", "b", None),
                unit("b5", "b", None),
                unit("slow-b", "", Some("b")),
            ],
            vec![unit("last", "", None)],
        ];
        let summary = copy(
            &Config::default(),
            Arc::new(LogSink(log.clone())),
            |ticket| {
                send(
                    &Config::default(),
                    ticket,
                    phases,
                    Arc::new(Keys),
                    2,
                    Arc::new(Progress::default()),
                )
            },
        )
        .unwrap();
        assert_eq!(summary.units, 10);
        let log = log.0.lock().unwrap().clone();
        let at = |key: &str, what: &str| {
            log.iter()
                .find(|(k, w, _)| k == key && *w == what)
                .map(|(_, _, t)| *t)
                .unwrap_or_else(|| panic!("no {what} of {key}: {log:?}"))
        };
        for (after, group) in [
            ("slow-a", ["a1", "a2"].as_slice()),
            ("slow-b", &["b1", "b2", "b3", "b4", "b5"]),
        ] {
            for g in group {
                assert!(
                    at(g, "commit") <= at(after, "open"),
                    "{after} before {g}: {log:?}"
                );
            }
        }
        // b's units went on while a's slow commit ran.
        let (open, done) = (at("slow-a", "open"), at("slow-a", "commit"));
        let beside = ["b1", "b2", "b3", "b4", "b5"]
            .iter()
            .filter(|b| (open..done).contains(&at(b, "commit")))
            .count();
        assert!(
            beside >= 2,
            "{beside} of b's units committed beside slow-a: {log:?}"
        );
        assert!(
            at("slow-a", "commit") <= at("last", "open")
                && at("slow-b", "commit") <= at("last", "open")
        );
    }
}
