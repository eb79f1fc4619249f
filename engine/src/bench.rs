//! `sluice bench`: iperf3 for Sluice's data path. A generated source is cut into blocks through
//! the buffer ring and hashed (BLAKE3 chaining values, as a file's blocks are); the blocks go out
//! on the transport's lanes, which grow with the path as a transfer's do; the receiving end reads
//! each into its own ring, verifies its hash on a separate thread, and hands it to a discarding
//! sink. By default no disk is touched: what it measures is the network path plus the CPU the
//! pipeline costs. [`Ends`] puts a file at either end instead (`--from`, `--to`).
//!
//! Both ends run in one process by default ([`run_local`]); [`BenchServer`] and [`send`] are the
//! two ends on two hosts (`sluice bench --serve`, `sluice bench TICKET`).
//!
//! The exchange on the control channel: `Hello` (the ticket's secret and the block size) →
//! `Welcome`; blocks on the lanes (file id 0, a unit of unknown length: no block is the root),
//! while the server says every [`REPORT_EVERY`] how many bytes it has verified
//! (`Working{id: 0, done}`) and what has arrived (`Working{id: 1, done}`: those and the bytes
//! of the blocks its lanes are reading); `FileDone{sent}` with the bytes sent, then `Finish` →
//! `Summary{bytes}` once the server has verified that many.
//!
//! Both ends count in their [`Progress`] the bytes verified at the receiving end, and what has
//! arrived there (`bytes_arrived`, which the per-interval figures count: a verified block comes
//! whole, once in 1.7 s on a 5 Mbit/s path, and lines of whole blocks read 8.3 Mbit/s there),
//! the sender as the server reports them: what crossed, as iperf3's receiver-side figures
//! count it. The bytes the sender hands to the network (`bytes_sent`) run ahead of that by what the transport and
//! the server's ring buffer, a window's worth: on a 200 Mbit/s, 100 ms link a second's count of
//! them read above the link's rate, and dropped near zero while the window drained.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_proto::codec::encode_block_header;
use sluice_proto::message::{BlockHeader, Message};
use sluice_proto::ticket::Ticket;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::control::Control;
use crate::endpoint::OneSender;
use crate::error::{Error, Result};
use crate::lanes::{read_header, receiving_ring, Block, Lanes};
use crate::merkle;
use crate::progress::{Event, PathStats, Progress};
use crate::ring::{Buffer, BufferPool};
use crate::transport::{self, Kind, LaneRx, Link};
use crate::unit::session::ENDLESS;
use crate::unit::{BlockSink, BlockSource, Discard, FileSink, FileSource, Generated};

/// How often the receiving end tells the sender the bytes it has verified (and samples its
/// path's figures): often enough that an interval of 0.1 s (`--interval`'s least) sees a few
/// reports, and a message of 13 bytes 20 times a second costs nothing.
pub const REPORT_EVERY: Duration = Duration::from_millis(50);

/// The `Working` ids of a benchmark's serving end: bytes verified, and what has arrived (those
/// and the bytes of the blocks its lanes are reading).
const VERIFIED: u32 = 0;
const ARRIVED: u32 = 1;

/// How much to send.
#[derive(Debug, Clone, Copy)]
pub enum Amount {
    /// This many bytes.
    Bytes(u64),
    /// For this long.
    Time(Duration),
}

/// What one end measured.
#[derive(Debug, Clone)]
pub struct BenchSummary {
    /// Payload bytes the receiving end verified.
    pub bytes: u64,
    /// From the first block handed to the network to the receiver's summary.
    pub elapsed: Duration,
    /// The transport the link ran on.
    pub transport: Kind,
    /// The path as this end's transport measured it at the end.
    pub path: PathStats,
}

impl BenchSummary {
    /// `bytes` verified since `started`, with `link`'s transport and path figures now.
    fn of(bytes: u64, started: Instant, link: &dyn Link) -> Self {
        Self {
            bytes,
            elapsed: started.elapsed(),
            transport: link.kind(),
            path: link.path(),
        }
    }

    /// Payload bytes per second.
    pub fn rate(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Where the blocks come from and go: generated and discarded unless a file is named.
#[derive(Debug, Clone, Default)]
pub struct Ends {
    /// Read the blocks from this file (through the page cache; from its start again at its end).
    pub from: Option<PathBuf>,
    /// Write the verified blocks into this file (created or truncated; synced at the end).
    pub to: Option<PathBuf>,
}

/// Runs both ends in this process over loopback.
pub fn run_local(
    config: &Config,
    amount: Amount,
    ends: &Ends,
    progress: Arc<Progress>,
) -> Result<BenchSummary> {
    let to = ends.to.clone();
    crate::endpoint::pair(
        config,
        "sluice-bench-recv",
        |server, stop| BenchServer { server, to }.run_until(Arc::new(Progress::default()), stop),
        |ticket| send(config, amount, ends.from.as_deref(), ticket, progress),
    )
}

/// The receiving end: one sender's blocks, verified and discarded (or written to a file).
#[derive(Debug)]
pub struct BenchServer {
    server: OneSender,
    to: Option<PathBuf>,
}

impl BenchServer {
    /// Listens as a receiver does (see [`crate::transport::Listener::bind`]).
    pub fn bind(listen: SocketAddr, advertise: Option<SocketAddr>, config: Config) -> Result<Self> {
        OneSender::bind(listen, advertise, config).map(|server| Self { server, to: None })
    }

    /// Writes the verified blocks into the file at `to` instead of discarding them.
    pub fn write_to(self, to: Option<PathBuf>) -> Self {
        Self { to, ..self }
    }

    /// The ticket for the sending end.
    pub fn ticket(&self) -> &Ticket {
        self.server.ticket()
    }

    /// Serves one sender; `progress` counts the verified bytes.
    pub fn run(self, progress: Arc<Progress>) -> Result<BenchSummary> {
        self.run_until(progress, Arc::new(tokio::sync::Notify::new()))
    }

    /// Serves the next sender and stays ready for the one after, with the same ticket (`sluice
    /// bench --serve --keep-serving`, as `iperf3 -s` keeps serving); others who come meanwhile
    /// are turned away as busy. `progress` counts this run's verified bytes.
    pub fn run_next(&mut self, progress: Arc<Progress>) -> Result<BenchSummary> {
        self.run_one(true, progress, Arc::new(tokio::sync::Notify::new()))
    }

    fn run_until(
        mut self,
        progress: Arc<Progress>,
        stop: Arc<tokio::sync::Notify>,
    ) -> Result<BenchSummary> {
        self.run_one(false, progress, stop)
    }

    fn run_one(
        &mut self,
        keep: bool,
        progress: Arc<Progress>,
        stop: Arc<tokio::sync::Notify>,
    ) -> Result<BenchSummary> {
        let to = self.to.clone();
        let ended = progress.clone();
        let (bytes, link, started) = self.server.serve(
            keep,
            stop,
            sluice_proto::message::HELLO_BENCH,
            "nothing was kept",
            |config, secret, link, control| async move {
                serve(&config, secret, &link, control, &progress, to.as_deref()).await
            },
        )?;
        ended.end_run();
        Ok(BenchSummary::of(bytes, started, &*link))
    }
}

/// A block read from a lane, for the verifying thread.
struct Arrived {
    offset: u64,
    hash: sluice_proto::message::Digest,
    len: usize,
    buf: Buffer,
}

async fn serve(
    config: &Config,
    secret: [u8; 32],
    link: &Arc<dyn Link>,
    mut control: Control,
    progress: &Arc<Progress>,
    to: Option<&Path>,
) -> Result<u64> {
    let peer = link.peer();
    let err = transport::conn_error(peer);
    progress.push(Event::Connected {
        peer: peer.to_string(),
    });
    let block_size = crate::unit::session::welcome(&mut control, secret, peer).await?;
    let (pool, allowed) = receiving_ring(config, block_size)?;
    link.allow_lanes(allowed);
    let mut sink: Box<dyn BlockSink> = match to {
        Some(path) => Box::new(FileSink::create(path).map_err(Error::file("creating", path))?),
        None => Box::new(Discard::default()),
    };

    let (jobs, arrived) = std_mpsc::channel::<Arrived>();
    let verifier = {
        let progress = progress.clone();
        std::thread::Builder::new()
            .name("sluice-bench-verify".into())
            .spawn(move || verify(arrived, &mut *sink, &progress))
            .map_err(Error::io("starting the verifying thread"))?
    };
    let mut lanes = tokio::task::JoinSet::new();
    let mut announced: Option<u64> = None;
    let mut finished = false;
    let mut report = tokio::time::interval(REPORT_EVERY);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = 0;
    // Bytes of the blocks the lanes are reading, as they come: with the bytes verified, what
    // has arrived (not the blocks read whole and waiting to be verified: where the verifier
    // is the bottleneck, those ran a ring's worth ahead). The sender told of it up to `told`.
    let partial = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut told = 0;
    let result: Result<()> = loop {
        if finished
            && lanes.is_empty()
            && announced.is_some_and(|n| progress.snapshot().bytes_verified >= n)
        {
            break Ok(());
        }
        // The verifier stops early only on a failure (a block that does not match its hash, a
        // sink that cannot write): its error is the run's.
        if verifier.is_finished() {
            break Ok(());
        }
        tokio::select! {
            lane = link.accept_lane() => match lane {
                Some(lane) => {
                    lanes.spawn(read_lane(lane, pool.clone(), jobs.clone(), block_size, peer, partial.clone()));
                }
                None => break Err(err(&"the link ended before the sender finished")),
            },
            msg = control.recv() => match msg? {
                Some(Message::FileDone { sent, .. }) => announced = Some(sent),
                Some(Message::Finish) => finished = true,
                Some(Message::Error { message, .. }) => break Err(err(&format!("sender aborted: {message}"))),
                Some(other) => break Err(err(&format!("unexpected message {other:?}"))),
                None => break Err(err(&"the sender closed the control channel before finishing")),
            },
            Some(done) = lanes.join_next() => match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => break Err(e),
                Err(e) => break Err(err(&e)),
            },
            // Re-check the end condition as the verifier catches up, and whether it failed.
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = report.tick() => {
                progress.set_path(link.path());
                let verified = progress.snapshot().bytes_verified;
                let now = verified + partial.load(Ordering::Relaxed);
                progress.set_arrived(now);
                if now > told {
                    told = now;
                    control.send(&Message::Working { id: ARRIVED, done: now }).await?;
                }
                if verified != reported {
                    reported = verified;
                    control.send(&Message::Working { id: VERIFIED, done: verified }).await?;
                }
            }
        }
    };
    lanes.shutdown().await;
    drop(jobs);
    let verified = verifier
        .join()
        .map_err(|_| err(&"the verifying thread panicked"))?;
    result?;
    let bytes = verified?;
    control
        .send(&Message::Summary {
            entries: 0,
            bytes,
            deleted: 0,
        })
        .await?;
    control.finish();
    Ok(bytes)
}

/// Reads blocks from one lane until it ends.
async fn read_lane(
    mut lane: LaneRx,
    pool: Arc<BufferPool>,
    jobs: std_mpsc::Sender<Arrived>,
    block_size: u32,
    peer: SocketAddr,
    partial: Arc<std::sync::atomic::AtomicU64>,
) -> Result<()> {
    let err = transport::conn_error(peer);
    while let Some(header) = read_header(&mut lane, peer).await? {
        if header.file != 0
            || header.packed != 0
            || header.patch
            || header.len > block_size
            || header.len == 0
        {
            return Err(err(&format!(
                "block header out of bounds: file {}, {} bytes at {}",
                header.file, header.len, header.offset
            )));
        }
        let len = header.len as usize;
        let mut buf = pool.take().await;
        // Read as it comes, each piece counted until the block is whole.
        let mut filled = 0;
        while filled < len {
            let n = lane
                .read(&mut buf.as_mut_slice()[filled..len])
                .await
                .map_err(|e| err(&e))?;
            if n == 0 {
                return Err(err(&std::io::Error::from(
                    std::io::ErrorKind::UnexpectedEof,
                )));
            }
            filled += n;
            partial.fetch_add(n as u64, Ordering::Relaxed);
        }
        partial.fetch_sub(len as u64, Ordering::Relaxed);
        let arrived = Arrived {
            offset: header.offset,
            hash: header.hash,
            len,
            buf,
        };
        if jobs.send(arrived).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Verifies every arriving block against its hash and puts it in `sink`; returns the bytes
/// verified, or the first block that failed.
fn verify(
    arrived: std_mpsc::Receiver<Arrived>,
    sink: &mut dyn BlockSink,
    progress: &Progress,
) -> Result<u64> {
    let mut bytes = 0;
    let slow = crate::fault::slow_sink();
    for a in arrived {
        if let Some(pause) = slow {
            std::thread::sleep(pause);
        }
        let data = &a.buf.as_slice()[..a.len];
        if merkle::block_cv(data, a.offset, ENDLESS) != a.hash {
            return Err(Error::Verify {
                path: "bench".into(),
                detail: format!("the block at {} does not match its hash", a.offset),
            });
        }
        sink.put(a.offset, data)
            .map_err(Error::io("writing a verified block"))?;
        bytes += a.len as u64;
        progress.add_verified(a.len as u64);
    }
    sink.commit().map_err(Error::io("committing"))?;
    Ok(bytes)
}

/// The sending end: generates, hashes and sends `amount` to the server named by `ticket`.
/// `progress` counts the bytes handed to the network and carries the path's figures.
pub fn send(
    config: &Config,
    amount: Amount,
    from: Option<&Path>,
    ticket: &Ticket,
    progress: Arc<Progress>,
) -> Result<BenchSummary> {
    // Opened before connecting: a wrong path is said before anything crosses.
    let source: Box<dyn BlockSource> = match from {
        Some(path) => Box::new(FileSource::open(path).map_err(Error::file("reading", path))?),
        None => Box::new(Generated::new(0x51_1ce)),
    };
    let rt = transport::runtime()?;
    let ended = progress.clone();
    rt.block_on(async {
        let ((bytes, started), link) = crate::endpoint::dial(
            config,
            ticket,
            "run the same command again",
            |link| async move {
                let started = Instant::now();
                progress.push(Event::Connected {
                    peer: link.peer().to_string(),
                });
                let bytes = push(config, amount, source, ticket, &link, &progress).await?;
                progress.end_run();
                Ok((bytes, started))
            },
        )
        .await?;
        ended.end_run();
        Ok(BenchSummary::of(bytes, started, &*link))
    })
}

async fn push(
    config: &Config,
    amount: Amount,
    source: Box<dyn BlockSource>,
    ticket: &Ticket,
    link: &Arc<dyn Link>,
    progress: &Arc<Progress>,
) -> Result<u64> {
    let peer = link.peer();
    let err = transport::conn_error(peer);
    let mut control = crate::unit::session::greet(
        link,
        ticket.secret,
        config.block_size,
        sluice_proto::message::HELLO_BENCH,
    )
    .await?;
    let (ring_first, ring_ceiling) = config.sending_ring();
    let pool = BufferPool::growable(ring_first, ring_ceiling, config.block_size as usize)
        .map_err(Error::io("allocating the buffer ring"))?;
    let mut ring = crate::lanes::RingGrowth::new(pool.clone(), config.block_size, &**link);
    let (block_tx, block_rx) = mpsc::channel::<Block>(config.ring_buffers);
    let queue = block_tx.downgrade();
    let stop = Arc::new(AtomicBool::new(false));
    let generator = {
        let (pool, stop) = (pool.clone(), stop.clone());
        let block = config.block_size as usize;
        std::thread::Builder::new()
            .name("sluice-bench-gen".into())
            .spawn(move || generate(amount, source, block, &pool, &block_tx, &stop))
            .map_err(Error::io("starting the generating thread"))?
    };
    let lanes = Lanes {
        link: link.clone(),
        blocks: Arc::new(tokio::sync::Mutex::new(block_rx)),
        progress: progress.clone(),
        stream_window: config.transport_to(Some(peer.ip())).stream_window,
        queue,
        pace: crate::lanes::Pace::new(config.max_rate),
        until: match amount {
            Amount::Time(t) => Some(tokio::time::Instant::now() + t),
            Amount::Bytes(_) => None,
        },
        carried: Default::default(),
        taken: Default::default(),
        in_flight: Default::default(),
    };
    let mut streams = tokio::task::JoinSet::new();
    let first = config.streams.max(1);
    let mut open = 0;
    lanes.grow(&mut open, first, first, &mut streams);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The bytes the server has said it verified, counted into `progress` as they are heard of.
    let mut verified = 0;
    let mut heard = |done: u64| {
        progress.add_verified(done.saturating_sub(verified));
        verified = verified.max(done);
    };
    let sent = loop {
        tokio::select! {
            _ = tick.tick() => {
                let path = link.path();
                progress.set_path(path);
                ring.tick(progress.snapshot().bytes_sent, path.rtt, open);
                if let Amount::Time(t) = amount {
                    if started.elapsed() >= t {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                lanes.grow(&mut open, first, config.max_streams.max(first), &mut streams);
            }
            done = streams.join_next() => match done {
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                Some(Err(e)) => return Err(err(&e)),
                // Every lane has sent its last block: the generator is done.
                None => break progress.snapshot().bytes_sent,
            },
            msg = control.recv() => match msg? {
                Some(Message::Working { id: VERIFIED, done }) => heard(done),
                Some(Message::Working { id: ARRIVED, done }) => progress.set_arrived(done),
                Some(Message::Error { message, .. }) => return Err(err(&format!("the receiving end failed: {message}"))),
                other => return Err(err(&format!("unexpected {other:?} while sending"))),
            },
        }
    };
    // What is still queued will not be sent (the time is up): a generator waiting to queue
    // more, or for a buffer, is let go.
    {
        let mut rx = lanes.blocks.lock().await;
        rx.close();
        while rx.try_recv().is_ok() {}
    }
    // Joined off this thread: a generator waiting for a buffer gets it back only as this
    // runtime takes the peer's ACKs (a blocking join here hung the run for good).
    match tokio::task::spawn_blocking(move || generator.join()).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(Error::io("reading the benchmark's source")(e)),
        Ok(Err(_)) | Err(_) => return Err(err(&"the generating thread panicked")),
    }
    control
        .send(&Message::FileDone {
            id: 0,
            root: [0; 32],
            sent,
        })
        .await?;
    control.send(&Message::Finish).await?;
    loop {
        match control.recv().await? {
            Some(Message::Working { id: VERIFIED, done }) => heard(done),
            Some(Message::Working { id: ARRIVED, done }) => progress.set_arrived(done),
            Some(Message::Summary { bytes, .. }) => {
                heard(bytes);
                return Ok(bytes);
            }
            Some(Message::Error { message, .. }) => {
                return Err(err(&format!("the receiving end failed: {message}")))
            }
            other => return Err(err(&format!("expected Summary, got {other:?}"))),
        }
    }
}

/// The generating thread: fills ring buffers from the source, hashes them, queues them for the
/// lanes; ends at the amount, at `stop`, or when the lanes are gone.
fn generate(
    amount: Amount,
    mut source: Box<dyn BlockSource>,
    block: usize,
    pool: &Arc<BufferPool>,
    blocks: &mpsc::Sender<Block>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let limit = match amount {
        Amount::Bytes(n) => n,
        Amount::Time(_) => u64::MAX,
    };
    let mut offset = 0u64;
    while offset < limit && !stop.load(Ordering::Relaxed) {
        let len = (limit - offset).min(block as u64) as usize;
        let mut buf = pool.take_blocking();
        source.fill(offset, &mut buf.as_mut_slice()[..len])?;
        let hash = merkle::block_cv(&buf.as_slice()[..len], offset, ENDLESS);
        let header = encode_block_header(&BlockHeader {
            file: 0,
            offset,
            len: len as u32,
            packed: 0,
            zero: false,
            moved: false,
            early: false,
            spliced: false,
            hash,
            patch: false,
        });
        let b = Block {
            header: bytes::Bytes::copy_from_slice(&header),
            payload: buf.freeze(len),
            carries: len as u64,
        };
        if blocks.blocking_send(b).is_err() {
            return Ok(());
        }
        offset += len as u64;
    }
    Ok(())
}
