//! The Chunker's error type, and how a store or cache-file failure becomes
//! one (naming the object and the offset it concerns).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Inner;
use crate::format::ObjectKey;
use crate::store::StoreError;

/// Why a read could not be served. Every variant names the object and the
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
    #[error(
        "{key} at offset {offset}: this host is itself asking a peer for these bytes, so it \
         cannot answer a peer for them (the hosts' peer lists disagree while a peers file rolls \
         out); read them from the store"
    )]
    AskingPeer { key: ObjectKey, offset: u64 },
    #[error("{key}: cannot serve this diff: {detail}")]
    BadSpec { key: ObjectKey, detail: String },
    #[error("{key} at offset {offset}: the fetch failed unexpectedly ({detail}); this is a bug")]
    Internal {
        key: ObjectKey,
        offset: u64,
        detail: String,
    },
}

impl Inner {
    pub(super) fn out_of_range(&self, offset: u64, len: u64) -> ChunkerError {
        ChunkerError::OutOfRange {
            key: self.key,
            offset,
            len,
            size: self.size,
        }
    }

    /// A failed store read of the bytes at `offset` (uncompressed, in the
    /// diff).
    pub(super) fn store_error(&self, offset: u64, e: StoreError) -> ChunkerError {
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

    /// A failed write (or space reservation) of the cache file at `offset`.
    pub(super) fn cache_error(&self, offset: u64, e: io::Error) -> ChunkerError {
        ChunkerError::Cache {
            key: self.key,
            offset,
            path: self.cache.path().to_path_buf(),
            source: Arc::new(e),
        }
    }
}
