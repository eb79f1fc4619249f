//! Where a unit's bytes come from and where they go, for the parts of the engine that move units
//! that are not files. A unit is what crosses as one verified whole (a file, a table range, a
//! batch of queue messages); its blocks are hashed at the source and verified before the sink
//! sees them.
//!
//! - [`BlockSource`] and [`BlockSink`] address a unit by offset: `sluice bench` reads a
//!   [`Generated`] source and writes into a [`Discard`] sink.
//! - [`session`] moves units whose length is known only at their end and whose sink takes
//!   bytes in order and commits them as a whole ([`UnitSource`], [`UnitSink`]): `sluice db`
//!   sends PostgreSQL table ranges through it.
//!
//! The file sender and receiver do not go through these traits yet (their reads and writes are
//! batched on io_uring, with delta, resume and in-place rules of their own); how files, a
//! PostgreSQL table range and a stream of queue messages map onto them is in
//! `docs/architecture.md`.

pub mod session;

pub use session::{Hint, Unit, UnitReader, UnitSink, UnitSource, UnitWriter, UnitsSummary};

use std::io;

/// Yields a unit's bytes by offset.
pub trait BlockSource: Send {
    /// Fills `buf` with the unit's bytes at `offset`; returns how many (fewer at the end).
    fn fill(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

/// Takes a unit's verified blocks at their offsets, and commits the unit once whole.
pub trait BlockSink: Send {
    /// Stores `data`, verified, at `offset`.
    fn put(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes the unit durable and visible as a whole.
    fn commit(&mut self) -> io::Result<()>;
}

/// Pseudo-random bytes from memory, as fast as memory copies: a 1 MiB pattern (BLAKE3's output
/// for a seed) repeated, with each 8 KiB stamped with its offset so no two blocks are alike
/// (nothing can deduplicate or compress them away).
#[derive(Debug)]
pub struct Generated {
    pattern: Vec<u8>,
}

impl Generated {
    const PATTERN: usize = 1 << 20;
    const STAMP_EVERY: usize = 8 << 10;

    /// A source whose bytes follow from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut pattern = vec![0u8; Self::PATTERN];
        blake3::Hasher::new()
            .update(&seed.to_le_bytes())
            .finalize_xof()
            .fill(&mut pattern);
        Self { pattern }
    }
}

impl BlockSource for Generated {
    fn fill(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let start = (at % Self::PATTERN as u64) as usize;
            let n = (Self::PATTERN - start).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&self.pattern[start..start + n]);
            done += n;
        }
        // Stamp each 8 KiB boundary with its absolute offset (the part of a stamp that falls
        // inside the buffer, when it straddles an end).
        let end = offset + buf.len() as u64;
        let every = Self::STAMP_EVERY as u64;
        let mut at = offset / every * every;
        while at < end {
            let stamp = at.to_le_bytes();
            for (k, byte) in stamp.iter().enumerate() {
                let pos = at + k as u64;
                if (offset..end).contains(&pos) {
                    buf[(pos - offset) as usize] = *byte;
                }
            }
            at += every;
        }
        Ok(buf.len())
    }
}

/// Drops what it is given: the receiving end of a throughput benchmark.
#[derive(Debug, Default)]
pub struct Discard {
    /// Bytes put so far.
    pub bytes: u64,
}

impl BlockSink for Discard {
    fn put(&mut self, _offset: u64, data: &[u8]) -> io::Result<()> {
        self.bytes += data.len() as u64;
        Ok(())
    }

    fn commit(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A file's bytes, read through the page cache with `pread`: `sluice bench --from`. Past the
/// file's end it starts again from its beginning, so a benchmark may run for a time or an amount
/// larger than the file (the offsets are the stream's, not the file's).
#[derive(Debug)]
pub struct FileSource {
    file: std::fs::File,
    len: u64,
}

impl FileSource {
    /// Opens `path`, which must be a regular, non-empty file.
    pub fn open(path: &std::path::Path) -> io::Result<Self> {
        // Not opened unless it is a regular file: opening a FIFO waits for a writer.
        if !std::fs::metadata(path)?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file with something in it",
            ));
        }
        let file = std::fs::File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() || meta.len() == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file with something in it",
            ));
        }
        Ok(Self {
            file,
            len: meta.len(),
        })
    }

    /// The file's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: an empty file is refused at [`FileSource::open`].
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl BlockSource for FileSource {
    fn fill(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            let at = (offset + done as u64) % self.len;
            let n = ((self.len - at) as usize).min(buf.len() - done);
            self.file
                .read_exact_at(&mut buf[done..done + n], at)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => io::Error::new(
                        e.kind(),
                        format!(
                            "the --from file is shorter than the {} bytes it had when the benchmark started",
                            self.len
                        ),
                    ),
                    _ => e,
                })?;
            done += n;
        }
        Ok(done)
    }
}

/// Writes verified blocks at their offsets into a file, and makes it durable at the commit
/// (`fdatasync`): `sluice bench --to`.
#[derive(Debug)]
pub struct FileSink {
    file: std::fs::File,
}

impl FileSink {
    /// Creates `path`, or truncates the file there.
    pub fn create(path: &std::path::Path) -> io::Result<Self> {
        Ok(Self {
            file: std::fs::File::create(path)?,
        })
    }
}

impl BlockSink for FileSink {
    fn put(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(data, offset)
    }

    fn commit(&mut self) -> io::Result<()> {
        match self.file.sync_data() {
            // A device or a pipe (`--to /dev/null`): nothing to make durable.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            done => done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_sink_into_dev_null_commits() {
        let mut sink = FileSink::create(std::path::Path::new("/dev/null")).unwrap();
        sink.put(4096, b"discarded").unwrap();
        sink.commit().unwrap();
    }

    #[test]
    fn a_file_source_starts_again_at_its_end_and_a_file_sink_puts_at_offsets() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::write(&src, b"abcdefg").unwrap();
        let mut s = FileSource::open(&src).unwrap();
        assert_eq!(s.len(), 7);
        let mut buf = [0u8; 10];
        assert_eq!(s.fill(5, &mut buf).unwrap(), 10);
        assert_eq!(&buf, b"fgabcdefga");
        let dst = d.path().join("dst");
        let mut k = FileSink::create(&dst).unwrap();
        k.put(3, b"def").unwrap();
        k.put(0, b"abc").unwrap();
        k.commit().unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), b"abcdef");
        std::fs::write(&src, b"").unwrap();
        assert!(FileSource::open(&src).is_err());
        assert!(FileSource::open(d.path()).is_err());
    }

    #[test]
    fn generated_bytes_depend_on_the_offset_only() {
        let mut a = Generated::new(7);
        let mut whole = vec![0u8; 3 << 20];
        a.fill(0, &mut whole).unwrap();
        // The same bytes, asked for in odd pieces.
        let mut b = Generated::new(7);
        let mut at = 0;
        for n in [1, 4095, 8193, 1 << 20, 77, (3 << 20) - (1 << 20) - 12366] {
            let mut piece = vec![0u8; n];
            b.fill(at as u64, &mut piece).unwrap();
            assert_eq!(piece, whole[at..at + n], "piece at {at}");
            at += n;
        }
        assert_eq!(at, whole.len());
        // No two 1 MiB blocks alike.
        assert_ne!(whole[..1 << 20], whole[1 << 20..2 << 20]);
    }

    #[test]
    fn discard_counts_what_it_drops() {
        let mut d = Discard::default();
        d.put(0, &[1; 10]).unwrap();
        d.put(10, &[2; 5]).unwrap();
        d.commit().unwrap();
        assert_eq!(d.bytes, 15);
    }
}
