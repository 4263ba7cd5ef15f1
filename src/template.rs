//! A build's files as the user sees them: a header plus the diffs it
//! references, and everything else a reader asks of the store.
//!
//! `Builds` is the one door to a store's builds for every reader (the mount,
//! export, inspect, verify, pack's base): it lists the builds, probes which
//! objects a build has, loads headers lazily (with the fallback for a legacy
//! build that has data but no header), shares one Chunker per (build, file)
//! across every template that references it, and reads the blobs that are
//! passed through unchanged. `TemplateFile::read_at` walks a range mapping by
//! mapping; `TemplateFile::read_in_place` hands out a range
//! that lies in one mapping without copying it. `ReadAhead` is one reader's
//! sequential-stream state; `TemplateFile::read_ahead` turns what it plans
//! into fetches of the diffs the planned range maps to. `DiffFile` is the
//! diff view: one build's own diff, uncompressed, at storage offsets.
//! `FlatFile` is a wholly cached template file copied into one local file,
//! which the mount hands to the kernel (FUSE passthrough).

mod blob;
mod builds;
mod cache_dir;
mod diff_view;
mod file;
mod flat;
mod listing;
mod live_chunkers;
mod origin;
mod readahead;
mod record;
mod replay;
#[cfg(test)]
pub(crate) mod testing;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::chunker::{ChunkerError, PeerSource};
use crate::format::{Blob, FileKind, FormatError};
use crate::store::StoreError;

pub use builds::Builds;
pub use diff_view::DiffFile;
pub use file::{FileBytes, TemplateFile, own_compression};
pub use flat::FlatFile;
pub use listing::BuildContents;
pub use readahead::{MAX_READAHEAD_BYTES, MAX_READAHEAD_UNITS, ReadAhead};
pub use record::Recording;
pub use replay::{PrefetchConfig, PrefetchSource, PrefetchSources, read_bounded, recording_path};

/// Why a template file, a blob or the listing could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// Neither a header nor a data object (`Builds::header`).
    #[error(
        "build {build} has no {file} header in {location} (no such build, or an incomplete pack: headers are written last)"
    )]
    NotFound {
        build: Uuid,
        file: FileKind,
        /// The store, for the message (`/srv/templates`, `s3://bucket/p`).
        location: String,
    },
    /// No diff of its own for `file` (`Builds::open_diff`).
    #[error(
        "build {build} has no {file} diff of its own in {location} (its header maps no range to it: read the builds it names)"
    )]
    NoDiff {
        build: Uuid,
        file: FileKind,
        location: String,
    },
    #[error("build {build} has no {blob} in {location}")]
    NoBlob {
        build: Uuid,
        blob: Blob,
        location: String,
    },
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
    /// Parent of this instance's cache directory (see `CacheDir`), which is
    /// made when the first diff is opened.
    pub cache_dir: PathBuf,
    /// Bound on the bytes held in cache files (0 = unbounded).
    pub max_cache_size: u64,
    /// How long a reader waits for a fetch before its read fails
    /// (`--fetch-timeout`); the fetch itself goes on.
    pub fetch_timeout: Duration,
    /// Start window of a sequential reader's read-ahead, in steps of the
    /// template file (a step is the largest fetch unit of its diffs; see
    /// `ReadAhead`); 0 = off.
    pub readahead: usize,
    /// Threads of the shared fetch pool (0 counts as 1): at most this many
    /// units (chunks or frames) are fetched from the store at once, across
    /// every diff of this `Builds`, read-ahead included (a remote store also
    /// bounds its requests: `StoreConfig::max_requests`).
    pub fetch_workers: usize,
    /// Check each diff against the SHA-256 its header records (V4/V5, when
    /// not zero) once all of it is cached; a mismatch fails its reads.
    pub verify_checksums: bool,
    /// How long the build listing, and the probe of a build that misses
    /// objects, are trusted before the store is asked again.
    pub listing_ttl: Duration,
    /// Chunkers of diffs no open file reads that are kept open for reuse
    /// (each holds a cache file descriptor and a mapping); past it the least
    /// recently used is closed and its cached bytes dropped.
    pub max_idle_diffs: usize,
    /// Replaying recorded working sets when a template file is opened,
    /// and recording them.
    pub prefetch: PrefetchConfig,
    /// Peers asked for a unit before the store (`--peer`); `None` = the
    /// store only.
    pub peers: Option<Arc<dyn PeerSource>>,
    /// Flatten wholly cached template files into one local file each, for
    /// the mount to hand to the kernel (FUSE passthrough, `--passthrough`).
    pub passthrough: bool,
}

/// Chunks or frames fetched ahead of a sequential reader at first: the
/// start of each open file's read-ahead window, which doubles while the
/// reader stays sequential and uses what was fetched ahead (up to
/// `MAX_READAHEAD_UNITS` and `MAX_READAHEAD_BYTES`) and falls back to this
/// on a jump (see `ReadAhead`). Each store request pays the store's
/// first-byte latency, so only many requests in flight reach its
/// bandwidth: the slow-store rows of contrib/bench/RESULTS.md measure a
/// cold sequential read with read-ahead against one without. A short start
/// window keeps lazy readers lazy, and lazy fetching is the point of tdfs:
/// a VM booting from a 64 MiB rootfs (contrib/vm/boot-from-tdfs.sh) touches
/// only a few frames, so its window never grows past this.
pub const READAHEAD_CHUNKS: usize = 4;

/// The defaults of a long-lived mount: what `tdfs mount` uses when no flag
/// says otherwise (its flags' defaults are these; `cli/mount/config.rs`).
impl Default for TemplateConfig {
    fn default() -> Self {
        TemplateConfig {
            // Nothing is made there until a diff is opened, and then only
            // this instance's own `mount-<uuid>`; the mount gives
            // `--cache-dir` or its per-user default instead.
            cache_dir: std::env::temp_dir(),
            // No bound unless asked (`--max-cache-size`): the cache is the
            // store's data, and evicting it costs refetches.
            max_cache_size: 0,
            // How long a kernel request (a booting VM's page fault) may hang
            // before EIO: long enough for a slow store's first byte under
            // load, short enough that a dead store shows as errors, not a
            // hung guest.
            fetch_timeout: Duration::from_secs(30),
            readahead: READAHEAD_CHUNKS,
            // Store requests in flight across the mount: a remote store
            // reaches its bandwidth only with many requests paying their
            // first-byte latency at once (contrib/bench measures the mount
            // with these 16).
            fetch_workers: 16,
            verify_checksums: false,
            // New builds show up within seconds, and a big store is listed
            // at most every 5 s however often `ls` runs.
            listing_ttl: Duration::from_secs(5),
            // A handful of templates and their ancestors; a mount raises it
            // from its open file limit (each idle Chunker holds a file
            // descriptor and a mapping).
            max_idle_diffs: 16,
            // Replaying recorded working sets is on for a mount
            // (`--prefetch on`).
            prefetch: PrefetchConfig::default(),
            // The store only, unless peers are given (`--peer`).
            peers: None,
            // Off: a cache disk that fails after the copy would be read by
            // the kernel without tdfs's damage checks.
            passthrough: false,
        }
    }
}

impl TemplateConfig {
    /// Defaults for a one-shot tool (export, inspect, verify, pack against
    /// a base). Nothing is made under `cache_dir` unless a diff is read.
    /// Read-ahead, verification, peers and passthrough are the mount's.
    pub fn for_tool(cache_dir: PathBuf) -> Self {
        TemplateConfig {
            cache_dir,
            // No kernel request waits behind a tool's read, and giving up
            // fails the whole command (an export starts over), so a tool
            // waits twice as long as a mount's reader before it fails.
            fetch_timeout: Duration::from_secs(60),
            // A tool runs alone and reads one file front to back: decoding
            // its frames is the work, so it takes two workers per core.
            fetch_workers: std::thread::available_parallelism().map_or(4, |n| n.get() * 2),
            // A tool asks once and exits: nothing to keep.
            listing_ttl: Duration::ZERO,
            // A tool reads what it reads, once.
            prefetch: PrefetchConfig {
                enabled: false,
                ..PrefetchConfig::default()
            },
            ..TemplateConfig::default()
        }
    }
}
