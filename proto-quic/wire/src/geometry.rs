//! How a unit of `size` bytes is cut into blocks of `block_size` bytes, and blocks into groups
//! of [`GROUP_BLOCKS`]: the one place that knows where a block starts, how long the last one
//! is, and which blocks a group holds. Sender, receiver, journal and verifier all ask this.

use std::ops::Range;

use crate::message::GROUP_BLOCKS;

/// The block and group layout of one unit (a file today).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    size: u64,
    block_size: u64,
}

impl Geometry {
    /// A unit of `size` bytes in blocks of `block_size` bytes (`block_size` > 0, as the
    /// session's Hello check guarantees).
    pub fn new(size: u64, block_size: u32) -> Self {
        debug_assert!(block_size > 0);
        Self {
            size,
            block_size: u64::from(block_size.max(1)),
        }
    }

    /// The unit's length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// How many blocks the unit has (0 for an empty unit).
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(self.block_size)
    }

    /// Where block `index` starts (saturating: an index from the wire that the session has not
    /// yet checked cannot wrap around to a small offset).
    pub fn offset(&self, index: u64) -> u64 {
        index.saturating_mul(self.block_size)
    }

    /// The length of the block that starts at `offset`: the block size, or what is left of the
    /// unit for the last block (0 at or past the end).
    pub fn len_at(&self, offset: u64) -> u64 {
        self.size.saturating_sub(offset).min(self.block_size)
    }

    /// The length of block `index` (0 past the end).
    pub fn block_len(&self, index: u64) -> u64 {
        self.len_at(self.offset(index))
    }

    /// The bytes of block `index`.
    pub fn block_range(&self, index: u64) -> Range<u64> {
        let start = self.offset(index);
        start..start + self.len_at(start)
    }

    /// How many groups of [`GROUP_BLOCKS`] blocks the unit has.
    pub fn groups(&self) -> u64 {
        self.blocks().div_ceil(GROUP_BLOCKS)
    }

    /// The group that holds block `index`.
    pub fn group_of(index: u64) -> u64 {
        index / GROUP_BLOCKS
    }

    /// The blocks of group `group` (empty past the end).
    pub fn group_blocks(&self, group: u64) -> Range<u64> {
        let blocks = self.blocks();
        let first = group.saturating_mul(GROUP_BLOCKS).min(blocks);
        first..(first + GROUP_BLOCKS).min(blocks)
    }

    /// The bytes a whole group covers.
    pub fn group_span(&self) -> u64 {
        GROUP_BLOCKS * self.block_size
    }

    /// The bytes group `group` covers: a whole span, or what is left for the last group.
    pub fn group_len(&self, group: u64) -> u64 {
        let span = self.group_span();
        self.size
            .saturating_sub(group.saturating_mul(span))
            .min(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_groups_cover_the_unit_exactly() {
        for &(size, bs) in &[
            (0u64, 4096u32),
            (1, 4096),
            (4096, 4096),
            (4097, 4096),
            (64 * 4096, 4096),
            (64 * 4096 + 1, 4096),
            (1 << 30, 1 << 20),
            ((1 << 30) - 7, 1 << 20),
        ] {
            let g = Geometry::new(size, bs);
            let mut next = 0;
            for i in 0..g.blocks() {
                let r = g.block_range(i);
                assert_eq!(r.start, next, "{size}/{bs} block {i}");
                assert!(r.end > r.start && r.end - r.start <= u64::from(bs));
                assert_eq!(g.block_len(i), r.end - r.start);
                next = r.end;
            }
            assert_eq!(next, size);
            assert_eq!(g.block_len(g.blocks()), 0);
            let mut blocks = 0;
            for group in 0..g.groups() {
                let b = g.group_blocks(group);
                assert_eq!(b.start, blocks);
                assert!(!b.is_empty() && b.end - b.start <= GROUP_BLOCKS);
                assert!(b.clone().all(|i| Geometry::group_of(i) == group));
                let bytes = g.offset(b.end).min(size) - g.offset(b.start);
                assert_eq!(g.group_len(group), bytes);
                blocks = b.end;
            }
            assert_eq!(blocks, g.blocks());
            assert!(g.group_blocks(g.groups()).is_empty());
            assert!(g.group_blocks(u64::MAX).is_empty());
            assert_eq!(g.block_len(u64::MAX), 0);
            assert_eq!(g.group_len(u64::MAX), 0);
        }
    }
}
