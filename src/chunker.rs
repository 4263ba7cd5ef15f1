//! The Chunker: one per (build, file) diff object. Serves page-aligned blocks
//! of the uncompressed diff from a sparse mmap'ed cache file, fetching 4 MiB
//! chunks (uncompressed objects) or single frames (compressed objects) from
//! the store on first use: single-flight, on a bounded pool, verified before
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
//! - `block` returns a `Block` guard rather than a bare slice: under a
//!   `CacheBudget` it pins its units against eviction while it lives (see
//!   `budget`); without a budget it is just the slice.

mod budget;
mod cache;
mod decode;
mod layout;
mod pool;
mod readahead;
mod scratch;
mod session;

use std::collections::HashMap;
use std::io::{self, Read};
use std::ops::{Deref, Range};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use budget::CacheBudget;
pub use pool::FetchPool;

use crate::format::limits::{MAX_DIFF_SIZE, MAX_FRAME_SIZE};
use crate::format::{Compression, Frame, FrameTable, ObjectKey, PAGE_SIZE};
use crate::metrics::Stats;
use crate::store::{Store, StoreError};
use crate::sync;
use budget::Lru;
use cache::{CacheFile, PresentBits};
use layout::Layout;
use readahead::ReadAhead;
use session::{Fetched, Session, Waited};

/// Fetch unit of uncompressed objects (E2B's MemoryChunkSize).
pub const CHUNK_SIZE: u64 = 4 << 20;

/// Largest read-ahead window, in units (chunks or frames).
pub const MAX_READAHEAD_UNITS: usize = 64;

/// Largest read-ahead window, in bytes of its units (the largest unit of
/// the object counts for every unit): 32 chunks, or 64 frames of 2 MiB.
pub const MAX_READAHEAD_BYTES: u64 = 128 << 20;

/// Bytes of a streaming chunk fetch read before its pages are published.
const STREAM_PIECE: usize = 256 << 10;

thread_local! {
    /// Each fetch worker's buffer for what it reads from the store (a chunk
    /// piece or a compressed frame): reused, so its pages are not fresh
    /// memory on every fetch.
    static FETCH_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Run `f` on this thread's fetch buffer, `len` bytes long.
fn with_fetch_buf<T>(len: usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
    FETCH_BUF.with_borrow_mut(|buf| {
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let out = f(&mut buf[..len]);
        if buf.len() > scratch::KEEP_AT_MOST {
            *buf = Vec::new();
        }
        out
    })
}

/// Why a block could not be served. Every variant names the object and the
/// offset (uncompressed, in the diff) it concerns. Cloneable so that every
/// waiter of a failed fetch gets the error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChunkerError {
    #[error("{key} at offset {offset}: {source}")]
    Store {
        key: ObjectKey,
        offset: u64,
        #[source]
        source: Arc<StoreError>,
    },
    #[error(
        "{key} at offset {offset}: the store returned {got} of {expected} bytes; the object is \
         shorter than its header says (an incomplete upload, or a header of another object)"
    )]
    ShortRead {
        key: ObjectKey,
        offset: u64,
        expected: u64,
        got: u64,
    },
    #[error(
        "{key}: the frame at offset {offset} is corrupt: {detail}; the object is damaged \
         (`tdfs verify` checks every frame)"
    )]
    CorruptFrame {
        key: ObjectKey,
        offset: u64,
        detail: String,
    },
    #[error("{key}: {len} bytes at offset {offset} reach past the end of the {size}-byte diff")]
    OutOfRange {
        key: ObjectKey,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("{key}: block offset {offset} is not a multiple of the 4096-byte page")]
    Unaligned { key: ObjectKey, offset: u64 },
    #[error(
        "{key}: offset {offset} is in no frame of the frame table (a sparse table without the \
         frame holding it; the header does not reference these bytes)"
    )]
    NotInFrameTable { key: ObjectKey, offset: u64 },
    #[error(
        "{key} at offset {offset}: no data within {timeout:?}; the store is slow or unreachable \
         (the fetch goes on; retry the read)"
    )]
    Timeout {
        key: ObjectKey,
        offset: u64,
        timeout: Duration,
    },
    #[error(
        "{key} at offset {offset}: cache file {}: {source} (check free space and permissions \
         of the cache directory)", path.display()
    )]
    Cache {
        key: ObjectKey,
        offset: u64,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    #[error(
        "{key}: the SHA-256 of the whole diff is {got}, its header says {expected}; the object \
         is damaged (nothing of it is served until the next mount)"
    )]
    ChecksumMismatch {
        key: ObjectKey,
        expected: String,
        got: String,
    },
    #[error("{key}: cannot serve this diff: {detail}")]
    BadSpec { key: ObjectKey, detail: String },
    #[error("{key} at offset {offset}: the fetch failed unexpectedly ({detail}); this is a bug")]
    Internal {
        key: ObjectKey,
        offset: u64,
        detail: String,
    },
}

/// What a Chunker serves: one diff object.
#[derive(Debug, Clone)]
pub struct DiffSpec {
    pub key: ObjectKey,
    /// Uncompressed size of the diff.
    pub size: u64,
    /// Size of the block `Chunker::block` returns (the header's block size).
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
    /// Fetch worker threads (bounds concurrent store requests).
    pub fetch_workers: usize,
    /// Limit on the bytes cached by all Chunkers sharing it
    /// (`--max-cache-size`); `None` = unbounded, and no eviction cost.
    pub cache_budget: Option<Arc<CacheBudget>>,
}

/// One block (or range) of the diff: a slice of the cache mapping. While it
/// lives, the units it covers cannot be evicted (see `CacheBudget`).
pub struct Block<'a> {
    bytes: BlockBytes<'a>,
    pinned: Option<(&'a Lru, Range<usize>)>,
}

/// Where a block's bytes are: the cache mapping, or (when the cache disk is
/// full) a copy made for this reader.
enum BlockBytes<'a> {
    Cache(&'a [u8]),
    Heap(Vec<u8>),
}

impl Deref for Block<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.bytes {
            BlockBytes::Cache(bytes) => bytes,
            BlockBytes::Heap(bytes) => bytes,
        }
    }
}

impl AsRef<[u8]> for Block<'_> {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for Block<'_> {
    fn drop(&mut self) {
        if let Some((lru, units)) = self.pinned.take() {
            lru.unpin(units);
        }
    }
}

impl std::fmt::Debug for Block<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block").field("len", &self.len()).finish()
    }
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
}

impl Chunker {
    /// A Chunker for `spec`, with a fresh cache file in `config.cache_dir`.
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
                if f.size_u > MAX_FRAME_SIZE || f.size_c > MAX_FRAME_SIZE {
                    return Err(bad(format!(
                        "frame {i} ({} bytes, {} compressed) is over the limit of \
                         {MAX_FRAME_SIZE} bytes",
                        f.size_u, f.size_c
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
        });
        if let Some(budget) = &config.cache_budget {
            budget.register(Arc::downgrade(&inner));
        }
        Ok(Chunker { inner })
    }

    /// The block at `off`: exactly `min(block_size, size - off)` bytes, or
    /// fewer in a compressed object whose (sparse) frame table has a gap
    /// inside that span: the block then ends at the gap. `off` must be
    /// page-aligned (not block-aligned: storage offsets are page-granular).
    pub fn block(&self, off: u64) -> Result<Block<'_>, ChunkerError> {
        let inner = &self.inner;
        if !off.is_multiple_of(PAGE_SIZE) {
            return Err(ChunkerError::Unaligned {
                key: inner.key,
                offset: off,
            });
        }
        if off >= inner.size {
            return Err(inner.out_of_range(off, 1));
        }
        let len = inner.block_size.min(inner.size - off);
        inner.get(off, off + len, usize::MAX, off + len)
    }

    /// Fill `buf` with the diff's bytes at `off` (any offset and length
    /// inside the diff): all of it, or an error.
    pub fn read_blocks(&self, buf: &mut [u8], off: u64) -> Result<(), ChunkerError> {
        let inner = &self.inner;
        let end = inner.end_inside(off, buf.len() as u64)?;
        let mut pos = off;
        while pos < end {
            // One unit at a time; on a miss, `get` starts the fetches of the
            // whole rest of the range so they run in parallel.
            let block = inner.get(pos, end, 1, end)?;
            let at = (pos - off) as usize;
            buf[at..at + block.len()].copy_from_slice(&block);
            pos += block.len() as u64;
        }
        Ok(())
    }

    /// The diff's bytes `[off, off + len)` as one block, fetched as needed:
    /// all of them, or a prefix ending where a compressed object's (sparse)
    /// frame table has a gap. Any offset and length inside the diff.
    pub fn read_in_place(&self, off: u64, len: u64) -> Result<Block<'_>, ChunkerError> {
        let inner = &self.inner;
        let end = inner.end_inside(off, len)?;
        if len == 0 {
            return Ok(Block {
                bytes: BlockBytes::Cache(&[]),
                pinned: None,
            });
        }
        inner.get(off, end, usize::MAX, end)
    }

    pub fn size(&self) -> u64 {
        self.inner.size
    }

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

    fn out_of_range(&self, offset: u64, len: u64) -> ChunkerError {
        ChunkerError::OutOfRange {
            key: self.key,
            offset,
            len,
            size: self.size,
        }
    }

    fn lock_sessions(&self) -> MutexGuard<'_, HashMap<usize, Arc<Session>>> {
        sync::lock(&self.sessions)
    }

    /// `[off, end)` or a prefix of it held by at most `max_units` units,
    /// waiting for fetches as needed. On a miss, the fetches of all units up
    /// to `prefetch_end` are started too.
    fn get(
        self: &Arc<Self>,
        off: u64,
        end: u64,
        max_units: usize,
        prefetch_end: u64,
    ) -> Result<Block<'_>, ChunkerError> {
        if let Some(e) = self.checksum_failed.get() {
            return Err(e.clone());
        }
        let (units, end) =
            self.layout
                .span(off, end, max_units)
                .map_err(|_| ChunkerError::NotInFrameTable {
                    key: self.key,
                    offset: off,
                })?;
        self.note_access(units.clone());
        let range = off..end;
        // Pinned from here on, misses included: a unit fetched for this
        // reader cannot be evicted before the reader has it.
        let mut block = self.pin(&units);
        if self.range_present(&range, &units) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(self.fill(block, &range, &units));
        }
        self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
        let _waiting = self.stats.time_fetch_wait();
        let deadline = Instant::now() + self.fetch_timeout;
        let timeout = || ChunkerError::Timeout {
            key: self.key,
            offset: off,
            timeout: self.fetch_timeout,
        };
        let mut prefetched = false;
        // Units a full cache disk kept out of the cache: their bytes.
        let mut uncached: Vec<(usize, Arc<[u8]>)> = Vec::new();
        loop {
            let mut waits = Vec::new();
            for u in units.clone() {
                if uncached.iter().any(|(v, _)| *v == u) {
                    continue;
                }
                let part = clamp(&range, &self.layout.unit_range(u));
                if let Some(session) = self.join_or_start(u, &part, deadline)? {
                    waits.push((u, part, session));
                }
            }
            if !prefetched {
                prefetched = true;
                self.start_fetches(end..prefetch_end, deadline);
            }
            for (u, part, session) in waits {
                match session.wait(|| self.range_present(&part, &(u..u + 1)), deadline) {
                    Waited::Ready | Waited::Ended => {}
                    Waited::Uncached(bytes) => uncached.push((u, bytes)),
                    Waited::Failed(e) => return Err(e),
                    Waited::TimedOut => return Err(timeout()),
                }
            }
            if uncached.is_empty() && self.range_present(&range, &units) {
                block = self.fill(block, &range, &units);
                return Ok(block);
            }
            let covered = units.clone().all(|u| {
                uncached.iter().any(|(v, _)| *v == u)
                    || self.range_present(&clamp(&range, &self.layout.unit_range(u)), &(u..u + 1))
            });
            if covered {
                return Ok(self.assemble(block, &range, &units, &uncached));
            }
            if Instant::now() >= deadline {
                return Err(timeout());
            }
        }
    }

    /// An empty block holding the eviction pins of `units` (none without a
    /// budget). Waits out an eviction in progress on one of them, which is
    /// short (it runs under the session lock, no I/O but a hole punch).
    fn pin(&self, units: &Range<usize>) -> Block<'_> {
        let mut block = Block {
            bytes: BlockBytes::Cache(&[]),
            pinned: None,
        };
        if let Some(lru) = &self.lru {
            while !lru.pin(units.clone()) {
                std::thread::yield_now();
            }
            block.pinned = Some((lru, units.clone()));
        }
        block
    }

    /// Point a pinned block at `range`, which is present.
    fn fill<'a>(
        &'a self,
        mut block: Block<'a>,
        range: &Range<u64>,
        units: &Range<usize>,
    ) -> Block<'a> {
        if let Some(lru) = &self.lru {
            lru.touch(units.clone());
        }
        // SAFETY: the range is inside the file and present: its bytes are
        // complete and nothing writes them while they are present; the pin
        // keeps the evictor away while the block lives.
        block.bytes =
            BlockBytes::Cache(unsafe { self.cache.slice(range.start, range.end - range.start) });
        block
    }

    /// A pinned block of `range` copied together from the units the cache
    /// could not keep (`uncached`) and the present rest.
    fn assemble<'a>(
        &'a self,
        mut block: Block<'a>,
        range: &Range<u64>,
        units: &Range<usize>,
        uncached: &[(usize, Arc<[u8]>)],
    ) -> Block<'a> {
        let mut bytes = Vec::with_capacity((range.end - range.start) as usize);
        for u in units.clone() {
            let unit = self.layout.unit_range(u);
            let part = clamp(range, &unit);
            match uncached.iter().find(|(v, _)| *v == u) {
                Some((_, data)) => bytes.extend_from_slice(
                    &data[(part.start - unit.start) as usize..(part.end - unit.start) as usize],
                ),
                // SAFETY: present (checked by the caller) and pinned.
                None => bytes.extend_from_slice(unsafe {
                    self.cache.slice(part.start, part.end - part.start)
                }),
            }
        }
        block.bytes = BlockBytes::Heap(bytes);
        block
    }

    fn range_present(&self, range: &Range<u64>, units: &Range<usize>) -> bool {
        self.present.all_set(self.layout.bits_of(range, units))
    }

    fn unit_complete(&self, u: usize) -> bool {
        self.range_present(&self.layout.unit_range(u), &(u..u + 1))
    }

    /// Bytes of unit `u` present in the cache.
    fn unit_cached_bytes(&self, u: usize) -> u64 {
        let range = self.layout.unit_range(u);
        match self.layout {
            Layout::Frames { .. } => {
                if self.present.all_set(u..u + 1) {
                    range.end - range.start
                } else {
                    0
                }
            }
            Layout::Chunks { .. } => {
                let pages = self.layout.bits_of(&range, &(u..u + 1));
                let last = pages.end - 1;
                let count = self.present.count(pages) as u64;
                // The object's last page may be partial.
                let tail_gap = (last as u64 + 1) * PAGE_SIZE - range.end;
                count * PAGE_SIZE
                    - if self.present.all_set(last..last + 1) {
                        tail_gap
                    } else {
                        0
                    }
            }
        }
    }

    /// The session to wait on for `part` of unit `u`: the running one, or a
    /// new one queued on the pool; `None` when `part` is already present.
    fn join_or_start(
        self: &Arc<Self>,
        u: usize,
        part: &Range<u64>,
        deadline: Instant,
    ) -> Result<Option<Arc<Session>>, ChunkerError> {
        let mut sessions = self.lock_sessions();
        if let Some(s) = sessions.get(&u) {
            return Ok(Some(Arc::clone(s)));
        }
        // Checked under the lock: a fetch ends (removes its session) only
        // after publishing its bits.
        if self.range_present(part, &(u..u + 1)) {
            return Ok(None);
        }
        let session = Arc::new(Session::new());
        sessions.insert(u, Arc::clone(&session));
        drop(sessions);
        if self.pool.submit(self.job(u, &session), deadline).is_err() {
            let offset = self.layout.unit_range(u).start;
            let err = ChunkerError::Timeout {
                key: self.key,
                offset,
                timeout: self.fetch_timeout,
            };
            self.end_session(u, &session, Err(err.clone()));
            return Err(err);
        }
        Ok(Some(session))
    }

    /// Start fetches of the missing units of `range` (best effort: errors
    /// surface when the range itself is read).
    fn start_fetches(self: &Arc<Self>, range: Range<u64>, deadline: Instant) {
        let mut pos = range.start;
        while pos < range.end {
            let Ok((units, end)) = self.layout.span(pos, range.end, 1) else {
                return;
            };
            if self
                .join_or_start(units.start, &(pos..end), deadline)
                .is_err()
            {
                return;
            }
            pos = end;
        }
    }

    /// Note a lookup of `units` and queue the read-ahead it calls for.
    fn note_access(self: &Arc<Self>, units: Range<usize>) {
        if self.cache_full.load(Ordering::Relaxed) {
            return;
        }
        let Some(plan) = self.readahead.on_access(units) else {
            return;
        };
        let mut reached = plan.end;
        let mut sessions = None;
        for v in plan.clone() {
            if self.unit_complete(v) {
                continue;
            }
            if !self.pool.has_spare_room() {
                reached = v;
                break;
            }
            let sessions = sessions.get_or_insert_with(|| self.lock_sessions());
            if sessions.contains_key(&v) || self.unit_complete(v) {
                continue;
            }
            let session = Arc::new(Session::new());
            // Queued while holding the session lock, so the job cannot end
            // its session before it is in the map.
            if self.pool.try_submit(self.job(v, &session)).is_err() {
                reached = v;
                break;
            }
            sessions.insert(v, session);
            self.stats.readahead_fetches.fetch_add(1, Ordering::Relaxed);
        }
        drop(sessions);
        self.readahead.queued(&plan, reached);
    }

    fn job(self: &Arc<Self>, u: usize, session: &Arc<Session>) -> pool::Job {
        let inner = Arc::clone(self);
        let session = Arc::clone(session);
        Box::new(move || inner.run_fetch(u, &session))
    }

    /// Body of a fetch job: fetch, then end the session whatever happened.
    fn run_fetch(&self, u: usize, session: &Arc<Session>) {
        let result = if self.closed.load(Ordering::Relaxed) {
            Ok(Fetched::Cached)
        } else {
            catch_unwind(AssertUnwindSafe(|| self.fetch_unit(u, session))).unwrap_or_else(|panic| {
                let detail = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".to_string());
                Err(ChunkerError::Internal {
                    key: self.key,
                    offset: self.layout.unit_range(u).start,
                    detail,
                })
            })
        };
        if let Err(e) = &result {
            self.stats.fetch_errors.fetch_add(1, Ordering::Relaxed);
            log::warn!("{e}");
        }
        let cached = matches!(result, Ok(Fetched::Cached));
        self.end_session(u, session, result);
        if let Some(lru) = &self.lru {
            if cached {
                lru.fetched(u);
            }
            lru.budget.enforce();
        }
        if cached && self.cached.load(Ordering::Relaxed) == self.size {
            self.check_whole_diff();
        }
    }

    /// Hash the whole diff, once, when it is all present and a checksum is
    /// known. On a mismatch the diff is failed for good: its cached bytes
    /// are never served again.
    fn check_whole_diff(&self) {
        let Some(expected) = self.expected_sha256.get() else {
            return;
        };
        if self.checksum_checked.swap(true, Ordering::AcqRel) {
            return;
        }
        let all = 0..self.layout.units();
        let pins = self.pin(&all);
        if !self.range_present(&(0..self.size), &all) {
            // Evicted meanwhile: check on a later completion.
            self.checksum_checked.store(false, Ordering::Release);
            return;
        }
        // SAFETY: all present (checked above) and pinned against eviction.
        let got: [u8; 32] = Sha256::digest(unsafe { self.cache.slice(0, self.size) }).into();
        drop(pins);
        if got == *expected {
            log::debug!("{}: whole diff matches its SHA-256", self.key);
            return;
        }
        let err = ChunkerError::ChecksumMismatch {
            key: self.key,
            expected: hex(expected),
            got: hex(&got),
        };
        log::error!("{err}");
        let _ = self.checksum_failed.set(err);
    }

    /// Remove the session from the map (so the next read starts afresh),
    /// then wake its waiters with the result.
    fn end_session(&self, u: usize, session: &Arc<Session>, result: Result<Fetched, ChunkerError>) {
        {
            let mut sessions = self.lock_sessions();
            if sessions.get(&u).is_some_and(|s| Arc::ptr_eq(s, session)) {
                sessions.remove(&u);
            }
        }
        session.finish(result);
    }

    /// Fetch unit `u` into the cache; when the cache disk is full, into a
    /// buffer for the session's waiters instead.
    fn fetch_unit(&self, u: usize, session: &Session) -> Result<Fetched, ChunkerError> {
        let result = match self.layout {
            Layout::Chunks { .. } => self.fetch_chunk(u, session),
            Layout::Frames { .. } => self.fetch_frame(u),
        };
        match result {
            Ok(()) => Ok(Fetched::Cached),
            Err(ChunkerError::Cache { source, .. }) if is_disk_full(&source) => {
                if !self.cache_full.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "{}: no space left for cache file {}; serving from the store without \
                         caching (free space in the cache directory or set --max-cache-size)",
                        self.key,
                        self.cache.path().display()
                    );
                }
                self.fetch_uncached(u).map(Fetched::Uncached)
            }
            Err(e) => Err(e),
        }
    }

    /// Unit `u` whole, fetched (and decoded) into memory: at most
    /// `CHUNK_SIZE` or `MAX_FRAME_SIZE` bytes.
    fn fetch_uncached(&self, u: usize) -> Result<Arc<[u8]>, ChunkerError> {
        let range = self.layout.unit_range(u);
        self.stats.store_requests.fetch_add(1, Ordering::Relaxed);
        match self.layout {
            Layout::Chunks { .. } => {
                let data = self
                    .store
                    .read_exact_range(&self.key, range.start, range.end - range.start)
                    .map_err(|e| self.store_error(range.start, e))?;
                self.stats
                    .store_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                Ok(data.into())
            }
            Layout::Frames { .. } => {
                let frame = *self.layout.frame(u).expect("frame units are frame indices");
                let src = self
                    .store
                    .read_exact_range(&self.key, frame.start_c, u64::from(frame.size_c))
                    .map_err(|e| self.store_error(range.start, e))?;
                self.stats
                    .store_bytes
                    .fetch_add(src.len() as u64, Ordering::Relaxed);
                let mut data = vec![0u8; frame.size_u as usize];
                self.decode(u, &frame, &src, &mut data)?;
                Ok(data.into())
            }
        }
    }

    /// Decode frame `u` (`frame`) from `src` into `dst`.
    fn decode(
        &self,
        u: usize,
        frame: &Frame,
        src: &[u8],
        dst: &mut [u8],
    ) -> Result<(), ChunkerError> {
        decode::decode_frame(self.compression, src, dst).map_err(|detail| {
            ChunkerError::CorruptFrame {
                key: self.key,
                offset: frame.start_u,
                detail: format!(
                    "frame {u} (compressed bytes {}..{}): {detail}",
                    frame.start_c,
                    frame.end_c()
                ),
            }
        })
    }

    fn store_error(&self, offset: u64, e: StoreError) -> ChunkerError {
        match e {
            StoreError::ShortRead { expected, got, .. } => ChunkerError::ShortRead {
                key: self.key,
                offset,
                expected,
                got,
            },
            e => ChunkerError::Store {
                key: self.key,
                offset,
                source: Arc::new(e),
            },
        }
    }

    fn cache_error(&self, offset: u64, e: io::Error) -> ChunkerError {
        ChunkerError::Cache {
            key: self.key,
            offset,
            path: self.cache.path().to_path_buf(),
            source: Arc::new(e),
        }
    }

    /// Once the cache disk was found full, reserve a unit's space before
    /// fetching it, so a disk still full costs a failed `fallocate` rather
    /// than a wasted fetch. Otherwise a full disk shows as the write's
    /// ENOSPC: reserving every unit up front would take the file's lock
    /// against the concurrent writes of other units.
    fn reserve_if_full(&self, range: Range<u64>) -> Result<(), ChunkerError> {
        if !self.cache_full.load(Ordering::Relaxed) {
            return Ok(());
        }
        let start = range.start;
        self.cache
            .allocate(range)
            .map_err(|e| self.cache_error(start, e))
    }

    /// Account `bytes` newly present.
    fn placed(&self, bytes: u64) {
        self.cached.fetch_add(bytes, Ordering::Relaxed);
        self.stats.cached_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.stats.cache_size.inc_by(bytes);
        if let Some(lru) = &self.lru {
            lru.budget.charge(bytes);
        }
    }

    /// Stream chunk `u` from its first missing page to its end into the
    /// cache file, publishing pages as they complete. Present pages of a chunk
    /// always form a prefix (fetches fill forward, eviction clears whole
    /// chunks), so a retry after a failure resumes where the last one stopped.
    fn fetch_chunk(&self, u: usize, session: &Session) -> Result<(), ChunkerError> {
        let range = self.layout.unit_range(u);
        let pages = self.layout.bits_of(&range, &(u..u + 1));
        let Some(first_missing) = self.present.first_clear(pages.clone()) else {
            return Ok(());
        };
        let from = first_missing as u64 * PAGE_SIZE;
        let len = range.end - from;
        self.reserve_if_full(from..range.end)?;
        self.stats.store_requests.fetch_add(1, Ordering::Relaxed);
        let mut stream = self
            .store
            .read_range(&self.key, from, len)
            .map_err(|e| self.store_error(from, e))?;
        let mut done = 0u64;
        let mut published = first_missing;
        while done < len {
            let piece = (len - done).min(STREAM_PIECE as u64) as usize;
            // Read into a warm buffer and pwrite it (see `CacheFile::write_at`).
            let (got, error) = with_fetch_buf(piece, |buf| {
                let (got, error) = read_full(&mut stream, buf);
                // Pages from `first_missing` on are not present, and this
                // session is the unit's only writer.
                match self.cache.write_at(from + done, &buf[..got]) {
                    Ok(()) => (
                        got,
                        error.map(|e| {
                            self.store_error(from + done + got as u64, StoreError::io(&self.key, e))
                        }),
                    ),
                    Err(e) => (0, Some(self.cache_error(from + done, e))),
                }
            });
            done += got as u64;
            self.stats
                .store_bytes
                .fetch_add(got as u64, Ordering::Relaxed);
            // Publish the pages now complete (the object's last page counts
            // once the object's end is reached).
            let upto = if from + done == self.size {
                pages.end
            } else {
                ((from + done) / PAGE_SIZE) as usize
            };
            if upto > published {
                self.present.set(published..upto);
                self.placed(
                    (upto as u64 * PAGE_SIZE).min(self.size) - published as u64 * PAGE_SIZE,
                );
                published = upto;
                session.progress();
            }
            if let Some(e) = error {
                return Err(e);
            }
            if got < piece {
                return Err(ChunkerError::ShortRead {
                    key: self.key,
                    offset: from,
                    expected: len,
                    got: done,
                });
            }
        }
        Ok(())
    }

    /// Fetch frame `u` whole, decode and verify it, write it to its place,
    /// publish.
    fn fetch_frame(&self, u: usize) -> Result<(), ChunkerError> {
        let frame = *self.layout.frame(u).expect("frame units are frame indices");
        let range = frame.range_u();
        self.reserve_if_full(range.clone())?;
        self.stats.store_requests.fetch_add(1, Ordering::Relaxed);
        let decoded = with_fetch_buf(frame.size_c as usize, |src| {
            self.store
                .read_exact_into(&self.key, frame.start_c, src)
                .map_err(|e| self.store_error(range.start, e))?;
            self.stats
                .store_bytes
                .fetch_add(src.len() as u64, Ordering::Relaxed);
            let mut decoded = self.pool.scratch.take(frame.size_u as usize);
            self.decode(u, &frame, src, &mut decoded)?;
            Ok(decoded)
        })?;
        // Not present yet, and this session is the frame's only writer.
        self.cache
            .write_at(range.start, &decoded)
            .map_err(|e| self.cache_error(range.start, e))?;
        drop(decoded);
        self.present.set(u..u + 1);
        self.placed(u64::from(frame.size_u));
        Ok(())
    }
}

/// Read until `buf` is full, the stream ends, or an error; returns the bytes
/// read and the error, if any.
fn read_full(stream: &mut dyn Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut n = 0;
    while n < buf.len() {
        match stream.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (n, Some(e)),
        }
    }
    (n, None)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// True when a cache write failed for want of space (disk or quota).
fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

fn clamp(range: &Range<u64>, to: &Range<u64>) -> Range<u64> {
    range.start.max(to.start)..range.end.min(to.end)
}
