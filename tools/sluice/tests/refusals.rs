//! End to end: what the receiver must refuse — a sender without the right secret, a receiver
//! without the pinned certificate, and a crafted sender naming paths outside the destination.

#[macro_use]
mod common;

use std::fs;
use std::time::Duration;

use common::*;
use sluice_engine::{transport, Config};
use sluice_proto::codec::{encode_message, FrameDecoder};
use sluice_proto::message::{Entry, EntryKind, Message};
use sluice_proto::session::SenderSession;
use sluice_proto::ticket::Ticket;

fn tamper(ticket: &str, f: impl FnOnce(&mut Ticket)) -> String {
    let mut t: Ticket = ticket.parse().unwrap();
    f(&mut t);
    t.to_string()
}

over_both! {
    fn wrong_secret_is_refused_and_nothing_is_left() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("f");
        random_file(&src, 100_000, 3);
        let dest = d.path().join("dest");
        let recv = Recv::start(&dest);
        let bad = tamper(&recv.ticket, |t| t.secret[0] ^= 1);
        let out = sluice().arg("send").arg(&src).arg(&bad).output().unwrap();
        assert_eq!(out.status.code(), Some(4), "exit code for a refusal");
        let err = stderr(&out);
        assert!(err.contains("secret"), "sender said: {err}");
        // The receiver refused that sender and waits on for the one holding the ticket.
        let r = recv.kill();
        assert!(
            stderr(&r).contains("wrong secret"),
            "receiver said: {}",
            stderr(&r)
        );
        assert_eq!(
            fs::read_dir(&dest).unwrap().count(),
            0,
            "destination must stay empty"
        );
    }
}

over_both! {
    fn wrong_fingerprint_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("f");
        random_file(&src, 10_000, 3);
        let dest = d.path().join("dest");
        let recv = Recv::start(&dest);
        let bad = tamper(&recv.ticket, |t| t.fingerprint[5] ^= 0x40);
        let out = sluice().arg("send").arg(&src).arg(&bad).output().unwrap();
        let err = stderr(&out);
        // A refusal (4, as the README lists a wrong ticket), not an unreachable peer (3).
        assert_eq!(out.status.code(), Some(4), "sender said: {err}");
        assert!(err.contains("fingerprint"), "sender said: {err}");
        drop(recv);
        assert_eq!(fs::read_dir(&dest).unwrap().count(), 0);
    }
}

#[test]
fn malformed_ticket_is_explained() {
    let d = tempfile::tempdir().unwrap();
    let out = sluice()
        .arg("send")
        .arg(d.path())
        .arg("not-a-ticket")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("ticket"), "{}", stderr(&out));
}

/// Connects to a real `sluice recv` as a crafted sender with the right secret, over the
/// transport the test runs on, sends a manifest holding `path`, and
/// returns the receiver's answer.
fn crafted_sender(ticket: &str, path: &str, kind: EntryKind) -> Option<Message> {
    let entry = Message::Entry(Entry {
        id: 0,
        kind,
        path: path.into(),
        mode: 0o644,
        mtime_sec: 0,
        mtime_nsec: 0,
        size: 5,
        link_target: "/etc".into(),
        version: [0; 16],
        owner: Default::default(),
    });
    crafted_messages(ticket, &[entry, Message::ManifestEnd { count: 1 }])
}

/// Connects as a crafted sender with the right secret, sends Hello and then `messages`, and
/// returns the receiver's last answer.
fn crafted_messages(ticket: &str, messages: &[Message]) -> Option<Message> {
    let ticket: Ticket = ticket.parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = Config {
            transport: common::transport(),
            idle_timeout: Duration::from_secs(10),
            ..Config::default()
        };
        let link = transport::connect(&config, &ticket).await.unwrap();
        let (mut send, mut recv) = link.open_control().await.unwrap();
        let mut wire = Vec::new();
        encode_message(&SenderSession::hello(ticket.secret, 1 << 20, 0), &mut wire);
        for m in messages {
            encode_message(m, &mut wire);
        }
        send.write(&mut [wire.into()]).await.unwrap();
        let mut dec = FrameDecoder::new();
        let mut last = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, recv.recv()).await {
            dec.push(&chunk);
            while let Ok(Some(m)) = dec.next_message() {
                last = Some(m);
            }
        }
        link.close(0, b"").await;
        last
    })
}

over_both! {
    fn hostile_paths_are_refused_and_nothing_is_written_outside() {
        for (i, path) in [
            "../escape",
            "a/../../escape",
            "/tmp/sluice-escape-test",
            "a//b",
            // The name of another file's part file: renamed over it, it would take its place.
            ".x.sluice-part",
        ]
        .into_iter()
        .enumerate()
        {
            let d = tempfile::tempdir().unwrap();
            let dest = d.path().join("dest");
            let recv = Recv::start(&dest);
            let answer = crafted_sender(&recv.ticket, path, EntryKind::File);
            match answer {
                Some(Message::Error { message, .. }) => assert!(
                    message.contains("manifest entry 0"),
                    "case {i}: receiver answered {message}"
                ),
                other => panic!("case {i} ({path}): expected an Error, got {other:?}"),
            }
            let r = recv.wait();
            assert!(!r.status.success(), "case {i}: receiver must fail");
            assert!(!d.path().join("escape").exists());
            assert!(!std::path::Path::new("/tmp/sluice-escape-test").exists());
            let inside: Vec<_> = fs::read_dir(&dest).unwrap().collect();
            assert!(inside.is_empty(), "case {i}: destination holds {inside:?}");
        }
    }
}

over_both! {
    fn a_symlink_from_the_manifest_is_never_followed() {
        // A hostile sender announces a symlink to /etc, then a file beneath it: the file would land
        // in /etc if the link were created first or followed. Links are created last and parents
        // are checked, so the write is refused.
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("dest");
        let outside = d.path().join("outside");
        fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, dest_with(&dest).join("evil")).unwrap();
        let recv = Recv::start(&dest);
        // The one file fails (the sender is told why); the transfer is not aborted for it.
        let mut c = common::crafted::Crafted::connect(&recv.ticket);
        c.send(&[
            common::crafted::file_entry(0, "evil/x", 5),
            Message::ManifestEnd { count: 1 },
        ]);
        let answers = c.answers(Duration::from_secs(3));
        c.close();
        assert!(
            answers.iter().any(|a| matches!(a, Message::FileFailed { reason, .. } if reason.contains("symlink"))),
            "{answers:?}"
        );
        let r = recv.wait();
        assert!(!r.status.success());
        assert!(stderr(&r).contains("symlink"), "{}", stderr(&r));
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }
}

fn dest_with(dest: &std::path::Path) -> &std::path::Path {
    fs::create_dir_all(dest).unwrap();
    dest
}

over_both! {
    /// What a peer says reaches the terminal with its control characters escaped: no escape
    /// sequence (window title, colours, cursor moves) and no forged line from a hostile sender.
    fn a_peers_words_cannot_drive_the_terminal() {
        let d = tempfile::tempdir().unwrap();
        let recv = Recv::start(&d.path().join("dest"));
        let evil = "\u{1b}]0;pwned\u{7}\u{1b}[31mred\u{9b}2J\nsluice: all files verified";
        crafted_messages(
            &recv.ticket,
            &[Message::Error {
                code: sluice_proto::message::ErrorCode::Io,
                message: evil.into(),
            }],
        );
        let r = recv.wait();
        assert!(!r.status.success());
        let raw = &r.stderr;
        for bad in [0x1b_u8, 0x07] {
            assert!(!raw.contains(&bad), "control byte {bad:#x} reached the terminal: {}", stderr(&r));
        }
        assert!(!String::from_utf8_lossy(raw).contains('\u{9b}'), "{}", stderr(&r));
        assert!(
            !stderr(&r).lines().any(|l| l.starts_with("sluice: all files verified")),
            "a forged line: {}",
            stderr(&r)
        );
        assert!(stderr(&r).contains("pwned"), "the message is still shown: {}", stderr(&r));
    }
}

/// Anyone who can reach the receiver's port can try to connect; strays must not end or hold
/// the receiver: garbage over TCP, a garbage UDP datagram, and a TCP client that connects and
/// says nothing, then the real sender, which is served.
#[test]
fn stray_connections_do_not_stop_the_receiver() {
    use std::io::Write as _;
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("f");
    random_file(&src, 300_000, 8);
    let dest = d.path().join("dest");
    let recv = Recv::start(&dest);
    let addr = recv.ticket.parse::<Ticket>().unwrap().addr;
    let mut garbage = std::net::TcpStream::connect(addr).unwrap();
    garbage.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    drop(garbage);
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(&[0xc3; 1200], addr).unwrap();
    let _silent = std::net::TcpStream::connect(addr).unwrap();
    let out = sluice()
        .arg("send")
        .arg(&src)
        .arg(&recv.ticket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r = recv.wait();
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(
        stderr(&r).contains("connection attempt failed"),
        "the stray is reported: {}",
        stderr(&r)
    );
    assert_eq!(b3(&dest.join("f")), b3(&src));
}

over_both! {
    /// A sender that says Finish before FileDone for every file is refused at once; the
    /// receiver used to wait for the missing roots forever.
    fn finish_before_every_file_is_done_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let recv = Recv::start(&d.path().join("dest"));
        let started = std::time::Instant::now();
        let entry = Message::Entry(Entry {
            id: 0,
            kind: EntryKind::File,
            path: "f".into(),
            mode: 0o644,
            mtime_sec: 0,
            mtime_nsec: 0,
            size: 5,
            link_target: String::new(),
            version: [0; 16],
            owner: Default::default(),
        });
        let answer = crafted_messages(
            &recv.ticket,
            &[entry, Message::ManifestEnd { count: 1 }, Message::Finish],
        );
        assert!(
            matches!(&answer, Some(Message::Error { message, .. }) if message.contains("without announcing file 0")),
            "{answer:?}"
        );
        let r = recv.wait();
        assert!(started.elapsed() < Duration::from_secs(20));
        assert_eq!(r.status.code(), Some(4), "{}", stderr(&r));
    }
}

over_both! {
    /// A directory or link the receiver will not make (a symlink in the destination stands where
    /// a source directory goes, which is never followed) fails that entry, not the transfer:
    /// the other files arrive, both ends exit 7 (a refused path) naming how many entries failed,
    /// and nothing is written where the symlink points.
    fn a_directory_the_receiver_refuses_fails_alone() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("sub/deep")).unwrap();
        fs::write(src.join("a.txt"), b"arrives").unwrap();
        std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
        let outside = d.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        let dest = d.path().join("dest");
        fs::create_dir_all(dest.join("src")).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("src/sub")).unwrap();
        let recv = Recv::start(&dest);
        let out = sluice().arg("send").arg(&src).arg(&recv.ticket).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(7), "sender: {err}");
        assert!(err.contains("could not be made at the receiver"), "{err}");
        let r = recv.wait();
        assert_eq!(r.status.code(), Some(7), "receiver: {}", stderr(&r));
        assert!(stderr(&r).contains("src/sub/deep"), "{}", stderr(&r));
        assert_eq!(fs::read(dest.join("src/a.txt")).unwrap(), b"arrives");
        assert_eq!(fs::read_link(dest.join("src/link")).unwrap(), std::path::Path::new("a.txt"));
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "written through the symlink");
    }
}
