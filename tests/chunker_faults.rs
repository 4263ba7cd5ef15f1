//! The Chunker under concurrency and store faults: single-flight (counted
//! store requests), errors reaching every waiter with nothing cached and a
//! clean retry once the store heals, timeouts on a request that never
//! answers, progressive readiness of a streaming chunk, the pool bounding
//! store requests, and eviction under a cache budget.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::chunker::{Env, MIB, PAGE, test_data, wait_budget_empty};
use common::process::wait_until;
use common::rng::Rng;
use tdfs::chunker::{CHUNK_SIZE, CacheBudget, Chunker, ChunkerError, DiffSpec};
use tdfs::format::Compression;
use tdfs::store::Fault;

const THREADS: usize = 16;

/// Run `read` on THREADS threads released together; their results.
fn together<T: Send + 'static>(
    c: &Arc<Chunker>,
    read: impl Fn(&Chunker, usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(THREADS));
    let read = Arc::new(read);
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let (c, barrier, read) = (Arc::clone(c), Arc::clone(&barrier), Arc::clone(&read));
            std::thread::spawn(move || {
                barrier.wait();
                read(&c, i)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Frame size of the compressed objects.
const FRAME: usize = 2 << 20;

/// A page inside the second fetch unit (chunk 1 or frame 1), and the unit's start.
fn second_unit(spec: &DiffSpec) -> (u64, u64) {
    let start = if spec.frames.is_compressed() {
        spec.frames.frames()[1].start_u
    } else {
        CHUNK_SIZE
    };
    (start + 3 * PAGE, start)
}

#[test]
fn sixteen_readers_of_a_cold_unit_make_one_request() {
    let env = Env::new();
    env.store.set_latency(Duration::from_millis(200));
    let data = Arc::new(test_data((3 * CHUNK_SIZE) as usize, 1));
    for spec in env.objects(&data, FRAME) {
        let key = spec.key;
        let (_, unit) = second_unit(&spec);
        let c = Arc::new(env.chunker(spec));
        let data2 = Arc::clone(&data);
        let results = together(&c, move |c, i| {
            let off = unit + i as u64 * PAGE;
            let ok = *c.read_in_place(off, PAGE).unwrap() == data2[off as usize..][..PAGE as usize];
            let mut buf = vec![0u8; 10_000];
            c.read_blocks(&mut buf, off + 5).unwrap();
            ok && buf == data2[off as usize + 5..][..10_000]
        });
        assert!(results.iter().all(|&ok| ok));
        assert_eq!(env.store.requests_for(&key), 1, "{key}: one store request");
    }
    assert!(env.stats.cache_misses.load(Relaxed) >= 3);
    assert!(env.stats.cache_hits.load(Relaxed) > 0);
    assert_eq!(env.stats.store_requests.load(Relaxed), 3);
}

#[test]
fn a_failed_fetch_fails_every_waiter_caches_nothing_and_is_retried() {
    let env = Env::new();
    env.store.set_latency(Duration::from_millis(200));
    let data = test_data((3 * CHUNK_SIZE) as usize, 2);
    for spec in env.objects(&data, FRAME) {
        let key = spec.key;
        let (off, _) = second_unit(&spec);
        let c = Arc::new(env.chunker(spec));
        env.store.fail_next(1);
        let results = together(&c, move |c, _| {
            c.read_in_place(off, PAGE).map(|b| b.to_vec())
        });
        for r in &results {
            let err = r.as_ref().unwrap_err();
            assert!(matches!(err, ChunkerError::Store { .. }), "{err}");
            let msg = err.to_string();
            assert!(
                msg.contains(&key.to_string()) && msg.contains("injected"),
                "{msg}"
            );
        }
        assert_eq!(env.store.requests_for(&key), 1, "all waited on one fetch");
        assert_eq!(c.cached_bytes(), 0);
        assert!(*c.read_in_place(off, PAGE).unwrap() == data[off as usize..][..PAGE as usize]);
        assert_eq!(env.store.requests_for(&key), 2, "the next read retried");
    }
    assert_eq!(env.stats.fetch_errors.load(Relaxed), 3);
}

#[test]
fn corrupt_frames_are_never_served_nor_cached() {
    let env = Env::new();
    env.store.set_latency(Duration::from_millis(200));
    let data = test_data((6 * MIB) as usize, 3);
    for compression in [Compression::Zstd, Compression::Lz4] {
        let spec = env.put_framed(&data, compression, &[2 << 20]);
        let key = spec.key;
        let frame = spec.frames.frames()[1];
        let c = Arc::new(env.chunker(spec));
        for at in [
            frame.start_c + u64::from(frame.size_c) / 2,
            frame.end_c() - 1,
            frame.start_c + 1,
        ] {
            env.store.inject(Some(key), Fault::FlipByte(at), Some(1));
            let off = frame.start_u + 5 * PAGE;
            let results = together(&c, move |c, _| {
                let mut buf = vec![0u8; 3 * PAGE as usize];
                c.read_blocks(&mut buf, off).map(|()| buf)
            });
            for r in results {
                let err = r.unwrap_err();
                assert!(
                    matches!(err, ChunkerError::CorruptFrame { .. }),
                    "{compression:?} flip at {at}: {err}"
                );
            }
            assert_eq!(c.cached_bytes(), 0);
        }
        let off = frame.start_u + 5 * PAGE;
        assert!(*c.read_in_place(off, PAGE).unwrap() == data[off as usize..][..PAGE as usize]);
        assert_eq!(c.cached_bytes(), u64::from(frame.size_u));
    }
}

#[test]
fn short_objects_are_errors_and_reads_resume_after_healing() {
    let env = Env::new();
    let data = test_data((3 * CHUNK_SIZE) as usize, 4);
    for spec in env.objects(&data, FRAME) {
        let key = spec.key;
        let compressed = spec.frames.is_compressed();
        let (end_at, probe) = if compressed {
            let f = spec.frames.frames()[1];
            (f.start_c + u64::from(f.size_c) / 2, f.start_u + PAGE)
        } else {
            (CHUNK_SIZE + 10 * PAGE + 100, CHUNK_SIZE + 20 * PAGE)
        };
        let c = env.chunker(spec);
        env.store.inject(Some(key), Fault::EndAt(end_at), None);
        let err = c.read_in_place(probe, PAGE).unwrap_err();
        assert!(matches!(err, ChunkerError::ShortRead { .. }), "{err}");
        if compressed {
            assert_eq!(c.cached_bytes(), 0);
        } else {
            // Whole pages that arrived before the end stay served.
            assert_eq!(c.cached_bytes(), 10 * PAGE);
            let before = CHUNK_SIZE + 9 * PAGE;
            assert!(
                *c.read_in_place(before, PAGE).unwrap() == data[before as usize..][..PAGE as usize]
            );
        }
        env.store.heal();
        assert!(*c.read_in_place(probe, PAGE).unwrap() == data[probe as usize..][..PAGE as usize]);
        assert_eq!(env.store.requests_for(&key), 2);
    }
}

#[test]
fn a_request_that_never_answers_times_out_and_the_fetch_goes_on() {
    let mut env = Env::new();
    env.config.fetch_timeout = Duration::from_millis(300);
    let data = test_data((2 * CHUNK_SIZE) as usize, 5);
    for spec in env.objects(&data, FRAME) {
        let key = spec.key;
        let c = Arc::new(env.chunker(spec));
        env.store.inject(Some(key), Fault::Hang, None);
        let start = Instant::now();
        let results = together(&c, |c, _| c.read_in_place(PAGE, PAGE).map(|b| b.len()));
        let waited = start.elapsed();
        for r in results {
            assert!(matches!(r, Err(ChunkerError::Timeout { .. })), "{r:?}");
        }
        assert!(waited >= Duration::from_millis(300));
        assert!(waited < Duration::from_secs(10), "gave up after {waited:?}");
        assert_eq!(
            env.store.requests_for(&key),
            1,
            "one fetch, still in flight"
        );
        assert_eq!(env.store.hanging(), 1);
        env.store.heal();
        let b = wait_until(
            Duration::from_secs(20),
            "the healed fetch answers",
            || match c.read_in_place(PAGE, PAGE) {
                Err(ChunkerError::Timeout { .. }) => None,
                r => Some(r.unwrap_or_else(|e| panic!("{e}"))),
            },
        );
        assert!(*b == data[PAGE as usize..2 * PAGE as usize]);
        assert_eq!(
            env.store.requests_for(&key),
            1,
            "the healed fetch served it"
        );
    }
}

#[test]
fn a_chunk_is_readable_page_by_page_while_it_streams() {
    let mut env = Env::new();
    env.config.fetch_timeout = Duration::from_millis(500);
    let data = test_data((2 * CHUNK_SIZE) as usize, 6);
    let spec = env.put_raw(&data);
    let key = spec.key;
    let c = env.chunker(spec);
    // The stream stalls 1 MiB into chunk 1.
    env.store
        .inject(Some(key), Fault::StallAt(CHUNK_SIZE + MIB), Some(1));
    let early = CHUNK_SIZE + 10 * PAGE;
    assert!(*c.read_in_place(early, PAGE).unwrap() == data[early as usize..][..PAGE as usize]);
    let late = CHUNK_SIZE + 2 * MIB;
    assert!(matches!(
        c.read_in_place(late, PAGE),
        Err(ChunkerError::Timeout { .. })
    ));
    assert_eq!(
        env.store.hanging(),
        1,
        "the first pages came while it stalled"
    );
    env.store.heal();
    wait_until(Duration::from_secs(20), "the healed stream ends", || {
        c.cached_bytes() >= CHUNK_SIZE
    });
    assert!(*c.read_in_place(late, PAGE).unwrap() == data[late as usize..][..PAGE as usize]);
    assert_eq!(env.store.requests_for(&key), 1);
}

#[test]
fn the_pool_bounds_concurrent_store_requests() {
    let mut env = Env::with_workers(2);
    env.config.fetch_timeout = Duration::from_millis(500);
    let data = test_data((THREADS as u64 * CHUNK_SIZE) as usize, 7);
    let spec = env.put_raw(&data);
    let c = Arc::new(env.chunker(spec));
    env.store.inject(None, Fault::Hang, None);
    let results = together(&c, |c, i| {
        c.read_in_place(i as u64 * CHUNK_SIZE, PAGE)
            .map(|b| b.len())
    });
    assert!(results.iter().all(|r| r.is_err()));
    assert_eq!(env.store.hanging(), 2, "no more requests than workers");
    env.store.heal();
}

fn with_budget(chunks: u64) -> Env {
    let mut env = Env::new();
    env.config.cache_budget = Some(CacheBudget::new(chunks * CHUNK_SIZE));
    env
}

/// Wait for the fetch workers' last eviction round.
fn settle(budget: &CacheBudget) {
    wait_until(
        Duration::from_secs(10),
        "eviction down to the budget",
        || budget.used() <= budget.limit(),
    );
}

#[test]
fn a_budget_evicts_least_recently_used_units() {
    let env = with_budget(3);
    let budget = env.config.cache_budget.clone().unwrap();
    let data = test_data((10 * CHUNK_SIZE) as usize, 8);
    for spec in env.objects(&data, FRAME) {
        let c = env.chunker(spec);
        let mut buf = vec![0u8; MIB as usize];
        for round in 0..2 {
            for off in (0..data.len() as u64).step_by(MIB as usize) {
                c.read_blocks(&mut buf, off).unwrap();
                assert!(
                    buf == data[off as usize..][..buf.len()],
                    "round {round} at {off}"
                );
            }
        }
        settle(&budget);
        assert!(budget.used() <= budget.limit(), "{budget:?}");
        assert_eq!(budget.used(), c.cached_bytes());
        drop(c);
        wait_budget_empty(&budget, "a dropped Chunker gives its bytes back");
    }
    assert!(env.stats.evictions.load(Relaxed) > 0);
}

#[test]
fn a_pinned_block_is_never_evicted() {
    let env = with_budget(2);
    let budget = env.config.cache_budget.clone().unwrap();
    let data = test_data((8 * CHUNK_SIZE) as usize, 9);
    let c = env.chunker(env.put_raw(&data));
    let held = c.read_in_place(0, 2 * MIB).unwrap();
    for chunk in 1..8 {
        let _ = c.read_in_place(chunk * CHUNK_SIZE, 2 * MIB).unwrap();
        settle(&budget);
    }
    assert!(*held == data[..2 * MIB as usize]);
    drop(held);
    assert!(env.stats.evictions.load(Relaxed) >= 5);
    // The worker that fetched the last chunk enforces the limit after its
    // reader was served: wait for it.
    settle(&budget);
    assert!(budget.used() <= budget.limit(), "{budget:?}");
}

#[test]
fn eviction_under_concurrent_readers_never_shows_wrong_bytes() {
    let env = with_budget(2);
    let data = Arc::new(test_data((12 * CHUNK_SIZE) as usize, 10));
    for spec in [
        env.put_raw(&data),
        env.put_framed(&data, Compression::Zstd, &[MIB as usize, 3 * MIB as usize]),
    ] {
        let c = Arc::new(env.chunker(spec));
        let data = Arc::clone(&data);
        let results = together(&c, move |c, i| {
            let mut rng = Rng(i as u64 * 31 + 7);
            let size = data.len() as u64;
            for _ in 0..150 {
                let off = rng.below(size / PAGE) * PAGE;
                let block = c.read_in_place(off, PAGE).unwrap();
                // Hold the block a moment so evictions overlap with it.
                std::thread::yield_now();
                if *block != data[off as usize..][..PAGE as usize] {
                    return false;
                }
            }
            true
        });
        assert!(results.iter().all(|&ok| ok));
    }
    assert!(env.stats.evictions.load(Relaxed) > 0);
}
