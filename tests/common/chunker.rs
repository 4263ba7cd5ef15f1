//! Shared set-up of the Chunker integration tests: a local store in a temp
//! directory behind a `FaultStore`, diff objects written by the tests
//! themselves (raw, independent zstd frames with content checksums, LZ4
//! frames with block checksums) and the frame tables describing them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tdfs::chunker::{CacheBudget, Chunker, ChunkerConfig, DiffSpec, FetchPool};
use tdfs::format::{Compression, FileKind, Frame, FrameTable, ObjectKey};
use tdfs::metrics::Stats;
use tdfs::store::{FaultStore, LocalStore, WritableStore};
use uuid::Uuid;

use super::process::wait_until;
use super::rng::Rng;

pub const PAGE: u64 = 4096;
pub const MIB: u64 = 1 << 20;

pub struct Env {
    pub dir: tempfile::TempDir,
    pub local: Arc<LocalStore>,
    pub store: Arc<FaultStore>,
    pub pool: Arc<FetchPool>,
    pub stats: Arc<Stats>,
    pub config: ChunkerConfig,
}

impl Env {
    pub fn new() -> Env {
        Env::with_workers(4)
    }

    pub fn with_workers(workers: usize) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let local = Arc::new(LocalStore::create(dir.path().join("store")).unwrap());
        let store = Arc::new(FaultStore::new(local.clone()));
        let config = ChunkerConfig {
            cache_dir: dir.path().join("cache"),
            fetch_timeout: Duration::from_secs(30),
            cache_budget: None,
            peers: None,
        };
        Env {
            dir,
            local,
            store,
            pool: FetchPool::new(workers),
            stats: Arc::new(Stats::default()),
            config,
        }
    }

    pub fn chunker(&self, spec: DiffSpec) -> Chunker {
        Chunker::new(
            spec,
            self.store.clone(),
            self.pool.clone(),
            &self.config,
            self.stats.clone(),
        )
        .unwrap()
    }

    fn key(compression: Compression) -> ObjectKey {
        ObjectKey::data(Uuid::new_v4(), FileKind::Memfile, compression)
    }

    /// An uncompressed diff object holding `data`.
    pub fn put_raw(&self, data: &[u8]) -> DiffSpec {
        let key = Env::key(Compression::None);
        self.local.put_bytes(&key, data).unwrap();
        DiffSpec {
            key,
            size: data.len() as u64,
            frames: FrameTable::uncompressed(),
        }
    }

    /// A compressed diff object of `data` cut into frames of `frame_sizes`
    /// (cycled until the data ends).
    pub fn put_framed(
        &self,
        data: &[u8],
        compression: Compression,
        frame_sizes: &[usize],
    ) -> DiffSpec {
        let key = Env::key(compression);
        let mut object = Vec::new();
        let mut frames = Vec::new();
        let mut start = 0;
        for &size in frame_sizes.iter().cycle() {
            if start == data.len() {
                break;
            }
            let end = (start + size).min(data.len());
            let compressed = compress(compression, &data[start..end]);
            frames.push(Frame {
                start_u: start as u64,
                start_c: object.len() as u64,
                size_u: (end - start) as u32,
                size_c: compressed.len() as u32,
            });
            object.extend_from_slice(&compressed);
            start = end;
        }
        self.local.put_bytes(&key, &object).unwrap();
        DiffSpec {
            key,
            size: data.len() as u64,
            frames: FrameTable::new(compression, frames).unwrap(),
        }
    }

    /// `data` as each kind of diff object: raw, then zstd and LZ4 in frames
    /// of `frame` bytes.
    pub fn objects(&self, data: &[u8], frame: usize) -> Vec<DiffSpec> {
        vec![
            self.put_raw(data),
            self.put_framed(data, Compression::Zstd, &[frame]),
            self.put_framed(data, Compression::Lz4, &[frame]),
        ]
    }
}

/// The `*.cache` files under `dir` at any depth (none when `dir` does not
/// exist), sorted: what Chunkers (alone or under a mount) keep on disk.
pub fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let path = entry.expect("reading a cache directory").path();
        if path.is_dir() {
            found.extend(cache_files(&path));
        } else if path.extension().is_some_and(|x| x == "cache") {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// Wait (10 s at most) until `budget` holds nothing: fetch jobs may hold a
/// dropped Chunker's state a moment longer.
pub fn wait_budget_empty(budget: &CacheBudget, what: &str) {
    wait_until(Duration::from_secs(10), what, || match budget.used() {
        0 => Ok(()),
        used => Err(format!("{used} bytes held")),
    });
}

/// One independent frame: zstd with content checksum and content size, or
/// LZ4 with block checksums.
pub fn compress(compression: Compression, data: &[u8]) -> Vec<u8> {
    match compression {
        Compression::Zstd => {
            let mut c = zstd::bulk::Compressor::new(3).unwrap();
            c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
                .unwrap();
            c.compress(data).unwrap()
        }
        Compression::Lz4 => {
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max4MB)
                .block_checksums(true);
            let mut e = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::None => data.to_vec(),
    }
}

/// Reproducible test data that compresses somewhat: runs of repeated bytes
/// mixed with noise, different on every page.
pub fn test_data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let x = rng.next();
        let run = (x % 64) as usize + 1;
        let byte = (x >> 8) as u8;
        if x.is_multiple_of(3) {
            out.extend(std::iter::repeat_n(byte, run));
        } else {
            out.extend_from_slice(&x.to_le_bytes()[..(run % 8) + 1]);
        }
    }
    out.truncate(len);
    out
}
