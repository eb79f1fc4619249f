//! How should the sender get a page-cache-hot file's blocks into memory it can hash and hand to
//! QUIC? Each strategy reads a 256 MiB file in 1 MiB blocks and computes every block's BLAKE3
//! chaining value, as the sender's storage thread does:
//!
//! - `uring`: io_uring reads into ring buffers, 16 in flight (the data path's default);
//! - `uring_depth2`: the same with 2 in flight, so a block is hashed while still in cache;
//! - `pread`: one `pread` per block into a ring buffer;
//! - `mmap`: map the file and hash the mapping directly (no copy into a buffer; the pages are
//!   then mapped into the process, and QUIC would copy from them).
//!
//! Run with `cargo bench -p sluice-bench --bench source_read`.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_engine::blockio::uring::UringIo;
use sluice_engine::blockio::{BlockIo, Op, Request, SyncIo};
use sluice_engine::merkle::block_cv;
use sluice_engine::mmap::MappedFile;
use sluice_engine::ring::BufferPool;

const LEN: u64 = 256 << 20;
const BLOCK: u64 = 1 << 20;

fn through(io: &mut dyn BlockIo<u64>, file: &Arc<File>, pool: &Arc<BufferPool>, depth: usize) {
    let mut done = Vec::new();
    let mut hashed = 0u64;
    let mut finish = |done: &mut Vec<sluice_engine::blockio::Completion<u64>>| {
        for c in done.drain(..) {
            let n = c.result.unwrap();
            std::hint::black_box(block_cv(&c.req.buf.as_slice()[..n], c.req.offset, LEN));
            hashed += n as u64;
        }
    };
    for i in 0..LEN / BLOCK {
        let req = Request {
            op: Op::Read,
            file: file.clone(),
            offset: i * BLOCK,
            buf: pool.take_blocking(),
            len: BLOCK as usize,
            tag: i,
        };
        io.submit(req, &mut done).unwrap();
        if io.in_flight() >= depth {
            io.wait(1, &mut done).unwrap();
        }
        finish(&mut done);
    }
    while io.in_flight() > 0 {
        io.wait(io.in_flight(), &mut done).unwrap();
        finish(&mut done);
    }
    assert_eq!(hashed, LEN);
}

fn source_read(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("src");
    let mut f = File::create(&path).unwrap();
    let mut xof = blake3::Hasher::new().finalize_xof();
    let mut buf = vec![0u8; BLOCK as usize];
    for _ in 0..LEN / BLOCK {
        xof.fill(&mut buf);
        f.write_all(&buf).unwrap();
    }
    drop(f);
    let file = Arc::new(File::open(&path).unwrap());
    let pool = BufferPool::new(32, BLOCK as usize).expect("buffers");

    let mut g = c.benchmark_group("source_read");
    g.throughput(Throughput::Bytes(LEN)).sample_size(10);
    g.bench_function("uring", |b| {
        let mut io = UringIo::new(16).unwrap();
        b.iter(|| through(&mut io, &file, &pool, 16))
    });
    g.bench_function("uring_depth2", |b| {
        let mut io = UringIo::new(2).unwrap();
        b.iter(|| through(&mut io, &file, &pool, 2))
    });
    g.bench_function("pread", |b| {
        let mut io = SyncIo::default();
        b.iter(|| through(&mut io, &file, &pool, 1))
    });
    g.bench_function("mmap", |b| {
        b.iter(|| {
            let map = MappedFile::new(&file).unwrap();
            for (i, block) in map.as_slice().chunks(BLOCK as usize).enumerate() {
                std::hint::black_box(block_cv(block, i as u64 * BLOCK, LEN));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, source_read);
criterion_main!(benches);
