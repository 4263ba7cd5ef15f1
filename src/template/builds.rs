//! `Builds`: the headers and shared Chunkers of a store's builds. A header
//! is loaded once per (build, file); a diff gets one Chunker however many
//! open templates reference it, made when a template file is opened (never
//! for its attributes) and closed once idle past a limit (see
//! `LiveChunkers`). The cache directory and fetch threads are made with the
//! first diff, so a `Builds` that only reads headers (inspect, verify,
//! `stat`) leaves no trace on disk and sends no request for a data object.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use uuid::Uuid;

use super::blob;
use super::cache_dir::CacheDir;
use super::flat::{FlatFile, FlatFiles};
use super::listing::{BuildContents, Listing};
use super::live_chunkers::{FileId, LiveChunkers};
use super::origin::{self, FromOrigin};
use super::record::{Recorder, Recording};
use super::replay::Prefetcher;
use super::{DiffFile, TemplateConfig, TemplateError, TemplateFile};
use crate::chunker::{CacheBudget, Chunker, ChunkerConfig, DiffSpec, FetchPool, PeerFallback};
use crate::format::limits::MAX_HEADER_LEN;
use crate::format::{
    Blob, Compression, FileKind, Frame, FrameTable, Header, Mappings, Metadata, ObjectKey,
    PAGE_SIZE,
};
use crate::metrics::Stats;
use crate::store::{MeteredStore, Store, StoreError};
use crate::sync;

/// What only Chunkers need: made with the first diff (see the module docs).
/// Its fields drop in the order `Builds` relies on (see there).
struct Fetching {
    pool: Arc<FetchPool>,
    config: ChunkerConfig,
    cache: CacheDir,
}

/// All builds of a store, with lazily loaded headers and shared Chunkers.
///
/// Each part keeps its own state and is called through its own type:
/// `Listing` (listing.rs), `LiveChunkers` (live_chunkers.rs), `Prefetcher`
/// (replay.rs), `Recorder` (record.rs), `FlatFiles` (flat.rs), `CacheDir`
/// (cache_dir.rs); blobs are read by blob.rs and diff views made by
/// diff_view.rs. The methods here are the door every caller outside
/// `template` uses.
///
/// Drop order (fields drop as declared; this is the one place it is kept):
/// the threads of `prefetcher` and `flats` stop first, since they hold
/// template files and so Chunkers, and the flat files are deleted; then
/// the idle Chunkers of `live_chunkers` close and delete their cache files;
/// `fetching` goes last, its fetch pool before its cache directory, so no
/// file in the directory is deleted after the directory is gone. Open
/// template files hold Chunkers too: the mount drops its handles before
/// its `Builds`.
pub struct Builds {
    store: Arc<dyn Store>,
    stats: Arc<Stats>,
    config: TemplateConfig,
    headers: Mutex<HashMap<FileId, Arc<Header>>>,
    listing: Listing,
    /// Headers and blobs of builds the store lacks, from their origin peer.
    from_origin: FromOrigin,
    prefetcher: Prefetcher,
    flats: FlatFiles,
    /// `--record-prefetch`: the first-touch order of files read.
    recorder: Option<Arc<Recorder>>,
    live_chunkers: Arc<LiveChunkers>,
    /// Held while `fetching` is made, so it is made once. Making it touches
    /// only the local disk, never the store.
    making_fetching: Mutex<()>,
    fetching: OnceLock<Fetching>,
}

impl Builds {
    /// Nothing is read or made yet: the store is first asked when a build is
    /// listed, probed or opened.
    pub fn new(store: Arc<dyn Store>, config: TemplateConfig) -> Arc<Builds> {
        let stats = Arc::new(Stats::new(&PeerFallback::COUNTED.map(PeerFallback::name)));
        stats.cache_budget.set(config.max_cache_size);
        let store: Arc<dyn Store> = Arc::new(MeteredStore::new(store, stats.clone()));
        Arc::new(Builds {
            prefetcher: Prefetcher::new(config.prefetch.clone(), Arc::clone(&store)),
            recorder: config.prefetch.record_dir.clone().map(Recorder::new),
            flats: FlatFiles::new(config.passthrough),
            store,
            stats,
            listing: Listing::new(config.listing_ttl),
            from_origin: FromOrigin::new(config.listing_ttl),
            headers: Mutex::new(HashMap::new()),
            live_chunkers: Arc::new(LiveChunkers::new(config.max_idle_diffs)),
            making_fetching: Mutex::new(()),
            fetching: OnceLock::new(),
            config,
        })
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Where the store is, for messages (`/srv/templates`, `s3://bucket/p`).
    pub fn location(&self) -> String {
        self.store.location()
    }

    /// This instance's cache directory, made (and stale ones of crashed
    /// runs removed) on the first call. A mount calls it up front, so a cache
    /// directory it cannot make fails the mount, not the first read.
    ///
    /// # Errors
    /// `TemplateError::Cache` when the directory cannot be made or locked.
    pub fn cache_dir(&self) -> Result<&Path, TemplateError> {
        Ok(self.fetching()?.cache.path())
    }

    /// Bytes held in this instance's cache files now (uncompressed, over
    /// every open Chunker): the `cache_size` gauge of `.stats`.
    pub fn cache_used_bytes(&self) -> u64 {
        self.stats.cache_size.get()
    }

    /// The cache budget in bytes (`--max-cache-size`); 0 when unbounded.
    pub fn max_cache_size(&self) -> u64 {
        self.config.max_cache_size
    }

    /// How long the listing (and the probe of an incomplete build) is
    /// trusted; a mount gives the kernel the same lifetime for the root.
    pub fn listing_ttl(&self) -> Duration {
        self.listing.ttl()
    }

    /// The store's build ids, listed at most once per listing TTL (see
    /// `template::listing`).
    ///
    /// # Errors
    /// `TemplateError::Store` when the store cannot be listed.
    pub fn list(&self) -> Result<Arc<Vec<Uuid>>, TemplateError> {
        self.listing.list(&*self.store)
    }

    /// Which objects `build` has, probed once when complete, else again
    /// after the listing TTL (see `template::listing`).
    ///
    /// # Errors
    /// `TemplateError::Store` when the store cannot be asked.
    pub fn contents(&self, build: Uuid) -> Result<BuildContents, TemplateError> {
        let contents = self.listing.contents(&*self.store, build)?;
        let Some(cx) = self.origin_context() else {
            return Ok(contents);
        };
        if contents.complete() {
            self.from_origin.stored(&cx, build);
            return Ok(contents);
        }
        // What the store lacks, its origin may have (a build being uploaded).
        let mut headers = [false; 2];
        for (has, file) in headers.iter_mut().zip(FileKind::ALL) {
            *has = contents.has_header(file)
                || self.from_origin.cached_header(&cx, build, file).is_some()
                || self.from_origin.load_header(&cx, build, file)?.is_some();
        }
        let mut blobs = [None; 2];
        for (size, blob) in blobs.iter_mut().zip(Blob::ALL) {
            *size = contents.blob_size(blob).or_else(|| {
                let bytes = self.from_origin.blob(&cx, build, blob, true)?;
                Some(bytes.len() as u64)
            });
        }
        Ok(BuildContents::new(headers, blobs))
    }

    /// What the origin side of `Builds` needs; `None` without peers.
    fn origin_context(&self) -> Option<origin::Context<'_>> {
        Some(origin::Context {
            peers: self.config.peers.as_deref()?,
            store: &*self.store,
            stats: &self.stats,
            live_chunkers: &self.live_chunkers,
        })
    }

    /// The size in bytes of `build`'s `blob`, None when it does not exist.
    ///
    /// # Errors
    /// `TemplateError::Store` when the store cannot be asked.
    pub fn blob_size(&self, build: Uuid, blob: Blob) -> Result<Option<u64>, TemplateError> {
        match blob::size(&*self.store, build, blob)? {
            Some(size) => Ok(Some(size)),
            None => Ok(self
                .origin_context()
                .and_then(|cx| self.from_origin.blob(&cx, build, blob, true))
                .map(|bytes| bytes.len() as u64)),
        }
    }

    /// Fill `buf` with bytes `[offset, offset + buf.len())` of `build`'s
    /// `blob`.
    ///
    /// # Errors
    /// `NoBlob` when the blob does not exist; `TemplateError::Store` when it
    /// is shorter than the range (`ShortRead`) or cannot be read.
    pub fn read_blob(
        &self,
        build: Uuid,
        blob: Blob,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), TemplateError> {
        let key = ObjectKey::blob(build, blob);
        let cx = self.origin_context();
        // A blob from the build's origin is served without asking the store
        // each read; the store is asked again past the listing TTL.
        if let Some(bytes) = cx
            .as_ref()
            .and_then(|cx| self.from_origin.blob(cx, build, blob, false))
        {
            return origin::copy_range(&bytes, &key, offset, buf);
        }
        match blob::read(&*self.store, &self.stats, build, blob, offset, buf) {
            Err(TemplateError::NoBlob { .. })
                if let Some(bytes) = cx
                    .as_ref()
                    .and_then(|cx| self.from_origin.blob(cx, build, blob, true)) =>
            {
                origin::copy_range(&bytes, &key, offset, buf)
            }
            answer => answer,
        }
    }

    /// All of `build`'s `blob`, None when it does not exist.
    ///
    /// # Errors
    /// `TemplateError::Store` when it is over `max_len` bytes (`TooLarge`,
    /// checked before anything is read) or cannot be read.
    pub fn read_whole_blob(
        &self,
        build: Uuid,
        blob: Blob,
        max_len: u64,
    ) -> Result<Option<Vec<u8>>, TemplateError> {
        match blob::read_whole(&*self.store, build, blob, max_len)? {
            Some(bytes) => Ok(Some(bytes)),
            None => Ok(self
                .origin_context()
                .and_then(|cx| self.from_origin.blob(&cx, build, blob, true))
                .filter(|bytes| bytes.len() as u64 <= max_len)
                .map(|bytes| bytes.to_vec())),
        }
    }

    /// The header object of `build`'s `file` as stored (E2B peers pass
    /// headers on as blobs), None when it does not exist.
    ///
    /// # Errors
    /// `TemplateError::Store` when it is over `MAX_HEADER_LEN` bytes or
    /// cannot be read.
    pub fn read_header_object(
        &self,
        build: Uuid,
        file: FileKind,
    ) -> Result<Option<Vec<u8>>, TemplateError> {
        blob::read_header_object(&*self.store, build, file)
    }

    fn fetching(&self) -> Result<&Fetching, TemplateError> {
        if let Some(f) = self.fetching.get() {
            return Ok(f);
        }
        let _making = sync::lock(&self.making_fetching);
        if let Some(f) = self.fetching.get() {
            return Ok(f);
        }
        let cache = CacheDir::create(&self.config.cache_dir)?;
        let config = ChunkerConfig {
            cache_dir: cache.path().to_path_buf(),
            fetch_timeout: self.config.fetch_timeout,
            cache_budget: (self.config.max_cache_size > 0)
                .then(|| CacheBudget::new(self.config.max_cache_size)),
            peers: self.config.peers.clone(),
        };
        let pool = FetchPool::new(self.config.fetch_workers.max(1));
        Ok(self.fetching.get_or_init(|| Fetching {
            pool,
            config,
            cache,
        }))
    }

    /// The template file `file` of `build`, ready to read: the Chunkers of
    /// the diffs its mappings reference are opened (made, with size
    /// requests for their data objects, unless already open) and held until
    /// it is dropped. For its size or header alone, use `header`.
    ///
    /// # Errors
    /// `NotFound` when the build has neither header nor data for `file`,
    /// `CorruptHeader` when its header cannot be decoded, `Inconsistent`
    /// when a diff it references is missing or disagrees with it, `Cache`
    /// when the cache directory cannot be made; store errors otherwise.
    pub fn open(&self, build: Uuid, file: FileKind) -> Result<TemplateFile, TemplateError> {
        match self.open_once(build, file) {
            // The build's origin said `use_storage` during the open (asked
            // for its diff's size): open it again, from the store.
            Err(_)
                if self
                    .config
                    .peers
                    .as_ref()
                    .is_some_and(|p| p.origin_switched(build)) =>
            {
                self.open_once(build, file)
            }
            opened => opened,
        }
    }

    fn open_once(&self, build: Uuid, file: FileKind) -> Result<TemplateFile, TemplateError> {
        // Before the header: a switch while it loads counts as after.
        let switches = self.stats.origin_switches.load(Ordering::Relaxed);
        let header = self.header(build, file)?;
        // Store headers are kept for good; any other came from an origin.
        let from_store = sync::lock(&self.headers)
            .get(&(build, file))
            .is_some_and(|h| Arc::ptr_eq(h, &header));
        let from_origin = (!from_store).then_some(switches);
        let mut opened = TemplateFile {
            file,
            header: header.clone(),
            diffs: Vec::new(),
            stats: self.stats.clone(),
            live_chunkers: self.live_chunkers.clone(),
            readahead: self.config.readahead,
            from_origin,
        };
        for m in header.mappings.as_slice() {
            if m.is_zero() || opened.diffs.iter().any(|(id, _)| *id == m.build_id) {
                continue;
            }
            let chunker = self.diff(m.build_id, file, &header)?;
            opened.diffs.push((m.build_id, chunker));
        }
        Ok(opened)
    }

    /// `file` opened again when its header came from the build's origin
    /// peer and the build has left it since (the store's header, maybe a
    /// compressed data object): the same bytes, read from the store. `None`
    /// when nothing changed, the file did not come from an origin, or the
    /// new open failed (the caller keeps `file` and its error). Asking for
    /// the header is what notices a switch the peer client saw mid-stream.
    pub fn reopen(&self, file: &TemplateFile) -> Option<TemplateFile> {
        if !file.from_origin() {
            return None;
        }
        let (build, kind) = (file.build_id(), file.file());
        let header = self.header(build, kind).ok()?;
        if Arc::ptr_eq(&header, &file.header) {
            return None;
        }
        self.open(build, kind).ok()
    }

    /// The diff view of `build`'s own diff of `file`, sharing the Chunker
    /// its template file reads through.
    ///
    /// # Errors
    /// `NoDiff` when the build has no diff of its own for `file` (its header
    /// maps nothing to it and no data object exists); otherwise what
    /// `Builds::open` returns.
    pub fn open_diff(&self, build: Uuid, file: FileKind) -> Result<DiffFile, TemplateError> {
        DiffFile::open(self, build, file)
    }

    /// Bytes of `build`'s own diff of `file` in the cache now; 0 when its
    /// Chunker is not open. Never opens one.
    pub fn cached_bytes(&self, build: Uuid, file: FileKind) -> u64 {
        self.live_chunkers
            .live((build, file))
            .map_or(0, |c| c.cached_bytes())
    }

    /// Start replaying `file`'s recorded working set, the first time it is
    /// opened for reading (see `template::replay`); later calls do nothing.
    pub fn start_prefetch(&self, file: &Arc<TemplateFile>) {
        self.prefetcher.start(file);
    }

    /// A share of `file`'s recording for one open handle, when recording
    /// (`--record-prefetch`): the handle notes the reads the kernel asks
    /// for through it, and the trace is written when the file's last share
    /// is dropped (see `template::record`).
    pub fn record(&self, file: &TemplateFile) -> Option<Recording> {
        self.recorder.as_ref()?.open(file)
    }

    /// Write the recordings of files still open (at unmount).
    pub fn finish_recordings(&self) {
        if let Some(recorder) = &self.recorder {
            recorder.finish();
        }
    }

    /// Where the prefetch of `build`'s `file` stands, as the
    /// `user.tdfs.prefetch` xattr shows it (`none`, `running n/m` runs
    /// queued, `done (<source>)`, `skipped: why`). Never opens the file.
    pub fn prefetch_state(&self, build: Uuid, file: FileKind) -> String {
        self.prefetcher.describe(build, file)
    }

    /// True when wholly cached template files are flattened for FUSE
    /// passthrough (`--passthrough`).
    pub fn passthrough(&self) -> bool {
        self.flats.enabled()
    }

    /// Start writing `file`'s flat file (see `template::flat`) if every
    /// diff it maps is wholly cached now; a failure is logged and the file
    /// stays served through the Chunkers.
    pub fn flatten_when_cached(&self, file: &Arc<TemplateFile>) {
        if !self.flats.enabled() {
            return;
        }
        let Ok(fetching) = self.fetching() else {
            return;
        };
        self.flats.make_when_cached(
            file,
            fetching.cache.path(),
            fetching.config.cache_budget.as_ref(),
        );
    }

    /// The flat file of `build`'s `file`, once written.
    pub fn flat_file(&self, build: Uuid, file: FileKind) -> Option<Arc<FlatFile>> {
        self.flats.ready((build, file))
    }

    /// Where the flat file of `build`'s `file` stands, as the
    /// `user.tdfs.passthrough` xattr shows it.
    pub fn flat_state(&self, build: Uuid, file: FileKind) -> String {
        self.flats.describe((build, file))
    }

    /// The decoded header of `build`'s `file`, loaded once. A build with a
    /// data object but no header (legacy) gets one identity mapping. Every
    /// reader (mount, export, inspect, verify, pack) loads headers here.
    ///
    /// # Errors
    /// `NotFound` when the build has neither a header nor an uncompressed
    /// data object for `file`; `CorruptHeader` when the header does not
    /// decode or is over `MAX_HEADER_LEN` bytes; store errors otherwise.
    pub fn header(&self, build: Uuid, file: FileKind) -> Result<Arc<Header>, TemplateError> {
        if let Some(h) = sync::lock(&self.headers).get(&(build, file)) {
            return Ok(h.clone());
        }
        let cx = self.origin_context();
        if let Some(h) = cx
            .as_ref()
            .and_then(|cx| self.from_origin.cached_header(cx, build, file))
        {
            return Ok(h);
        }
        let key = ObjectKey::header(build, file);
        let header = match self.store.read_all(&key, MAX_HEADER_LEN) {
            Ok(bytes) => Header::decode(&bytes).map_err(|source| TemplateError::CorruptHeader {
                key: key.to_string(),
                source,
            })?,
            Err(StoreError::NotFound { .. }) => {
                // A build being uploaded: its origin has the header.
                if let Some(cx) = &cx
                    && let Some(h) = self.from_origin.load_header(cx, build, file)?
                {
                    return Ok(h);
                }
                self.legacy_header(build, file)?
            }
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
                return Err(TemplateError::NotFound {
                    build,
                    file,
                    location: self.store.location(),
                });
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
        let mappings =
            Mappings::whole_build(build, size).map_err(|source| TemplateError::CorruptHeader {
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
    pub(super) fn diff(
        &self,
        build: Uuid,
        file: FileKind,
        referrer: &Header,
    ) -> Result<Arc<Chunker>, TemplateError> {
        if let Some(c) = self.live_chunkers.live((build, file)) {
            return Ok(c);
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
                // A host whose store holds only headers reads through its
                // peers: the header's size, or the owner peer's.
                Err(StoreError::NotFound { .. })
                    if self.config.peers.is_some() && file_size > 0 =>
                {
                    file_size
                }
                Err(StoreError::NotFound { .. }) => {
                    self.peer_diff_size(build, file)
                        .ok_or_else(|| TemplateError::Inconsistent {
                            key: key.to_string(),
                            detail: format!(
                                "referenced by the {file} header of build {} but missing from the store{}",
                                referrer.metadata.build_id,
                                if self.config.peers.is_some() {
                                    " and not known to the peer owning it"
                                } else {
                                    ""
                                }
                            ),
                        })?
                }
                Err(e) => return Err(e.into()),
            }
        };
        let spec = DiffSpec {
            key,
            size,
            frames: table,
        };
        let fetching = self.fetching()?;
        let verify = sha256.filter(|_| self.config.verify_checksums);
        self.live_chunkers.get_or_make((build, file), || {
            let chunker = Chunker::new(
                spec,
                self.store.clone(),
                fetching.pool.clone(),
                &fetching.config,
                self.stats.clone(),
            )?;
            if let Some(sha256) = verify {
                chunker.verify_when_complete(sha256);
            }
            Ok(chunker)
        })
    }

    /// The uncompressed size of `build`'s own diff of `file` from the peer
    /// owning it (`None` without peers, or when it cannot tell; the reason
    /// is counted in `.stats` and the peer client logs faults).
    fn peer_diff_size(&self, build: Uuid, file: FileKind) -> Option<u64> {
        let peers = self.config.peers.as_ref()?;
        let answer = peers.diff_size(build, file);
        match answer {
            Ok(_) => {
                self.stats.peer_requests.fetch_add(1, Ordering::Relaxed);
            }
            Err(reason) => {
                if reason.asked() {
                    self.stats.peer_requests.fetch_add(1, Ordering::Relaxed);
                }
                if reason != PeerFallback::Owned {
                    self.stats.record_peer_fallback(reason.name());
                }
            }
        }
        answer.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::testing::fixture_builds;

    /// A layer of the v4-zstd fixture.
    const LAYER: &str = "bd87702b-8d31-4e8d-beda-66b642c931a9";

    #[test]
    fn reading_headers_makes_no_cache_directory() {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().join("cache");
        let builds = fixture_builds("v4-zstd", TemplateConfig::for_tool(parent.clone()));
        let build = Uuid::parse_str(LAYER).unwrap();
        for file in FileKind::ALL {
            builds.header(build, file).unwrap();
        }
        assert!(!parent.exists(), "headers alone need no cache");

        builds.open(build, FileKind::Memfile).unwrap();
        let made = builds.cache_dir().unwrap().to_path_buf();
        assert_eq!(made.parent(), Some(parent.as_path()));
        drop(builds);
        assert!(!made.exists(), "removed with its Builds");
    }

    fn cache_files(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("cache".as_ref()))
            .count()
    }

    #[test]
    fn one_chunker_per_diff_and_idle_ones_closed_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = TemplateConfig::for_tool(dir.path().to_path_buf());
        config.max_idle_diffs = 1;
        let builds = fixture_builds("v4-zstd", config);
        let build = Uuid::parse_str(LAYER).unwrap();
        let a = builds.open(build, FileKind::Memfile).unwrap();
        let b = builds.open(build, FileKind::Memfile).unwrap();
        assert_eq!(a.diffs.len(), 2, "the layer and its base");
        for ((_, x), (_, y)) in a.diffs.iter().zip(&b.diffs) {
            assert!(Arc::ptr_eq(x, y), "one Chunker per diff");
        }
        let cache = builds.cache_dir().unwrap().to_path_buf();
        assert_eq!(cache_files(&cache), 2);

        drop(a);
        assert_eq!(
            builds.live_chunkers.open_count(),
            2,
            "still held by the other"
        );
        drop(b);
        assert_eq!(
            builds.live_chunkers.open_count(),
            1,
            "one idle Chunker kept"
        );
        assert_eq!(
            cache_files(&cache),
            1,
            "the closed one's cache file removed"
        );

        // Reopening reuses the kept one and remakes the closed one.
        let c = builds.open(build, FileKind::Memfile).unwrap();
        let mut buf = vec![0; 4096];
        c.read_at(&mut buf, 0).unwrap();
        assert_eq!(cache_files(&cache), 2);
    }
}
