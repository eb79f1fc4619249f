//! End to end: what a sender that holds the ticket may still not do at the receiver, and what
//! anyone without it cannot do at all. Crafted senders (`common::crafted`) say what no honest
//! sender says; the receiver is the real binary.

#[macro_use]
mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use common::crafted::{file_entry, Crafted};
use common::*;
use sluice_proto::message::{Message, GROUP_BLOCKS};

over_both! {
    /// `--delete` and `--inplace` are the receiver owner's to allow: a ticket alone lets a
    /// sender add and replace files, not remove them or write into them in place.
    fn delete_and_inplace_need_the_receivers_consent() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir(&src).unwrap();
        random_file(&src.join("a"), 200_000, 1);
        let dest = d.path().join("dest");
        fs::create_dir_all(dest.join("src")).unwrap();
        random_file(&dest.join("src/a"), 200_000, 2);
        fs::write(dest.join("src/extra"), b"keep me unless allowed").unwrap();
        for (flag, allow) in [("--delete", "--allow-delete"), ("--inplace", "--allow-inplace")] {
            let recv = Recv::start(&dest);
            let started = Instant::now();
            let out = sluice().args(["send", flag]).arg(&src).arg(&recv.ticket).output().unwrap();
            assert_eq!(out.status.code(), Some(4), "{flag}: {}", stderr(&out));
            assert!(stderr(&out).contains(allow), "{flag}: the sender is told what to ask for: {}", stderr(&out));
            assert!(started.elapsed() < Duration::from_secs(15));
            // The receiver refused that sender and waits on for one it can serve.
            let r = recv.kill();
            assert!(stderr(&r).contains(allow), "{flag}: receiver said {}", stderr(&r));
            assert!(dest.join("src/extra").exists());
            assert_ne!(b3(&dest.join("src/a")), b3(&src.join("a")));
        }
        let recv = Recv::start_recv(&dest, &["--allow-delete", "--allow-inplace"]);
        let inode = fs::metadata(dest.join("src/a")).unwrap().ino();
        let out = sluice().args(["send", "--delete", "--inplace"]).arg(&src).arg(&recv.ticket).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(recv.wait().status.success());
        assert!(!dest.join("src/extra").exists(), "deleted once allowed");
        assert_eq!(b3(&dest.join("src/a")), b3(&src.join("a")));
        assert_eq!(fs::metadata(dest.join("src/a")).unwrap().ino(), inode, "written in place");
    }
}

/// Modes arrive under the receiver's umask (no world-writable file because a sender asked),
/// and an in-place update never writes through a file with a second link: the other name,
/// here outside the destination, keeps its content. (`copy`, whose one user owns both ends,
/// keeps modes exactly: `transfer.rs`.)
#[test]
fn modes_follow_the_umask_and_inplace_never_writes_through_a_hard_link() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("open-dir")).unwrap();
    random_file(&src.join("open-dir/open"), 50_000, 1);
    random_file(&src.join("private"), 50_000, 2);
    random_file(&src.join("linked"), 300_000, 3);
    fs::set_permissions(src.join("open-dir/open"), fs::Permissions::from_mode(0o666)).unwrap();
    fs::set_permissions(src.join("open-dir"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(src.join("private"), fs::Permissions::from_mode(0o600)).unwrap();
    let dest = d.path().join("dest");
    fs::create_dir_all(dest.join("src")).unwrap();
    random_file(&dest.join("src/linked"), 300_000, 4);
    let outside = d.path().join("outside");
    fs::hard_link(dest.join("src/linked"), &outside).unwrap();
    let before = b3(&outside);
    let recv = Recv::start_under_umask(&dest, "027", &["--allow-inplace"]);
    let out = sluice()
        .args(["send", "--inplace"])
        .arg(&src)
        .arg(&recv.ticket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r = recv.wait();
    assert!(r.status.success(), "{}", stderr(&r));
    let mode = |p: &str| fs::metadata(dest.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("src/open-dir/open"), 0o640);
    assert_eq!(mode("src/open-dir"), 0o750);
    assert_eq!(mode("src/private"), 0o600);
    assert_eq!(b3(&dest.join("src/linked")), b3(&src.join("linked")));
    assert_eq!(b3(&outside), before, "the second name was written through");
}

over_both! {
    /// Two manifest entries for one path would share one part file: refused at once.
    fn a_path_named_twice_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("dest");
        let recv = Recv::start(&dest);
        let mut c = Crafted::connect(&recv.ticket);
        c.send(&[
            file_entry(0, "f", 5),
            file_entry(1, "f", 5),
            Message::ManifestEnd { count: 2 },
        ]);
        let answer = c.last_answer(Duration::from_secs(10));
        assert!(
            matches!(&answer, Some(Message::Error { message, .. }) if message.contains("both name \"f\"")),
            "{answer:?}"
        );
        c.close();
        let r = recv.wait();
        assert_eq!(r.status.code(), Some(4), "{}", stderr(&r));
        assert_eq!(fs::read_dir(&dest).unwrap().count(), 0);
    }
}

over_both! {
    /// A manifest longer than the receiver's `--max-entries` is refused, with the flag named.
    fn a_manifest_past_the_entry_limit_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir(&src).unwrap();
        for i in 0..5 {
            fs::write(src.join(format!("f{i}")), b"x").unwrap();
        }
        let recv = Recv::start_recv(&d.path().join("dest"), &["--max-entries", "3"]);
        let out = sluice().arg("send").arg(&src).arg(&recv.ticket).output().unwrap();
        assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
        assert!(stderr(&out).contains("--max-entries"), "{}", stderr(&out));
        assert!(!recv.wait().status.success());
        // And a path deeper than its --max-depth.
        let deep = src.join("a/b/c/d");
        fs::create_dir_all(&deep).unwrap();
        let recv = Recv::start_recv(&d.path().join("dest2"), &["--max-depth", "3"]);
        let out = sluice().arg("send").arg(src.join("a")).arg(&recv.ticket).output().unwrap();
        assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
        assert!(stderr(&out).contains("--max-depth"), "{}", stderr(&out));
        assert!(!recv.wait().status.success());
    }
}

/// The receiver's memory: peak resident set of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

over_both! {
    /// A sender that asks the same question again and again and never reads the answers cannot
    /// grow the receiver's memory without bound: each request queues a ~2 KiB answer, so
    /// 200,000 of them would queue 400 MB; past its backlog limit the receiver stops reading
    /// requests until the answers are read.
    fn requests_whose_answers_are_never_read_do_not_grow_the_receiver() {
        let d = tempfile::tempdir().unwrap();
        // A smaller queue than the default, set by the flag, bounds it as well.
        let recv = Recv::start_recv(&d.path().join("dest"), &["--max-control-queue", "1M"]);
        let mut c = Crafted::connect(&recv.ticket);
        // 64 GiB in 1 MiB blocks: 1,024 groups of GROUP_BLOCKS to ask about.
        c.send(&[file_entry(0, "big", 64 << 30), Message::ManifestEnd { count: 1 }]);
        let groups = (64 << 10) / GROUP_BLOCKS;
        for round in 0..20u64 {
            let asks: Vec<Message> = (0..10_000u64)
                .map(|i| Message::WantDetail { id: 0, group: (round * 10_000 + i) % groups })
                .collect();
            c.send(&asks);
        }
        c.idle(Duration::from_secs(3));
        let peak = peak_rss_kib(recv.pid());
        eprintln!("receiver peak RSS: {} MiB", peak >> 10);
        c.close();
        drop(recv);
        assert!(peak < 200 << 10, "receiver peak RSS {} MiB", peak >> 10);
    }
}

/// Keeps the crafted sender's link alive until the receiver has exited (a zombie waiting to be
/// reaped), for at most 20 s.
fn until_exited(recv: &Recv, c: &Crafted) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fs::read_to_string(format!("/proc/{}/stat", recv.pid())).is_ok_and(|s| s.contains(") Z"))
    {
        assert!(Instant::now() < deadline, "the receiver still waits");
        c.idle(Duration::from_millis(200));
    }
}

over_both! {
    /// A sender that stops in the middle of a block while its connection stays alive
    /// (keep-alives, pings) is dropped after the stall timeout, with the reason named.
    fn a_sender_stalled_in_the_middle_of_a_block_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("dest");
        let recv = Recv::start_with(&dest, &["--stall-timeout", "3"]);
        let started = Instant::now();
        let mut c = Crafted::connect(&recv.ticket);
        c.send(&[file_entry(0, "f", 4 << 20), Message::ManifestEnd { count: 1 }]);
        // As a sender does, after the receiver has taken the file up (its HaveDone).
        c.idle(Duration::from_millis(500));
        c.half_block(1 << 20, 1000);
        // The receiver ends within the stall timeout and a few ticks; the link is still alive.
        until_exited(&recv, &c);
        let r = recv.wait();
        c.close();
        assert_eq!(r.status.code(), Some(3), "{}", stderr(&r));
        assert!(stderr(&r).contains("no progress for 3 s"), "{}", stderr(&r));
        assert!(started.elapsed() < Duration::from_secs(15));
    }
}

over_both! {
    /// A block for a file the receiver has not taken up yet (it takes files up 16,384 ahead of
    /// those finished, and answers each with HaveDone) is refused at once, naming it, rather
    /// than dropped: the file would never finish and the run would end on the stall timeout.
    fn a_block_before_its_files_have_done_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("dest");
        let recv = Recv::start(&dest);
        let started = Instant::now();
        let mut c = Crafted::connect(&recv.ticket);
        let count = 17_000u32;
        let mut manifest: Vec<Message> =
            (0..count).map(|i| file_entry(i, &format!("f{i}"), 4 << 20)).collect();
        manifest.push(Message::ManifestEnd { count });
        c.send(&manifest);
        c.idle(Duration::from_millis(500));
        c.block_header(count - 1, 1 << 20);
        until_exited(&recv, &c);
        let r = recv.wait();
        c.close();
        assert!(!r.status.success());
        assert!(stderr(&r).contains("a block before the file's HaveDone"), "{}", stderr(&r));
        assert!(started.elapsed() < Duration::from_secs(15));
    }
}

over_both! {
    /// A spliced block whose runs do not cover the block (here: 100 bytes of a 1 MiB block) is
    /// refused at once, naming what was wrong, before anything is read from the older version.
    fn a_malformed_spliced_block_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("dest");
        let recv = Recv::start(&dest);
        let started = Instant::now();
        let mut c = Crafted::connect(&recv.ticket);
        c.send(&[file_entry(0, "f", 4 << 20), Message::ManifestEnd { count: 1 }]);
        c.idle(Duration::from_millis(500));
        let mut payload = Vec::new();
        sluice_proto::splice::encode(
            &[sluice_proto::splice::Run::Old { from: 0, len: 100 }],
            &[],
            &mut payload,
        );
        c.spliced_block(1 << 20, &payload);
        until_exited(&recv, &c);
        let r = recv.wait();
        c.close();
        assert!(!r.status.success());
        assert!(
            stderr(&r).contains("spliced block's runs cover 100 bytes, not the block's 1048576"),
            "{}",
            stderr(&r)
        );
        assert!(started.elapsed() < Duration::from_secs(15));
        assert!(!dest.join("f").exists());
    }
}

over_both! {
    /// Without the secret nobody ends a receiver: a wrong secret is refused and the receiver
    /// goes on to serve the sender that holds the ticket. Once that sender is proven, anyone
    /// else is turned away at once.
    fn a_wrong_secret_neither_ends_nor_shares_the_receiver() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("f");
        random_file(&src, 300_000, 3);
        let dest = d.path().join("dest");
        let recv = Recv::start(&dest);
        let mut bad: sluice_proto::ticket::Ticket = recv.ticket.parse().unwrap();
        bad.secret[0] ^= 1;
        let out = sluice().arg("send").arg(&src).arg(bad.to_string()).output().unwrap();
        assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
        assert!(stderr(&out).contains("secret"), "{}", stderr(&out));
        // A proven sender holds the receiver; a second one with the same ticket is refused.
        let first = Crafted::connect(&recv.ticket);
        first.idle(Duration::from_millis(500));
        let started = Instant::now();
        let out = sluice().arg("send").arg(&src).arg(&recv.ticket).output().unwrap();
        assert!(!out.status.success(), "a second sender was let in");
        assert!(started.elapsed() < Duration::from_secs(15), "refused late: {:?}", started.elapsed());
        first.close();
        let r = recv.wait();
        assert!(stderr(&r).contains("wrong secret"), "{}", stderr(&r));
        assert!(!dest.join("f").exists());
    }
}

/// A destination path past PATH_MAX (4,096 bytes) fails that one file, named, with the reason;
/// the files beside it arrive. It used to abort the whole transfer.
#[test]
fn a_path_past_path_max_fails_alone() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    let long = "n".repeat(250);
    random_file(&src.join(&long), 10_000, 1);
    random_file(&src.join("short"), 10_000, 2);
    // A destination whose own path is ~3,950 bytes: `src/<250 bytes>` below it passes 4,096.
    let mut dest = d.path().to_path_buf();
    while dest.as_os_str().len() < 3_900 {
        let room = 3_950 - dest.as_os_str().len() - 1;
        dest.push("d".repeat(room.min(200)));
    }
    fs::create_dir_all(&dest).unwrap();
    let out = sluice().arg("copy").arg(&src).arg(&dest).output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&long[..40]),
        "names the file: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("too long"), "{}", stderr(&out));
    assert_eq!(b3(&dest.join("src/short")), b3(&src.join("short")));
}

/// The directories that received files are flushed to disk (`fsync`) before the sender hears
/// that its files are in place: a rename not yet on disk would be lost in a crash.
#[test]
fn renames_are_made_durable_before_the_summary() {
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_err()
    {
        eprintln!("strace is not installed; skipped");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    random_file(&src.join("sub/f"), 100_000, 1);
    random_file(&src.join("g"), 100_000, 2);
    let dest = d.path().join("dest");
    let trace = d.path().join("trace");
    let out = std::process::Command::new("strace")
        .args(["-f", "-y", "-e", "trace=fsync", "-o"])
        .arg(&trace)
        .arg(sluice().get_program())
        .arg("copy")
        .arg(&src)
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let trace = fs::read_to_string(&trace).unwrap();
    for dir in [dest.join("src"), dest.join("src/sub")] {
        let shown = format!("<{}>) = 0", dir.display());
        assert!(
            trace.contains(&shown),
            "no fsync of {}:\n{trace}",
            dir.display()
        );
    }
}
