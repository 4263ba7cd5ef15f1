//! The Chunker: one per (build, file) diff object. Serves ranges of the
//! uncompressed diff from a sparse mmap'ed cache file, fetching 4 MiB chunks
//! (uncompressed objects) or single frames (compressed objects) from the
//! store on first use: single-flight, on a bounded pool, verified before
//! anything is marked present.
//!
//! - Hit path: pin (only under a cache budget), test the present bits with
//!   Acquire, hand out a slice of the mapping. No lock, no allocation.
//! - Miss path: join the fetch session of each missing unit, or start one on
//!   the shared `FetchPool`; wait (at most `fetch_timeout`) until the range
//!   is present. A chunk streams into the cache file and its pages become
//!   readable as they arrive; a frame is decoded into a scratch buffer (one
//!   per core), written to its place and becomes readable once whole and
//!   verified. Both are written with `pwrite`, never through the mapping:
//!   see `CacheFile::write_at`.
//! - A failed fetch marks nothing new present; every waiter gets the error and
//!   the next read starts a new session.
//! - Read-ahead, as the kernel's page cache does it (see `readahead`): a
//!   reader whose lookups move on to the next unit gets fetches of the
//!   following `readahead` units queued; while it keeps reading sequentially
//!   into what read-ahead queued, the window doubles, in batches, up to
//!   `MAX_READAHEAD_UNITS` and `MAX_READAHEAD_BYTES`; a jump sets it back.
//!   Read-ahead only takes the pool's spare room, never a reader's.
//! - A store request that never answers keeps its session: its readers time
//!   out, and no second fetch of the unit starts (two writers cannot share
//!   the unit's place in the cache). The store bounds its own requests.
//! - A full cache disk (ENOSPC/EDQUOT writing a unit; once seen, units'
//!   space is reserved before they are fetched) is not a
//!   read error: the unit is fetched into memory (bounded by the unit size)
//!   for the session's waiters, never marked present; warned once per
//!   Chunker, whose read-ahead then stops.
//! - With `verify_when_complete`, the first time the whole diff is cached
//!   it is hashed against its header's SHA-256; on a mismatch every later
//!   read fails (the cached bytes are never served again).
//! - `read_in_place` returns a `Block` guard rather than a bare slice: under
//!   a `CacheBudget` it pins its units against eviction while it lives (see
//!   `budget`); without a budget it is just the slice.
//!
//! This file holds the `Chunker`, its settings and its public API; the parts
//! of its work are in `chunker/`: `lookup` (hit path and wait loop), `queue`
//! (starting fetch sessions, read-ahead included), `fetch` (the fetch job:
//! store read, decode, placing bytes in the cache), `full_disk` (the
//! fallback when the cache disk is full), `verify` (the whole-diff SHA-256),
//! `block` (the `Block` guard), `prefetch` (fetches of a recorded working
//! set, below readers and read-ahead), `error`, and below them `layout`, `cache`,
//! `session`, `pool`, `scratch`, `budget`, `readahead`, `decode`.

mod block;
mod budget;
mod cache;
mod error;
mod fetch;
mod full_disk;
mod layout;
mod lookup;
mod pool;
mod prefetch;
mod queue;
mod readahead;
mod scratch;
mod session;
mod verify;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

pub use block::Block;
pub use budget::CacheBudget;
pub use error::ChunkerError;
pub use pool::FetchPool;
pub use prefetch::PrefetchStart;

use crate::format::limits::MAX_DIFF_SIZE;
use crate::format::{Compression, FrameTable, ObjectKey, PAGE_SIZE};
use crate::metrics::Stats;
use crate::store::Store;
use crate::sync;
use budget::Lru;
use cache::{CacheFile, PresentBits};
use layout::Layout;
use lookup::Extent;
use readahead::ReadAhead;
use session::Session;

/// Fetch unit of uncompressed objects (E2B's MemoryChunkSize).
pub const CHUNK_SIZE: u64 = 4 << 20;

/// Largest read-ahead window, in units (chunks or frames).
pub const MAX_READAHEAD_UNITS: usize = 64;

/// Largest read-ahead window, in bytes of its units (the largest unit of
/// the object counts for every unit): 32 chunks, or 64 frames of 2 MiB.
pub const MAX_READAHEAD_BYTES: u64 = 128 << 20;

/// What a Chunker serves: one diff object.
#[derive(Debug, Clone)]
pub struct DiffSpec {
    pub key: ObjectKey,
    /// Uncompressed size of the diff.
    pub size: u64,
    /// The header's block size (bytes, a positive multiple of the 4 KiB
    /// page): what a template file's readers are served in. Checked here and
    /// reported by `Chunker::block_size`; the Chunker itself serves any
    /// range.
    pub block_size: u64,
    /// Empty (uncompressed) or the frames of the compressed object.
    pub frames: FrameTable,
}

/// Settings shared by all Chunkers of a mount.
#[derive(Debug, Clone)]
pub struct ChunkerConfig {
    /// Where cache files are created (0700 dir, 0600 files).
    pub cache_dir: PathBuf,
    /// How long a reader waits for a fetch before it gets a timeout error
    /// (the fetch itself goes on for other readers; the store bounds its own
    /// requests).
    pub fetch_timeout: Duration,
    /// Chunks/frames fetched ahead of a sequential reader at first (0 =
    /// off); the window grows while the reader stays sequential.
    pub readahead: usize,
    /// Limit on the bytes cached by all Chunkers sharing it
    /// (`--max-cache-size`); `None` = unbounded, and no eviction cost.
    pub cache_budget: Option<Arc<CacheBudget>>,
}

/// A Chunker. See the module docs. The cache file is deleted on drop.
pub struct Chunker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker")
            .field("key", &self.inner.key)
            .field("size", &self.inner.size)
            .field("cached_bytes", &self.cached_bytes())
            .finish()
    }
}

/// The shared state of a Chunker; fetch jobs hold it while they run.
struct Inner {
    key: ObjectKey,
    size: u64,
    block_size: u64,
    compression: Compression,
    layout: Layout,
    cache: CacheFile,
    present: PresentBits,
    /// Bytes present in the cache file.
    cached: AtomicU64,
    /// The fetch in flight per unit (single-flight).
    sessions: Mutex<HashMap<usize, Arc<Session>>>,
    store: Arc<dyn Store>,
    pool: Arc<FetchPool>,
    stats: Arc<Stats>,
    fetch_timeout: Duration,
    readahead: ReadAhead,
    lru: Option<Lru>,
    /// Set when the Chunker is dropped: queued fetches are skipped.
    closed: AtomicBool,
    /// Set once the cache disk was found full (warned once; read-ahead
    /// stops, as it could not keep what it fetches).
    cache_full: AtomicBool,
    /// SHA-256 the whole diff must have, checked once it is all cached.
    expected_sha256: OnceLock<[u8; 32]>,
    /// Set once the whole-diff check has run (or is running).
    checksum_checked: AtomicBool,
    /// The whole-diff check failed: nothing of this diff is served.
    checksum_failed: OnceLock<ChunkerError>,
    /// Units prefetch brought in (see `prefetch`), made on first use.
    prefetched: OnceLock<PresentBits>,
    /// Prefetch fetches of this diff queued or running.
    prefetching: AtomicUsize,
}

impl Chunker {
    /// A Chunker for `spec`, with a fresh cache file in `config.cache_dir`.
    ///
    /// # Errors
    /// `BadSpec` when the block size is not a page multiple, the diff is over
    /// `MAX_DIFF_SIZE`, or a frame ends past the diff (`FrameTable` already
    /// bounds each frame by `MAX_FRAME_SIZE`); `Cache` when the cache file
    /// cannot be created.
    pub fn new(
        spec: DiffSpec,
        store: Arc<dyn Store>,
        pool: Arc<FetchPool>,
        config: &ChunkerConfig,
        stats: Arc<Stats>,
    ) -> Result<Chunker, ChunkerError> {
        let key = spec.key;
        let bad = |detail: String| ChunkerError::BadSpec { key, detail };
        if spec.block_size == 0 || !spec.block_size.is_multiple_of(PAGE_SIZE) {
            return Err(bad(format!(
                "block size {} is not a positive multiple of 4096",
                spec.block_size
            )));
        }
        if spec.size > MAX_DIFF_SIZE {
            return Err(bad(format!(
                "size {} is over the limit of {MAX_DIFF_SIZE} bytes",
                spec.size
            )));
        }
        let layout = if spec.frames.is_compressed() {
            for (i, f) in spec.frames.frames().iter().enumerate() {
                if f.end_u() > spec.size {
                    return Err(bad(format!(
                        "frame {i} ends at {}, past the diff size {}",
                        f.end_u(),
                        spec.size
                    )));
                }
            }
            Layout::Frames {
                table: spec.frames.clone(),
            }
        } else {
            Layout::Chunks { size: spec.size }
        };
        let name = format!("{}-{}.cache", key.build, key.name.as_string());
        let cache = CacheFile::create(&config.cache_dir, &name, spec.size).map_err(|e| {
            ChunkerError::Cache {
                key,
                offset: 0,
                path: config.cache_dir.join(&name),
                source: Arc::new(e),
            }
        })?;
        let units = layout.units();
        let largest_unit = match &layout {
            Layout::Chunks { .. } => CHUNK_SIZE,
            Layout::Frames { table } => table
                .frames()
                .iter()
                .map(|f| u64::from(f.size_u))
                .max()
                .unwrap_or(CHUNK_SIZE),
        };
        let max_readahead =
            MAX_READAHEAD_UNITS.min((MAX_READAHEAD_BYTES / largest_unit.max(1)).max(1) as usize);
        let inner = Arc::new(Inner {
            key,
            size: spec.size,
            block_size: spec.block_size,
            compression: spec.frames.compression(),
            present: PresentBits::new(layout.bits()),
            layout,
            cache,
            cached: AtomicU64::new(0),
            sessions: Mutex::new(HashMap::new()),
            store,
            pool,
            stats,
            fetch_timeout: config.fetch_timeout,
            readahead: ReadAhead::new(config.readahead, max_readahead, units),
            lru: config
                .cache_budget
                .as_ref()
                .map(|b| Lru::new(Arc::clone(b), units)),
            closed: AtomicBool::new(false),
            cache_full: AtomicBool::new(false),
            expected_sha256: OnceLock::new(),
            checksum_checked: AtomicBool::new(false),
            checksum_failed: OnceLock::new(),
            prefetched: OnceLock::new(),
            prefetching: AtomicUsize::new(0),
        });
        if let Some(budget) = &config.cache_budget {
            budget.register(Arc::downgrade(&inner));
        }
        Ok(Chunker { inner })
    }

    /// Fill `buf` with the diff's bytes at `off` (any offset and length
    /// inside the diff): all of it, or an error.
    ///
    /// # Errors
    /// `OutOfRange` when the range reaches past the diff; `NotInFrameTable`
    /// for bytes no frame holds; a fetch's `Store`, `ShortRead`,
    /// `CorruptFrame`, `Cache` or `Internal`; `Timeout` after
    /// `fetch_timeout`; `ChecksumMismatch` once the whole-diff check failed.
    pub fn read_blocks(&self, buf: &mut [u8], off: u64) -> Result<(), ChunkerError> {
        let inner = &self.inner;
        let end = inner.end_inside(off, buf.len() as u64)?;
        let mut pos = off;
        while pos < end {
            // One unit at a time; on a miss, `get` starts the fetches of the
            // whole rest of the range so they run in parallel.
            let block = inner.get(pos..end, Extent::FirstUnit)?;
            let at = (pos - off) as usize;
            buf[at..at + block.len()].copy_from_slice(&block);
            pos += block.len() as u64;
        }
        Ok(())
    }

    /// The diff's bytes `[off, off + len)` as one block, fetched as needed:
    /// all of them, or a prefix ending where a compressed object's (sparse)
    /// frame table has a gap. Any offset and length inside the diff.
    ///
    /// # Errors
    /// `OutOfRange` when the range reaches past the diff; `NotInFrameTable`
    /// when no frame holds `off`; a fetch's `Store`, `ShortRead`,
    /// `CorruptFrame`, `Cache` or `Internal`; `Timeout` after
    /// `fetch_timeout`; `ChecksumMismatch` once the whole-diff check failed.
    pub fn read_in_place(&self, off: u64, len: u64) -> Result<Block<'_>, ChunkerError> {
        let inner = &self.inner;
        let end = inner.end_inside(off, len)?;
        if len == 0 {
            return Ok(Block::empty());
        }
        inner.get(off..end, Extent::Whole)
    }

    /// Uncompressed size of the diff, in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// The header's block size, in bytes (see `DiffSpec::block_size`).
    pub fn block_size(&self) -> u64 {
        self.inner.block_size
    }

    pub fn key(&self) -> &ObjectKey {
        &self.inner.key
    }

    /// Uncompressed bytes present in the cache file.
    pub fn cached_bytes(&self) -> u64 {
        self.inner.cached.load(Ordering::Relaxed)
    }

    pub fn is_compressed(&self) -> bool {
        matches!(self.inner.layout, Layout::Frames { .. })
    }

    /// Check the diff against `sha256` the first time all of it is cached;
    /// on a mismatch every later read fails (`ChecksumMismatch`). Set once,
    /// right after `new`; later calls are ignored.
    pub fn verify_when_complete(&self, sha256: [u8; 32]) {
        let _ = self.inner.expected_sha256.set(sha256);
    }
}

impl Drop for Chunker {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        self.inner.cache.unlink();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(lru) = &self.lru {
            lru.budget.release(self.cached.load(Ordering::Relaxed));
        }
    }
}

impl Inner {
    /// `off + len`, when `[off, off + len)` lies inside the diff.
    fn end_inside(&self, off: u64, len: u64) -> Result<u64, ChunkerError> {
        off.checked_add(len)
            .filter(|&end| end <= self.size)
            .ok_or_else(|| self.out_of_range(off, len))
    }

    fn lock_sessions(&self) -> MutexGuard<'_, HashMap<usize, Arc<Session>>> {
        sync::lock(&self.sessions)
    }
}
