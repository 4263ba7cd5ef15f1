//! The GCS store against a GCS emulator (fake-gcs-server): sizes, ranged and
//! split reads, whole-object reads, `uncompressed-size` metadata, listing and
//! missing objects. Writes are covered against S3 only (tests/s3_store.rs):
//! the emulator does not implement the XML uploads `object_store` sends.

mod common;

use std::io::Read;

use common::fake_gcs::FakeGcs;
use common::rng::noise;
use tdfs::format::{Blob, Compression, FileKind, ObjectKey};
use tdfs::store::{Store, StoreError};
use uuid::Uuid;

const MIB: usize = 1 << 20;

#[test]
fn gcs_reads_through_the_store_trait() {
    let build = Uuid::new_v4();
    let other = Uuid::new_v4();
    let data = noise(1, 12 * MIB + 5);
    let key = ObjectKey::data(build, FileKind::Memfile, Compression::Zstd);
    let metadata = ObjectKey::blob(build, Blob::Metadata);
    let seed = vec![
        (format!("pfx/{key}"), data.clone()),
        (format!("pfx/{metadata}"), b"{\"version\":1}".to_vec()),
        (format!("pfx/{other}/snapfile"), b"snap".to_vec()),
        ("pfx/manifest.json".to_string(), b"{}".to_vec()),
        ("pfx/not-a-build/snapfile".to_string(), b"x".to_vec()),
        (
            format!("elsewhere/{}/snapfile", Uuid::new_v4()),
            b"x".to_vec(),
        ),
    ];
    let Some(gcs) = FakeGcs::start(&seed) else {
        return;
    };
    let lz4 = ObjectKey::data(build, FileKind::Rootfs, Compression::Lz4);
    gcs.upload_with_metadata(
        &format!("pfx/{lz4}"),
        &[("uncompressed-size", "4242")],
        b"lz4 frames",
    );
    let store = gcs.store("pfx");
    assert_eq!(store.location(), "gs://tdfs/pfx");

    let mut builds = vec![build, other];
    builds.sort();
    assert_eq!(store.list_builds().unwrap(), builds);

    assert_eq!(store.size(&key).unwrap(), data.len() as u64);
    assert_eq!(store.read_all(&metadata, 1024).unwrap(), b"{\"version\":1}");
    assert!(matches!(
        store.read_all(&key, MIB as u64),
        Err(StoreError::TooLarge { .. })
    ));
    let small = store.read_exact_range(&key, 4096, 100_000).unwrap();
    assert_eq!(small, data[4096..104_096]);
    let split = store.read_exact_range(&key, 3, (10 * MIB) as u64).unwrap();
    assert!(split == data[3..3 + 10 * MIB], "split read differs");
    let mut tail = Vec::new();
    store
        .read_range(&key, (4 * MIB) as u64, (10 * MIB) as u64)
        .unwrap()
        .read_to_end(&mut tail)
        .unwrap();
    assert!(tail == data[4 * MIB..], "tail differs");

    assert_eq!(store.uncompressed_size(&key).unwrap(), None);
    assert_eq!(store.uncompressed_size(&lz4).unwrap(), Some(4242));
    assert_eq!(store.read_all(&lz4, 100).unwrap(), b"lz4 frames");

    let missing = ObjectKey::header(build, FileKind::Rootfs);
    assert!(matches!(
        store.size(&missing),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.read_range(&missing, 0, 10).map(drop),
        Err(StoreError::NotFound { .. })
    ));
    assert!(!store.exists(&missing).unwrap());
}
