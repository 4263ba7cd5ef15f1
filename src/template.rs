//! A build's files as the user sees them: a header plus the diffs it
//! references. `Builds` loads headers lazily and shares one Chunker per
//! (build, file) across every template that references it;
//! `TemplateFile::read_at` walks a range mapping by mapping, block by block;
//! `TemplateFile::read_in_place` hands out a range that lies in one mapping
//! without copying it (a slice of the cache, or of a static zero page run).

mod cache_dir;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::chunker::{
    Block, CacheBudget, Chunker, ChunkerConfig, ChunkerError, DiffSpec, FetchPool,
};
use crate::format::limits::MAX_HEADER_LEN;
use crate::format::{
    Compression, FileKind, FormatError, Frame, FrameTable, Header, Mapping, Mappings, Metadata,
    ObjectKey, ObjectName, PAGE_SIZE,
};
use crate::metrics::Stats;
use crate::store::{MeteredStore, Store, StoreError};
use crate::sync;

pub use cache_dir::CacheDir;

/// Zeros for holes served in place: as long as the largest FUSE read. Never
/// written, so every page of it is the kernel's one shared zero page.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// Bytes of a template file served without a copy: see
/// `TemplateFile::read_in_place`.
pub enum FileBytes<'a> {
    /// A hole (a mapping to no build).
    Zeros(usize),
    /// Bytes in a diff's cache (pinned while this lives).
    Cached(Block<'a>),
}

impl std::ops::Deref for FileBytes<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Zeros(n) => &ZEROS[..*n],
            FileBytes::Cached(block) => block,
        }
    }
}

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
    #[error("{key}: {detail}")]
    Inconsistent { key: String, detail: String },
    #[error("cache directory {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Chunker(#[from] ChunkerError),
}

/// Settings of the read path.
#[derive(Debug, Clone)]
pub struct TemplateConfig {
    /// Parent directory of this instance's cache files.
    pub cache_dir: PathBuf,
    /// Bound on the bytes held in cache files (0 = unbounded).
    pub max_cache_size: u64,
    pub fetch_timeout: Duration,
    /// Fetch units read ahead of a sequential reader.
    pub readahead: usize,
    pub fetch_workers: usize,
    /// Check each diff against the SHA-256 its header records (V4/V5, when
    /// not zero) once all of it is cached; a mismatch fails its reads.
    pub verify_checksums: bool,
}

impl TemplateConfig {
    /// Defaults for a one-shot tool (export, pack against a base).
    pub fn for_tool(cache_dir: PathBuf) -> Self {
        TemplateConfig {
            cache_dir,
            max_cache_size: 0,
            fetch_timeout: Duration::from_secs(60),
            readahead: 4,
            fetch_workers: std::thread::available_parallelism().map_or(4, |n| n.get() * 2),
            verify_checksums: false,
        }
    }
}

type FileId = (Uuid, FileKind);

/// All builds of a store, with lazily loaded headers and shared Chunkers.
pub struct Builds {
    store: Arc<dyn Store>,
    stats: Arc<Stats>,
    pool: Arc<FetchPool>,
    chunker_config: ChunkerConfig,
    verify_checksums: bool,
    headers: Mutex<HashMap<FileId, Arc<Header>>>,
    diffs: Mutex<HashMap<FileId, Arc<Chunker>>>,
    /// Resolved template files: lookups and getattr reuse them.
    files: Mutex<HashMap<FileId, Arc<TemplateFile>>>,
    /// Last, so it is dropped after the Chunkers that delete their files in it.
    cache: CacheDir,
}

impl Builds {
    pub fn new(
        store: Arc<dyn Store>,
        config: TemplateConfig,
    ) -> Result<Arc<Builds>, TemplateError> {
        let cache = CacheDir::create(&config.cache_dir)?;
        let stats = Arc::new(Stats::default());
        stats.cache_budget.set(config.max_cache_size);
        let store: Arc<dyn Store> = Arc::new(MeteredStore::new(store, stats.clone()));
        let chunker_config = ChunkerConfig {
            cache_dir: cache.path().to_path_buf(),
            fetch_timeout: config.fetch_timeout,
            readahead: config.readahead,
            fetch_workers: config.fetch_workers,
            cache_budget: (config.max_cache_size > 0)
                .then(|| CacheBudget::new(config.max_cache_size)),
        };
        Ok(Arc::new(Builds {
            store,
            stats,
            pool: FetchPool::new(config.fetch_workers.max(1)),
            chunker_config,
            cache,
            verify_checksums: config.verify_checksums,
            headers: Mutex::new(HashMap::new()),
            diffs: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
        }))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Build ids in the store.
    pub fn list(&self) -> Result<Vec<Uuid>, TemplateError> {
        Ok(self.store.list_builds()?)
    }

    /// The template file `file` of `build`: NotFound when the build or file
    /// is missing, CorruptHeader when its header cannot be decoded.
    pub fn open(&self, build: Uuid, file: FileKind) -> Result<Arc<TemplateFile>, TemplateError> {
        if let Some(f) = sync::lock(&self.files).get(&(build, file)) {
            return Ok(f.clone());
        }
        let header = self.header(build, file)?;
        let mut diffs = Vec::new();
        for m in header.mappings.as_slice() {
            if m.is_zero() || diffs.iter().any(|(id, _)| *id == m.build_id) {
                continue;
            }
            diffs.push((m.build_id, self.diff(m.build_id, file, &header)?));
        }
        let own = match diffs.iter().find(|(id, _)| *id == build) {
            Some((_, c)) => Some(c.clone()),
            None => self.diff(build, file, &header).ok(),
        };
        let opened = Arc::new(TemplateFile {
            file,
            header,
            diffs,
            own,
            stats: self.stats.clone(),
        });
        let mut files = sync::lock(&self.files);
        Ok(files.entry((build, file)).or_insert(opened).clone())
    }

    /// The decoded header of `build`'s `file`, loaded once. A build with a
    /// data object but no header (legacy) gets one identity mapping.
    pub fn header(&self, build: Uuid, file: FileKind) -> Result<Arc<Header>, TemplateError> {
        if let Some(h) = sync::lock(&self.headers).get(&(build, file)) {
            return Ok(h.clone());
        }
        let key = ObjectKey::header(build, file);
        let header = match self.store.read_all(&key, MAX_HEADER_LEN) {
            Ok(bytes) => Header::decode(&bytes).map_err(|source| TemplateError::CorruptHeader {
                key: key.to_string(),
                source,
            })?,
            Err(StoreError::NotFound { .. }) => self.legacy_header(build, file)?,
            Err(e) => return Err(e.into()),
        };
        let header = Arc::new(header);
        let mut headers = sync::lock(&self.headers);
        Ok(headers.entry((build, file)).or_insert(header).clone())
    }

    fn legacy_header(&self, build: Uuid, file: FileKind) -> Result<Header, TemplateError> {
        let key = ObjectKey::data(build, file, Compression::None);
        let size = match self.store.size(&key) {
            Ok(size) => size,
            Err(StoreError::NotFound { .. }) => {
                return Err(TemplateError::NotFound { build, file });
            }
            Err(e) => return Err(e.into()),
        };
        let metadata = Metadata {
            version: 3,
            block_size: PAGE_SIZE,
            size,
            generation: 0,
            build_id: build,
            base_build_id: build,
        };
        let mut items = Vec::new();
        if size > 0 {
            items.push(Mapping {
                offset: 0,
                length: size.div_ceil(PAGE_SIZE) * PAGE_SIZE,
                build_id: build,
                storage_offset: 0,
            });
        }
        let mappings =
            Mappings::new(items, size).map_err(|source| TemplateError::CorruptHeader {
                key: key.to_string(),
                source,
            })?;
        Ok(Header {
            metadata,
            builds: Vec::new(),
            mappings,
        })
    }

    /// The shared Chunker of `build`'s diff of `file`, as referenced from
    /// `referrer`. The frame table comes from the build's own header when it
    /// has one (a referrer may carry a sparse table, or none at all), merged
    /// with the referrer's entry; without any table the diff is uncompressed.
    fn diff(
        &self,
        build: Uuid,
        file: FileKind,
        referrer: &Header,
    ) -> Result<Arc<Chunker>, TemplateError> {
        if let Some(c) = sync::lock(&self.diffs).get(&(build, file)) {
            return Ok(c.clone());
        }
        let own_header = if referrer.metadata.build_id == build {
            None
        } else {
            match self.header(build, file) {
                Ok(h) => Some(h),
                Err(TemplateError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            }
        };
        let entries = [Some(referrer), own_header.as_deref()]
            .into_iter()
            .flatten()
            .filter_map(|h| h.build(&build));
        let mut frames: Vec<Frame> = Vec::new();
        let mut compression = Compression::None;
        let mut file_size = 0;
        let mut sha256 = None;
        for entry in entries {
            file_size = file_size.max(entry.file_size);
            if entry.sha256 != [0; 32] {
                sha256.get_or_insert(entry.sha256);
            }
            if entry.frames.is_compressed() {
                compression = entry.frames.compression();
                frames.extend_from_slice(entry.frames.frames());
            }
        }
        frames.sort_by_key(|f| f.start_u);
        frames.dedup();
        let key = ObjectKey::data(build, file, compression);
        let table =
            FrameTable::new(compression, frames).map_err(|e| TemplateError::Inconsistent {
                key: key.to_string(),
                detail: format!("frame tables of its headers disagree: {e}"),
            })?;
        let size = if table.is_compressed() {
            let from_frames = table.frames().last().map_or(0, Frame::end_u);
            let recorded = match self.store.uncompressed_size(&key) {
                Ok(s) => s.unwrap_or(0),
                Err(StoreError::NotFound { .. }) => 0,
                Err(e) => return Err(e.into()),
            };
            from_frames.max(file_size).max(recorded)
        } else {
            match self.store.size(&key) {
                Ok(s) => s,
                Err(StoreError::NotFound { .. }) => {
                    return Err(TemplateError::Inconsistent {
                        key: key.to_string(),
                        detail: format!(
                            "referenced by the {file} header of build {} but missing from the store",
                            referrer.metadata.build_id
                        ),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        };
        let block_size = own_header
            .as_deref()
            .unwrap_or(referrer)
            .metadata
            .block_size;
        let spec = DiffSpec {
            key,
            size,
            block_size,
            frames: table,
        };
        let mut diffs = sync::lock(&self.diffs);
        if let Some(c) = diffs.get(&(build, file)) {
            return Ok(c.clone());
        }
        let chunker = Arc::new(Chunker::new(
            spec,
            self.store.clone(),
            self.pool.clone(),
            &self.chunker_config,
            self.stats.clone(),
        )?);
        if let Some(sha256) = sha256.filter(|_| self.verify_checksums) {
            chunker.verify_when_complete(sha256);
        }
        diffs.insert((build, file), chunker.clone());
        Ok(chunker)
    }

    /// Where this instance keeps its cache files.
    pub fn cache_path(&self) -> &std::path::Path {
        self.cache.path()
    }
}

/// One build's `memfile` or `rootfs.ext4`, resolved through its header.
pub struct TemplateFile {
    file: FileKind,
    header: Arc<Header>,
    /// Chunkers of every build the mappings reference (a handful at most).
    diffs: Vec<(Uuid, Arc<Chunker>)>,
    /// This build's own diff, when it has one.
    own: Option<Arc<Chunker>>,
    stats: Arc<Stats>,
}

impl TemplateFile {
    pub fn build_id(&self) -> Uuid {
        self.header.metadata.build_id
    }

    pub fn file(&self) -> FileKind {
        self.file
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
        match self.own.as_ref().map(|c| c.key().name) {
            Some(ObjectName::Data(_, compression)) => compression,
            _ => Compression::None,
        }
    }

    /// Read into `buf` from `off`: fills all of `buf` unless the file ends
    /// first (returns the count, 0 at or past the end).
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> Result<usize, TemplateError> {
        let start = Instant::now();
        let result = self.read_mappings(buf, off);
        let n = *result.as_ref().unwrap_or(&0);
        self.stats
            .record_read(self.file, n as u64, start.elapsed(), result.is_ok());
        result
    }

    /// The bytes of `[off, off + len)` (cut at the end of the file) when they
    /// lie in one mapping and, for a diff, in one stretch of its cache; the
    /// diff's missing parts are fetched first. `None` when the range spans
    /// mappings or frames that are not contiguous: use `read_at`. Lets a
    /// reader reply straight from the cache, without a copy of its own.
    pub fn read_in_place(
        &self,
        off: u64,
        len: usize,
    ) -> Result<Option<FileBytes<'_>>, TemplateError> {
        let start = Instant::now();
        let result = self.map_in_place(off, len);
        // A `None` is recorded by the `read_at` that serves it instead.
        match &result {
            Ok(None) => {}
            Ok(Some(bytes)) => {
                self.stats
                    .record_read(self.file, bytes.len() as u64, start.elapsed(), true)
            }
            Err(_) => self.stats.record_read(self.file, 0, start.elapsed(), false),
        }
        result
    }

    fn map_in_place(&self, off: u64, len: usize) -> Result<Option<FileBytes<'_>>, TemplateError> {
        let size = self.size();
        if off >= size {
            return Ok(Some(FileBytes::Zeros(0)));
        }
        let len = (len as u64).min(size - off);
        let Some(hit) = self.header.mappings.lookup(off) else {
            // read_at reports the missing mapping.
            return Ok(None);
        };
        if hit.remaining < len {
            return Ok(None);
        }
        if hit.build_id.is_nil() {
            return Ok((len as usize <= ZEROS.len()).then_some(FileBytes::Zeros(len as usize)));
        }
        let block = self
            .chunker(hit.build_id)?
            .read_in_place(hit.storage_offset, len)?;
        Ok((block.len() as u64 == len).then_some(FileBytes::Cached(block)))
    }

    fn read_mappings(&self, buf: &mut [u8], off: u64) -> Result<usize, TemplateError> {
        let size = self.size();
        if off >= size {
            return Ok(0);
        }
        let len = buf.len().min((size - off) as usize);
        let mut done = 0;
        while done < len {
            let pos = off + done as u64;
            let hit =
                self.header
                    .mappings
                    .lookup(pos)
                    .ok_or_else(|| TemplateError::Inconsistent {
                        key: ObjectKey::header(self.build_id(), self.file).to_string(),
                        detail: format!("no mapping covers offset {pos}"),
                    })?;
            let n = (len - done).min(hit.remaining.min(usize::MAX as u64) as usize);
            let out = &mut buf[done..done + n];
            if hit.build_id.is_nil() {
                out.fill(0);
            } else {
                self.chunker(hit.build_id)?
                    .read_blocks(out, hit.storage_offset)?;
            }
            done += n;
        }
        Ok(len)
    }

    fn chunker(&self, build: Uuid) -> Result<&Chunker, TemplateError> {
        self.diffs
            .iter()
            .find(|(id, _)| *id == build)
            .map(|(_, c)| c.as_ref())
            .ok_or_else(|| TemplateError::Inconsistent {
                key: ObjectKey::header(self.build_id(), self.file).to_string(),
                detail: format!("mapping references build {build} that was not resolved"),
            })
    }

    /// Bytes of this build's own diff held in the local cache.
    pub fn cached_bytes(&self) -> u64 {
        self.own.as_ref().map_or(0, |c| c.cached_bytes())
    }
}
