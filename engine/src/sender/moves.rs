//! Moved blocks: finding a block the sender would send among the receiver's older version, at
//! another offset (an insertion or a deletion upstream shifted it). See
//! [`sluice_proto::anchor`] for the anchors the receiver reports and how the hash rolls.
//!
//! Per file, [`Moves`] holds the anchors known so far and the last shift found. For a block that
//! differs from the receiver's at the same offset it first tries that shift again, confirmed by
//! one anchor (a few dozen bytes hashed); only if that fails does it roll the hash along the
//! whole block. After [`FRUITLESS`] blocks in a row that turn up nothing, it rolls only every
//! second block, then every fourth, and so on (a rewritten file of n blocks costs about
//! log2(n) blocks' rolling, not a second pass over all of it; a long insertion costs at most as
//! many blocks again as it spans before the blocks after it are found). Whatever it proposes,
//! the receiver checks against the block's hash.

use std::collections::HashMap;

use sluice_proto::anchor::{Roller, ANCHOR_LEN, NO_ANCHOR};

/// Blocks in a row rolled in vain after which the blocks rolled thin out.
pub(super) const FRUITLESS: u32 = 4;

/// What the sender knows of one file's older version at the receiver, for finding moved blocks.
pub(super) struct Moves {
    block_size: u64,
    /// Length of the older version (`Holding`).
    old_len: u64,
    /// Anchor → block of the older version that starts with it (the first such block).
    by_anchor: HashMap<u64, u64>,
    /// Block → its anchor.
    by_block: HashMap<u64, u64>,
    /// One bit per value of an anchor's top [`FILTER_BITS`] bits: most rolled positions are
    /// passed over without a look-up.
    filter: Vec<u64>,
    /// Anchors taken from the board so far.
    pub(super) seen: usize,
    /// The last shift found (new offset − old offset).
    shift: Option<i64>,
    fruitless: u32,
    /// Once rolling thins out: the next block to roll along.
    next_roll: u64,
    /// Blocks rolled along so far.
    pub(super) rolled: u64,
}

const FILTER_BITS: u32 = 20;

impl Moves {
    pub(super) fn new(block_size: u32, old_len: u64) -> Self {
        Self {
            block_size: u64::from(block_size),
            old_len,
            by_anchor: HashMap::new(),
            by_block: HashMap::new(),
            filter: vec![0; 1 << (FILTER_BITS - 6)],
            seen: 0,
            shift: None,
            fruitless: 0,
            next_roll: 0,
            rolled: 0,
        }
    }

    /// Takes anchors `(block, anchor)` reported by the receiver.
    pub(super) fn add(&mut self, anchors: &[(u64, u64)]) {
        for &(block, anchor) in anchors {
            if anchor == NO_ANCHOR {
                continue;
            }
            self.by_anchor.entry(anchor).or_insert(block);
            self.by_block.insert(block, anchor);
            let bit = anchor >> (64 - FILTER_BITS);
            self.filter[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        self.seen += anchors.len();
    }

    /// Whether any anchor is known: without one there is nothing to search for.
    pub(super) fn any(&self) -> bool {
        !self.by_anchor.is_empty()
    }

    /// Whether [`Moves::find`] would look for the block at `offset` at all (the caller reads the
    /// bytes after the block only then).
    pub(super) fn looks_at(&self, offset: u64) -> bool {
        self.any() && (self.shift.is_some() || offset / self.block_size >= self.next_roll)
    }

    /// Where in the older version the block of `len` bytes at `offset` of the new file may be
    /// found, if anywhere: its offset there. `data` holds the block and, where the file goes on,
    /// up to [`ANCHOR_LEN`] − 1 bytes after it (an anchor may start in the block's last bytes).
    pub(super) fn find(&mut self, data: &[u8], offset: u64, len: usize) -> Option<u64> {
        if let Some(from) = self.shift.and_then(|d| self.confirm(data, offset, len, d)) {
            return Some(from);
        }
        let index = offset / self.block_size;
        if index < self.next_roll || data.len() < ANCHOR_LEN {
            return None;
        }
        self.rolled += 1;
        let mut roller = Roller::new(&data[..ANCHOR_LEN]);
        let last = data.len().min(len + ANCHOR_LEN - 1) - ANCHOR_LEN;
        for p in 0..=last {
            if p > 0 {
                roller.roll(data[p - 1], data[p + ANCHOR_LEN - 1]);
            }
            let h = roller.hash();
            let bit = h >> (64 - FILTER_BITS);
            if self.filter[(bit / 64) as usize] & (1 << (bit % 64)) == 0 {
                continue;
            }
            let Some(&block) = self.by_anchor.get(&h) else {
                continue;
            };
            // The receiver's block `block` starts at `offset + p` here.
            let Some(from) = (block * self.block_size).checked_sub(p as u64) else {
                continue;
            };
            if from == offset || from + len as u64 > self.old_len {
                continue;
            }
            self.shift = Some(offset as i64 - from as i64);
            self.fruitless = 0;
            self.next_roll = 0;
            return Some(from);
        }
        self.shift = None;
        self.fruitless += 1;
        if self.fruitless >= FRUITLESS {
            self.next_roll = index + (1 << (self.fruitless - FRUITLESS + 1).min(32));
        }
        None
    }

    /// The old offset of the block at `offset` under shift `d`, if an anchor of the older
    /// version confirms it: the first old block starting inside the range must start with the
    /// bytes found at its shifted place here.
    fn confirm(&self, data: &[u8], offset: u64, len: usize, d: i64) -> Option<u64> {
        let from = u64::try_from(offset as i64 - d).ok()?;
        if from == offset || from + len as u64 > self.old_len {
            return None;
        }
        let block = from.div_ceil(self.block_size);
        let at = usize::try_from(block * self.block_size - from).ok()?;
        let anchor = *self.by_block.get(&block)?;
        let window = data.get(at..at + ANCHOR_LEN)?;
        (at < len && sluice_proto::anchor::anchor(window) == anchor).then_some(from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::anchor::anchor;

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
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

    /// The receiver's anchors of `old` cut into blocks of `bs`.
    fn anchors_of(old: &[u8], bs: usize) -> Vec<(u64, u64)> {
        old.chunks(bs)
            .enumerate()
            .map(|(i, b)| (i as u64, anchor(b)))
            .collect()
    }

    /// For each block of `new`, where `Moves` rightly says it is in `old` (checked against the
    /// bytes, as the receiver checks the hash). At most one guess may be wrong: the block the
    /// edit is in, taken for shifted by the anchor after the edit.
    fn moved(old: &[u8], new: &[u8], bs: usize) -> Vec<Option<u64>> {
        let mut m = Moves::new(bs as u32, old.len() as u64);
        m.add(&anchors_of(old, bs));
        let mut wrong = 0;
        let found = (0..new.len())
            .step_by(bs)
            .map(|offset| {
                let len = bs.min(new.len() - offset);
                let data = &new[offset..(offset + len + ANCHOR_LEN - 1).min(new.len())];
                let same = old.get(offset..offset + len) == Some(&new[offset..offset + len]);
                let from = if same {
                    None
                } else {
                    m.find(data, offset as u64, len)
                };
                from.filter(|&from| {
                    let right =
                        old[from as usize..from as usize + len] == new[offset..offset + len];
                    wrong += usize::from(!right);
                    right
                })
            })
            .collect();
        assert!(wrong <= 1, "{wrong} wrong guesses");
        found
    }

    #[test]
    fn blocks_after_an_insertion_are_found_shifted() {
        let bs = 4096;
        let old = bytes(64 * bs, 1);
        for inserted in [1, 100, 4095, 4096, 4097, 3 * bs + 17, 20 * bs + 3] {
            let mut new = old[..10 * bs + 5].to_vec();
            new.extend(bytes(inserted, 9));
            new.extend_from_slice(&old[10 * bs + 5..]);
            let found = moved(&old, &new, bs);
            // Blocks 0..10 are unchanged; the one with the insertion and those wholly made of
            // it cannot move. After a long insertion, rolling has thinned out and finds the
            // shift again within as many blocks as the insertion spans; from there on, every
            // whole block is found.
            let after = (10 * bs + 5 + inserted).div_ceil(bs);
            let spans = inserted.div_ceil(bs);
            let first_after = if spans + 1 >= FRUITLESS as usize {
                after + spans
            } else {
                after
            };
            let whole = new.len() / bs;
            for (i, f) in found.iter().enumerate().take(whole).skip(first_after) {
                assert!(f.is_some(), "inserted {inserted}: block {i} not found");
            }
            assert!(found[..10].iter().all(Option::is_none));
        }
    }

    #[test]
    fn blocks_after_a_deletion_are_found_shifted() {
        let bs = 4096;
        let old = bytes(64 * bs, 2);
        let mut new = old[..20 * bs + 300].to_vec();
        new.extend_from_slice(&old[20 * bs + 1000..]);
        let found = moved(&old, &new, bs);
        // The old file's last block has no successor to confirm the shift against.
        let whole = new.len() / bs;
        for (i, f) in found.iter().enumerate().take(whole - 1).skip(21) {
            assert!(f.is_some(), "block {i} not found");
        }
    }

    #[test]
    fn a_rewritten_file_is_rolled_along_a_few_blocks() {
        let bs = 4096;
        let old = bytes(1024 * bs, 3);
        let new = bytes(1024 * bs, 4);
        let mut m = Moves::new(bs as u32, old.len() as u64);
        m.add(&anchors_of(&old, bs));
        for offset in (0..new.len()).step_by(bs) {
            let end = (offset + bs + ANCHOR_LEN - 1).min(new.len());
            assert_eq!(m.find(&new[offset..end], offset as u64, bs), None);
        }
        assert!(m.rolled <= 16, "rolled along {} blocks of 1,024", m.rolled);
    }

    #[test]
    fn uniform_blocks_have_no_anchor_to_find() {
        let bs = 4096;
        let old = vec![0u8; 8 * bs];
        let mut m = Moves::new(bs as u32, old.len() as u64);
        m.add(&anchors_of(&old, bs));
        assert!(!m.any());
    }
}
