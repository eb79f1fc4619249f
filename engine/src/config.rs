//! The one place where Sluice's tunables live, each default with the reason for its value.

use std::time::Duration;

use crate::pack::Compress;
use sluice_proto::exclude::Excludes;
use sluice_quic::congestion::RateConfig;
pub use sluice_quic::tls::Congestion;
use sluice_quic::tls::{TransportTuning, LOOPBACK_DATAGRAM};

/// How a transfer is carried out. `Config::default()` is tuned for a fast LAN or loopback;
/// raise [`Config::window`] for links with a large bandwidth-delay product.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bytes per block: the unit of reading, hashing, verifying and writing, and the leaf of the
    /// per-file Merkle tree. 1 MiB: BLAKE3 needs ≥ 16 KiB per call to reach its SIMD speed,
    /// per-block overheads (a header, a syscall, a queue hop) vanish at this size, and the ring
    /// stays small. Must be a power of two from 1 KiB to 16 MiB.
    pub block_size: u32,
    /// Buffers in each side's ring. Together with `block_size` this bounds the memory the data
    /// path holds: 64 × 1 MiB = 64 MiB per side, whatever the file sizes. A sending ring starts
    /// here and grows with the measured bandwidth-delay product up to `ring_max`.
    pub ring_buffers: usize,
    /// The most buffers a sending ring grows to (`--max-ring`). A sender holds every block
    /// until the receiver acknowledges all of it, and with loss nearly every block waits a
    /// round trip more for a repaired packet: 1 Gbit/s at 300 ms and 1 % loss keeps ~2.5 ×
    /// its 37.5 MB bandwidth-delay product in the ring. 192 × 1 MiB bounds it; a sender on a
    /// LAN or loopback stays at `ring_buffers` (its bandwidth-delay product is small).
    pub ring_max: usize,
    /// Unidirectional QUIC streams carrying blocks at the start. Several streams keep one lost
    /// packet from stalling every block behind it (head-of-line blocking is per stream). The
    /// sender opens more as the measured bandwidth-delay product grows, up to `max_streams`.
    pub streams: usize,
    /// The most data streams: the sender's ceiling, and what a receiver allows. On a lossy path
    /// each stream carries at most [`GAP_SAFE_STREAM_WINDOW`] unread bytes, so a long fat link
    /// needs many: 64 × 1.5 MiB = 96 MiB, 2.5 times the bandwidth-delay product of 1 Gbit/s
    /// at 300 ms. The receiver allows no more streams than its ring has buffers, so every
    /// stream's reader can always get one.
    pub max_streams: usize,
    /// Flow-control window for the whole connection, bytes, and the most a receiver buffers.
    /// It must cover the bandwidth-delay product plus what waits for a lost packet's repair:
    /// 128 MiB is 3.6 × that of 1 Gbit/s at 300 ms. In the simulator at 1 Gbit/s, 300 ms and
    /// 1 % loss, 64 MiB held the flow to 64 % of the link after start-up, 128 MiB let it reach
    /// 80 % (`netsim_sweep`, `docs/congestion.md`). Towards loopback at most
    /// [`LOOPBACK_WINDOW`].
    pub window: u64,
    /// The user's ceiling on the sending rate, bytes per second (`--max-rate`); Sluice's
    /// congestion controller never paces above it.
    pub max_rate: Option<u64>,
    /// Path hint: the round-trip time, sizing the first window and quinn's first RTT estimate
    /// before anything is measured (`--rtt`).
    pub rtt_hint: Option<Duration>,
    /// Path hint: the bottleneck rate, bytes per second (`--rate`); with `rtt_hint` it sizes
    /// the first window.
    pub rate_hint: Option<u64>,
    /// A peer silent for this long is declared gone and the transfer fails with an error.
    pub idle_timeout: Duration,
    /// Use io_uring for file reads and writes; when false (or when the kernel refuses io_uring)
    /// plain positional reads and writes are used.
    pub io_uring: bool,
    /// Reads in flight on the sender. 2, not more: each block is hashed right after its read
    /// completes, and with 16 reads in flight the block has left the CPU cache by then (measured
    /// 3.08 GiB/s read+hash at depth 16 against 3.48 at depth 2, `cargo bench --bench
    /// source_read`; see `docs/decisions.md`).
    pub read_depth: u32,
    /// Writes in flight on the receiver; the kernel carries them out while the writer thread
    /// verifies the next blocks.
    pub write_depth: u32,
    /// Write blocks with `O_DIRECT`, bypassing the page cache, when their offset and length are
    /// multiples of 4 KiB (so not a file's partial last block, nor any block below 4 KiB);
    /// filesystems that refuse `O_DIRECT` go through the page cache. On this
    /// project's VM a 2 GiB `dd` into the page cache cost 4.98 s of CPU and into `O_DIRECT`
    /// 1.24 s: filling fresh page-cache pages is the receiver's largest cost, and a bulk transfer
    /// gains nothing from caching what it writes. See `docs/decisions.md`.
    pub direct_io: bool,
    /// Socket buffer size requested for the UDP socket (the kernel caps it at
    /// `net.core.rmem_max`/`wmem_max`). Large bursts at multi-Gbit/s overflow the 208 KiB
    /// default.
    pub udp_buffer: usize,
    /// Ask the peer to acknowledge every this many packets (QUIC ACK-frequency extension; 0 =
    /// quinn's default of every second packet). 16: each ACK costs both ends a packet's worth of
    /// work, and on loopback 16 cut user CPU of a 2 GiB copy by ~9% (4.5 s against 4.9 s); at
    /// 100 Mbit/s, 16 packets are still under 2 ms, so loss is detected as promptly.
    pub ack_every: u32,
    /// Congestion controller of the sending side; `None` chooses by the peer's address:
    /// Sluice's own ([`Congestion::Sluice`], `docs/congestion.md`), except cubic towards a
    /// loopback address. Over an emulated 200 Mbit/s, 100 ms RTT link with 1 % loss, cubic moved
    /// 19 MB in 120 s (1.2 Mbit/s), and quinn's BBR overran the 50 ms queue so far that a
    /// 256 MiB send died ("too many gaps in stream buffer"); on loopback, where nothing is lost,
    /// pacing costs ~10 % (`bench-mem` 864–874 vs 963–977 MB/s). See `docs/decisions.md`.
    pub congestion: Option<Congestion>,
    /// UDP payload bytes per QUIC packet. `None` chooses by the peer's address: 16,000 bytes,
    /// fixed, towards a loopback address (whose MTU is 64 KiB), else path-MTU discovery (at most
    /// 1,452 bytes, what any Ethernet path carries). `Some(0)`: discovery everywhere;
    /// `Some(n)`: `n` bytes, fixed, for a path known to carry them (1,200 to 16,000). quinn's
    /// cost is per packet, so larger packets cost less per byte: a 1 GiB loopback copy went
    /// from 575–623 MB/s at 1,452 bytes to 914–1,056 MB/s at 16,000 bytes in four-packet GSO
    /// sends. See `docs/decisions.md`.
    pub datagram_size: Option<u16>,
    /// Discard the receiver's partial files from interrupted runs instead of resuming them.
    pub restart: bool,
    /// Read and hash at the source every block the receiver holds, even those its resume
    /// journal vouches for. Without it, a resumed run of a source file whose identity, size,
    /// modification and change times are unchanged since the interrupted run takes the hashes
    /// the receiver verified then, and reads only what is missing: a resume after a kill at
    /// 50 % of 1 GiB otherwise spends ~0.2 CPU-s re-reading the kept half (`docs/decisions.md`).
    pub rehash: bool,
    /// Update existing destination files in place (no new file, no rename): a delta writes only
    /// the changed blocks. A crash or kill leaves old and new blocks mixed under the final name
    /// until the transfer is run again, which repairs it.
    pub inplace: bool,
    /// After every file is in place, remove entries of the transferred directories that the
    /// source no longer has (as `rsync --delete`). Off by default: extra files are left alone.
    pub delete: bool,
    /// Sender: what below the sources is left out (`--exclude`, `--exclude-from`). With
    /// `delete` the patterns go to the receiver too, whose deletion leaves what they match
    /// alone, as `rsync --delete` does. Default: none.
    pub excludes: Excludes,
    /// Sender, with `delete`: remove at the destination what the patterns match as well
    /// (`--delete-excluded`, as rsync's): the patterns are not sent.
    pub delete_excluded: bool,
    /// Receiver: let a sender delete entries it no longer has (`--allow-delete`). A ticket
    /// holder may otherwise only add and replace files, never remove them.
    pub allow_delete: bool,
    /// Receiver: let a sender write into existing files in place (`--allow-inplace`). Without
    /// it an in-place request is refused: a crash in the middle leaves a final name holding
    /// mixed content, which only the receiver's owner may choose to risk.
    pub allow_inplace: bool,
    /// Receiver: give entries the sender's permission bits as they are (setuid and setgid
    /// still dropped), not under this process's umask. `copy` sets it: one user owns both ends,
    /// and `cp -a` and `rsync -a` keep modes exactly.
    pub exact_modes: bool,
    /// Both ends: whether entries' owners and groups cross, and by name or by number
    /// (`--no-owner`, `--no-group`, `--numeric-ids`). A sender lists what this keeps; a
    /// receiver gives it only where it may give files away (root), and keeps setuid and setgid
    /// only on an entry given the source's owner and group. Default: both, by name, as
    /// `rsync -a`.
    pub ownership: crate::owners::Ownership,
    /// Receiver: the most manifest entries one sender may announce (`--max-entries`). The
    /// receiver keeps a record of a few hundred bytes per entry for the whole transfer, so this
    /// bounds the memory a sender can make it spend.
    pub max_entries: u32,
    /// Receiver: the most directory levels of a manifest path (`--max-depth`).
    pub max_depth: u32,
    /// Receiver: bytes of answers waiting for the sender to read them past which the receiver
    /// stops reading its requests (`--max-control-queue`).
    pub control_queue: usize,
    /// Either side: a transfer in which no byte is verified, kept or scanned for this long ends
    /// with an error naming the stall, even while the peer still answers keep-alives
    /// (`--stall-timeout`); for a database command, how long a server may leave every
    /// statement unanswered ([`crate::db::Database::stall_timeout`]). [`STALL_TIMEOUT`] by
    /// default.
    pub stall_timeout: Duration,
    /// Compare only: send no blocks, write nothing at the receiver, and report per file what
    /// differs (`sluice verify SRC TICKET`).
    pub dry_run: bool,
    /// Pack blocks with zstd (`--compress`): `Auto` where the link, not the CPU, is the
    /// bottleneck and the data shrinks (see [`crate::pack`]).
    pub compress: Compress,
    /// The zstd level for packed blocks.
    pub compress_level: i32,
    /// QUIC, TLS over TCP, or (the default) QUIC with TCP as the fallback where UDP gets no
    /// answer: see [`crate::transport`].
    pub transport: Transport,
    /// Sender: the file where each host's last measured path is kept, so that a QUIC connection
    /// to a host sent to before starts from half its last rate (see
    /// [`crate::transport::memory`]); `None` keeps nothing and always starts up afresh
    /// (`--fresh-start`). Not used with path hints (`--rtt`, `--rate`), which say it instead.
    pub path_memory: Option<std::path::PathBuf>,
}

/// [`Config::stall_timeout`]'s default: two minutes without progress is far beyond a busy
/// disk's or a congested link's pause, and short enough that a stuck run does not hold a
/// terminal or a job slot for long. A slow link that still carries data is no stall
/// (`progress::StallWatch`), nor a database statement that runs long on a server that
/// still answers.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(120);

impl Default for Config {
    fn default() -> Self {
        Self {
            block_size: 1 << 20,
            ring_buffers: 64,
            ring_max: 192,
            streams: 8,
            max_streams: 64,
            window: 128 << 20,
            max_rate: None,
            rtt_hint: None,
            rate_hint: None,
            idle_timeout: Duration::from_secs(30),
            io_uring: true,
            read_depth: 2,
            write_depth: 16,
            direct_io: true,
            udp_buffer: 8 << 20,
            ack_every: 16,
            congestion: None,
            datagram_size: None,
            restart: false,
            rehash: false,
            inplace: false,
            delete: false,
            excludes: Excludes::default(),
            delete_excluded: false,
            allow_delete: false,
            allow_inplace: false,
            exact_modes: false,
            ownership: crate::owners::Ownership::default(),
            max_entries: 2_000_000,
            max_depth: 256,
            control_queue: crate::control::BACKLOG_LIMIT,
            stall_timeout: STALL_TIMEOUT,
            dry_run: false,
            compress: Compress::Auto,
            compress_level: crate::pack::DEFAULT_LEVEL,
            transport: Transport::Auto,
            path_memory: None,
        }
    }
}

/// The most unread bytes one stream may hold on a path that can lose packets. quinn's stream
/// reassembler ends the connection ("too many gaps in stream buffer") when one stream's buffer
/// holds more than 1,024 separate pieces; each lost packet leaves a gap until it is repaired, so
/// a 32 MiB stream window on a link that drops a burst of packets kills the transfer (seen on
/// wan-emu at 200 Mbit/s, 100 ms RTT). quinn merges adjacent pieces before it counts them, so
/// a stream holds at most one piece per gap: 1.5 MiB is 1,311 packets of 1,200 bytes (QUIC's
/// least), 656 pieces if every other packet were lost. Throughput comes from more streams
/// ([`Config::max_streams`]). 768 KiB before: with 64 streams, 1 Gbit/s at 300 ms and 1 % loss
/// ran at 64 % of the link in the simulator, flow-controlled; 1.5 MiB gave 80 %.
pub const GAP_SAFE_STREAM_WINDOW: u64 = 1536 << 10;
// Every other 1,200-byte packet lost still leaves fewer pieces than quinn's limit of 1,024.
const _: () = assert!(GAP_SAFE_STREAM_WINDOW / 1200 / 2 < 1024);

/// The most flow-control window towards loopback, where the round trip is microseconds: more
/// buffers nothing faster, only more memory, and lets cubic overrun the receiver's UDP socket
/// buffer. With 64 MiB a 200 MB `sluice copy` on `/dev/shm` lost 10–14 % of its packets to that
/// overflow and sent them again (629–872 MB/s); with 16 MiB 2–7 % and 804–952 MB/s, and 2 GiB
/// copies ran as fast (978–1,033 against 912–1,030 MB/s, five runs each alternating). 8 MiB lost
/// almost nothing but was 4–5 % slower on 2 GiB.
pub const LOOPBACK_WINDOW: u64 = 16 << 20;

impl Config {
    /// A sending ring's first size and ceiling, in buffers: `ring_buffers` growing to
    /// `ring_max`, or `ring_max` from the start if that is smaller.
    pub fn sending_ring(&self) -> (usize, usize) {
        let ceiling = self.ring_max.max(2);
        (self.ring_buffers.clamp(2, ceiling), ceiling)
    }

    /// The QUIC transport tuning for a connection with `peer` (`None`: not known yet, so the
    /// settings that are safe on any path).
    pub fn transport_to(&self, peer: Option<std::net::IpAddr>) -> TransportTuning {
        // An IPv4 address seen through a dual-stack socket (::ffff:127.0.0.1) is loopback too.
        let loopback = peer.is_some_and(|ip| ip.to_canonical().is_loopback());
        let congestion = self.congestion.unwrap_or(if loopback {
            Congestion::Cubic
        } else {
            Congestion::Sluice
        });
        let datagram_size = match self.datagram_size {
            None if loopback => loopback_datagram(),
            None | Some(0) => None,
            Some(n) => Some(n.clamp(1200, LOOPBACK_DATAGRAM)),
        };
        // Its large packets need large windows to keep the CPU busy with payload rather than
        // flow-control updates, but not so large that the receiver's socket buffer overflows.
        let window = if loopback {
            self.window.min(LOOPBACK_WINDOW)
        } else {
            self.window
        };
        let stream_window = if loopback {
            window
        } else {
            window.min(GAP_SAFE_STREAM_WINDOW)
        };
        TransportTuning {
            stream_window,
            connection_window: window,
            send_window: window,
            max_uni_streams: (self.streams as u32).max(1),
            idle_timeout: self.idle_timeout,
            ack_eliciting_threshold: self.ack_every,
            max_ack_delay: Duration::from_millis(25),
            congestion,
            rate: RateConfig {
                max_rate: self.max_rate,
                rtt_hint: self.rtt_hint,
                rate_hint: self.rate_hint,
                ack_every: Some(self.ack_every),
                ..RateConfig::default()
            },
            initial_rtt: self.rtt_hint,
            datagram_size,
            packet_threshold: sluice_quic::tls::PACKET_THRESHOLD,
        }
    }
}

/// Which transport to use (`--transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Sender: QUIC, and TCP too if QUIC gets no answer within [`crate::transport::FALLBACK_AFTER`]. Receiver:
    /// listen on both.
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// TLS over TCP only.
    Tcp,
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "quic" => Ok(Self::Quic),
            "tcp" => Ok(Self::Tcp),
            other => Err(format!(
                "unknown transport {other:?}: expected auto, quic or tcp"
            )),
        }
    }
}

/// The datagram size for loopback peers: [`LOOPBACK_DATAGRAM`] if the loopback interface's MTU
/// carries it with IPv6 and UDP headers (it is 65,536 unless someone lowered it).
fn loopback_datagram() -> Option<u16> {
    let mtu = std::fs::read_to_string("/sys/class/net/lo/mtu")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(65_536);
    (mtu >= u32::from(LOOPBACK_DATAGRAM) + 48).then_some(LOOPBACK_DATAGRAM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_long_paths_get_their_own_windows() {
        let c = Config::default();
        let far = c.transport_to(Some("192.0.2.7".parse().unwrap()));
        assert_eq!(far.stream_window, GAP_SAFE_STREAM_WINDOW);
        assert_eq!(far.connection_window, c.window);
        assert_eq!(far.congestion, Congestion::Sluice);
        let near = c.transport_to(Some("::1".parse().unwrap()));
        assert_eq!(near.connection_window, LOOPBACK_WINDOW.min(c.window));
        assert_eq!(near.stream_window, near.connection_window);
        assert_eq!(near.congestion, Congestion::Cubic);
        let mapped = c.transport_to(Some("::ffff:127.0.0.1".parse().unwrap()));
        assert_eq!(mapped.connection_window, near.connection_window);
        assert_eq!(mapped.congestion, Congestion::Cubic);
        let mapped_far = c.transport_to(Some("::ffff:192.0.2.7".parse().unwrap()));
        assert_eq!(mapped_far.congestion, Congestion::Sluice);
        assert_eq!(
            far.rate.ack_every,
            Some(c.ack_every),
            "the controller knows the ACK count"
        );
        let unknown = c.transport_to(None);
        assert_eq!(
            unknown.stream_window, GAP_SAFE_STREAM_WINDOW,
            "safe on any path"
        );
    }

    #[test]
    fn a_sending_ring_starts_at_its_first_size_or_its_ceiling() {
        let mut c = Config::default();
        assert_eq!(c.sending_ring(), (64, 192));
        c.ring_max = 16;
        assert_eq!(
            c.sending_ring(),
            (16, 16),
            "a lower ceiling is also the start"
        );
        c.ring_max = 0;
        assert_eq!(c.sending_ring(), (2, 2));
    }
}
