//! The QUIC transport's sockets: quinn endpoints on UDP sockets sized for bulk transfer.
//!
//! The kernel's default UDP receive buffer (208 KiB) overflows during bursts at multi-Gbit/s, and
//! every overflow is a loss the congestion controller reacts to. Sockets are made with the
//! configured buffer size (the kernel caps it at `net.core.rmem_max`/`wmem_max`).

use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use sluice_quic::tls::{LOOPBACK_DATAGRAM, MAX_GSO_BYTES};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::error::{Error, Result};

/// A UDP socket bound to `addr` with large buffers.
pub fn udp_socket(addr: SocketAddr, config: &Config) -> Result<UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(Error::io("creating UDP socket"))?;
    // Best effort: a smaller buffer only costs throughput.
    let _ = sock.set_recv_buffer_size(config.udp_buffer);
    let _ = sock.set_send_buffer_size(config.udp_buffer);
    sock.bind(&addr.into()).map_err(bind_error(addr, "UDP"))?;
    Ok(sock.into())
}

/// Why binding `addr` failed, with what the user can do about it.
pub(crate) fn bind_error(
    addr: SocketAddr,
    proto: &'static str,
) -> impl FnOnce(std::io::Error) -> Error {
    move |e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "; another program holds this port: choose another with --listen (port 0 takes any free one)"
            }
            std::io::ErrorKind::PermissionDenied => {
                "; ports below 1024 need root: choose a port from 1024 up with --listen"
            }
            std::io::ErrorKind::AddrNotAvailable => {
                "; this host has no such address: --listen takes one of its own addresses, or 0.0.0.0"
            }
            _ => "",
        };
        // A local failure (exit 5), not an unreachable peer.
        Error::Io {
            what: proto,
            source: std::io::Error::new(e.kind(), format!("cannot bind {addr}: {e}{hint}")),
        }
    }
}

/// A quinn endpoint on `socket`, serving `server` if given. Must run inside a tokio runtime.
///
/// Every endpoint accepts datagrams up to [`LOOPBACK_DATAGRAM`] bytes (quinn's default of 1,472
/// would cap a loopback peer's packets). `datagram_size` is this endpoint's own fixed packet
/// size, if any: GSO sends are then cut to what one `sendmsg` may carry.
pub fn endpoint(
    socket: UdpSocket,
    server: Option<quinn::ServerConfig>,
    datagram_size: Option<u16>,
) -> Result<quinn::Endpoint> {
    let err = |e| Error::io("starting QUIC endpoint")(e);
    let runtime =
        quinn::default_runtime().ok_or_else(|| err(std::io::Error::other("no async runtime")))?;
    let mut config = quinn::EndpointConfig::default();
    sluice_quic::tls::without_connection_ids(&mut config);
    config
        .max_udp_payload_size(LOOPBACK_DATAGRAM)
        .map_err(|e| err(std::io::Error::other(e.to_string())))?;
    let socket = runtime.wrap_udp_socket(socket).map_err(err)?;
    let socket: Arc<dyn quinn::AsyncUdpSocket> = match datagram_size {
        Some(size) => Arc::new(GsoCapped {
            segments: (MAX_GSO_BYTES / usize::from(size)).max(1),
            inner: socket,
        }),
        None => socket,
    };
    quinn::Endpoint::new_with_abstract_socket(config, server, socket, runtime).map_err(err)
}

/// A UDP socket whose GSO sends carry at most `segments` datagrams. quinn batches up to 10
/// datagrams into one `sendmsg`; at 16,000 bytes each that is past the kernel's 64 KiB limit,
/// and quinn-udp drops such a batch without an error.
#[derive(Debug)]
struct GsoCapped {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    segments: usize,
}

impl quinn::AsyncUdpSocket for GsoCapped {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments().min(self.segments)
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Closes `conn` and waits until the CONNECTION_CLOSE packet has left the socket (at most
/// 200 ms). Nothing to do if the connection is closed already (the peer closed it first).
///
/// Not `Endpoint::wait_idle`: that waits out the draining period, three probe timeouts (~80 ms
/// on loopback, with the peer's 25 ms ACK delay in each), after the close is long sent. A lost
/// close costs the peer only its bounded wait for it.
pub(crate) async fn close(conn: &quinn::Connection, code: u32, reason: &[u8]) {
    if conn.close_reason().is_some() {
        return;
    }
    let sent = conn.stats().udp_tx.datagrams;
    conn.close(code.into(), reason);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(200);
    while conn.stats().udp_tx.datagrams == sent && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Whether this host has a route to `peer`: a UDP socket's `connect` looks the route up and
/// sends nothing. QUIC's packets to a network this host cannot reach fail in the kernel, which
/// quinn only logs, so a sender waited out the whole answer time and then blamed the receiver
/// ("is the receiving sluice still running"); TCP says "Network is unreachable" at once. Where
/// the lookup itself cannot be made, this says nothing and the connection tries.
pub(crate) fn route_to(peer: SocketAddr) -> std::result::Result<(), std::io::Error> {
    let Ok(probe) = std::net::UdpSocket::bind(any_addr_for(peer)) else {
        return Ok(());
    };
    match probe.connect(peer) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            Err(e)
        }
        _ => Ok(()),
    }
}

/// The address to bind a client socket to for reaching `peer`.
pub fn any_addr_for(peer: SocketAddr) -> SocketAddr {
    if peer.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    }
}

/// What the connection's flow control and packets did so far, for a stall report: frames that
/// say a side was blocked, the credit it was given, and packets each way.
pub(crate) fn flow_figures(conn: &quinn::Connection) -> String {
    let s = conn.stats();
    format!(
        "sent: {} packets, {} data_blocked, {} stream_data_blocked, {} max_data, {} max_stream_data; \
         received: {} packets, {} data_blocked, {} stream_data_blocked, {} max_data, {} max_stream_data; \
         cwnd {} bytes, RTT {} ms, {} lost packets",
        s.udp_tx.datagrams,
        s.frame_tx.data_blocked,
        s.frame_tx.stream_data_blocked,
        s.frame_tx.max_data,
        s.frame_tx.max_stream_data,
        s.udp_rx.datagrams,
        s.frame_rx.data_blocked,
        s.frame_rx.stream_data_blocked,
        s.frame_rx.max_data,
        s.frame_rx.max_stream_data,
        s.path.cwnd,
        s.path.rtt.as_millis(),
        s.path.lost_packets,
    )
}
