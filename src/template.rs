//! A build's files as the user sees them: a header plus the diffs it
//! references. `Builds` loads headers lazily and shares one Chunker per
//! (build, file) across every template that references it;
//! `TemplateFile::read_at` walks a range block by block.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::chunker::ChunkerError;
use crate::format::{Compression, FileKind, FormatError, Header};
use crate::metrics::Stats;
use crate::store::{Store, StoreError};

/// Why a template file could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("build {build} has no {file}")]
    NotFound { build: Uuid, file: FileKind },
    #[error("header {key} is corrupt: {source}")]
    CorruptHeader {
        key: String,
        #[source]
        source: FormatError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Chunker(#[from] ChunkerError),
}

/// Settings of the read path.
#[derive(Debug, Clone)]
pub struct TemplateConfig {
    pub cache_dir: PathBuf,
    /// Bound on the bytes held in cache files (0 = unbounded).
    pub max_cache_size: u64,
    pub fetch_timeout: Duration,
    pub readahead: usize,
    pub fetch_workers: usize,
}

/// All builds of a store, with lazily loaded headers and shared Chunkers.
pub struct Builds {
    _store: Arc<dyn Store>,
    _stats: Arc<Stats>,
}

impl Builds {
    pub fn new(
        store: Arc<dyn Store>,
        config: TemplateConfig,
    ) -> Result<Arc<Builds>, TemplateError> {
        todo!("{store:?} {config:?}")
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self._store
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self._stats
    }

    /// Build ids in the store.
    pub fn list(&self) -> Result<Vec<Uuid>, TemplateError> {
        todo!()
    }

    /// The template file `file` of `build`: NotFound when the build or file
    /// is missing, CorruptHeader when its header cannot be decoded.
    pub fn open(&self, build: Uuid, file: FileKind) -> Result<Arc<TemplateFile>, TemplateError> {
        todo!("{build} {file}")
    }
}

/// One build's `memfile` or `rootfs.ext4`, resolved through its header.
pub struct TemplateFile {
    header: Arc<Header>,
}

impl TemplateFile {
    pub fn build_id(&self) -> Uuid {
        self.header.metadata.build_id
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Logical size (the header's size).
    pub fn size(&self) -> u64 {
        self.header.metadata.size
    }

    pub fn block_size(&self) -> u64 {
        self.header.metadata.block_size
    }

    /// Compression of this build's own diff.
    pub fn compression(&self) -> Compression {
        todo!()
    }

    /// Read into `buf` from `off`: fills all of `buf` unless the file ends
    /// first (returns the count, 0 at or past the end).
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> Result<usize, TemplateError> {
        todo!("{} {off}", buf.len())
    }

    /// Bytes of this build's own diff held in the local cache.
    pub fn cached_bytes(&self) -> u64 {
        todo!()
    }
}
