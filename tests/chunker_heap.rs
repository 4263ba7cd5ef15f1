//! Heap use while serving a 4 GiB diff stays small: cached data lives in the
//! mmap'ed cache file, not on the heap.
//!
//! How it is measured: this test binary installs a counting global allocator
//! that tracks the bytes currently allocated by the whole process (every
//! thread: readers, fetch workers, the test harness) and their peak. The test
//! records the live bytes before it builds the Chunker, resets the peak, reads
//! blocks and ranges scattered over a 4 GiB sparse uncompressed object from
//! several threads (each miss fetches a whole 4 MiB chunk), and asserts that
//! the peak stayed under 64 MiB above the starting point. mmap'ed pages are not
//! heap and are not counted; that is the point of the design.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use common::chunker::{Env, MIB, PAGE};
use common::rng::Rng;
use tdfs::chunker::{CHUNK_SIZE, DiffSpec};
use tdfs::format::{Compression, FileKind, FrameTable, ObjectKey};
use uuid::Uuid;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes, SeqCst) + bytes;
    PEAK.fetch_max(now, SeqCst);
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), SeqCst);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SIZE: u64 = 4 << 30;
const HEAP_LIMIT: usize = 64 << 20;

#[test]
fn serving_a_4_gib_sparse_diff_keeps_the_heap_small() {
    let env = Env::new();
    let key = ObjectKey::data(Uuid::new_v4(), FileKind::Memfile, Compression::None);
    let path = env.local.root().join(key.to_string());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let object = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .unwrap();
    object.set_len(SIZE).unwrap();
    // A marker page in each 256 MiB, so reads are checked against content.
    let marker = |i: u64| [i as u8 ^ 0x5A; PAGE as usize];
    for i in 0..SIZE / (256 * MIB) {
        object
            .write_all_at(&marker(i), i * 256 * MIB + 8 * PAGE)
            .unwrap();
    }
    drop(object);

    let start = LIVE.load(SeqCst);
    PEAK.store(start, SeqCst);
    let chunker = Arc::new(env.chunker(DiffSpec {
        key,
        size: SIZE,
        frames: FrameTable::uncompressed(),
    }));
    let readers: Vec<_> = (0..4u64)
        .map(|t| {
            let c = Arc::clone(&chunker);
            std::thread::spawn(move || {
                let mut rng = Rng(t * 1_000_003 + 11);
                let mut buf = vec![0u8; MIB as usize];
                for _ in 0..12 {
                    let off = rng.below(SIZE / PAGE) * PAGE;
                    let block = c.read_in_place(off, (2 * MIB).min(SIZE - off)).unwrap();
                    assert_eq!(block.len() as u64, (2 * MIB).min(SIZE - off));
                    let off = rng.below(SIZE - MIB);
                    c.read_blocks(&mut buf, off).unwrap();
                }
                for i in (t..SIZE / (256 * MIB)).step_by(4) {
                    let block = c.read_in_place(i * 256 * MIB + 8 * PAGE, 2 * MIB).unwrap();
                    assert!(block[..PAGE as usize] == marker(i));
                    assert!(block[PAGE as usize..].iter().all(|&b| b == 0));
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    let fetched = env.store.requests_for(&key) * CHUNK_SIZE;
    let peak = PEAK.load(SeqCst) - start;
    let retained = LIVE.load(SeqCst).saturating_sub(start);
    println!(
        "fetched {} MiB into the cache; heap peak {} KiB, retained {} KiB",
        fetched / MIB,
        peak >> 10,
        retained >> 10
    );
    assert!(fetched >= 64 * CHUNK_SIZE, "the reads really fetched");
    assert!(peak < HEAP_LIMIT, "heap peak {peak} bytes");
}
