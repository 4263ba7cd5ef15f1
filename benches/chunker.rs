//! Chunker throughput against baselines measured in the same run:
//! - warm random 4 KiB `read_in_place` reads (copied out) vs. a 4 KiB memcpy from a
//!   random offset of an in-memory copy;
//! - warm sequential 1 MiB `read_blocks` vs. a 1 MiB memcpy;
//! - cold sequential reads of a zstd object (2 MiB frames, local store,
//!   read-ahead on) vs. decompressing the same frames from memory on one
//!   thread.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::sync::Arc;

use common::chunker::{Env, MIB, PAGE, test_data};
use common::rng::Rng;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tdfs::format::Compression;
use tdfs::store::Store;
use tdfs::template::ReadAhead;

const WARM_SIZE: usize = 64 << 20;
const COLD_SIZE: usize = 32 << 20;

fn warm(c: &mut Criterion) {
    let env = Env::new();
    let data = test_data(WARM_SIZE, 1);
    let chunker = env.chunker(env.put_raw(&data));
    let mut whole = vec![0u8; WARM_SIZE];
    chunker.read_blocks(&mut whole, 0).unwrap();
    assert!(whole == data);
    let pages = (WARM_SIZE as u64) / PAGE;

    let mut g = c.benchmark_group("warm_random_4k");
    g.throughput(Throughput::Bytes(PAGE));
    let mut out = [0u8; PAGE as usize];
    let mut rng = Rng(7);
    g.bench_function("chunker_block", |b| {
        b.iter(|| {
            let off = rng.below(pages) * PAGE;
            out.copy_from_slice(&chunker.read_in_place(black_box(off), PAGE).unwrap());
            black_box(&out);
        })
    });
    let mut rng = Rng(7);
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            let off = (rng.below(pages) * PAGE) as usize;
            out.copy_from_slice(&data[black_box(off)..off + PAGE as usize]);
            black_box(&out);
        })
    });
    g.finish();

    let mut g = c.benchmark_group("warm_sequential_1m");
    g.throughput(Throughput::Bytes(MIB));
    let mut buf = vec![0u8; MIB as usize];
    let mut off = 0u64;
    g.bench_function("chunker_read_blocks", |b| {
        b.iter(|| {
            chunker.read_blocks(&mut buf, black_box(off)).unwrap();
            off = (off + MIB) % WARM_SIZE as u64;
            black_box(&buf);
        })
    });
    let mut off = 0usize;
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            buf.copy_from_slice(&data[black_box(off)..off + MIB as usize]);
            off = (off + MIB as usize) % WARM_SIZE;
            black_box(&buf);
        })
    });
    g.finish();
}

fn cold_zstd(c: &mut Criterion) {
    let env = Env::new();
    let data = test_data(COLD_SIZE, 2);
    let spec = env.put_framed(&data, Compression::Zstd, &[2 << 20]);
    let object = env
        .local
        .read_exact_range(&spec.key, 0, spec.frames.frames().last().unwrap().end_c())
        .unwrap();

    let mut g = c.benchmark_group("cold_sequential_zstd");
    g.throughput(Throughput::Bytes(COLD_SIZE as u64));
    g.sample_size(20);
    let mut buf = vec![0u8; MIB as usize];
    g.bench_function("chunker_read_blocks", |b| {
        b.iter_batched(
            || Arc::new(env.chunker(spec.clone())),
            |chunker| {
                // The reader's own read-ahead, as an open file has it.
                let ra = ReadAhead::for_file(COLD_SIZE as u64, chunker.unit_size(), 4);
                for off in (0..COLD_SIZE as u64).step_by(MIB as usize) {
                    if let Some(plan) = ra.on_read(off, MIB) {
                        ra.queued(&plan, chunker.read_ahead(plan.clone()));
                    }
                    chunker.read_blocks(&mut buf, off).unwrap();
                    black_box(&buf);
                }
                chunker
            },
            BatchSize::PerIteration,
        )
    });
    let mut out = vec![0u8; COLD_SIZE];
    let mut decompressor = zstd::bulk::Decompressor::new().unwrap();
    g.bench_function("zstd_decompress_frames", |b| {
        b.iter(|| {
            for f in spec.frames.frames() {
                let src = &object[f.start_c as usize..f.end_c() as usize];
                let dst = &mut out[f.start_u as usize..f.end_u() as usize];
                decompressor.decompress_to_buffer(src, dst).unwrap();
            }
            black_box(&out);
        })
    });
    g.finish();
}

criterion_group!(benches, warm, cold_zstd);
criterion_main!(benches);
