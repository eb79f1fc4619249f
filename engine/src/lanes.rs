//! Data lanes. Sending: blocks from a reader go out on whichever lane is free, and the lanes
//! grow with the path. Receiving: the ring a receiving end allocates, how many lanes it allows,
//! and reading block headers. Shared by the file sender and receiver and `sluice bench`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use sluice_proto::codec::{decode_block_header, BLOCK_HEADER_LEN};
use sluice_proto::message::BlockHeader;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::config::{Config, GAP_SAFE_STREAM_WINDOW};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::ring::{BufferPool, ALIGN};
use crate::transport::{self, Kind, LaneRx, Link};

/// The receiving end's ring for blocks of `block_size` bytes (the sender chose it), within the
/// receiver's configured memory bound whatever it is: buffers are whole 4 KiB pages, so small
/// blocks count as a page. Also the lanes to allow: a lane's reader holds a buffer while its
/// block arrives, so with no more lanes than buffers every reader can always get one.
pub(crate) fn receiving_ring(config: &Config, block_size: u32) -> Result<(Arc<BufferPool>, usize)> {
    let budget = config.ring_buffers as u64 * u64::from(config.block_size);
    let count = (budget / u64::from(block_size).max(ALIGN as u64)).max(2) as usize;
    let pool = BufferPool::new(count, block_size as usize)
        .map_err(Error::io("allocating the buffer ring"))?;
    let lanes = config.max_streams.max(config.streams).min(count).max(1);
    Ok((pool, lanes))
}

/// Grows a sending ring ([`BufferPool::raise_limit`]) with the path's bandwidth-delay product.
/// Over QUIC a block's buffer stays in the ring until the receiver has acknowledged all of it,
/// and on a lossy path nearly every block waits a round trip more for one repaired packet, so
/// the ring must hold about three bandwidth-delay products, plus one block per lane and a few
/// being read. Over TCP the kernel copies what it sends, and towards loopback the product is
/// small: those rings keep their first size.
pub(crate) struct RingGrowth {
    pool: Arc<BufferPool>,
    block: f64,
    /// (when, bytes handed to the network) over the last second.
    history: std::collections::VecDeque<(std::time::Instant, u64)>,
    active: bool,
}

/// Bandwidth-delay products of payload a sending ring holds (see [`RingGrowth`]).
const RING_BDPS: f64 = 3.0;

impl RingGrowth {
    pub(crate) fn new(pool: Arc<BufferPool>, block_size: u32, link: &dyn Link) -> Self {
        Self {
            pool,
            block: f64::from(block_size.max(1)),
            history: std::collections::VecDeque::new(),
            active: link.kind() != Kind::Tcp && !link.peer().ip().to_canonical().is_loopback(),
        }
    }

    /// Called every tick with the bytes handed to the network so far, the smoothed RTT and the
    /// lanes open.
    pub(crate) fn tick(&mut self, sent: u64, rtt: std::time::Duration, lanes: usize) {
        if !self.active {
            return;
        }
        let now = std::time::Instant::now();
        self.history.push_back((now, sent));
        while self
            .history
            .front()
            .is_some_and(|&(t, _)| now.duration_since(t) > std::time::Duration::from_secs(1))
            && self.history.len() > 2
        {
            self.history.pop_front();
        }
        let &(t0, s0) = self.history.front().expect("just pushed");
        let span = now.duration_since(t0).as_secs_f64();
        if span < 0.05 {
            return;
        }
        let rate = sent.saturating_sub(s0) as f64 / span;
        let bdp = rate * rtt.as_secs_f64();
        let wanted = (RING_BDPS * bdp / self.block).ceil() as usize + lanes + 8;
        let before = self.pool.limit();
        let now_limit = self.pool.raise_limit(wanted);
        if now_limit > before {
            tracing::debug!(
                "ring grows to {now_limit} buffers: {:.1} MB/s × {:?} RTT",
                rate / 1e6,
                rtt
            );
        }
    }
}

/// Reads the next block header from `lane`; `None` at the lane's clean end between blocks.
pub(crate) async fn read_header(
    lane: &mut LaneRx,
    peer: SocketAddr,
) -> Result<Option<BlockHeader>> {
    let err = transport::conn_error(peer);
    let mut raw = [0u8; BLOCK_HEADER_LEN];
    let mut got = 0;
    while got < BLOCK_HEADER_LEN {
        match lane.read(&mut raw[got..]).await {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(err(&"data stream ended inside a block header")),
            Ok(n) => got += n,
            Err(e) => return Err(err(&e)),
        }
    }
    Ok(Some(decode_block_header(&raw)?))
}

/// A block ready to go on the wire.
pub(crate) struct Block {
    pub(crate) header: Bytes,
    pub(crate) payload: Bytes,
    /// Payload bytes it carries (more than `payload.len()` when packed).
    pub(crate) carries: u64,
}

/// A block's payload as handed to a transport, which holds it until the receiver acknowledged
/// it (QUIC) or copies it (TCP): dropped, it counts the block's bytes as delivered, takes them
/// off what is in flight, and marks its block done.
struct Delivered {
    payload: Bytes,
    carries: u64,
    progress: Arc<Progress>,
    in_flight: Arc<InFlight>,
    done: Arc<std::sync::atomic::AtomicBool>,
}

/// Payload bytes the lanes handed to the transport that it still holds (not yet acknowledged
/// over QUIC), and a wake-up for lanes waiting for them to fall ([`Lanes::spawn`]).
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    bytes: std::sync::atomic::AtomicU64,
    fell: tokio::sync::Notify,
    /// The largest block handed over, and what the link sent lately: for a run with a
    /// deadline.
    largest: std::sync::atomic::AtomicU64,
    sent: std::sync::Mutex<Sent>,
}

/// Recent samples of the bytes a link put on the wire, for the rate it sends at: a run that
/// must end at a deadline (`sluice bench --time`) hands over no more than the link can carry by
/// then. Eight windows' worth, which a slow or long path holds for seconds, ran `--time 5` for
/// 10–16 s at 5 Mbit/s or 300 ms, the blocks already handed over crossing after the deadline.
/// (The wire's bytes less those lost, not the blocks delivered: on a slow path a block is let
/// go once in seconds. With the lost ones, a start-up that overran a 5 Mbit/s path's queue,
/// a third of its packets lost, read as 1.6 times the path's rate.)
#[derive(Debug, Default)]
struct Sent(std::collections::VecDeque<(tokio::time::Instant, u64)>);

/// How far back [`Sent`] looks.
const SENT_SPAN: std::time::Duration = std::time::Duration::from_secs(2);

/// The share of the wire's bytes that is payload, at most (headers take 3–5 %, repairs more).
const PAYLOAD_SHARE: f64 = 0.95;

impl Sent {
    /// Records `sent` at `now`; the rate over the samples kept, in bytes a second, once they
    /// span half a second.
    fn rate(&mut self, now: tokio::time::Instant, sent: u64) -> Option<f64> {
        if self
            .0
            .back()
            .is_none_or(|(at, _)| now.duration_since(*at) >= std::time::Duration::from_millis(20))
        {
            self.0.push_back((now, sent));
        }
        while self.0.len() > 2 && now.duration_since(self.0[1].0) >= SENT_SPAN {
            self.0.pop_front();
        }
        let (first, last) = (self.0.front()?, self.0.back()?);
        let span = last.0.duration_since(first.0).as_secs_f64();
        // Saturating: the bytes lost can grow faster than those sent between two samples.
        (span >= 0.5).then(|| last.1.saturating_sub(first.1) as f64 / span)
    }
}

/// Congestion windows' worth of payload the transport may hold: what is sent and not yet
/// acknowledged, and the blocks waiting for a lost packet's repair (under loss in bursts,
/// several per round trip for a round trip or two each). With four, 1 GiB over 200 Mbit/s,
/// 100 ms and 1 % loss in bursts of 10 lost 2–3 s in two runs of four (86.4 and 87.4 % of the
/// link against 91.3–91.6 %): the window shrank after a burst while the held blocks did not.
const IN_FLIGHT_WINDOWS: u64 = 8;

/// What may be in flight beyond [`IN_FLIGHT_WINDOWS`]: two blocks of 1 MiB, so that a slow
/// path still has the next block under way while one is being repaired.
const IN_FLIGHT_SLACK: u64 = 2 << 20;

impl InFlight {
    /// Waits until a block may be handed over: less than [`IN_FLIGHT_SLACK`] is in flight, or
    /// less than [`IN_FLIGHT_WINDOWS`] of the path's congestion windows and that. Blocks beyond
    /// that cannot leave sooner (the congestion window holds them back) and would only cross
    /// side by side with the earlier ones: on a 20 Mbit/s path, 8 lanes each with a 1 MiB block
    /// under way finished no block for 3 s. The window is read again every 50 ms as it grows.
    /// The caller holds the queue's lock meanwhile, so that the lanes waiting take their turns
    /// one block at a time rather than all at once when a block is delivered. False once
    /// `until` has passed.
    ///
    /// With `until`, over a transport that holds blocks until they are acknowledged, a block
    /// is handed over only if what the transport would then hold can be delivered by `until`
    /// at the rate the link has been sending, give or take half a block: a run with a deadline
    /// ends near it, with the link busy until then.
    async fn room(&self, link: &dyn Link, until: Option<tokio::time::Instant>) -> bool {
        use std::sync::atomic::Ordering;
        loop {
            let at = tokio::time::Instant::now();
            if until.is_some_and(|u| at >= u) {
                return false;
            }
            let fell = self.fell.notified();
            let now = self.bytes.load(Ordering::Acquire);
            let path = link.path();
            let windows = now < IN_FLIGHT_SLACK
                || now
                    < path
                        .cwnd
                        .saturating_mul(IN_FLIGHT_WINDOWS)
                        .saturating_add(IN_FLIGHT_SLACK);
            // Over TCP the kernel holds what the lanes cannot see, and each lane is a flow
            // of its own that grows only with blocks to send: a deadline there would starve
            // all but one or two (3 MB in 6 s across 200 Mbit/s, 300 ms).
            let deadline = until.filter(|_| link.holds_until_acknowledged());
            if windows && deadline.is_none_or(|u| self.deliverable(&path, now, u - at, at)) {
                return true;
            }
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), fell).await;
        }
    }

    /// Whether one more block on top of the `held` bytes can be delivered within `left`, with
    /// half a block to spare, at the rate the link has been sending. Until there is a rate,
    /// only while nothing is held: three blocks taken at once at the start (what the windows
    /// allow) took 5 s to cross a 5 Mbit/s path. Early on, what the rate allows is the flight
    /// the link carries times the round trips left, so the flight still grows.
    fn deliverable(
        &self,
        path: &crate::progress::PathStats,
        held: u64,
        left: std::time::Duration,
        at: tokio::time::Instant,
    ) -> bool {
        let rate = self
            .sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .rate(at, path.udp_tx_bytes.saturating_sub(path.lost_bytes));
        let Some(rate) = rate else {
            return held == 0;
        };
        let block = self.largest.load(std::sync::atomic::Ordering::Relaxed) as f64;
        held as f64 + block / 2.0 <= rate * PAYLOAD_SHARE * left.as_secs_f64()
    }
}

impl AsRef<[u8]> for Delivered {
    fn as_ref(&self) -> &[u8] {
        &self.payload
    }
}

impl Drop for Delivered {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        self.progress.add_delivered(self.carries);
        self.in_flight
            .bytes
            .fetch_sub(self.payload.len() as u64, Ordering::AcqRel);
        self.done.store(true, Ordering::Release);
        self.in_flight.fell.notify_waiters();
    }
}

/// Blocks waiting in the queue from the reader to the data streams.
pub(crate) fn queued(q: &mpsc::Sender<Block>) -> usize {
    q.max_capacity() - q.capacity()
}

/// What the data streams share: blocks from the reader go out on whichever stream is free.
pub(crate) struct Lanes {
    pub(crate) link: Arc<dyn Link>,
    pub(crate) blocks: Arc<tokio::sync::Mutex<mpsc::Receiver<Block>>>,
    pub(crate) progress: Arc<Progress>,
    /// The receiver's per-stream flow-control window, as this side's configuration sets it.
    pub(crate) stream_window: u64,
    /// The queue of blocks waiting for a stream (without keeping it open).
    pub(crate) queue: mpsc::WeakSender<Block>,
    /// The user's ceiling (`--max-rate`), kept here whatever the transport and congestion
    /// controller: on loopback or over TCP no controller knows of it.
    pub(crate) pace: Option<Arc<Pace>>,
    /// When the lanes stop taking blocks (`sluice bench --time`): a block waiting for its turn
    /// under `pace` is dropped, not sent, so a slow ceiling does not stretch the run by what was
    /// queued (`--time 1 --max-rate 1M` ran for minutes).
    pub(crate) until: Option<tokio::time::Instant>,
    /// What the link carried lately, for [`Lanes::wanted`].
    pub(crate) carried: Carried,
    /// Blocks taken by the lanes so far: each goes out in this order ([`transport::LaneTx::set_order`]).
    pub(crate) taken: Arc<std::sync::atomic::AtomicU64>,
    /// What the transport holds of the blocks handed to it.
    pub(crate) in_flight: Arc<InFlight>,
}

/// The bytes a link put on the wire over the last seconds, sampled at each [`Lanes::wanted`]:
/// whether the rate it carries sank (streams held by flow control, waiting for repairs) or
/// holds (the path is what limits it).
#[derive(Debug, Default)]
pub(crate) struct Carried(std::sync::Mutex<std::collections::VecDeque<(std::time::Instant, u64)>>);

/// How far back [`Carried`] looks for the best rate of late.
const CARRIED_SPAN: std::time::Duration = std::time::Duration::from_secs(3);
/// The span each rate [`Carried`] compares is measured over.
const CARRIED_STEP: std::time::Duration = std::time::Duration::from_millis(500);

impl Carried {
    /// Notes `bytes` on the wire so far; `true` if the rate over the last half second is under
    /// three quarters of the best half second's of the last three.
    fn sank(&self, bytes: u64) -> bool {
        self.sank_at(std::time::Instant::now(), bytes)
    }

    fn sank_at(&self, now: std::time::Instant, bytes: u64) -> bool {
        let mut samples = self.0.lock().unwrap_or_else(|p| p.into_inner());
        samples.push_back((now, bytes));
        while samples
            .front()
            .is_some_and(|&(t, _)| now.duration_since(t) > CARRIED_SPAN + CARRIED_STEP)
        {
            samples.pop_front();
        }
        // The rate over the half second that ends at sample `i`, if the samples reach so far.
        let rate_to = |i: usize| {
            let (t1, b1) = samples[i];
            let (t0, b0) = samples
                .iter()
                .take(i)
                .rev()
                .find(|&&(t, _)| t1.duration_since(t) >= CARRIED_STEP)?;
            Some(b1.saturating_sub(*b0) as f64 / t1.duration_since(*t0).as_secs_f64())
        };
        let Some(latest) = rate_to(samples.len() - 1) else {
            return false;
        };
        let best = (0..samples.len())
            .filter_map(rate_to)
            .fold(0.0f64, f64::max);
        latest < 0.75 * best
    }
}

/// A ceiling on the bytes handed to the lanes per second: each block takes its turn on a
/// virtual clock that advances by `len / rate` per block, and goes out in pieces
/// ([`Pace::piece`]) spread over its turn, so the average never passes the rate and no burst
/// exceeds one piece.
#[derive(Debug)]
pub(crate) struct Pace {
    rate: f64,
    next: std::sync::Mutex<tokio::time::Instant>,
}

impl Pace {
    /// A ceiling of `rate` bytes per second, or none.
    pub(crate) fn new(rate: Option<u64>) -> Option<Arc<Self>> {
        rate.filter(|&r| r > 0).map(|rate| {
            Arc::new(Self {
                rate: rate as f64,
                next: std::sync::Mutex::new(tokio::time::Instant::now()),
            })
        })
    }

    /// The bytes handed over at once: 10 ms at the rate, from 1 KiB to 64 KiB, so that no
    /// burst outruns the ceiling by more than that.
    pub(crate) fn piece(&self) -> usize {
        ((self.rate / 100.0) as usize).clamp(1 << 10, 64 << 10)
    }

    /// Takes the next `len` bytes' time on the clock and returns when it starts, or `None` if
    /// it would start after `until` (the block is then not sent).
    pub(crate) fn reserve(
        &self,
        len: u64,
        until: Option<tokio::time::Instant>,
    ) -> Option<tokio::time::Instant> {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let start = (*next).max(tokio::time::Instant::now());
        if until.is_some_and(|u| u < start) {
            return None;
        }
        *next = start + std::time::Duration::from_secs_f64(len as f64 / self.rate);
        Some(start)
    }

    /// Waits until `len` more bytes may go (their turn's start), or until `until`; false if
    /// that came first.
    pub(crate) async fn take(&self, len: u64, until: Option<tokio::time::Instant>) -> bool {
        match self.reserve(len, until) {
            Some(start) => {
                tokio::time::sleep_until(start).await;
                true
            }
            None => {
                if let Some(until) = until {
                    tokio::time::sleep_until(until).await;
                }
                false
            }
        }
    }

    /// When the bytes of a reservation starting at `start` may go after `done` of them went.
    pub(crate) fn after(&self, start: tokio::time::Instant, done: u64) -> tokio::time::Instant {
        start + std::time::Duration::from_secs_f64(done as f64 / self.rate)
    }
}

impl Lanes {
    /// Streams that keep the path full: each stream holds at most its window of unread bytes,
    /// and a stream with a lost packet waits two round trips or more for the repair (more when
    /// losses come in bursts), so six windows' worth of streams per congestion window in flight.
    /// With three, 1 % loss in bursts of 10 on wan-emu (200 Mbit/s, 100 ms) left the sender
    /// blocked by flow control and its measured rate sank round after round (31 % of the link).
    ///
    /// Also, off loopback, four more than `open` while blocks wait for a stream (a quarter of
    /// the queue or more) and the rate the link carries sank ([`Carried`]): every stream is
    /// then held by flow control, waiting for a lost packet's repair, and a window sized from
    /// the congestion window is too few. Under loss in bursts (wan-emu, 1 %, bursts of 10
    /// frames, 100 ms) the sender otherwise kept its first 8 streams with 56 blocks queued, and
    /// its measured rate sank with what they could carry. With the trigger at half the queue,
    /// 1 GiB at 100 ms and 1 % random loss gave 60.3, 78.0 and 89.4 % of the link (36 streams,
    /// 28 blocks waiting, no block finished for 5 s); at a quarter, 83.7, 86.4 and 90.3 %, with
    /// no stall. On a slow path blocks always wait, and without the rate's fall as a condition
    /// the lanes grew to 28 at 20 Mbit/s, each with a block of 1 MiB that crossed beside the
    /// others: no block arrived whole for 7 s, then 28 at once. The fall after start-up's
    /// overshoot still looks like one, so these lanes stop at 24 congestion windows' worth of
    /// stream windows (four times the first rule's): 4 at 20 Mbit/s and 100 ms, 40 or more at
    /// 200 Mbit/s.
    ///
    /// Over TCP the first lanes stay: each is a TCP connection with its own congestion window,
    /// and more of them would only take more than a fair share of the bottleneck.
    pub(crate) fn wanted(&self, open: usize) -> usize {
        if self.link.kind() == Kind::Tcp {
            return open;
        }
        let path = self.link.path();
        let windows =
            |n: u64| (path.cwnd.saturating_mul(n) / self.stream_window.max(1) + 1) as usize;
        let by_window = windows(6);
        let waiting = self
            .queue
            .upgrade()
            .is_some_and(|q| 4 * queued(&q) >= q.max_capacity());
        let sank = self.carried.sank(path.udp_tx_bytes);
        if waiting && sank && self.stream_window <= GAP_SAFE_STREAM_WINDOW {
            by_window.max((open + 4).min(windows(24)))
        } else {
            by_window
        }
    }

    /// Opens lanes up to what the path wants now ([`Lanes::wanted`]), kept within
    /// `first..=max`; `open` counts the lanes opened so far.
    pub(crate) fn grow(
        &self,
        open: &mut usize,
        first: usize,
        max: usize,
        set: &mut tokio::task::JoinSet<Result<()>>,
    ) {
        if *open >= max {
            return;
        }
        let want = if *open < first {
            first
        } else {
            self.wanted(*open).clamp(first, max)
        };
        while *open < want {
            self.spawn(set, *open == 0);
            *open += 1;
        }
    }

    /// One more data stream taking blocks until the reader is done. Only the `first` one must
    /// open: a later one that cannot (over TCP, its handshake may wait behind a return path
    /// full of acknowledgements) leaves the blocks to the lanes that did.
    pub(crate) fn spawn(&self, set: &mut tokio::task::JoinSet<Result<()>>, first: bool) {
        let link = self.link.clone();
        let rx = self.blocks.clone();
        let progress = self.progress.clone();
        let pace = self.pace.clone();
        let until = self.until;
        let taken = self.taken.clone();
        let in_flight = self.in_flight.clone();
        let conn_err = transport::conn_error(self.link.peer());
        set.spawn(async move {
            let opened = match link.open_lane().await {
                Err(e) if !first && link.ended().is_none() => {
                    tracing::warn!(
                        "a further lane could not be opened ({e}); going on with the others"
                    );
                    return Ok(());
                }
                opened => opened?,
            };
            let Some(mut stream) = opened else {
                tracing::debug!("the receiver allows no more lanes");
                return Ok(());
            };
            // Whether each of this lane's blocks the transport may still hold is done, oldest
            // first.
            let mut held: std::collections::VecDeque<Arc<std::sync::atomic::AtomicBool>> =
                Default::default();
            loop {
                if until.is_some_and(|u| tokio::time::Instant::now() >= u) {
                    break;
                }
                let next = {
                    let mut rx = rx.lock().await;
                    if !in_flight.room(&*link, until).await {
                        break;
                    }
                    let next = rx.recv().await;
                    if let Some(block) = &next {
                        let len = block.payload.len() as u64;
                        in_flight
                            .bytes
                            .fetch_add(len, std::sync::atomic::Ordering::AcqRel);
                        in_flight
                            .largest
                            .fetch_max(len, std::sync::atomic::Ordering::Relaxed);
                    }
                    next
                };
                let Some(mut block) = next else { break };
                let order = taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                while held
                    .front()
                    .is_some_and(|done| done.load(std::sync::atomic::Ordering::Acquire))
                {
                    held.pop_front();
                }
                // A stream has one priority, and its bytes leave in the order written: while an
                // earlier block of this lane is still held, the new one keeps that block's
                // place. Given its own, later place at once, it pushed the unsent rest of the
                // earlier block behind every other lane's block.
                if held.is_empty() {
                    stream.set_order(order);
                }
                let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
                held.push_back(done.clone());
                let n = block.carries;
                // Counted as delivered when the transport lets go of the payload: over QUIC
                // once every packet of it was acknowledged.
                block.payload = Bytes::from_owner(Delivered {
                    payload: std::mem::take(&mut block.payload),
                    carries: n,
                    progress: progress.clone(),
                    in_flight: in_flight.clone(),
                    done,
                });
                match &pace {
                    Some(pace) => {
                        // The block's time under the ceiling is taken at once, and its pieces
                        // go out spread over it: a block of 16 MiB (or a whole small file)
                        // must not cross at line rate under a ceiling of 1 MB/s.
                        let len = (block.header.len() + block.payload.len()) as u64;
                        let Some(start) = pace.reserve(len, until) else {
                            if let Some(until) = until {
                                tokio::time::sleep_until(until).await;
                            }
                            break;
                        };
                        let (mut header, mut payload) = (Some(block.header), block.payload);
                        let mut done = 0u64;
                        loop {
                            let part = payload.split_to(payload.len().min(pace.piece()));
                            tokio::time::sleep_until(pace.after(start, done)).await;
                            done += (header.as_ref().map_or(0, Bytes::len) + part.len()) as u64;
                            let written = match header.take() {
                                Some(h) => stream.write(&mut [h, part]).await,
                                None => stream.write(&mut [part]).await,
                            };
                            written.map_err(|e| conn_err(&e))?;
                            if payload.is_empty() {
                                break;
                            }
                        }
                    }
                    None => {
                        let mut chunks = [block.header, block.payload];
                        stream.write(&mut chunks).await.map_err(|e| conn_err(&e))?;
                    }
                }
                progress.add_sent(n);
            }
            stream.finish().await;
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_sending_rate_is_that_of_the_last_two_seconds() {
        let mut sent = Sent::default();
        let t0 = tokio::time::Instant::now();
        let tick = Duration::from_millis(100);
        assert_eq!(sent.rate(t0, 0), None);
        // 1 MB/s for 3 s, then 4 MB/s for 3 s.
        let mut bytes = 0;
        for i in 1..=30 {
            bytes += 100_000;
            let r = sent.rate(t0 + tick * i, bytes);
            assert_eq!(r.is_some(), i >= 5, "at {i}: {r:?}");
        }
        assert!((sent.rate(t0 + tick * 30, bytes).unwrap() - 1e6).abs() < 1e3);
        for i in 31..=60 {
            bytes += 400_000;
            sent.rate(t0 + tick * i, bytes);
        }
        let r = sent.rate(t0 + tick * 60, bytes).unwrap();
        assert!((r - 4e6).abs() < 0.1e6, "{r}");
    }

    /// The wire's bytes less the lost ones can fall between two samples (a loss declared for
    /// packets sent before): a rate of 0, not an overflow.
    #[test]
    fn a_falling_count_is_a_rate_of_nothing() {
        let mut sent = Sent::default();
        let t0 = tokio::time::Instant::now();
        sent.rate(t0, 1_000_000);
        assert_eq!(
            sent.rate(t0 + Duration::from_millis(600), 900_000),
            Some(0.0)
        );
    }

    #[test]
    fn a_rate_that_holds_has_not_sunk_and_one_that_halves_has() {
        let carried = Carried::default();
        let t0 = Instant::now();
        let tick = Duration::from_millis(100);
        // Under half a second of samples: nothing to judge by.
        assert!(!carried.sank_at(t0, 0));
        // 10 MB/s for 4 s, then half that.
        let mut bytes = 0;
        for i in 1..=40 {
            bytes += 1_000_000;
            assert!(!carried.sank_at(t0 + tick * i, bytes), "at {i}");
        }
        let mut sank = false;
        for i in 41..=50 {
            bytes += 500_000;
            sank |= carried.sank_at(t0 + tick * i, bytes);
        }
        assert!(sank);
        // Three seconds at the lower rate: that is what the path carries now.
        for i in 51..=90 {
            bytes += 500_000;
            sank = carried.sank_at(t0 + tick * i, bytes);
        }
        assert!(!sank);
    }

    #[test]
    fn a_payload_counts_as_delivered_once_the_transport_lets_go_of_it() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let progress = Arc::new(Progress::default());
        let in_flight = Arc::new(InFlight::default());
        let done = Arc::new(AtomicBool::new(false));
        in_flight.bytes.store(10, Ordering::Relaxed);
        let payload = Bytes::from_owner(Delivered {
            payload: Bytes::from_static(b"0123456789"),
            carries: 10,
            progress: progress.clone(),
            in_flight: in_flight.clone(),
            done: done.clone(),
        });
        // A transport holds slices of it until each is acknowledged.
        let (a, b) = (payload.slice(..4), payload.slice(4..));
        drop(payload);
        drop(a);
        assert_eq!(progress.snapshot().bytes_delivered, 0);
        assert_eq!(in_flight.bytes.load(Ordering::Relaxed), 10);
        assert!(!done.load(Ordering::Relaxed));
        drop(b);
        assert_eq!(progress.snapshot().bytes_delivered, 10);
        assert_eq!(in_flight.bytes.load(Ordering::Relaxed), 0);
        assert!(done.load(Ordering::Relaxed));
    }
}
