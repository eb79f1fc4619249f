//! End to end: damaged blocks are re-sent alone, interrupted transfers resume, and a destination
//! holding an older version receives only what changed. The real binary, real files, real QUIC.

#[macro_use]
mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const BLOCK: u64 = 1 << 20;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn json_summary(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "sluice failed: {}", stderr(out));
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().expect("no output");
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["event"], "summary", "{text}");
    v
}

/// `sluice send --json SRC` to a `sluice recv DEST` started for it; both must succeed.
fn send_recv_json(src: &Path, dest: &Path) -> serde_json::Value {
    send_recv_json_with(src, dest, &[])
}

/// [`send_recv_json`] with extra options for the sender.
fn send_recv_json_with(src: &Path, dest: &Path, options: &[&str]) -> serde_json::Value {
    send_recv_json_env(src, dest, options, &[])
}

/// [`send_recv_json_with`] with extra environment variables for the sender.
fn send_recv_json_env(
    src: &Path,
    dest: &Path,
    options: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    send_recv_summaries(src, dest, options, env).0
}

/// The `--json` summaries of both `sluice send` and `sluice recv` for one transfer.
fn send_recv_summaries(
    src: &Path,
    dest: &Path,
    options: &[&str],
    env: &[(&str, &str)],
) -> (serde_json::Value, serde_json::Value) {
    let recv = Recv::start_with(dest, &["--json"]);
    let out = sluice()
        .envs(env.iter().copied())
        .args(["--json", "send"])
        .args(options)
        .arg(src)
        .arg(&recv.ticket)
        .output()
        .unwrap();
    let s = json_summary(&out);
    let r = recv.wait();
    (s, json_summary(&r))
}

fn copy_json(src: &Path, dest: &Path) -> serde_json::Value {
    copy_json_with(src, dest, &[])
}

/// [`copy_json`] with extra options.
fn copy_json_with(src: &Path, dest: &Path, options: &[&str]) -> serde_json::Value {
    json_summary(
        &sluice()
            .args(["--json", "copy"])
            .args(options)
            .arg(src)
            .arg(dest)
            .output()
            .unwrap(),
    )
}

over_both! {
    fn three_damaged_blocks_are_resent_alone() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("f.bin");
        random_file(&src, 256 * BLOCK, 9);
        let dest = d.path().join("dest/");
        let out = sluice()
            .args(["--json", "copy"])
            .arg(&src)
            .arg(&dest)
            .env("SLUICE_FAULT_CORRUPT", "0:3,0:128,0:255")
            .output()
            .unwrap();
        let s = json_summary(&out);
        assert_eq!(s["resent_blocks"], 3, "{s}");
        assert_eq!(s["payload_bytes"], 259 * BLOCK, "{s}");
        assert_eq!(b3(&dest.join("f.bin")), b3(&src));
    }
}

over_both! {
    fn packed_blocks_are_verified_and_a_damaged_one_is_resent() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("access.log");
        log_file(&log, 40 * BLOCK + 12_345, 3);
        let dest = d.path().join("dest/");
        let out = sluice()
            .args(["--json", "copy", "--compress", "zstd"])
            .arg(&log)
            .arg(&dest)
            .env("SLUICE_FAULT_CORRUPT", "0:7")
            .output()
            .unwrap();
        let s = json_summary(&out);
        assert_eq!(b3(&dest.join("access.log")), b3(&log));
        // Every block is packed (40 whole, the 12,345-byte tail), the damaged one twice.
        let packed = s["packed_bytes"].as_u64().unwrap();
        let wire = s["packed_wire_bytes"].as_u64().unwrap();
        assert_eq!(packed, 41 * BLOCK + 12_345, "{s}");
        assert!(wire < packed / 2, "text packs to less than half: {s}");
        assert_eq!(s["resent_blocks"], 1, "{s}");

        // Random blocks never shrink, so they go as they are.
        let noise = d.path().join("noise.bin");
        random_file(&noise, 8 * BLOCK, 4);
        let s = copy_json_with(&noise, &d.path().join("n"), &["--compress", "zstd"]);
        assert_eq!(s["packed_bytes"], 0, "{s}");

        // auto never packs towards a loopback address: the link is memory.
        let s = copy_json(&log, &d.path().join("again/"));
        assert_eq!(s["packed_bytes"], 0, "{s}");
        assert_eq!(b3(&d.path().join("again/access.log")), b3(&log));
    }
}

fn edit(path: &Path, offset: u64, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
}

over_both! {
    fn delta_sends_only_changed_blocks() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("big.bin");
        // 256 MiB: enough blocks to scatter edits over, and the two runs (QUIC and TCP) with
        // their part files stay under 2 GiB of disk.
        let size = 256 * MIB;
        random_file(&src, size, 11);
        let dest = d.path().join("dest/");
        let first = copy_json(&src, &dest);
        assert_eq!(first["payload_bytes"], size);

        // Ten scattered 4 KiB edits, not page-aligned: each block that changed crosses only as a
        // patch of the two 4 KiB pieces the edit touches.
        for i in 0..10u64 {
            edit(&src, i * 23 * BLOCK + 12_345, &[i as u8; 4096]);
        }
        let s = copy_json(&src, &dest);
        assert_eq!(s["payload_bytes"].as_u64().unwrap(), 10 * 2 * 4096, "{s}");
        // Piece hashes and tree digests: far under one block.
        assert!(s["wire_bytes"].as_u64().unwrap() < 400 * 1024, "{s}");
        assert_eq!(
            s["kept_bytes"].as_u64().unwrap() + s["payload_bytes"].as_u64().unwrap(),
            size
        );
        assert_eq!(b3(&dest.join("big.bin")), b3(&src));

        // Append 1 MiB: the new bytes and at most the old last block.
        let mut f = fs::OpenOptions::new().append(true).open(&src).unwrap();
        f.write_all(&vec![7u8; BLOCK as usize]).unwrap();
        drop(f);
        let s = copy_json(&src, &dest);
        assert!(s["payload_bytes"].as_u64().unwrap() <= 2 * BLOCK, "{s}");
        assert_eq!(b3(&dest.join("big.bin")), b3(&src));

        // Truncate: at most the new last block.
        let f = fs::OpenOptions::new().write(true).open(&src).unwrap();
        f.set_len(size - 3 * BLOCK - 100).unwrap();
        drop(f);
        let s = copy_json(&src, &dest);
        assert!(s["payload_bytes"].as_u64().unwrap() <= BLOCK, "{s}");
        assert_eq!(b3(&dest.join("big.bin")), b3(&src));
        assert!(part_files(&dest).is_empty());
    }
}

/// `path` with `bytes` put in at `at` (or, with `remove`, that many bytes taken out there).
fn splice(path: &Path, at: usize, bytes: &[u8], remove: usize) {
    let mut data = fs::read(path).unwrap();
    data.splice(at..at + remove, bytes.iter().copied());
    fs::write(path, data).unwrap();
}

over_both! {
    fn an_insertion_or_a_deletion_costs_about_its_own_bytes() {
        // Blocks compared at the same offsets all differ after an insertion: the receiver's
        // anchors let the sender find them shifted in the older version, and only an offset
        // crosses for each. A file of two groups (a `WantDetail` per group) and one of a single
        // partial group (its `Have` straight from the scan), by copy and by send + recv.
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(&src).unwrap();
        let (big, small) = (src.join("big.bin"), src.join("small.bin"));
        random_file(&big, 100 * BLOCK + 4321, 31);
        random_file(&small, 12 * BLOCK + 99, 32);
        let dest = d.path().join("dest");
        copy_json(&src, &dest);
        let payload = |s: &serde_json::Value| s["payload_bytes"].as_u64().unwrap();

        // 3,000 bytes in near the start of each.
        splice(&big, (5 * BLOCK + 123) as usize, &[0xa5; 3000], 0);
        splice(&small, 700_001, &[0x5a; 3000], 0);
        let s = copy_json(&src, &dest);
        assert_same_tree(&src, &dest.join("src"));
        assert!(payload(&s) <= 4 * BLOCK, "{s}");
        assert!(s["wire_bytes"].as_u64().unwrap() <= 5 * BLOCK, "{s}");
        // No guess was wrong: the block after each insertion moved whole.
        assert_eq!(s["resent_blocks"], 0, "{s}");

        // 10,000 bytes out of the middle, through separate processes.
        splice(&big, (40 * BLOCK + 77) as usize, &[], 10_000);
        splice(&small, (6 * BLOCK) as usize, &[], 10_000);
        let s = send_recv_json(&src, &dest);
        assert_same_tree(&src, &dest.join("src"));
        // The block each deletion is in moves too, with its bytes before the next anchor.
        assert!(payload(&s) <= 3 * BLOCK, "{s}");
        assert_eq!(s["resent_blocks"], 0, "{s}");

        // A long insertion (5 MiB and 3 bytes): found again within as many blocks again.
        let long: Vec<u8> = (0..5 * BLOCK as usize + 3).map(|i| (i * 7 % 251) as u8).collect();
        splice(&big, (20 * BLOCK) as usize + 5, &long, 0);
        let s = copy_json(&src, &dest);
        assert_same_tree(&src, &dest.join("src"));
        // (Blocks past the older version's end are decided as they are read, before its
        // anchors may have come: up to the insertion's length again.)
        assert!(payload(&s) <= 16 * BLOCK, "{s}");

        // A rewritten file still arrives whole and right.
        random_file(&big, 100 * BLOCK + 4321, 33);
        let s = copy_json(&src, &dest);
        assert_same_tree(&src, &dest.join("src"));
        assert!(payload(&s) >= 100 * BLOCK, "{s}");

        // In place, nothing moves (the older version is being overwritten), and all is right.
        splice(&small, 10, b"in place", 0);
        copy_json_with(&src, &dest, &["--inplace"]);
        assert_same_tree(&src, &dest.join("src"));
        assert!(part_files(&dest).is_empty());
    }
}

over_both! {
    fn many_small_insertions_and_deletions_cost_about_a_piece_each() {
        // Small edits that shift what follows them, scattered through a file, some blocks
        // holding two: each block an edit is in crosses as a spliced block (the receiver's
        // pieces around the edit, at the shifts before and after it), not as the bytes from the
        // edit to the block's end or up to the next anchor. rsync sends about 16 KiB per edit
        // of a file this size (its block of ~8 KiB, twice).
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("f.bin");
        random_file(&src, 48 * MIB + 777, 41);
        let dest = d.path().join("dest/");
        copy_json(&src, &dest);

        let mut data = fs::read(&src).unwrap();
        let mut x: u64 = 0x51ce_0000_0007;
        let mut edits: Vec<usize> = (0..60)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 16) as usize % (data.len() - 1000)
            })
            .collect();
        edits.sort_unstable_by(|a, b| b.cmp(a));
        for (i, &at) in edits.iter().enumerate() {
            // Deletions and insertions of 1 to 300 bytes, from the end back.
            let n = 1 + (at * 31) % 300;
            if i % 2 == 0 {
                data.drain(at..at + n);
            } else {
                data.splice(at..at, std::iter::repeat_n(i as u8, n));
            }
        }
        fs::write(&src, &data).unwrap();
        let s = copy_json(&src, &dest);
        assert_eq!(b3(&dest.join("f.bin")), b3(&src));
        let wire = s["wire_bytes"].as_u64().unwrap();
        assert!(wire <= 60 * 16 * 1024, "{wire} bytes on the wire for 60 edits: {s}");
        assert!(part_files(&dest).is_empty());
    }
}

over_both! {
    fn an_edit_in_a_last_block_or_a_small_file_costs_about_a_piece() {
        // No anchor shows the shift after an insertion or a deletion in a file's last block,
        // nor in a file of one block; the older version's last block, held only in part, has
        // no anchor either. Such an edit sent every byte after it to the block's end (a new
        // user's tree of 3,000 files, one small edit each: 233 MB where rsync sent 3.4 MB).
        // Now the block is spliced around the edit at the shift found by probing next to the
        // pieces that match in place, and the next block tries the shift the splice ended at.
        let d = tempfile::tempdir().unwrap();
        let (src, dest) = (d.path().join("tree"), d.path().join("dest"));
        fs::create_dir_all(&src).unwrap();
        // Sizes: under a piece past a block, one block and a bit, two and a bit, several.
        let sizes = [70_000u64, MIB + 1, 3_000_000, 5 * MIB + 77_777];
        let mut files = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            for (j, place) in [0.1f64, 0.5, 0.97].iter().enumerate() {
                let path = src.join(format!("f{i}{j}"));
                random_file(&path, size, (10 * i + j) as u8 + 60);
                files.push((path, (size as f64 * place) as usize, i * 3 + j));
            }
        }
        copy_json(&src, &dest);
        for (path, at, k) in &files {
            let mut data = fs::read(path).unwrap();
            match k % 3 {
                // A 2-byte insertion, a 5-byte deletion, a 300-byte insertion.
                0 => drop(data.splice(*at..*at + 3, b"abcde".iter().copied())),
                1 => drop(data.drain(*at..*at + 5)),
                _ => drop(data.splice(*at..*at, std::iter::repeat_n(b'x', 300))),
            }
            fs::write(path, &data).unwrap();
        }
        let s = copy_json(&src, &dest);
        assert_same_tree(&src, &dest.join("tree"));
        // Per file: the piece or two an edit touches, and the older version's last partial
        // piece, which is hashed by no one.
        let payload = s["payload_bytes"].as_u64().unwrap();
        assert!(
            payload <= files.len() as u64 * 16 * 1024,
            "{payload} bytes of payload for {} edits: {s}",
            files.len()
        );
        assert_eq!(s["resent_blocks"], 0, "{s}");
    }
}

over_both! {
    fn an_edit_after_an_insertion_or_a_deletion_is_patched_not_resent() {
        // An insertion or a deletion shifts the blocks after it, which are found in the older
        // version by their anchors; a small change further on lies in one of those blocks, past
        // the anchor that found it. That block used to fail verification at the receiver and
        // cross again whole, as if damaged (1 MiB for 7 bytes), its bytes counted both kept and
        // sent. Now only the pieces that differ cross, and kept + sent is the file's size.
        let d = tempfile::tempdir().unwrap();
        let (old, new) = (d.path().join("old"), d.path().join("new"));
        let dest = d.path().join("dest");
        for (size, seed) in [(4 * BLOCK, 51u8), (9 * BLOCK + 12_345, 52)] {
            random_file(&old, size, seed);
            let before = fs::read(&old).unwrap();
            let edit_at = (BLOCK - 48_576) as usize;
            let last = size as usize - 1000;
            // Changes: in the block after the edit (which moves with a literal prefix), in the
            // middle of a later one, across a block boundary, and near the end.
            for change_at in [BLOCK as usize + 300_000, 2 * BLOCK as usize + 502_848, 3 * BLOCK as usize - 3, last - 20] {
                for (inserted, removed) in [(1000usize, 0usize), (0, 1000)] {
                    let mut after = before[..edit_at].to_vec();
                    after.extend(std::iter::repeat_n(b'I', inserted));
                    after.extend_from_slice(&before[edit_at + removed..]);
                    after[change_at..change_at + 7].copy_from_slice(b"CHANGED");
                    fs::write(&new, &after).unwrap();
                    fs::copy(&old, &dest).unwrap();
                    let s = copy_json(&new, &dest);
                    let case = format!("size {size}, +{inserted} -{removed}, change at {change_at}: {s}");
                    assert_eq!(b3(&dest), b3(&new), "{case}");
                    assert_eq!(s["resent_blocks"], 0, "{case}");
                    let (payload, kept) = (
                        s["payload_bytes"].as_u64().unwrap(),
                        s["kept_bytes"].as_u64().unwrap(),
                    );
                    // An insertion: its block from the edit on (48 KiB), the prefix of the block
                    // after it, the last block (past the older version's end), the change's
                    // pieces. A deletion's block crosses up to the next anchor, most of a block
                    // (as in `an_insertion_or_a_deletion_costs_about_its_own_bytes`).
                    let most = if removed > 0 { BLOCK + (128 << 10) } else { 128 << 10 };
                    assert!(payload <= most, "{case}");
                    assert_eq!(kept + payload, after.len() as u64, "{case}");
                }
            }
        }
    }
}

over_both! {
    fn an_append_sends_what_was_appended_not_the_last_block() {
        // The older version ends inside its last block. That block counted as not held, and
        // crossed whole: 200 bytes appended to a 100 MB log sent 398 KB, and any append to a
        // file smaller than a block sent the whole file (a new user's report; rsync sent 2.5
        // KB). Now the receiver's whole pieces of that block are compared, and only the pieces
        // from the first that differs on cross.
        let d = tempfile::tempdir().unwrap();
        let (old, new) = (d.path().join("old"), d.path().join("new"));
        let dest = d.path().join("dest");
        for (size, appended, flip) in [
            (40_000u64, 100usize, None),
            (3 * BLOCK + 397_625, 200, None),
            (700_000, 100, Some(300_000usize)),
            (BLOCK - 1, 5000, None),
        ] {
            random_file(&old, size, 61);
            let mut after = fs::read(&old).unwrap();
            if let Some(at) = flip {
                after[at] ^= 0xff;
            }
            after.extend(std::iter::repeat_n(b'A', appended));
            fs::write(&new, &after).unwrap();
            fs::copy(&old, &dest).unwrap();
            let s = copy_json(&new, &dest);
            let case = format!("size {size}, +{appended}, flip {flip:?}: {s}");
            assert_eq!(b3(&dest), b3(&new), "{case}");
            let (payload, kept) = (
                s["payload_bytes"].as_u64().unwrap(),
                s["kept_bytes"].as_u64().unwrap(),
            );
            assert_eq!(kept + payload, after.len() as u64, "{case}");
            // The appended bytes and the older version's last partial piece (4 KiB), or from
            // the flipped byte's piece on.
            let most = match flip {
                None => appended as u64 + 4096,
                Some(at) => after.len() as u64 - (at as u64 / 4096 * 4096),
            };
            assert!(payload <= most, "{case}");
        }
    }
}

over_both! {
    fn a_long_copy_of_the_older_version_is_progress_not_a_stall() {
        // A delta lays the older version into the part file first; for a file of hundreds of
        // GiB that takes minutes, while the sender has sent its few blocks and waits. It used
        // to end the transfer with "no progress for N s" (a new user's 3 GiB delta with
        // --stall-timeout 2). Here each 8 MiB of the copy takes 0.7 s longer: 4 s for 48 MiB.
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("f.bin");
        random_file(&src, 48 * BLOCK, 41);
        let dest = d.path().join("dest");
        fs::create_dir_all(&dest).unwrap();
        fs::copy(&src, dest.join("f.bin")).unwrap();
        splice(&src, (30 * BLOCK + 5) as usize, b"an edit", 0);
        let out = sluice()
            .args(["--json", "copy", "--stall-timeout", "2"])
            .arg(&src)
            .arg(&dest)
            .env("SLUICE_FAULT_SLOW_COPY", "700")
            .output()
            .unwrap();
        let s = json_summary(&out);
        assert_eq!(b3(&dest.join("f.bin")), b3(&src));
        assert!(s["payload_bytes"].as_u64().unwrap() <= 3 * BLOCK, "{s}");
        assert!(s["seconds"].as_f64().unwrap() >= 4.0, "the copy was slowed: {s}");
    }
}

over_both! {
    fn a_long_read_of_an_unchanged_file_is_progress_not_a_stall() {
        // The receiver has scanned its copy of an unchanged file and waits while the sender,
        // on a slower disk, reads and hashes its own: nothing crosses until the file's
        // FileDone. For a file of hundreds of GiB that is minutes. Here 64 KiB blocks (groups
        // of 4 MiB) each take 40 ms longer to read: 7.7 s for 12 MiB, with --stall-timeout 2 at
        // both ends, shorter than one group's 2.6 s: each block read is progress, not each
        // group found held (counting groups failed CI's loaded runs at 30 ms a block).
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("f.bin");
        random_file(&src, 12 * BLOCK, 43);
        let dest = d.path().join("dest");
        fs::create_dir_all(&dest).unwrap();
        fs::copy(&src, dest.join("f.bin")).unwrap();
        let recv = Recv::start_with(&dest, &["--json", "--stall-timeout", "2"]);
        let out = sluice()
            .env("SLUICE_FAULT_SLOW_READ", "40")
            .args(["--json", "send", "--stall-timeout", "2", "--block-size", "64K"])
            .arg(&src)
            .arg(&recv.ticket)
            .output()
            .unwrap();
        let r = recv.wait();
        let s = json_summary(&out);
        json_summary(&r);
        assert_eq!(b3(&dest.join("f.bin")), b3(&src));
        assert_eq!(s["payload_bytes"], 0, "{s}");
        assert!(s["seconds"].as_f64().unwrap() >= 7.0, "the reads were slowed: {s}");
    }
}

over_both! {
    fn an_interrupted_delta_of_a_shifted_file_resumes_as_a_delta() {
        // What an interrupted delta leaves: the older version still under the final name, and
        // a part file that holds the older version's bytes (copied in first) with the new
        // version's first 20 blocks written over them. The rerun resumes the part file and finds
        // the shifted blocks in the older version beside it, instead of sending them all.
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("big.bin");
        random_file(&src, 40 * BLOCK + 777, 41);
        let old = fs::read(&src).unwrap();
        let dest = d.path().join("dest/");
        copy_json(&src, &dest);
        splice(&src, (3 * BLOCK + 5) as usize, &[0x77; 5000], 0);
        let new = fs::read(&src).unwrap();
        let half = 20 * BLOCK as usize;
        let mut part = new[..half].to_vec();
        part.extend_from_slice(&old[half..]);
        fs::write(dest.join(".big.bin.sluice-part"), part).unwrap();
        let s = copy_json(&src, &dest);
        assert_eq!(b3(&dest.join("big.bin")), b3(&src));
        assert!(part_files(&dest).is_empty());
        // The 20 blocks after the part file's new ones are found shifted: about a block crosses,
        // not 20.
        assert!(s["payload_bytes"].as_u64().unwrap() <= 2 * BLOCK, "{s}");

        // Interrupted earlier, while the older version was being laid into the part file: no
        // block written, no journal, a part file shorter than the older version. The rerun
        // takes the older version as its base again instead of sending all past the part
        // file's end (a new user's 1 GiB delta killed half a second in: 604 MB re-sent).
        let old = fs::read(&src).unwrap();
        splice(&src, (30 * BLOCK + 9) as usize, &[0x99; 3000], 0);
        fs::write(dest.join(".big.bin.sluice-part"), &old[..15 * BLOCK as usize + 123]).unwrap();
        let s = copy_json(&src, &dest);
        assert_eq!(b3(&dest.join("big.bin")), b3(&src));
        assert!(part_files(&dest).is_empty());
        assert!(s["payload_bytes"].as_u64().unwrap() <= 2 * BLOCK, "{s}");
    }
}

over_both! {
    fn truncated_file_with_blocks_larger_than_the_copy_buffer() {
        // 16 MiB blocks are larger than the 8 MiB runs kept blocks are copied in; the new version
        // is an unchanged prefix of the old one, so only the kept blocks are copied.
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("f.bin");
        random_file(&src, 40 * BLOCK, 23);
        let dest = d.path().join("dest/");
        let big = |src: &Path, dest: &Path| copy_json_with(src, dest, &["--block-size", "16M"]);
        big(&src, &dest);
        let f = fs::OpenOptions::new().write(true).open(&src).unwrap();
        f.set_len(32 * BLOCK + 5).unwrap();
        drop(f);
        let s = big(&src, &dest);
        assert!(s["payload_bytes"].as_u64().unwrap() <= 5, "{s}");
        assert_eq!(b3(&dest.join("f.bin")), b3(&src));
        assert!(part_files(&dest).is_empty());
    }
}

over_both! {
    fn patches_in_a_tree_with_send_and_recv() {
        // Forty files of a block and a bit; ten of them get a 5-byte edit. Each edited file's
        // block crosses as one 4 KiB piece, through separate send and recv processes.
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("tree");
        fs::create_dir_all(src.join("sub")).unwrap();
        for i in 0..40u64 {
            random_file(
                &src.join(format!("sub/f{i}.bin")),
                BLOCK + 7 * i,
                40 + i as u8,
            );
        }
        let dest = d.path().join("dest");
        copy_json(&src, &dest);
        for i in (0..40u64).step_by(4) {
            edit(&src.join(format!("sub/f{i}.bin")), 300_000 + i, b"hello");
        }
        let s = send_recv_json(&src, &dest);
        assert_eq!(s["payload_bytes"].as_u64().unwrap(), 10 * 4096, "{s}");
        assert_same_tree(&src, &dest.join("tree"));
        assert!(part_files(&dest).is_empty());
    }
}

over_both! {
    fn unchanged_tree_sends_no_payload() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("tree");
        fs::create_dir_all(src.join("sub")).unwrap();
        for i in 0..1000u32 {
            fs::write(
                src.join("sub").join(format!("f{i}")),
                format!("{i}").repeat(i as usize % 50 + 1),
            )
            .unwrap();
        }
        random_file(&src.join("big"), 5 * BLOCK + 7, 2);
        let dest = d.path().join("dest");
        copy_json(&src, &dest);
        let s = copy_json(&src, &dest);
        assert_eq!(s["payload_bytes"], 0, "{s}");
        assert_same_tree(&src, &dest.join("tree"));
    }
}

over_both! {
    fn blocks_sent_before_the_receivers_answer_are_kept_or_dropped_as_it_holds() {
        // At a long round trip the first file's first blocks go before the receiver has said
        // what it holds. SLUICE_FAULT_EARLY makes them go on loopback too, three of them,
        // however soon the answer comes.
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("tree");
        fs::create_dir_all(&src).unwrap();
        let k = 64 << 10;
        random_file(&src.join("a.bin"), 20 * k + 5, 61);
        random_file(&src.join("b.bin"), 3 * k + 1, 62);
        fs::write(src.join("c.txt"), "small").unwrap();
        let dest = d.path().join("dest");
        let early = [("SLUICE_FAULT_EARLY", "3")];
        let options = ["--block-size", "64K"];
        // A receiver that holds nothing keeps them: every byte crosses once.
        let (s, r) = send_recv_summaries(&src, &dest, &options, &early);
        assert_eq!(s["payload_bytes"], 23 * k + 11, "{s}");
        assert_eq!(r["payload_bytes"], s["payload_bytes"], "{r}");
        assert_same_tree(&src, &dest.join("tree"));
        // One that holds the files drops them unread, and they are not counted as sent.
        let (s, r) = send_recv_summaries(&src, &dest, &options, &early);
        assert_eq!(s["payload_bytes"], 0, "{s}");
        assert_eq!(r["payload_bytes"], 0, "{r}");
        assert_same_tree(&src, &dest.join("tree"));
        // A change among the early blocks and one after them: both blocks are sent again the
        // usual way, as patches.
        edit(&src.join("a.bin"), k + 10, b"early");
        edit(&src.join("a.bin"), 10 * k + 3, b"later");
        let (s, r) = send_recv_summaries(&src, &dest, &options, &early);
        let sent = s["payload_bytes"].as_u64().unwrap();
        assert!(sent > 0 && sent <= 2 * k, "{s}");
        assert_eq!(r["payload_bytes"], s["payload_bytes"], "{r}");
        assert_same_tree(&src, &dest.join("tree"));
        assert!(part_files(&dest.join("tree")).is_empty());
    }
}

/// Bytes of `part` that do not already equal the source, counted in whole blocks.
fn missing_bytes(src: &Path, part: &Path) -> u64 {
    let (mut a, mut b) = (fs::File::open(src).unwrap(), fs::File::open(part).unwrap());
    let size = a.metadata().unwrap().len();
    let (mut x, mut y) = (vec![0u8; BLOCK as usize], vec![0u8; BLOCK as usize]);
    let mut missing = 0;
    let mut off = 0;
    while off < size {
        let n = (size - off).min(BLOCK) as usize;
        a.read_exact(&mut x[..n]).unwrap();
        let got = read_up_to(&mut b, &mut y[..n]);
        if got < n || x[..n] != y[..n] {
            missing += n as u64;
        }
        off += n as u64;
    }
    missing
}

fn read_up_to(f: &mut fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// What the second run of [`kill_and_resume`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Runs again as it was: the receiver's journal vouches for what it kept.
    Resume,
    /// Damages the part file, then runs again with `--rehash`: the sender reads and hashes the
    /// kept part too, and the receiver its part file, not trusting its journal.
    Rehash,
    /// Damages a journaled block of the part file, then runs again as it was: the receiver
    /// reads its part file, so its report of the block disagrees with the journal's vouch and
    /// the block is sent again; the rest is still vouched for.
    DamagePart,
    /// Overwrites 4 KiB of the source inside the part already sent, then runs again: the
    /// journal must vouch for nothing (the source changed), and the edit must arrive.
    EditSource,
    /// Both runs' sender have versions that ignore change times (test-only fault injection,
    /// as on a filesystem whose change times lie); between them the source gets other bytes of
    /// the same size. The second run's spot check must catch it and fail, the final name must
    /// stay free, and `--rehash` must then complete the transfer.
    SwapSource,
}

/// The sender's environment for [`Then::SwapSource`].
const FROZEN: (&str, &str) = ("SLUICE_FAULT_FROZEN_VERSION", "1");

/// Starts a transfer of `src` with separate send and recv processes, kills one of them with
/// SIGKILL once the receiver has written `fraction` of the file, then the other; reruns the
/// transfer (as `then` says) and checks that only the missing part crossed.
fn kill_and_resume(src: &Path, fraction: f64, kill_sender_first: bool, then: Then) {
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("dest");
    let size = src.metadata().unwrap().len();
    let part = dest.join(format!(
        ".{}.sluice-part",
        src.file_name().unwrap().to_string_lossy()
    ));
    let journal = dest.join(format!(
        ".{}.sluice-journal",
        src.file_name().unwrap().to_string_lossy()
    ));
    let final_path = dest.join(src.file_name().unwrap());

    let frozen: &[(&str, &str)] = if then == Then::SwapSource {
        &[FROZEN]
    } else {
        &[]
    };
    let recv = Recv::start(&dest);
    let mut send = sluice()
        .envs(frozen.iter().copied())
        .arg("send")
        .arg(src)
        .arg(&recv.ticket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let written = part.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
        if written as f64 >= fraction * size as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "transfer did not reach {fraction}"
        );
        assert!(
            send.try_wait().unwrap().is_none(),
            "sender finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    if kill_sender_first {
        send.kill().unwrap();
        send.wait().unwrap();
        drop(recv);
    } else {
        drop(recv);
        send.kill().unwrap();
        send.wait().unwrap();
    }
    assert!(
        !final_path.exists(),
        "an unverified file holds the final name"
    );
    assert!(part.exists(), "the partial file must be kept");
    assert!(journal.exists(), "the resume journal must be kept");
    if then == Then::EditSource {
        // Inside the first block, which the receiver holds and has journaled; then past the
        // 3 s in which a changed file is not vouched for anyway, so the version must differ.
        edit(src, 100, &[0x5a; 4096]);
        std::thread::sleep(Duration::from_secs(3));
    }
    if matches!(then, Then::Rehash | Then::DamagePart) {
        // Another program damages journaled blocks of the part file between the runs (once
        // this reached the final name, the journal's record taken for the bytes): the first
        // block, which the sender reads anyway as a spot check, and one it takes unread on
        // the journal's word.
        edit(&part, 1000, b"CORRUPT");
        edit(&part, 5 * BLOCK + 1000, b"CORRUPT");
    }
    let missing = missing_bytes(src, &part);
    assert!(missing < size, "nothing was kept");
    if then == Then::SwapSource {
        random_file(src, size, 99);
        let recv = Recv::start(&dest);
        let out = sluice()
            .envs(frozen.iter().copied())
            .arg("send")
            .arg(src)
            .arg(&recv.ticket)
            .output()
            .unwrap();
        drop(recv);
        let err = stderr(&out);
        assert!(!out.status.success(), "a swapped source was sent: {err}");
        assert!(
            err.contains("resume journal recorded") && err.contains("--rehash"),
            "{err}"
        );
        assert!(
            !final_path.exists(),
            "an unverified file holds the final name"
        );
        let s = send_recv_json_env(src, &dest, &["--rehash"], frozen);
        assert_eq!(s["vouched_bytes"].as_u64(), Some(0));
        assert_eq!(b3(&final_path), b3(src));
        assert!(!part.exists());
        return;
    }

    let options: &[&str] = if then == Then::Rehash {
        &["--rehash"]
    } else {
        &[]
    };
    let (s, r) = send_recv_summaries(src, &dest, options, &[]);
    let payload = s["payload_bytes"].as_u64().unwrap();
    let kept = s["kept_bytes"].as_u64().unwrap();
    let vouched = s["vouched_bytes"].as_u64().unwrap();
    let case = format!("killed at {fraction}, sender first: {kill_sender_first}, then {then:?}");
    eprintln!("{case}: missing {missing}, sent {payload}, kept {kept}, vouched {vouched}");
    assert!(
        payload <= missing + size / 100,
        "second run sent {payload} bytes; {missing} were missing ({case})"
    );
    assert_eq!(b3(&final_path), b3(src), "{case}");
    match then {
        // Most of what was kept was journaled, and taken unread on the journal's word (on a
        // filesystem whose change times can be trusted; elsewhere nothing is); both ends count
        // the bytes kept.
        Then::Resume => {
            let trusted =
                sluice_engine::manifest::keeps_change_times(&fs::File::open(src).unwrap());
            if trusted {
                assert!(
                    vouched > 0 && vouched <= kept && vouched >= (size - missing) / 2,
                    "vouched for {vouched} of {kept} kept bytes, {missing} missing ({case})"
                );
            } else {
                eprintln!("{case}: the source's filesystem is not trusted for vouching");
                assert_eq!(vouched, 0, "{case}");
            }
            // The receiver counts whole blocks it kept; the sender also the unsent bytes of a
            // block it patched (a block torn by the kill, where writes go through the page
            // cache, e.g. on tmpfs).
            let r_kept = r["kept_bytes"].as_u64().unwrap();
            assert!(
                r_kept <= kept && kept - r_kept <= size / 100,
                "receiver kept {r_kept}, sender {kept} ({case})"
            );
        }
        Then::Rehash | Then::EditSource => assert_eq!(vouched, 0, "{case}"),
        Then::DamagePart => assert!(vouched < size - missing, "{case}"),
        Then::SwapSource => unreachable!("returned above"),
    }
    assert!(!part.exists());
    assert!(!journal.exists(), "the journal outlived its part file");
}

#[test]
fn resume_after_sender_or_receiver_is_killed() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("big.bin");
    random_file(&src, GIB, 13);
    // A file changed within the last 3 s is never vouched for (it could change again within
    // its change time's tick).
    std::thread::sleep(Duration::from_secs(3));
    // Ten kill points from a fixed seed (reproducible, and not only round fractions), the
    // sender killed first at five of them and the receiver at the other five.
    let mut x: u64 = 0x5eed_0f51_u64;
    for i in 0..10 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let fraction = 0.05 + 0.9 * ((x >> 11) as f64 / (1u64 << 53) as f64);
        kill_and_resume(&src, fraction, i % 2 == 0, Then::Resume);
    }
    kill_and_resume(&src, 0.5, true, Then::Rehash);
    kill_and_resume(&src, 0.5, false, Then::DamagePart);
    // Last: they change the source.
    kill_and_resume(&src, 0.5, false, Then::EditSource);
    kill_and_resume(&src, 0.5, true, Then::SwapSource);
}

/// Kills as in the test above, once each way, over TCP: there a killed process's kernel resets
/// the connections instead of going silent.
#[test]
fn resume_over_tcp_after_sender_or_receiver_is_killed() {
    over("tcp", || {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("big.bin");
        random_file(&src, GIB, 14);
        std::thread::sleep(Duration::from_secs(3));
        kill_and_resume(&src, 0.5, true, Then::Resume);
        kill_and_resume(&src, 0.5, false, Then::Resume);
    });
}

over_both! {
    fn restart_discards_partial_files() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("f.bin");
        random_file(&src, 8 * BLOCK, 4);
        let dest = d.path().join("dest");
        fs::create_dir_all(&dest).unwrap();
        // A partial file from an "earlier run" holding the right first half.
        let mut part = fs::File::create(dest.join(".f.bin.sluice-part")).unwrap();
        part.write_all(&fs::read(&src).unwrap()[..4 * BLOCK as usize])
            .unwrap();
        drop(part);
        let s = json_summary(
            &sluice()
                .args(["--json", "copy", "--restart"])
                .arg(&src)
                .arg(&dest)
                .output()
                .unwrap(),
        );
        assert_eq!(s["payload_bytes"], 8 * BLOCK, "{s}");
        assert_eq!(b3(&dest.join("f.bin")), b3(&src));
    }
}

over_both! {
    fn verify_lists_differing_ranges_without_moving_data() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("data");
        fs::create_dir_all(&src).unwrap();
        random_file(&src.join("a"), 6 * BLOCK, 1);
        let dest = d.path().join("dest");
        copy_json(&src, &dest);
        let same = sluice()
            .arg("verify")
            .arg(&src)
            .arg(&dest)
            .output()
            .unwrap();
        assert!(
            same.status.success(),
            "{}",
            String::from_utf8_lossy(&same.stdout)
        );
        edit(&dest.join("data/a"), 2 * BLOCK + 5, b"changed");
        fs::write(src.join("new"), b"only at the source").unwrap();
        fs::write(dest.join("data/stray"), b"only at the destination").unwrap();
        let out = sluice()
            .arg("verify")
            .arg(&src)
            .arg(&dest)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let text = String::from_utf8_lossy(&out.stdout);
        // The bytes that differ, not the block they are in.
        assert!(
            text.contains(&format!(
                "differs: data/a: {0} vs {0} bytes; ranges {1}..{2}",
                6 * BLOCK,
                2 * BLOCK + 5,
                2 * BLOCK + 12
            )),
            "{text}"
        );
        assert!(text.contains("missing: data/new"), "{text}");
        assert!(text.contains("extra: data/stray"), "{text}");
    }
}

over_both! {
    fn inplace_delta_writes_only_changed_blocks_into_the_existing_file() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("f.bin");
        random_file(&src, 64 * BLOCK, 21);
        let dest = d.path().join("dest/");
        copy_json(&src, &dest);
        let inode = fs::metadata(dest.join("f.bin")).unwrap().ino();
        for i in 0..3u64 {
            edit(&src, i * 20 * BLOCK + 99, b"new bytes");
        }
        let s = json_summary(
            &sluice()
                .args(["--json", "copy", "--inplace"])
                .arg(&src)
                .arg(&dest)
                .output()
                .unwrap(),
        );
        // Each 9-byte edit sits inside one 4 KiB piece: only those pieces cross.
        assert_eq!(s["payload_bytes"], 3 * 4096, "{s}");
        assert_eq!(b3(&dest.join("f.bin")), b3(&src));
        // Same file, updated in place; no part file.
        assert_eq!(fs::metadata(dest.join("f.bin")).unwrap().ino(), inode);
        assert!(part_files(&dest).is_empty());
    }
}

over_both! {
    fn files_removed_at_the_source_stay_unless_delete_is_given() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("tree");
        fs::create_dir_all(src.join("sub/deeper")).unwrap();
        fs::write(src.join("keep"), b"k").unwrap();
        fs::write(src.join("gone"), b"g").unwrap();
        fs::write(src.join("sub/deeper/x"), b"x").unwrap();
        let dest = d.path().join("dest");
        copy_json(&src, &dest);
        fs::remove_file(src.join("gone")).unwrap();
        fs::remove_dir_all(src.join("sub/deeper")).unwrap();
        let outside = dest.join("not-from-this-transfer");
        fs::write(&outside, b"mine").unwrap();
        // A name that is not UTF-8 is judged like any other.
        let latin1 = dest.join(std::ffi::OsStr::from_bytes(b"tree/sub/extra \xe9"));
        fs::write(&latin1, b"extra").unwrap();

        copy_json(&src, &dest);
        assert!(dest.join("tree/gone").exists(), "left alone by default");
        assert!(dest.join("tree/sub/deeper/x").exists());

        copy_json_with(&src, &dest, &["--delete"]);
        assert!(!dest.join("tree/gone").exists());
        assert!(!dest.join("tree/sub/deeper").exists());
        assert!(!latin1.exists());
        assert!(dest.join("tree/keep").exists());
        assert!(
            outside.exists(),
            "nothing outside the transferred directories is touched"
        );
        assert_same_tree(&src, &dest.join("tree"));

        // Entries whose type changed at the source: a directory became a file, a file a
        // directory, a file a symlink. Without --delete each fails, naming what is in the way
        // (exit 7); with it they are replaced, as rsync --delete does, and a symlink at the
        // destination is removed itself, never followed.
        fs::write(src.join("sub/deeper-file"), b"d").unwrap();
        fs::create_dir(src.join("sub/becomes-file")).unwrap();
        fs::write(src.join("sub/becomes-file/inner"), b"i").unwrap();
        fs::write(src.join("sub/becomes-dir"), b"f").unwrap();
        copy_json(&src, &dest);
        fs::remove_dir_all(src.join("sub/becomes-file")).unwrap();
        fs::write(src.join("sub/becomes-file"), b"now a file").unwrap();
        fs::remove_file(src.join("sub/becomes-dir")).unwrap();
        fs::create_dir(src.join("sub/becomes-dir")).unwrap();
        fs::write(src.join("sub/becomes-dir/y"), b"y").unwrap();
        fs::remove_file(src.join("keep")).unwrap();
        std::os::unix::fs::symlink("sub/deeper-file", src.join("keep")).unwrap();
        let target = d.path().join("outside-target");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("precious"), b"p").unwrap();
        std::os::unix::fs::symlink(&target, dest.join("tree/sub/link-in-the-way")).unwrap();
        fs::write(src.join("sub/link-in-the-way"), b"l").unwrap();
        let out = sluice().arg("copy").arg(&src).arg(&dest).output().unwrap();
        assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
        assert!(stderr(&out).contains("--delete replaces it"), "{}", stderr(&out));
        copy_json_with(&src, &dest, &["--delete"]);
        assert_same_tree(&src, &dest.join("tree"));
        assert!(target.join("precious").exists(), "a link in the way was followed");
    }
}

/// The paths (a directory's ending in `/`) of its `deleted` events, sorted.
fn deleted_paths(events: &[serde_json::Value]) -> Vec<String> {
    let mut paths: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "deleted")
        .map(|e| {
            let slash = if e["dir"] == true { "/" } else { "" };
            format!("{}{slash}", e["path"].as_str().unwrap())
        })
        .collect();
    paths.sort();
    paths
}

over_both! {
    /// What `--delete` removes is said, not done silently: each entry as a `deleted` event (a
    /// line without `--json`) where the receiver's events are shown (`copy`, `recv`), and the
    /// count in both ends' summaries, the sender's from the receiver's `Summary`.
    fn delete_names_what_it_removed() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("dl");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("a"), b"a").unwrap();
        let dest = d.path().join("dest");
        let extras = |dest: &Path| {
            fs::create_dir_all(dest.join("dl/old/deeper")).unwrap();
            fs::write(dest.join("dl/extra"), b"e").unwrap();
            fs::write(dest.join("dl/old/deeper/x"), b"x").unwrap();
        };
        extras(&dest);

        let out = sluice().args(["--json", "copy", "--delete"]).arg(&src).arg(&dest).output().unwrap();
        let s = json_summary(&out);
        assert_eq!(deleted_paths(&json_events(&out)), ["dl/extra", "dl/old/"]);
        assert_eq!(s["deleted"], 2, "{s}");
        assert!(!dest.join("dl/extra").exists() && !dest.join("dl/old").exists());

        // Nothing to remove: no events, and a count of 0.
        let out = sluice().args(["--json", "copy", "--delete"]).arg(&src).arg(&dest).output().unwrap();
        assert_eq!(json_summary(&out)["deleted"], 0);
        assert!(deleted_paths(&json_events(&out)).is_empty());

        fs::write(dest.join("dl/extra"), b"e").unwrap();
        let out = sluice().args(["copy", "--delete"]).arg(&src).arg(&dest).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("deleted: dl/extra\n"), "{text}");
        assert!(text.contains("; deleted 1 entry at the destination"), "{text}");

        extras(&dest);
        let recv = Recv::start_full(&dest, &["--json"], &["--allow-delete"]);
        let out = sluice().args(["--json", "send", "--delete"]).arg(&src).arg(&recv.ticket).output().unwrap();
        assert_eq!(json_summary(&out)["deleted"], 2);
        let r = recv.wait();
        assert_eq!(json_summary(&r)["deleted"], 2);
        assert_eq!(deleted_paths(&json_events(&r)), ["dl/extra", "dl/old/"]);
        assert_same_tree(&src, &dest.join("dl"));
    }
}

over_both! {
    fn verify_against_a_receiver_moves_no_data_and_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("data");
        fs::create_dir_all(&src).unwrap();
        random_file(&src.join("a"), 200 * BLOCK, 1);
        fs::write(src.join("same"), b"identical").unwrap();
        let dest = d.path().join("dest");
        copy_json(&src, &dest);
        edit(&dest.join("data/a"), 130 * BLOCK + 5, b"changed");
        fs::write(src.join("new"), b"only at the source").unwrap();
        let before = b3(&dest.join("data/a"));

        let recv = Recv::start(&dest);
        let out = sluice()
            .arg("verify")
            .arg(&src)
            .arg(&recv.ticket)
            .output()
            .unwrap();
        let r = recv.wait();
        assert!(r.status.success(), "recv: {}", stderr(&r));
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!(
                "differs: data/a: ranges {}..{}",
                130 * BLOCK,
                131 * BLOCK
            )),
            "{text}"
        );
        assert!(text.contains("missing: data/new"), "{text}");
        assert_eq!(text.matches("data/new").count(), 1, "listed once: {text}");
        assert!(!text.contains("data/same"), "{text}");
        // Nothing was written at the receiver.
        assert_eq!(b3(&dest.join("data/a")), before);
        assert!(!dest.join("data/new").exists());
        assert!(part_files(&dest).is_empty());
    }
}

over_both! {
    /// `sluice verify SRC TICKET` against a receiver: the sender names what differs, and the
    /// receiver, which serves one sender, says it only compared and is done. It printed "0
    /// files (0 entries), 0 bytes verified" and exit 0 (a new user's report), which reads as
    /// a transfer that moved nothing.
    fn a_receiver_that_served_a_verify_says_so() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("f.txt");
        fs::write(&src, b"to compare").unwrap();
        let dest = d.path().join("dest");
        let recv = Recv::start(&dest);
        let out = sluice().arg("verify").arg(&src).arg(&recv.ticket).output().unwrap();
        let told = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert_eq!(out.status.code(), Some(1), "{told}");
        assert!(told.contains("missing"), "{told}");
        let r = recv.wait();
        assert!(r.status.success(), "{}", stderr(&r));
        let said = String::from_utf8_lossy(&r.stdout);
        assert!(
            said.contains("for a `sluice verify` (nothing was written)")
                && said.contains("start a new `sluice recv` to send"),
            "{said}"
        );
        assert!(!dest.join("f.txt").exists());
    }
}

/// A part file an interrupted run left for a file the source no longer has (renamed or removed
/// since) is named in a warning on the next run, which succeeds; one still claimed by a
/// transfer under way is not; `--delete` removes it and says nothing of it.
#[test]
fn partial_files_the_run_did_not_use_are_named() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("tree");
    fs::create_dir_all(src.join("sub")).unwrap();
    random_file(&src.join("sub/kept.bin"), 100_000, 51);
    let dest = d.path().join("dest");
    copy_json(&src, &dest);
    let sub = dest.join("tree/sub");
    fs::write(sub.join(".gone.bin.sluice-part"), b"half of a file").unwrap();
    let claimed = sub.join(".busy.bin.sluice-part");
    fs::write(&claimed, b"another transfer's").unwrap();
    // A FIFO of such a name is left alone (opened, it would wait for a writer).
    let fifo = sub.join(".pipe.bin.sluice-part");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    let lock = fs::File::open(&claimed).unwrap();
    lock.try_lock().unwrap();

    let run = |extra: &[&str]| {
        let out = sluice()
            .arg("copy")
            .args(extra)
            .arg(&src)
            .arg(&dest)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out)
    };
    let err = run(&[]);
    assert!(
        err.contains("1 partial file(s) of an earlier, interrupted transfer"),
        "{err}"
    );
    assert!(err.contains(".gone.bin.sluice-part"), "{err}");
    assert!(!err.contains(".busy.bin"), "{err}");
    assert!(!err.contains(".pipe.bin"), "{err}");
    drop(lock);
    let err = run(&["--delete"]);
    assert!(!err.contains("partial file"), "{err}");
    assert!(!sub.join(".gone.bin.sluice-part").exists());
}

over_both! {
    /// The receiver's `--json` progress lines carry the path as it sees it (round trip, bytes
    /// in): they said 0 for everything, the sender's alone were filled in.
    fn the_receivers_progress_lines_show_its_path() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("f.bin");
        random_file(&src, 24 << 20, 4);
        let dest = d.path().join("dest/");
        let recv = Recv::start_with(&dest, &["--json"]);
        // 24 MiB at 64 Mbit/s: three seconds, time for progress lines at both ends.
        let out = sluice()
            .args(["send", "--max-rate", "64M"])
            .arg(&src)
            .arg(&recv.ticket)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let r = recv.wait();
        let lines = events_of(&r, "progress");
        let last = lines.last().unwrap_or_else(|| panic!("no progress line: {}", stdout(&r)));
        let path = &last["path"];
        assert!(path["wire_rx_bytes"].as_u64().unwrap() > 1 << 20, "{last}");
        assert!(path["wire_tx_bytes"].as_u64().unwrap() > 0, "{last}");
        assert!(path["rtt_ms"].as_f64().unwrap() > 0.0, "{last}");
        assert_eq!(b3(&dest.join("f.bin")), b3(&src));
    }
}
