//! End to end as an unprivileged user (`nobody`, through `setpriv` when the tests run as root,
//! as CI does): root ignores file permissions, so permission bugs only show here.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A tree with a read-only file (as `.git/objects` holds), an owner-only file and a read-only
/// directory, copied as an unprivileged user, copied again unchanged, and again changed: every
/// run succeeds, and modes arrive as they left.
#[test]
fn an_unprivileged_user_resyncs_read_only_and_private_files() {
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("object"), b"blob 5\0hello").unwrap();
    fs::set_permissions(src.join("object"), fs::Permissions::from_mode(0o444)).unwrap();
    random_file(&src.join("private.key"), 3 << 20, 4);
    fs::set_permissions(src.join("private.key"), fs::Permissions::from_mode(0o644)).unwrap();
    // A read-only directory (as a Go module cache keeps them) with a read-only file in it.
    fs::create_dir(src.join("ro")).unwrap();
    fs::write(src.join("ro/mod"), b"v1").unwrap();
    fs::set_permissions(src.join("ro/mod"), fs::Permissions::from_mode(0o444)).unwrap();
    fs::set_permissions(src.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    let dest = d.path().join("dest");
    for run in 1..=2 {
        let Some(out) = sluice_as_user(&[Path::new("copy"), &src, &dest]) else {
            eprintln!("skipped: cannot switch to an unprivileged user here");
            return;
        };
        assert!(out.status.success(), "run {run}: {}", stderr(&out));
    }
    let mode = |p: &str| fs::metadata(dest.join("src").join(p)).unwrap().mode() & 0o777;
    assert_eq!(mode("object"), 0o444);
    assert_eq!(mode("private.key"), 0o644);
    assert_eq!(
        b3(&dest.join("src/private.key")),
        b3(&src.join("private.key"))
    );
    // And once more after the read-only files changed at the source: the destination's
    // read-only directory is opened up for the run, as rsync does, and closed again after.
    fs::set_permissions(src.join("object"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(src.join("object"), b"blob 6\0hello!").unwrap();
    fs::set_permissions(src.join("object"), fs::Permissions::from_mode(0o444)).unwrap();
    fs::set_permissions(src.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(src.join("ro/mod"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(src.join("ro/mod"), b"v2").unwrap();
    fs::set_permissions(src.join("ro/mod"), fs::Permissions::from_mode(0o444)).unwrap();
    fs::set_permissions(src.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    let out = sluice_as_user(&[Path::new("copy"), &src, &dest]).unwrap();
    assert!(out.status.success(), "changed: {}", stderr(&out));
    assert_eq!(
        fs::read(dest.join("src/object")).unwrap(),
        b"blob 6\0hello!"
    );
    assert_eq!(mode("object"), 0o444);
    assert_eq!(fs::read(dest.join("src/ro/mod")).unwrap(), b"v2");
    assert_eq!(mode("ro"), 0o555);
    assert_eq!(mode("ro/mod"), 0o444);
}

/// `sluice recv` into a directory its user cannot write says so before a sender connects (it
/// used to print its ticket and fail only when the sender arrived), and still serves: a
/// `sluice verify` against it needs no write.
#[test]
fn a_receiver_warns_at_once_of_a_destination_it_cannot_write() {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !root {
        eprintln!("skipped: needs root to run as another user");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("not-yours");
    fs::create_dir(&dest).unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).unwrap();
    let child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .args(["recv", "--listen", "127.0.0.1:0"])
        .arg(&dest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("skipped: no setpriv");
        return;
    };
    std::thread::sleep(Duration::from_millis(1500));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot write into") && err.contains("not-yours"),
        "recv said: {err}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("sluice1-"),
        "it still serves (for `sluice verify`)"
    );
}

/// What the user cannot read inside a tree (a directory and a file without read permission)
/// fails alone, as with `cp -a` or `rsync`: everything else arrives (a second name of a file
/// too), the run exits non-zero naming both, and `--delete` deletes nothing, since the listing
/// of the source is incomplete. (Once, one unreadable directory ended the run before anything
/// moved, and one failed file kept every hard link from being made.)
#[test]
fn what_cannot_be_read_fails_alone_and_holds_back_delete() {
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let src = d.path().join("tree");
    fs::create_dir_all(src.join("open")).unwrap();
    fs::write(src.join("a"), b"first name").unwrap();
    fs::hard_link(src.join("a"), src.join("a2")).unwrap();
    fs::write(src.join("open/x"), b"x").unwrap();
    fs::write(src.join("gone"), b"removed at the source later").unwrap();
    let dest = d.path().join("dest");
    let Some(out) = sluice_as_user(&[Path::new("copy"), &src, &dest]) else {
        eprintln!("skipped: cannot switch to an unprivileged user here");
        return;
    };
    assert!(out.status.success(), "first run: {}", stderr(&out));
    fs::remove_file(src.join("gone")).unwrap();
    fs::create_dir(src.join("closed")).unwrap();
    fs::write(src.join("closed/inside"), b"unseen").unwrap();
    fs::write(src.join("secret"), b"unreadable").unwrap();
    fs::set_permissions(src.join("closed"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::remove_dir_all(dest.join("tree/open")).unwrap();
    fs::remove_file(dest.join("tree/a2")).unwrap();
    let out = sluice_as_user(&[Path::new("copy"), Path::new("--delete"), &src, &dest]).unwrap();
    let err = stderr(&out);
    if out.status.success() {
        // The tests run as root without a way to switch user: nothing is unreadable.
        eprintln!("skipped: every file was readable to this user");
        return;
    }
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("2 of ") && err.contains("failed"), "{err}");
    assert!(
        err.contains("closed") && err.contains("deleting nothing"),
        "{err}"
    );
    let got = dest.join("tree");
    assert_eq!(fs::read(got.join("open/x")).unwrap(), b"x");
    assert_eq!(
        fs::metadata(got.join("a2")).unwrap().ino(),
        fs::metadata(got.join("a")).unwrap().ino(),
        "the second name is a link to the first"
    );
    assert!(
        got.join("closed").is_dir(),
        "an unlistable directory arrives empty"
    );
    assert!(!got.join("secret").exists());
    assert!(
        got.join("gone").exists(),
        "--delete deleted from an incomplete listing"
    );
    // `verify` lists what it could not read among the differences (exit 1) and compares the
    // rest, rather than stopping at the first.
    fs::set_permissions(src.join("open/x"), fs::Permissions::from_mode(0o000)).unwrap();
    let out = sluice_as_user(&[Path::new("verify"), &src, &dest]).unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}{}", stderr(&out));
    assert!(
        said.contains("unreadable: listing") && said.contains("closed"),
        "{said}"
    );
    assert!(
        said.contains("unreadable: opening") && said.contains("open/x"),
        "{said}"
    );
    assert!(said.contains("missing: tree/secret"), "{said}");
    // Kept by the --delete held back, and at the destination only.
    assert!(said.contains("extra: tree/gone"), "{said}");
    // The mode that made open/x unreadable differs too.
    assert!(
        said.contains("mode: tree/open/x: 0000 at the source, 0644 here"),
        "{said}"
    );
    assert!(said.contains("5 differ"), "{said}");
    fs::set_permissions(src.join("closed"), fs::Permissions::from_mode(0o755)).unwrap();
}

/// `--delete` deletes what it can and then names what it could not, as rsync does: an entry
/// the user may not remove (a read-only directory with a file in it) no longer keeps the
/// others in place.
#[test]
fn delete_removes_what_it_can_and_names_the_rest() {
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("x")).unwrap();
    fs::write(src.join("x/kept"), b"kept").unwrap();
    let dest = d.path().join("dest");
    let Some(out) = sluice_as_user(&[Path::new("copy"), &src, &dest]) else {
        eprintln!("skipped: cannot switch to an unprivileged user here");
        return;
    };
    assert!(out.status.success(), "{}", stderr(&out));
    // What the source does not have, owned by the user: a read-only directory holding a file
    // (its file cannot be removed), and a file that can.
    let x = dest.join("src/x");
    let uid = fs::metadata(&x).unwrap().uid();
    let gid = fs::metadata(&x).unwrap().gid();
    fs::create_dir(x.join("olddir")).unwrap();
    fs::write(x.join("olddir/inner"), b"old").unwrap();
    fs::write(x.join("extra"), b"extra").unwrap();
    for p in ["olddir", "olddir/inner", "extra"] {
        std::os::unix::fs::chown(x.join(p), Some(uid), Some(gid)).unwrap();
    }
    fs::set_permissions(x.join("olddir"), fs::Permissions::from_mode(0o555)).unwrap();
    let out = sluice_as_user(&[Path::new("copy"), Path::new("--delete"), &src, &dest]).unwrap();
    let err = stderr(&out);
    fs::set_permissions(x.join("olddir"), fs::Permissions::from_mode(0o755)).unwrap();
    if uid == 0 {
        // Not switched after all (root removes anything): nothing to show.
        return;
    }
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("olddir") && err.contains("deleting"), "{err}");
    assert!(
        !x.join("extra").exists(),
        "what could be deleted stayed: {err}"
    );
    assert_eq!(fs::read(x.join("kept")).unwrap(), b"kept");
}

/// Extras at the destination that the source does not have, owned by the user `dest` belongs
/// to: a file and a directory that can go, and a directory `rodir` of which only `rodir/g` can
/// (its `sub` is read-only, so `sub/h`, `sub` and `rodir` stay). Returns `sub`, to be opened
/// again before the temporary directory is removed.
fn extras_that_partly_go(dest: &Path) -> std::path::PathBuf {
    let uid = fs::metadata(dest).unwrap().uid();
    let gid = fs::metadata(dest).unwrap().gid();
    fs::create_dir_all(dest.join("rodir/sub")).unwrap();
    fs::create_dir_all(dest.join("okdir")).unwrap();
    for f in ["rodir/g", "rodir/sub/h", "okdir/f", "okfile"] {
        fs::write(dest.join(f), f).unwrap();
    }
    for p in [
        "rodir",
        "rodir/sub",
        "rodir/g",
        "rodir/sub/h",
        "okdir",
        "okdir/f",
        "okfile",
    ] {
        std::os::unix::fs::chown(dest.join(p), Some(uid), Some(gid)).unwrap();
    }
    let sub = dest.join("rodir/sub");
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o555)).unwrap();
    sub
}

/// A first copy of a one-file tree `src` into `dest`, as the unprivileged user; `None` where
/// the tests cannot switch to one (then nothing can be shown).
fn copied_as_user(d: &Path) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    fs::set_permissions(d, fs::Permissions::from_mode(0o777)).unwrap();
    let src = d.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    let dest = d.join("dest");
    let out = sluice_as_user(&[Path::new("copy"), &src, &dest])?;
    assert!(out.status.success(), "{}", stderr(&out));
    if fs::metadata(dest.join("src")).unwrap().uid() == 0 {
        return None;
    }
    Some((src, dest))
}

/// A deletion that fails part-way reports every entry it did remove, down to a file inside
/// the directory that could not go, names each entry that could not be removed, and counts
/// what went in the error (no summary is printed). Removed by `remove_dir_all`, `rodir/g` went
/// unreported when `rodir/sub/h` stopped it.
#[test]
fn a_deletion_that_fails_part_way_names_what_it_removed() {
    let d = tempfile::tempdir().unwrap();
    let Some((src, dest)) = copied_as_user(d.path()) else {
        eprintln!("skipped: cannot switch to an unprivileged user here");
        return;
    };
    let sub = extras_that_partly_go(&dest.join("src"));
    let out = sluice_as_user(&[
        Path::new("--json"),
        Path::new("copy"),
        Path::new("--delete"),
        &src,
        &dest,
    ])
    .unwrap();
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    let mut deleted: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "deleted")
        .map(|e| e["path"].as_str().unwrap().to_owned())
        .collect();
    deleted.sort();
    assert_eq!(deleted, ["src/okdir", "src/okfile", "src/rodir/g"], "{err}");
    assert!(!dest.join("src/rodir/g").exists() && !dest.join("src/okdir").exists());
    assert!(dest.join("src/rodir/sub/h").exists());
    let h = dest.join("src/rodir/sub/h");
    assert!(
        err.contains(&format!(
            "sluice: warning: not deleted: {}: Permission denied",
            h.display()
        )),
        "{err}"
    );
    assert!(err.contains("3 entries were deleted"), "{err}");
}

/// A deletion that fails at a receiver fails `send` as it fails `copy`: a local error (exit 5,
/// kind `Local`) in the receiver's words, not a refusal (exit 4, "protocol: peer aborted").
#[test]
fn a_deletion_that_fails_at_the_receiver_fails_send_as_it_fails_copy() {
    let d = tempfile::tempdir().unwrap();
    let Some((src, dest)) = copied_as_user(d.path()) else {
        eprintln!("skipped: cannot switch to an unprivileged user here");
        return;
    };
    let sub = extras_that_partly_go(&dest.join("src"));
    let Some(recv) = Recv::start_as_user(&dest, &["--json"], &["--allow-delete"]) else {
        eprintln!("skipped: no setpriv");
        return;
    };
    let out = sluice()
        .args(["--json", "send", "--delete"])
        .arg(&src)
        .arg(&recv.ticket)
        .output()
        .unwrap();
    let r = recv.wait();
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
    let last = |o: &std::process::Output| {
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let line = text.lines().last().unwrap_or_default().to_owned();
        serde_json::from_str::<serde_json::Value>(&line).unwrap_or_default()
    };
    assert_eq!(r.status.code(), Some(5), "{}", stderr(&r));
    let e = last(&out);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(e["kind"], "Local", "{e}");
    let message = e["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("the receiver failed: deleting") && message.contains("sub/h"),
        "{message}"
    );
    assert!(!message.contains("protocol"), "{message}");
}

/// A receiver that is not root cannot give files away: what a root sender's tree holds of other
/// owners (1234:5678, setuid and setgid files, a directory) arrives as the receiving user's,
/// setuid and setgid dropped, the rest of each mode kept, and the run exits 0 without a word
/// per file (as rsync); `verify` by that user says it compared neither owners nor setuid and
/// finds nothing. The same through `copy` and through `send` to a `recv`.
#[test]
fn a_receiver_that_is_not_root_gets_the_files_and_drops_setuid() {
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    let modes = [
        ("dir", 0o2755),
        ("dir/setuid", 0o4755),
        ("setgid", 0o2755),
        ("plain", 0o640),
    ];
    for (name, mode) in modes.iter().rev() {
        let p = src.join(name);
        if !p.exists() {
            fs::write(&p, name).unwrap();
        }
        if is_root() {
            std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
    }
    // `plain` is readable by its group alone: the unprivileged user reads it only as root's.
    fs::set_permissions(src.join("plain"), fs::Permissions::from_mode(0o644)).unwrap();
    let copied = d.path().join("copied");
    let Some(out) = sluice_as_user(&[Path::new("copy"), &src, &copied]) else {
        eprintln!("skipped: cannot switch to an unprivileged user here");
        return;
    };
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("owner"), "{}", stderr(&out));
    let user = fs::metadata(copied.join("src")).unwrap().uid();
    if is_root() && user == 0 {
        return;
    }
    let received = d.path().join("received");
    let Some(recv) = Recv::start_as_user(&received, &[], &[]) else {
        eprintln!("skipped: no setpriv");
        return;
    };
    let out = sluice()
        .arg("send")
        .arg(&src)
        .arg(&recv.ticket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r = recv.wait();
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(!stderr(&r).contains("owner"), "{}", stderr(&r));
    // `copy` keeps modes exactly; `recv` under its umask, this process's.
    let umask = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let v = s.lines().find_map(|l| l.strip_prefix("Umask:"))?;
            u32::from_str_radix(v.trim(), 8).ok()
        })
        .unwrap_or(0o022);
    for (dest, umask) in [(&copied, 0), (&received, umask)] {
        for (name, mode) in modes {
            let m = fs::metadata(dest.join("src").join(name)).unwrap();
            let want = if name == "plain" {
                0o644
            } else {
                mode & 0o1777
            };
            assert_eq!(
                (m.uid(), m.mode() & 0o7777),
                (user, want & !umask),
                "{}: {name}",
                dest.display()
            );
        }
    }
    let v = sluice_as_user(&[Path::new("verify"), &src, &copied]).unwrap();
    assert!(v.status.success(), "{}", stdout(&v));
    assert!(
        stdout(&v).contains("not owners, setuid or setgid"),
        "{}",
        stdout(&v)
    );
}

/// A destination directory the user cannot write into fails every entry of the tree with the
/// same reason (the top directory cannot be made): said a few times and counted, not once per
/// entry (53 lines for 53 entries), as rsync says a failed mkdir once.
#[test]
fn a_directory_that_cannot_be_made_is_not_said_once_per_entry() {
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    for i in 0..20 {
        fs::write(src.join(format!("a/f{i}")), b"x").unwrap();
        fs::write(src.join(format!("a/b/g{i}")), b"y").unwrap();
    }
    for p in ["", "a", "a/b"] {
        fs::set_permissions(src.join(p), fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Owned by root (or this user, who then cannot write into a 0555 directory either).
    let dest = d.path().join("dest");
    fs::create_dir(&dest).unwrap();
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o555)).unwrap();
    let Some(out) = sluice_as_user(&[Path::new("copy"), &src, &dest]) else {
        eprintln!("skipped: cannot switch to an unprivileged user here");
        return;
    };
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("43 of 43 entries failed"), "{err}");
    let named = err
        .lines()
        .filter(|l| l.contains("Permission denied"))
        .count();
    assert!(named <= 9, "{named} lines for one failed directory:\n{err}");
    assert!(err.contains("more entries failed the same way"), "{err}");
}
