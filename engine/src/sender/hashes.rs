//! A file's block hashes at the sender while it is read: each group's hashes are kept while the
//! group may still be looked at, then folded into the group's chaining value, so that what a
//! file costs follows the groups in play, not its size (32 bytes per block before; now 33 bytes
//! per group of [`GROUP_BLOCKS`] blocks, as at the receiver).

use std::collections::HashMap;

use sluice_proto::geometry::Geometry;
use sluice_proto::message::{Digest, GROUP_BLOCKS};

use crate::merkle;

/// Block hashes of one file: whole lists for open groups, one chaining value for folded ones.
pub(super) struct BlockHashes {
    geometry: Geometry,
    /// Groups not folded: each block's hash (zeros until hashed).
    open: HashMap<u64, Vec<Digest>>,
    /// Each group's chaining value once folded.
    folded: Vec<Option<Digest>>,
}

impl BlockHashes {
    pub(super) fn new(geometry: Geometry) -> Self {
        Self {
            geometry,
            open: HashMap::new(),
            folded: vec![None; geometry.groups() as usize],
        }
    }

    /// Records block `index`'s hash. Its group must not be folded.
    pub(super) fn set(&mut self, index: u64, cv: Digest) {
        let group = Geometry::group_of(index);
        debug_assert!(
            self.folded[group as usize].is_none(),
            "set in a folded group"
        );
        let blocks = self.geometry.group_blocks(group);
        let list = self
            .open
            .entry(group)
            .or_insert_with(|| vec![[0; 32]; (blocks.end - blocks.start) as usize]);
        list[(index - blocks.start) as usize] = cv;
    }

    /// Block `index`'s hash; zeros if its group is folded (callers keep the groups they look
    /// at open).
    pub(super) fn get(&self, index: u64) -> Digest {
        let group = Geometry::group_of(index);
        let start = self.geometry.group_blocks(group).start;
        self.open
            .get(&group)
            .map_or([0; 32], |list| list[(index - start) as usize])
    }

    /// The hashes of `group`'s blocks (empty if it is folded).
    pub(super) fn group(&self, group: u64) -> &[Digest] {
        self.open.get(&group).map_or(&[], Vec::as_slice)
    }

    /// Folds `group`, whose blocks are all hashed, into its chaining value. A file of one group
    /// keeps its list: the group is the whole file and has no chaining value of its own.
    pub(super) fn fold(&mut self, group: u64) {
        if self.geometry.groups() <= 1 {
            return;
        }
        if let Some(list) = self.open.remove(&group) {
            let cv = merkle::span_cv(
                &list,
                self.geometry.group_len(group),
                self.geometry.block_size() as u32,
            );
            self.folded[group as usize] = Some(cv);
        }
    }

    /// The file's root, once every block is hashed.
    pub(super) fn root(&self) -> Digest {
        let g = self.geometry;
        let block_size = g.block_size() as u32;
        if g.groups() <= 1 {
            let list = self.group(0);
            return merkle::root_from_cvs(list, g.size(), block_size);
        }
        let spans: Vec<Digest> = (0..g.groups())
            .map(|group| match self.folded[group as usize] {
                Some(cv) => cv,
                None => merkle::span_cv(self.group(group), g.group_len(group), block_size),
            })
            .collect();
        merkle::root_from_cvs(&spans, g.size(), GROUP_BLOCKS as u32 * block_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever groups are folded, and in whatever order blocks arrive, the root is the file's
    /// BLAKE3 hash.
    #[test]
    fn folded_or_not_the_root_is_the_file_s_hash() {
        let block = 1024u32;
        for blocks in [0u64, 1, 2, 63, 64, 65, 128, 129, 200] {
            for extra in [0u64, 1, 1023] {
                if blocks == 0 && extra > 0 {
                    continue;
                }
                let size = blocks.saturating_sub(u64::from(extra > 0)) * u64::from(block) + extra;
                let data: Vec<u8> = (0..size).map(|i| (i * 131 % 251) as u8).collect();
                let g = Geometry::new(size, block);
                for fold_every in [false, true] {
                    let mut h = BlockHashes::new(g);
                    // Backwards, to show order does not matter.
                    for i in (0..g.blocks()).rev() {
                        let r = g.block_range(i);
                        let cv = merkle::block_cv(
                            &data[r.start as usize..r.end as usize],
                            r.start,
                            size,
                        );
                        h.set(i, cv);
                        assert_eq!(h.get(i), cv);
                        let group = Geometry::group_of(i);
                        if fold_every && i == g.group_blocks(group).start {
                            h.fold(group);
                        }
                    }
                    assert_eq!(h.root(), *blake3::hash(&data).as_bytes(), "size {size}");
                }
            }
        }
    }
}
