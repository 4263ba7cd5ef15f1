//! The Chunker reads the diff objects of the independent E2B-format fixture
//! stores (tests/fixtures/e2b, written by another implementation) exactly:
//! every frame listed in a build's own header (sparse tables included) and
//! every block in it match an independent decode of the whole object, whose
//! SHA-256 in turn matches the store's manifest.

mod common;

use std::sync::Arc;

use common::chunker::PAGE;
use common::fixtures::{fixture_stores, manifest};
use common::oracle::decode_object;
use sha2::{Digest, Sha256};
use tdfs::chunker::{Chunker, DiffSpec, FetchPool};
use tdfs::format::{Compression, FileKind, FrameTable, Header, ObjectKey};
use tdfs::metrics::Stats;
use tdfs::store::LocalStore;
use uuid::Uuid;

#[test]
fn fixture_diffs_read_exactly() {
    let cache = tempfile::tempdir().unwrap();
    let pool = FetchPool::new(2);
    let stats = Arc::new(Stats::default());
    let config = tdfs::chunker::ChunkerConfig {
        cache_dir: cache.path().to_path_buf(),
        fetch_timeout: std::time::Duration::from_secs(30),
        cache_budget: None,
        peers: None,
    };
    let mut frames_checked = 0;
    let mut objects_checked = 0;
    for store_dir in fixture_stores() {
        let store = Arc::new(LocalStore::open(&store_dir).unwrap());
        let manifest = manifest(&store_dir);
        for build in manifest["builds"].as_array().unwrap() {
            let build_id = Uuid::parse_str(build["build_id"].as_str().unwrap()).unwrap();
            for kind in FileKind::ALL {
                let file = &build["files"][kind.name()];
                let compression = match file["compression"].as_str().unwrap() {
                    "zstd" => Compression::Zstd,
                    "lz4" => Compression::Lz4,
                    _ => Compression::None,
                };
                let key = ObjectKey::data(build_id, kind, compression);
                assert_eq!(file["object"].as_str().unwrap(), key.to_string());
                let object = std::fs::read(store_dir.join(key.to_string())).unwrap();
                let diff = decode_object(compression, &object);
                assert_eq!(
                    format!("{:x}", Sha256::digest(&diff)),
                    file["diff_sha256"].as_str().unwrap(),
                    "{key}: the independent decode"
                );
                let header =
                    std::fs::read(store_dir.join(ObjectKey::header(build_id, kind).to_string()))
                        .unwrap();
                let header = Header::decode(&header).unwrap();
                let frames = match header.build(&build_id) {
                    Some(entry) if compression != Compression::None => entry.frames.clone(),
                    _ => FrameTable::uncompressed(),
                };
                assert_eq!(
                    frames.is_compressed(),
                    compression != Compression::None,
                    "{key}"
                );
                let c = Chunker::new(
                    DiffSpec {
                        key,
                        size: diff.len() as u64,
                        frames: frames.clone(),
                    },
                    store.clone(),
                    pool.clone(),
                    &config,
                    stats.clone(),
                )
                .unwrap();
                let ranges: Vec<std::ops::Range<u64>> = if frames.is_compressed() {
                    frames.frames().iter().map(|f| f.range_u()).collect()
                } else {
                    std::iter::once(0..diff.len() as u64).collect()
                };
                for range in ranges {
                    let (start, end) = (range.start as usize, range.end as usize);
                    let mut buf = vec![0u8; end - start];
                    c.read_blocks(&mut buf, range.start).unwrap();
                    assert!(buf == diff[start..end], "{key}: bytes {range:?}");
                    for off in
                        (range.start.div_ceil(PAGE) * PAGE..range.end).step_by(PAGE as usize * 5)
                    {
                        let len = header.metadata.block_size.min(c.size() - off);
                        let block = c.read_in_place(off, len).unwrap();
                        let o = off as usize;
                        assert!(*block == diff[o..o + block.len()], "{key}: block at {off}");
                    }
                    frames_checked += 1;
                }
                objects_checked += 1;
            }
        }
    }
    assert_eq!(objects_checked, 24);
    assert!(frames_checked > 24);
}
