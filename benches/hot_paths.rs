//! Hot paths of a FUSE read that benches/format.rs (mapping lookup alone)
//! and benches/chunker.rs (Chunker hits and cold fetches) leave out, each
//! against a baseline measured in the same run:
//! - `TemplateFile::read_at` on a warm packed memfile (mapping lookup, zero
//!   fill, Chunker hit, stats), random 4 KiB and sequential 1 MiB, vs. a
//!   memcpy from the flattened bytes; and `read_in_place` (what a FUSE read
//!   in one mapping does: no copy), sequential 1 MiB;
//! - decoding one 2 MiB zstd frame into fresh pages of a shared file
//!   mapping (what a Chunker fetch did at first), and into a warm buffer
//!   written with `pwrite` (what it does now), vs. decoding into a warm
//!   buffer (the decoder alone).
//!   Each iteration punches the frame's range and allocates it again, which
//!   makes page faults dearer than a Chunker's first write to a fresh cache
//!   file (perf puts them at ~15% of a mount's CPU time on cold reads).

use std::fs::File;
use std::hint::black_box;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use memmap2::{MmapMut, MmapOptions};
use tdfs::format::FileKind;
use tdfs::pack::{PackInputs, PackOptions, pack_build};
use tdfs::store::LocalStore;
use tdfs::template::{Builds, TemplateConfig, TemplateFile};

const PAGE: usize = 4096;
const MIB: usize = 1 << 20;
const MEMFILE_SIZE: usize = 64 * MIB;
const FRAME: usize = 2 * MIB;

/// Deterministic xorshift, so runs compare like for like.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Memory-like pages: runs of zero pages, random pages and compressible
/// ones (small integers and pointers), as contrib/bench's memfile has.
fn memory_like(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut data = vec![0u8; len];
    let mut page = 0;
    while page < len / PAGE {
        let run = (1 + rng.below(64) as usize).min(len / PAGE - page);
        let kind = rng.below(10);
        for p in page..page + run {
            let out = &mut data[p * PAGE..(p + 1) * PAGE];
            match kind {
                0..=3 => {}
                4..=5 => out.iter_mut().for_each(|b| *b = rng.next() as u8),
                _ => {
                    for word in out.chunks_exact_mut(8) {
                        let value = match rng.below(3) {
                            0 => 0,
                            1 => 0x7f00_0000_0000 + rng.below(1 << 20) * 16,
                            _ => rng.below(4096),
                        };
                        word.copy_from_slice(&value.to_le_bytes());
                    }
                }
            }
        }
        page += run;
    }
    data
}

/// A packed zstd build of `memfile` in a temporary local store, opened
/// and read once so every block is cached.
fn warm_template(dir: &std::path::Path, memfile: &[u8]) -> Arc<TemplateFile> {
    let raw = dir.join("memfile.raw");
    std::fs::write(&raw, memfile).unwrap();
    let rootfs = dir.join("rootfs.raw");
    std::fs::write(&rootfs, vec![0u8; MIB]).unwrap();
    let store = Arc::new(LocalStore::create(dir.join("store")).unwrap());
    let opts = PackOptions {
        work_dir: Some(dir.to_path_buf()),
        ..PackOptions::default()
    };
    let inputs = PackInputs {
        memfile: raw,
        rootfs,
        snapfile: None,
        metadata: None,
        prefetch_memfile: None,
        prefetch_rootfs: None,
    };
    let report = pack_build(store.clone(), &opts, &inputs).unwrap();
    let builds = Builds::new(store, TemplateConfig::for_tool(dir.join("cache")));
    let template = builds.open(report.build_id, FileKind::Memfile).unwrap();
    let mut whole = vec![0u8; memfile.len()];
    assert_eq!(template.read_at(&mut whole, 0).unwrap(), memfile.len());
    assert!(whole == memfile, "the packed build reads back as written");
    Arc::new(template)
}

fn template_reads(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let memfile = memory_like(MEMFILE_SIZE, 11);
    let template = warm_template(dir.path(), &memfile);
    let pages = (MEMFILE_SIZE / PAGE) as u64;

    let mut g = c.benchmark_group("template_warm_random_4k");
    g.throughput(Throughput::Bytes(PAGE as u64));
    let mut out = [0u8; PAGE];
    let mut rng = Rng(5);
    g.bench_function("template_read_at", |b| {
        b.iter(|| {
            let off = rng.below(pages) * PAGE as u64;
            template.read_at(&mut out, black_box(off)).unwrap();
            black_box(&out);
        })
    });
    let mut rng = Rng(5);
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            let off = (rng.below(pages) as usize) * PAGE;
            out.copy_from_slice(&memfile[black_box(off)..off + PAGE]);
            black_box(&out);
        })
    });
    g.finish();

    let mut g = c.benchmark_group("template_warm_sequential_1m");
    g.throughput(Throughput::Bytes(MIB as u64));
    let mut buf = vec![0u8; MIB];
    let mut off = 0;
    g.bench_function("template_read_at", |b| {
        b.iter(|| {
            template.read_at(&mut buf, black_box(off) as u64).unwrap();
            off = (off + MIB) % MEMFILE_SIZE;
            black_box(&buf);
        })
    });
    let mut off = 0;
    g.bench_function("template_read_in_place", |b| {
        b.iter(|| {
            // A byte per page: copying the bytes out is the kernel's part.
            let bytes = template.read_in_place(black_box(off) as u64, MIB).unwrap();
            black_box(bytes.expect("one mapping").iter().step_by(4096).count());
            off = (off + MIB) % MEMFILE_SIZE;
        })
    });
    let mut off = 0;
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            buf.copy_from_slice(&memfile[black_box(off)..off + MIB]);
            off = (off + MIB) % MEMFILE_SIZE;
            black_box(&buf);
        })
    });
    g.finish();
}

/// A sparse cache-like file of `frames` frames, mapped shared.
fn cache_file(dir: &std::path::Path, frames: usize) -> (File, MmapMut) {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("frames.cache"))
        .unwrap();
    file.set_len((frames * FRAME) as u64).unwrap();
    // SAFETY: a private temp file nothing else maps or truncates.
    let map = unsafe { MmapOptions::new().map_mut(&file) }.unwrap();
    (file, map)
}

/// Give the frame's pages back, then reserve its blocks again, so the next
/// decode writes fresh pages into allocated blocks, as a Chunker's first
/// fetch of a frame does.
fn renew(file: &File, frame: usize) {
    let range = ((frame * FRAME) as libc::off_t, FRAME as libc::off_t);
    for mode in [libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 0] {
        // SAFETY: fallocate on an open descriptor, inside the file.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, range.0, range.1) };
        assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
    }
}

fn frame_decode(c: &mut Criterion) {
    let plain = memory_like(FRAME, 3);
    let compressed = zstd::bulk::compress(&plain, 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (file, mut map) = cache_file(dir.path(), 1);
    let mut decoder = zstd::bulk::Decompressor::new().unwrap();
    let mut warm = vec![0u8; FRAME];

    let mut g = c.benchmark_group("frame_decode_2m");
    g.throughput(Throughput::Bytes(FRAME as u64));
    g.bench_function("into_warm_buffer", |b| {
        b.iter(|| {
            decoder
                .decompress_to_buffer(black_box(&compressed), &mut warm)
                .unwrap();
        })
    });
    g.bench_function("into_fresh_mmap_pages", |b| {
        b.iter_batched(
            || renew(&file, 0),
            |()| {
                decoder
                    .decompress_to_buffer(black_box(&compressed), &mut map[..])
                    .unwrap();
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("into_warm_buffer_then_pwrite", |b| {
        b.iter_batched(
            || renew(&file, 0),
            |()| {
                decoder
                    .decompress_to_buffer(black_box(&compressed), &mut warm)
                    .unwrap();
                file.write_all_at(&warm, 0).unwrap();
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
    assert!(map[..] == plain[..] && warm == plain);
}

criterion_group!(benches, template_reads, frame_decode);
criterion_main!(benches);
