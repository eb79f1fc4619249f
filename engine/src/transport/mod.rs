//! How the two ends reach each other: a [`Link`] carries one control channel and any number of
//! one-way data lanes, whatever is underneath.
//!
//! Two transports implement it:
//! - [`quic`]: one QUIC connection (quinn); the control channel is a bidirectional stream, each
//!   lane a unidirectional stream. Sluice's own congestion controller runs here, so this is the
//!   transport for long, lossy links.
//! - [`tcp`]: TLS 1.3 over TCP; the control channel is one TCP connection, each lane another.
//!   For sites where UDP is blocked or throttled, and where the kernel's TCP carries more of the
//!   work per byte.
//!
//! Both authenticate the same way: the receiver's certificate is pinned by the ticket's
//! fingerprint, and the sender proves the ticket's secret in its Hello on the control channel.
//! A receiver listens on both (the same port number, UDP and TCP); a sender tries QUIC and, if
//! nothing answers within [`FALLBACK_AFTER`], TCP as well ([`connect`]).

pub mod memory;
pub mod quic;
pub mod tcp;
pub mod udp;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_proto::ticket::Ticket;
use sluice_quic::tls::Identity;
use tokio::io::AsyncRead;

use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::progress::PathStats;
use sluice_proto::message::ErrorCode;
use sluice_proto::session::SessionError;

/// A boxed future, for trait methods that are called through `dyn`.
pub type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub use crate::config::Transport as Choice;

/// The transport a [`Link`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// QUIC over UDP.
    Quic,
    /// TLS 1.3 over TCP.
    Tcp,
}

impl Kind {
    /// "QUIC" or "TCP".
    pub fn name(self) -> &'static str {
        match self {
            Kind::Quic => "QUIC",
            Kind::Tcp => "TCP",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The code a receiver closes a link with when it already serves another sender
/// ([`Error::Busy`] at the sender).
pub const CLOSED_BUSY: u32 = 2;

/// How a link ended, as far as this side knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Nothing arrived from the peer for the idle timeout.
    TimedOut,
    /// The peer closed the link, with its code and reason.
    ByPeer {
        /// 0 for a clean end.
        code: u32,
        /// The peer's words.
        reason: String,
    },
    /// This side closed it.
    Locally,
    /// The connection broke for another reason.
    Lost(String),
}

/// The sending half of the control channel or of a data lane.
pub trait LaneTx: Send {
    /// Writes `chunks` in order; returns once the transport has taken them all.
    fn write<'a>(&'a mut self, chunks: &'a mut [Bytes]) -> Fut<'a, std::io::Result<()>>;
    /// Ends this half cleanly once everything written has been sent.
    fn finish(&mut self) -> Fut<'_, ()>;
    /// Places what is written next after everything written before with a lower `order`, on
    /// any lane of the connection (a transport that sends each lane on its own ignores it).
    fn set_order(&mut self, _order: u64) {}
}

/// The receiving half of a data lane: a byte stream whose end is a clean finish by the peer (a
/// cut connection is an error, never an end).
pub type LaneRx = Box<dyn AsyncRead + Send + Unpin>;

/// The receiving half of the control channel, in chunks as they arrive.
pub trait ControlRx: Send {
    /// The next chunk; `None` once the peer has finished its half. Cancel-safe: a dropped call
    /// loses nothing.
    fn recv(&mut self) -> Fut<'_, std::io::Result<Option<Bytes>>>;
}

impl std::fmt::Debug for dyn LaneTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LaneTx")
    }
}

impl std::fmt::Debug for dyn ControlRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlRx")
    }
}

/// Both halves of the control channel.
pub type ControlChannel = (Box<dyn LaneTx>, Box<dyn ControlRx>);

/// One connection between a sender and a receiver.
pub trait Link: Send + Sync + fmt::Debug {
    /// The transport underneath.
    fn kind(&self) -> Kind;
    /// The peer's address.
    fn peer(&self) -> SocketAddr;
    /// Sender: opens the control channel.
    fn open_control(&self) -> Fut<'_, Result<ControlChannel>>;
    /// Receiver: the control channel the sender opened.
    fn accept_control(&self) -> Fut<'_, Result<ControlChannel>>;
    /// Sender: opens one more data lane; `None` if the receiver allows no more.
    fn open_lane(&self) -> Fut<'_, Result<Option<Box<dyn LaneTx>>>>;
    /// Receiver: the next lane the sender opened; `None` once the link has ended.
    fn accept_lane(&self) -> Fut<'_, Option<LaneRx>>;
    /// Receiver: allows the sender this many lanes at once.
    fn allow_lanes(&self, n: usize);
    /// What the path looks like now, as the transport measures it.
    fn path(&self) -> PathStats;
    /// Flow-control and packet figures for a stall report.
    fn flow_figures(&self) -> String;
    /// Closes the link with `code` (0: done) and `reason`, and waits (briefly) until the peer
    /// can have been told. Nothing to do if it has ended already.
    fn close<'a>(&'a self, code: u32, reason: &'a [u8]) -> Fut<'a, ()>;
    /// Resolves once the link has ended, for whatever reason.
    fn closed(&self) -> Fut<'_, ()>;
    /// How the link ended, once it has.
    fn ended(&self) -> Option<Ended>;
    /// Whether the transport holds a lane's payload until the peer has acknowledged it (QUIC),
    /// so that what it holds is all that is yet to cross. Over TCP the kernel takes a copy
    /// and holds more than the lanes see.
    fn holds_until_acknowledged(&self) -> bool {
        false
    }
}

/// How long a sender waits for a QUIC answer before it tries TCP as well (`Choice::Auto`).
pub const FALLBACK_AFTER: Duration = Duration::from_secs(3);

/// How long a receiver gives a connection to complete its handshake and open the control
/// channel before it drops it and waits for another.
pub const HELLO_DEADLINE: Duration = Duration::from_secs(10);

/// Connects to the receiver named by `ticket` over the transport `config` chooses.
pub async fn connect(config: &Config, ticket: &Ticket) -> Result<Arc<dyn Link>> {
    match config.transport {
        Choice::Quic => quic::connect(config, ticket).await,
        Choice::Tcp => tcp::connect(config, ticket).await,
        Choice::Auto => {
            let quic = quic::try_connect(config, ticket);
            tokio::pin!(quic);
            tokio::select! {
                r = &mut quic => match r {
                    Ok(r) => return r,
                    // Nothing on the UDP port: TCP at once (a receiver that listens on TCP
                    // alone), else the sender gives up now.
                    Err(quic::Refused) => {
                        tracing::warn!(
                            "QUIC refused by {} (its UDP port is closed): trying TCP",
                            ticket.addr
                        );
                        let linked = tcp::connect(config, ticket).await;
                        if linked.is_ok() {
                            tracing::warn!("connected to {} over TCP", ticket.addr);
                        }
                        return linked.map_err(|e| {
                            conn_error(ticket.addr)(&format!(
                                "no receiver answers: its host says nothing listens on the UDP \
                                 port, and TCP: {}",
                                tcp_reason(&e)
                            ))
                        });
                    }
                },
                _ = tokio::time::sleep(FALLBACK_AFTER) => {}
            }
            let quic = async {
                quic.await.unwrap_or_else(|quic::Refused| {
                    Err(conn_error(ticket.addr)(&"its UDP port is closed"))
                })
            };
            tokio::pin!(quic);
            tracing::warn!(
                "no QUIC answer from {} in {} s (UDP blocked?): trying TCP as well",
                ticket.addr,
                FALLBACK_AFTER.as_secs()
            );
            let tcp = tcp::connect(config, ticket);
            tokio::pin!(tcp);
            tokio::select! {
                // QUIC gave up while TCP still waits for its answer: both are silent.
                r = &mut quic => r.map_err(|e| match e {
                    Error::Connection { peer, detail } => Error::Connection {
                        peer,
                        detail: format!(
                            "{detail} (TCP, tried after {} s, has had no answer either)",
                            FALLBACK_AFTER.as_secs()
                        ),
                    },
                    other => other,
                }),
                r = &mut tcp => match r {
                    Ok(link) => {
                        tracing::warn!("connected to {} over TCP", ticket.addr);
                        Ok(link)
                    }
                    Err(e) => {
                        // Refused over TCP and silent over UDP: most likely nothing listens
                        // there any more. QUIC gets as long again to answer (a receiver that
                        // listens on UDP alone, a slow first flight), then the sender gives up
                        // instead of waiting out the idle timeout.
                        tracing::debug!(%e, "TCP failed too; waiting a little longer for QUIC");
                        match tokio::time::timeout(FALLBACK_AFTER, quic).await {
                            Ok(r) => r,
                            Err(_) => Err(conn_error(ticket.addr)(&format!(
                                "no receiver answers: nothing over QUIC for {} s, and TCP: {}{}",
                                2 * FALLBACK_AFTER.as_secs(),
                                tcp_reason(&e),
                                if matches!(&e, Error::Connection { detail, .. } if detail.contains("latest ticket")) {
                                    ""
                                } else if matches!(&e, Error::Connection { detail, .. }
                                    if detail.contains("(os error 113)") || detail.contains("(os error 101)"))
                                {
                                    // The host itself is not there (no answer to ARP, no route).
                                    "; is the address right, and is that host up and reachable from here?"
                                } else {
                                    "; is the receiving sluice (`recv`, `db recv`, `bench --serve`) \
                                     still running there, and is this its latest ticket?"
                                }
                            ))),
                        }
                    }
                },
            }
        }
    }
}

/// What a TCP connection attempt said, without the address `Error::Connection` already names.
fn tcp_reason(e: &Error) -> String {
    match e {
        Error::Connection { detail, .. } => detail.clone(),
        other => other.to_string(),
    }
}

/// A receiving end: what it listens on, and the ticket that names it (address, certificate
/// fingerprint, one-time secret).
#[derive(Debug)]
pub struct Listener {
    quic: Option<quic::Server>,
    tcp: Option<tcp::Server>,
    /// Control connections arriving over TCP, once [`Listener::accept`] has started serving.
    tcp_links: Option<tokio::sync::mpsc::Receiver<Result<Arc<dyn Link>>>>,
    /// Connection attempts under way (handshakes, control channels awaited): they outlive one
    /// [`Listener::accept`], so that a sender that fails its proof (a stray, a wrong ticket)
    /// does not cost the genuine ones racing beside it their place.
    attempts: Attempts,
    ticket: Ticket,
}

/// The attempts of a [`Listener`] under way, and the race they are in.
#[derive(Default)]
struct Attempts {
    pending: tokio::task::JoinSet<Result<(Arc<dyn Link>, ControlChannel)>>,
    race: Arc<Race>,
}

impl std::fmt::Debug for Attempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempts")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Attempts {
    /// A sender is proven: the attempts still under way are turned away as busy, now or as
    /// soon as their handshake completes (each is bounded by [`HELLO_DEADLINE`]), and the
    /// next [`Listener::accept`] starts a new race.
    fn decide(&mut self) {
        self.race.decide();
        self.pending.detach_all();
        self.race = Arc::default();
    }
}

impl Listener {
    /// Listens on `listen` (UDP for QUIC and TCP at one port number, or the one transport
    /// `config.transport` names) with a fresh certificate and secret; must be called inside the
    /// tokio runtime. `advertise`, if given, is the address written into the ticket (needed
    /// when `listen` is a wildcard; without it a wildcard is advertised as the address of
    /// this host's route out, or loopback where there is none).
    pub fn bind(
        listen: SocketAddr,
        advertise: Option<SocketAddr>,
        config: &Config,
    ) -> Result<Self> {
        let identity = Identity::generate()?;
        tracing::debug!("certificate generated");
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)
            .map_err(|e| Error::io("generating secret")(std::io::Error::other(e.to_string())))?;
        let (quic, tcp) = listen_on(listen, &identity, config)?;
        let mut addr = match (&quic, &tcp) {
            (Some(q), _) => q.local_addr()?,
            (None, Some(t)) => t.local_addr()?,
            (None, None) => unreachable!("listen_on binds at least one transport"),
        };
        if let Some(a) = advertise {
            addr = a;
        } else if addr.ip().is_unspecified() {
            let ip = outward_ip(addr.is_ipv4());
            if ip.is_loopback() {
                tracing::warn!("this host has no route out: the ticket names {ip}, which only a sender on this host can reach (give --advertise ADDR:PORT)");
            }
            addr.set_ip(ip);
        }
        Ok(Self {
            quic,
            tcp,
            tcp_links: None,
            attempts: Attempts::default(),
            ticket: Ticket {
                addr,
                fingerprint: identity.fingerprint(),
                secret,
            },
        })
    }

    /// The ticket to hand to the sender.
    pub fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    /// Waits for the next connection, on either transport, that completes its handshake and
    /// opens its control channel (see [`accept`]). The others under way go on, until
    /// [`Listener::stop_accepting`] or [`Listener::pause`] turns them away.
    pub async fn accept(&mut self) -> Result<(Arc<dyn Link>, ControlChannel)> {
        if self.tcp_links.is_none() {
            self.tcp_links = self.tcp.as_mut().map(|t| t.serve());
        }
        accept(self.quic.as_ref(), &mut self.tcp_links, &mut self.attempts).await
    }

    /// Lets no one else in: called once a sender has proven the ticket's secret. New QUIC
    /// connections are refused and new TCP control connections closed; the proven sender's TCP
    /// lanes still join its link.
    pub fn stop_accepting(&mut self) {
        if let Some(q) = &self.quic {
            q.stop_accepting();
        }
        self.attempts.decide();
        self.turn_queued_away();
        self.tcp_links = None;
    }

    /// Closes as busy the TCP control connections that arrived while a sender was being
    /// proven and wait to be taken up.
    fn turn_queued_away(&mut self) {
        if let Some(links) = self.tcp_links.as_mut() {
            while let Ok(queued) = links.try_recv() {
                if let Ok(link) = queued {
                    refuse_busy(link);
                }
            }
        }
    }

    /// Turns others away while one proven sender is served, until [`Listener::resume`]: for a
    /// receiving end that serves senders one after another (`sluice bench --serve
    /// --keep-serving`). New QUIC connections are refused and new TCP control connections
    /// closed as busy.
    pub fn pause(&mut self) -> Paused {
        if let Some(t) = &self.tcp {
            t.set_busy(true);
        }
        self.attempts.decide();
        self.turn_queued_away();
        Paused(self.quic.as_ref().map(quic::Server::refuse_others))
    }

    /// Lets the next sender in after [`Listener::pause`].
    pub fn resume(&mut self, paused: Paused) {
        if let Some(refusing) = paused.0 {
            refusing.abort();
        }
        if let Some(t) = &self.tcp {
            t.set_busy(false);
        }
    }
}

/// A [`Listener`] turning others away; give it back to [`Listener::resume`].
#[derive(Debug)]
#[must_use]
pub struct Paused(Option<tokio::task::JoinHandle<()>>);

/// The address this host's traffic to the outside leaves from (the default route's source),
/// for a ticket of a receiver listening on every address: what another host can reach, where
/// loopback is reachable only from here. Loopback when there is no route out. Connecting a UDP
/// socket only looks up the route; nothing is sent.
fn outward_ip(v4: bool) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
    // Documentation addresses (RFC 5737, RFC 3849): routed by the default route, never used.
    let (any, out, local): (IpAddr, IpAddr, IpAddr) = if v4 {
        (
            Ipv4Addr::UNSPECIFIED.into(),
            Ipv4Addr::new(192, 0, 2, 1).into(),
            Ipv4Addr::LOCALHOST.into(),
        )
    } else {
        (
            Ipv6Addr::UNSPECIFIED.into(),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
            Ipv6Addr::LOCALHOST.into(),
        )
    };
    UdpSocket::bind((any, 0))
        .and_then(|s| {
            s.connect((out, 9))?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(local)
}

/// Binds what `config.transport` asks for. Both transports share one port number, so one
/// ticket names both: with port 0, a UDP port whose TCP twin is taken is given back and another
/// is tried.
fn listen_on(
    listen: SocketAddr,
    identity: &Identity,
    config: &Config,
) -> Result<(Option<quic::Server>, Option<tcp::Server>)> {
    match config.transport {
        Choice::Quic => Ok((Some(quic::Server::bind(listen, identity, config)?), None)),
        Choice::Tcp => Ok((None, Some(tcp::Server::bind(listen, identity, config)?))),
        Choice::Auto => {
            let mut tries = 0;
            loop {
                let quic = quic::Server::bind(listen, identity, config)?;
                let mut at = listen;
                at.set_port(quic.local_addr()?.port());
                match tcp::Server::bind(at, identity, config) {
                    Ok(tcp) => return Ok((Some(quic), Some(tcp))),
                    Err(e) if listen.port() == 0 && tries < 8 => {
                        tracing::debug!(%e, "TCP twin of a UDP port taken; trying another");
                        tries += 1;
                    }
                    Err(e) => {
                        return Err(Error::Connection {
                            peer: at.to_string(),
                            detail: format!(
                                "{e} (the receiver listens on UDP and TCP at one port; \
                                 --transport quic listens on UDP alone)"
                            ),
                        })
                    }
                }
            }
        }
    }
}

/// Connection attempts that fail before a control channel opens (a handshake error, a stray
/// packet, a client that never says Hello) after which the receiver gives up waiting.
const MAX_FAILED_ATTEMPTS: u32 = 16;

/// QUIC handshakes in progress at once; past this, new ones are refused until one ends (each
/// is bounded by [`HELLO_DEADLINE`]), so a flood of Initials cannot make the receiver hold
/// more.
const MAX_HANDSHAKES: usize = 16;

/// Waits for the first connection, on either transport, that completes its handshake and opens
/// its control channel within [`HELLO_DEADLINE`]. A failed attempt is reported and
/// does not end the wait: one stray or hostile packet must not stop a receiver.
async fn accept(
    quic: Option<&quic::Server>,
    tcp_links: &mut Option<tokio::sync::mpsc::Receiver<Result<Arc<dyn Link>>>>,
    attempts: &mut Attempts,
) -> Result<(Arc<dyn Link>, ControlChannel)> {
    let Attempts { pending, race } = attempts;
    let mut failed = 0;
    let deadline = HELLO_DEADLINE;
    let opened = move |link: Arc<dyn Link>, race: Arc<Race>| async move {
        race.enter(&link)?;
        let control = tokio::time::timeout(deadline, link.accept_control())
            .await
            .map_err(|_| {
                conn_error(link.peer())(&format!(
                    "no control channel within {} s",
                    deadline.as_secs()
                ))
            })
            .and_then(|c| c);
        // A failed attempt leaves the race, and its link is dropped (closed): held there, a
        // connection that never opened its control channel stayed open until a sender won.
        if control.is_err() {
            race.leave(&link);
        }
        Ok::<_, Error>((link, control?))
    };
    loop {
        tokio::select! {
            incoming = async { quic?.incoming().await }, if quic.is_some() => {
                let Some(incoming) = incoming else {
                    return Err(Error::Connection {
                        peer: "none".into(),
                        detail: "endpoint closed before a sender connected".into(),
                    });
                };
                // Address validation (a Retry round trip) once anything else is under way or
                // has failed: the first sender is answered at once (a round trip less, 0.3 s
                // at 300 ms), while a flood of Initials from spoofed addresses gets no
                // handshake, nor the work and replies that come with one, beyond the first.
                // Before validation QUIC holds replies to three times what arrived.
                let busy = !pending.is_empty() || failed > 0;
                if busy && !incoming.remote_address_validated() && incoming.may_retry() {
                    if let Err(e) = incoming.retry() {
                        e.into_incoming().ignore();
                    }
                    continue;
                }
                if pending.len() >= MAX_HANDSHAKES {
                    tracing::warn!("too many QUIC handshakes at once; {} refused", incoming.remote_address());
                    incoming.refuse();
                    continue;
                }
                let server = quic.expect("guarded by the select").clone();
                let race = race.clone();
                pending.spawn(async move {
                    let handshake = tokio::time::timeout(deadline, server.handshake(incoming));
                    let link = handshake
                        .await
                        .map_err(|_| Error::Connection {
                            peer: "QUIC".into(),
                            detail: "handshake timed out".into(),
                        })??;
                    opened(link, race).await
                });
            }
            Some(link) = async { tcp_links.as_mut()?.recv().await }, if tcp_links.is_some() => {
                match link {
                    Ok(link) => {
                        pending.spawn(opened(link, race.clone()));
                    }
                    Err(e) => {
                        failed += 1;
                        tracing::warn!("connection attempt failed: {e}");
                        if failed >= MAX_FAILED_ATTEMPTS {
                            return Err(e);
                        }
                    }
                }
            }
            Some(done) = pending.join_next() => match done {
                Ok(Ok((link, control))) => {
                    tracing::debug!(transport = %link.kind(), peer = %link.peer(), "sender connected");
                    // The others run on: they are turned away as busy once this one is
                    // proven, or one of them is taken next if it is not.
                    race.leave(&link);
                    return Ok((link, control));
                }
                Ok(Err(e)) => {
                    failed += 1;
                    tracing::warn!("connection attempt failed: {e}");
                    if failed >= MAX_FAILED_ATTEMPTS {
                        return Err(e);
                    }
                }
                Err(e) => return Err(Error::io("accepting a connection")(std::io::Error::other(e.to_string()))),
            },
        }
    }
}

/// Links racing to be the one a receiving end serves: once one is proven, every other is
/// closed as busy, those whose control channel is awaited at once and those still in their
/// handshake as soon as it completes. Only dropped, a TCP link's tasks kept its connection open
/// and its sender waited for a Welcome for good; an aborted QUIC handshake was cut with no
/// reason, and its sender told to run the same command again.
#[derive(Default)]
struct Race {
    state: std::sync::Mutex<RaceState>,
}

#[derive(Default)]
struct RaceState {
    won: bool,
    waiting: Vec<Arc<dyn Link>>,
}

impl Race {
    /// Enters `link` in the race, or closes it as busy if the race is over.
    fn enter(&self, link: &Arc<dyn Link>) -> Result<()> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.won {
            refuse_busy(link.clone());
            return Err(conn_error(link.peer())(
                &"turned away: another sender came first",
            ));
        }
        state.waiting.push(link.clone());
        Ok(())
    }

    /// Takes `link` out of the race: it has been handed to the caller.
    fn leave(&self, link: &Arc<dyn Link>) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.waiting.retain(|w| !Arc::ptr_eq(w, link));
    }

    /// Ends the race: those still in it are closed as busy, and so is any that enters later.
    fn decide(&self) {
        let others = {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            state.won = true;
            std::mem::take(&mut state.waiting)
        };
        for other in others {
            refuse_busy(other);
        }
    }
}

/// What a receiving end tells a sender it turns away with [`CLOSED_BUSY`].
const BUSY_REASON: &[u8] = b"the receiver is serving another sender";

/// Closes `link` as busy (another sender is being served), in a task of its own.
fn refuse_busy(link: Arc<dyn Link>) {
    tokio::spawn(async move {
        link.close(CLOSED_BUSY, BUSY_REASON).await;
    });
}

/// Notices a peer from which nothing at all arrives for the idle timeout. QUIC's own idle timer
/// stretches to three probe timeouts, and those grow with an RTT estimate that a stalled queue
/// inflated: across a link that went dark a receiver was seen waiting on past 16 s with a 5 s
/// timeout. Counting the bytes the link received says it plainly, on either transport.
#[derive(Debug)]
pub(crate) struct Silence {
    last: u64,
    since: std::time::Instant,
}

impl Silence {
    pub(crate) fn new() -> Self {
        Self {
            last: 0,
            since: std::time::Instant::now(),
        }
    }

    /// An error once `link` has received nothing for `limit`; `who` is the peer's role and
    /// `resume` what to tell the user about running again.
    pub(crate) fn check(
        &mut self,
        link: &dyn Link,
        limit: Duration,
        who: &str,
        resume: &str,
    ) -> Result<()> {
        let received = link.path().udp_rx_bytes;
        if received != self.last {
            self.last = received;
            self.since = std::time::Instant::now();
            return Ok(());
        }
        if self.since.elapsed() < limit {
            return Ok(());
        }
        Err(Error::Connection {
            peer: link.peer().to_string(),
            detail: format!(
                "timed out: no packet from the {who} for {} s; {resume}",
                limit.as_secs()
            ),
        })
    }
}

/// A single-threaded tokio runtime for a network thread.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(crate::burst::before_park)
        .build()
        .map_err(Error::io("starting async runtime"))
}

/// Stamps a transfer's summary with its wall time and the bytes its link moved.
pub(crate) fn finish_summary(
    result: Result<crate::progress::Summary>,
    started: std::time::Instant,
    link: &dyn Link,
) -> Result<crate::progress::Summary> {
    let path = link.path();
    result.map(|mut s| {
        s.elapsed = started.elapsed();
        s.wire_bytes = path.udp_tx_bytes + path.udp_rx_bytes;
        s.path = path;
        s.transport = link.kind().name();
        s
    })
}

/// Waits (at most half a second) for `link` to settle how it ended, then names it in `result`'s
/// connection error: the peer's reason says more than "connection lost". A peer that aborted
/// for a local failure of its own becomes [`Error::PeerFailed`]. `who` is the peer's role,
/// `resume` what to tell the user about running again.
pub async fn explain<T>(
    result: Result<T>,
    link: &dyn Link,
    who: &str,
    idle_timeout: Duration,
    resume: &str,
) -> Result<T> {
    let (peer, detail) = match result {
        Err(Error::Connection { peer, detail }) => (peer, detail),
        // A local failure at the peer (an I/O error, its disk full) is that, not a refusal
        // of this end: `send` then exits as `copy` does for the same failure (5 or 6).
        Err(Error::Session(SessionError::Peer { code, message }))
            if matches!(code, ErrorCode::Io | ErrorCode::NoSpace) =>
        {
            let kind = match code {
                ErrorCode::NoSpace => ErrorKind::NoSpace,
                _ => ErrorKind::Local,
            };
            return Err(Error::PeerFailed {
                who: who.to_owned(),
                message,
                kind,
            });
        }
        _ => return result,
    };
    if link.ended().is_none() {
        let _ = tokio::time::timeout(Duration::from_millis(500), link.closed()).await;
    }
    let detail = match link.ended() {
        Some(Ended::ByPeer {
            code: CLOSED_BUSY, ..
        }) => return Err(Error::Busy { peer }),
        Some(Ended::ByPeer { code, reason }) if code != 0 || !reason.is_empty() => {
            format!("{who} aborted: {reason}")
        }
        // QUIC's idle timeout is the shorter of the two sides' (`--idle-timeout` at either).
        Some(Ended::TimedOut) => format!(
            "timed out: no packet from the {who} within the idle timeout ({} s here, or the \
             {who}'s own if shorter); {resume}",
            idle_timeout.as_secs()
        ),
        Some(Ended::Lost(why)) if why.contains("reset") || why.contains("closed") => {
            format!("the {who}'s connection was cut ({why}); {resume}")
        }
        _ => detail,
    };
    Err(Error::Connection { peer, detail })
}

pub(crate) fn conn_error(peer: SocketAddr) -> impl Fn(&dyn fmt::Display) -> Error + Copy {
    move |e| Error::Connection {
        peer: peer.to_string(),
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wildcard receiver's ticket names an address of this host of the same family: its
    /// route out where there is one (an address bound to a local interface), else loopback.
    #[test]
    fn a_wildcard_is_advertised_as_an_address_of_this_host() {
        let ip = outward_ip(true);
        assert!(ip.is_ipv4() && !ip.is_unspecified(), "{ip}");
        std::net::UdpSocket::bind((ip, 0)).expect("an address of this host");
        assert!(outward_ip(false).is_ipv6());
    }
}
