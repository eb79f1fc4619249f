//! The QUIC transport: one quinn connection; the control channel is its one bidirectional
//! stream, each data lane a unidirectional stream.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_proto::ticket::Ticket;
use sluice_quic::congestion::PathMemo;
use sluice_quic::tls::{self, Congestion, Identity};

use super::{conn_error, ControlChannel, ControlRx, Ended, Fut, Kind, LaneRx, LaneTx, Link};
use super::{memory, udp};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::progress::PathStats;

/// A QUIC connection as a [`Link`].
#[derive(Debug)]
pub struct QuicLink {
    conn: quinn::Connection,
    /// Kept so the endpoint's driver outlives every use of the connection.
    _endpoint: quinn::Endpoint,
    /// Set by [`watch_peer`] when the peer's host said its port is closed.
    gone: Arc<AtomicBool>,
    /// A sender's: where its controller leaves what it measures of the path, and the file to
    /// keep that in when the transfer ends well (see [`super::memory`]).
    memo: Option<(Arc<PathMemo>, std::path::PathBuf)>,
}

impl QuicLink {
    /// Must be called inside the tokio runtime that drives `conn`.
    fn new(conn: quinn::Connection, endpoint: quinn::Endpoint) -> Self {
        live().push((conn.clone(), endpoint.clone()));
        let gone = Arc::new(AtomicBool::new(false));
        tokio::spawn(watch_peer(conn.clone(), gone.clone()));
        Self {
            conn,
            _endpoint: endpoint,
            gone,
            memo: None,
        }
    }

    /// Keeps what the controller measured of the path for the next connection to this host,
    /// if it measured enough.
    fn remember_path(&self) {
        let Some((memo, file)) = &self.memo else {
            return;
        };
        let Some(figures) = memo.figures().filter(|f| f.rounds >= memory::MIN_ROUNDS) else {
            return;
        };
        let peer = self.conn.remote_address().ip();
        match memory::remember(file, peer, figures, std::time::SystemTime::now()) {
            Ok(()) => tracing::debug!(?figures, "kept the path's figures"),
            Err(e) => tracing::debug!(
                "could not keep the path's figures in {}: {e}",
                file.display()
            ),
        }
    }
}

/// How long the peer must have sent nothing before [`watch_peer`] asks its host (a probe to a
/// live peer costs it one datagram it drops).
const SILENT_BEFORE_PROBE: Duration = Duration::from_millis(500);

/// Probes refused, not necessarily in a row, that tell a closed port ([`watch_peer`],
/// [`try_connect`]).
const REFUSALS: u32 = 2;

/// How often [`watch_peer`] looks while the peer is heard, and how long [`try_connect`]'s
/// probes wait for their answer.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// How often [`watch_peer`] probes a silent peer, and how long each probe waits for its
/// answer: often enough that its probes, not quinn's own packets to the closed port, take the
/// one ICMP error a second the peer's host sends. At two probes a second, a receiving end
/// whose sender was killed across a 50 ms link (quinn sending it 13 packets a second) got one
/// refusal in 24–30 s and waited out its idle timeout.
const PROBE_PACE: Duration = Duration::from_millis(20);

/// Ends `conn` soon after the peer's process has: a killed peer closes nothing, and its host
/// drops our packets in silence to quinn's socket (an unconnected UDP socket is told of no
/// ICMP error), so the connection used to wait out its idle timeout (30 s). While the peer
/// has sent nothing for [`SILENT_BEFORE_PROBE`], a socket of our own, connected to the peer's
/// address, sends it one byte every [`PROBE_PACE`] or so; a live peer's endpoint drops it as no
/// QUIC packet, a closed port comes back as "connection refused" (ICMP port unreachable);
/// [`REFUSALS`] while the peer stays silent end the connection. Not in a row: a host sends at
/// most one ICMP error a second to each address (Linux's `icmp_ratelimit`, not on loopback),
/// and quinn's own packets to the closed port take some of them, so every other probe went
/// unanswered and a peer killed across a 100 ms link was noticed after 9–13 s (now 3–6 s; 2 on
/// loopback, where no limit applies). A path that is down, or a host that says nothing, still
/// waits for the idle timeout.
async fn watch_peer(conn: quinn::Connection, gone: Arc<AtomicBool>) {
    let peer = conn.remote_address();
    let mut heard = conn.stats().udp_rx.datagrams;
    let mut silent_since = Instant::now();
    let mut probe: Option<tokio::net::UdpSocket> = None;
    // Refusals since the peer last sent anything.
    let mut refusals = 0;
    let mut probing = false;
    loop {
        let pause = if probing { PROBE_PACE } else { PROBE_EVERY };
        tokio::select! {
            _ = conn.closed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let now = conn.stats().udp_rx.datagrams;
        if now != heard {
            heard = now;
            silent_since = Instant::now();
            refusals = 0;
            probing = false;
            continue;
        }
        if silent_since.elapsed() < SILENT_BEFORE_PROBE {
            continue;
        }
        if probe.is_none() {
            probe = probe_socket(peer).await;
        }
        let Some(socket) = &probe else { return };
        probing = true;
        refusals += u32::from(refused(socket, PROBE_PACE).await);
        if refusals >= REFUSALS {
            tracing::debug!(%peer, "the peer's port is closed");
            gone.store(true, Ordering::SeqCst);
            conn.close(0u32.into(), b"");
            return;
        }
    }
}

/// A UDP socket connected to `peer`, so that the kernel reports its ICMP errors; `None` if
/// none can be made (then the idle timeout decides, as before).
async fn probe_socket(peer: SocketAddr) -> Option<tokio::net::UdpSocket> {
    let socket = tokio::net::UdpSocket::bind(udp::any_addr_for(peer))
        .await
        .ok()?;
    socket.connect(peer).await.ok()?;
    Some(socket)
}

/// Sends one probe and waits `wait` for a refusal.
async fn refused(socket: &tokio::net::UdpSocket, wait: Duration) -> bool {
    let is_refusal = |e: &std::io::Error| e.kind() == std::io::ErrorKind::ConnectionRefused;
    if let Err(e) = socket.send(&[0]).await {
        if is_refusal(&e) {
            return true;
        }
        // Another error (no route, say) comes back at once: the probe's pace stays the same,
        // so that a caller looping on it never spins.
        tokio::time::sleep(wait).await;
        return false;
    }
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, socket.recv(&mut buf)).await,
        Ok(Err(e)) if is_refusal(&e)
    )
}

impl Drop for QuicLink {
    fn drop(&mut self) {
        let id = self.conn.stable_id();
        live().retain(|(c, _)| c.stable_id() != id);
    }
}

/// Every QUIC connection of this process that has a [`QuicLink`], for [`interrupt`].
static LIVE: std::sync::Mutex<Vec<(quinn::Connection, quinn::Endpoint)>> =
    std::sync::Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<(quinn::Connection, quinn::Endpoint)>> {
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Closes every QUIC connection of this process at once, telling each peer `reason`, and waits
/// until their endpoints are idle (the closes sent and drained), at most [`INTERRUPT_GRACE`]:
/// for a process stopped by a signal. Without it, a peer learned of a Ctrl-C only when its idle
/// timeout ran out (30 s); TCP's peers learn from the kernel. Called from any thread, also
/// while the connections' runtime is busy.
pub fn interrupt(reason: &str) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    let live = live().clone();
    for (c, _) in &live {
        c.close(1u32.into(), reason.as_bytes());
    }
    tracing::debug!(connections = live.len(), "closed for a signal");
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        std::thread::sleep(INTERRUPT_GRACE);
        return;
    };
    rt.block_on(async {
        let idle = async {
            for (_, e) in &live {
                e.wait_idle().await;
            }
        };
        let _ = tokio::time::timeout(INTERRUPT_GRACE, idle).await;
    });
}

/// Whether [`interrupt`] closed this process's connections.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The longest [`interrupt`] waits. Its closes leave at the connection driver's next turn,
/// which on a busy sender came after 100 ms and more at times (the peer then waited out its
/// idle timeout); on loopback the endpoints are idle within a hundred milliseconds, on a
/// 300 ms path draining lasts longer than this, long after the close has left.
const INTERRUPT_GRACE: Duration = Duration::from_secs(1);

/// How long a QUIC handshake may take before the sender gives up: a stale ticket or a receiver
/// busy with another sender never answers, and waiting for the idle timeout took 30 s. Ten
/// seconds hold a handshake at 300 ms RTT with its first flights lost several times over.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The receiver's host said nothing listens on its UDP port (ICMP port unreachable).
pub(crate) struct Refused;

/// Connects to the receiver named by `ticket`.
pub async fn connect(config: &Config, ticket: &Ticket) -> Result<Arc<dyn Link>> {
    match try_connect(config, ticket).await {
        Ok(r) => r,
        Err(Refused) => Err(conn_error(ticket.addr)(
            &"nothing listens there over QUIC (the host says its UDP port is closed): is the \
              receiving sluice (`recv`, `db recv`, `bench --serve`) still running, and is this \
              its latest ticket?",
        )),
    }
}

/// [`connect`], or `Err(Refused)` as soon as the receiver's host answers probes (see
/// [`watch_peer`]) with "port unreachable" [`REFUSALS`] times: a stale ticket fails in about a
/// second instead of [`ANSWER_WITHIN`].
pub(crate) async fn try_connect(
    config: &Config,
    ticket: &Ticket,
) -> std::result::Result<Result<Arc<dyn Link>>, Refused> {
    let refusal = async {
        let Some(socket) = probe_socket(ticket.addr).await else {
            return std::future::pending().await;
        };
        let mut refusals = 0;
        while refusals < REFUSALS {
            refusals += u32::from(refused(&socket, PROBE_EVERY).await);
        }
        Refused
    };
    tokio::select! {
        r = handshake(config, ticket) => Ok(r),
        refused = refusal => Err(refused),
    }
}

async fn handshake(config: &Config, ticket: &Ticket) -> Result<Arc<dyn Link>> {
    let peer = ticket.addr;
    let err = conn_error(peer);
    let mut tuning = config.transport_to(Some(peer.ip()));
    // Sluice's controller towards another host keeps what it measures, and starts from what
    // the last transfer there measured unless the user gave hints.
    let memo = match &config.path_memory {
        Some(file) if tuning.congestion == Congestion::Sluice => {
            if config.rtt_hint.is_none() && config.rate_hint.is_none() {
                tuning.rate.resume = memory::recall(file, peer.ip(), std::time::SystemTime::now());
            }
            let memo = Arc::new(PathMemo::default());
            tuning.rate.memo = Some(memo.clone());
            Some((memo, file.clone()))
        }
        _ => None,
    };
    if let Err(e) = udp::route_to(peer) {
        return Err(err(&format!("cannot reach it from this host: {e}")));
    }
    let client = tls::client_config(ticket.fingerprint, &tuning)?;
    let endpoint = udp::endpoint(
        udp::udp_socket(udp::any_addr_for(peer), config)?,
        None,
        tuning.datagram_size,
    )?;
    let connecting = endpoint
        .connect_with(client, peer, tls::SERVER_NAME)
        .map_err(|e| err(&e))?;
    let conn = match tokio::time::timeout(ANSWER_WITHIN, connecting).await {
        Ok(Err(quinn::ConnectionError::TransportError(t)))
            if (0x100..0x200).contains(&u64::from(t.code)) =>
        {
            // A TLS alert: the pinned certificate did not match (or no common protocol).
            return Err(Error::Tls(tls::TlsError::Handshake(t.to_string())));
        }
        Ok(Err(quinn::ConnectionError::ConnectionClosed(c)))
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            return Err(Error::Busy {
                peer: peer.to_string(),
            });
        }
        Ok(r) => r.map_err(|e| err(&e))?,
        Err(_) => {
            return Err(err(&format!(
                "no answer over QUIC in {} s: is the receiving sluice (`recv`, `db recv`, `bench \
                 --serve`) still running there, is this its \
                 latest ticket, and is it not busy with another sender? (a receiver answers one \
                 sender at a time)",
                ANSWER_WITHIN.as_secs()
            )))
        }
    };
    tracing::debug!("connected over QUIC");
    let mut link = QuicLink::new(conn, endpoint);
    link.memo = memo;
    Ok(Arc::new(link))
}

/// The receiver's QUIC side: an endpoint serving the receiver's certificate.
#[derive(Debug, Clone)]
pub struct Server {
    endpoint: quinn::Endpoint,
    /// The server configuration for a sender on this host: loopback loses nothing, so its
    /// streams get the whole window (the endpoint's own configuration is safe on any path).
    near: Arc<quinn::ServerConfig>,
}

impl Server {
    /// Binds a UDP socket on `listen`; must be called inside the tokio runtime.
    pub fn bind(listen: SocketAddr, identity: &Identity, config: &Config) -> Result<Self> {
        let server = tls::server_config(identity, &config.transport_to(None))?;
        let loopback = std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST);
        let near = Arc::new(tls::server_config(
            identity,
            &config.transport_to(Some(loopback)),
        )?);
        let socket = udp::udp_socket(listen, config)?;
        let endpoint = udp::endpoint(socket, Some(server), None)?;
        Ok(Self { endpoint, near })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.endpoint
            .local_addr()
            .map_err(Error::io("reading bound address"))
    }

    /// The next connection attempt; `None` once the endpoint is closed.
    pub async fn incoming(&self) -> Option<quinn::Incoming> {
        self.endpoint.accept().await
    }

    /// Refuses every new connection, saying so (QUIC's CONNECTION_REFUSED: the sender reports
    /// [`Error::Busy`] at once); those established go on. An endpoint without a server
    /// configuration answered nothing, and a second sender waited 3 s, tried TCP as if UDP
    /// were blocked, and exited as if the link had failed.
    pub fn stop_accepting(&self) {
        drop(self.refuse_others());
    }

    /// Refuses every new connection until the returned task is aborted (detached, for good).
    pub fn refuse_others(&self) -> tokio::task::JoinHandle<()> {
        let endpoint = self.endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                incoming.refuse();
            }
        })
    }

    /// Completes the handshake of `incoming`.
    pub async fn handshake(&self, incoming: quinn::Incoming) -> Result<Arc<dyn Link>> {
        let peer = incoming.remote_address();
        let err = conn_error(peer);
        let connecting = if peer.ip().to_canonical().is_loopback() {
            incoming.accept_with(self.near.clone())
        } else {
            incoming.accept()
        };
        let conn = connecting
            .map_err(|e| err(&e))?
            .await
            .map_err(|e| err(&e))?;
        Ok(Arc::new(QuicLink::new(conn, self.endpoint.clone())))
    }
}

struct Send(quinn::SendStream);

impl LaneTx for Send {
    fn write<'a>(&'a mut self, chunks: &'a mut [Bytes]) -> Fut<'a, std::io::Result<()>> {
        Box::pin(async move {
            self.0
                .write_all_chunks(chunks)
                .await
                .map_err(std::io::Error::from)
        })
    }

    fn finish(&mut self) -> Fut<'_, ()> {
        let _ = self.0.finish();
        Box::pin(async {})
    }

    /// quinn sends the stream of highest priority first, and streams of one priority in turns:
    /// blocks on many lanes crossed side by side, each at a fraction of the rate, so on a slow
    /// path none arrived whole for seconds and then many at once. Ordered, each block goes out
    /// at the path's rate in turn; a lost packet's repair keeps its block's place, ahead of
    /// later blocks. The control stream keeps priority 0, ahead of all data. The order wraps
    /// every 2^30 blocks (one out-of-order turn).
    fn set_order(&mut self, order: u64) {
        let _ = self.0.set_priority(-1 - (order % (1 << 30)) as i32);
    }
}

struct Recv(quinn::RecvStream);

impl ControlRx for Recv {
    fn recv(&mut self) -> Fut<'_, std::io::Result<Option<Bytes>>> {
        Box::pin(async move {
            match self.0.read_chunk(64 * 1024, true).await {
                Ok(chunk) => Ok(chunk.map(|c| c.bytes)),
                Err(e) => Err(std::io::Error::from(e)),
            }
        })
    }
}

impl Link for QuicLink {
    fn kind(&self) -> Kind {
        Kind::Quic
    }

    fn peer(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    fn open_control(&self) -> Fut<'_, Result<ControlChannel>> {
        Box::pin(async move {
            let (send, recv) = self
                .conn
                .open_bi()
                .await
                .map_err(|e| conn_error(self.peer())(&e))?;
            Ok((
                Box::new(Send(send)) as Box<dyn LaneTx>,
                Box::new(Recv(recv)) as Box<dyn ControlRx>,
            ))
        })
    }

    fn accept_control(&self) -> Fut<'_, Result<ControlChannel>> {
        Box::pin(async move {
            let (send, recv) = self
                .conn
                .accept_bi()
                .await
                .map_err(|e| conn_error(self.peer())(&e))?;
            Ok((
                Box::new(Send(send)) as Box<dyn LaneTx>,
                Box::new(Recv(recv)) as Box<dyn ControlRx>,
            ))
        })
    }

    fn open_lane(&self) -> Fut<'_, Result<Option<Box<dyn LaneTx>>>> {
        Box::pin(async move {
            let stream = self
                .conn
                .open_uni()
                .await
                .map_err(|e| conn_error(self.peer())(&e))?;
            Ok(Some(Box::new(Send(stream)) as Box<dyn LaneTx>))
        })
    }

    fn accept_lane(&self) -> Fut<'_, Option<LaneRx>> {
        Box::pin(async move {
            self.conn
                .accept_uni()
                .await
                .ok()
                .map(|s| Box::new(s) as LaneRx)
        })
    }

    fn allow_lanes(&self, n: usize) {
        self.conn.set_max_concurrent_uni_streams(
            quinn::VarInt::from_u64(n as u64).unwrap_or(quinn::VarInt::MAX),
        );
    }

    fn path(&self) -> PathStats {
        let s = self.conn.stats();
        PathStats {
            rtt: s.path.rtt,
            cwnd: s.path.cwnd,
            sent_packets: s.path.sent_packets,
            lost_packets: s.path.lost_packets,
            lost_bytes: s.path.lost_bytes,
            udp_tx_bytes: s.udp_tx.bytes,
            udp_rx_bytes: s.udp_rx.bytes,
        }
    }

    fn flow_figures(&self) -> String {
        udp::flow_figures(&self.conn)
    }

    fn close<'a>(&'a self, code: u32, reason: &'a [u8]) -> Fut<'a, ()> {
        Box::pin(async move {
            if code == 0 {
                self.remember_path();
            }
            if !INTERRUPTED.load(Ordering::SeqCst) {
                udp::close(&self.conn, code, reason).await;
                return;
            }
            // Closed already, by [`interrupt`] from another thread: the close leaves when the
            // endpoint's driver next runs, on this runtime, which must not end before. Idle
            // once the close is sent and drained (a tenth of a second on loopback).
            let _ = tokio::time::timeout(INTERRUPT_GRACE, self._endpoint.wait_idle()).await;
        })
    }

    fn closed(&self) -> Fut<'_, ()> {
        Box::pin(async move {
            self.conn.closed().await;
        })
    }

    fn ended(&self) -> Option<Ended> {
        let reason = self.conn.close_reason()?;
        if self.gone.load(Ordering::SeqCst) {
            return Some(Ended::Lost(
                "its port is closed: the sluice there has stopped".into(),
            ));
        }
        Some(match reason {
            quinn::ConnectionError::TimedOut => Ended::TimedOut,
            quinn::ConnectionError::ApplicationClosed(c) => Ended::ByPeer {
                code: u32::try_from(c.error_code.into_inner()).unwrap_or(u32::MAX),
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            },
            quinn::ConnectionError::LocallyClosed => Ended::Locally,
            other => Ended::Lost(other.to_string()),
        })
    }

    fn holds_until_acknowledged(&self) -> bool {
        true
    }
}
