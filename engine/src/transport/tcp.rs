//! The TCP transport: TLS 1.3 over TCP, one connection for the control channel and one per data
//! lane, so a lost segment stalls one lane, not all of them (several TCP connections are also
//! how GridFTP and WDT fill a long link).
//!
//! Inside TLS every connection starts with the sender's preamble:
//!
//! ```text
//! MAGIC (8 bytes) | role (1: 0 control, 1 lane) | session (16, lanes only)
//! ```
//!
//! answered by the receiver with one status byte ([`OK`], [`UNKNOWN_SESSION`], [`NO_MORE_LANES`])
//! and, on the control connection, the 16-byte session id that the link's lanes present. Only the
//! holder of the control connection learns it, so nobody else can attach a lane; the sender
//! still proves the ticket's secret in its Hello, as over QUIC.
//!
//! The control connection then carries frames, `kind (1) | length (4, big-endian) | bytes`:
//! [`DATA`], [`FINISH`] (this side's half is done) and [`CLOSE`] (`code (4) | reason`), which
//! gives TCP what QUIC's CONNECTION_CLOSE gives: the peer learns why. A lane carries raw bytes
//! and ends with TLS close_notify; a cut lane is an error, never an end.
//!
//! A silent peer: each side sends [`PING`] every [`KEEP_ALIVE`] and declares the link timed out
//! when its control connection brings nothing for the idle timeout (a stopped process's kernel
//! still acknowledges TCP, so only the application can tell). Every socket also has
//! `TCP_USER_TIMEOUT` set to the longer of the idle and stall timeouts, so data that the peer's
//! host stops acknowledging fails the link as well, but not sooner than those: after an outage
//! of 15–20 s one lane of eight could stay in the kernel's retransmission back-off for another
//! half minute while the others ran, and a user timeout of the idle timeout (30 s) then ended a
//! transfer that the link carried again. Each socket also caps the kernel's retransmission
//! back-off ([`RTO_MAX`]), so a lane stuck in it tries again within seconds of the link's return.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_proto::ticket::Ticket;
use sluice_quic::tls::{self, Identity};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsStream;

use super::{
    conn_error, ControlChannel, ControlRx, Ended, Fut, Kind, LaneRx, LaneTx, Link, HELLO_DEADLINE,
};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::progress::PathStats;

type Tls = TlsStream<TcpStream>;

const MAGIC: &[u8; 8] = b"SLUICEt1";
const ROLE_CONTROL: u8 = 0;
const ROLE_LANE: u8 = 1;
/// Status: accepted.
pub const OK: u8 = 0;
/// Status: no control connection holds the lane's session id.
pub const UNKNOWN_SESSION: u8 = 1;
/// Status: the receiver allows no more lanes now.
pub const NO_MORE_LANES: u8 = 2;
/// Frame kind: control-channel bytes.
pub const DATA: u8 = 0;
/// Frame kind: the sender of this frame has finished its half of the control channel.
pub const FINISH: u8 = 1;
/// Frame kind: the link is closed, with a code and a reason.
pub const CLOSE: u8 = 2;
/// Frame kind: nothing but a sign of life, sent every [`KEEP_ALIVE`].
pub const PING: u8 = 3;
/// How often each side sends [`PING`] on the control connection. The kernel keeps answering
/// TCP for a peer process that is stopped or wedged, so only the application can see that it
/// went silent: a side that reads nothing for the idle timeout declares the link timed out,
/// as QUIC's idle timeout does.
pub const KEEP_ALIVE: Duration = Duration::from_millis(250);
/// The largest control frame: writes are cut to this, and a longer frame is refused.
const MAX_FRAME: usize = 1 << 20;

/// What both halves of a link share.
#[derive(Debug)]
struct Shared {
    peer: SocketAddr,
    ended: Mutex<Option<Ended>>,
    ended_tx: watch::Sender<bool>,
    /// A duplicate of every socket of the link: figures for [`Link::path`], and a way to stop
    /// every lane at once when the link ends.
    sockets: Mutex<Vec<OwnedFd>>,
    /// The control connection's sending half, shared by the control channel and
    /// [`Link::close`].
    control_tx: tokio::sync::Mutex<WriteHalf<Tls>>,
}

impl Shared {
    /// Records how the link ended (the first cause wins) and stops every lane.
    fn end(&self, how: Ended) {
        {
            let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
            if ended.is_some() {
                return;
            }
            tracing::debug!(?how, "TCP link ended");
            *ended = Some(how);
        }
        let sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        // The control connection (the first) keeps its receiving side: the peer's CLOSE frame
        // may still be on its way.
        for (i, fd) in sockets.iter().enumerate() {
            let how = if i == 0 {
                rustix::net::Shutdown::Write
            } else {
                rustix::net::Shutdown::Both
            };
            let _ = rustix::net::shutdown(fd, how);
        }
        self.ended_tx.send_replace(true);
    }

    fn ended(&self) -> Option<Ended> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn register(&self, socket: OwnedFd) {
        self.sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(socket);
    }
}

/// The sender's way to open lanes.
struct Opener {
    connector: tokio_rustls::TlsConnector,
    session: [u8; 16],
    tuning: Tuning,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("tuning", &self.tuning)
            .finish_non_exhaustive()
    }
}

/// The receiver's end of the lanes.
#[derive(Debug)]
struct Lanes {
    incoming: tokio::sync::Mutex<mpsc::Receiver<LaneRx>>,
    allowed: Arc<AtomicUsize>,
}

/// TLS over TCP as a [`Link`].
#[derive(Debug)]
pub struct TcpLink {
    shared: Arc<Shared>,
    control: Mutex<Option<ControlChannel>>,
    opener: Option<Opener>,
    lanes: Option<Lanes>,
}

/// Socket options every connection of a link gets.
#[derive(Debug, Clone, Copy)]
struct Tuning {
    idle_timeout: Duration,
    /// `TCP_USER_TIMEOUT`: the longer of the idle and stall timeouts.
    user_timeout: Duration,
    /// Ask the kernel for BBR (best effort: it may not offer it to this user).
    bbr: bool,
}

impl Tuning {
    fn new(config: &Config, peer: SocketAddr) -> Self {
        let loopback = peer.ip().to_canonical().is_loopback();
        let cubic = config.congestion == Some(crate::config::Congestion::Cubic);
        Self {
            idle_timeout: config.idle_timeout,
            user_timeout: config.idle_timeout.max(config.stall_timeout),
            bbr: !loopback && !cubic,
        }
    }

    fn apply(&self, stream: &TcpStream) {
        let _ = stream.set_nodelay(true);
        let sock = socket2::SockRef::from(stream);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(1))
            .with_interval(Duration::from_secs(1));
        let _ = sock.set_tcp_keepalive(&keepalive);
        let ms = u32::try_from(self.user_timeout.as_millis()).unwrap_or(u32::MAX);
        let _ = rustix::net::sockopt::set_tcp_user_timeout(stream, ms);
        set_rto_max(stream, RTO_MAX);
        if self.bbr {
            if let Err(e) = rustix::net::sockopt::set_tcp_congestion(stream, "bbr") {
                tracing::debug!(%e, "no TCP BBR; the kernel's default congestion control runs");
            }
        }
    }
}

/// The longest the kernel may wait before it sends unacknowledged data again. It doubles that
/// wait each time nothing comes back, up to 120 s by default: after an outage of 15–20 s one
/// lane of eight was still waiting for its next try half a minute after the link came back,
/// and the transfer with it, while the other lanes had long finished (wan-emu, 200 Mbit/s,
/// 100 ms). Capped, every lane tries again within this of the link's return. Above the
/// retransmission timeout of any path Sluice is for (about the round trip plus four times its
/// spread: 2.2 s on a 2 s path), so that a slow path is not sent everything twice.
const RTO_MAX: Duration = Duration::from_secs(4);

/// Sets `TCP_RTO_MAX_MS` (Linux 6.15 and later; an older kernel refuses it and keeps 120 s).
fn set_rto_max(stream: &TcpStream, max: Duration) {
    /// From `linux/tcp.h`; not in the libc crate yet.
    const TCP_RTO_MAX_MS: libc::c_int = 44;
    let ms = libc::c_int::try_from(max.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: an int option read by the kernel from a pointer to a live int of that size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            TCP_RTO_MAX_MS,
            (&ms as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(
            "no cap on TCP's retransmission back-off ({}): an outage's stuck lane may wait up to 120 s",
            std::io::Error::last_os_error()
        );
    }
}

/// The kernel's figures for one TCP socket (neither rustix nor socket2 reads `TCP_INFO`).
fn tcp_info(fd: RawFd) -> Option<libc::tcp_info> {
    // SAFETY: tcp_info is plain data; zero is a valid value of every field.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info)
}

fn io_other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Connects a TCP socket to `addr` and completes TLS, within the idle timeout.
async fn dial(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    tuning: &Tuning,
) -> std::io::Result<(Tls, OwnedFd)> {
    let deadline = tuning.idle_timeout;
    let stream = tokio::time::timeout(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no TCP answer in {} s", deadline.as_secs()),
            )
        })??;
    tuning.apply(&stream);
    let dup = stream_dup(&stream)?;
    let name = rustls::pki_types::ServerName::try_from(tls::SERVER_NAME).map_err(io_other)?;
    let tls = tokio::time::timeout(deadline, connector.connect(name, stream))
        .await
        .map_err(|_| io_other("TLS handshake timed out"))??;
    Ok((TlsStream::Client(tls), dup))
}

/// A second descriptor of `stream`'s socket, for figures and shutdown once TLS owns the stream.
fn stream_dup(stream: &TcpStream) -> std::io::Result<OwnedFd> {
    stream.as_fd().try_clone_to_owned()
}

/// Connects to the receiver named by `ticket`.
pub async fn connect(config: &Config, ticket: &Ticket) -> Result<Arc<dyn Link>> {
    let peer = ticket.addr;
    let err = conn_error(peer);
    let tuning = Tuning::new(config, peer);
    let connector = tokio_rustls::TlsConnector::from(tls::tcp_client_config(ticket.fingerprint)?);
    let (mut tls, raw) = dial(peer, &connector, &tuning).await.map_err(|e| {
        // rustls refused the handshake (the pinned certificate did not match): a refusal,
        // not an unreachable peer.
        if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
            Error::Tls(tls::TlsError::Handshake(e.to_string()))
        } else if e.kind() == std::io::ErrorKind::ConnectionRefused {
            err(&format!(
                "nothing listens there over TCP ({e}): is the receiving sluice still running, \
                 and is this its latest ticket?"
            ))
        } else {
            err(&e)
        }
    })?;
    let mut preamble = MAGIC.to_vec();
    preamble.push(ROLE_CONTROL);
    let mut answer = [0u8; 17];
    let exchange = async {
        tls.write_all(&preamble).await?;
        tls.flush().await?;
        tls.read_exact(&mut answer).await
    };
    tokio::time::timeout(HELLO_DEADLINE, exchange)
        .await
        .map_err(|_| err(&"the receiver did not answer over TCP"))?
        .map_err(|e| err(&e))?;
    if answer[0] != OK {
        return Err(err(&format!(
            "the receiver refused the connection ({})",
            answer[0]
        )));
    }
    let mut session = [0u8; 16];
    session.copy_from_slice(&answer[1..]);
    tracing::debug!("connected over TCP");
    let opener = Opener {
        connector,
        session,
        tuning,
    };
    let idle = opener.tuning.idle_timeout;
    Ok(Arc::new(TcpLink::new(
        peer,
        tls,
        raw,
        idle,
        Some(opener),
        None,
    )))
}

impl TcpLink {
    fn new(
        peer: SocketAddr,
        tls: Tls,
        raw: OwnedFd,
        idle_timeout: Duration,
        opener: Option<Opener>,
        lanes: Option<Lanes>,
    ) -> Self {
        let (read, write) = tokio::io::split(tls);
        let (ended_tx, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            peer,
            ended: Mutex::new(None),
            ended_tx,
            sockets: Mutex::new(Vec::new()),
            control_tx: tokio::sync::Mutex::new(write),
        });
        shared.register(raw);
        let (chunks_tx, chunks_rx) = mpsc::channel(16);
        tokio::spawn(read_control(read, chunks_tx, shared.clone(), idle_timeout));
        tokio::spawn(keep_alive(Arc::downgrade(&shared), idle_timeout));
        let control: ControlChannel = (
            Box::new(ControlTx {
                shared: shared.clone(),
            }),
            Box::new(ControlIn {
                chunks: chunks_rx,
                shared: shared.clone(),
                finished: false,
            }),
        );
        Self {
            shared,
            control: Mutex::new(Some(control)),
            opener,
            lanes,
        }
    }

    fn take_control(&self) -> Result<ControlChannel> {
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| conn_error(self.shared.peer)(&"control channel taken twice"))
    }
}

/// What the control connection's reader passes on.
enum Chunk {
    Data(Bytes),
    Finished,
}

/// Sends [`PING`] every [`KEEP_ALIVE`] until the link ends. A write that cannot go out (the
/// peer reads nothing) holds the next ping back; the peer is then the silent one.
async fn keep_alive(shared: Weak<Shared>, idle_timeout: Duration) {
    let mut tick = tokio::time::interval((idle_timeout / 4).min(KEEP_ALIVE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.ended().is_some() {
            return;
        }
        let mut w = shared.control_tx.lock().await;
        if write_frame(&mut w, PING, &[]).await.is_err() {
            return;
        }
    }
}

/// Reads the control connection's frames until it ends; records how it ended.
async fn read_control(
    mut read: ReadHalf<Tls>,
    out: mpsc::Sender<Chunk>,
    shared: Arc<Shared>,
    idle_timeout: Duration,
) {
    let how = loop {
        let mut head = [0u8; 5];
        match tokio::time::timeout(idle_timeout, read.read_exact(&mut head)).await {
            Err(_) => break Ended::TimedOut,
            Ok(Err(e)) => break lost(&e),
            Ok(Ok(_)) => {}
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_FRAME {
            break Ended::Lost(format!(
                "control frame of {len} bytes (at most {MAX_FRAME})"
            ));
        }
        let mut body = BytesMut::zeroed(len);
        if let Err(e) = read.read_exact(&mut body).await {
            break lost(&e);
        }
        match head[0] {
            DATA => {
                // The owner may have stopped reading (it is ending): keep reading for CLOSE.
                let _ = out.send(Chunk::Data(body.freeze())).await;
            }
            FINISH => {
                let _ = out.send(Chunk::Finished).await;
            }
            PING => {}
            CLOSE if len >= 4 => {
                break Ended::ByPeer {
                    code: u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                    reason: String::from_utf8_lossy(&body[4..]).into_owned(),
                };
            }
            other => break Ended::Lost(format!("unknown control frame kind {other}")),
        }
    };
    shared.end(how);
}

/// How an I/O error ended a link: the kernel's user timeout is the idle timeout.
fn lost(e: &std::io::Error) -> Ended {
    if e.kind() == std::io::ErrorKind::TimedOut {
        Ended::TimedOut
    } else if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Ended::Lost("connection closed".into())
    } else {
        Ended::Lost(e.to_string())
    }
}

struct ControlTx {
    shared: Arc<Shared>,
}

/// Writes one control frame.
async fn write_frame(w: &mut WriteHalf<Tls>, kind: u8, parts: &[&[u8]]) -> std::io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&(len as u32).to_be_bytes());
    w.write_all(&head).await?;
    for p in parts {
        w.write_all(p).await?;
    }
    w.flush().await
}

impl LaneTx for ControlTx {
    fn write<'a>(&'a mut self, chunks: &'a mut [Bytes]) -> Fut<'a, std::io::Result<()>> {
        Box::pin(async move {
            let mut w = self.shared.control_tx.lock().await;
            for chunk in chunks.iter() {
                for piece in chunk.chunks(MAX_FRAME) {
                    write_frame(&mut w, DATA, &[piece]).await?;
                }
            }
            Ok(())
        })
    }

    fn finish(&mut self) -> Fut<'_, ()> {
        Box::pin(async move {
            let mut w = self.shared.control_tx.lock().await;
            let _ = write_frame(&mut w, FINISH, &[]).await;
        })
    }
}

struct ControlIn {
    chunks: mpsc::Receiver<Chunk>,
    shared: Arc<Shared>,
    finished: bool,
}

impl ControlRx for ControlIn {
    fn recv(&mut self) -> Fut<'_, std::io::Result<Option<Bytes>>> {
        Box::pin(async move {
            if self.finished {
                return Ok(None);
            }
            match self.chunks.recv().await {
                Some(Chunk::Data(b)) => Ok(Some(b)),
                Some(Chunk::Finished) => {
                    self.finished = true;
                    Ok(None)
                }
                None => Err(io_other(match self.shared.ended() {
                    Some(Ended::ByPeer { reason, .. }) => format!("closed by peer: {reason}"),
                    Some(Ended::TimedOut) => "timed out".into(),
                    Some(Ended::Locally) => "closed".into(),
                    Some(Ended::Lost(why)) => why,
                    None => "connection lost".into(),
                })),
            }
        })
    }
}

/// A data lane's sending half.
struct LaneOut(Tls);

impl LaneTx for LaneOut {
    fn write<'a>(&'a mut self, chunks: &'a mut [Bytes]) -> Fut<'a, std::io::Result<()>> {
        Box::pin(async move {
            for chunk in chunks.iter() {
                self.0.write_all(chunk).await?;
            }
            // rustls holds the record tail until the next write or a flush; the receiver may
            // be waiting for exactly this block.
            self.0.flush().await
        })
    }

    fn finish(&mut self) -> Fut<'_, ()> {
        Box::pin(async move {
            let _ = self.0.shutdown().await;
        })
    }
}

/// A data lane's receiving half; counts itself out of the open lanes when dropped.
struct LaneIn {
    tls: Tls,
    open: Arc<AtomicUsize>,
}

impl Drop for LaneIn {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for LaneIn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

/// A link dropped without [`Link::close`] ends all the same: its tasks hold its sockets, and
/// a peer whose link was only dropped (a sender that lost the race to a receiving end) waited
/// on an open connection for good.
impl Drop for TcpLink {
    fn drop(&mut self) {
        self.shared.end(Ended::Locally);
    }
}

impl Link for TcpLink {
    fn kind(&self) -> Kind {
        Kind::Tcp
    }

    fn peer(&self) -> SocketAddr {
        self.shared.peer
    }

    fn open_control(&self) -> Fut<'_, Result<ControlChannel>> {
        Box::pin(async move { self.take_control() })
    }

    fn accept_control(&self) -> Fut<'_, Result<ControlChannel>> {
        Box::pin(async move { self.take_control() })
    }

    fn open_lane(&self) -> Fut<'_, Result<Option<Box<dyn LaneTx>>>> {
        Box::pin(async move {
            let peer = self.shared.peer;
            let err = conn_error(peer);
            let Some(opener) = &self.opener else {
                return Err(err(&"only a sender opens lanes"));
            };
            if self.shared.ended().is_some() {
                return Err(err(&"link closed"));
            }
            let (mut tls, raw) = dial(peer, &opener.connector, &opener.tuning)
                .await
                .map_err(|e| err(&e))?;
            let mut preamble = MAGIC.to_vec();
            preamble.push(ROLE_LANE);
            preamble.extend_from_slice(&opener.session);
            let mut status = [0u8; 1];
            let exchange = async {
                tls.write_all(&preamble).await?;
                tls.flush().await?;
                tls.read_exact(&mut status).await
            };
            tokio::time::timeout(HELLO_DEADLINE, exchange)
                .await
                .map_err(|_| err(&"the receiver did not answer a new lane"))?
                .map_err(|e| err(&e))?;
            match status[0] {
                OK => {
                    self.shared.register(raw);
                    Ok(Some(Box::new(LaneOut(tls)) as Box<dyn LaneTx>))
                }
                NO_MORE_LANES => Ok(None),
                other => Err(err(&format!("the receiver refused a lane ({other})"))),
            }
        })
    }

    fn accept_lane(&self) -> Fut<'_, Option<LaneRx>> {
        Box::pin(async move {
            let lanes = self.lanes.as_ref()?;
            let mut ended = self.shared.ended_tx.subscribe();
            let mut incoming = lanes.incoming.lock().await;
            tokio::select! {
                lane = incoming.recv() => lane,
                _ = ended.wait_for(|e| *e) => None,
            }
        })
    }

    fn allow_lanes(&self, n: usize) {
        if let Some(lanes) = &self.lanes {
            lanes.allowed.store(n, Ordering::Relaxed);
        }
    }

    fn path(&self) -> PathStats {
        let sockets = self
            .shared
            .sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut stats = PathStats::default();
        let mut busiest = 0;
        for info in sockets.iter().filter_map(|s| tcp_info(s.as_raw_fd())) {
            if info.tcpi_bytes_acked >= busiest {
                busiest = info.tcpi_bytes_acked;
                stats.rtt = Duration::from_micros(u64::from(info.tcpi_rtt));
            }
            stats.cwnd += u64::from(info.tcpi_snd_cwnd) * u64::from(info.tcpi_snd_mss);
            stats.sent_packets += u64::from(info.tcpi_segs_out);
            stats.lost_packets += u64::from(info.tcpi_total_retrans);
            stats.lost_bytes += info.tcpi_bytes_retrans;
            stats.udp_tx_bytes += info.tcpi_bytes_sent.max(info.tcpi_bytes_acked);
            stats.udp_rx_bytes += info.tcpi_bytes_received;
        }
        stats
    }

    fn flow_figures(&self) -> String {
        let sockets = self
            .shared
            .sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let figures: Vec<String> = sockets
            .iter()
            .filter_map(|s| tcp_info(s.as_raw_fd()))
            .map(|i| {
                format!(
                    "[cwnd {} × {}, RTT {} ms, unacked {}, not sent {} bytes, receive window {} bytes, {} retransmitted]",
                    i.tcpi_snd_cwnd,
                    i.tcpi_snd_mss,
                    i.tcpi_rtt / 1000,
                    i.tcpi_unacked,
                    i.tcpi_notsent_bytes,
                    i.tcpi_snd_wnd,
                    i.tcpi_total_retrans
                )
            })
            .collect();
        format!("TCP connections: {}", figures.join(" "))
    }

    fn close<'a>(&'a self, code: u32, reason: &'a [u8]) -> Fut<'a, ()> {
        Box::pin(async move {
            if self.shared.ended().is_some() {
                return;
            }
            let tell = async {
                let mut w = self.shared.control_tx.lock().await;
                let _ = write_frame(&mut w, CLOSE, &[&code.to_be_bytes(), reason]).await;
                let _ = w.shutdown().await;
            };
            let _ = tokio::time::timeout(Duration::from_millis(200), tell).await;
            self.shared.end(Ended::Locally);
        })
    }

    fn closed(&self) -> Fut<'_, ()> {
        Box::pin(async move {
            let mut ended = self.shared.ended_tx.subscribe();
            let _ = ended.wait_for(|e| *e).await;
        })
    }

    fn ended(&self) -> Option<Ended> {
        self.shared.ended()
    }
}

/// TCP connections in their TLS handshake and preamble at once (lanes of the sender included:
/// at most 256 of those).
const MAX_GREETINGS: usize = 320;

/// The receiver's TCP side: a listener whose connections become links (control connections)
/// or lanes of a link (lane connections).
pub struct Server {
    listener: Option<TcpListener>,
    acceptor: tokio_rustls::TlsAcceptor,
    config: Config,
    /// While set, a new control connection is closed as busy instead of handed out
    /// ([`Server::set_busy`]).
    busy: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

/// A control connection's session, for its lanes to find.
#[derive(Debug)]
struct Session {
    lanes: mpsc::Sender<LaneRx>,
    allowed: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    link: Weak<Shared>,
}

type Sessions = Arc<Mutex<HashMap<[u8; 16], Session>>>;

impl Server {
    /// Binds a TCP listener on `listen`; must be called inside the tokio runtime.
    pub fn bind(listen: SocketAddr, identity: &Identity, config: &Config) -> Result<Self> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(listen),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .map_err(Error::io("creating TCP socket"))?;
        let _ = sock.set_reuse_address(true);
        sock.set_nonblocking(true)
            .map_err(Error::io("creating TCP socket"))?;
        sock.bind(&listen.into())
            .map_err(super::udp::bind_error(listen, "TCP"))?;
        sock.listen(128).map_err(Error::io("listening on TCP"))?;
        let listener = TcpListener::from_std(sock.into()).map_err(Error::io("listening on TCP"))?;
        Ok(Self {
            listener: Some(listener),
            acceptor: tokio_rustls::TlsAcceptor::from(tls::tcp_server_config(identity)?),
            config: config.clone(),
            busy: Arc::default(),
        })
    }

    /// Closes new control connections as busy (`true`) or hands them out again (`false`),
    /// while [`Server::serve`] runs: a receiving end that serves one sender after another
    /// turns the others away only while it is serving one. Lanes of the sender being served
    /// still join its link.
    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, std::sync::atomic::Ordering::SeqCst);
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .as_ref()
            .map_or(Err(std::io::Error::other("not listening")), |l| {
                l.local_addr()
            })
            .map_err(Error::io("reading bound address"))
    }

    /// Accepts connections from now on, in a task of the current runtime: lanes go to their
    /// links; each control connection comes out of the returned channel as a link, or as the
    /// error that ended its handshake.
    pub fn serve(&mut self) -> mpsc::Receiver<Result<Arc<dyn Link>>> {
        let (tx, rx) = mpsc::channel(8);
        let Some(listener) = self.listener.take() else {
            return rx;
        };
        let acceptor = self.acceptor.clone();
        let config = self.config.clone();
        let busy = self.busy.clone();
        tokio::spawn(async move {
            let sessions: Sessions = Arc::default();
            // Handshakes in progress at once (each bounded by HELLO_DEADLINE): a flood of
            // connections waits in the kernel's backlog instead of costing TLS work here.
            let slots = Arc::new(tokio::sync::Semaphore::new(MAX_GREETINGS));
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors, most likely: wait for some to be freed.
                        tracing::warn!("accepting a TCP connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, config, sessions, tx, busy) = (
                    acceptor.clone(),
                    config.clone(),
                    sessions.clone(),
                    tx.clone(),
                    busy.clone(),
                );
                tokio::spawn(async move {
                    let _slot = slot;
                    let handshake = greet(stream, peer, &acceptor, &config, &sessions);
                    let result = match tokio::time::timeout(HELLO_DEADLINE, handshake).await {
                        Ok(r) => r,
                        Err(_) => Err(conn_error(peer)(&format!(
                            "no TLS handshake and preamble in {} s",
                            HELLO_DEADLINE.as_secs()
                        ))),
                    };
                    match result {
                        // Once the receiver stopped accepting (its sender is proven), another
                        // control connection is closed at once.
                        // So is one that comes while a kept serve serves a sender.
                        Ok(Some(link)) => {
                            let refused = if busy.load(std::sync::atomic::Ordering::SeqCst) {
                                Some(link)
                            } else {
                                match tx.try_send(Ok(link)) {
                                    Ok(()) => None,
                                    Err(
                                        mpsc::error::TrySendError::Full(l)
                                        | mpsc::error::TrySendError::Closed(l),
                                    ) => l.ok(),
                                }
                            };
                            if let Some(link) = refused {
                                link.close(super::CLOSED_BUSY, super::BUSY_REASON).await;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                        }
                    }
                });
            }
        });
        rx
    }
}

/// Completes TLS and reads the preamble: a control connection becomes a link; a lane joins
/// its session's link (`None`).
async fn greet(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: &tokio_rustls::TlsAcceptor,
    config: &Config,
    sessions: &Sessions,
) -> Result<Option<Arc<dyn Link>>> {
    let err = conn_error(peer);
    let tuning = Tuning::new(config, peer);
    tuning.apply(&stream);
    let raw = stream_dup(&stream).map_err(|e| err(&e))?;
    let mut tls = TlsStream::Server(acceptor.accept(stream).await.map_err(|e| err(&e))?);
    let mut head = [0u8; 9];
    tls.read_exact(&mut head).await.map_err(|e| err(&e))?;
    if &head[..8] != MAGIC {
        return Err(err(&"not a Sluice TCP connection (bad preamble)"));
    }
    match head[8] {
        ROLE_CONTROL => {
            let mut session = [0u8; 16];
            getrandom::fill(&mut session).map_err(|e| err(&e))?;
            let mut answer = vec![OK];
            answer.extend_from_slice(&session);
            tls.write_all(&answer).await.map_err(|e| err(&e))?;
            tls.flush().await.map_err(|e| err(&e))?;
            let (lanes_tx, lanes_rx) = mpsc::channel(64);
            let allowed = Arc::new(AtomicUsize::new(config.streams.max(1)));
            let link = TcpLink::new(
                peer,
                tls,
                raw,
                config.idle_timeout,
                None,
                Some(Lanes {
                    incoming: tokio::sync::Mutex::new(lanes_rx),
                    allowed: allowed.clone(),
                }),
            );
            let mut sessions = sessions.lock().unwrap_or_else(|p| p.into_inner());
            sessions.retain(|_, s| s.link.strong_count() > 0);
            sessions.insert(
                session,
                Session {
                    lanes: lanes_tx,
                    allowed,
                    open: Arc::default(),
                    link: Arc::downgrade(&link.shared),
                },
            );
            Ok(Some(Arc::new(link)))
        }
        ROLE_LANE => {
            let mut session = [0u8; 16];
            tls.read_exact(&mut session).await.map_err(|e| err(&e))?;
            let found = {
                let sessions = sessions.lock().unwrap_or_else(|p| p.into_inner());
                sessions.get(&session).and_then(|s| {
                    let link = s.link.upgrade()?;
                    let room = s.open.load(Ordering::Relaxed) < s.allowed.load(Ordering::Relaxed);
                    if room {
                        s.open.fetch_add(1, Ordering::Relaxed);
                    }
                    Some((room, s.lanes.clone(), s.open.clone(), link))
                })
            };
            let Some((room, lanes, open, link)) = found else {
                let _ = tls.write_all(&[UNKNOWN_SESSION]).await;
                let _ = tls.shutdown().await;
                tracing::debug!(%peer, "lane for an unknown session refused");
                return Ok(None);
            };
            if !room {
                let _ = tls.write_all(&[NO_MORE_LANES]).await;
                let _ = tls.shutdown().await;
                return Ok(None);
            }
            // Counted in above; counted out when dropped, whatever happens next.
            let mut lane = LaneIn { tls, open };
            lane.tls.write_all(&[OK]).await.map_err(|e| err(&e))?;
            lane.tls.flush().await.map_err(|e| err(&e))?;
            link.register(raw);
            let _ = lanes.send(Box::new(lane)).await;
            Ok(None)
        }
        other => Err(err(&format!("unknown TCP role {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads an int option of `IPPROTO_TCP`.
    fn tcp_int(stream: &TcpStream, name: libc::c_int) -> Option<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `v`.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(v)
    }

    /// Every socket of a link gets the user timeout and, where the kernel has it, the cap on
    /// retransmission back-off that lets a lane stuck after an outage try again within seconds.
    #[tokio::test]
    async fn sockets_cap_the_retransmission_back_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (client, _server) = (client.unwrap(), server.unwrap());
        let config = Config::default();
        Tuning::new(&config, addr).apply(&client);
        let user = tcp_int(&client, libc::TCP_USER_TIMEOUT).unwrap();
        let want = config.idle_timeout.max(config.stall_timeout).as_millis();
        assert_eq!(user as u128, want);
        // 44 is TCP_RTO_MAX_MS; a kernel before 6.15 does not know it.
        match tcp_int(&client, 44) {
            Some(ms) => assert_eq!(ms as u128, RTO_MAX.as_millis()),
            None => eprintln!("this kernel has no TCP_RTO_MAX_MS"),
        }
    }
}
