//! End to end: `--exclude` and `--exclude-from` leave entries out of `copy`, `send` and `verify`
//! with rsync's pattern rules, `--delete` leaves excluded entries at the destination alone (the
//! patterns cross the wire to the receiver), and patterns are checked before anything connects
//! at the sender and bounded at the receiver. The rules themselves are unit-tested beside their
//! code (`sluice_proto::exclude`).

#[macro_use]
mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::crafted::Crafted;
use common::*;
use sluice_proto::message::{Entry, EntryKind, ErrorCode, Message, HELLO_DELETE};

/// The tree every test sends, as `proj`: build products at several depths, directories named
/// like excluded ones at other places, and a file named like an excluded directory.
fn project(root: &Path) -> std::path::PathBuf {
    let src = root.join("proj");
    for (path, body) in [
        ("a.txt", "a"),
        ("a.o", "object"),
        ("src/main.c", "int main;"),
        ("src/main.o", "object"),
        ("src/deep/x.o", "object"),
        ("src/build/keep.txt", "not the top build"),
        ("build/out.bin", "built"),
        ("cache/c.txt", "cached"),
        ("notes/cache", "a file, not a directory"),
        ("docs/a.md", "doc"),
        ("docs/sub/b.md", "doc"),
        ("other/docs/a.md", "other doc"),
    ] {
        let at = src.join(path);
        fs::create_dir_all(at.parent().unwrap()).unwrap();
        fs::write(at, body).unwrap();
    }
    src
}

/// The patterns of [`project`]'s tests: a name at any depth, an anchored name, a directory-only
/// name, an anchored `**` suffix and a `**` in the middle.
const PATTERNS: [&str; 5] = ["*.o", "/build", "cache/", "/docs/**", "other/**/a.md"];

/// What of [`project`] arrives under [`PATTERNS`].
const KEPT: &[&str] = &[
    "a.txt",
    "docs/",
    "notes/",
    "notes/cache",
    "other/",
    "other/docs/",
    "src/",
    "src/build/",
    "src/build/keep.txt",
    "src/deep/",
    "src/main.c",
];

/// `--exclude P` for each of `patterns`.
fn exclude_args(patterns: &[&str]) -> Vec<String> {
    patterns
        .iter()
        .flat_map(|p| ["--exclude".to_string(), p.to_string()])
        .collect()
}

/// Every entry below `root`, relative, a directory's ending in `/`, sorted.
fn listing(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &e.path(), out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// The JSON lines of a `--json` run's standard output.
fn events(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The last event, which must be the summary of a run that succeeded.
fn summary(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "sluice failed: {}", stderr(out));
    let v = events(out).pop().expect("no output");
    assert_eq!(v["event"], "summary", "{v}");
    v
}

/// The `path` of every event of kind `event`, sorted (a directory's ending in `/` for
/// `deleted`).
fn paths_of(out: &std::process::Output, event: &str) -> Vec<String> {
    let mut paths: Vec<String> = events(out)
        .iter()
        .filter(|e| e["event"] == event)
        .map(|e| {
            let slash = if e["dir"] == true { "/" } else { "" };
            format!("{}{slash}", e["path"].as_str().unwrap())
        })
        .collect();
    paths.sort();
    paths
}

/// `proj/` before each of `paths`.
fn in_proj(paths: &[&str]) -> Vec<String> {
    paths.iter().map(|p| format!("proj/{p}")).collect()
}

/// Names at any depth, anchored and directory-only patterns, and `**` at the end and in the
/// middle: what they match is not sent, an excluded directory not entered, and neither the
/// summary nor the events mention what was left out.
#[test]
fn excluded_entries_are_left_out_at_any_depth() {
    let d = tempfile::tempdir().unwrap();
    let src = project(d.path());
    let dest = d.path().join("dest");
    let out = sluice()
        .args(["--json", "copy"])
        .args(exclude_args(&PATTERNS))
        .arg(&src)
        .arg(&dest)
        .output()
        .unwrap();
    let s = summary(&out);
    assert_eq!(listing(&dest.join("proj")), KEPT);
    let files: Vec<&str> = KEPT.iter().copied().filter(|p| !p.ends_with('/')).collect();
    assert_eq!(paths_of(&out, "file_verified"), in_proj(&files));
    assert_eq!(s["files"], files.len(), "{s}");
    assert_eq!(
        s["entries"],
        KEPT.len() + 1,
        "the kept entries and proj itself: {s}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for left_out in ["a.o", "main.o", "out.bin", "c.txt", "b.md"] {
        assert!(!text.contains(left_out), "{left_out} mentioned: {text}");
    }
}

/// `--exclude-from` reads one pattern a line, skipping blank lines and `#` comments (and a
/// line's CR, as a file edited on Windows ends it), together with `--exclude`.
#[test]
fn exclude_from_reads_patterns_from_a_file() {
    let d = tempfile::tempdir().unwrap();
    let src = project(d.path());
    let list = d.path().join("excludes");
    fs::write(
        &list,
        "# build products\n*.o\n\n/build\r\n  \n#cache/ is a directory\ncache/\n",
    )
    .unwrap();
    let dest = d.path().join("dest");
    let out = sluice()
        .arg("copy")
        .arg("--exclude-from")
        .arg(&list)
        .args(exclude_args(&["/docs/**", "other/**/a.md"]))
        .arg(&src)
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // "  " is a pattern of two spaces, which matches nothing here.
    assert_eq!(listing(&dest.join("proj")), KEPT);
}

/// Entries of the destination that [`PATTERNS`] match, left there by an earlier run or put
/// there by hand.
fn excluded_extras(dest: &Path) {
    for (path, body) in [
        ("proj/src/old.o", "excluded by name"),
        ("proj/build/old.bin", "inside the excluded /build"),
        ("proj/cache/x", "inside an excluded directory"),
        ("proj/docs/new.md", "below /docs"),
    ] {
        let at = dest.join(path);
        fs::create_dir_all(at.parent().unwrap()).unwrap();
        fs::write(at, body).unwrap();
    }
}

/// Entries of the destination that the source does not have and [`PATTERNS`] do not match.
fn plain_extras(dest: &Path) {
    fs::write(dest.join("proj/stale.txt"), b"gone at the source").unwrap();
    // A file named like the directory-only pattern is no directory.
    fs::write(dest.join("proj/src/cache"), b"a file").unwrap();
    fs::create_dir_all(dest.join("proj/olddir/inner")).unwrap();
}

/// What [`excluded_extras`] put there.
const EXCLUDED_EXTRAS: [&str; 4] = [
    "proj/build/",
    "proj/cache/",
    "proj/docs/new.md",
    "proj/src/old.o",
];

/// `--delete` removes what the source no longer has but not what the patterns exclude (rsync's
/// default); `--delete-excluded` removes that too.
#[test]
fn delete_leaves_excluded_entries_alone() {
    let d = tempfile::tempdir().unwrap();
    let src = project(d.path());
    let dest = d.path().join("dest");
    let copy = |extra: &[&str]| {
        sluice()
            .args(["--json", "copy"])
            .args(extra)
            .args(exclude_args(&PATTERNS))
            .arg(&src)
            .arg(&dest)
            .output()
            .unwrap()
    };
    summary(&copy(&[]));
    excluded_extras(&dest);
    plain_extras(&dest);

    let out = copy(&["--delete"]);
    assert_eq!(summary(&out)["deleted"], 3);
    assert_eq!(
        paths_of(&out, "deleted"),
        ["proj/olddir/", "proj/src/cache", "proj/stale.txt"]
    );
    for kept in EXCLUDED_EXTRAS {
        assert!(dest.join(kept).exists(), "{kept} was deleted");
    }

    let out = copy(&["--delete-excluded"]);
    assert_eq!(summary(&out)["deleted"], 4);
    assert_eq!(paths_of(&out, "deleted"), EXCLUDED_EXTRAS);
    assert_eq!(listing(&dest.join("proj")), KEPT);
}

/// A directory the source no longer has, holding an excluded entry: what the patterns match is
/// kept, and the directory with it, as rsync keeps it ("cannot delete non-empty directory");
/// the rest of it goes and is named. It was removed whole, the excluded entry with it.
#[test]
fn delete_keeps_excluded_entries_inside_a_directory_it_removes() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.c"), b"a").unwrap();
    let dest = d.path().join("dest");
    let old = dest.join("src/old");
    fs::create_dir_all(old.join("deep/deeper")).unwrap();
    fs::create_dir_all(old.join("gone")).unwrap();
    fs::write(old.join("keep.o"), b"o").unwrap();
    fs::write(old.join("deep/deeper/keep2.o"), b"o").unwrap();
    fs::write(old.join("deep/drop.c"), b"c").unwrap();
    fs::write(old.join("gone/drop.c"), b"c").unwrap();
    fs::write(old.join("drop.c"), b"c").unwrap();
    let out = sluice()
        .args(["--json", "copy", "--delete", "--exclude", "*.o"])
        .arg(&src)
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(old.join("keep.o").exists() && old.join("deep/deeper/keep2.o").exists());
    for gone in ["drop.c", "deep/drop.c", "gone"] {
        assert!(!old.join(gone).exists(), "{gone} was kept");
    }
    let mut deleted = paths_of(&out, "deleted");
    deleted.sort();
    // A directory with nothing to keep goes whole, named once.
    assert_eq!(
        deleted,
        ["src/old/deep/drop.c", "src/old/drop.c", "src/old/gone/"]
    );
    assert_eq!(summary(&out)["deleted"], 3);
    // Without the pattern the directory goes whole, as before.
    let out = sluice()
        .args(["--json", "copy", "--delete"])
        .arg(&src)
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!old.exists());
    assert_eq!(paths_of(&out, "deleted"), ["src/old/"]);
}

/// An entry whose type changed at the source is replaced under `--delete`, and what that
/// removes is reported as every other deletion is: a `deleted` event (a line without
/// `--json`) for the directory a file or a symlink replaced and for the file a directory
/// replaced, all counted in the summary. It went silently, `deleted: 0`.
#[test]
fn delete_reports_what_a_type_change_replaces() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("y")).unwrap();
    fs::write(src.join("x"), b"now a file").unwrap();
    fs::write(src.join("y/f"), b"in a directory now").unwrap();
    std::os::unix::fs::symlink("x", src.join("l")).unwrap();
    let dest = d.path().join("dest");
    fs::create_dir_all(dest.join("src/x/sub")).unwrap();
    fs::write(dest.join("src/x/inner"), b"old").unwrap();
    fs::write(dest.join("src/x/sub/deep"), b"old").unwrap();
    fs::write(dest.join("src/y"), b"was a file").unwrap();
    fs::create_dir_all(dest.join("src/l")).unwrap();
    fs::write(dest.join("src/l/in-the-way"), b"old").unwrap();
    let out = sluice()
        .args(["--json", "copy", "--delete"])
        .arg(&src)
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(summary(&out)["deleted"], 3, "{}", stdout(&out));
    assert_eq!(paths_of(&out, "deleted"), ["src/l/", "src/x/", "src/y"]);
    assert_eq!(fs::read(dest.join("src/x")).unwrap(), b"now a file");
    assert_eq!(
        fs::read(dest.join("src/y/f")).unwrap(),
        b"in a directory now"
    );
    assert_eq!(fs::read_link(dest.join("src/l")).unwrap(), Path::new("x"));

    // The other way back, in words.
    fs::remove_file(src.join("x")).unwrap();
    fs::create_dir(src.join("x")).unwrap();
    let out = sluice()
        .args(["copy", "--delete"])
        .arg(&src)
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("deleted: src/x\n"), "{text}");
    assert!(
        text.contains("; deleted 1 entry at the destination"),
        "{text}"
    );
    assert!(dest.join("src/x").is_dir());
}

/// A directory the patterns keep something in is not replaced by a file of its name: the file
/// fails naming the directory, what it holds and why, and nothing in it is deleted (rsync keeps
/// excluded entries too: "cannot delete non-empty directory"). It was removed whole, excluded
/// entries and all, without a word. `--delete-excluded` replaces it, and says so.
#[test]
fn a_directory_holding_excluded_entries_is_not_replaced_by_a_file() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("x"), b"now a file").unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    let dest = d.path().join("dest");
    let x = dest.join("src/x");
    fs::create_dir_all(x.join("deep")).unwrap();
    fs::write(x.join("deep/keep.o"), b"excluded").unwrap();
    fs::write(x.join("drop.c"), b"not excluded").unwrap();
    let copy = |args: &[&str]| {
        sluice()
            .arg("copy")
            .args(args)
            .arg(&src)
            .arg(&dest)
            .output()
            .unwrap()
    };
    for patterns in [&["--exclude", "*.o"], &["--exclude", "x/"]] {
        let out = copy(&[&["--delete"][..], patterns].concat());
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(7), "{patterns:?}: {err}");
        assert!(
            err.contains("src/x") && err.contains("cannot be replaced by a file"),
            "{patterns:?}: {err}"
        );
        assert!(err.contains("nothing in it was deleted"), "{err}");
        assert!(x.join("deep/keep.o").exists() && x.join("drop.c").exists());
        assert_eq!(fs::read(dest.join("src/a")).unwrap(), b"a");
    }
    let err = stderr(&copy(&["--delete", "--exclude", "*.o"]));
    assert!(
        err.contains("\"src/x/deep/keep.o\""),
        "names what it keeps: {err}"
    );

    let out = copy(&["--delete-excluded", "--exclude", "*.o"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("deleted: src/x/\n"), "{text}");
    // Not "the source no longer has": it still has what it excludes.
    assert!(
        text.contains("; deleted 1 entry at the destination"),
        "{text}"
    );
    assert_eq!(fs::read(&x).unwrap(), b"now a file");
}

/// A pattern that starts with `-` is taken as given after `--exclude`, as rsync takes it (clap
/// read `-leading.txt` as flags and suggested `-- -l`, which failed too).
#[test]
fn a_pattern_may_start_with_a_dash() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("-leading.txt"), b"left out").unwrap();
    fs::write(src.join("kept.txt"), b"kept").unwrap();
    let dest = d.path().join("dest");
    let out = sluice()
        .args(["copy", "--exclude", "-leading.txt"])
        .arg(&src)
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(listing(&dest.join("src")), ["kept.txt"]);
}

/// In an exclude file, rsync's `- PATTERN` excludes PATTERN; an include rule (`+ PATTERN`)
/// and `!` (clear the list) are refused naming the file and the line, before anything is
/// made. All were read as names, so that such a file excluded nothing.
#[test]
fn exclude_from_takes_rsyncs_exclude_prefix_and_refuses_include_rules() {
    let d = tempfile::tempdir().unwrap();
    let src = project(d.path());
    let dest = d.path().join("dest");
    let list = d.path().join("rules");
    let copy = |list: &Path| {
        sluice()
            .arg("copy")
            .arg("--exclude-from")
            .arg(list)
            .args(exclude_args(&["/build", "/docs/**", "other/**/a.md"]))
            .arg(&src)
            .arg(&dest)
            .output()
            .unwrap()
    };
    for (rules, line, says) in [
        ("- *.o\n+ keep\n", 2, "\"+ keep\" is an include rule"),
        ("# comment\n!\n", 2, "\"!\" is rsync's clearing"),
    ] {
        fs::write(&list, rules).unwrap();
        let out = copy(&list);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{rules:?}: {err}");
        assert!(
            err.contains(&format!("--exclude-from {} line {line}: ", list.display()))
                && err.contains(says),
            "{rules:?}: {err}"
        );
        assert!(!dest.exists(), "nothing made");
    }
    fs::write(&list, "- *.o\n- cache/\n").unwrap();
    let out = copy(&list);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(listing(&dest.join("proj")), KEPT);
}

over_both! {
    /// Across the wire: the sender's patterns reach the receiver, whose deletion leaves what
    /// they match alone; with `--delete-excluded` they are not sent and it goes too.
    fn send_delete_leaves_excluded_entries_alone_at_the_receiver() {
        let d = tempfile::tempdir().unwrap();
        let src = project(d.path());
        let dest = d.path().join("dest");
        let out = sluice().arg("copy").args(exclude_args(&PATTERNS)).arg(&src).arg(&dest).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        excluded_extras(&dest);
        plain_extras(&dest);

        let send = |flag: &str| {
            let recv = Recv::start_full(&dest, &["--json"], &["--allow-delete"]);
            let out = sluice()
                .args(["--json", "send", flag])
                .args(exclude_args(&PATTERNS))
                .arg(&src)
                .arg(&recv.ticket)
                .output()
                .unwrap();
            (out, recv.wait())
        };
        let (out, r) = send("--delete");
        assert_eq!(summary(&out)["deleted"], 3);
        assert_eq!(summary(&r)["deleted"], 3);
        assert_eq!(paths_of(&r, "deleted"), ["proj/olddir/", "proj/src/cache", "proj/stale.txt"]);
        for kept in EXCLUDED_EXTRAS {
            assert!(dest.join(kept).exists(), "{kept} was deleted");
        }

        let (out, r) = send("--delete-excluded");
        assert_eq!(summary(&out)["deleted"], 4);
        assert_eq!(paths_of(&r, "deleted"), EXCLUDED_EXTRAS);
        assert_eq!(listing(&dest.join("proj")), KEPT);
    }
}

/// `verify` with the same patterns ignores excluded entries on both sides: the source's are not
/// missing at the destination, the destination's are not extra, whether the destination is a
/// directory here or a receiver's.
#[test]
fn verify_ignores_excluded_entries_on_both_sides() {
    let d = tempfile::tempdir().unwrap();
    let src = project(d.path());
    let dest = d.path().join("dest");
    let out = sluice()
        .arg("copy")
        .args(exclude_args(&PATTERNS))
        .arg(&src)
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    excluded_extras(&dest);

    let out = sluice()
        .arg("verify")
        .arg(&src)
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("proj/a.o") && text.contains("proj/src/old.o"),
        "{text}"
    );

    let out = sluice()
        .args(["--json", "verify"])
        .args(exclude_args(&PATTERNS))
        .arg(&src)
        .arg(&dest)
        .output()
        .unwrap();
    let s = summary(&out);
    assert_eq!(s["differences"], 0, "{s}");
    assert_eq!(s["entries"], KEPT.len() + 1, "{s}");
    assert!(paths_of(&out, "difference").is_empty(), "{}", stdout(&out));

    // Against a receiver (regular files compared): the excluded a.o is not missing there.
    let recv = Recv::start(&dest);
    let out = sluice()
        .arg("verify")
        .arg(&src)
        .arg(&recv.ticket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("missing: proj/a.o"),
        "{}",
        stdout(&out)
    );
    recv.wait();
    let recv = Recv::start(&dest);
    let out = sluice()
        .arg("verify")
        .args(exclude_args(&PATTERNS))
        .arg(&src)
        .arg(&recv.ticket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("4 files compared"),
        "{}",
        stdout(&out)
    );
    recv.wait();
}

/// A pattern that cannot be read, or an exclude file that cannot, is a usage error (exit 2)
/// naming it, before anything is made or connects.
#[test]
fn a_bad_pattern_is_a_usage_error_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let src = project(d.path());
    let dest = d.path().join("dest");
    // A ticket nobody answers: trying it would take seconds and fail otherwise.
    let gone = Recv::start(&d.path().join("gone"));
    let ticket = gone.ticket.clone();
    gone.kill();
    let check = |args: &[&str], target: &Path, says: &[&str]| {
        let started = Instant::now();
        let out = sluice().args(args).arg(&src).arg(target).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        for s in says {
            assert!(err.contains(s), "{args:?} does not say {s:?}: {err}");
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{args:?}");
    };
    let unclosed = ["src/[ab", "unclosed character class"];
    check(
        &["copy", "--exclude", "*.o", "--exclude", "src/[ab"],
        &dest,
        &unclosed,
    );
    check(&["verify", "--exclude", "src/[ab"], &dest, &unclosed);
    check(
        &["send", "--exclude", "src/[ab"],
        Path::new(&ticket),
        &unclosed,
    );
    check(&["copy", "--exclude", ""], &dest, &["exclude pattern \"\""]);
    let missing = d.path().join("no-such-list");
    check(
        &["copy", "--exclude-from", missing.to_str().unwrap()],
        &dest,
        &["--exclude-from", "no-such-list"],
    );
    assert!(!dest.exists(), "nothing made");
}

/// The receiver takes a sender's patterns as hostile: more than it bounds, or one it cannot
/// read, ends the session with a protocol error saying which; and patterns only ever keep
/// entries, so none reaches outside the destination (or anywhere the manifest does not).
#[test]
fn a_receiver_bounds_and_checks_a_senders_patterns() {
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("dest");
    fs::create_dir_all(dest.join("top")).unwrap();
    fs::write(dest.join("top/keep.o"), b"excluded").unwrap();
    fs::write(dest.join("top/gone.txt"), b"not at the source").unwrap();
    fs::write(d.path().join("outside"), b"beside the destination").unwrap();
    let exclude = |p: &str| Message::Exclude { pattern: p.into() };

    let refused = |patterns: Vec<Message>, says: &str| {
        let recv = Recv::start_recv(&dest, &["--allow-delete"]);
        let mut c = Crafted::connect_with_flags(&recv.ticket, HELLO_DELETE);
        c.send(&patterns);
        let answer = c.last_answer(Duration::from_secs(10));
        assert!(
            matches!(&answer, Some(Message::Error { code: ErrorCode::Protocol, message }) if message.contains(says)),
            "{says}: {answer:?}"
        );
        c.close();
        let r = recv.wait();
        assert_eq!(r.status.code(), Some(4), "{}", stderr(&r));
    };
    refused(
        (0..=1024).map(|i| exclude(&format!("p{i}"))).collect(),
        "more than 1024 exclude patterns",
    );
    refused(
        (0..17).map(|_| exclude(&"x".repeat(4000))).collect(),
        "more than 65536 bytes",
    );
    refused(vec![exclude("ok"), exclude("a[")], "exclude pattern \"a[\"");

    // A whole session: patterns that name what lies outside keep nothing there and delete
    // nothing more; the one that matches keeps top/keep.o.
    let recv = Recv::start_recv(&dest, &["--allow-delete"]);
    let mut c = Crafted::connect_with_flags(&recv.ticket, HELLO_DELETE);
    c.send(&[
        exclude("*.o"),
        exclude("../**"),
        exclude("/../outside"),
        exclude("/**/../../*"),
        Message::Entry(Entry {
            id: 0,
            kind: EntryKind::Dir,
            path: "top".into(),
            mode: 0o755,
            mtime_sec: 0,
            mtime_nsec: 0,
            size: 0,
            link_target: String::new(),
            version: [0; 16],
            owner: Default::default(),
        }),
        Message::ManifestEnd { count: 1 },
        Message::Finish,
    ]);
    let answer = c.last_answer(Duration::from_secs(10));
    assert!(
        matches!(answer, Some(Message::Summary { deleted: 1, .. })),
        "{answer:?}"
    );
    c.close();
    assert!(recv.wait().status.success());
    assert!(dest.join("top/keep.o").exists());
    assert!(!dest.join("top/gone.txt").exists());
    assert!(d.path().join("outside").exists());
}
