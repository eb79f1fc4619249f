//! The Sluice wire protocol, sans-IO.
//!
//! Split the way quinn splits `quinn-proto` from `quinn`: everything that decides *what* goes
//! on the wire lives here, in [`message`], [`codec`], [`geometry`], [`path`], [`exclude`],
//! [`session`], [`splice`] and [`ticket`]. These modules take bytes and return typed messages, events or
//! errors; they never touch a socket, a clock, a file or TLS, and the crate depends on nothing
//! but `blake3`, `thiserror` and `globset` (pure computation: the meaning of exclude patterns),
//! which is what lets them be fuzzed (`fuzz/`) and property tested cheaply. The
//! glue that binds the protocol to real QUIC and TLS — certificates, the pinned verifier,
//! quinn's transport settings, the congestion controller — is the `sluice-quic` crate beside
//! this one (`proto-quic/quic/`).
//!
//! A transfer uses one connection. The sender opens one bidirectional *control* stream that
//! carries length-prefixed [`message::Message`]s, and several unidirectional *data* streams (or
//! TCP connections) that carry [`message::BlockHeader`]s each followed by the block's payload.
//! `docs/protocol.md` gives every message byte by byte.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod anchor;
pub mod codec;
pub mod exclude;
pub mod geometry;
pub mod message;
pub mod path;
pub mod session;
pub mod splice;
pub mod ticket;
pub mod unit;

/// The protocol version this build speaks. Peers with a different version are refused in
/// the handshake with [`message::ErrorCode::Version`].
pub const PROTOCOL_VERSION: u16 = 16;

/// The ALPN identifier negotiated in the TLS handshake; it carries the major version so a peer of
/// another version fails the handshake early with a clear TLS alert.
pub const ALPN: &[u8] = b"sluice/16";

/// The ALPN identifier of the TCP transport (TLS 1.3 over TCP), with the same major version.
pub const TCP_ALPN: &[u8] = b"sluice-tcp/16";
