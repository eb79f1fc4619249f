//! Read-only memory maps of source files: the alternative to reading blocks into ring buffers,
//! kept to be measured against it (`cargo bench -p sluice-bench -- source_read`, figures in
//! `docs/decisions.md`).
//!
//! This is one of the two modules of the engine allowed `unsafe` (with `uring`). The hazard of
//! a file mapping is that another process may truncate or rewrite the file while it is mapped:
//! a truncation turns later page accesses into SIGBUS, and a rewrite changes bytes under a
//! `&[u8]`. Sluice hashes every block it sends and the receiver verifies it, so a rewrite shows as
//! a verification failure, not silent corruption; the caller must still only map files it has
//! just checked the size of.

use std::fs::File;
use std::io;

use memmap2::Mmap;

/// A whole file mapped read-only.
#[derive(Debug)]
pub struct MappedFile {
    map: Option<Mmap>,
}

impl MappedFile {
    /// Maps `file` (an empty file maps to an empty slice).
    pub fn new(file: &File) -> io::Result<Self> {
        if file.metadata()?.len() == 0 {
            return Ok(Self { map: None });
        }
        // SAFETY: the mapping is read-only and private to this process; the bytes are only read
        // as plain data (hashed and copied), never trusted for memory safety. Concurrent
        // modification by another process is the documented hazard above; it can change what is
        // read, which verification catches, but cannot create a dangling reference because the
        // Mmap owns the mapping for as long as the slice is borrowed.
        let map = unsafe { Mmap::map(file)? };
        // Sequential access: let the kernel read ahead aggressively.
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(Self { map: Some(map) })
    }

    /// The file's bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}
