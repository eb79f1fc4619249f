//! Binding quinn endpoints to UDP sockets sized for bulk transfer.
//!
//! The kernel's default UDP receive buffer (208 KiB) overflows during bursts at multi-Gbit/s, and
//! every overflow is a loss the congestion controller reacts to. Sockets are made with the
//! configured buffer size (the kernel caps it at `net.core.rmem_max`/`wmem_max`).

use std::net::{SocketAddr, UdpSocket};

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
    sock.bind(&addr.into())
        .map_err(Error::io("binding UDP socket"))?;
    Ok(sock.into())
}

/// A quinn endpoint on `socket`, serving `server` if given. Must run inside a tokio runtime.
pub fn endpoint(socket: UdpSocket, server: Option<quinn::ServerConfig>) -> Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime().ok_or_else(|| {
        Error::io("starting QUIC endpoint")(std::io::Error::other("no async runtime"))
    })?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
        .map_err(Error::io("starting QUIC endpoint"))
}

/// A single-threaded tokio runtime for a network thread.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::io("starting async runtime"))
}

/// Stamps a transfer's summary with its wall time and the UDP bytes its connection moved.
pub(crate) fn finish_summary(
    result: Result<crate::progress::Summary>,
    started: std::time::Instant,
    conn: &quinn::Connection,
) -> Result<crate::progress::Summary> {
    let stats = conn.stats();
    result.map(|mut s| {
        s.elapsed = started.elapsed();
        s.wire_bytes = stats.udp_tx.bytes + stats.udp_rx.bytes;
        s
    })
}

/// The address to bind a client socket to for reaching `peer`.
pub fn any_addr_for(peer: SocketAddr) -> SocketAddr {
    if peer.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    }
}

pub(crate) fn conn_error(peer: SocketAddr) -> impl Fn(&dyn std::fmt::Display) -> Error + Copy {
    move |e| Error::Connection {
        peer: peer.to_string(),
        detail: e.to_string(),
    }
}
