//! Criterion benchmarks of the data path's kernels: block hashing, the Merkle root, the codec
//! and the buffer ring. Run with `cargo bench -p sluice-bench`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_engine::merkle;
use sluice_engine::ring::BufferPool;
use sluice_proto::codec::{decode_block_header, encode_block_header, encode_message, FrameDecoder};
use sluice_proto::message::{BlockHeader, Entry, EntryKind, Message};

fn hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("block_cv");
    for size in [16 << 10, 256 << 10, 1 << 20, 4 << 20] {
        let data = vec![0xa5u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, d| {
            b.iter(|| merkle::block_cv(black_box(d), size as u64, 1 << 40))
        });
    }
    g.finish();
    let cvs = vec![[7u8; 32]; 1024];
    c.bench_function("root_from_cvs/1GiB_of_1MiB_blocks", |b| {
        b.iter(|| merkle::root_from_cvs(black_box(&cvs), 1 << 30, 1 << 20))
    });
}

fn codec(c: &mut Criterion) {
    let h = BlockHeader {
        file: 3,
        offset: 1 << 30,
        len: 1 << 20,
        hash: [9; 32],
        patch: false,
        packed: 0,
        zero: false,
        moved: false,
        early: false,
        spliced: false,
    };
    c.bench_function("block_header_round_trip", |b| {
        b.iter(|| decode_block_header(&encode_block_header(black_box(&h))))
    });
    let mut wire = Vec::new();
    for id in 0..1000 {
        encode_message(
            &Message::Entry(Entry {
                id,
                kind: EntryKind::File,
                path: format!("some/dir/file-{id:05}.dat"),
                mode: 0o644,
                mtime_sec: 1_700_000_000,
                mtime_nsec: 0,
                size: 1 << 20,
                link_target: String::new(),
                version: [7; 16],
                owner: Default::default(),
            }),
            &mut wire,
        );
    }
    let mut g = c.benchmark_group("manifest_decode");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("1000_entries", |b| {
        b.iter(|| {
            let mut d = FrameDecoder::new();
            d.push(black_box(&wire));
            let mut n = 0;
            while let Ok(Some(_)) = d.next_message() {
                n += 1;
            }
            n
        })
    });
    g.finish();
}

fn ring(c: &mut Criterion) {
    let pool = BufferPool::new(64, 1 << 20).expect("buffers");
    c.bench_function("ring_take_freeze_drop", |b| {
        b.iter(|| {
            let buf = pool.take_blocking();
            drop(black_box(buf.freeze(1 << 20)));
        })
    });
}

criterion_group!(kernels, hashing, codec, ring);
criterion_main!(kernels);
