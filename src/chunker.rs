//! The Chunker: one per (build, file) diff object. Serves ranges of the
//! uncompressed diff from a sparse mmap'ed cache file, fetching 4 MiB chunks
//! (uncompressed objects) or single frames (compressed objects) from the
//! store on first use: single-flight, on a bounded pool, verified before
//! anything is marked present.
//!
//! - Hit path: pin (only under a cache budget), test the present bits with
//!   Acquire, then copy the range out with `pread` (`read_blocks`) or
//!   populate its pages and hand out a slice of the mapping
//!   (`read_in_place`). No lock, no allocation.
//! - Miss path: join the fetch session of each missing unit, or start one on
//!   the shared `FetchPool`; wait (at most `fetch_timeout`) until the range
//!   is present. A chunk streams into the cache file and its pages become
//!   readable as they arrive; a frame is decoded into a scratch buffer (one
//!   per core), written to its place and becomes readable once whole and
//!   verified. Both are written with `pwrite`, never through the mapping:
//!   see `CacheFile::write_at`.
//! - A failed fetch marks nothing new present; every waiter gets the error and
//!   the next read starts a new session.
//! - Prefetch fetches runs: wanted units next to each other in the object
//!   with one ranged store request (at most `MAX_RUN_BYTES`), each unit
//!   with its own session, decoded, checked and published on its own; a
//!   reader's fetch and read-ahead fetch one unit each.
//! - Read-ahead: the Chunker does not watch its readers; a reader's own
//!   read-ahead state (`template::ReadAhead`, one per open file) asks it to
//!   fetch the units of a range (`read_ahead`). Units present or in flight
//!   are skipped, so readers sharing the diff fetch each unit once, and
//!   read-ahead only takes the pool's spare room, never a reader's.
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
//! - A damaged cache file (truncated, or its disk failing) never kills the
//!   daemon and serves nothing wrong: user space never reads the mapping
//!   where bytes may be gone, and units found unreadable are dropped and
//!   fetched again (see `damage`).
//! - `read_in_place` returns a `Block` guard rather than a bare slice: under
//!   a `CacheBudget` it pins its units against eviction while it lives (see
//!   `budget`); without a budget it is just the slice.
//!
//! This file holds the `Chunker`, its settings and its public API; the parts
//! of its work are in `chunker/`: `lookup` (hit path and wait loop), `queue`
//! (starting fetch sessions, read-ahead included), `fetch` (the fetch job:
//! store read, decode, placing bytes in the cache), `peer_source` (a unit
//! from the peer owning it, before the store), `full_disk` (the
//! fallback when the cache disk is full), `damage` (a cache file that lost
//! bytes), `verify` (the whole-diff SHA-256), `block` (the `Block` guard),
//! `prefetch` (fetches of a recorded working set, below readers and
//! read-ahead), `run` (a prefetch's units adjacent in the object fetched
//! with one ranged request, still verified unit by unit), `error`, and below them `layout`, `cache`, `session`,
//! `pool`, `scratch`, `budget`. Frames are decoded by `crate::codec`.

mod block;
mod budget;
mod cache;
mod damage;
mod error;
mod fetch;
mod full_disk;
mod layout;
mod lookup;
mod peer_source;
mod pool;
mod prefetch;
mod queue;
mod run;
mod scratch;
mod session;
mod verify;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

pub use block::Block;
pub use budget::CacheBudget;
pub use error::ChunkerError;
pub use peer_source::{PeerFallback, PeerSource};
pub use pool::FetchPool;
pub use prefetch::{PrefetchRun, PrefetchStart};
pub use run::MAX_RUN_BYTES;

use crate::format::limits::MAX_DIFF_SIZE;
use crate::format::{Compression, FrameTable, ObjectKey};
use crate::metrics::Stats;
use crate::store::Store;
use budget::Lru;
use cache::{CacheFile, PresentBits};
use damage::Damage;
use full_disk::FullDisk;
use layout::Layout;
use prefetch::PrefetchState;
use queue::Sessions;
use session::Route;
use verify::Integrity;

/// Fetch unit of uncompressed objects (E2B's MemoryChunkSize).
pub const CHUNK_SIZE: u64 = 4 << 20;

/// What a Chunker serves: one diff object.
#[derive(Debug, Clone)]
pub struct DiffSpec {
    pub key: ObjectKey,
    /// Uncompressed size of the diff.
    pub size: u64,
    /// Empty (uncompressed) or the frames of the compressed object.
    pub frames: FrameTable,
}

/// Settings shared by all Chunkers of a mount.
#[derive(Debug, Clone)]
pub struct ChunkerConfig {
    /// The mount's cache directory (the glossary's meaning): the mount's
    /// own private directory, `mount-<uuid>` under `--cache-dir` (made by
    /// `template`; 0700 when the Chunker has to make it), where each
    /// Chunker creates its cache file (0600). Not `--cache-dir` itself.
    pub cache_dir: PathBuf,
    /// How long a reader waits for a fetch before it gets a timeout error
    /// (the fetch itself goes on for other readers; the store bounds its own
    /// requests).
    pub fetch_timeout: Duration,
    /// Limit on the bytes cached by all Chunkers sharing it
    /// (`--max-cache-size`); `None` = unbounded, and no eviction cost.
    pub cache_budget: Option<Arc<CacheBudget>>,
    /// Peers asked for a unit before the store (`--peer`); `None` = the
    /// store only.
    pub peers: Option<Arc<dyn PeerSource>>,
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
///
/// The first fields are the diff, its cache file and what the Chunker
/// reads with, fixed by `new` (but for the cache's contents). The last are
/// the state of one part of the work each, defined in and changed only by
/// that part's file, where its invariants are written down.
struct Inner {
    key: ObjectKey,
    size: u64,
    compression: Compression,
    layout: Layout,
    /// The largest unit of the diff, in bytes.
    unit_size: u64,
    cache: CacheFile,
    /// Which bits of the cache file hold verified bytes: set by a fetch
    /// when it publishes (`fetch`), cleared only by `clear_present`
    /// (`damage`, which says how readers tell a clear from a hit).
    present: PresentBits,
    /// Bytes present in the cache file.
    cached: AtomicU64,
    store: Arc<dyn Store>,
    /// Asked for a unit before `store` (see `peer_source`).
    peers: Option<Arc<dyn PeerSource>>,
    pool: Arc<FetchPool>,
    stats: Arc<Stats>,
    fetch_timeout: Duration,
    /// Set when the Chunker is dropped: queued fetches are skipped.
    closed: AtomicBool,
    /// The fetch in flight per unit (`queue`).
    sessions: Sessions,
    /// Pins and last uses under a cache budget (`budget`).
    lru: Option<Lru>,
    /// The cache disk was found full (`full_disk`).
    full_disk: FullDisk,
    /// The whole-diff SHA-256 check (`verify`).
    integrity: Integrity,
    /// The discard epoch and the damage warning (`damage`).
    damage: Damage,
    /// Units prefetch brought in, prefetch fetches in flight (`prefetch`).
    prefetch: PrefetchState,
}

impl Chunker {
    /// A Chunker for `spec`, with a fresh cache file in `config.cache_dir`.
    ///
    /// # Errors
    /// `BadSpec` when the diff is over `MAX_DIFF_SIZE`, or a frame ends past the diff (`FrameTable` already
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
        let inner = Arc::new(Inner {
            key,
            size: spec.size,
            compression: spec.frames.compression(),
            present: PresentBits::new(layout.bits()),
            layout,
            unit_size: largest_unit,
            cache,
            cached: AtomicU64::new(0),
            store,
            peers: config.peers.clone(),
            pool,
            stats,
            fetch_timeout: config.fetch_timeout,
            closed: AtomicBool::new(false),
            sessions: Sessions::default(),
            lru: config
                .cache_budget
                .as_ref()
                .map(|b| Lru::new(Arc::clone(b), units)),
            full_disk: FullDisk::default(),
            integrity: Integrity::default(),
            damage: Damage::default(),
            prefetch: PrefetchState::default(),
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
    /// `fetch_timeout`; `ChecksumMismatch` once the whole-diff check failed;
    /// `Cache` when the cached bytes could not be read back even after the
    /// damaged units were dropped and fetched again (the next read retries).
    pub fn read_blocks(&self, buf: &mut [u8], off: u64) -> Result<(), ChunkerError> {
        let inner = &self.inner;
        inner.end_inside(off, buf.len() as u64)?;
        inner.copy_out(buf, off, Route::PeerThenStore)
    }

    /// `read_blocks` to answer a peer: the fetches it starts or joins read
    /// the store only, never a peer (the peer asked because its list says
    /// this host owns the units; asking back could loop between two hosts
    /// whose lists disagree). Still single-flight with this mount's readers.
    ///
    /// # Errors
    /// As `read_blocks`, and `AskingPeer` when a fetch of these bytes is
    /// asking a peer right now (the caller should read its own store).
    pub fn read_for_peer(&self, buf: &mut [u8], off: u64) -> Result<(), ChunkerError> {
        let inner = &self.inner;
        inner.end_inside(off, buf.len() as u64)?;
        inner.copy_out(buf, off, Route::StoreOnly)
    }

    /// The diff's bytes `[off, off + len)` as one block, fetched as needed:
    /// all of them, or a prefix ending where a compressed object's (sparse)
    /// frame table has a gap. Any offset and length inside the diff.
    ///
    /// # Errors
    /// `OutOfRange` when the range reaches past the diff; `NotInFrameTable`
    /// when no frame holds `off`; a fetch's `Store`, `ShortRead`,
    /// `CorruptFrame`, `Cache` or `Internal`; `Timeout` after
    /// `fetch_timeout`; `ChecksumMismatch` once the whole-diff check failed;
    /// `Cache` when the cached bytes could not be read back even after the
    /// damaged units were dropped and fetched again (the next read retries).
    pub fn read_in_place(&self, off: u64, len: u64) -> Result<Block<'_>, ChunkerError> {
        let inner = &self.inner;
        let end = inner.end_inside(off, len)?;
        if len == 0 {
            return Ok(Block::empty());
        }
        inner.get_in_place(off..end)
    }

    /// Queue fetches of the units holding the diff's bytes `range` (clipped
    /// to the diff) that are neither present nor in flight, as far as the
    /// fetch pool has spare room: read-ahead never delays a reader's fetch.
    /// Returns the offset up to which everything is present, in flight or
    /// queued: `range.end` unless the pool ran out of room. Nothing is
    /// queued once the cache disk was found full (it could not keep what it
    /// fetches). Errors of the fetches surface when the bytes are read.
    pub fn read_ahead(&self, range: Range<u64>) -> u64 {
        let inner = &self.inner;
        let end = range.end.min(inner.size);
        if range.start >= end || inner.full_disk.seen() {
            return range.end;
        }
        match inner.queue_read_ahead(inner.layout.units_within(range.start..end)) {
            None => range.end,
            Some(u) => inner.layout.unit_range(u).start.max(range.start),
        }
    }

    /// The largest fetch unit (chunk or frame) of the diff, in bytes: what
    /// one read-ahead step of a template file stands for.
    pub fn unit_size(&self) -> u64 {
        self.inner.unit_size
    }

    /// Uncompressed size of the diff, in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size
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
        self.inner.integrity.expect(sha256);
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
        // The cache file goes with the Chunker: its bytes leave the cache.
        let cached = self.cached.load(Ordering::Relaxed);
        self.stats.cache_size.dec_by(cached);
        if let Some(lru) = &self.lru {
            lru.budget.release(cached);
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
}
