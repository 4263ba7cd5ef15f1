//! The Chunker on a full cache disk (a 1 MiB tmpfs; needs root to mount it):
//! units that do not fit are fetched into memory for their readers, never
//! marked present, and every read, concurrent ones included, still returns
//! the right bytes.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Barrier};

use common::chunker::{Env, MIB, PAGE, test_data};
use common::tmpfs::Tmpfs;
use tdfs::chunker::CHUNK_SIZE;
use tdfs::format::Compression;

#[test]
fn a_full_cache_disk_serves_from_the_store_without_caching() {
    let mut env = Env::new();
    let cache = env.dir.path().join("small-cache");
    let _tmpfs = Tmpfs::mount(&cache, "1m");
    env.config.cache_dir = cache;
    let data = test_data((3 * CHUNK_SIZE) as usize, 11);
    let specs = [
        env.put_raw(&data),
        env.put_framed(&data, Compression::Zstd, &[2 << 20]),
        env.put_framed(&data, Compression::Lz4, &[2 << 20]),
    ];
    for spec in specs {
        let chunker = Arc::new(env.chunker(spec));
        for _ in 0..2 {
            let mut all = vec![0u8; data.len()];
            chunker
                .read_blocks(&mut all, 0)
                .expect("read on a full disk");
            assert!(all == data, "wrong bytes on a full disk");
        }
        // Blocks spanning units, at page offsets.
        for off in [0, PAGE, CHUNK_SIZE - PAGE, 5 * MIB + 3 * PAGE] {
            let block = chunker
                .read_in_place(off, 2 * MIB)
                .expect("block on a full disk");
            let end = off as usize + block.len();
            assert_eq!(block.len() as u64, 2 * MIB);
            assert!(*block == data[off as usize..end], "block at {off}");
        }
        assert!(chunker.cached_bytes() <= MIB, "more cached than fits");

        // Concurrent readers of a unit the cache cannot keep each get its
        // bytes, whether they share a fetch or not.
        let barrier = Arc::new(Barrier::new(8));
        let last_unit = data.len() as u64 - 2 * MIB;
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (c, barrier) = (Arc::clone(&chunker), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut buf = vec![0u8; PAGE as usize];
                    c.read_blocks(&mut buf, last_unit + i * PAGE).map(|()| buf)
                })
            })
            .collect();
        for (i, t) in threads.into_iter().enumerate() {
            let buf = t.join().unwrap().expect("concurrent read");
            let at = (last_unit + i as u64 * PAGE) as usize;
            assert!(buf == data[at..at + PAGE as usize]);
        }
        drop(chunker);
    }
    assert_eq!(env.stats.fetch_errors.load(Relaxed), 0);
}
