//! Sluice's data path, as a library another tool can embed.
//!
//! A transfer has two ends. A [`Receiver`] listens (QUIC over UDP and TLS over TCP, see
//! [`transport`]), hands out a [`Ticket`] (its address, certificate fingerprint and a one-time
//! secret) and writes what one sender sends into
//! a destination directory. A [`Sender`] takes local paths and a ticket and returns once the
//! receiver has verified every file. [`copy`] runs both in one process over loopback. Progress is
//! observed through a shared [`Progress`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use sluice_engine::{Config, Progress, Receiver, Sender};
//!
//! let rx = Receiver::bind("/tmp/dest", "127.0.0.1:0".parse().unwrap(), None, Config::default())?;
//! let ticket = rx.ticket().clone();
//! let recv = std::thread::spawn(move || rx.run(Arc::new(Progress::default())));
//! Sender::new(Config::default()).send(&["/tmp/src".into()], &ticket, Arc::new(Progress::default()))?;
//! recv.join().unwrap()?;
//! # Ok::<(), sluice_engine::Error>(())
//! ```
//!
//! The modules, by job: [`manifest`] lists what is sent; [`ring`] bounds memory; [`blockio`]
//! (io_uring or pread/pwrite) reads and writes blocks; [`merkle`] hashes them; [`dest`] guards the
//! destination; [`owners`] says who owns what arrives; `sender`/`receiver` run the two ends; [`transport`] carries them (QUIC or
//! TCP); [`bench`] measures the data path without disks. `docs/architecture.md` draws the
//! whole pipeline.

#![warn(missing_docs)]

pub mod bench;
pub mod blockio;
mod burst;
pub mod config;
mod control;
pub mod db;
pub mod dest;
mod endpoint;
pub mod error;
mod fault;
pub mod journal;
mod lanes;
pub mod manifest;
pub mod merkle;
pub mod mmap;
pub mod owners;
pub mod pack;
pub mod progress;
mod receiver;
pub mod ring;
mod sender;
pub mod transport;
pub mod unit;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use config::Config;
pub use error::{Error, ErrorKind, Result};
pub use pack::Compress;
pub use progress::{Event, PathStats, Progress, Snapshot, Summary};
pub use receiver::{Receiver, Stopper};
pub use sender::Sender;
pub use sluice_proto::exclude::{ExcludeError, Excludes};
pub use sluice_proto::ticket::Ticket;

/// Whether `a` and `b` both exist and are one file (the same device and inode: a hard link or
/// another path to it counts).
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    matches!((id(a), id(b)), (Some(x), Some(y)) if x == y)
}

/// Whether `path` (which need not exist yet) is `dir` or inside it, symlinks resolved.
fn inside(path: &Path, dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    // The deepest part of `path` that exists, resolved, with the rest as written.
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let full = rest.iter().rev().fold(real, |p: PathBuf, c| p.join(c));
            return full.starts_with(&dir);
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_owned());
                existing = if parent.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    parent.to_path_buf()
                };
            }
            _ => return false,
        }
    }
}

/// Copies `sources` into `dest` through a sender and a receiver in this process, over loopback
/// (on `config.transport`): the same code path as `send`/`recv` on two hosts.
pub fn copy(
    sources: &[PathBuf],
    dest: &Path,
    config: &Config,
    progress: Arc<Progress>,
) -> Result<Summary> {
    // One user owns both ends: what the sender asks for, the receiver allows.
    // The depth limit guards a receiver against a hostile sender's manifest; here the tree is
    // the user's own (a tree deeper than 256 levels failed part-way, its directories made).
    let receiving = Config {
        allow_delete: config.allow_delete || config.delete,
        allow_inplace: config.allow_inplace || config.inplace,
        max_depth: u32::MAX,
        exact_modes: true,
        ..config.clone()
    };
    // One file to a name that is not a directory arrives as that name (`cp a.bin b.bin`).
    let target = manifest::file_target(sources, dest);
    if target.is_some() && same_file(&sources[0], dest) {
        return Err(Error::Source {
            path: sources[0].clone(),
            why: "it is the destination itself (source and destination are the same file)",
        });
    }
    let dir = target.as_ref().map_or(dest, |(dir, _)| dir.as_path());
    // `copy a .` beside `a`: its own name in the destination is itself (cp: "are the same
    // file"); it was read and compared with itself.
    let entry_id = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(p)
            .map(|m| (m.dev(), m.ino()))
            .ok()
    };
    if target.is_none() {
        if let Some(src) = sources.iter().find(|s| {
            s.file_name().is_some_and(|name| {
                entry_id(s).is_some() && entry_id(s) == entry_id(&dest.join(name))
            })
        }) {
            return Err(Error::Source {
                path: src.clone(),
                why: "it is the destination itself (source and destination are the same file)",
            });
        }
    }
    // A missing or twice-named source is said before the destination is made.
    manifest::top_names(sources)?;
    if let Some(src) = sources.iter().find(|s| s.is_dir() && inside(dir, s)) {
        return Err(Error::Source {
            path: src.clone(),
            why: "the destination is this directory or inside it: it cannot be copied into itself",
        });
    }
    let rx = Receiver::bind(
        dir,
        "127.0.0.1:0".parse().expect("literal address"),
        None,
        receiving,
    )?;
    let ticket = rx.ticket().clone();
    let stopper = rx.stopper();
    let recv_progress = Arc::new(Progress::keeping(|e| matches!(e, Event::Deleted { .. })));
    let receiver = {
        let p = recv_progress.clone();
        std::thread::Builder::new()
            .name("sluice-recv".into())
            .spawn(move || rx.run(p))
            .map_err(Error::io("starting receiver thread"))?
    };
    let sender = Sender::new(config.clone());
    let sent = match &target {
        Some((_, name)) => sender.send_as(&sources[0], name, &ticket, progress.clone()),
        None => sender.send(sources, &ticket, progress.clone()),
    };
    if sent.is_err() {
        // A sender that failed before it connected (a missing source) leaves the receiver
        // waiting for one; one that failed later closed the link, which ends the receiver too.
        stopper.stop();
    }
    let received = receiver.join().unwrap_or_else(|_| {
        Err(Error::io("receiver thread")(std::io::Error::other(
            "panicked",
        )))
    });
    // What `--delete` removed only the receiver knows by name; the sender's summary has the count.
    for e in recv_progress.take_events() {
        if let Event::Deleted { .. } = e {
            progress.push(e);
        }
    }
    // The receiver's error is the more specific one when both fail, unless it was stopped
    // waiting for the sender.
    match (sent, received) {
        (Ok(s), Ok(_)) => Ok(s),
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
        (Err(send_err), Err(Error::Connection { peer, .. })) if peer == "none" => Err(send_err),
        // The receiver only relays the sender's own abort: the sender's error is the cause.
        (
            Err(send_err),
            Err(
                Error::Session(sluice_proto::session::SessionError::Peer { .. })
                | Error::PeerFailed { .. },
            ),
        ) => Err(send_err),
        // The sender failed on its own account and closed the link: the receiver saw the
        // connection end (with or before the sender's message, a race), so the sender's error
        // is the cause.
        (Err(send_err), Err(Error::Connection { .. }))
            if !matches!(send_err, Error::Connection { .. }) =>
        {
            Err(send_err)
        }
        // Files failed at both ends: the sender's count also holds what it could not list.
        (
            Err(send_err @ Error::FilesFailed { failed: sent, .. }),
            Err(Error::FilesFailed { failed: got, .. }),
        ) if sent > got => Err(send_err),
        (Err(send_err), Err(recv_err)) => {
            tracing::debug!(%send_err, "sender also failed");
            Err(recv_err)
        }
    }
}
