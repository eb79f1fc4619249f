//! Moved blocks: finding a block the sender would send among the receiver's older version, at
//! another offset (an insertion or a deletion upstream shifted it). See
//! [`sluice_proto::anchor`] for the anchors the receiver reports and how the hash rolls.
//!
//! Per file, [`Moves`] holds the anchors known so far and the last shift found. For a block that
//! differs from the receiver's at the same offset it first tries that shift again, confirmed by
//! one anchor (a few dozen bytes hashed); only if that fails does it roll the hash along the
//! whole block. After [`FRUITLESS_BYTES`] rolled in a row that turn up nothing (at least
//! [`FRUITLESS`] blocks), it rolls only every second block, then every fourth, and so on (a
//! rewritten file of n blocks costs 32 MiB and about log2(n) blocks' rolling, not a second pass
//! over all of it; an insertion longer than that costs at most as many blocks again as it spans
//! before the blocks after it are found). Whatever it proposes, the receiver checks against the
//! block's hash.

use std::collections::HashMap;

use sluice_proto::anchor::{Roller, ANCHOR_LEN, NO_ANCHOR};

/// Bytes rolled in vain after which the blocks rolled thin out: an insertion up to this long is
/// rolled through (at about a millisecond per MiB), and the blocks after it found at once.
pub(super) const FRUITLESS_BYTES: u64 = 32 << 20;
/// The fewest blocks rolled in vain before the blocks rolled thin out.
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
    /// Blocks rolled in vain before rolling thins out.
    patience: u32,
    /// Once rolling thins out: the next block to roll along.
    next_roll: u64,
    /// The last block looked for: rolling thins out going forward only. Blocks come out of
    /// order (those past the older version's end are read first, while the receiver still
    /// reads what it holds), and the blocks before the ones rolled in vain are looked at anew.
    last: u64,
    /// Blocks rolled along so far.
    pub(super) rolled: u64,
    /// The last block found.
    found: Option<u64>,
    /// Each shift an anchor found.
    shifts: Shifts,
}

/// The shifts anchors found in one file, with the older version's length: what a patch or a
/// moved block that failed needs to be spliced ([`Moves::shifts`]), kept by the reader for its
/// last files once their anchors are dropped.
#[derive(Debug, Default)]
pub(super) struct Shifts {
    old_len: u64,
    /// Each shift, with the block it was found for, in the order found: the last
    /// [`MAX_SHIFTS`].
    found: std::collections::VecDeque<(u64, i64)>,
}

impl Shifts {
    /// Whether an anchor showed a shift anywhere.
    pub(super) fn any(&self) -> bool {
        !self.found.is_empty()
    }

    /// The older version's length.
    pub(super) fn old_len(&self) -> u64 {
        self.old_len
    }

    /// The shifts an edit inside block `index` may sit between: the last one found for a block
    /// before it, and the first two found for it or a block after it (two: the block's own
    /// edit and the next). Empty if none was found.
    pub(super) fn around(&self, index: u64) -> Vec<i64> {
        let before = self
            .found
            .iter()
            .filter(|&&(b, _)| b < index)
            .max_by_key(|&&(b, _)| b);
        let mut after: Vec<_> = self.found.iter().filter(|&&(b, _)| b >= index).collect();
        after.sort_by_key(|&&(b, _)| b);
        let mut out: Vec<i64> = before
            .into_iter()
            .chain(after.into_iter().take(2))
            .map(|&(_, d)| d)
            .collect();
        out.dedup();
        out
    }

    fn push(&mut self, index: u64, shift: i64) {
        if self.found.len() == MAX_SHIFTS {
            self.found.pop_front();
        }
        self.found.push_back((index, shift));
    }
}

const FILTER_BITS: u32 = 20;

/// Shifts kept per file for patches sent once the file is read ([`Shifts::around`]):
/// memory stays bounded whatever the file's size; a file with more edits than this patches its
/// first ones without them.
const MAX_SHIFTS: usize = 4096;

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
            patience: (FRUITLESS_BYTES / u64::from(block_size)).clamp(u64::from(FRUITLESS), 1 << 20)
                as u32,
            next_roll: 0,
            last: 0,
            rolled: 0,
            found: None,
            shifts: Shifts {
                old_len,
                found: Default::default(),
            },
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

    /// Notes a shift found otherwise than by an anchor (where a spliced block `index` ends), for
    /// the blocks after it to try: the older version's last block, which has no anchor (it is
    /// not held whole), is found so.
    pub(super) fn note(&mut self, index: u64, shift: i64) {
        self.shifts.push(index, shift);
    }

    /// The shifts found so far.
    pub(super) fn shifts(&self) -> &Shifts {
        &self.shifts
    }

    /// The shifts found, once the anchors are no longer needed.
    pub(super) fn into_shifts(self) -> Shifts {
        self.shifts
    }

    /// Whether any anchor is known: without one there is nothing to search for.
    pub(super) fn any(&self) -> bool {
        !self.by_anchor.is_empty()
    }

    /// Whether [`Moves::find`] would look for the block at `offset` at all (the caller reads the
    /// bytes after the block only then).
    pub(super) fn looks_at(&self, offset: u64) -> bool {
        let index = offset / self.block_size;
        self.any() && (self.shift.is_some() || index < self.last || index >= self.next_roll)
    }

    /// Where in the older version the block of `len` bytes at `offset` of the new file may be
    /// found, if anywhere: `(from, prefix)`, the block being its first `prefix` bytes as they
    /// are (sent along) and then the older version's bytes from `from` on. `data` holds the block
    /// and, where the file goes on, up to [`ANCHOR_LEN`] − 1 bytes after it (an anchor may start
    /// in the block's last bytes).
    ///
    /// An anchor found at `p` says where the older version's bytes go on from there, not what
    /// comes before: the edit that shifted them may lie in the block's first `p` bytes, which
    /// therefore cross as they are. A block found by a shift already known has no prefix.
    pub(super) fn find(&mut self, data: &[u8], offset: u64, len: usize) -> Option<(u64, usize)> {
        let index = offset / self.block_size;
        if index < self.last {
            self.fruitless = 0;
            self.next_roll = 0;
        }
        self.last = index;
        if let Some(from) = self.shift.and_then(|d| self.confirm(data, index, len, d)) {
            self.found = Some(index);
            return Some((from, 0));
        }
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
            let from = block * self.block_size;
            let at = offset + p as u64;
            if from == at {
                continue;
            }
            if from + (len - p) as u64 > self.old_len {
                continue;
            }
            // The block's byte `p` is the older version's byte `from`.
            self.shift = Some(at as i64 - from as i64);
            self.shifts.push(index, at as i64 - from as i64);
            self.fruitless = 0;
            self.next_roll = 0;
            self.found = Some(index);
            return Some((from, p));
        }
        self.shift = None;
        self.fruitless += 1;
        if self.fruitless >= self.patience {
            self.next_roll = index + (1 << (self.fruitless - self.patience + 1).min(32));
        }
        None
    }

    /// The old offset of block `index` (`len` bytes) under shift `d`, if an anchor of the older
    /// version confirms it: the first old block starting inside the range must start with the
    /// bytes found at its shifted place here. Where there is no such anchor to check (the older
    /// version's last block, or anchors not received yet), a block right after one found keeps
    /// the run going unchecked: the receiver's hash check has the last word.
    fn confirm(&self, data: &[u8], index: u64, len: usize, d: i64) -> Option<u64> {
        let offset = index * self.block_size;
        let from = u64::try_from(offset as i64 - d).ok()?;
        if from == offset || from + len as u64 > self.old_len {
            return None;
        }
        let block = from.div_ceil(self.block_size);
        let at = usize::try_from(block * self.block_size - from).ok()?;
        let window = data.get(at..at + ANCHOR_LEN).filter(|_| at < len);
        match (self.by_block.get(&block), window) {
            (Some(&anchor), Some(window)) => {
                (sluice_proto::anchor::anchor(window) == anchor).then_some(from)
            }
            _ => (index > 0 && self.found == Some(index - 1)).then_some(from),
        }
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

    /// For each block of `new`, where `Moves` rightly says it is in `old` (its prefix and the
    /// older bytes after it checked against the block, as the receiver checks the hash). No
    /// guess may be wrong after a single edit: the block the edit is in crosses its bytes up to
    /// the anchor after the edit.
    fn moved(old: &[u8], new: &[u8], bs: usize) -> Vec<Option<(u64, usize)>> {
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
                from.filter(|&(from, prefix)| {
                    let from = from as usize;
                    let right =
                        old[from..from + len - prefix] == new[offset + prefix..offset + len];
                    wrong += usize::from(!right);
                    right
                })
            })
            .collect();
        assert_eq!(wrong, 0, "wrong guesses");
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
            // Blocks 0..10 are unchanged; those wholly made of the insertion cannot move (the
            // one it ends in moves with a prefix); every whole block after it is found (rolling
            // goes on through 32 MiB in vain before it thins out).
            let after = (10 * bs + 5 + inserted).div_ceil(bs);
            let whole = new.len() / bs;
            for (i, f) in found.iter().enumerate().take(whole).skip(after) {
                assert!(f.is_some(), "inserted {inserted}: block {i} not found");
            }
            if inserted < bs {
                // The block after the one the insertion starts in: its bytes up to the first
                // anchor (the older version's block 11) cross as they are.
                let (_, prefix) = found[11].expect("the block after the insertion");
                assert_eq!(prefix, inserted);
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
        // The block the deletion is in moves too, its bytes up to the next older block's anchor
        // crossing as they are; every later block moves whole, the last ones (past the older
        // version's last anchor) as the run goes on.
        let (_, prefix) = found[20].expect("the block with the deletion");
        assert_eq!(prefix, bs - 700);
        for (i, f) in found.iter().enumerate().skip(21) {
            assert!(f.is_some_and(|(_, p)| p == 0), "block {i}: {f:?}");
        }
    }

    #[test]
    fn a_rewritten_file_is_rolled_along_a_few_blocks() {
        let bs = 4096;
        let old = bytes(1024 * bs, 3);
        let new = bytes(1024 * bs, 4);
        let mut m = Moves::new(bs as u32, old.len() as u64);
        assert_eq!(m.patience, 8192, "32 MiB of 4 KiB blocks");
        // As if its blocks were 8 MiB: 4 of them rolled in vain, then fewer and fewer.
        m.patience = FRUITLESS;
        m.add(&anchors_of(&old, bs));
        for offset in (0..new.len()).step_by(bs) {
            let end = (offset + bs + ANCHOR_LEN - 1).min(new.len());
            assert_eq!(m.find(&new[offset..end], offset as u64, bs), None);
        }
        assert!(m.rolled <= 16, "rolled along {} blocks of 1,024", m.rolled);
    }

    /// The blocks past the older version's end are read first; rolled along in vain, they
    /// must not thin out the search among the blocks before them, read after (a part file of
    /// an interrupted run, set aside, after an insertion near the start: every block sent).
    #[test]
    fn blocks_read_after_a_fruitless_tail_are_still_found() {
        let bs = 4096;
        let old = bytes(100 * bs, 5);
        let mut new = old[..10 * bs + 5].to_vec();
        new.extend_from_slice(b"INSERT!");
        new.extend_from_slice(&old[10 * bs + 5..]);
        new.extend(bytes(150 * bs, 6));
        let mut m = Moves::new(bs as u32, old.len() as u64);
        m.patience = FRUITLESS;
        m.add(&anchors_of(&old, bs));
        let mut find = |i: usize| {
            let offset = i * bs;
            let end = (offset + bs + ANCHOR_LEN - 1).min(new.len());
            if !m.looks_at(offset as u64) {
                return None;
            }
            m.find(&new[offset..end], offset as u64, bs.min(new.len() - offset))
        };
        for i in 101..new.len() / bs {
            assert_eq!(find(i), None, "block {i} is new");
        }
        for i in 11..100 {
            assert!(find(i).is_some(), "block {i} not found");
        }
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
