//! The Chunker returns exactly the diff's bytes: whole reads, random ranges
//! (proptest) and random blocks from many threads, for uncompressed, zstd and
//! LZ4 objects, frames of sizes that are not page multiples, and 2 MiB blocks
//! at page-aligned offsets that are not block-aligned.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use common::chunker::{Env, MIB, PAGE, test_data};
use common::rng::Rng;
use proptest::prelude::*;
use tdfs::chunker::{Block, CHUNK_SIZE, Chunker, ChunkerError, DiffSpec};
use tdfs::format::{Compression, Frame, FrameTable};
use tdfs::template::{MAX_READAHEAD_UNITS, ReadAhead};

/// Every kind of object the Chunker serves, over the same `data`.
fn specs(env: &Env, data: &[u8]) -> Vec<(&'static str, DiffSpec)> {
    vec![
        ("raw", env.put_raw(data)),
        (
            "zstd 2MiB",
            env.put_framed(data, Compression::Zstd, &[2 << 20]),
        ),
        (
            "zstd odd",
            env.put_framed(data, Compression::Zstd, &[5000, 1 << 20, 300_001, 4096]),
        ),
        (
            "lz4 odd",
            env.put_framed(data, Compression::Lz4, &[777_777, 12_345]),
        ),
    ]
}

/// The block a template file's reader is served at `off`: `block_size`
/// bytes, or the rest of the diff.
fn block_at(c: &Chunker, block_size: u64, off: u64) -> Result<Block<'_>, ChunkerError> {
    c.read_in_place(off, block_size.min(c.size().saturating_sub(off)))
}

fn check_block(c: &Chunker, data: &[u8], block_size: u64, off: u64) {
    let block = block_at(c, block_size, off).unwrap();
    let want = block_size.min(data.len() as u64 - off) as usize;
    assert_eq!(block.len(), want, "block length at {off}");
    assert!(
        *block == data[off as usize..off as usize + want],
        "block bytes at {off}"
    );
}

#[test]
fn whole_object_reads_back_for_every_codec() {
    let env = Env::new();
    let data = test_data((9 * MIB + 12_345) as usize, 1);
    for (name, spec) in specs(&env, &data) {
        let c = env.chunker(spec);
        assert_eq!(c.size(), data.len() as u64);
        let mut buf = vec![0u8; data.len()];
        c.read_blocks(&mut buf, 0).unwrap();
        assert!(buf == data, "{name}: whole read");
        assert_eq!(c.cached_bytes(), data.len() as u64, "{name}");
        assert_eq!(c.is_compressed(), name != "raw");
        // Warm: every page-aligned block, the last one short.
        for off in (0..data.len() as u64).step_by(PAGE as usize * 7) {
            check_block(&c, &data, PAGE, off);
        }
        check_block(&c, &data, PAGE, (data.len() as u64 - 1) / PAGE * PAGE);
    }
}

#[test]
fn two_mib_blocks_at_page_aligned_offsets() {
    let env = Env::new();
    let data = test_data((11 * MIB + 8192 + 100) as usize, 2);
    for (name, spec) in specs(&env, &data) {
        let c = env.chunker(spec);
        // Cold blocks straddling chunk and frame boundaries.
        for off in [
            PAGE,
            CHUNK_SIZE - PAGE,
            2 * MIB - 3 * PAGE,
            5 * MIB + 7 * PAGE,
            data.len() as u64 / PAGE * PAGE,
            data.len() as u64 / PAGE * PAGE - 2 * MIB + PAGE,
        ] {
            check_block(&c, &data, 2 * MIB, off);
        }
        assert!(c.cached_bytes() > 0, "{name}");
    }
}

#[test]
fn many_threads_random_blocks_and_ranges() {
    let env = Env::new();
    let data = Arc::new(test_data((13 * MIB + 3000) as usize, 3));
    for (name, spec) in specs(&env, &data) {
        let c = Arc::new(env.chunker(spec));
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let (c, data) = (Arc::clone(&c), Arc::clone(&data));
                std::thread::spawn(move || {
                    let mut rng = Rng(t * 7919 + 17);
                    let size = data.len() as u64;
                    for _ in 0..300 {
                        let off = rng.below(size.div_ceil(PAGE)) * PAGE;
                        check_block(&c, &data, PAGE, off);
                        let off = rng.below(size);
                        let len = rng.below((size - off).min(3 * MIB)) as usize;
                        let mut buf = vec![0u8; len];
                        c.read_blocks(&mut buf, off).unwrap();
                        assert!(buf == data[off as usize..off as usize + len]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join()
                .unwrap_or_else(|_| panic!("{name}: a reader failed"));
        }
    }
}

#[test]
fn bad_offsets_are_errors() {
    let env = Env::new();
    let data = test_data(3 * PAGE as usize + 5, 4);
    let c = env.chunker(env.put_raw(&data));
    // Any offset is served, page-aligned or not.
    assert!(*c.read_in_place(100, PAGE).unwrap() == data[100..][..PAGE as usize]);
    assert!(matches!(
        block_at(&c, PAGE, 4 * PAGE),
        Err(ChunkerError::OutOfRange { .. })
    ));
    let mut buf = vec![0u8; 6];
    assert!(matches!(
        c.read_blocks(&mut buf, data.len() as u64 - 5),
        Err(ChunkerError::OutOfRange { .. })
    ));
    assert!(matches!(
        c.read_blocks(&mut buf, u64::MAX - 2),
        Err(ChunkerError::OutOfRange { .. })
    ));
    c.read_blocks(&mut [], data.len() as u64).unwrap();
    assert_eq!(block_at(&c, PAGE, 3 * PAGE).unwrap().len(), 5);
    let msg = c.read_in_place(100, 4 * PAGE).unwrap_err().to_string();
    assert!(
        msg.contains(&c.key().to_string()) && msg.contains("100"),
        "{msg}"
    );
}

#[test]
fn sparse_frame_table_blocks_end_at_gaps() {
    let env = Env::new();
    let data = test_data(6 * MIB as usize, 5);
    let full = env.put_framed(&data, Compression::Zstd, &[MIB as usize]);
    // Keep frames 0, 1 and 4: a gap over [2 MiB, 4 MiB).
    let kept: Vec<Frame> = full
        .frames
        .frames()
        .iter()
        .enumerate()
        .filter(|(i, _)| [0, 1, 4].contains(i))
        .map(|(_, f)| *f)
        .collect();
    let spec = DiffSpec {
        frames: FrameTable::new(Compression::Zstd, kept).unwrap(),
        ..full
    };
    let c = env.chunker(spec);
    let b = block_at(&c, 2 * MIB, MIB + PAGE).unwrap();
    assert_eq!(b.len() as u64, MIB - PAGE, "clipped at the gap");
    assert!(*b == data[(MIB + PAGE) as usize..2 * MIB as usize]);
    drop(b);
    assert!(matches!(
        block_at(&c, 2 * MIB, 2 * MIB),
        Err(ChunkerError::NotInFrameTable { .. })
    ));
    let mut buf = vec![0u8; 2 * PAGE as usize];
    assert!(matches!(
        c.read_blocks(&mut buf, 2 * MIB - PAGE),
        Err(ChunkerError::NotInFrameTable { .. })
    ));
    c.read_blocks(&mut buf, 4 * MIB + 10).unwrap();
    assert!(buf == data[(4 * MIB + 10) as usize..][..buf.len()]);
    assert_eq!(
        c.cached_bytes(),
        2 * MIB,
        "the two frames read, nothing else"
    );
}

#[test]
fn sequential_reads_fetch_ahead_without_duplicate_requests() {
    let env = Env::new();
    let data = test_data((10 * CHUNK_SIZE) as usize, 6);
    let spec = env.put_raw(&data);
    let key = spec.key;
    let c = env.chunker(spec);
    let reader = Reader::new(&c, 2);
    let mut buf = vec![0u8; MIB as usize];
    for off in (0..data.len() as u64).step_by(MIB as usize) {
        reader.note(off, MIB);
        c.read_blocks(&mut buf, off).unwrap();
        assert!(buf == data[off as usize..][..buf.len()]);
    }
    assert!(env.stats.readahead_fetches.load(Relaxed) > 0);
    assert_eq!(
        env.store.requests_for(&key),
        10,
        "one request per chunk, read-ahead included"
    );
}

/// Units of the read-ahead tests: small frames, so that many of them make
/// a small object and the window's byte bound (`MAX_READAHEAD_BYTES`) is
/// far above `MAX_READAHEAD_UNITS` of them.
const RA_FRAME: u64 = 16 << 10;
const RA_UNITS: u64 = 400;

/// One reader of a Chunker as an open template file drives it (the diff
/// mapped one to one): its own read-ahead stream in steps of the Chunker's
/// unit, whose plans the Chunker queues (`Chunker::read_ahead`) before the
/// read itself.
struct Reader<'c> {
    c: &'c Chunker,
    ra: ReadAhead,
}

impl<'c> Reader<'c> {
    fn new(c: &'c Chunker, readahead: usize) -> Reader<'c> {
        let ra = ReadAhead::for_file(c.size(), c.unit_size(), readahead);
        Reader { c, ra }
    }

    /// Note a read of `[off, off + len)`: queue what read-ahead plans.
    fn note(&self, off: u64, len: u64) {
        if let Some(plan) = self.ra.on_read(off, len) {
            self.ra.queued(&plan, self.c.read_ahead(plan.clone()));
        }
    }

    fn read_unit(&self, u: u64) {
        self.note(u * RA_FRAME, RA_FRAME);
        assert_eq!(
            block_at(self.c, RA_FRAME, u * RA_FRAME).unwrap().len() as u64,
            RA_FRAME
        );
    }
}

/// A Chunker of `RA_UNITS` frames of `RA_FRAME` bytes (one block each), on
/// a pool so large that read-ahead always finds room: what it queues then
/// depends only on the reads.
fn readahead_chunker() -> (Env, Chunker) {
    let env = Env::with_workers(2 * MAX_READAHEAD_UNITS);
    let data = test_data((RA_UNITS * RA_FRAME) as usize, 11);
    let spec = env.put_framed(&data, Compression::Zstd, &[RA_FRAME as usize]);
    let c = env.chunker(spec);
    (env, c)
}

#[test]
fn sequential_reader_grows_the_read_ahead_window() {
    let (env, c) = readahead_chunker();
    let reader = Reader::new(&c, 2);
    let read = 100;
    for u in 0..read {
        reader.read_unit(u);
    }
    // Read-ahead queued every unit from 2 on up to some point ahead of the
    // reader (at unit 99). A fixed window of 2 reaches unit 101: 100
    // fetches. Grown to its cap, the window keeps between half of it and
    // all of it queued ahead of the reader.
    let fetches = env.stats.readahead_fetches.load(Relaxed);
    let cap = MAX_READAHEAD_UNITS as u64;
    assert!(
        (read + cap / 2..=read + cap).contains(&fetches),
        "{fetches} read-ahead fetches after {read} sequential units"
    );
}

#[test]
fn long_reads_in_place_grow_the_read_ahead_window() {
    let (env, c) = readahead_chunker();
    let reader = Reader::new(&c, 2);
    let read = 100;
    for u in (0..read).step_by(4) {
        // One lookup of four units.
        reader.note(u * RA_FRAME, 4 * RA_FRAME);
        assert_eq!(
            c.read_in_place(u * RA_FRAME, 4 * RA_FRAME).unwrap().len() as u64,
            4 * RA_FRAME
        );
    }
    // Read-ahead starts after the second read (at unit 8); a fixed window of
    // 2 would end at unit 101.
    let fetches = env.stats.readahead_fetches.load(Relaxed);
    let cap = MAX_READAHEAD_UNITS as u64;
    assert!(
        (read - 8 + cap / 2..=read - 8 + cap).contains(&fetches),
        "{fetches} read-ahead fetches after {read} sequential units"
    );
}

#[test]
fn random_reader_gets_no_read_ahead_and_a_jump_resets_the_window() {
    let (env, c) = readahead_chunker();
    let reader = Reader::new(&c, 4);
    let mut rng = Rng(99);
    for _ in 0..300 {
        // Never within two units of the previous lookup: not sequential.
        reader.read_unit(rng.below(RA_UNITS / 3) * 3);
    }
    assert_eq!(env.stats.readahead_fetches.load(Relaxed), 0);

    let (env, c) = readahead_chunker();
    let reader = Reader::new(&c, 4);
    for u in 0..60 {
        reader.read_unit(u);
    }
    let before = env.stats.readahead_fetches.load(Relaxed);
    assert!(before > 60 + 4, "grew: {before}");
    // Far past anything queued so far: a new stream gets the start window.
    reader.read_unit(300);
    reader.read_unit(301);
    assert_eq!(env.stats.readahead_fetches.load(Relaxed) - before, 4);
}

#[test]
fn sequential_reader_on_two_threads_out_of_order_grows_the_window() {
    let (env, c) = readahead_chunker();
    let reader = Reader::new(&c, 2);
    let rounds = 50u64;
    let barrier = std::sync::Barrier::new(2);
    // Each round, two threads look up units 2r and 2r+1 at once, as the
    // kernel's concurrent read-ahead requests do: either may come first.
    std::thread::scope(|s| {
        for t in 0..2 {
            let (reader, barrier) = (&reader, &barrier);
            s.spawn(move || {
                for r in 0..rounds {
                    barrier.wait();
                    reader.read_unit(2 * r + t);
                }
            });
        }
    });
    let fetches = env.stats.readahead_fetches.load(Relaxed);
    assert!(
        fetches >= 2 * rounds + MAX_READAHEAD_UNITS as u64 / 4,
        "{fetches} read-ahead fetches after {} units",
        2 * rounds
    );
}

#[test]
fn stale_cache_file_is_discarded_and_removed_on_drop() {
    let env = Env::new();
    let data = test_data(2 * PAGE as usize, 7);
    let spec = env.put_raw(&data);
    let name = format!("{}-{}.cache", spec.key.build, spec.key.name.as_string());
    std::fs::create_dir_all(&env.config.cache_dir).unwrap();
    let path = env.config.cache_dir.join(name);
    std::fs::write(&path, vec![0xAAu8; 3 * PAGE as usize]).unwrap();
    let c = env.chunker(spec.clone());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * PAGE);
    assert_eq!(c.cached_bytes(), 0);
    assert!(*block_at(&c, PAGE, 0).unwrap() == data[..PAGE as usize]);
    assert!(
        Chunker::new(
            spec.clone(),
            env.store.clone(),
            env.pool.clone(),
            &env.config,
            env.stats.clone()
        )
        .is_err(),
        "a second Chunker of the same object in the same cache dir is refused"
    );
    drop(c);
    assert!(!path.exists());
    env.chunker(spec);
}

#[test]
fn object_shorter_than_its_size_is_a_short_read() {
    let env = Env::new();
    let data = test_data((CHUNK_SIZE + 10 * PAGE) as usize, 8);
    let mut spec = env.put_raw(&data);
    spec.size += 3 * PAGE;
    let c = env.chunker(spec);
    assert!(
        *block_at(&c, PAGE, CHUNK_SIZE).unwrap() == data[CHUNK_SIZE as usize..][..PAGE as usize]
    );
    let err = block_at(&c, PAGE, CHUNK_SIZE + 11 * PAGE).unwrap_err();
    assert!(matches!(err, ChunkerError::ShortRead { .. }), "{err}");
    // The pages that did arrive stay served.
    assert!(
        *block_at(&c, PAGE, CHUNK_SIZE + 9 * PAGE).unwrap()
            == data[(CHUNK_SIZE + 9 * PAGE) as usize..][..PAGE as usize]
    );
}

#[test]
fn bad_specs_are_refused() {
    let env = Env::new();
    let data = test_data(PAGE as usize, 9);
    let mut spec = env.put_raw(&data);
    spec.size = 1 << 50;
    assert!(matches!(
        Chunker::new(
            spec,
            env.store.clone(),
            env.pool.clone(),
            &env.config,
            env.stats.clone()
        ),
        Err(ChunkerError::BadSpec { .. })
    ));
    let mut framed = env.put_framed(&data, Compression::Zstd, &[4096]);
    framed.size = 100;
    assert!(matches!(
        Chunker::new(
            framed,
            env.store.clone(),
            env.pool.clone(),
            &env.config,
            env.stats.clone()
        ),
        Err(ChunkerError::BadSpec { .. })
    ));
}

#[test]
fn empty_diff() {
    let env = Env::new();
    let c = env.chunker(env.put_raw(&[]));
    assert_eq!(c.size(), 0);
    assert!(c.read_in_place(0, 1).is_err());
    assert!(c.read_in_place(0, 0).unwrap().is_empty());
    c.read_blocks(&mut [], 0).unwrap();
}

struct Objects {
    env: Env,
    data: Vec<u8>,
    chunkers: Vec<Chunker>,
}

/// Shared across proptest cases: the caches warm up as cases run, so both
/// cold and warm paths are exercised.
fn objects() -> &'static Objects {
    static OBJECTS: std::sync::OnceLock<Objects> = std::sync::OnceLock::new();
    OBJECTS.get_or_init(|| {
        let env = Env::new();
        let data = test_data((9 * MIB + 4321) as usize, 10);
        let chunkers = specs(&env, &data)
            .into_iter()
            .map(|(_, s)| env.chunker(s))
            .collect();
        Objects {
            env,
            data,
            chunkers,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_ranges_match(off_frac in 0.0f64..1.0, len in 0usize..(5 << 20), which in 0usize..4) {
        let o = objects();
        let _ = &o.env;
        let size = o.data.len() as u64;
        let off = ((size as f64 * off_frac) as u64).min(size);
        let len = (len as u64).min(size - off) as usize;
        let mut buf = vec![0u8; len];
        o.chunkers[which].read_blocks(&mut buf, off).unwrap();
        prop_assert!(buf == o.data[off as usize..off as usize + len]);
    }

    #[test]
    fn random_blocks_match(page_frac in 0.0f64..1.0, which in 0usize..4) {
        let o = objects();
        let pages = (o.data.len() as u64).div_ceil(PAGE);
        let off = ((pages as f64 * page_frac) as u64).min(pages - 1) * PAGE;
        let c = &o.chunkers[which];
        let block = block_at(c, 2 * MIB, off).unwrap();
        let want = (2 * MIB).min(o.data.len() as u64 - off) as usize;
        prop_assert_eq!(block.len(), want);
        prop_assert!(*block == o.data[off as usize..off as usize + want]);
    }
}
