//! A deterministic network simulator that runs real quinn-proto connections over an emulated
//! bottleneck, on a virtual clock.
//!
//! Congestion control is only tested honestly against a link that queues, drops and delays
//! packets, and a real link (`bench/wan.sh` over wan-emu) takes root, minutes and luck. This
//! module does the same in-process: each [`Flow`] is a pair of `quinn_proto::Endpoint`s — a
//! sender that connects and writes `bytes` over `streams` unidirectional streams, and a receiver
//! that reads them — configured by the crate's own [`tls`] glue and the flow's
//! [`TransportTuning`]. Nothing else is mocked: the handshake, loss detection, pacing, the
//! congestion controller and the receiver's stream reassembly are quinn's.
//!
//! ```text
//!   senders ──► forward Link: MTU check → drop-tail queue at `rate_bps` → loss → `delay` ──► receivers
//!   senders ◄── back Link (ACKs, flow control, handshake replies)          ◄──────────────── receivers
//! ```
//!
//! All flows share one [`Link`] each way, so they compete for one queue and fairness between
//! them can be measured. The link model is wan-emu's (`shared/tools/wan-emu/src/model.rs`): a
//! datagram that would make the backlog exceed [`Link::queue`] of drain time is dropped at the
//! tail, otherwise it leaves when everything ahead of it is serialized; then it may be lost at
//! random (Bernoulli, or Gilbert-Elliott bursts); then it arrives `delay` later, in order.
//!
//! Time is virtual: one `Instant` taken at the start plus a `Duration` the event loop advances
//! straight to the next thing that can happen — a datagram's arrival, a connection's timer, or a
//! flow's start. Nothing sleeps, so ten seconds of a 200 Mbit/s link take a few seconds of CPU.
//!
//! To use it, describe the path and the transfers in a [`Scenario`] and call [`run`]; the
//! [`Report`] tells, per flow, when it finished or why it failed, what the sender put on the
//! wire and lost, its RTTs and its delivery over time ([`FlowReport::goodput_bps`]), and per
//! direction what the queue dropped and how long datagrams waited in it.
//!
//! **Determinism.** The same [`Scenario`] (seed included) gives the same [`Report`], down to the
//! nanosecond: the link's randomness comes from the seed and each endpoint's random number
//! generator is seeded from it. Randomness remains inside TLS — key shares, nonces, and a fresh
//! ECDSA certificate and signature per run, whose DER length varies by a byte or two — but the
//! receiver's whole first flight fits in one datagram, which quinn pads to 1,200 bytes, so no
//! datagram's size or time depends on it. Were the flight to outgrow it, a byte's difference
//! would shift every later packet by tens of nanoseconds; `same_seed_same_report` in
//! `tests/netsim.rs` would catch that.
//!
//! **Fidelity.** Against wan-emu's measurements at 200 Mbit/s, 100 ms RTT and a 50 ms queue
//! (`cap.rs`), a 64 MiB send here takes 3.9 s and 129 MB on the wire with quinn's BBR at 1 %
//! loss (wan-emu: 4.1 s, 155 MB) and 3.7 s and 77 MB capped (4.7 s, 75 MB); cubic moves 21 MB
//! in 120 s (19 MB). What it leaves out: CPU time (a host handles everything the instant it
//! is due), jitter and reordering, and the runtime's timer wheel unless
//! [`Scenario::timer_granularity`] asks for it. Its timing is cleaner than a real host's, so
//! effects that feed on noise — BBR's bandwidth over-estimates — come out somewhat milder.
//! The sender's writer, like the engine's, fills its streams in the order quinn reports them
//! writable, so the first stream takes nearly all the window the connection frees; data
//! spreads over the streams only when a stream's own window is what blocks it.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Dir, EcnCodepoint, Endpoint,
    EndpointConfig, Event, ServerConfig, StreamEvent, StreamId, WriteError,
};

use crate::tls::{self, TlsError, TransportTuning};

/// Bytes a datagram occupies on the bottleneck beyond its UDP payload: Ethernet (14), IPv4 (20)
/// and UDP (8) headers. wan-emu's rate counts Ethernet frame bytes, so this keeps a simulated
/// `rate_bps` comparable with a `--rate-mbit` there.
pub const FRAME_OVERHEAD: usize = 42;

/// The sender hands the stream a new block of this many bytes when the last one is written,
/// as the engine does with its 1 MiB blocks; a stream is finished when the budget runs out.
const BLOCK: u64 = 1 << 20;

/// Most datagrams one `poll_transmit` may return, as with a GSO-capable socket. quinn sends a
/// batch back to back, so this bounds the bursts the link sees between pacing intervals.
const MAX_DATAGRAMS: usize = 10;

/// Spacing of the points in [`FlowReport::progress`]: fine enough for goodput over 100 ms
/// windows, coarse enough that a 30 s run keeps a few thousand points.
pub const PROGRESS_STEP: Duration = Duration::from_millis(10);

/// Event-loop steps allowed per virtual second. A 1 Gbit/s flow needs about 400,000 (an arrival
/// and a pacing wake-up per data packet, plus ACKs); beyond this the loop is spinning on one
/// instant, and stopping it with [`Stop::StepLimit`] beats hanging a test.
const STEPS_PER_SECOND: u64 = 2_000_000;

/// One direction of the emulated path.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    /// Bottleneck rate in bits per second of UDP payload plus [`FRAME_OVERHEAD`]; 0 = unlimited
    /// (no queue either).
    pub rate_bps: u64,
    /// One-way propagation delay, added after the bottleneck.
    pub delay: Duration,
    /// Drop-tail queue size as the time the bottleneck needs to drain it (wan-emu's
    /// `--queue-ms`). A datagram always enters an idle link, however small the queue.
    pub queue: Duration,
    /// Long-run fraction of datagrams lost after the queue, in [0, 1).
    pub loss: f64,
    /// Mean length of a loss burst in datagrams (Gilbert-Elliott: the bad state loses
    /// everything, and the long-run loss is still `loss`); `None` for independent losses.
    pub loss_burst: Option<f64>,
    /// Each datagram's delay is uniform in `delay ± jitter` (never below zero), as wan-emu's
    /// `--jitter-ms`.
    pub jitter: Duration,
    /// Whether jitter may reorder datagrams (wan-emu's `--reorder`). Without it a datagram
    /// never overtakes the one before it: it waits for it, as behind a link-layer retransmission,
    /// so under load most datagrams take nearly the longest delay.
    pub reorder: bool,
}

impl Link {
    /// A lossless link with wan-emu's default 50 ms queue.
    pub fn new(rate_bps: u64, delay: Duration) -> Self {
        Self {
            rate_bps,
            delay,
            queue: Duration::from_millis(50),
            loss: 0.0,
            loss_burst: None,
            jitter: Duration::ZERO,
            reorder: false,
        }
    }
}

/// One bulk transfer: a sender and a receiver with their own QUIC endpoints.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Transport settings of both ends.
    pub tuning: TransportTuning,
    /// Bytes the sender writes and the receiver must read.
    pub bytes: u64,
    /// Unidirectional streams the sender opens (more than `tuning.max_uni_streams` are opened
    /// as the receiver allows).
    pub streams: usize,
    /// Virtual time at which the sender connects.
    pub start: Duration,
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Senders towards receivers: the data direction.
    pub forward: Link,
    /// Receivers towards senders: ACKs and flow-control updates.
    pub back: Link,
    /// The transfers sharing the path.
    pub flows: Vec<Flow>,
    /// Seeds the links' losses and every endpoint's random number generator.
    pub seed: u64,
    /// Virtual time after which the simulation stops, finished or not.
    pub limit: Duration,
    /// Largest UDP payload either link carries; larger datagrams are dropped, as on a path
    /// with that MTU (quinn's path-MTU discovery probes up to 1,452 bytes by default).
    pub mtu: u16,
    /// Connection timers (pacing, loss detection, ACK delay) fire at the next multiple of this;
    /// `Duration::ZERO` fires them exactly. quinn under tokio wakes on a 1 ms timer wheel, so
    /// 1 ms mimics a real sender's bursts; zero is the protocol's ideal.
    pub timer_granularity: Duration,
}

/// Why [`run`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Every flow finished or failed.
    AllDone,
    /// [`Scenario::limit`] was reached.
    TimeLimit,
    /// Nothing was left to happen: no datagram in flight and no timer armed.
    Idle,
    /// The event loop took more steps than any real traffic needs (two million per virtual
    /// second): it was spinning on one instant.
    StepLimit,
}

/// What happened to one direction of the path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkReport {
    /// Datagrams offered to the link.
    pub datagrams: u64,
    /// Datagrams dropped for exceeding [`Scenario::mtu`].
    pub oversize_drops: u64,
    /// Datagrams dropped at the tail of the full queue.
    pub queue_drops: u64,
    /// Datagrams lost at random after the queue.
    pub loss_drops: u64,
    /// Longest wait in the queue of any datagram that entered it.
    pub max_queue_delay: Duration,
    /// Mean wait in the queue over the datagrams that entered it.
    pub mean_queue_delay: Duration,
}

/// What happened to one flow. Times are virtual, from the start of the simulation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowReport {
    /// When the sender connected ([`Flow::start`]).
    pub start: Duration,
    /// When the receiver saw the handshake complete.
    pub connected: Option<Duration>,
    /// When the receiver had read every byte; `None` if it never did.
    pub finished: Option<Duration>,
    /// Bytes the receiver read, in order, from its streams.
    pub delivered: u64,
    /// The first connection error either side reported, prefixed with the side ("receiver:
    /// internal error: too many gaps in stream buffer"); `None` for a clean run.
    pub error: Option<String>,
    /// `(time, bytes delivered by then)`, points at least [`PROGRESS_STEP`] apart.
    pub progress: Vec<(Duration, u64)>,
    /// The sender's UDP payload bytes sent (data and retransmissions).
    pub udp_tx_bytes: u64,
    /// The sender's UDP payload bytes received (ACKs).
    pub udp_rx_bytes: u64,
    /// Packets the sender sent.
    pub sent_packets: u64,
    /// Packets the sender declared lost.
    pub lost_packets: u64,
    /// Congestion events the sender's controller saw.
    pub congestion_events: u64,
    /// The sender's minimum RTT sample.
    pub min_rtt: Duration,
    /// The largest smoothed RTT the sender reported after the handshake.
    pub max_rtt: Duration,
}

impl FlowReport {
    /// Time from the flow's start to its last byte read, if it finished.
    pub fn duration(&self) -> Option<Duration> {
        self.finished.map(|f| f.saturating_sub(self.start))
    }

    /// Bytes delivered by virtual time `t` (to [`PROGRESS_STEP`]).
    pub fn delivered_at(&self, t: Duration) -> u64 {
        let i = self.progress.partition_point(|&(at, _)| at <= t);
        i.checked_sub(1).map_or(0, |i| self.progress[i].1)
    }

    /// Mean goodput, bits per second, over `[from, to)`.
    pub fn goodput_bps(&self, from: Duration, to: Duration) -> f64 {
        let secs = to.saturating_sub(from).as_secs_f64();
        if secs == 0.0 {
            return 0.0;
        }
        (self.delivered_at(to) - self.delivered_at(from)) as f64 * 8.0 / secs
    }
}

/// The outcome of a [`run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// One per [`Scenario::flows`], in order.
    pub flows: Vec<FlowReport>,
    /// The data direction.
    pub forward: LinkReport,
    /// The ACK direction.
    pub back: LinkReport,
    /// Virtual time at which the simulation stopped.
    pub end: Duration,
    /// Why it stopped.
    pub stop: Stop,
    /// Event-loop steps taken.
    pub steps: u64,
}

/// Why a scenario could not be run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The TLS configuration of a flow could not be built.
    #[error("simulated endpoint TLS: {0}")]
    Tls(#[from] TlsError),
    /// A field of the scenario is out of range.
    #[error("invalid scenario: {0}")]
    Invalid(&'static str),
}

/// Runs `scenario` to completion, to its time limit, or until nothing is left to happen.
pub fn run(scenario: &Scenario) -> Result<Report, SimError> {
    for link in [&scenario.forward, &scenario.back] {
        if !(0.0..1.0).contains(&link.loss) {
            return Err(SimError::Invalid("loss must be in [0, 1)"));
        }
        if link
            .loss_burst
            .is_some_and(|b| !(b >= 1.0 && b.is_finite()))
        {
            return Err(SimError::Invalid("loss_burst must be at least 1 datagram"));
        }
    }
    if scenario.flows.len() > 250 {
        return Err(SimError::Invalid(
            "at most 250 flows (one IPv4 address each)",
        ));
    }
    let identity = tls::Identity::generate()?;
    let mut seeds = SplitMix64(scenario.seed);
    let mut flows = Vec::with_capacity(scenario.flows.len());
    for (i, flow) in scenario.flows.iter().enumerate() {
        flows.push(FlowRun::new(i, flow, &identity, &mut seeds)?);
    }
    let mut sim = Sim {
        clock: Instant::now(),
        now: Duration::ZERO,
        granularity: scenario.timer_granularity,
        forward: Wire::new(scenario.forward.clone(), scenario.mtu, seeds.next()),
        back: Wire::new(scenario.back.clone(), scenario.mtu, seeds.next()),
        buf: Vec::new(),
        chunk: Bytes::from(vec![0u8; 64 << 10]),
    };
    let max_steps = (scenario.limit.as_secs() + 1).saturating_mul(STEPS_PER_SECOND);
    let mut steps = 0u64;
    let stop = loop {
        sim.step(&mut flows);
        if flows.iter().all(|f| f.phase == Phase::Done) {
            break Stop::AllDone;
        }
        let Some(next) = sim.next_event(&flows) else {
            break Stop::Idle;
        };
        if next > scenario.limit {
            sim.now = scenario.limit;
            break Stop::TimeLimit;
        }
        steps += 1;
        if steps > max_steps {
            break Stop::StepLimit;
        }
        sim.now = sim.now.max(next);
    };
    let now = sim.now;
    Ok(Report {
        flows: flows.into_iter().map(|f| f.into_report(now)).collect(),
        forward: sim.forward.report(),
        back: sim.back.report(),
        end: now,
        stop,
        steps,
    })
}

/// SplitMix64, as wan-emu uses: tiny, and stable across versions, so a seed always reproduces
/// a run (a crate's generator may change its stream in a minor release).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn seed32(&mut self) -> [u8; 32] {
        let mut seed = [0; 32];
        for part in seed.chunks_exact_mut(8) {
            part.copy_from_slice(&self.next().to_le_bytes());
        }
        seed
    }
}

/// A datagram on a wire.
#[derive(Debug)]
struct Datagram {
    flow: usize,
    arrival: Duration,
    ecn: Option<EcnCodepoint>,
    data: BytesMut,
}

/// One direction of the path while it runs: the [`Link`]'s settings plus its state.
#[derive(Debug)]
struct Wire {
    link: Link,
    mtu: usize,
    rng: SplitMix64,
    /// Gilbert-Elliott state: in the bad state every datagram is lost.
    bad: bool,
    /// When the bottleneck will have serialized everything it accepted.
    busy_until: Duration,
    /// In arrival order (a datagram that jitter lets overtake others is put in its place).
    in_flight: VecDeque<Datagram>,
    stats: LinkReport,
    queued: u64,
    queue_wait_sum: Duration,
}

impl Wire {
    fn new(link: Link, mtu: u16, seed: u64) -> Self {
        Self {
            link,
            mtu: mtu.into(),
            rng: SplitMix64(seed),
            bad: false,
            busy_until: Duration::ZERO,
            in_flight: VecDeque::new(),
            stats: LinkReport::default(),
            queued: 0,
            queue_wait_sum: Duration::ZERO,
        }
    }

    /// Offers `data` to the link at `now`: it is dropped, or it will arrive at the far end.
    fn send(&mut self, now: Duration, flow: usize, ecn: Option<EcnCodepoint>, data: &[u8]) {
        self.stats.datagrams += 1;
        if data.len() > self.mtu {
            self.stats.oversize_drops += 1;
            return;
        }
        let mut departure = now;
        if self.link.rate_bps > 0 {
            let backlog = self.busy_until.saturating_sub(now);
            let bits = ((data.len() + FRAME_OVERHEAD) * 8) as u128;
            let tx = Duration::from_nanos(
                (bits * 1_000_000_000).div_ceil(u128::from(self.link.rate_bps)) as u64,
            );
            if !backlog.is_zero() && backlog + tx > self.link.queue {
                self.stats.queue_drops += 1;
                return;
            }
            self.queued += 1;
            self.queue_wait_sum += backlog;
            self.stats.max_queue_delay = self.stats.max_queue_delay.max(backlog);
            self.busy_until = self.busy_until.max(now) + tx;
            departure = self.busy_until;
        }
        if self.lose() {
            self.stats.loss_drops += 1;
            return;
        }
        let mut arrival = departure + self.delay();
        let datagram = |arrival| Datagram {
            flow,
            arrival,
            ecn,
            data: BytesMut::from(data),
        };
        if self.link.reorder {
            let at = self.in_flight.partition_point(|d| d.arrival <= arrival);
            self.in_flight.insert(at, datagram(arrival));
        } else {
            if let Some(last) = self.in_flight.back() {
                arrival = arrival.max(last.arrival);
            }
            self.in_flight.push_back(datagram(arrival));
        }
    }

    /// This datagram's one-way delay: the link's, give or take its jitter.
    fn delay(&mut self) -> Duration {
        let jitter = self.link.jitter.as_secs_f64();
        if jitter == 0.0 {
            return self.link.delay;
        }
        let d = self.link.delay.as_secs_f64() + (2.0 * self.rng.unit() - 1.0) * jitter;
        Duration::from_secs_f64(d.max(0.0))
    }

    fn lose(&mut self) -> bool {
        let loss = self.link.loss;
        if loss <= 0.0 {
            return false;
        }
        let Some(burst) = self.link.loss_burst else {
            return self.rng.unit() < loss;
        };
        // Stationary share of the bad state = loss; mean stay in it = `burst` datagrams.
        let leave_bad = 1.0 / burst;
        let enter_bad = (loss * leave_bad / (1.0 - loss)).min(1.0);
        let switch = if self.bad { leave_bad } else { enter_bad };
        if self.rng.unit() < switch {
            self.bad = !self.bad;
        }
        self.bad
    }

    fn next_arrival(&self) -> Option<Duration> {
        self.in_flight.front().map(|d| d.arrival)
    }

    fn pop_due(&mut self, now: Duration) -> Option<Datagram> {
        if self.next_arrival()? <= now {
            self.in_flight.pop_front()
        } else {
            None
        }
    }

    fn report(&self) -> LinkReport {
        let mut report = self.stats.clone();
        if self.queued > 0 {
            report.mean_queue_delay = self.queue_wait_sum / self.queued as u32;
        }
        report
    }
}

/// Where a flow is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before [`Flow::start`].
    Waiting,
    Running,
    /// Finished or failed; its endpoints are dropped and datagrams still in flight for it are
    /// discarded on arrival (no close handshake: nothing else would learn from it).
    Done,
}

/// One QUIC endpoint of a flow and its single connection.
struct Host {
    endpoint: Endpoint,
    addr: SocketAddr,
    conn: Option<(ConnectionHandle, Connection)>,
    /// When the connection's next timer fires, on the virtual clock (already rounded to
    /// [`Scenario::timer_granularity`]).
    timeout: Option<Duration>,
    /// Something happened (a datagram, a start) since this host last ran its connection.
    dirty: bool,
}

impl Host {
    fn new(addr: SocketAddr, server: Option<Arc<ServerConfig>>, seed: [u8; 32]) -> Self {
        let mut config = EndpointConfig::default();
        config.rng_seed(Some(seed));
        crate::tls::without_connection_ids(&mut config);
        Self {
            endpoint: Endpoint::new(Arc::new(config), server, true, None),
            addr,
            conn: None,
            timeout: None,
            dirty: false,
        }
    }

    /// Hands the endpoint's events to the connection and the connection's to the endpoint.
    fn exchange_endpoint_events(&mut self) {
        if let Some((ch, conn)) = &mut self.conn {
            while let Some(event) = conn.poll_endpoint_events() {
                if let Some(event) = self.endpoint.handle_event(*ch, event) {
                    conn.handle_event(event);
                }
            }
        }
    }

    /// Puts every datagram the connection is ready to send on `wire`, then reads its next timer.
    fn transmit(&mut self, sim: &mut Sim, flow: usize, forward: bool) {
        let Some((_, conn)) = &mut self.conn else {
            return;
        };
        let (now, at) = (sim.now, sim.clock + sim.now);
        let wire = if forward {
            &mut sim.forward
        } else {
            &mut sim.back
        };
        let buf = &mut sim.buf;
        loop {
            buf.clear();
            let Some(t) = conn.poll_transmit(at, MAX_DATAGRAMS, buf) else {
                break;
            };
            // A GSO batch is several datagrams of `segment_size` bytes, the last maybe shorter.
            let segment = t.segment_size.unwrap_or(t.size).max(1);
            for datagram in buf[..t.size].chunks(segment) {
                wire.send(now, flow, t.ecn, datagram);
            }
        }
        self.timeout = conn.poll_timeout().map(|t| {
            let t = t.saturating_duration_since(sim.clock);
            match sim.granularity.as_nanos() {
                0 => t,
                g => Duration::from_nanos((t.as_nanos().div_ceil(g) * g) as u64),
            }
        });
    }
}

/// The sender's application: keeps every stream's send buffer full from the byte budget.
struct Writer {
    /// Bytes not yet handed to any stream.
    budget: u64,
    wanted: usize,
    streams: Vec<OutStream>,
}

struct OutStream {
    id: StreamId,
    /// Bytes of the stream's current block not yet written.
    block_left: u64,
    finished: bool,
}

impl Writer {
    /// Opens the streams the receiver allows and writes until every stream is blocked or done.
    fn pump(&mut self, conn: &mut Connection, chunk: &Bytes) {
        while self.streams.len() < self.wanted {
            let Some(id) = conn.streams().open(Dir::Uni) else {
                break;
            };
            self.streams.push(OutStream {
                id,
                block_left: 0,
                finished: false,
            });
        }
        for s in &mut self.streams {
            while !s.finished {
                if s.block_left == 0 {
                    if self.budget == 0 {
                        // Only fails if the stream was stopped or reset, which nobody does here.
                        let _ = conn.send_stream(s.id).finish();
                        s.finished = true;
                        break;
                    }
                    s.block_left = self.budget.min(BLOCK);
                    self.budget -= s.block_left;
                }
                let len = s.block_left.min(chunk.len() as u64) as usize;
                match conn
                    .send_stream(s.id)
                    .write_chunks(&mut [chunk.slice(..len)])
                {
                    Ok(written) => s.block_left -= written.bytes as u64,
                    // Blocked registers the stream for a `Writable` event; keep writing after a
                    // partial write, which does not.
                    Err(WriteError::Blocked) => break,
                    Err(WriteError::Stopped(_) | WriteError::ClosedStream) => {
                        s.finished = true;
                    }
                }
            }
        }
    }
}

/// One flow while it runs.
struct FlowRun {
    index: usize,
    phase: Phase,
    sender: Host,
    receiver: Host,
    client_config: ClientConfig,
    writer: Writer,
    bytes: u64,
    report: FlowReport,
}

impl FlowRun {
    fn new(
        index: usize,
        flow: &Flow,
        identity: &tls::Identity,
        seeds: &mut SplitMix64,
    ) -> Result<Self, SimError> {
        let server = tls::server_config(identity, &flow.tuning)?;
        let host = (index + 1) as u8;
        Ok(Self {
            index,
            phase: Phase::Waiting,
            sender: Host::new(
                SocketAddr::from((Ipv4Addr::new(10, 1, 0, host), 40_000)),
                None,
                seeds.seed32(),
            ),
            receiver: Host::new(
                SocketAddr::from((Ipv4Addr::new(10, 2, 0, host), 7_000)),
                Some(Arc::new(server)),
                seeds.seed32(),
            ),
            client_config: tls::client_config(identity.fingerprint(), &flow.tuning)?,
            writer: Writer {
                budget: flow.bytes,
                wanted: flow.streams,
                streams: Vec::new(),
            },
            bytes: flow.bytes,
            report: FlowReport {
                start: flow.start,
                ..FlowReport::default()
            },
        })
    }

    fn fail(&mut self, side: &str, error: impl std::fmt::Display) {
        if self.report.error.is_none() && self.report.finished.is_none() {
            self.report.error = Some(format!("{side}: {error}"));
        }
    }

    /// Ends the flow: keeps the sender's counters and drops both endpoints.
    fn finish(&mut self) {
        if let Some((_, conn)) = &self.sender.conn {
            let stats = conn.stats();
            self.report.udp_tx_bytes = stats.udp_tx.bytes;
            self.report.udp_rx_bytes = stats.udp_rx.bytes;
            self.report.sent_packets = stats.path.sent_packets;
            self.report.lost_packets = stats.path.lost_packets;
            self.report.congestion_events = stats.path.congestion_events;
            self.report.min_rtt = stats.path.min_rtt;
        }
        self.sender.conn = None;
        self.receiver.conn = None;
        self.sender.timeout = None;
        self.receiver.timeout = None;
        self.phase = Phase::Done;
    }

    fn into_report(mut self, now: Duration) -> FlowReport {
        if self.phase != Phase::Done {
            self.finish();
        }
        self.record_progress(now, true);
        self.report
    }

    /// Adds a `(now, delivered)` point if the last is [`PROGRESS_STEP`] old; `last` forces one,
    /// replacing a younger last point (every point stays exact: bytes delivered at its time).
    fn record_progress(&mut self, now: Duration, last: bool) {
        let point = (now, self.report.delivered);
        match self.report.progress.last_mut() {
            Some(prev) if prev.1 == point.1 => {}
            Some(prev) if now < prev.0 + PROGRESS_STEP => {
                if last {
                    *prev = point;
                }
            }
            _ => self.report.progress.push(point),
        }
    }

    /// Hands a datagram to the sender (`to_sender`) or the receiver as it arrives.
    fn deliver(&mut self, sim: &mut Sim, datagram: Datagram, to_sender: bool) {
        if self.phase != Phase::Running {
            return;
        }
        let at = sim.clock + datagram.arrival;
        let (host, from, reply_wire) = if to_sender {
            (&mut self.sender, self.receiver.addr, &mut sim.forward)
        } else {
            (&mut self.receiver, self.sender.addr, &mut sim.back)
        };
        host.dirty = true;
        sim.buf.clear();
        let event = host
            .endpoint
            .handle(at, from, None, datagram.ecn, datagram.data, &mut sim.buf);
        match event {
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                if let Some((own, conn)) = &mut host.conn {
                    if *own == ch {
                        conn.handle_event(event);
                    }
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                let mut buf = Vec::new();
                match host.endpoint.accept(incoming, at, &mut buf, None) {
                    Ok(accepted) => host.conn = Some(accepted),
                    Err(e) => {
                        if let Some(t) = e.response {
                            reply_wire.send(sim.now, self.index, t.ecn, &buf[..t.size]);
                        }
                        self.fail("receiver", e.cause);
                    }
                }
            }
            Some(DatagramEvent::Response(t)) => {
                reply_wire.send(sim.now, self.index, t.ecn, &sim.buf[..t.size]);
            }
            None => {}
        }
    }

    /// Runs whatever is due on both hosts at `sim.now`.
    fn drive(&mut self, sim: &mut Sim) {
        let at = sim.clock + sim.now;
        if self.phase == Phase::Waiting && self.report.start <= sim.now {
            self.phase = Phase::Running;
            match self.sender.endpoint.connect(
                at,
                self.client_config.clone(),
                self.receiver.addr,
                tls::SERVER_NAME,
            ) {
                Ok(conn) => self.sender.conn = Some(conn),
                Err(e) => {
                    self.fail("sender", e);
                    self.finish();
                    return;
                }
            }
            self.sender.dirty = true;
        }
        if self.phase != Phase::Running {
            return;
        }
        for to_sender in [true, false] {
            let host = if to_sender {
                &mut self.sender
            } else {
                &mut self.receiver
            };
            let due = host.timeout.is_some_and(|t| t <= sim.now);
            if !(due || host.dirty) {
                continue;
            }
            host.dirty = false;
            if due {
                if let Some((_, conn)) = &mut host.conn {
                    conn.handle_timeout(at);
                }
            }
            host.exchange_endpoint_events();
            if to_sender {
                self.sender_events(sim);
            } else {
                self.receiver_events(sim);
            }
            if self.phase != Phase::Running {
                return;
            }
            let host = if to_sender {
                &mut self.sender
            } else {
                &mut self.receiver
            };
            host.transmit(sim, self.index, to_sender);
            host.exchange_endpoint_events();
        }
    }

    fn sender_events(&mut self, sim: &Sim) {
        let Some((_, conn)) = &mut self.sender.conn else {
            return;
        };
        let mut pump = false;
        let mut lost = None;
        while let Some(event) = conn.poll() {
            match event {
                Event::Connected
                | Event::Stream(StreamEvent::Writable { .. } | StreamEvent::Available { .. }) => {
                    pump = true;
                }
                Event::ConnectionLost { reason } => lost = Some(reason),
                _ => {}
            }
        }
        if pump {
            self.writer.pump(conn, &sim.chunk);
        }
        if !conn.is_handshaking() {
            self.report.max_rtt = self.report.max_rtt.max(conn.rtt());
        }
        if let Some(reason) = lost {
            self.fail("sender", reason);
            self.finish();
        }
    }

    fn receiver_events(&mut self, sim: &Sim) {
        let Some((_, conn)) = &mut self.receiver.conn else {
            return;
        };
        let mut lost = None;
        let mut delivered = 0;
        while let Some(event) = conn.poll() {
            match event {
                Event::Connected => self.report.connected = Some(sim.now),
                Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                    while let Some(id) = conn.streams().accept(Dir::Uni) {
                        delivered += read_all(conn, id);
                    }
                }
                Event::Stream(StreamEvent::Readable { id }) => delivered += read_all(conn, id),
                Event::ConnectionLost { reason } => lost = Some(reason),
                _ => {}
            }
        }
        self.report.delivered += delivered;
        let done = self.report.connected.is_some() && self.report.delivered >= self.bytes;
        if delivered > 0 {
            self.record_progress(sim.now, done);
        }
        if let Some(reason) = lost {
            self.fail("receiver", reason);
            self.finish();
        } else if done {
            self.report.finished = Some(sim.now);
            self.finish();
        }
    }
}

/// Reads everything stream `id` holds, in order, and returns how many bytes that was.
fn read_all(conn: &mut Connection, id: StreamId) -> u64 {
    let mut stream = conn.recv_stream(id);
    let Ok(mut chunks) = stream.read(true) else {
        return 0;
    };
    let mut read = 0;
    while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
        read += chunk.bytes.len() as u64;
    }
    // Whether to send flow-control credit now; the host polls for transmits after reading
    // anyway, so the hint is not needed.
    let _ = chunks.finalize();
    read
}

/// State shared by all flows: the clock, both wires and scratch space.
struct Sim {
    /// The virtual clock's origin; `clock + now` is what quinn sees.
    clock: Instant,
    now: Duration,
    granularity: Duration,
    forward: Wire,
    back: Wire,
    buf: Vec<u8>,
    /// Zeros the writers hand to quinn: a `Bytes` slice is a reference count, not a copy.
    chunk: Bytes,
}

impl Sim {
    /// Delivers every datagram due at `now` and runs every host with something to do.
    fn step(&mut self, flows: &mut [FlowRun]) {
        while let Some(d) = self.forward.pop_due(self.now) {
            let flow = d.flow;
            flows[flow].deliver(self, d, false);
        }
        while let Some(d) = self.back.pop_due(self.now) {
            let flow = d.flow;
            flows[flow].deliver(self, d, true);
        }
        for flow in flows.iter_mut() {
            flow.drive(self);
        }
    }

    /// The earliest time anything can happen next.
    fn next_event(&self, flows: &[FlowRun]) -> Option<Duration> {
        let timers = flows.iter().flat_map(|f| {
            let waiting = (f.phase == Phase::Waiting).then_some(f.report.start);
            let timers = [f.sender.timeout, f.receiver.timeout].into_iter().flatten();
            waiting.into_iter().chain(timers)
        });
        timers
            .chain(self.forward.next_arrival())
            .chain(self.back.next_arrival())
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn wire(link: Link) -> Wire {
        Wire::new(link, 1500, 7)
    }

    #[test]
    fn serialization_and_delay() {
        // 1,000 + 42 bytes at 8.336 Mbit/s take exactly 1 ms to serialize.
        let mut w = wire(Link::new(8_336_000, 10 * MS));
        w.send(Duration::ZERO, 0, None, &[0; 1000]);
        w.send(Duration::ZERO, 0, None, &[0; 1000]);
        let arrivals: Vec<_> = w.in_flight.iter().map(|d| d.arrival).collect();
        assert_eq!(arrivals, [11 * MS, 12 * MS]);
        assert_eq!(w.report().max_queue_delay, MS);
    }

    #[test]
    fn drop_tail_queue_holds_its_drain_time() {
        // A 5 ms queue at 1 ms per datagram: the first datagram goes straight to the wire, the
        // next five wait (backlog + own time ≤ 5 ms is 4 more), the rest are dropped.
        let link = Link {
            queue: 5 * MS,
            ..Link::new(8_336_000, MS)
        };
        let mut w = wire(link);
        for _ in 0..10 {
            w.send(Duration::ZERO, 0, None, &[0; 1000]);
        }
        assert_eq!(w.in_flight.len(), 5);
        assert_eq!(w.report().queue_drops, 5);
        // Once drained, the queue takes datagrams again.
        w.send(5 * MS, 0, None, &[0; 1000]);
        assert_eq!(w.in_flight.len(), 6);
    }

    #[test]
    fn jitter_spreads_delays_and_reorders_only_when_asked() {
        let arrivals = |reorder| {
            let link = Link {
                jitter: 5 * MS,
                reorder,
                ..Link::new(0, 50 * MS)
            };
            let mut w = wire(link);
            for i in 0..1000u64 {
                w.send(Duration::from_micros(100 * i), 0, None, &i.to_le_bytes());
            }
            // (index, arrival, delay) in arrival order.
            w.in_flight
                .iter()
                .map(|d| {
                    let i = u64::from_le_bytes(d.data[..8].try_into().unwrap());
                    (i, d.arrival, d.arrival - Duration::from_micros(100 * i))
                })
                .collect::<Vec<_>>()
        };
        let fifo = arrivals(false);
        assert!(
            fifo.windows(2).all(|p| p[0].0 < p[1].0 && p[0].1 <= p[1].1),
            "in order"
        );
        // Datagrams 0.1 ms apart behind a ±5 ms jitter: each waits for the slowest before it,
        // so almost all take more than the mean delay plus two thirds of the jitter.
        let late = fifo.iter().filter(|d| d.2 >= 52 * MS).count();
        assert!(late > 950, "{late} of 1000 near the longest delay");
        let mixed = arrivals(true);
        assert!(
            mixed.windows(2).all(|p| p[0].1 <= p[1].1),
            "kept in arrival order"
        );
        assert!(mixed.windows(2).any(|p| p[0].0 > p[1].0), "some overtaken");
        assert!(mixed.iter().all(|d| d.2 >= 45 * MS && d.2 <= 55 * MS));
        let short = mixed.iter().filter(|d| d.2 < 47 * MS).count();
        assert!((150..=450).contains(&short), "{short} of 1000 under 47 ms");
    }

    #[test]
    fn oversize_datagrams_are_dropped() {
        let mut w = wire(Link::new(0, MS));
        w.send(Duration::ZERO, 0, None, &[0; 1501]);
        w.send(Duration::ZERO, 0, None, &[0; 1500]);
        assert_eq!(w.in_flight.len(), 1);
        assert_eq!(w.report().oversize_drops, 1);
    }

    #[test]
    fn gilbert_elliott_keeps_the_long_run_loss() {
        let link = Link {
            loss: 0.05,
            loss_burst: Some(4.0),
            ..Link::new(0, MS)
        };
        let mut w = wire(link);
        let lost: Vec<bool> = (0..400_000).map(|_| w.lose()).collect();
        let n = lost.iter().filter(|&&l| l).count();
        let bursts = lost.windows(2).filter(|p| p[1] && !p[0]).count();
        let rate = n as f64 / lost.len() as f64;
        let mean_burst = n as f64 / bursts as f64;
        assert!((rate - 0.05).abs() < 0.005, "loss {rate}");
        assert!((mean_burst - 4.0).abs() < 0.3, "burst {mean_burst}");
    }

    #[test]
    fn progress_points_stay_exact_and_spaced() {
        let r = FlowReport {
            progress: vec![(Duration::ZERO, 0), (10 * MS, 100), (25 * MS, 300)],
            ..FlowReport::default()
        };
        assert_eq!(r.delivered_at(9 * MS), 0);
        assert_eq!(r.delivered_at(10 * MS), 100);
        assert_eq!(r.delivered_at(30 * MS), 300);
        assert_eq!(r.goodput_bps(10 * MS, 25 * MS), 200.0 * 8.0 / 0.015);
    }
}
