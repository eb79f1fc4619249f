//! Packing blocks with zstd where the link, not the CPU, limits the rate (`--compress`).
//!
//! A block is packed only when that makes it smaller, so the receiver unpacks and then checks
//! the block's BLAKE3 hash on the bytes it unpacked: verification never depends on packing.
//!
//! `auto` packs a block only while the network is behind. It is behind while the link carries
//! less than the compressor can pack — the congestion window over the RTT, against the measured
//! packing speed with a 2× margin — or while the queue of blocks waiting for a data stream is at
//! least half full. When packing is what holds the transfer back (a fast link, a slow CPU), the
//! queue drains and blocks go out as they are until it fills again: the mix settles where the
//! link and the compressor are both busy. Towards a loopback address the "link" is memory, so
//! `auto` never packs there. A block that does not shrink by 1/16 goes raw, and `auto` then skips
//! trying on the next blocks, doubling the skip up to [`MAX_SKIP`] while nothing shrinks: random
//! data pays for one attempt in 64.

use bytes::Bytes;

/// What `--compress` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compress {
    /// Pack where the link is the bottleneck and the data shrinks.
    #[default]
    Auto,
    /// Try every block; send the ones that shrink packed.
    Zstd,
    /// Never pack.
    Off,
}

impl std::str::FromStr for Compress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "zstd" => Ok(Self::Zstd),
            "off" | "none" => Ok(Self::Off),
            _ => Err(format!("unknown compression {s:?}: auto, zstd or off")),
        }
    }
}

/// The zstd level. On a 256 MiB web-server log (`bench/genlog.py`) on this project's VM, the
/// `zstd` command packed to 26.0 % at 220 MB/s a core at level 1, and to 26.8 % at 131 MB/s at
/// level 3: level 1 packs as well and keeps up with a faster link.
pub const DEFAULT_LEVEL: i32 = 1;

/// Most blocks `auto` skips after blocks that did not shrink.
pub const MAX_SKIP: u32 = 64;

/// The sender's packing state; one per reader thread.
pub(crate) struct Packer {
    mode: Compress,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    /// Blocks still to send without trying.
    skip: u32,
    /// The skip after the next block that does not shrink.
    backoff: u32,
    /// Packing speed, input bytes per second of packing (a moving average); 0 until measured.
    speed: f64,
}

impl std::fmt::Debug for Packer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packer")
            .field("mode", &self.mode)
            .field("skip", &self.skip)
            .finish()
    }
}

impl Packer {
    /// A packer for `mode` towards a peer (`loopback`: `auto` is off).
    pub(crate) fn new(mode: Compress, level: i32, loopback: bool) -> Self {
        let mode = match mode {
            Compress::Auto if loopback => Compress::Off,
            m => m,
        };
        let zstd = match mode {
            Compress::Off => None,
            _ => match zstd::bulk::Compressor::new(level) {
                Ok(z) => Some(z),
                Err(e) => {
                    tracing::warn!("zstd unavailable ({e}); blocks go out unpacked");
                    None
                }
            },
        };
        Self {
            mode,
            zstd,
            skip: 0,
            backoff: 1,
            speed: 0.0,
        }
    }

    /// Whether it may pack at all.
    pub(crate) fn is_on(&self) -> bool {
        self.zstd.is_some()
    }

    /// Whether `auto` should pack now. `queue_behind`: the block queue is at least half full;
    /// `link`: what the link carries, bytes per second, if known.
    pub(crate) fn network_behind(&self, queue_behind: bool, link: Option<f64>) -> bool {
        queue_behind || self.speed == 0.0 || link.is_some_and(|l| self.speed > 2.0 * l)
    }

    /// The packed form of `block`, or `None` to send it as it is. `behind`: whether the network
    /// is behind the reader ([`Packer::network_behind`]).
    pub(crate) fn pack(&mut self, block: &[u8], behind: bool) -> Option<Bytes> {
        let zstd = self.zstd.as_mut()?;
        if self.mode == Compress::Auto {
            if !behind {
                return None;
            }
            if self.skip > 0 {
                self.skip -= 1;
                return None;
            }
        }
        // Worth it only if it saves 1/16; a smaller buffer makes zstd give up early.
        let mut out = Vec::with_capacity(block.len() - block.len() / 16);
        let started = std::time::Instant::now();
        let packed = zstd.compress_to_buffer(block, &mut out);
        let speed = block.len() as f64 / started.elapsed().as_secs_f64().max(1e-7);
        self.speed = if self.speed == 0.0 {
            speed
        } else {
            0.875 * self.speed + 0.125 * speed
        };
        match packed {
            Ok(n) if n > 0 && n < block.len() => {
                self.backoff = 1;
                Some(Bytes::from(out))
            }
            _ => {
                self.skip = self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_SKIP);
                None
            }
        }
    }
}

/// Unpacks a packed block (`packed`, a zstd frame) into `out`, which must come out exactly
/// full. A frame that unpacks to any other length, or is not zstd, is an error: the caller treats
/// the block as damaged on the way.
pub(crate) fn unpack(
    z: &mut zstd::bulk::Decompressor<'static>,
    packed: &[u8],
    out: &mut [u8],
) -> std::io::Result<()> {
    let n = z.decompress_to_buffer(packed, out)?;
    if n != out.len() {
        return Err(std::io::Error::other(format!(
            "packed block unpacked to {n} bytes, not {}",
            out.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        let mut i = 0u64;
        while v.len() < len {
            v.extend_from_slice(
                format!(
                    "2026-12-02T16:{:02}:{:02} INFO request id={i} status=200\n",
                    i % 60,
                    i % 61
                )
                .as_bytes(),
            );
            i += 1;
        }
        v.truncate(len);
        v
    }

    fn noise(len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        getrandom::fill(&mut v).unwrap();
        v
    }

    #[test]
    fn text_round_trips_smaller() {
        let block = text(1 << 20);
        let mut p = Packer::new(Compress::Auto, DEFAULT_LEVEL, false);
        let packed = p.pack(&block, true).expect("text shrinks");
        assert!(packed.len() < block.len() / 4, "{} bytes", packed.len());
        let mut z = zstd::bulk::Decompressor::new().unwrap();
        let mut out = vec![0u8; block.len()];
        unpack(&mut z, &packed, &mut out).unwrap();
        assert_eq!(out, block);
    }

    #[test]
    fn wrong_length_or_garbage_is_refused() {
        let block = text(64 << 10);
        let mut p = Packer::new(Compress::Zstd, DEFAULT_LEVEL, true);
        let packed = p.pack(&block, false).unwrap();
        let mut z = zstd::bulk::Decompressor::new().unwrap();
        let mut short = vec![0u8; block.len() - 1];
        assert!(
            unpack(&mut z, &packed, &mut short).is_err(),
            "too long for the block"
        );
        let mut long = vec![0u8; block.len() + 1];
        assert!(
            unpack(&mut z, &packed, &mut long).is_err(),
            "too short for the block"
        );
        let mut out = vec![0u8; block.len()];
        assert!(
            unpack(&mut z, &block[..4096], &mut out).is_err(),
            "not zstd"
        );
    }

    #[test]
    fn auto_packs_only_while_the_network_is_behind() {
        let block = text(1 << 20);
        let mut p = Packer::new(Compress::Auto, DEFAULT_LEVEL, false);
        assert!(p.pack(&block, false).is_none());
        assert!(p.pack(&block, true).is_some());
        let mut lo = Packer::new(Compress::Auto, DEFAULT_LEVEL, true);
        assert!(lo.pack(&block, true).is_none(), "loopback: never");
        let mut off = Packer::new(Compress::Off, DEFAULT_LEVEL, false);
        assert!(off.pack(&block, true).is_none());
        let mut forced = Packer::new(Compress::Zstd, DEFAULT_LEVEL, true);
        assert!(forced.pack(&block, false).is_some(), "zstd: always tried");
    }

    #[test]
    fn random_data_is_tried_rarely() {
        let block = noise(256 << 10);
        let mut p = Packer::new(Compress::Auto, DEFAULT_LEVEL, false);
        let mut tried = 0;
        for _ in 0..1000 {
            let skip_before = p.skip;
            assert!(p.pack(&block, true).is_none());
            if skip_before == 0 {
                tried += 1;
            }
        }
        // 1, 2, 4, ... 64, then one in 65.
        assert!(tried <= 7 + 1000 / 65 + 1, "tried {tried} times");
        // Text after noise is packed again within MAX_SKIP blocks.
        let text = text(256 << 10);
        let packed = (0..=MAX_SKIP)
            .filter(|_| p.pack(&text, true).is_some())
            .count();
        assert!(packed > 0);
    }
}
