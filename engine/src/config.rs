//! The one place where Sluice's tunables live, each default with the reason for its value.

use std::time::Duration;

use sluice_proto::tls::TransportTuning;

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
    /// path holds: 64 × 1 MiB = 64 MiB per side, whatever the file sizes.
    pub ring_buffers: usize,
    /// Unidirectional QUIC streams carrying blocks. Several streams keep one lost packet from
    /// stalling every block behind it (head-of-line blocking is per stream).
    pub streams: usize,
    /// Flow-control window for the whole connection, bytes. It must cover the bandwidth-delay
    /// product: 32 MiB carries 2.7 Gbit/s at 100 ms RTT. It is also the most a receiver buffers.
    pub window: u64,
    /// A peer silent for this long is declared gone and the transfer fails with an error.
    pub idle_timeout: Duration,
    /// Use io_uring for file reads and writes; when false (or when the kernel refuses io_uring)
    /// plain positional reads and writes are used.
    pub io_uring: bool,
    /// Submission queue depth of each io_uring: reads or writes in flight at once.
    pub uring_depth: u32,
    /// Socket buffer size requested for the UDP socket (forced past `rmem_max` when running as
    /// root). Large bursts at multi-Gbit/s overflow the 208 KiB default.
    pub udp_buffer: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            block_size: 1 << 20,
            ring_buffers: 64,
            streams: 8,
            window: 32 << 20,
            idle_timeout: Duration::from_secs(30),
            io_uring: true,
            uring_depth: 16,
            udp_buffer: 8 << 20,
        }
    }
}

impl Config {
    /// The QUIC transport tuning derived from this configuration.
    pub fn transport(&self) -> TransportTuning {
        TransportTuning {
            stream_window: self.window,
            connection_window: self.window,
            send_window: self.window,
            max_uni_streams: (self.streams as u32).max(1),
            idle_timeout: self.idle_timeout,
        }
    }
}
