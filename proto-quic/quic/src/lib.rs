//! Sluice's QUIC and TLS glue: what binds the sans-IO protocol (`sluice-proto`) to quinn and
//! rustls.
//!
//! - [`tls`]: the receiver's self-signed certificate, the sender's verifier pinned to its
//!   fingerprint, and quinn's transport settings ([`tls::TransportTuning`]).
//! - [`congestion`]: Sluice's own congestion controller for long, lossy links.
//! - [`cap`]: quinn's BBR with its window capped (`--congestion bbr-capped`).
//! - [`netsim`]: a bottleneck with a virtual clock that drives real quinn-proto connections,
//!   for deterministic tests of the controllers (`tests/netsim.rs`, `examples/netsim_sweep.rs`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cap;
pub mod congestion;
pub mod netsim;
pub mod tls;
