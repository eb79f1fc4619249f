//! The per-file BLAKE3 Merkle tree, with blocks as its leaves.
//!
//! BLAKE3 is itself a binary tree over 1 KiB chunks. When the block size is a power of two
//! number of chunks, every full block is a complete subtree of that tree, so its *chaining
//! value* ([`block_cv`]) can be computed on its own — by whichever thread holds the block, as
//! soon as it is read or received — and the file's root is rebuilt from the chaining values alone
//! ([`root_from_cvs`]). That root equals `blake3::hash(file)`, so `b3sum` confirms a transfer
//! independently.
//!
//! A file of one block has no parent node: its block hash is finalised as the root, and
//! [`block_cv`] returns that root instead of a chaining value.

use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};
use sluice_proto::message::Digest;

/// The hash a block header carries for the block at `offset` of a file of `file_len` bytes: the
/// block's chaining value, or the file's root when the file is this one block.
pub fn block_cv(data: &[u8], offset: u64, file_len: u64) -> Digest {
    if offset == 0 && data.len() as u64 == file_len {
        return *blake3::hash(data).as_bytes();
    }
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    h.update(data);
    h.finalize_non_root()
}

/// The BLAKE3 root of a file of `file_len` bytes cut into blocks of `block_size` bytes, from the
/// blocks' hashes as [`block_cv`] computes them. `cvs.len()` must be the file's block count.
pub fn root_from_cvs(cvs: &[Digest], file_len: u64, block_size: u32) -> Digest {
    match cvs {
        [] => *blake3::hash(&[]).as_bytes(),
        [only] => *only,
        _ => {
            let (l, r) = split(cvs, file_len, block_size);
            let left = subtree(l.0, l.1, block_size);
            let right = subtree(r.0, r.1, block_size);
            *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes()
        }
    }
}

/// The chaining value of a run of whole groups' worth of blocks starting at a multiple of
/// `span` bytes (a power of two number of chunks) and covering `len` bytes (`span`, or less for
/// the file's last run), from its blocks' hashes: a subtree of the file's tree, as long as the
/// file is longer than `span` (otherwise the run is the whole file and has no chaining value;
/// use [`root_from_cvs`]). A receiver folds each group of blocks it has whole into one of these,
/// and [`root_from_cvs`] with `span` as the block size combines them into the root.
pub fn span_cv(cvs: &[Digest], len: u64, block_size: u32) -> Digest {
    subtree(cvs, len, block_size)
}

type Part<'a> = (&'a [Digest], u64);

/// Splits a run of block hashes covering `len` bytes as BLAKE3 splits its tree: the left side
/// holds the largest power-of-two number of chunks that leaves at least one byte on the right.
fn split(cvs: &[Digest], len: u64, block_size: u32) -> (Part<'_>, Part<'_>) {
    let left_len = blake3::hazmat::left_subtree_len(len);
    let left_blocks = (left_len / u64::from(block_size)) as usize;
    let (l, r) = cvs.split_at(left_blocks);
    ((l, left_len), (r, len - left_len))
}

fn subtree(cvs: &[Digest], len: u64, block_size: u32) -> Digest {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let (l, r) = split(cvs, len, block_size);
    merge_subtrees_non_root(
        &subtree(l.0, l.1, block_size),
        &subtree(r.0, r.1, block_size),
        Mode::Hash,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn root_by_blocks(data: &[u8], block_size: u32) -> Digest {
        let cvs: Vec<Digest> = data
            .chunks(block_size as usize)
            .enumerate()
            .map(|(i, b)| block_cv(b, i as u64 * u64::from(block_size), data.len() as u64))
            .collect();
        root_from_cvs(&cvs, data.len() as u64, block_size)
    }

    #[test]
    fn equals_plain_blake3_at_block_edges() {
        let bs = 4096u32;
        for len in [
            0usize,
            1,
            1023,
            1024,
            1025,
            4095,
            4096,
            4097,
            8192,
            3 * 4096 + 1,
            5 * 4096,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            assert_eq!(
                root_by_blocks(&data, bs),
                *blake3::hash(&data).as_bytes(),
                "len {len}"
            );
        }
    }

    /// Groups of blocks folded into their chaining values give the same root, whatever the
    /// length of the last group.
    #[test]
    fn folded_groups_give_the_same_root() {
        let bs = 1024u32;
        let per = 4u64;
        let span = bs * per as u32;
        for len in [
            span as usize + 1,
            2 * span as usize,
            5 * span as usize - 3,
            9 * span as usize + 1500,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
            let cvs: Vec<Digest> = data
                .chunks(bs as usize)
                .enumerate()
                .map(|(i, b)| block_cv(b, i as u64 * u64::from(bs), len as u64))
                .collect();
            let groups: Vec<Digest> = cvs
                .chunks(per as usize)
                .enumerate()
                .map(|(g, c)| {
                    let start = g as u64 * u64::from(span);
                    span_cv(c, (len as u64 - start).min(u64::from(span)), bs)
                })
                .collect();
            assert_eq!(
                root_from_cvs(&groups, len as u64, span),
                *blake3::hash(&data).as_bytes(),
                "len {len}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn equals_plain_blake3(len in 0usize..40_000, shift in 10u32..14, seed in any::<u8>()) {
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed | 1)).collect();
            prop_assert_eq!(root_by_blocks(&data, 1 << shift), *blake3::hash(&data).as_bytes());
        }
    }
}
