//! Anchors: how a sender finds the receiver's older blocks at other offsets of its file.
//!
//! Block hashes compare blocks at the same offset, so an insertion or a deletion makes every
//! later block differ. The receiver also reports, for each block of an older version it holds, an
//! *anchor*: a 64-bit rolling hash ([`anchor`]) of the block's first [`ANCHOR_LEN`] bytes. The
//! sender rolls the same hash ([`Roller`]) along a block it would otherwise send; where it meets
//! an anchor, the receiver's block starts there, shifted, and the sender tells the receiver to
//! take the block from its older version at that shifted offset (a *moved* block,
//! [`crate::message::BlockHeader::moved`]). The receiver checks the block's hash as for any block,
//! so a wrong guess costs a re-send, never a wrong byte.
//!
//! The hash is a cyclic polynomial ("buzhash") over a fixed table: one rotation and two table
//! look-ups per byte rolled.

/// Bytes an anchor covers: the first this many bytes of a block.
pub const ANCHOR_LEN: usize = 64;

/// No anchor: a block shorter than [`ANCHOR_LEN`], or one whose first bytes are all alike
/// (zeros, say), which would be found everywhere.
pub const NO_ANCHOR: u64 = 0;

/// One pseudo-random 64-bit word per byte value (splitmix64 from a fixed seed).
const TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut state: u64 = 0x5eed_51ce_0000_0001;
    let mut i = 0;
    while i < 256 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
};

/// The anchor of a block whose first bytes are `start` (at least [`ANCHOR_LEN`] of them, only
/// those counted), or [`NO_ANCHOR`].
pub fn anchor(start: &[u8]) -> u64 {
    let Some(window) = start.get(..ANCHOR_LEN) else {
        return NO_ANCHOR;
    };
    if window.iter().all(|&b| b == window[0]) {
        return NO_ANCHOR;
    }
    Roller::new(window).hash()
}

/// The anchor hash of a window of [`ANCHOR_LEN`] bytes sliding along a buffer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Roller {
    h: u64,
}

impl Roller {
    /// The hash of `window` (exactly [`ANCHOR_LEN`] bytes), ready to roll.
    pub fn new(window: &[u8]) -> Self {
        debug_assert_eq!(window.len(), ANCHOR_LEN);
        let mut h = 0u64;
        for &b in window {
            h = h.rotate_left(1) ^ TABLE[usize::from(b)];
        }
        Self { h }
    }

    /// Slides the window one byte: `out` leaves it at the front, `into` enters at the back.
    #[inline]
    pub fn roll(&mut self, out: u8, into: u8) {
        // ANCHOR_LEN is 64: a byte's word has turned a full circle when it leaves.
        self.h = self.h.rotate_left(1) ^ TABLE[usize::from(out)] ^ TABLE[usize::from(into)];
    }

    /// The window's hash, comparable with [`anchor`] (which gives windows of one repeated byte
    /// [`NO_ANCHOR`]). [`NO_ANCHOR`] means none, so a window that hashes to it is given 1.
    #[inline]
    pub fn hash(&self) -> u64 {
        if self.h == NO_ANCHOR {
            1
        } else {
            self.h
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `n` pseudo-random bytes from `seed` (xorshift; seeds that differ only in bit 0 give the
    /// same bytes). Also the splice tests' data.
    pub(crate) fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn rolling_agrees_with_the_anchor_at_every_offset() {
        let data = bytes(4096, 7);
        let mut r = Roller::new(&data[..ANCHOR_LEN]);
        for at in 0..data.len() - ANCHOR_LEN {
            assert_eq!(r.hash(), anchor(&data[at..]), "offset {at}");
            r.roll(data[at], data[at + ANCHOR_LEN]);
        }
    }

    #[test]
    fn short_and_uniform_starts_have_no_anchor() {
        assert_eq!(anchor(&[1u8; ANCHOR_LEN - 1]), NO_ANCHOR);
        assert_eq!(anchor(&[0u8; 4096]), NO_ANCHOR);
        assert_eq!(anchor(&[0xffu8; ANCHOR_LEN]), NO_ANCHOR);
        assert_ne!(anchor(&bytes(ANCHOR_LEN, 3)), NO_ANCHOR);
    }

    #[test]
    fn one_changed_byte_changes_the_anchor() {
        let data = bytes(ANCHOR_LEN, 11);
        for i in 0..ANCHOR_LEN {
            let mut other = data.clone();
            other[i] ^= 0x20;
            assert_ne!(anchor(&data), anchor(&other), "byte {i}");
        }
    }
}
