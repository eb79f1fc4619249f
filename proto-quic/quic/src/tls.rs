//! TLS 1.3 for QUIC: a fresh self-signed identity per receiver, and a sender that trusts exactly
//! the certificate whose fingerprint its ticket names.
//!
//! There is no certificate authority. The receiver generates a key pair and certificate each run
//! ([`Identity::generate`]) and prints the certificate's BLAKE3 fingerprint in its ticket. The
//! sender's verifier ([`PinnedVerifier`]) accepts that certificate and nothing else, and still
//! checks the handshake signature, so only the holder of the private key can complete it. The
//! secret in the ticket then authenticates the sender inside the encrypted session.
//!
//! AES-128-GCM is put first among the cipher suites: it is the cheapest AEAD on CPUs with AES-NI
//! (see `docs/decisions.md`).

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use sluice_proto::ticket::hex;
use sluice_proto::{ALPN, TCP_ALPN};

/// The server name the sender asks for; the pinned verifier ignores it.
pub const SERVER_NAME: &str = "sluice";

/// Errors setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Generating the certificate failed.
    #[error("generating the receiver certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// quinn refused the rustls configuration.
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
    /// The TLS handshake with the receiver failed: most often its certificate is not the one
    /// the ticket pins (another receiver now listens there, or the ticket was mistyped).
    #[error("the TLS handshake with the receiver failed: {0}")]
    Handshake(String),
}

/// A receiver's certificate and key.
#[derive(Debug)]
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    /// Generates a fresh self-signed certificate.
    pub fn generate() -> Result<Self, TlsError> {
        let c = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])?;
        Ok(Self {
            cert: c.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(c.key_pair.serialize_der()),
        })
    }

    /// BLAKE3 of the certificate's DER encoding: what a ticket pins.
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.cert)
    }
}

/// BLAKE3 of a DER certificate.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    *blake3::hash(cert.as_ref()).as_bytes()
}

/// The crypto provider: aws-lc-rs with AES-128-GCM preferred.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

/// QUIC transport parameters that decide throughput on a long link.
#[derive(Debug, Clone)]
pub struct TransportTuning {
    /// Bytes the peer may have in flight on one stream. Sized from the bandwidth-delay product.
    pub stream_window: u64,
    /// Bytes the peer may have in flight on the whole connection.
    pub connection_window: u64,
    /// Bytes this side keeps unacknowledged in its send buffer.
    pub send_window: u64,
    /// Unidirectional streams the peer may open at once.
    pub max_uni_streams: u32,
    /// Time without any packet after which the peer is declared gone.
    pub idle_timeout: Duration,
    /// Ask the peer to acknowledge only every this many ack-eliciting packets (the QUIC
    /// ACK-frequency extension); 0 keeps quinn's default of every second packet. Fewer ACKs
    /// cost both ends less CPU per byte.
    pub ack_eliciting_threshold: u32,
    /// The longest the peer may delay an acknowledgement when the ACK-frequency extension is on.
    pub max_ack_delay: Duration,
    /// The congestion controller.
    pub congestion: Congestion,
    /// Ceiling and path hints for [`Congestion::Sluice`] (the other controllers ignore them).
    pub rate: crate::congestion::RateConfig,
    /// quinn's first RTT estimate before any sample (its default, 333 ms, when `None`). A path
    /// hint sets it, so the first pacing matches the path.
    pub initial_rtt: Option<Duration>,
    /// Send every packet at this UDP payload size, with path-MTU discovery off; `None` lets
    /// discovery settle on a size (at most 1,452 bytes). For loopback peers, whose MTU is
    /// 64 KiB: quinn's CPU cost is per packet (header, AEAD call, tracking, ACK ranges), so
    /// 16,000-byte packets cost far less per byte than 1,452-byte ones.
    pub datagram_size: Option<u16>,
    /// Later packets acknowledged before a packet is declared lost ([`PACKET_THRESHOLD`]).
    pub packet_threshold: u32,
}

/// The UDP payload size used towards loopback peers. quinn refuses packets of 16 KiB and more
/// (a 2-byte length field), and four of these fit one 64 KiB GSO send.
pub const LOOPBACK_DATAGRAM: u16 = 16_000;

/// The most bytes one GSO `sendmsg` may carry (the kernel rejects more than 65,507 over IPv4,
/// 65,487 over IPv6, and quinn-udp drops such a batch without an error).
pub const MAX_GSO_BYTES: usize = 64_000;

/// Which congestion controller paces the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    /// Loss-based (quinn's default): backs off on every loss, like TCP cubic.
    Cubic,
    /// Model-based (quinn's experimental BBR): paces at the measured bottleneck rate, so random
    /// loss on a long link does not collapse the rate.
    Bbr,
    /// BBR with its window capped near the measured bandwidth-delay product
    /// ([`crate::cap`]): about half the bytes on the wire of plain BBR at a bottleneck with a
    /// short queue (plain BBR loses about half its packets there), at some cost in time.
    BbrCapped,
    /// Sluice's loss-tolerant controller ([`crate::congestion`]): paces at the measured
    /// bottleneck rate, ignores random loss, backs off for a standing queue or clustered loss.
    Sluice,
}

impl Default for TransportTuning {
    /// Settings safe on any path: gap-safe stream windows, Sluice's controller, path-MTU
    /// discovery. The engine's `Config` derives the tuned values; this is for tests and tools.
    fn default() -> Self {
        Self {
            stream_window: 1536 << 10,
            connection_window: 128 << 20,
            send_window: 128 << 20,
            max_uni_streams: 8,
            idle_timeout: Duration::from_secs(30),
            ack_eliciting_threshold: 16,
            max_ack_delay: Duration::from_millis(25),
            congestion: Congestion::Sluice,
            rate: crate::congestion::RateConfig::default(),
            initial_rtt: None,
            datagram_size: None,
            packet_threshold: PACKET_THRESHOLD,
        }
    }
}

/// The longest a side stays silent on an open connection. A side that has nothing to send,
/// typically a sender waiting for flow-control credit, is otherwise silent until its PTO, which
/// doubles each time it goes unanswered; if the window updates that would have woken it were
/// lost in a burst, both sides can then stay silent until the idle timeout ends the transfer.
/// Seen on wan-emu (200 Mbit/s, 100 ms, 1 % loss in bursts of 10 frames each way): the
/// receiver's MAX_STREAM_DATA frames were lost, the sender idled with every stream blocked,
/// and the six packets the receiver sent in the next 24 s were all lost too (the emulator's
/// burst state advances per frame, so a quiet direction stays in it). A PING every 250 ms
/// from both sides keeps frames crossing, so a lost frame is detected and sent again within a
/// few round trips; it costs nothing while data flows (only an idle connection pings).
pub const KEEP_ALIVE: Duration = Duration::from_millis(250);

/// A packet is declared lost once this many later ones are acknowledged (or, as before, once
/// 9/8 of the RTT has passed since it was sent). quinn's default, 3, takes any reordering for
/// loss: a path whose packets arrive up to 1 ms out of order at 200 Mbit/s (17 packets per
/// millisecond) had most of them declared lost, sent again and counted as congestion (the
/// simulator: 11–14 % of the link). 256 is about 15 ms of packets at 200 Mbit/s and 3 ms at
/// 1 Gbit/s, so a real loss on a fast path is still found long before the time rule would;
/// on slower paths the time rule finds it, 1/8 of an RTT later than the count would have.
/// quinn cannot raise the threshold only once reordering is seen (RFC 9002 allows it), so
/// it is set for every connection; the simulator's grid moved by at most 2 points either way
/// (`docs/congestion.md`, "Reordering").
pub const PACKET_THRESHOLD: u32 = 256;

impl TransportTuning {
    fn build(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        let vi = |v: u64| quinn::VarInt::from_u64(v).unwrap_or(quinn::VarInt::MAX);
        t.packet_threshold(self.packet_threshold)
            .stream_receive_window(vi(self.stream_window))
            .receive_window(vi(self.connection_window))
            .send_window(self.send_window)
            .max_concurrent_uni_streams(self.max_uni_streams.into())
            .max_concurrent_bidi_streams(1u32.into())
            .keep_alive_interval(Some((self.idle_timeout / 4).min(KEEP_ALIVE)))
            .max_idle_timeout(Some(
                self.idle_timeout
                    .try_into()
                    .unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::MAX)),
            ));
        if let Some(rtt) = self.initial_rtt {
            t.initial_rtt(rtt);
        }
        if let Some(size) = self.datagram_size {
            t.initial_mtu(size).min_mtu(size).mtu_discovery_config(None);
        }
        // A congestion window smaller than one packet sends nothing until a loss probe: start
        // with room for 16 packets when packets are large.
        let initial_window = self.datagram_size.map(|s| 16 * u64::from(s));
        match self.congestion {
            Congestion::Bbr | Congestion::BbrCapped => {
                let mut cc = quinn::congestion::BbrConfig::default();
                if let Some(w) = initial_window {
                    cc.initial_window(w);
                }
                if self.congestion == Congestion::BbrCapped {
                    t.congestion_controller_factory(Arc::new(crate::cap::CappedBbrConfig {
                        bbr: Arc::new(cc),
                        ack_every: self.ack_eliciting_threshold,
                    }));
                } else {
                    t.congestion_controller_factory(Arc::new(cc));
                }
            }
            Congestion::Sluice => {
                let mut cc = self.rate.clone();
                if cc.initial_window.is_none() {
                    cc.initial_window = initial_window;
                }
                cc.ack_every = Some(self.ack_eliciting_threshold);
                t.congestion_controller_factory(Arc::new(cc));
            }
            Congestion::Cubic => {
                if let Some(w) = initial_window {
                    let mut cc = quinn::congestion::CubicConfig::default();
                    cc.initial_window(w);
                    t.congestion_controller_factory(Arc::new(cc));
                }
            }
        }
        if self.ack_eliciting_threshold > 0 {
            let mut ack = quinn::AckFrequencyConfig::default();
            ack.ack_eliciting_threshold(self.ack_eliciting_threshold.into())
                .max_ack_delay(Some(self.max_ack_delay));
            t.ack_frequency_config(Some(ack));
        }
        t
    }
}

/// The receiver's QUIC server configuration for `identity`.
pub fn server_config(
    identity: &Identity,
    tuning: &TransportTuning,
) -> Result<quinn::ServerConfig, TlsError> {
    let tls = server_tls(identity, ALPN)?;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(Arc::new(tuning.build()));
    Ok(cfg)
}

/// The receiver's TLS configuration for the TCP transport: the same identity, TLS 1.3 only,
/// [`TCP_ALPN`], and no session tickets (no connection is ever resumed, and a ticket the
/// client never reads would sit in its socket).
pub fn tcp_server_config(identity: &Identity) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut tls = server_tls(identity, TCP_ALPN)?;
    tls.send_tls13_tickets = 0;
    Ok(Arc::new(tls))
}

fn server_tls(identity: &Identity, alpn: &[u8]) -> Result<rustls::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(
            vec![identity.cert.clone()],
            PrivateKeyDer::Pkcs8(identity.key.clone_key()),
        )?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.max_early_data_size = 0;
    Ok(tls)
}

/// The sender's QUIC client configuration, trusting only the certificate with `fingerprint`.
pub fn client_config(
    fingerprint: [u8; 32],
    tuning: &TransportTuning,
) -> Result<quinn::ClientConfig, TlsError> {
    let tls = client_tls(fingerprint, ALPN)?;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(Arc::new(tuning.build()));
    Ok(cfg)
}

/// The sender's TLS configuration for the TCP transport: it trusts the certificate whose
/// fingerprint the ticket names, as over QUIC.
pub fn tcp_client_config(fingerprint: [u8; 32]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    Ok(Arc::new(client_tls(fingerprint, TCP_ALPN)?))
}

fn client_tls(fingerprint: [u8; 32], alpn: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedVerifier {
        fingerprint,
        provider: provider.clone(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// Accepts exactly one certificate, named by its BLAKE3 fingerprint, and checks the handshake
/// signature made with its key.
#[derive(Debug)]
pub struct PinnedVerifier {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity);
        if got == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "receiver certificate fingerprint {} does not match the ticket's {}: \
                 wrong ticket, or another process answered at that address",
                hex(&got),
                hex(&self.fingerprint)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not supported".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Connection IDs of no bytes: a Sluice endpoint carries one connection (a receiver answers one
/// sender at a time, and a sender's endpoint makes one connection), so packets are routed by
/// address, and the 8 bytes quinn puts in every short header by default are 0.5 % of a
/// 1,452-byte packet (simulator, 200 Mbit/s, 100 ms RTT: 1.024 → 1.018 bytes on the wire per
/// payload byte). The cost: a peer whose address changes mid-transfer (a NAT that rebinds) is
/// not followed to its new address.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoConnectionIds;

impl quinn::ConnectionIdGenerator for NoConnectionIds {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&[])
    }

    fn cid_len(&self) -> usize {
        0
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Makes `config`'s endpoint use [`NoConnectionIds`].
pub fn without_connection_ids(config: &mut quinn::EndpointConfig) {
    config.cid_generator(|| Box::new(NoConnectionIds));
}
