//! Positional block reads and writes, batched: the storage threads' view of the disk.
//!
//! A storage thread hands [`Request`]s — read or write `len` bytes of a [`Buffer`] at an offset
//! of a file — to a [`BlockIo`], and later collects them back as [`Completion`]s, buffer
//! included. Two implementations keep the same contract:
//!
//! - [`uring::UringIo`] queues requests on an io_uring and lets the kernel run up to
//!   `depth` of them at once (the default);
//! - [`SyncIo`] runs each request at once with `pread`/`pwrite` (the fallback where io_uring is
//!   refused, e.g. under a seccomp filter, and the baseline it is measured against).
//!
//! Ownership: a request's buffer and file handle belong to the `BlockIo` from `submit` until
//! the matching completion is returned; nothing else can touch them meanwhile.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::ring::Buffer;

pub mod uring;

/// Read into or write from a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Fill `buf[..len]` from the file.
    Read,
    /// Write `buf[..len]` to the file.
    Write,
}

/// One positional I/O.
#[derive(Debug)]
pub struct Request<T> {
    /// Read or write.
    pub op: Op,
    /// The file; kept open until completion.
    pub file: Arc<File>,
    /// Byte offset in the file.
    pub offset: u64,
    /// The buffer; `len` bytes of it are used from the start.
    pub buf: Buffer,
    /// Bytes to transfer.
    pub len: usize,
    /// The caller's identification of the request.
    pub tag: T,
}

/// A finished request, with its buffer back.
#[derive(Debug)]
pub struct Completion<T> {
    /// The request, as submitted.
    pub req: Request<T>,
    /// Bytes transferred, or the OS error. A count below `req.len` means end of file (reads) or
    /// a device that accepted less (writes); callers treat either as an error.
    pub result: io::Result<usize>,
}

/// A queue of positional reads and writes.
pub trait BlockIo<T> {
    /// Queues a request. If the queue is full, first waits for room, moving finished requests
    /// to `done`.
    fn submit(&mut self, req: Request<T>, done: &mut Vec<Completion<T>>) -> io::Result<()>;
    /// Requests submitted but not yet returned.
    fn in_flight(&self) -> usize;
    /// Waits until at least `min` requests (no more than are in flight) have finished and moves
    /// every finished one to `done`.
    fn wait(&mut self, min: usize, done: &mut Vec<Completion<T>>) -> io::Result<()>;
}

/// Opens the configured implementation: io_uring if asked for and the kernel allows it, else
/// [`SyncIo`]. Returns the name of what it opened, for logs and `--json`.
pub fn open<T: Send + 'static>(
    use_uring: bool,
    depth: u32,
) -> (Box<dyn BlockIo<T> + Send>, &'static str) {
    if use_uring {
        match uring::UringIo::new(depth) {
            Ok(u) => return (Box::new(u), "io_uring"),
            Err(e) => tracing::warn!("io_uring unavailable ({e}); using pread/pwrite"),
        }
    }
    (Box::new(SyncIo::default()), "pread/pwrite")
}

/// Runs every request synchronously when it is submitted.
#[derive(Debug)]
pub struct SyncIo<T> {
    done: VecDeque<Completion<T>>,
}

impl<T> Default for SyncIo<T> {
    fn default() -> Self {
        Self {
            done: VecDeque::new(),
        }
    }
}

impl<T> BlockIo<T> for SyncIo<T> {
    fn submit(&mut self, mut req: Request<T>, _done: &mut Vec<Completion<T>>) -> io::Result<()> {
        let len = req.len.min(req.buf.len());
        let result = match req.op {
            Op::Read => read_full(&req.file, &mut req.buf.as_mut_slice()[..len], req.offset),
            Op::Write => req
                .file
                .write_all_at(&req.buf.as_slice()[..len], req.offset)
                .map(|()| len),
        };
        self.done.push_back(Completion { req, result });
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    fn wait(&mut self, _min: usize, done: &mut Vec<Completion<T>>) -> io::Result<()> {
        done.extend(self.done.drain(..));
        Ok(())
    }
}

/// Whether `file` lives in memory (tmpfs, ramfs): reading it never waits for a device, and
/// io_uring, which cannot read such files without blocking, hands every read to a worker.
pub(crate) fn in_memory(file: &File) -> bool {
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    rustix::fs::fstatfs(file).is_ok_and(|s| {
        let kind = s.f_type as u64;
        kind == TMPFS_MAGIC || kind == RAMFS_MAGIC
    })
}

/// Reads `buf.len()` bytes at `offset` now, short only at end of file.
pub(crate) fn read_full(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<usize> {
    let mut total = 0;
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                offset += n as u64;
                buf = &mut buf[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Whether bytes `offset..offset + len` of `file` lie in a hole: no data from `offset` on
/// before their end (`SEEK_DATA`). False where the filesystem cannot say.
pub(crate) fn in_hole(file: &File, offset: u64, len: usize) -> bool {
    use rustix::fs::{seek, SeekFrom};
    match seek(file, SeekFrom::Data(offset)) {
        Ok(data) => data >= offset + len as u64,
        Err(e) => e == rustix::io::Errno::NXIO,
    }
}

/// Whether every byte of `data` is zero; stops at the first 64 bytes that are not, so data that
/// is not zeros costs next to nothing.
pub(crate) fn all_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(64);
    chunks.all(|c| c.iter().fold(0u8, |a, b| a | b) == 0)
        && chunks.remainder().iter().all(|&b| b == 0)
}

/// Deallocates `len` bytes at `offset` of `f`, leaving a hole that reads as zeros (the file's
/// length is set when it is sealed). False where the filesystem cannot (vfat, some network
/// filesystems): the zeros are then written.
pub(crate) fn punch_hole(f: &File, offset: u64, len: usize) -> bool {
    use rustix::fs::{fallocate, seek, FallocateFlags, SeekFrom};
    // Already a hole (a new part file, or past its end): nothing to change on disk.
    match seek(f, SeekFrom::Data(offset)) {
        Ok(data) if data >= offset + len as u64 => return true,
        Err(rustix::io::Errno::NXIO) => return true,
        _ => {}
    }
    fallocate(
        f,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len as u64,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::BufferPool;

    fn round_trip(io: &mut dyn BlockIo<u32>) {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(
            File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.path().join("f"))
                .unwrap(),
        );
        let pool = BufferPool::new(8, 4096).unwrap();
        let mut done = Vec::new();
        for i in 0..4u32 {
            let mut buf = pool.take_blocking();
            buf.as_mut_slice().fill(i as u8 + 1);
            let req = Request {
                op: Op::Write,
                file: file.clone(),
                offset: u64::from(i) * 4096,
                buf,
                len: 4096,
                tag: i,
            };
            io.submit(req, &mut done).unwrap();
        }
        while io.in_flight() > 0 {
            io.wait(1, &mut done).unwrap();
        }
        assert_eq!(done.len(), 4);
        assert!(done.iter().all(|c| matches!(c.result, Ok(4096))));
        done.clear();
        for i in 0..4u32 {
            let req = Request {
                op: Op::Read,
                file: file.clone(),
                offset: u64::from(3 - i) * 4096,
                buf: pool.take_blocking(),
                len: 4096,
                tag: 3 - i,
            };
            io.submit(req, &mut done).unwrap();
        }
        while io.in_flight() > 0 {
            io.wait(1, &mut done).unwrap();
        }
        for c in &done {
            assert_eq!(c.result.as_ref().unwrap(), &4096);
            assert!(c
                .req
                .buf
                .as_slice()
                .iter()
                .all(|&b| b == c.req.tag as u8 + 1));
        }
        // Reading past the end reports a short count, not an error.
        let req = Request {
            op: Op::Read,
            file,
            offset: 4 * 4096 - 10,
            buf: pool.take_blocking(),
            len: 100,
            tag: 9,
        };
        done.clear();
        io.submit(req, &mut done).unwrap();
        while io.in_flight() > 0 {
            io.wait(1, &mut done).unwrap();
        }
        assert_eq!(done[0].result.as_ref().unwrap(), &10);
    }

    #[test]
    fn sync_io_reads_back_what_it_wrote() {
        round_trip(&mut SyncIo::default());
    }

    #[test]
    fn uring_reads_back_what_it_wrote() {
        let mut io = uring::UringIo::new(2).expect("io_uring must be available for tests");
        round_trip(&mut io);
    }
}
