//! End to end, as root (as CI runs the tests): owners, groups, setuid and setgid cross as with
//! `rsync -a` — through `copy`, through `send`/`recv`, on a re-run that finds the data
//! unchanged, by name or by number — and `verify` compares them. Without root each test says
//! so and passes; what a user who is not root gets is in `as_user.rs`.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::crafted::Crafted;
use common::*;
use sluice_proto::message::{Entry, EntryKind, Message, Owner};

/// The tree's entries: name, owner, group, mode (`None`: a symlink to `plain`).
fn layout() -> Vec<(&'static str, u32, u32, Option<u32>)> {
    let (qa_uid, qa_gid) = qauser().map_or((2222, 3333), |(_, u, g)| (u, g));
    vec![
        ("", 1234, 5678, Some(0o2775)),
        ("plain", 1234, 5678, Some(0o640)),
        ("setuid", 1234, 5678, Some(0o4755)),
        ("setgid", qa_uid, qa_gid, Some(0o2755)),
        ("both", 1234, 5678, Some(0o6750)),
        ("mine", 0, 0, Some(0o644)),
        ("sub", 4321, 8765, Some(0o750)),
        ("sub/link", 1234, 5678, None),
    ]
}

/// The user `qauser` (name, uid, gid), if this host has it.
fn qauser() -> Option<(String, u32, u32)> {
    let id = |flag| {
        let out = Command::new("id").args([flag, "qauser"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some(("qauser".into(), id("-u")?, id("-g")?))
}

fn root_or_skip() -> bool {
    if !is_root() {
        eprintln!("skipped: giving files other owners needs root");
    }
    is_root()
}

/// `dir/tree` laid out as [`layout`] says, each entry with its owner, group and mode (the mode
/// set after the owner: a change of owner clears setuid and setgid).
fn owned_tree(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    fs::create_dir(&tree).unwrap();
    fs::create_dir(tree.join("sub")).unwrap();
    for (name, _, _, mode) in layout() {
        match mode {
            None => std::os::unix::fs::symlink("../plain", tree.join(name)).unwrap(),
            Some(_) if name.is_empty() || name == "sub" => {}
            Some(_) => fs::write(tree.join(name), name).unwrap(),
        }
    }
    // Children first: a directory's mode must not keep its entries from being set.
    for (name, uid, gid, mode) in layout().into_iter().rev() {
        let p = tree.join(name);
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).unwrap();
        if let Some(mode) = mode {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    tree
}

/// Owner, group and permission bits (none for a symlink) of `p`, not followed.
fn owned(p: &Path) -> (u32, u32, Option<u32>) {
    let m = fs::symlink_metadata(p).unwrap();
    let mode = (!m.file_type().is_symlink()).then_some(m.mode() & 0o7777);
    (m.uid(), m.gid(), mode)
}

/// Every entry of `tree` has, under `copy`, the owner, group and mode `expect` gives for the
/// source's.
fn assert_arrived(
    tree: &Path,
    copy: &Path,
    expect: impl Fn((u32, u32, Option<u32>)) -> (u32, u32, Option<u32>),
) {
    for (name, ..) in layout() {
        let want = expect(owned(&tree.join(name)));
        assert_eq!(owned(&copy.join(name)), want, "{name:?}");
    }
}

fn verify(src: &Path, dest: &Path) -> std::process::Output {
    sluice().arg("verify").arg(src).arg(dest).output().unwrap()
}

/// `copy` as root keeps every entry's owner, group and mode, setuid and setgid included, as
/// `cp -a` and `rsync -a` do; `verify` says it compared owners and finds nothing. After the
/// source's owners and modes change (its data not), a second copy fixes them on the files
/// it finds unchanged; an owner changed at the destination is named by `verify`.
#[test]
fn copy_as_root_keeps_owners_groups_and_setuid() {
    if !root_or_skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let tree = owned_tree(d.path());
    let dest = d.path().join("dest");
    let out = sluice().arg("copy").arg(&tree).arg(&dest).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let copy = dest.join("tree");
    assert_arrived(&tree, &copy, |m| m);
    let v = verify(&tree, &dest);
    assert!(v.status.success(), "{}", stdout(&v));
    assert!(stdout(&v).contains("owners), 0 differ"), "{}", stdout(&v));

    // New owners and modes at the source, the same bytes: only metadata is to be fixed.
    std::os::unix::fs::lchown(tree.join("plain"), Some(2345), Some(6789)).unwrap();
    std::os::unix::fs::lchown(tree.join("sub/link"), Some(3456), Some(7890)).unwrap();
    std::os::unix::fs::chown(tree.join("mine"), Some(1234), Some(5678)).unwrap();
    fs::set_permissions(tree.join("mine"), fs::Permissions::from_mode(0o4711)).unwrap();
    let v = verify(&tree, &dest);
    assert_eq!(v.status.code(), Some(1), "{}", stdout(&v));
    for says in [
        "owner: tree/plain: 2345:6789 at the source, 1234:5678 here",
        "owner: tree/sub/link: 3456:7890 at the source, 1234:5678 here",
        "mode: tree/mine: 4711 at the source, 0644 here",
    ] {
        assert!(stdout(&v).contains(says), "{says}: {}", stdout(&v));
    }
    let out = sluice().arg("copy").arg(&tree).arg(&dest).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("0 sent"),
        "data unchanged: {}",
        stdout(&out)
    );
    assert_arrived(&tree, &copy, |m| m);
    assert!(verify(&tree, &dest).status.success());
}

/// `send` to a `recv` run as root: the same, over the network path (a fresh destination, and
/// a re-run into it after the owner changed at the destination).
#[test]
fn send_to_a_root_receiver_keeps_owners_groups_and_setuid() {
    if !root_or_skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let tree = owned_tree(d.path());
    let dest = d.path().join("dest");
    for run in 1..=2 {
        // No umask: modes arrive as they left (a umask applies as always, tested elsewhere).
        let recv = Recv::start_under_umask(&dest, "0", &[]);
        let out = sluice()
            .arg("send")
            .arg(&tree)
            .arg(&recv.ticket)
            .output()
            .unwrap();
        assert!(out.status.success(), "run {run}: {}", stderr(&out));
        assert!(recv.wait().status.success());
        assert_arrived(&tree, &dest.join("tree"), |m| m);
        std::os::unix::fs::chown(dest.join("tree/setuid"), Some(0), Some(0)).unwrap();
    }
}

/// `--no-owner` and `--no-group` (on `copy`, and on a `recv` whatever its sender sends) leave
/// the owner or group to the receiving user, and drop setuid or setgid with it; `--numeric-ids`
/// keeps the numbers.
#[test]
fn opting_out_of_owners_drops_setuid_and_setgid_with_them() {
    if !root_or_skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let tree = owned_tree(d.path());
    let no_owner = |(_, gid, mode): (u32, u32, Option<u32>)| (0, gid, mode.map(|m| m & !0o4000));
    let no_group = |(uid, _, mode): (u32, u32, Option<u32>)| (uid, 0, mode.map(|m| m & !0o2000));
    type Expect = fn((u32, u32, Option<u32>)) -> (u32, u32, Option<u32>);
    let cases: [(&str, Expect); 3] = [
        ("--no-owner", no_owner),
        ("--no-group", no_group),
        ("--numeric-ids", |m| m),
    ];
    for (i, (flag, expect)) in cases.into_iter().enumerate() {
        let dest = d.path().join(format!("copy{i}"));
        let out = sluice()
            .args(["copy", flag])
            .arg(&tree)
            .arg(&dest)
            .output()
            .unwrap();
        assert!(out.status.success(), "{flag}: {}", stderr(&out));
        assert_arrived(&tree, &dest.join("tree"), expect);
    }
    let dest = d.path().join("received");
    let recv = Recv::start_under_umask(&dest, "022", &["--no-owner", "--no-group"]);
    let out = sluice()
        .arg("send")
        .arg(&tree)
        .arg(&recv.ticket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(recv.wait().status.success());
    assert_arrived(&tree, &dest.join("tree"), |(_, _, mode)| {
        (0, 0, mode.map(|m| m & 0o1777 & !0o022))
    });
}

/// A receiver as root finds each owner by its name (`qauser` here, else `root`), keeps the
/// number of a name it does not know, and with `--numeric-ids` takes the numbers alone. The
/// sender is crafted, as a host whose ids differ from this one's: a directory, a symlink and
/// an empty setuid file.
#[test]
fn names_map_to_local_ids_and_unknown_names_keep_their_number() {
    if !root_or_skip() {
        return;
    }
    let (name, uid, gid) = qauser().unwrap_or(("root".into(), 0, 0));
    let by_name = Owner {
        uid: Some(4321),
        gid: Some(8765),
        user: name.clone(),
        group: name,
    };
    let unknown = Owner {
        uid: Some(4322),
        gid: Some(8766),
        user: "no-such-user-of-sluice".into(),
        group: "no-such-group-of-sluice".into(),
    };
    let entry = |id, kind, path: &str, mode, owner: &Owner| {
        Message::Entry(Entry {
            id,
            kind,
            path: path.into(),
            mode,
            mtime_sec: 0,
            mtime_nsec: 0,
            size: 0,
            link_target: if kind == EntryKind::Symlink {
                "x".into()
            } else {
                String::new()
            },
            version: [0; 16],
            owner: owner.clone(),
        })
    };
    let d = tempfile::tempdir().unwrap();
    for numeric in [false, true] {
        let dest = d.path().join(format!("numeric-{numeric}"));
        let flags: &[&str] = if numeric { &["--numeric-ids"] } else { &[] };
        let recv = Recv::start_under_umask(&dest, "022", flags);
        let mut c = Crafted::connect(&recv.ticket);
        c.send(&[
            entry(0, EntryKind::Dir, "named", 0o2750, &by_name),
            entry(1, EntryKind::File, "named/setuid", 0o4755, &by_name),
            entry(2, EntryKind::Symlink, "named/link", 0o777, &unknown),
            entry(3, EntryKind::Dir, "unknown", 0o755, &unknown),
            Message::ManifestEnd { count: 4 },
            Message::FileDone {
                id: 1,
                root: *blake3::hash(b"").as_bytes(),
                sent: 0,
            },
            Message::Finish,
        ]);
        let answer = c.last_answer(Duration::from_secs(10));
        assert!(
            matches!(answer, Some(Message::Summary { .. })),
            "{answer:?}"
        );
        c.close();
        let r = recv.wait();
        assert!(r.status.success(), "{}", stderr(&r));
        let (uid, gid) = if numeric { (4321, 8765) } else { (uid, gid) };
        assert_eq!(owned(&dest.join("named")), (uid, gid, Some(0o2750)));
        assert_eq!(owned(&dest.join("named/setuid")), (uid, gid, Some(0o4755)));
        assert_eq!(owned(&dest.join("named/link")), (4322, 8766, None));
        assert_eq!(owned(&dest.join("unknown")), (4322, 8766, Some(0o755)));
    }
}

/// In a setgid destination directory of another group, the directories a copy makes take that
/// group, and so would the files created in them: each file still gets its source's group
/// (root's own here, so nothing but the directory's rule could give it another), and its mode.
#[test]
fn a_setgid_destination_does_not_give_its_group_to_the_files() {
    if !root_or_skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    fs::create_dir_all(tree.join("sub")).unwrap();
    for (name, mode) in [
        ("sub/private", 0o600),
        ("sub/shared", 0o644),
        ("top", 0o640),
    ] {
        random_file(&tree.join(name), 5000, 3);
        fs::set_permissions(tree.join(name), fs::Permissions::from_mode(mode)).unwrap();
    }
    let dest = d.path().join("dest");
    fs::create_dir(&dest).unwrap();
    std::os::unix::fs::chown(&dest, None, Some(5678)).unwrap();
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o2775)).unwrap();
    let out = sluice().arg("copy").arg(&tree).arg(&dest).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for name in ["sub/private", "sub/shared", "top", "sub", ""] {
        assert_eq!(
            owned(&dest.join("tree").join(name)),
            owned(&tree.join(name)),
            "{name:?}"
        );
    }
}
