//! The receiver's writer thread: verifies each block against the hash in its header, then writes
//! it at its offset (io_uring; `O_DIRECT` for whole 4 KiB-aligned blocks), and assembles delta
//! files from the kept blocks of the old version. It reports every outcome to the control task.
//!
//! It owns the part files' handles: a file is opened on its first block and closed when the
//! control task says so, after the file is verified or has failed.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use sluice_proto::message::{BlockHeader, Digest};
use tokio::sync::mpsc;

use crate::blockio::{self, Completion, Op, Request};
use crate::config::Config;
use crate::dest::Destination;
use crate::error::{Error, Result};
use crate::merkle;
use crate::ring::{Buffer, ALIGN};

/// Work for the writer thread.
pub(super) enum Job {
    Write {
        file: u32,
        index: u64,
        header: BlockHeader,
        file_len: u64,
        buf: Buffer,
    },
    Open {
        file: u32,
        path: PathBuf,
    },
    /// Copy kept blocks from the old version into the part file (delta).
    Assemble {
        file: u32,
        base: PathBuf,
        blocks: Vec<(u64, usize)>,
    },
    Close {
        file: u32,
    },
}

/// What the writer thread reports back.
pub(super) enum Written {
    Block { file: u32, index: u64, cv: Digest },
    Corrupt { file: u32, index: u64, offset: u64 },
    Failed { file: u32, error: Error },
    Assembled { file: u32 },
}

/// The writer thread: verifies each block against its header and writes it at its offset.
pub(super) fn write_blocks(
    config: &Config,
    jobs: std_mpsc::Receiver<Job>,
    done: mpsc::UnboundedSender<Written>,
) {
    let (mut io, _) = blockio::open::<(u32, u64, Digest)>(config.io_uring, config.write_depth);
    let mut faults = fault_injection();
    let mut paths: HashMap<u32, PathBuf> = HashMap::new();
    // Per file: the page-cache handle, and an O_DIRECT one for aligned whole blocks.
    let mut open: HashMap<u32, (Arc<File>, Option<Arc<File>>)> = HashMap::new();
    let mut finished = Vec::new();
    let report = |finished: &mut Vec<Completion<(u32, u64, Digest)>>,
                  paths: &HashMap<u32, PathBuf>| {
        for c in finished.drain(..) {
            let (file, index, cv) = c.req.tag;
            let msg = match c.result {
                Ok(n) if n == c.req.len => Written::Block { file, index, cv },
                other => {
                    let path = paths.get(&file).cloned().unwrap_or_default();
                    let source = match other {
                        Err(e) => e,
                        Ok(n) => std::io::Error::new(
                            std::io::ErrorKind::WriteZero,
                            format!(
                                "wrote {n} of {} bytes at offset {} (disk full?)",
                                c.req.len, c.req.offset
                            ),
                        ),
                    };
                    Written::Failed {
                        file,
                        error: Error::File {
                            op: "writing",
                            path,
                            source,
                        },
                    }
                }
            };
            let _ = done.send(msg);
        }
    };
    loop {
        let job = if io.in_flight() == 0 {
            match jobs.recv() {
                Ok(j) => j,
                Err(_) => break,
            }
        } else {
            match jobs.try_recv() {
                Ok(j) => j,
                Err(std_mpsc::TryRecvError::Empty) => {
                    if let Err(e) = io.wait(1, &mut finished) {
                        // Blocks in flight can no longer be accounted for: stop, and the
                        // control task fails the transfer when it sees this thread gone.
                        tracing::error!("io_uring wait failed: {e}");
                        return;
                    }
                    report(&mut finished, &paths);
                    continue;
                }
                Err(std_mpsc::TryRecvError::Disconnected) => break,
            }
        };
        match job {
            Job::Open { file, path } => {
                paths.insert(file, path);
            }
            Job::Close { file } => {
                open.remove(&file);
                paths.remove(&file);
            }
            Job::Assemble { file, base, blocks } => {
                let msg = match paths.get(&file) {
                    Some(part) => match copy_blocks(&base, part, &blocks) {
                        Ok(()) => Written::Assembled { file },
                        Err(error) => Written::Failed { file, error },
                    },
                    None => continue,
                };
                let _ = done.send(msg);
            }
            Job::Write {
                file,
                index,
                header,
                file_len,
                mut buf,
            } => {
                let len = header.len as usize;
                if faults.remove(&(file, index)) {
                    // Test-only fault injection (SLUICE_FAULT_CORRUPT): damage the block as if
                    // it had been corrupted on the way, before verification.
                    buf.as_mut_slice()[len / 2] ^= 0x55;
                }
                let cv = merkle::block_cv(&buf.as_slice()[..len], header.offset, file_len);
                if cv != header.hash {
                    let _ = done.send(Written::Corrupt {
                        file,
                        index,
                        offset: header.offset,
                    });
                    continue;
                }
                let handles = match open.get(&file) {
                    Some(h) => h.clone(),
                    None => {
                        let Some(path) = paths.get(&file) else {
                            continue;
                        };
                        match Destination::open_part(path) {
                            Ok(f) => {
                                let direct = config
                                    .direct_io
                                    .then(|| Destination::open_part_direct(path))
                                    .flatten()
                                    .map(Arc::new);
                                let h = (Arc::new(f), direct);
                                open.insert(file, h.clone());
                                h
                            }
                            Err(source) => {
                                let _ = done.send(Written::Failed {
                                    file,
                                    error: Error::File {
                                        op: "opening",
                                        path: path.clone(),
                                        source,
                                    },
                                });
                                continue;
                            }
                        }
                    }
                };
                // O_DIRECT takes whole 4 KiB pages at 4 KiB offsets (ring buffers are aligned).
                let aligned = header.offset % ALIGN as u64 == 0 && len % ALIGN == 0;
                let handle = match (&handles.1, aligned) {
                    (Some(direct), true) => direct.clone(),
                    _ => handles.0.clone(),
                };
                let req = Request {
                    op: Op::Write,
                    file: handle,
                    offset: header.offset,
                    buf,
                    len,
                    tag: (file, index, cv),
                };
                if let Err(source) = io.submit(req, &mut finished) {
                    let path = paths.get(&file).cloned().unwrap_or_default();
                    let _ = done.send(Written::Failed {
                        file,
                        error: Error::File {
                            op: "writing",
                            path,
                            source,
                        },
                    });
                }
                report(&mut finished, &paths);
            }
        }
    }
    while io.in_flight() > 0 {
        if io.wait(io.in_flight(), &mut finished).is_err() {
            break;
        }
        report(&mut finished, &paths);
    }
}

/// Blocks to damage on arrival, from `SLUICE_FAULT_CORRUPT=FILE_ID:BLOCK_INDEX,...`.
///
/// Test-only: the end-to-end tests use it to prove that a damaged block is detected and only it
/// is sent again. Each listed block is damaged once, on its first arrival. Unset, nothing happens.
fn fault_injection() -> std::collections::HashSet<(u32, u64)> {
    let Ok(spec) = std::env::var("SLUICE_FAULT_CORRUPT") else {
        return Default::default();
    };
    spec.split(',')
        .filter_map(|item| {
            let (f, i) = item.trim().split_once(':')?;
            Some((f.parse().ok()?, i.parse().ok()?))
        })
        .collect()
}

/// Copies kept blocks of the old version of a file into its part file, at the same offsets.
fn copy_blocks(
    base: &std::path::Path,
    part: &std::path::Path,
    blocks: &[(u64, usize)],
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let from = File::open(base).map_err(Error::file("opening", base))?;
    let to = Destination::open_part(part).map_err(Error::file("opening", part))?;
    let mut buf = Vec::new();
    for &(offset, len) in blocks {
        buf.resize(len, 0);
        from.read_exact_at(&mut buf, offset)
            .map_err(Error::file("reading", base))?;
        to.write_all_at(&buf, offset)
            .map_err(Error::file("writing", part))?;
    }
    Ok(())
}
