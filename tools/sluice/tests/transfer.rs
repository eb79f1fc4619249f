//! End to end: the real `sluice` binary moves real files over real QUIC and TCP on loopback, and
//! the result is compared byte for byte and by BLAKE3 with the source.

#[macro_use]
mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;

use common::*;

const BLOCK: u64 = 1 << 20;

over_both! {
    /// A file with several names arrives once and keeps them as hard links (as cp -a, tar and
    /// rsync -H), also into a destination that already holds separate copies; `verify` notices a
    /// name that is a copy instead of a link.
    fn hard_links_arrive_as_one_file_with_its_names() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("tree");
        fs::create_dir_all(src.join("sub")).unwrap();
        random_file(&src.join("a.bin"), 3 * BLOCK + 5, 1);
        fs::hard_link(src.join("a.bin"), src.join("sub/also.bin")).unwrap();
        fs::hard_link(src.join("a.bin"), src.join("z.bin")).unwrap();
        random_file(&src.join("other.bin"), 1000, 2);
        let dest = d.path().join("dest");
        // An earlier, separate copy sits under one of the names.
        fs::create_dir_all(dest.join("tree")).unwrap();
        random_file(&dest.join("tree/z.bin"), 10, 3);
        let out = sluice().arg("copy").arg(&src).arg(&dest).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let ino = |p: &str| {
            let m = fs::metadata(dest.join(p)).unwrap();
            (m.ino(), m.nlink())
        };
        let (a, links) = ino("tree/a.bin");
        assert_eq!(links, 3, "three names for one file");
        assert_eq!(ino("tree/sub/also.bin").0, a);
        assert_eq!(ino("tree/z.bin").0, a);
        assert_ne!(ino("tree/other.bin").0, a);
        assert_eq!(b3(&dest.join("tree/z.bin")), b3(&src.join("a.bin")));
        let out = sluice().arg("verify").arg(&src).arg(&dest).output().unwrap();
        assert!(out.status.success(), "verify: {}", stderr(&out));
        // A name that is a copy, not a link, is a difference.
        fs::remove_file(dest.join("tree/z.bin")).unwrap();
        fs::copy(src.join("a.bin"), dest.join("tree/z.bin")).unwrap();
        let out = sluice().arg("verify").arg(&src).arg(&dest).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "verify: {}", stderr(&out));
        // Run again, it is a link again; nothing else changes.
        let out = sluice().arg("copy").arg(&src).arg(&dest).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(ino("tree/z.bin").0, a);
        assert_eq!(ino("tree/a.bin").1, 3);
    }
}

over_both! {
    fn copy_edge_sizes_byte_for_byte() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("edges");
        fs::create_dir(&src).unwrap();
        for (i, len) in [
            0,
            1,
            4095,
            4096,
            4097,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            3 * BLOCK + 17,
        ]
        .into_iter()
        .enumerate()
        {
            random_file(&src.join(format!("f{len}")), len, i as u8);
        }
        fs::set_permissions(src.join("f1"), fs::Permissions::from_mode(0o600)).unwrap();
        let dest = d.path().join("dest");
        let out = sluice().arg("copy").arg(&src).arg(&dest).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(summary.contains("9 files"), "{summary}");
        assert_same_tree(&src, &dest.join("edges"));
        assert!(part_files(&dest).is_empty());
    }
}

/// Files on tmpfs are read at once by the reader thread where the read is short (io_uring
/// hands every tmpfs read to a worker): every size around that limit and the block size
/// arrives byte for byte.
#[test]
fn a_tree_in_memory_arrives_byte_for_byte() {
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("skipped: no /dev/shm on this machine");
        return;
    }
    let d = tempfile::tempdir_in(shm).unwrap();
    let src = d.path().join("shm");
    fs::create_dir(&src).unwrap();
    let sizes = [
        0,
        1,
        4096,
        (64 << 10) - 1,
        64 << 10,
        (64 << 10) + 1,
        BLOCK - 1,
        BLOCK + 1,
        2 * BLOCK + (64 << 10),
    ];
    for (i, len) in sizes.into_iter().enumerate() {
        random_file(&src.join(format!("f{len}")), len, i as u8);
    }
    for i in 0..300u64 {
        random_file(&src.join(format!("small{i}")), 1 + i * 37, (i % 200) as u8);
    }
    let dest = tempfile::tempdir().unwrap();
    let out = sluice()
        .arg("copy")
        .arg(&src)
        .arg(dest.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(&src, &dest.path().join("shm"));
    let out = sluice()
        .arg("verify")
        .arg(&src)
        .arg(dest.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "verify: {}", stderr(&out));
}

over_both! {
    fn copy_one_gib_and_report_its_root() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("big.bin");
        random_file(&src, 1 << 30, 42);
        let dest = d.path().join("dest/");
        let out = sluice().arg("copy").arg(&src).arg(&dest).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let want = b3(&src);
        assert_eq!(b3(&dest.join("big.bin")), want);
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(summary.contains(&want.to_hex().to_string()), "{summary}");
        // `sluice hash` prints what b3sum prints.
        let out = sluice()
            .arg("hash")
            .arg(dest.join("big.bin"))
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(want.to_hex().as_str()));
        // As b3sum: a bad argument is named and the others are still hashed (exit 1), `-` is
        // standard input, and a name with a newline is escaped behind a backslash.
        let odd = d.path().join("two\nlines");
        fs::write(&odd, b"x").unwrap();
        let mut child = sluice()
            .arg("hash")
            .arg(d.path())
            .arg("-")
            .arg(&odd)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(b"x").unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains(&d.path().display().to_string()), "{}", stderr(&out));
        let x = blake3::hash(b"x").to_hex().to_string();
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(printed.contains(&format!("{x}  -\n")), "{printed}");
        assert!(printed.contains(&format!("\\{x}  ")) && printed.contains("two\\nlines"), "{printed}");
        // With --json, a line per file as every other command prints.
        let out = sluice().args(["--json", "hash"]).arg(&odd).arg(d.path().join("none")).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["blake3"], x.as_str());
        assert_eq!(lines[0]["path"], odd.to_string_lossy().as_ref());
        assert_eq!(lines[1]["event"], "error");
        // A name that is not UTF-8 is written as every other command writes it (the
        // manifest's text, which maps back to the bytes), not with U+FFFD in place of them.
        use std::os::unix::ffi::OsStrExt as _;
        let raw = d.path().join(std::ffi::OsStr::from_bytes(b"bad\xffname"));
        fs::write(&raw, b"x").unwrap();
        let out = sluice().args(["--json", "hash"]).arg(&raw).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let line: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
        let wire = sluice_proto::path::name_from_bytes(raw.as_os_str().as_bytes());
        assert_eq!(line["path"], wire.as_ref());
        assert!(!wire.contains('\u{fffd}'), "{wire}");
    }
}

over_both! {
    fn send_recv_tree_with_many_files_links_and_empty_dirs() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("tree");
        fs::create_dir_all(src.join("a/b/c")).unwrap();
        fs::create_dir_all(src.join("empty")).unwrap();
        fs::create_dir_all(src.join("small")).unwrap();
        for i in 0..1000u32 {
            fs::write(
                src.join("small").join(format!("s{i:04}")),
                format!("file {i}\n").repeat(i as usize % 7),
            )
            .unwrap();
        }
        random_file(&src.join("a/b/c/deep.bin"), 2 * BLOCK + 5, 7);
        std::os::unix::fs::symlink("a/b/c/deep.bin", src.join("link")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/target", src.join("dangling")).unwrap();
        // Names as Unix allows them, not only UTF-8: Latin-1 bytes, a cut UTF-8 sequence, a
        // real character of the private use area the wire uses for such bytes, a name long
        // enough that its part file's name is shortened, and a link to a Latin-1 name.
        let raw = |b: &[u8]| std::ffi::OsStr::from_bytes(b).to_owned();
        fs::create_dir(src.join(raw(b"r\xe9pertoire"))).unwrap();
        fs::write(src.join(raw(b"r\xe9pertoire/caf\xe9")), b"latin-1").unwrap();
        fs::write(src.join(raw(b"r\xe9pertoire/caf\xe8")), b"another").unwrap();
        fs::write(src.join(raw(b"cut \xe2\x82")), b"cut").unwrap();
        fs::write(src.join("private \u{f7e9}"), b"pua").unwrap();
        let mut long = vec![b'n'; 200];
        long.extend_from_slice(&[0xff; 50]);
        random_file(&src.join(raw(&long)), BLOCK + 3, 9);
        std::os::unix::fs::symlink(raw(b"r\xe9pertoire/caf\xe9"), src.join(raw(b"lien\xe9"))).unwrap();
        // A link's own time, older than its target's: kept on the link, as `rsync -a` does.
        let touched = std::process::Command::new("touch")
            .args(["-h", "-d", "2003-02-01 12:00:00"])
            .arg(src.join("link"))
            .status()
            .unwrap();
        assert!(touched.success());
        let dest = d.path().join("dest");
        let recv = Recv::start(&dest);
        let out = sluice()
            .arg("send")
            .arg(&src)
            .arg(&recv.ticket)
            .output()
            .unwrap();
        assert!(out.status.success(), "send failed: {}", stderr(&out));
        let r = recv.wait();
        assert!(r.status.success(), "recv failed: {}", stderr(&r));
        assert_same_tree(&src, &dest.join("tree"));
        assert!(part_files(&dest).is_empty());
        let verified = sluice().arg("verify").arg(&src).arg(&dest).output().unwrap();
        assert!(verified.status.success(), "verify: {}", stderr(&verified));
        let link_mtime = |p: &std::path::Path| fs::symlink_metadata(p).unwrap().modified().unwrap();
        assert_eq!(
            link_mtime(&dest.join("tree/link")),
            link_mtime(&src.join("link")),
            "the link's own mtime"
        );
    }
}

over_both! {
    fn json_mode_prints_events() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("x");
        random_file(&src, 3 * BLOCK, 1);
        let out = sluice()
            .args(["--json", "copy"])
            .arg(&src)
            .arg(d.path().join("dest"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let verified = lines
            .iter()
            .find(|v| v["event"] == "file_verified")
            .unwrap();
        assert_eq!(verified["blake3"], b3(&src).to_hex().as_str());
        let summary = lines.last().unwrap();
        assert_eq!(summary["event"], "summary");
        assert_eq!(summary["bytes"], 3 * BLOCK);
        // The bytes on the wire, under a name that holds over TCP too (it said `udp_tx_bytes`).
        let wire = summary["path"]["wire_tx_bytes"].as_u64().unwrap_or(0);
        assert!(wire >= 3 * BLOCK, "{summary}");
        assert_eq!(summary["path"]["udp_tx_bytes"], summary["path"]["wire_tx_bytes"]);
    }
}

over_both! {
    /// As with cp and rsync: one file onto an existing file replaces it (only the blocks that
    /// differ cross), one file to a new name takes that name, and options may follow the paths.
    fn one_file_onto_an_existing_file_updates_it_by_delta() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("new.img");
        random_file(&src, 8 * BLOCK + 5, 3);
        let old = d.path().join("old.img");
        let mut bytes = fs::read(&src).unwrap();
        bytes[3 * BLOCK as usize + 7] ^= 0xff;
        fs::write(&old, &bytes).unwrap();
        let out = sluice()
            .arg("copy")
            .arg(&src)
            .arg(&old)
            .args(["--json", "--streams", "2"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(b3(&old), b3(&src));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert!(summary["payload_bytes"].as_u64().unwrap() <= BLOCK, "{summary}");
        assert!(summary["kept_bytes"].as_u64().unwrap() >= 7 * BLOCK, "{summary}");
        assert!(!d.path().join("old.img/new.img").exists());
        assert!(part_files(d.path()).is_empty());

        // The same file as source and destination is refused, not truncated.
        let out = sluice().arg("copy").arg(&src).arg(d.path().join(".").join("new.img")).output().unwrap();
        assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
        assert!(stderr(&out).contains("same file"), "{}", stderr(&out));
        assert_eq!(b3(&src), b3(&old));

        // A name that does not exist is the file's new name, as with cp and rsync, in a
        // directory made if missing; the same name ending in `/` is a directory to create.
        for name in ["fresh.img", "deeper/still/fresh.img"] {
            let file = d.path().join(name);
            let out = sluice().arg("copy").arg(&src).arg(&file).arg("--json").output().unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
            assert!(file.is_file(), "{name} is not a file");
            assert_eq!(b3(&file), b3(&src));
            let out = sluice().arg("verify").arg(&src).arg(&file).output().unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
        }
        let mut dir = d.path().join("fresh").into_os_string();
        dir.push("/");
        let out = sluice().arg("copy").arg(&src).arg(&dir).arg("--json").output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(b3(&d.path().join("fresh/new.img")), b3(&src));
        let out = sluice().arg("verify").arg(&src).arg(&old).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

over_both! {
    fn sender_block_size_larger_than_receivers_works() {
        // The sender chooses the block size; a default receiver must follow it, keeping its memory
        // bound, rather than assume its own.
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("f");
        random_file(&src, 9 * BLOCK + 3, 5);
        let dest = d.path().join("dest");
        let recv = Recv::start(&dest);
        let out = sluice()
            .args(["send", "--block-size", "4M"])
            .arg(&src)
            .arg(&recv.ticket)
            .output()
            .unwrap();
        assert!(out.status.success(), "send failed: {}", stderr(&out));
        let r = recv.wait();
        assert!(r.status.success(), "recv failed: {}", stderr(&r));
        assert_eq!(b3(&dest.join("f")), b3(&src));
    }
}

over_both! {
    fn resync_of_many_files_through_a_small_window_does_not_deadlock() {
        // Each side writes more control data than the other's flow-control window holds before it
        // reads (the manifest one way, Holding/HaveGroups/HaveDone for every file the other way).
        // More files than the receiver takes up at once (16,384), a third of them empty (whose
        // FileDone needs no block), so both runs go through its window.
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("many");
        fs::create_dir(&src).unwrap();
        for i in 0..18_000u32 {
            let body = if i % 3 == 0 { String::new() } else { format!("{i}") };
            fs::write(src.join(format!("file-with-a-longish-name-{i:05}")), body).unwrap();
        }
        let dest = d.path().join("dest");
        let out = sluice().arg("copy").arg(&src).arg(&dest).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_same_tree(&src, &dest.join("many"));
        // Some files changed since: the re-sync sends them and keeps the rest.
        for i in (0..18_000u32).step_by(997) {
            fs::write(src.join(format!("file-with-a-longish-name-{i:05}")), "changed").unwrap();
        }
        let mut child = sluice()
            .args(["copy", "--window", "64K"])
            .arg(&src)
            .arg(&dest)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("the re-sync hung");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(child.wait().unwrap().success());
        assert_same_tree(&src, &dest.join("many"));
    }
}

/// A receiver whose UDP port answers nothing, or is closed (here it listens on TCP alone): the
/// sender says so and finishes over TCP by itself.
#[test]
fn a_sender_falls_back_to_tcp_where_udp_gets_no_answer() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("f.bin");
    random_file(&src, 3 * BLOCK + 5, 21);
    let dest = d.path().join("dest");
    let recv = Recv::start_with(&dest, &["--transport", "tcp"]);
    let out = sluice()
        .args(["--transport", "auto", "send"])
        .arg(&src)
        .arg(&recv.ticket)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        (err.contains("no QUIC answer") || err.contains("QUIC refused"))
            && err.contains("over TCP"),
        "{err}"
    );
    let r = recv.wait();
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(b3(&dest.join("f.bin")), b3(&src));
}

/// The other way round: a TCP sender towards a receiver that listens on UDP alone fails at
/// once, naming the address, instead of waiting.
#[test]
fn a_tcp_sender_towards_a_quic_only_receiver_fails_fast() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("f.bin");
    random_file(&src, 1000, 22);
    let recv = Recv::start_with(&d.path().join("dest"), &["--transport", "quic"]);
    let started = std::time::Instant::now();
    let out = sluice()
        .args(["--transport", "tcp", "send"])
        .arg(&src)
        .arg(&recv.ticket)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit code for a connection failure"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let err = stderr(&out);
    assert!(
        err.contains("127.0.0.1") && err.contains("refused"),
        "{err}"
    );
}

over_both! {
    /// A sparse file keeps its holes: a block of zeros crosses as its header alone, the
    /// receiver leaves a hole, and the root is the source's. Zeros written out (not a hole)
    /// cross the same way and arrive as a hole, as `cp --sparse=always` and `rsync -S` do.
    fn sparse_files_keep_their_holes_and_zeros_cross_as_headers() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir(&src).unwrap();
        let sparse = src.join("sparse.img");
        let size = 256 * BLOCK;
        {
            let f = fs::File::create(&sparse).unwrap();
            f.set_len(size).unwrap();
            let data = d.path().join("data");
            random_file(&data, BLOCK, 9);
            let block = fs::read(&data).unwrap();
            f.write_all_at(&block, 0).unwrap();
            f.write_all_at(&block, 100 * BLOCK + 7).unwrap(); // blocks 100 and 101
            f.write_all_at(&block[..4097], size - 4097).unwrap();
        }
        let zeros = src.join("zeros.bin");
        fs::write(&zeros, vec![0u8; 8 * BLOCK as usize]).unwrap();
        let dest = d.path().join("dest");
        let out = sluice()
            .args(["--json", "copy"])
            .arg(&src)
            .arg(&dest)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let summary: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        // Data in blocks 0, 100, 101 and 255; every other block of both files is zeros.
        let zero_blocks = (256 - 4) + 8;
        assert_eq!(summary["zero_bytes"].as_u64(), Some(zero_blocks * BLOCK), "{summary}");
        let wire = summary["wire_bytes"].as_u64().unwrap();
        assert!(wire < 16 * BLOCK, "{wire} bytes crossed for 4 MiB of data: {summary}");
        assert_eq!(b3(&dest.join("src/sparse.img")), b3(&sparse));
        assert_eq!(b3(&dest.join("src/zeros.bin")), b3(&zeros));
        assert_eq!(fs::metadata(dest.join("src/sparse.img")).unwrap().len(), size);
        // Holes where the source has them, if this filesystem keeps holes at all.
        let allocated = |p: &std::path::Path| fs::metadata(p).unwrap().blocks() * 512;
        if allocated(&sparse) < 8 * BLOCK {
            let got = allocated(&dest.join("src/sparse.img"));
            assert!(got <= 8 * BLOCK, "{got} bytes allocated for 4 MiB of data");
            let got = allocated(&dest.join("src/zeros.bin"));
            assert!(got <= BLOCK, "{got} bytes allocated for a file of zeros");
        }
        // A change of one byte: the older version's blocks are laid into the part file, and
        // its holes must stay holes (they were written out as zeros: 256 blocks for one).
        fs::OpenOptions::new()
            .write(true)
            .open(&sparse)
            .unwrap()
            .write_all_at(b"x", 100 * BLOCK + 9)
            .unwrap();
        let out = sluice().arg("copy").arg(&src).arg(&dest).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(b3(&dest.join("src/sparse.img")), b3(&sparse));
        if allocated(&sparse) < 8 * BLOCK {
            let got = allocated(&dest.join("src/sparse.img"));
            assert!(got <= 8 * BLOCK, "{got} bytes allocated after a delta of one byte");
        }
    }
}

/// Runs of zeros inside a block arrive as holes too, as `cp --sparse=always` leaves them: a
/// disk image with one page written per block took the whole block at the destination
/// (256 times its size). Whatever the destination held there before: a fresh copy, a delta
/// over a file of other bytes, and `--inplace` give the source's bytes.
#[test]
fn runs_of_zeros_inside_blocks_arrive_as_holes() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    let comb = src.join("comb.img");
    let size = 8 * BLOCK - 5000;
    {
        let f = fs::File::create(&comb).unwrap();
        f.set_len(size).unwrap();
        let data = d.path().join("data");
        random_file(&data, 4096, 5);
        let page = fs::read(&data).unwrap();
        for b in 0..8 {
            f.write_all_at(b"x", b * BLOCK).unwrap();
            f.write_all_at(&page, b * BLOCK + BLOCK / 2 + 100).unwrap();
        }
    }
    let allocated = |p: &std::path::Path| fs::metadata(p).unwrap().blocks() * 512;
    let sparse_here = allocated(&comb) < 2 * BLOCK;
    let check = |dest: &std::path::Path, what: &str| {
        assert_eq!(b3(&dest.join("src/comb.img")), b3(&comb), "{what}");
        assert_eq!(fs::metadata(dest.join("src/comb.img")).unwrap().len(), size);
        if sparse_here {
            let got = allocated(&dest.join("src/comb.img"));
            assert!(
                got <= 8 * (64 << 10),
                "{what}: {got} bytes allocated for 24 pages"
            );
        }
    };
    let dest = d.path().join("dest");
    let out = sluice().arg("copy").arg(&src).arg(&dest).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    check(&dest, "a fresh copy");
    // Over other bytes: every block differs, and its zeros must replace what was there.
    for (flag, name) in [(None, "dest-delta"), (Some("--inplace"), "dest-inplace")] {
        let dest = d.path().join(name);
        fs::create_dir_all(dest.join("src")).unwrap();
        random_file(&dest.join("src/comb.img"), size, 6);
        let out = sluice()
            .arg("copy")
            .args(flag)
            .arg(&src)
            .arg(&dest)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        check(&dest, name);
    }
}

over_both! {
    /// Names up to the filesystem's limit of 255 bytes arrive: the part file and journal of a
    /// long name are shortened instead of failing with "File name too long".
    fn names_of_255_bytes_arrive() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir(&src).unwrap();
        let names = ["n".repeat(255), "é".repeat(120) + "x", "a".repeat(240)];
        for (i, n) in names.iter().enumerate() {
            random_file(&src.join(n), BLOCK + i as u64, i as u8);
        }
        let dest = d.path().join("dest");
        let out = sluice().arg("copy").arg(&src).arg(&dest).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        for n in &names {
            assert_eq!(b3(&dest.join("src").join(n)), b3(&src.join(n)));
        }
        assert!(part_files(&dest).is_empty());
    }
}

over_both! {
    /// `--max-rate` is a ceiling whatever the transport and controller, loopback included
    /// (where no congestion controller would ever reach it): 8 MiB at 40 Mbit/s take 1.7 s, of
    /// which the first piece goes at once. Also for one block of a whole file: 4 MiB in one
    /// block of 4 MiB at 16 Mbit/s take 2.1 s (it crossed at once, at line rate).
    fn max_rate_is_a_ceiling_on_any_path() {
        let d = tempfile::tempdir().unwrap();
        // `sluice OPTIONS copy SRC d/dest/`: its wall time once it succeeded.
        let timed_copy = |options: &[&str], src: &std::path::Path| {
            let started = std::time::Instant::now();
            let out = sluice()
                .args(options)
                .arg("copy")
                .arg(src)
                .arg(d.path().join("dest/"))
                .output()
                .unwrap();
            let took = started.elapsed();
            assert!(out.status.success(), "{}", stderr(&out));
            took
        };
        let one = d.path().join("one");
        random_file(&one, 4 << 20, 22);
        let took = timed_copy(&["--max-rate", "16M", "--block-size", "4M"], &one);
        assert!(
            took >= std::time::Duration::from_millis(1_900),
            "one block of 4 MiB at 16 Mbit/s in {took:?}"
        );

        let src = d.path().join("f");
        random_file(&src, 8 << 20, 21);
        let took = timed_copy(&["--max-rate", "40M"], &src);
        assert!(
            took >= std::time::Duration::from_millis(1_400),
            "8 MiB at 40 Mbit/s in {took:?}"
        );
        assert_eq!(b3(&d.path().join("dest/f")), b3(&src));
    }
}

/// `copy` keeps modes exactly, as `cp -a` and `rsync -a` do, whatever its umask: one user owns
/// both ends. Setuid and setgid only as root, which gives each file its owner too (`owners.rs`);
/// any other user's copy drops them.
#[test]
fn copy_keeps_modes_exactly_under_any_umask() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("tree");
    let modes = [
        ("shared", 0o2775, true),
        ("shared/group.txt", 0o664, false),
        ("shared/run.sh", 0o4775, false),
        ("private", 0o700, true),
        ("private/notes", 0o640, false),
        ("open.txt", 0o666, false),
    ];
    for (name, _, dir) in modes {
        let p = src.join(name);
        if dir {
            fs::create_dir_all(&p).unwrap();
        } else {
            fs::write(&p, name).unwrap();
        }
    }
    // Deepest first, so a directory's mode does not keep its own entries from being set.
    for (name, mode, _) in modes.iter().rev() {
        fs::set_permissions(src.join(name), fs::Permissions::from_mode(*mode)).unwrap();
    }
    let dest = d.path().join("dest");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 077 && exec \"$0\" copy \"$1\" \"$2\"")
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .arg(&src)
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for (name, mode, _) in modes {
        let got = fs::metadata(dest.join("tree").join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        let want = if is_root() { mode } else { mode & 0o1777 };
        assert_eq!(got, want, "{name}: {got:o}");
    }
}

/// `--json` progress at the sender counts the bytes of files the receiver verified (it stayed
/// 0 while `files_verified` grew).
#[test]
fn json_progress_counts_verified_bytes() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    random_file(&src.join("a"), BLOCK, 1);
    random_file(&src.join("b"), 12 * BLOCK, 2);
    // About 2.5 s at 40 Mbit/s: progress lines come every second.
    let out = sluice()
        .args(["--json", "--max-rate", "40M", "copy"])
        .arg(&src)
        .arg(d.path().join("dest"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let progress = events_of(&out, "progress");
    assert!(!progress.is_empty(), "no progress line in a 2.5 s copy");
    let counted = progress.iter().any(|p| {
        p["files_verified"].as_u64() >= Some(1) && p["bytes_verified"].as_u64() >= Some(BLOCK)
    });
    assert!(counted, "{progress:?}");
    for p in &progress {
        assert!(
            p["bytes_verified"].as_u64() <= p["bytes_total"].as_u64(),
            "{p}"
        );
    }
}

/// Of one large file, the sender's `--json` progress counts blocks the receiver verified while
/// the file is under way, growing line by line, and ends at the file's size: it stayed 0 until
/// the file's end (`VerifiedSoFar`, protocol 16).
#[test]
fn json_progress_counts_verified_blocks_of_a_file_under_way() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("big");
    random_file(&src, 24 * BLOCK, 3);
    // About 5 s at 40 Mbit/s.
    let out = sluice()
        .args(["--json", "--max-rate", "40M", "copy"])
        .arg(&src)
        .arg(d.path().join("dest/"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let progress = events_of(&out, "progress");
    let under_way: Vec<u64> = progress
        .iter()
        .filter(|p| p["files_verified"] == 0)
        .map(|p| p["bytes_verified"].as_u64().unwrap())
        .collect();
    assert!(
        under_way.iter().filter(|&&b| b > 0).count() >= 2,
        "{progress:?}"
    );
    assert!(under_way.windows(2).all(|w| w[0] <= w[1]), "{under_way:?}");
    assert!(under_way.iter().all(|&b| b < 24 * BLOCK), "{under_way:?}");
    let summary = summary_event(&out);
    assert_eq!(summary["files"], 1, "{summary}");
    assert_eq!(b3(&d.path().join("dest/big")), b3(&src));
}

/// A destination whose default ACL grants less than a file's mode still gets the file's mode:
/// the ACL narrows the mode a file is created with, so a file created there cannot be taken to
/// hold its final mode already (`chmod` sets it, as without the ACL). The default ACL is
/// written as its extended attribute (`setfacl` is not everywhere); skipped where the
/// filesystem takes no ACLs.
#[test]
fn a_default_acl_does_not_narrow_the_modes_copied() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("tree");
    fs::create_dir_all(src.join("sub")).unwrap();
    let modes = [
        ("open.txt", 0o644, 100),
        ("sub/group.txt", 0o640, 3 * BLOCK),
        ("sub/empty", 0o604, 0),
    ];
    for (name, mode, len) in modes {
        random_file(&src.join(name), len, 7);
        fs::set_permissions(src.join(name), fs::Permissions::from_mode(mode)).unwrap();
    }
    let dest = d.path().join("dest");
    fs::create_dir(&dest).unwrap();
    // Default ACL (version 2): owner rwx, group ---, other ---, each id "undefined".
    let set = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import os, struct, sys\n\
             e = lambda tag, perm: struct.pack('<HHI', tag, perm, 0xffffffff)\n\
             os.setxattr(sys.argv[1], 'system.posix_acl_default',\n\
             struct.pack('<I', 2) + e(1, 7) + e(4, 0) + e(0x20, 0))",
        )
        .arg(&dest)
        .output();
    if !set.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: no default ACL can be set here");
        return;
    }
    let out = sluice().arg("copy").arg(&src).arg(&dest).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for (name, mode, _) in modes {
        let got = fs::metadata(dest.join("tree").join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(got, mode, "{name}: {got:o}");
        assert_eq!(
            b3(&dest.join("tree").join(name)),
            b3(&src.join(name)),
            "{name}"
        );
    }
}
