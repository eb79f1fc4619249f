//! Spliced blocks: a block put together from runs of the receiver's older version, at any
//! offsets, and the literal bytes between them (since version 15).
//!
//! A moved block ([`crate::message::BlockHeader::moved`]) takes everything after its literal
//! prefix from one place in the older version, so the block an edit falls in crosses as it is up
//! to the next anchor: after a 7-byte deletion in a 1 MiB block, most of the block. Yet the
//! receiver's piece hashes of its copy of that block ([`crate::message::Message::Pieces`]) show
//! where its bytes went: the pieces before the edit sit where they were, those after it sit
//! shifted by what the edit inserted or removed. The sender hashes its block's bytes at each
//! shift it knows of (the one before the block and the ones found after it), and a piece hash
//! that matches places an old piece in the new block. [`plan`] covers the block with such
//! pieces and sends what no piece covers as it is: about one piece per edit crosses, the rest is
//! read from the older version. The receiver checks the whole block against its hash, so a
//! wrong guess costs a re-send of the block, never a wrong byte.
//!
//! On the wire a spliced block is a header with [`crate::codec::SPLICE_TAG`] whose `packed`
//! field is the length of the payload that follows: `count: u16 LE`, then `count` runs, each
//! `kind: u8` (0: the older version's bytes, 1: literal bytes) and `len: u32 LE`, and for kind 0
//! `from: u64 LE`, the offset in the older version; then the literal runs' bytes, in order.

use crate::message::{piece_hash, PieceHash};

/// Most runs in one spliced block: two per piece of a block of 256 pieces.
pub const MAX_RUNS: usize = 512;

const OLD: u8 = 0;
const LITERAL: u8 = 1;

/// One run of a spliced block, in the block's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// `len` bytes of the receiver's older version, from offset `from`.
    Old {
        /// Offset in the older version.
        from: u64,
        /// Bytes.
        len: u32,
    },
    /// `len` bytes that cross as they are.
    Literal {
        /// Bytes.
        len: u32,
    },
}

impl Run {
    fn len(&self) -> u32 {
        match *self {
            Run::Old { len, .. } | Run::Literal { len } => len,
        }
    }
}

/// Why a spliced block's payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpliceError {
    /// The payload ended inside its list of runs.
    #[error("spliced block's run list is cut short")]
    Short,
    /// No runs, or more than [`MAX_RUNS`].
    #[error("spliced block has {0} runs (1..={MAX_RUNS})")]
    Count(usize),
    /// A run kind other than 0 or 1.
    #[error("spliced block run kind {0} is neither 0 (older version) nor 1 (literal)")]
    Kind(u8),
    /// A run of no bytes.
    #[error("spliced block has an empty run")]
    EmptyRun,
    /// An older-version run whose end overflows.
    #[error("spliced block run from {0} runs past any file's end")]
    PastEnd(u64),
    /// The runs do not add up to the block.
    #[error("spliced block's runs cover {covered} bytes, not the block's {len}")]
    Length {
        /// Bytes the runs cover.
        covered: u64,
        /// The block's length.
        len: u32,
    },
    /// The literal bytes are not what the literal runs need.
    #[error("spliced block carries {carried} literal bytes, its runs need {needed}")]
    Literals {
        /// Literal bytes in the payload.
        carried: usize,
        /// Literal bytes the runs name.
        needed: u64,
    },
    /// Nothing comes from the older version: that is a block, not a splice.
    #[error("spliced block takes nothing from the older version")]
    NothingOld,
}

/// Appends the payload of a spliced block to `out`: the runs, then the literal runs' bytes,
/// taken from `block` (the whole new block; a literal run's bytes are the block's at that run's
/// place).
pub fn encode(runs: &[Run], block: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(runs.len() as u16).to_le_bytes());
    for run in runs {
        match *run {
            Run::Old { from, len } => {
                out.push(OLD);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&from.to_le_bytes());
            }
            Run::Literal { len } => {
                out.push(LITERAL);
                out.extend_from_slice(&len.to_le_bytes());
            }
        }
    }
    let mut at = 0usize;
    for run in runs {
        let len = run.len() as usize;
        if let Run::Literal { .. } = run {
            out.extend_from_slice(&block[at..at + len]);
        }
        at += len;
    }
}

/// Bytes [`encode`] writes for `runs`.
pub fn encoded_len(runs: &[Run]) -> usize {
    2 + runs
        .iter()
        .map(|r| match r {
            Run::Old { .. } => 13,
            Run::Literal { len } => 5 + *len as usize,
        })
        .sum::<usize>()
}

/// Decodes a spliced block's payload for a block of `block_len` bytes: its runs, and where in
/// `payload` the literal bytes start. Everything a peer sends is checked: the runs cover the
/// block exactly, the literal bytes are exactly what the literal runs need, and at least one run
/// comes from the older version.
pub fn decode(payload: &[u8], block_len: u32) -> Result<(Vec<Run>, usize), SpliceError> {
    let count = payload
        .get(..2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
        .ok_or(SpliceError::Short)?;
    if count == 0 || count > MAX_RUNS {
        return Err(SpliceError::Count(count));
    }
    let mut at = 2;
    let mut runs = Vec::with_capacity(count);
    let (mut covered, mut literal, mut old) = (0u64, 0u64, false);
    for _ in 0..count {
        let kind = *payload.get(at).ok_or(SpliceError::Short)?;
        let len = payload
            .get(at + 1..at + 5)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(SpliceError::Short)?;
        at += 5;
        if len == 0 {
            return Err(SpliceError::EmptyRun);
        }
        let run = match kind {
            OLD => {
                let mut from = [0u8; 8];
                from.copy_from_slice(payload.get(at..at + 8).ok_or(SpliceError::Short)?);
                at += 8;
                let from = u64::from_le_bytes(from);
                if from.checked_add(u64::from(len)).is_none() {
                    return Err(SpliceError::PastEnd(from));
                }
                old = true;
                Run::Old { from, len }
            }
            LITERAL => {
                literal += u64::from(len);
                Run::Literal { len }
            }
            other => return Err(SpliceError::Kind(other)),
        };
        covered += u64::from(len);
        runs.push(run);
    }
    if covered != u64::from(block_len) {
        return Err(SpliceError::Length {
            covered,
            len: block_len,
        });
    }
    if (payload.len() - at) as u64 != literal {
        return Err(SpliceError::Literals {
            carried: payload.len() - at,
            needed: literal,
        });
    }
    if !old {
        return Err(SpliceError::NothingOld);
    }
    Ok((runs, at))
}

/// The shift (new offset − old offset) of the last run of the older version in `runs`, a block
/// at `offset` of the new file: where the older version stands after the block's last edit,
/// which the next block is likely to share.
pub fn last_shift(runs: &[Run], offset: u64) -> Option<i64> {
    let mut at = offset;
    let mut last = None;
    for run in runs {
        match *run {
            Run::Old { from, len } => {
                last = Some(at as i64 - from as i64);
                at += u64::from(len);
            }
            Run::Literal { len } => at += u64::from(len),
        }
    }
    last
}

/// Plans a spliced block: `block` is the new block's bytes, `theirs` the receiver's piece hashes
/// of `old`, the bytes it holds for the block, `shifts` the shifts to try (new offset − old
/// offset; 0 is tried anyway).
/// Returns the runs and the literal bytes they carry, or `None` if no piece matched anywhere.
///
/// Each old piece is looked for at each shift; the matches are laid over the block in order of
/// their start, each taken for the part of it past what is already covered, and the gaps cross
/// as literal bytes. A gap between pieces found at shifts at most [`MAX_SPREAD`] apart (two
/// small edits in one block: the shift between them was never seen) is looked through again at
/// every shift between the two. Only bytes a piece hash matched are taken from the older
/// version.
pub fn plan(
    block: &[u8],
    old: OldBytes,
    theirs: &[PieceHash],
    shifts: &[i64],
) -> Option<(Vec<Run>, usize)> {
    let piece = old.piece;
    if piece == 0 {
        return None;
    }
    let pieces = Pieces { block, old, theirs };
    let mut tried: Vec<i64> = Vec::with_capacity(shifts.len() + 1);
    let mut found: Vec<Found> = Vec::new();
    for &d in std::iter::once(&0).chain(shifts) {
        if !tried.contains(&d) {
            tried.push(d);
            pieces.look(d, 0..block.len(), &mut found);
        }
    }
    if found.is_empty() {
        return None;
    }
    let mut cover = lay(&mut found, block.len());
    // A gap between pieces found at two shifts close together: more small edits lie between
    // them, and the shifts between those are near the two (an insertion and a deletion may
    // take it past either). A few of the pieces expected in the gap are each looked for at
    // every one of those shifts; where one is found, the whole gap is looked through at its
    // shift.
    for _ in 0..MAX_ROUNDS {
        let mut more = Vec::new();
        // Each gap with the shifts of the stretches beside it: between two, or at the block's
        // start or end (the shift past the block's last edit may be one no anchor showed).
        // A gap between two stretches at one shift is mostly a change in place (a rewritten
        // stretch of a database or disk image): not probed, or every such block cost a fruitless
        // sweep of 2 × 1,025 piece hashes (a 1 GiB file with 64 KiB rewritten in each block:
        // 1.95 → 5.1 s). An insertion and a deletion of the same length in one gap stay literal.
        let (first, last) = (cover[0], cover[cover.len() - 1]);
        let gaps = cover
            .windows(2)
            .filter(|w| w[0].shift != w[1].shift)
            .map(|w| (w[0].end..w[1].start, w[0].shift, w[1].shift))
            .chain([
                (0..first.start, first.shift, first.shift),
                (last.end..block.len(), last.shift, last.shift),
            ]);
        for (gap, a, b) in gaps {
            if gap.len() < 2 * piece || a.abs_diff(b) > MAX_SPREAD {
                continue;
            }
            let margin = MAX_SPREAD as i64 / 2;
            let spread = a.min(b) - margin..=a.max(b) + margin;
            if let Some(d) = pieces.probe(gap.clone(), a, spread) {
                pieces.look(d, gap, &mut more);
            }
        }
        if more.is_empty() {
            break;
        }
        found = cover;
        found.extend(more);
        cover = lay(&mut found, block.len());
    }
    let mut runs: Vec<Run> = Vec::new();
    let mut push = |run: Run| match (runs.last_mut(), run) {
        (Some(Run::Literal { len }), Run::Literal { len: more }) => *len += more,
        (
            Some(Run::Old { from, len }),
            Run::Old {
                from: next,
                len: more,
            },
        ) if *from + u64::from(*len) == next => *len += more,
        _ => runs.push(run),
    };
    let (mut cur, mut literal) = (0usize, 0usize);
    for f in cover {
        if f.start > cur {
            push(Run::Literal {
                len: (f.start - cur) as u32,
            });
            literal += f.start - cur;
        }
        push(Run::Old {
            from: f.old,
            len: (f.end - f.start) as u32,
        });
        cur = f.end;
    }
    if cur < block.len() {
        push(Run::Literal {
            len: (block.len() - cur) as u32,
        });
        literal += block.len() - cur;
    }
    if runs.len() > MAX_RUNS {
        return None;
    }
    Some((runs, literal))
}

/// The widest spread of shifts around a gap [`plan`] looks through, bytes: an edit of up to
/// about half this many bytes between two others in one block is spliced around too. Each probe
/// hashes a piece at up to twice this many shifts (about 2 ms at 4 KiB pieces).
pub const MAX_SPREAD: u64 = 1024;

/// Old pieces [`plan`] looks for at every shift of a spread, per gap.
const PROBES: usize = 2;

/// Times [`plan`] looks through the gaps left (each edit inside a block's gap leaves two).
const MAX_ROUNDS: usize = 4;

/// Bytes of the new block at `start..end` equal to the older version's from `old` on, found at
/// shift `shift`.
#[derive(Debug, Clone, Copy)]
struct Found {
    start: usize,
    end: usize,
    old: u64,
    shift: i64,
}

/// The bytes the receiver holds for a block, whose piece hashes [`plan`] is given: `len` bytes
/// of the older version from `start` on, in pieces of `piece` bytes, but for their first `skip`
/// bytes, which are not the older version's (a moved block's literal prefix, as the receiver
/// put it together): pieces that start there are not looked for.
#[derive(Debug, Clone, Copy)]
pub struct OldBytes {
    /// Offset in the older version of the bytes' first byte.
    pub start: u64,
    /// How many bytes.
    pub len: usize,
    /// Bytes per piece.
    pub piece: usize,
    /// Leading bytes that are not the older version's.
    pub skip: usize,
}

/// What [`plan`] looks for old pieces in.
struct Pieces<'a> {
    block: &'a [u8],
    old: OldBytes,
    theirs: &'a [PieceHash],
}

/// The shifts of `spread` by their distance from `near`: `near`, `near + 1`, `near - 1`, …
fn nearest_first(near: i64, spread: std::ops::RangeInclusive<i64>) -> impl Iterator<Item = i64> {
    let reach = (near - spread.start()).max(spread.end() - near).max(0);
    (0..=reach)
        .flat_map(move |k| {
            [near + k, near - k]
                .into_iter()
                .take(if k == 0 { 1 } else { 2 })
        })
        .filter(move |d| spread.contains(d))
}

impl Pieces<'_> {
    /// Looks for a few old pieces that would sit inside `gap` at shift `near`, each at every
    /// shift of `spread`, nearest to `near` first (most edits insert or delete a few bytes): the
    /// first shift one is found at.
    fn probe(
        &self,
        gap: std::ops::Range<usize>,
        near: i64,
        spread: std::ops::RangeInclusive<i64>,
    ) -> Option<i64> {
        let piece = self.old.piece;
        // Old pieces whose place at `near` lies inside the gap.
        let inside: Vec<usize> = (0..self.theirs.len())
            .filter(|&j| {
                let start = j * piece;
                start >= self.old.skip
                    && start + piece <= self.old.len
                    && usize::try_from(start as i64 + near)
                        .is_ok_and(|at| at >= gap.start && at + piece <= gap.end)
            })
            .collect();
        let step = inside.len().div_ceil(PROBES + 1).max(1);
        for &j in inside.iter().skip(step / 2).step_by(step).take(PROBES) {
            for d in nearest_first(near, spread.clone()) {
                let Ok(at) = usize::try_from((j * piece) as i64 + d) else {
                    continue;
                };
                match self.block.get(at..at + piece) {
                    Some(bytes) if piece_hash(bytes) == self.theirs[j] => return Some(d),
                    _ => {}
                }
            }
        }
        None
    }

    /// Looks for each old piece at shift `d`, where it would overlap `within`.
    fn look(&self, d: i64, within: std::ops::Range<usize>, found: &mut Vec<Found>) {
        let OldBytes {
            start: old_start,
            len: old_len,
            piece,
            skip,
        } = self.old;
        for (j, hash) in self.theirs.iter().enumerate() {
            let start = j * piece;
            if start >= old_len {
                break;
            }
            if start < skip {
                continue;
            }
            let len = piece.min(old_len - start);
            let Ok(at) = usize::try_from(start as i64 + d) else {
                continue;
            };
            if at >= within.end || at + len <= within.start {
                continue;
            }
            let Some(bytes) = self.block.get(at..at + len) else {
                continue;
            };
            if piece_hash(bytes) == *hash {
                found.push(Found {
                    start: at,
                    end: at + len,
                    old: old_start + start as u64,
                    shift: d,
                });
            }
        }
    }
}

/// Lays `found` over a block of `len` bytes in order of start, each match cut to the part past
/// what the ones before it cover: the covered stretches, in order, without overlaps.
fn lay(found: &mut [Found], len: usize) -> Vec<Found> {
    found.sort_unstable_by_key(|f| (f.start, std::cmp::Reverse(f.end)));
    let mut out: Vec<Found> = Vec::new();
    let mut cur = 0usize;
    for f in found.iter() {
        if f.end <= cur || f.start >= len {
            continue;
        }
        let take = f.start.max(cur);
        out.push(Found {
            start: take,
            end: f.end,
            old: f.old + (take - f.start) as u64,
            shift: f.shift,
        });
        cur = f.end;
    }
    out
}

/// Puts a spliced block together into `out` (the block's length): literal runs from `literals`,
/// older-version runs through `read_old(from, buf)`, which fills `buf` from that offset.
pub fn assemble<E>(
    runs: &[Run],
    literals: &[u8],
    out: &mut [u8],
    mut read_old: impl FnMut(u64, &mut [u8]) -> Result<(), E>,
) -> Result<(), E> {
    let (mut at, mut lit) = (0usize, 0usize);
    for run in runs {
        let len = run.len() as usize;
        match *run {
            Run::Old { from, .. } => read_old(from, &mut out[at..at + len])?,
            Run::Literal { .. } => {
                out[at..at + len].copy_from_slice(&literals[lit..lit + len]);
                lit += len;
            }
        }
        at += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shifts are tried nearest first, each once, only those of the spread.
    #[test]
    fn shifts_are_tried_nearest_first() {
        let order: Vec<i64> = nearest_first(2, -1..=4).collect();
        assert_eq!(order, vec![2, 3, 1, 4, 0, -1]);
        let order: Vec<i64> = nearest_first(10, -1..=4).collect();
        assert_eq!(order, vec![4, 3, 2, 1, 0, -1]);
    }
    use crate::anchor::tests::bytes;

    fn hashes(old: &[u8], piece: usize) -> Vec<PieceHash> {
        old.chunks(piece).map(piece_hash).collect()
    }

    /// Plans block `index` of `new` against `old`, encodes, decodes and assembles it: the result
    /// must be the new block, whatever the plan. Returns the literal bytes.
    fn round_trip(old: &[u8], new: &[u8], index: usize, bs: usize, shifts: &[i64]) -> usize {
        let piece = 4096;
        let start = index * bs;
        let block = &new[start..(start + bs).min(new.len())];
        let old_block = &old[start.min(old.len())..(start + bs).min(old.len())];
        let old_bytes = OldBytes {
            start: start as u64,
            len: old_block.len(),
            piece,
            skip: 0,
        };
        let (runs, literal) =
            plan(block, old_bytes, &hashes(old_block, piece), shifts).expect("some piece matches");
        let mut payload = Vec::new();
        encode(&runs, block, &mut payload);
        assert_eq!(payload.len(), encoded_len(&runs));
        let (decoded, lit_at) = decode(&payload, block.len() as u32).unwrap();
        assert_eq!(decoded, runs);
        let mut out = vec![0u8; block.len()];
        assemble(&decoded, &payload[lit_at..], &mut out, |from, buf| {
            let from = from as usize;
            buf.copy_from_slice(&old[from..from + buf.len()]);
            Ok::<(), ()>(())
        })
        .unwrap();
        assert!(out == block, "the block put together differs");
        literal
    }

    #[test]
    fn a_deletion_inside_a_block_costs_about_a_piece() {
        let bs = 1 << 20;
        let old = bytes(4 * bs, 1);
        for (at, cut) in [
            (bs + 123_457, 7),
            (bs + 8192, 1),
            (bs + 4095, 3000),
            (bs + 5, 9),
        ] {
            let mut new = old[..at].to_vec();
            new.extend_from_slice(&old[at + cut..]);
            let literal = round_trip(&old, &new, 1, bs, &[-(cut as i64)]);
            // The piece the cut starts in, and the block's last `cut` bytes (the next block's
            // first, of which no piece hash is at hand).
            assert!(
                literal <= 2 * 4096 + cut,
                "cut {cut} at {at}: {literal} literal bytes"
            );
        }
    }

    #[test]
    fn an_insertion_inside_a_block_costs_about_a_piece() {
        let bs = 1 << 20;
        let old = bytes(4 * bs, 2);
        for (at, len) in [(bs + 123_457, 7), (bs + 999_999, 100), (bs + 3, 4096)] {
            let mut new = old[..at].to_vec();
            new.extend(bytes(len, 9));
            new.extend_from_slice(&old[at..]);
            let literal = round_trip(&old, &new, 1, bs, &[len as i64]);
            assert!(
                literal <= 2 * 4096 + len,
                "{len} at {at}: {literal} literal bytes"
            );
        }
    }

    #[test]
    fn an_edit_after_an_earlier_shift_is_found_at_both_shifts() {
        // 7 bytes gone before block 1, 7 more inside it: its head sits at −7, its tail at −14.
        let bs = 1 << 20;
        let old = bytes(4 * bs, 3);
        let mut new = old[..500].to_vec();
        new.extend_from_slice(&old[507..bs + 300_000]);
        new.extend_from_slice(&old[bs + 300_007..]);
        let literal = round_trip(&old, &new, 1, bs, &[-7, -14]);
        assert!(literal <= 3 * 4096, "{literal} literal bytes");
    }

    #[test]
    fn two_small_edits_in_one_block_are_spliced_around_both() {
        // Nothing is known of the shift between them (−7): it is found in the gap.
        let bs = 1 << 20;
        let old = bytes(4 * bs, 6);
        let mut new = old[..bs + 100_000].to_vec();
        new.extend_from_slice(&old[bs + 100_007..bs + 600_000]);
        new.extend_from_slice(&old[bs + 600_005..]);
        let literal = round_trip(&old, &new, 1, bs, &[-12]);
        assert!(literal <= 3 * 4096, "{literal} literal bytes");
    }

    #[test]
    fn nothing_in_common_plans_nothing() {
        let old = bytes(1 << 20, 4);
        let new = bytes(1 << 20, 8);
        let theirs = hashes(&old, 4096);
        let old_bytes = OldBytes {
            start: 0,
            len: old.len(),
            piece: 4096,
            skip: 0,
        };
        assert_eq!(plan(&new, old_bytes, &theirs, &[3, -3]), None);
    }

    #[test]
    fn hostile_payloads_are_refused() {
        let block = vec![7u8; 100];
        let mut ok = Vec::new();
        encode(
            &[Run::Old { from: 0, len: 60 }, Run::Literal { len: 40 }],
            &block,
            &mut ok,
        );
        assert!(decode(&ok, 100).is_ok());
        assert_eq!(
            decode(&ok, 101),
            Err(SpliceError::Length {
                covered: 100,
                len: 101
            })
        );
        assert_eq!(
            decode(&ok[..ok.len() - 1], 100).unwrap_err(),
            SpliceError::Literals {
                carried: 39,
                needed: 40
            }
        );
        assert_eq!(decode(&ok[..5], 100), Err(SpliceError::Short));
        assert_eq!(decode(&[0, 0], 100), Err(SpliceError::Count(0)));
        let mut bad = ok.clone();
        bad[2] = 9;
        assert_eq!(decode(&bad, 100), Err(SpliceError::Kind(9)));
        let mut lit_only = Vec::new();
        encode(&[Run::Literal { len: 100 }], &block, &mut lit_only);
        assert_eq!(decode(&lit_only, 100), Err(SpliceError::NothingOld));
        let mut past = Vec::new();
        encode(
            &[Run::Old {
                from: u64::MAX - 10,
                len: 100,
            }],
            &block,
            &mut past,
        );
        assert_eq!(decode(&past, 100), Err(SpliceError::PastEnd(u64::MAX - 10)));
        let mut empty = Vec::new();
        encode(
            &[Run::Old { from: 0, len: 0 }, Run::Old { from: 0, len: 100 }],
            &block,
            &mut empty,
        );
        assert_eq!(decode(&empty, 100), Err(SpliceError::EmptyRun));
        // Arbitrary bytes never panic.
        let mut x = 1u64;
        for n in 0..2000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let junk = bytes(n % 64, x);
            let _ = decode(&junk, (x % 200) as u32);
        }
    }
}
