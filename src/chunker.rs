//! The Chunker: one per (build, file) diff object. Serves page-aligned blocks
//! of the uncompressed diff from a sparse mmap'ed cache file, fetching 4 MiB
//! chunks (uncompressed objects) or single frames (compressed objects) from
//! the store on first use: single-flight, on a bounded pool, verified before
//! anything is marked present.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::format::{FrameTable, ObjectKey};
use crate::metrics::Stats;
use crate::store::{Store, StoreError};

/// Fetch unit of uncompressed objects (E2B's MemoryChunkSize).
pub const CHUNK_SIZE: u64 = 4 << 20;

/// Why a block could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ChunkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
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
    /// Upper bound on one fetch, waiters included.
    pub fetch_timeout: Duration,
    /// Chunks/frames fetched ahead of a sequential reader (0 = off).
    pub readahead: usize,
    /// Fetch worker threads (bounds concurrent store requests).
    pub fetch_workers: usize,
}

/// A Chunker. See the module docs.
pub struct Chunker {
    _store: Arc<dyn Store>,
    _stats: Arc<Stats>,
}
