//! What the receiver holds of each file, as the sender learns it: the board the control task
//! fills from `Holding`, `HaveGroups`, `Have` and `HaveDone`, and the storage thread reads block by
//! block. Waits are bounded by the transfer: `close` releases every waiter when it ends.

use std::ops::Range;

use sluice_proto::message::{Digest, PieceHash, GROUP_BLOCKS};

/// What the receiver holds of each file, filled in by the control task as `Have`/`HaveGroups`
/// messages arrive and read by the storage thread block by block, so the receiver's scan and the
/// sender's hashing run at the same time.
#[derive(Default)]
pub(super) struct HaveBoard {
    files: std::sync::Mutex<std::collections::HashMap<u32, HaveState>>,
    cond: std::sync::Condvar,
    /// Threads waiting on `cond` (counted while `files` is held): an answer wakes it (a system
    /// call) only when someone waits, not for every file.
    waiting: std::sync::atomic::AtomicUsize,
    closed: std::sync::atomic::AtomicBool,
    /// Files the reader is done with: late messages for them are dropped, not stored. Locked
    /// only while `files` is held.
    finished: std::sync::Mutex<std::collections::HashSet<u32>>,
    /// The file the reader last began, plus one (0: none yet): what a `Working` names.
    reading: std::sync::atomic::AtomicU32,
}

/// What the board knows of one file. Most files of a large tree are new at the receiver
/// (`HaveDone` alone): those keep a few bytes here, the block-level detail only where there is
/// some (a board of 200,000 such files: 70 MB with it inline).
#[derive(Default)]
struct HaveState {
    /// HaveDone arrived: every block not reported is missing.
    done: bool,
    /// Bytes the receiver holds (Holding): blocks past this are missing for certain.
    held: Option<u64>,
    /// Holding said the receiver's resume journal vouches for blocks (`Vouched` precedes the
    /// report of each block it covers).
    vouching: bool,
    more: Option<Box<HaveDetail>>,
}

/// What the receiver reported of a file's blocks, groups and pieces.
#[derive(Default)]
struct HaveDetail {
    /// Block hashes the receiver reported; `None` where it holds nothing.
    cvs: Vec<Option<Digest>>,
    /// Groups whose block hashes are known (a trailing partial group, or a `WantDetail` answer).
    detail: std::collections::HashSet<u64>,
    /// Group digests the receiver reported, from group 0 on.
    groups: Vec<Digest>,
    /// Block hashes vouched for and not yet taken by the reader.
    vouched: std::collections::HashMap<u64, Digest>,
    /// Anchors of the receiver's older version ([`sluice_proto::anchor`]), `(block, anchor)`
    /// in the order they arrived; the reader takes those it has not seen yet.
    anchors: Vec<(u64, u64)>,
    /// Blocks named in `anchors`: a block's anchor is taken once, so what a receiver's repeated
    /// `Anchors` can make this hold is bounded by the file's blocks.
    anchored: std::collections::HashSet<u64>,
    /// Piece hashes of blocks asked for with `WantPieces`, by block index.
    pieces: std::collections::HashMap<u64, Vec<PieceHash>>,
    /// Blocks asked for with `WantPieces` and not answered yet; other answers are dropped.
    asked: std::collections::HashSet<u64>,
}

/// Stands for the hash of a block the receiver holds only the start of (its older version ends
/// inside the block): equal to no block's chaining value, so the block is settled as one the
/// receiver holds with another hash, and patched from the pieces it holds.
const PARTIAL_COPY: Digest = [0; 32];

/// What the receiver holds of one block, as far as the sender can tell yet.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Held {
    /// Its hash, or `None`: the receiver does not hold it.
    Block(Option<Digest>),
    /// The receiver holds the block's whole group, whose digest is this.
    Group(Digest),
}

impl HaveBoard {
    /// The reader begins file `id`.
    pub(super) fn set_reading(&self, id: u32) {
        self.reading
            .store(id.saturating_add(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// The file the reader last began, if any.
    pub(super) fn reading(&self) -> Option<u32> {
        self.reading
            .load(std::sync::atomic::Ordering::Relaxed)
            .checked_sub(1)
    }

    /// The state of a file still being read, created on first mention; `None` once the reader
    /// has finished the file.
    fn state<'a>(
        &self,
        files: &'a mut std::collections::HashMap<u32, HaveState>,
        id: u32,
    ) -> Option<&'a mut HaveState> {
        let finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        if finished.contains(&id) {
            return None;
        }
        Some(files.entry(id).or_default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u32, HaveState>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits on `cond` with `files` held, counted in `waiting`; the caller checks again
    /// whatever it waits for. If the reader (this thread) holds blocks back, it hands them
    /// over instead, without this lock (the network thread takes it to record answers), and
    /// returns at once: an answer may wait for those blocks.
    fn wait<'a>(
        &'a self,
        files: std::sync::MutexGuard<'a, std::collections::HashMap<u32, HaveState>>,
    ) -> std::sync::MutexGuard<'a, std::collections::HashMap<u32, HaveState>> {
        use std::sync::atomic::Ordering::SeqCst;
        if crate::burst::holding() {
            drop(files);
            crate::burst::hand_over_held();
            return self.lock();
        }
        self.waiting.fetch_add(1, SeqCst);
        let files = self.cond.wait(files).unwrap_or_else(|p| p.into_inner());
        self.waiting.fetch_sub(1, SeqCst);
        files
    }

    /// Wakes the waiters after a change made with `files` held (or just released): one that
    /// counted itself after it saw the change before it waited.
    fn wake(&self) {
        if self.waiting.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.cond.notify_all();
        }
    }

    /// Block hashes: a trailing partial group, or the answer to a `WantDetail`.
    pub(super) fn add(&self, id: u32, first: u64, cvs: Vec<Digest>) {
        let mut files = self.lock();
        let Some(st) = self.state(&mut files, id) else {
            return;
        };
        let st = st.more();
        let end = first as usize + cvs.len();
        if st.cvs.len() < end {
            st.cvs.resize(end, None);
        }
        for (i, cv) in cvs.into_iter().enumerate() {
            // An all-zero hash stands for a block the receiver does not hold.
            st.cvs[first as usize + i] = (cv != [0; 32]).then_some(cv);
        }
        st.detail.insert(first / GROUP_BLOCKS);
        self.wake();
    }

    /// Anchors of an older version's blocks, before the `Have` that reports those blocks.
    pub(super) fn add_anchors(&self, id: u32, first: u64, anchors: Vec<u64>) {
        let mut files = self.lock();
        let Some(st) = self.state(&mut files, id) else {
            return;
        };
        let st = st.more();
        for (block, anchor) in (first..).zip(anchors) {
            if anchor != sluice_proto::anchor::NO_ANCHOR && st.anchored.insert(block) {
                st.anchors.push((block, anchor));
            }
        }
    }

    /// Whether the receiver reported anchors of file `id`'s older version.
    pub(super) fn has_anchors(&self, id: u32) -> bool {
        self.lock()
            .get(&id)
            .and_then(|st| st.more.as_ref())
            .is_some_and(|st| !st.anchors.is_empty())
    }

    /// The anchors of file `id` that arrived after the first `seen`.
    pub(super) fn anchors_since(&self, id: u32, seen: usize) -> Vec<(u64, u64)> {
        self.lock()
            .get(&id)
            .and_then(|st| st.more.as_ref())
            .and_then(|st| st.anchors.get(seen..))
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    }

    pub(super) fn add_groups(&self, id: u32, first: u64, digests: Vec<Digest>) {
        let mut files = self.lock();
        let Some(st) = self.state(&mut files, id) else {
            return;
        };
        // Groups come in order from group 0; anything else is ignored (treated as not held).
        let st = st.more();
        if st.groups.len() as u64 == first {
            st.groups.extend(digests);
        }
        self.wake();
    }

    pub(super) fn holding(&self, id: u32, len: u64, vouching: bool) {
        let mut files = self.lock();
        if let Some(st) = self.state(&mut files, id) {
            st.held = Some(len);
            st.vouching = vouching;
        }
        drop(files);
        self.wake();
    }

    /// Block hashes the receiver's resume journal vouches for.
    pub(super) fn add_vouched(&self, id: u32, first: u64, cvs: Vec<Digest>) {
        let mut files = self.lock();
        // Only after a Holding that announced them.
        if let Some(st) = self.state(&mut files, id).filter(|st| st.vouching) {
            st.more()
                .vouched
                .extend((first..).zip(cvs).filter(|(_, cv)| *cv != [0; 32]));
        }
    }

    /// Whether the receiver said it would vouch for blocks of file `id` (known once
    /// [`HaveBoard::wait_held`] returned).
    pub(super) fn is_vouching(&self, id: u32) -> bool {
        self.lock().get(&id).is_some_and(|st| st.vouching)
    }

    /// The vouched-for hash of block `index` of file `id`, if any; once only.
    pub(super) fn take_vouched(&self, id: u32, index: u64) -> Option<Digest> {
        self.lock()
            .get_mut(&id)
            .and_then(|st| st.more.as_mut()?.vouched.remove(&index))
    }

    /// Waits until the receiver has said how much of file `id` it holds: `Some(bytes)`, or
    /// `None` when it holds nothing (or the transfer is ending).
    pub(super) fn wait_held(&self, id: u32) -> Option<u64> {
        let mut files = self.lock();
        loop {
            if let Some(st) = files.get(&id) {
                if st.held.is_some() || st.done {
                    return st.held;
                }
            }
            if self.is_closed() {
                return None;
            }
            files = self.wait(files);
        }
    }

    /// Whether the receiver has said how much of file `id` it holds ([`HaveBoard::wait_held`]
    /// would not wait).
    pub(super) fn answered(&self, id: u32) -> bool {
        self.lock()
            .get(&id)
            .is_some_and(|st| st.held.is_some() || st.done)
    }

    pub(super) fn done(&self, id: u32) {
        let mut files = self.lock();
        if let Some(st) = self.state(&mut files, id) {
            st.done = true;
        }
        drop(files);
        self.wake();
    }

    /// Releases every waiter: the transfer is ending.
    pub(super) fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let _files = self.lock();
        self.cond.notify_all();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until the receiver has said what it holds of block `index` of file `id` (its
    /// bytes `block`).
    pub(super) fn wait_status(&self, id: u32, index: u64, block: Range<u64>) -> Held {
        let mut files = self.lock();
        loop {
            if let Some(held) = files.get(&id).and_then(|st| st.status(index, &block)) {
                return held;
            }
            if self.is_closed() {
                return Held::Block(None);
            }
            files = self.wait(files);
        }
    }

    /// Whether the receiver has said what it holds of block `index` of file `id` (so
    /// [`HaveBoard::wait_status`] would not wait).
    pub(super) fn status_known(&self, id: u32, index: u64, block: Range<u64>) -> bool {
        self.is_closed()
            || self
                .lock()
                .get(&id)
                .is_some_and(|st| st.status(index, &block).is_some())
    }

    /// Notes that the piece hashes of a block are being asked for.
    pub(super) fn ask_pieces(&self, id: u32, index: u64) {
        let mut files = self.lock();
        if let Some(st) = self.state(&mut files, id) {
            st.more().asked.insert(index);
        }
    }

    /// Piece hashes of a block, answering a `WantPieces` (anything not asked for is dropped).
    pub(super) fn add_pieces(&self, id: u32, index: u64, hashes: Vec<PieceHash>) {
        let mut files = self.lock();
        if let Some(st) = self.state(&mut files, id) {
            let st = st.more();
            if st.asked.remove(&index) {
                st.pieces.insert(index, hashes);
            }
        }
        drop(files);
        self.wake();
    }

    /// Waits for the piece hashes of a block asked for with `WantPieces`; empty if the
    /// transfer is ending.
    pub(super) fn wait_pieces(&self, id: u32, index: u64) -> Vec<PieceHash> {
        let mut files = self.lock();
        loop {
            let answer = files
                .get_mut(&id)
                .and_then(|st| st.more.as_mut()?.pieces.remove(&index));
            if let Some(h) = answer {
                return h;
            }
            if self.is_closed() {
                return Vec::new();
            }
            files = self.wait(files);
        }
    }

    /// Whether the block hashes of `group` (asked for with `WantDetail`) have arrived, or the
    /// transfer is ending ([`HaveBoard::wait_detail`] would not wait).
    pub(super) fn detail_known(&self, id: u32, group: u64) -> bool {
        self.is_closed()
            || self
                .lock()
                .get(&id)
                .and_then(|st| st.more.as_ref())
                .is_some_and(|st| st.detail.contains(&group))
    }

    /// Whether the piece hashes of block `index` have arrived, or the transfer is ending
    /// ([`HaveBoard::wait_pieces`] would not wait).
    pub(super) fn pieces_known(&self, id: u32, index: u64) -> bool {
        self.is_closed()
            || self
                .lock()
                .get(&id)
                .and_then(|st| st.more.as_ref())
                .is_some_and(|st| st.pieces.contains_key(&index))
    }

    /// Waits for the block hashes of a group asked for with `WantDetail`.
    pub(super) fn wait_detail(
        &self,
        id: u32,
        group: u64,
        blocks: Range<u64>,
    ) -> Vec<Option<Digest>> {
        let mut files = self.lock();
        loop {
            if let Some(st) = files.get(&id).and_then(|st| st.more.as_ref()) {
                if st.detail.contains(&group) {
                    return blocks
                        .map(|i| st.cvs.get(i as usize).copied().flatten())
                        .collect();
                }
            }
            if self.is_closed() {
                return Vec::new();
            }
            files = self.wait(files);
        }
    }

    pub(super) fn forget(&self, id: u32) {
        let mut files = self.lock();
        files.remove(&id);
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
    }
}

impl HaveState {
    /// What the receiver holds of block `index` (its bytes `block`), if it has said.
    fn status(&self, index: u64, block: &Range<u64>) -> Option<Held> {
        let group = index / GROUP_BLOCKS;
        if let Some(len) = self.held.filter(|&len| block.end > len) {
            // Past what it holds; where its older version ends inside the block (an append, a
            // file smaller than a block), what it holds of the block is worth a patch.
            return Some(Held::Block((len > block.start).then_some(PARTIAL_COPY)));
        }
        if let Some(more) = &self.more {
            if more.detail.contains(&group) {
                return Some(Held::Block(more.cvs.get(index as usize).copied().flatten()));
            }
            if let Some(d) = more.groups.get(group as usize) {
                return Some(Held::Group(*d));
            }
        }
        self.done.then_some(Held::Block(None))
    }

    fn more(&mut self) -> &mut HaveDetail {
        self.more.get_or_insert_with(Box::default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocks_anchor_is_taken_once_however_often_it_comes() {
        let b = HaveBoard::default();
        assert!(!b.has_anchors(1));
        for _ in 0..1000 {
            b.add_anchors(1, 4, vec![7, sluice_proto::anchor::NO_ANCHOR, 9]);
        }
        assert!(b.has_anchors(1));
        assert_eq!(b.anchors_since(1, 0), vec![(4, 7), (6, 9)]);
        assert_eq!(b.anchors_since(1, 2), vec![]);
        b.add_anchors(1, 5, vec![8, 10]);
        assert_eq!(b.anchors_since(1, 2), vec![(5, 8)]);
    }

    /// Past `Holding.len` a block is not held, except one the receiver's older version ends
    /// inside: that one is held with another hash, to be patched from the pieces it holds.
    #[test]
    fn a_block_the_older_version_ends_inside_is_held_in_part() {
        let b = HaveBoard::default();
        b.holding(1, 100, false);
        assert!(b.status_known(1, 1, 64..128));
        assert_eq!(
            b.wait_status(1, 1, 64..128),
            Held::Block(Some(PARTIAL_COPY))
        );
        assert_eq!(b.wait_status(1, 2, 128..150), Held::Block(None));
        assert_eq!(b.wait_status(1, 1, 100..164), Held::Block(None));
        assert!(
            !b.status_known(1, 0, 0..64),
            "a block it holds whole waits for its report"
        );
    }

    #[test]
    fn vouched_hashes_are_kept_only_after_a_vouching_holding_and_taken_once() {
        let b = HaveBoard::default();
        // Before any Holding, or after one that did not announce them: dropped.
        b.add_vouched(1, 0, vec![[1; 32]]);
        b.holding(1, 4 << 20, false);
        b.add_vouched(1, 0, vec![[1; 32]]);
        assert!(!b.is_vouching(1));
        assert_eq!(b.take_vouched(1, 0), None);
        b.holding(2, 4 << 20, true);
        assert!(b.is_vouching(2));
        // A zero hash names no block.
        b.add_vouched(2, 3, vec![[3; 32], [0; 32], [5; 32]]);
        assert_eq!(b.take_vouched(2, 3), Some([3; 32]));
        assert_eq!(b.take_vouched(2, 3), None, "taken once");
        assert_eq!(b.take_vouched(2, 4), None);
        assert_eq!(b.take_vouched(2, 5), Some([5; 32]));
        // A file the reader is done with keeps nothing.
        b.add_vouched(2, 7, vec![[7; 32]]);
        b.forget(2);
        b.add_vouched(2, 8, vec![[8; 32]]);
        assert_eq!(b.take_vouched(2, 7), None);
        assert_eq!(b.take_vouched(2, 8), None);
    }
}
