//! End to end as an unprivileged user (`nobody`, through `setpriv` when the tests run as root,
//! as CI does): root ignores file permissions, so permission bugs only show here.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A tree with a read-only file (as `.git/objects` holds) and an owner-only file, copied as an
/// unprivileged user and then copied again unchanged: both runs succeed, and modes arrive as
/// they left.
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
    // And once more after the read-only file changed at the source.
    fs::set_permissions(src.join("object"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(src.join("object"), b"blob 6\0hello!").unwrap();
    fs::set_permissions(src.join("object"), fs::Permissions::from_mode(0o444)).unwrap();
    let out = sluice_as_user(&[Path::new("copy"), &src, &dest]).unwrap();
    assert!(out.status.success(), "changed: {}", stderr(&out));
    assert_eq!(
        fs::read(dest.join("src/object")).unwrap(),
        b"blob 6\0hello!"
    );
    assert_eq!(mode("object"), 0o444);
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
