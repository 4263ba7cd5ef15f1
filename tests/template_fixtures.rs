//! The template read path against the independent E2B fixture stores: every
//! build's flattened memfile and rootfs must have the manifest's SHA-256, and
//! random reads from many threads, copied or in place, must equal the
//! flattened bytes.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::fixtures::{fixture_store, manifest};
use common::rng::Rng;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tdfs::format::FileKind;
use tdfs::store::{LocalStore, Store, WritableStore};
use tdfs::template::{Builds, FileBytes, TemplateConfig};
use uuid::Uuid;

fn open(store_name: &str, cache: &Path) -> (Arc<Builds>, Value) {
    let root = fixture_store(store_name);
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(&root).unwrap());
    let builds = Builds::new(store, TemplateConfig::for_tool(cache.to_path_buf()));
    (builds, manifest(&root))
}

fn read_whole(builds: &Builds, build: Uuid, file: FileKind, piece: usize) -> Vec<u8> {
    let tf = builds.open(build, file).unwrap();
    let mut out = vec![0u8; tf.size() as usize];
    let mut off = 0;
    while off < out.len() {
        let end = (off + piece).min(out.len());
        let n = tf.read_at(&mut out[off..end], off as u64).unwrap();
        assert_eq!(n, end - off, "short read at {off}");
        off = end;
    }
    let mut tail = [0u8; 16];
    assert_eq!(tf.read_at(&mut tail, tf.size()).unwrap(), 0);
    out
}

fn each_file(manifest: &Value) -> Vec<(Uuid, FileKind, String)> {
    let mut out = Vec::new();
    for b in manifest["builds"].as_array().unwrap() {
        let id = Uuid::parse_str(b["build_id"].as_str().unwrap()).unwrap();
        for kind in FileKind::ALL {
            let sha = b["files"][kind.name()]["sha256"]
                .as_str()
                .unwrap()
                .to_string();
            out.push((id, kind, sha));
        }
    }
    out
}

const STORES: [&str; 4] = ["v3-none", "v4-zstd", "v4-lz4", "v5-zstd-dedup"];

#[test]
fn every_fixture_file_flattens_to_the_manifest_sha256() {
    for store in STORES {
        let cache = tempfile::tempdir().unwrap();
        let (builds, manifest) = open(store, cache.path());
        for (build, kind, sha) in each_file(&manifest) {
            // An odd piece size crosses mapping, block and frame boundaries.
            let bytes = read_whole(&builds, build, kind, 1_000_003);
            let got = format!("{:x}", Sha256::digest(&bytes));
            assert_eq!(got, sha, "{store}: {build}/{kind}");
        }
    }
}

#[test]
fn random_reads_from_many_threads_equal_the_flattened_file() {
    for store in STORES {
        let cache = tempfile::tempdir().unwrap();
        let (reference, manifest) = open(store, cache.path());
        let files = each_file(&manifest);
        let flat: Vec<Vec<u8>> = files
            .iter()
            .map(|(b, k, _)| read_whole(&reference, *b, *k, 4 << 20))
            .collect();
        // A fresh instance, so reads start cold and race each other.
        let cache2 = tempfile::tempdir().unwrap();
        let (builds, _) = open(store, cache2.path());
        let (zeros, cached) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let (builds, files, flat) = (&builds, &files, &flat);
                let (zeros, cached) = (&zeros, &cached);
                s.spawn(move || {
                    let mut rng = Rng(t);
                    let mut next = move || rng.next();
                    for _ in 0..300 {
                        let i = (next() % files.len() as u64) as usize;
                        let (build, kind, _) = files[i];
                        let tf = builds.open(build, kind).unwrap();
                        let size = tf.size();
                        let off = next() % (size + 100);
                        let len = (next() % (3 << 20)) as usize;
                        let mut buf = vec![0xAAu8; len];
                        let n = tf.read_at(&mut buf, off).unwrap();
                        let want_n = (size.saturating_sub(off) as usize).min(len);
                        assert_eq!(n, want_n, "{build}/{kind} at {off}+{len}");
                        let start = off.min(size) as usize;
                        assert_eq!(&buf[..n], &flat[i][start..start + n]);
                        // The same range, or a short one (more often in one
                        // mapping), in place.
                        let len = if next() % 2 == 0 { len } else { len % 20_000 };
                        let n = (size.saturating_sub(off) as usize).min(len);
                        match tf.read_in_place(off, len).unwrap() {
                            None => {}
                            Some(bytes) => {
                                assert_eq!(
                                    &bytes[..],
                                    &flat[i][start..start + n],
                                    "{build}/{kind} in place at {off}+{len}"
                                );
                                match bytes {
                                    FileBytes::Zeros(_) => zeros.fetch_add(1, Ordering::Relaxed),
                                    FileBytes::Cached(_) => cached.fetch_add(1, Ordering::Relaxed),
                                };
                            }
                        }
                    }
                });
            }
        });
        // Without in-place reads of both kinds this would prove nothing.
        let (zeros, cached) = (zeros.into_inner(), cached.into_inner());
        assert!(
            zeros > 0 && cached > 0,
            "{store}: in place: {zeros} zeros, {cached} cached"
        );
    }
}

#[test]
fn missing_and_corrupt_builds_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::create(dir.path()).unwrap();
    let corrupt = Uuid::new_v4();
    let key = tdfs::format::ObjectKey::header(corrupt, FileKind::Memfile);
    store.put_bytes(&key, b"not a header").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let builds = Builds::new(
        Arc::new(store),
        TemplateConfig::for_tool(cache.path().into()),
    );
    let err = builds
        .open(Uuid::new_v4(), FileKind::Memfile)
        .err()
        .unwrap();
    assert!(
        matches!(err, tdfs::template::TemplateError::NotFound { .. }),
        "{err}"
    );
    let err = builds.open(corrupt, FileKind::Memfile).err().unwrap();
    assert!(
        matches!(err, tdfs::template::TemplateError::CorruptHeader { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&key.to_string()), "{err}");
}

#[test]
fn legacy_build_without_header_reads_as_identity() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::create(dir.path()).unwrap();
    let build = Uuid::new_v4();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let key =
        tdfs::format::ObjectKey::data(build, FileKind::Rootfs, tdfs::format::Compression::None);
    store.put_bytes(&key, &data).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let builds = Builds::new(
        Arc::new(store),
        TemplateConfig::for_tool(cache.path().into()),
    );
    let tf = builds.open(build, FileKind::Rootfs).unwrap();
    assert_eq!(tf.size(), data.len() as u64);
    let mut buf = vec![0; 20_000];
    assert_eq!(tf.read_at(&mut buf, 0).unwrap(), data.len());
    assert_eq!(&buf[..data.len()], &data[..]);
}
