//! What a transfer reports while it runs: counters to poll, and events to drain.
//!
//! The engine updates a shared [`Progress`] from its threads with relaxed atomics (one add per
//! block) and queues an [`Event`] per file outcome. A front end — the `sluice` progress bar,
//! `--json`, an embedding tool — polls [`Progress::snapshot`] at its own pace and drains
//! [`Progress::take_events`]; the data path never waits for it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use sluice_proto::message::Digest;

/// A file's outcome, or a milestone of the transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The QUIC connection is up and the peer is authenticated.
    Connected {
        /// The peer's address.
        peer: String,
    },
    /// A file was verified at the receiver and is in place under its final name.
    FileVerified {
        /// The path relative to the destination.
        path: String,
        /// Its size in bytes.
        size: u64,
        /// Its BLAKE3 root (what `b3sum` prints).
        root: Digest,
    },
    /// Compare only: these byte ranges of the file differ at the receiver (whole blocks).
    Differs {
        /// The path relative to the destination.
        path: String,
        /// Differing byte ranges, adjacent blocks merged.
        ranges: Vec<std::ops::Range<u64>>,
    },
    /// Before a unit session sends anything: a group of units (a table's ranges), once, in the
    /// order the group's first unit is due.
    GroupPlanned {
        /// The group (a table), as its source names it.
        group: String,
        /// Units in the group.
        units: u64,
        /// Of those, units the destination already holds (an interrupted run committed them).
        units_done: u64,
        /// Bytes the source expects the group's units to hold (0: unknown; for a table, its
        /// size on disk, which its `COPY` bytes only approach).
        bytes_hint: u64,
        /// Records the source expects (rows: the server's estimate; 0: unknown).
        items_hint: u64,
    },
    /// A unit that is not a file (a table range, a schema step) was committed at the receiver.
    UnitCommitted {
        /// The unit's key.
        key: String,
        /// What it is part of (a table), as its source named it; empty for none.
        group: String,
        /// Units of that group committed so far (this run and earlier, interrupted ones).
        group_done: u64,
        /// Units in the group.
        group_total: u64,
        /// Bytes the unit held.
        bytes: u64,
        /// Records it held (rows of a table range; 0 for a unit without records).
        items: u64,
        /// Its share of the group's [`Event::GroupPlanned::bytes_hint`].
        bytes_hint: u64,
    },
    /// `--delete`, at the receiver: an entry of a transferred directory that the source no
    /// longer has was removed (a directory with everything below it, as one event).
    Deleted {
        /// The path relative to the destination.
        path: String,
        /// It was a directory.
        dir: bool,
    },
    /// A file failed; nothing was put in its place.
    FileFailed {
        /// The path relative to the destination.
        path: String,
        /// Why.
        reason: String,
    },
}

/// What the network path looks like from this side, as the transport measures it: quinn for
/// QUIC, the kernel's `TCP_INFO` summed over the connections for TCP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathStats {
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Congestion window, bytes.
    pub cwnd: u64,
    /// Packets (QUIC) or segments (TCP) sent.
    pub sent_packets: u64,
    /// Of those, declared lost (their frames are sent again).
    pub lost_packets: u64,
    /// Bytes of the lost packets: what had to be sent again.
    pub lost_bytes: u64,
    /// Bytes sent on the wire (UDP payload for QUIC, TCP payload for TCP).
    pub udp_tx_bytes: u64,
    /// Bytes received on the wire, counted the same way.
    pub udp_rx_bytes: u64,
}

impl PathStats {
    /// The share of sent packets declared lost.
    pub fn loss(&self) -> f64 {
        if self.sent_packets == 0 {
            0.0
        } else {
            self.lost_packets as f64 / self.sent_packets as f64
        }
    }
}

/// The most events [`Progress`] holds for a reader.
pub const MAX_EVENTS: usize = 1 << 16;

/// Live counters and pending events of one transfer.
#[derive(Debug, Default)]
pub struct Progress {
    path: Mutex<PathStats>,
    bytes_total: AtomicU64,
    files_total: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_delivered: AtomicU64,
    bytes_verified: AtomicU64,
    bytes_arrived: AtomicU64,
    bytes_kept: AtomicU64,
    bytes_vouched: AtomicU64,
    blocks_resent: AtomicU64,
    files_verified: AtomicU64,
    bytes_packed: AtomicU64,
    packed_wire: AtomicU64,
    bytes_zero: AtomicU64,
    /// A benchmark's measured run is over ([`Progress::run_ended`]).
    ended: std::sync::atomic::AtomicBool,
    /// Payload bytes the sender has read and hashed, sent or not: its own work, which the
    /// receiver hears of in `Working` (not in [`Snapshot`]).
    bytes_read: AtomicU64,
    /// Of `bytes_sent`, bytes the receiver dropped unread ([`Progress::take_back_sent`]).
    sent_taken_back: AtomicU64,
    events: Mutex<VecDeque<Event>>,
    /// The events anybody will take, where not all ([`Progress::keeping`]).
    wanted: Option<fn(&Event) -> bool>,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Payload bytes in the manifest.
    pub bytes_total: u64,
    /// Files in the manifest.
    pub files_total: u64,
    /// Payload bytes handed to the network, re-sends included (sender; 0 at the receiver).
    pub bytes_sent: u64,
    /// Of `bytes_sent`, bytes the receiver acknowledged (over QUIC: every packet of their
    /// block; over TCP: once the kernel took them). What the progress bar shows: on a slow
    /// link the streams hold many megabytes handed over but not yet across.
    pub bytes_delivered: u64,
    /// Payload bytes verified and written at the receiver.
    pub bytes_verified: u64,
    /// A benchmark's: payload bytes verified at the serving end, and those of the blocks its
    /// lanes are reading. They come in as the link carries them, where a verified block comes
    /// whole (on a 5 Mbit/s path, one 1 MiB block in 1.7 s): the per-interval figures count
    /// these.
    pub bytes_arrived: u64,
    /// Files verified and in place.
    pub files_verified: u64,
    /// Payload bytes not sent because the receiver already held them (resume, delta).
    pub bytes_kept: u64,
    /// Of `bytes_kept`, bytes the sender did not read: the receiver's resume journal, written
    /// while this same source version was sent, vouched for them.
    pub bytes_vouched: u64,
    /// Blocks sent again after failing verification at the receiver.
    pub blocks_resent: u64,
    /// Of `bytes_sent`, bytes that went packed with zstd (sender; 0 at the receiver).
    pub bytes_packed: u64,
    /// What `bytes_packed` took on the wire, packed.
    pub packed_wire: u64,
    /// Of `bytes_sent`, bytes of blocks of zeros, sent as a header alone (sender; 0 at the
    /// receiver).
    pub bytes_zero: u64,
    /// The network path, as last sampled (about every 100 ms while data flows).
    pub path: PathStats,
}

impl Progress {
    pub(crate) fn set_path(&self, path: PathStats) {
        *self.path.lock().unwrap_or_else(|p| p.into_inner()) = path;
    }

    /// The network path, as last sampled.
    pub(crate) fn path(&self) -> PathStats {
        *self.path.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_totals(&self, files: u64, bytes: u64) {
        self.files_total.store(files, Relaxed);
        self.bytes_total.store(bytes, Relaxed);
    }

    pub(crate) fn add_sent(&self, n: u64) {
        self.bytes_sent.fetch_add(n, Relaxed);
    }

    /// Counts `n` bytes of `bytes_sent` as acknowledged by the receiver.
    pub(crate) fn add_delivered(&self, n: u64) {
        self.bytes_delivered.fetch_add(n, Relaxed);
    }

    /// Takes back `n` bytes counted as sent, or still to be counted so by the network thread,
    /// that the receiver dropped unread (early blocks of a file it holds something of).
    pub(crate) fn take_back_sent(&self, n: u64) {
        self.sent_taken_back.fetch_add(n, Relaxed);
    }

    pub(crate) fn add_packed(&self, raw: u64, packed: u64) {
        self.bytes_packed.fetch_add(raw, Relaxed);
        self.packed_wire.fetch_add(packed, Relaxed);
    }

    pub(crate) fn add_zero(&self, n: u64) {
        self.bytes_zero.fetch_add(n, Relaxed);
    }

    pub(crate) fn add_read(&self, n: u64) {
        self.bytes_read.fetch_add(n, Relaxed);
    }

    /// Payload bytes the sender has read and hashed so far.
    pub(crate) fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Relaxed)
    }

    pub(crate) fn add_kept(&self, n: u64) {
        self.bytes_kept.fetch_add(n, Relaxed);
    }

    /// Takes back `n` bytes counted as kept that are sent after all (a moved block whose older
    /// bytes were not all the block's).
    pub(crate) fn take_back_kept(&self, n: u64) {
        let _ = self
            .bytes_kept
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
    }

    pub(crate) fn add_vouched(&self, n: u64) {
        self.bytes_vouched.fetch_add(n, Relaxed);
    }

    /// Takes back `n` bytes counted as vouched for that turned out to differ at the receiver
    /// (and are sent after all).
    pub(crate) fn take_back_vouched(&self, n: u64) {
        let _ = self
            .bytes_vouched
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
    }

    pub(crate) fn add_resent(&self) {
        self.blocks_resent.fetch_add(1, Relaxed);
    }

    pub(crate) fn add_verified(&self, n: u64) {
        self.bytes_verified.fetch_add(n, Relaxed);
    }

    /// What has arrived at a benchmark's serving end so far ([`Snapshot::bytes_arrived`]).
    pub(crate) fn set_arrived(&self, n: u64) {
        self.bytes_arrived.fetch_max(n, Relaxed);
    }

    /// One more unit (not a file) committed at the receiver.
    pub(crate) fn add_unit_done(&self) {
        self.files_verified.fetch_add(1, Relaxed);
    }

    /// Progress whose events are taken only where `wanted` says so (the receiving end of
    /// `copy`, whose caller takes only what `--delete` removed: the queue of every file's
    /// event was filled for nobody, a string and a slot per file).
    pub(crate) fn keeping(wanted: fn(&Event) -> bool) -> Self {
        Self {
            wanted: Some(wanted),
            ..Self::default()
        }
    }

    /// Queues an event for [`Progress::take_events`]. Nobody may be taking them (the receiving
    /// end of `copy`, a library caller that only reads the counters), so the queue keeps the
    /// newest [`MAX_EVENTS`]: memory stays bounded whatever the number of files. A reader that
    /// polls as the command line does (every 100 ms) never comes near that.
    pub(crate) fn push(&self, e: Event) {
        if let Event::FileVerified { .. } = e {
            self.files_verified.fetch_add(1, Relaxed);
        }
        if self.wanted.is_some_and(|wanted| !wanted(&e)) {
            return;
        }
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() >= MAX_EVENTS {
            events.pop_front();
        }
        events.push_back(e);
    }

    /// Marks a benchmark's measured run as over, before its length is taken: what happens
    /// after (closing the connection, the other end's teardown) is not part of it.
    pub(crate) fn end_run(&self) {
        self.ended.store(true, Relaxed);
    }

    /// Whether a benchmark's measured run is over. A watcher that read its clock before it saw
    /// `false` here read a time within the run: the run's length is taken after this is set.
    pub fn run_ended(&self) -> bool {
        self.ended.load(Relaxed)
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            bytes_total: self.bytes_total.load(Relaxed),
            files_total: self.files_total.load(Relaxed),
            bytes_sent: self
                .bytes_sent
                .load(Relaxed)
                .saturating_sub(self.sent_taken_back.load(Relaxed)),
            bytes_delivered: self
                .bytes_delivered
                .load(Relaxed)
                .saturating_sub(self.sent_taken_back.load(Relaxed)),
            bytes_verified: self.bytes_verified.load(Relaxed),
            bytes_arrived: self.bytes_arrived.load(Relaxed),
            files_verified: self.files_verified.load(Relaxed),
            bytes_kept: self.bytes_kept.load(Relaxed),
            bytes_vouched: self.bytes_vouched.load(Relaxed),
            blocks_resent: self.blocks_resent.load(Relaxed),
            bytes_packed: self.bytes_packed.load(Relaxed),
            bytes_zero: self.bytes_zero.load(Relaxed),
            packed_wire: self.packed_wire.load(Relaxed),
            path: self.path(),
        }
    }

    /// Removes and returns the events queued since the last call.
    pub fn take_events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect()
    }
}

/// The outcome of a completed transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Manifest entries put in place (files, directories, symlinks).
    pub entries: u64,
    /// Regular files verified.
    pub files: u64,
    /// Payload bytes verified.
    pub bytes: u64,
    /// Payload bytes that crossed the network, re-sends included (at the receiver: the bytes
    /// received and verified in this run).
    pub payload_bytes: u64,
    /// Bytes the receiver already held and kept (resume, delta). The sender counts a patched
    /// block's bytes that did not cross as kept too; the receiver counts whole blocks it did not
    /// receive.
    pub kept_bytes: u64,
    /// Of `kept_bytes`, bytes the sender took on the word of the receiver's resume journal
    /// instead of reading them (a resumed run of an unchanged source); 0 at the receiver.
    pub vouched_bytes: u64,
    /// Blocks sent again after failing verification.
    pub resent_blocks: u64,
    /// Entries `--delete` removed at the receiver (a directory with what it held counts once).
    pub deleted: u64,
    /// Of `payload_bytes`, bytes sent packed with zstd (sender; 0 at the receiver).
    pub packed_bytes: u64,
    /// What `packed_bytes` took on the wire, packed.
    pub packed_wire_bytes: u64,
    /// Of `payload_bytes`, bytes of blocks of zeros: a header crossed, no payload, and the
    /// receiver left a hole (sender; 0 at the receiver).
    pub zero_bytes: u64,
    /// UDP bytes both ways on this side's connection (QUIC headers, encryption, ACKs, control
    /// messages and payload): what crossed the wire. 0 where not measured.
    pub wire_bytes: u64,
    /// The network path at the end: RTT, packets sent and lost, bytes sent again.
    pub path: PathStats,
    /// Wall time from connecting to the receiver's summary.
    pub elapsed: Duration,
    /// At the receiver: the sender only compared (`sluice verify SRC TICKET`), and nothing was
    /// written.
    pub compared_only: bool,
    /// The transport the transfer ran on: "QUIC" or "TCP" (empty where none was measured).
    pub transport: &'static str,
}

/// Notices a counter that stopped moving: [`StallWatch::stalled`] is true once the counter has
/// kept its value for [`StallWatch::AFTER`], then again every further `AFTER`;
/// [`StallWatch::quiet_for`] is how long nothing moved at all (neither the counter nor anything
/// passed to [`StallWatch::touch`]), for the transfer's `stall_timeout`.
#[derive(Debug)]
pub(crate) struct StallWatch {
    last: u64,
    since: std::time::Instant,
    moved: std::time::Instant,
    /// The link's byte counter when `since` was last set.
    flow_mark: u64,
    /// The bytes received from the peer, and when that count last moved ([`StallWatch::heard`]).
    heard: (u64, std::time::Instant),
}

impl StallWatch {
    /// How long a counter may stand still before it is reported.
    pub(crate) const AFTER: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Self {
        Self {
            last: 0,
            since: std::time::Instant::now(),
            moved: std::time::Instant::now(),
            flow_mark: 0,
            heard: (0, std::time::Instant::now()),
        }
    }

    /// Records the count of bytes received from the peer; whether it moved since the last call.
    pub(crate) fn heard(&mut self, received: u64) -> bool {
        if received == self.heard.0 {
            return false;
        }
        self.heard = (received, std::time::Instant::now());
        true
    }

    /// Whether the peer sent anything within the last [`StallWatch::AFTER`].
    pub(crate) fn answering(&self) -> bool {
        self.heard.1.elapsed() < Self::AFTER
    }

    /// Bytes the link must have carried in [`StallWatch::AFTER`] for a standing counter to be
    /// let be, and for the transfer to count as moving: at a long round trip's start-up every
    /// stream fills its first block at once, and none completes for seconds while data arrives
    /// at the link's pace; on a slow link (0.5 Mbit/s, 800 ms, 5 % loss) no block of 1 MiB
    /// completed for minutes while data flowed, and the transfer was ended as stalled after
    /// `--stall-timeout`. 16 KiB in 5 s (26 kbit/s) is far above what keep-alives and their
    /// acknowledgements carry (about 1 KB in 5 s each way).
    const FLOWING: u64 = 16 << 10;

    /// Whether `value` has not changed for another [`StallWatch::AFTER`] while the link's byte
    /// counter `flow` moved less than [`StallWatch::FLOWING`]: nothing is arriving either, worth
    /// a warning. Data flowing counts as the transfer moving ([`StallWatch::quiet_for`]). Call
    /// it often.
    pub(crate) fn stalled(&mut self, value: u64, flow: u64) -> bool {
        if value != self.last {
            self.last = value;
            self.since = std::time::Instant::now();
            self.moved = self.since;
            self.flow_mark = flow;
            return false;
        }
        if self.since.elapsed() >= Self::AFTER {
            self.since = std::time::Instant::now();
            let mark = std::mem::replace(&mut self.flow_mark, flow);
            if flow.saturating_sub(mark) >= Self::FLOWING {
                self.moved = self.since;
                return false;
            }
            return true;
        }
        false
    }

    /// Something other than the counter moved the transfer on (a control message, a scan's
    /// result, a verified block).
    pub(crate) fn touch(&mut self) {
        self.moved = std::time::Instant::now();
    }

    /// How long neither the counter nor a [`StallWatch::touch`] moved.
    pub(crate) fn quiet_for(&self) -> Duration {
        self.moved.elapsed()
    }
}

/// How often a side busy with long work of its own that the other side cannot see (the
/// receiver copying an older version, the sender reading a large unchanged file) says so with a
/// `Working` message, which the other side counts as progress.
pub(crate) const WORKING_EVERY: Duration = Duration::from_secs(1);

/// The error that ends a transfer in which nothing moved for `timeout` while the peer `peer`
/// still answered keep-alives: a peer stalled in the middle of a block, a disk that hangs.
pub(crate) fn stalled_error(
    peer: &str,
    timeout: Duration,
    side: &str,
    answering: bool,
) -> crate::error::Error {
    let how = if answering {
        format!("although the {side} still answers")
    } else {
        format!(
            "and nothing came from the {side} for the last {} s",
            StallWatch::AFTER.as_secs()
        )
    };
    crate::error::Error::Connection {
        peer: peer.to_owned(),
        detail: format!(
            "no progress for {} s {how} (raise --stall-timeout if this is expected); partial \
             files are kept, the same command resumes",
            timeout.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A counter that stands still is reported only while the link carries next to nothing:
    /// data arriving at a long round trip's start-up is not a stall.
    #[test]
    fn a_stall_is_reported_only_when_the_link_is_quiet_too() {
        let mut watch = StallWatch::new();
        let step = StallWatch::AFTER + Duration::from_millis(100);
        assert!(!watch.stalled(7, 0));
        let started = std::time::Instant::now();
        let mut flow = 0;
        while started.elapsed() < step {
            flow += 64 << 10;
            assert!(!watch.stalled(7, flow), "data was flowing");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Data flowing is the transfer moving, however slowly no block completes.
        assert!(
            watch.quiet_for() < step,
            "quiet for {:?} while data flowed",
            watch.quiet_for()
        );
        // The first check after the flow stops still counts what flowed before it: the warning
        // comes at the second.
        let mut warned = false;
        while started.elapsed() < 3 * step + Duration::from_millis(100) && !warned {
            flow += 100; // keep-alives
            warned = watch.stalled(7, flow);
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(warned, "nothing moved for {:?}", started.elapsed());
        assert!(
            watch.quiet_for() >= StallWatch::AFTER,
            "{:?}",
            watch.quiet_for()
        );
    }

    /// A slow link (2 KiB every 50 ms: 330 kbit/s) on which no block completes for longer than
    /// `--stall-timeout` is no stall: it was ended as one at 0.5 Mbit/s, 800 ms and 5 % loss.
    #[test]
    fn a_slow_link_that_carries_data_is_no_stall() {
        let mut watch = StallWatch::new();
        let step = StallWatch::AFTER + Duration::from_millis(200);
        assert!(!watch.stalled(7, 0));
        let started = std::time::Instant::now();
        let mut flow = 0;
        while started.elapsed() < step {
            flow += 2 << 10;
            assert!(!watch.stalled(7, flow), "data was flowing");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            watch.quiet_for() < Duration::from_secs(1),
            "quiet for {:?} while data flowed",
            watch.quiet_for()
        );
    }

    #[test]
    fn events_nobody_takes_stay_bounded() {
        let p = Progress::default();
        for i in 0..MAX_EVENTS + 10 {
            p.push(Event::FileVerified {
                path: format!("f{i}"),
                size: 1,
                root: [0; 32],
            });
        }
        let events = p.take_events();
        assert_eq!(events.len(), MAX_EVENTS);
        assert!(matches!(&events[0], Event::FileVerified { path, .. } if path == "f10"));
        assert_eq!(p.snapshot().files_verified, (MAX_EVENTS + 10) as u64);
    }

    /// Progress that keeps some events only queues those, and counts the rest all the same.
    #[test]
    fn only_the_events_wanted_are_kept() {
        let p = Progress::keeping(|e| matches!(e, Event::Deleted { .. }));
        for i in 0..3 {
            p.push(Event::FileVerified {
                path: format!("f{i}"),
                size: 1,
                root: [0; 32],
            });
        }
        p.push(Event::Deleted {
            path: "gone".into(),
            dir: false,
        });
        let events = p.take_events();
        assert_eq!(events.len(), 1);
        assert!(matches!(&events[0], Event::Deleted { path, .. } if path == "gone"));
        assert_eq!(p.snapshot().files_verified, 3);
    }
}
