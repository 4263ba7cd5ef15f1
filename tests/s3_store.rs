//! The S3 store against a real S3 server (Garage on loopback): reads, writes,
//! metadata, multipart uploads, listing and errors, through the `Store` trait.

mod common;

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::garage::{BUCKET, Garage, REGION};
use common::rng::noise;
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use tdfs::format::{Blob, Compression, FileKind, ObjectKey};
use tdfs::store::{PutOptions, RemoteStore, Store, StoreError, WritableStore};
use uuid::Uuid;

const MIB: usize = 1 << 20;

fn memfile(build: Uuid) -> ObjectKey {
    ObjectKey::data(build, FileKind::Memfile, Compression::Zstd)
}

/// Direct client for checks the `Store` trait does not expose.
fn raw_client(garage: &Garage) -> object_store::aws::AmazonS3 {
    garage
        .credentials()
        .with_bucket_name(BUCKET)
        .with_region(REGION)
        .with_endpoint(garage.endpoint())
        .with_allow_http(true)
        .build()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn objects_roundtrip_through_the_store_trait() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let store = garage.store("templates/prod");
    assert_eq!(store.location(), "s3://tdfs/templates/prod");
    let build = Uuid::new_v4();

    let header = ObjectKey::header(build, FileKind::Memfile);
    let header_bytes = noise(1, 3000);
    store.put_bytes(&header, &header_bytes).unwrap();
    assert_eq!(store.size(&header).unwrap(), 3000);
    assert_eq!(store.read_all(&header, 1 << 20).unwrap(), header_bytes);
    assert!(matches!(
        store.read_all(&header, 2999),
        Err(StoreError::TooLarge {
            size: 3000,
            limit: 2999,
            ..
        })
    ));
    assert_eq!(store.uncompressed_size(&header).unwrap(), None);
    assert!(store.exists(&header).unwrap());

    let dir = tempfile::tempdir().unwrap();
    let data = noise(2, 3 * MIB + 123);
    let source = dir.path().join("memfile.zstd");
    std::fs::write(&source, &data).unwrap();
    let key = memfile(build);
    let put = PutOptions {
        uncompressed_size: Some(9_876_543_210),
    };
    store.put_file(&key, &source, put).unwrap();
    assert_eq!(store.size(&key).unwrap(), data.len() as u64);
    assert_eq!(store.uncompressed_size(&key).unwrap(), Some(9_876_543_210));

    let got = store.read_exact_range(&key, 4096, 2 * MIB as u64).unwrap();
    assert_eq!(got, data[4096..4096 + 2 * MIB]);
    // A range running past the end streams what there is.
    let mut tail = Vec::new();
    store
        .read_range(&key, data.len() as u64 - 10, 4096)
        .unwrap()
        .read_to_end(&mut tail)
        .unwrap();
    assert_eq!(tail, data[data.len() - 10..]);
    assert!(matches!(
        store.read_exact_range(&key, data.len() as u64 - 10, 11),
        Err(StoreError::ShortRead {
            got: 10,
            expected: 11,
            ..
        })
    ));
    let mut nothing = Vec::new();
    store
        .read_range(&key, data.len() as u64, 100)
        .unwrap()
        .read_to_end(&mut nothing)
        .unwrap();
    assert!(nothing.is_empty());
    assert!(store.read_exact_range(&key, 0, 0).unwrap().is_empty());

    let snapfile = ObjectKey::blob(build, Blob::Snapfile);
    store.put_bytes(&snapfile, b"").unwrap();
    assert_eq!(store.size(&snapfile).unwrap(), 0);
    assert!(store.read_all(&snapfile, 10).unwrap().is_empty());

    assert_eq!(store.list_builds().unwrap(), vec![build]);
    // Keys live under the prefix: the same bucket at another prefix is empty.
    assert!(garage.store("templates").list_builds().unwrap().is_empty());
    let raw = raw_client(&garage);
    let meta = runtime()
        .block_on(raw.head(&ObjectPath::from(format!("templates/prod/{key}"))))
        .unwrap();
    assert_eq!(meta.size, data.len() as u64);
}

#[test]
fn large_objects_go_up_in_parts_and_come_back_in_parallel_parts() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let store = garage.store("big");
    let build = Uuid::new_v4();
    let key = memfile(build);
    let data = noise(3, 40 * MIB + 4321);
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("memfile.zstd");
    std::fs::write(&source, &data).unwrap();
    store
        .put_file(
            &key,
            &source,
            PutOptions {
                uncompressed_size: Some(64 << 30),
            },
        )
        .unwrap();
    assert_eq!(store.size(&key).unwrap(), data.len() as u64);
    assert_eq!(store.uncompressed_size(&key).unwrap(), Some(64 << 30));

    // A multipart upload's ETag ends in `-{parts}`.
    let raw = raw_client(&garage);
    let meta = runtime()
        .block_on(raw.head(&ObjectPath::from(format!("big/{key}"))))
        .unwrap();
    let etag = meta.e_tag.unwrap();
    assert!(etag.trim_matches('"').ends_with("-6"), "etag {etag}");

    let all = store.read_exact_range(&key, 0, data.len() as u64).unwrap();
    assert!(all == data, "whole object differs");
    let (offset, len) = (MIB + 17, 21 * MIB + 5);
    let got = store
        .read_exact_range(&key, offset as u64, len as u64)
        .unwrap();
    assert!(got == data[offset..offset + len], "split range differs");
    // A split read past the end stops where the object does.
    let mut tail = Vec::new();
    store
        .read_range(&key, 30 * MIB as u64, 20 * MIB as u64)
        .unwrap()
        .read_to_end(&mut tail)
        .unwrap();
    assert!(tail == data[30 * MIB..], "tail differs");
    // A reader dropped half way does not disturb the next reads.
    let mut partial = store.read_range(&key, 0, data.len() as u64).unwrap();
    let mut first = vec![0u8; MIB];
    partial.read_exact(&mut first).unwrap();
    assert_eq!(first, data[..MIB]);
    drop(partial);
    let again = store.read_exact_range(&key, 0, 9 * MIB as u64).unwrap();
    assert!(again == data[..9 * MIB]);
}

#[test]
fn one_request_at_a_time_still_serves_concurrent_readers() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let opts = tdfs::store::StoreConfig {
        max_requests: 1,
        ..garage.options(Duration::from_secs(20))
    };
    let store = Arc::new(garage.store_with("", &opts));
    let key = memfile(Uuid::new_v4());
    let data = Arc::new(noise(4, 12 * MIB));
    store.put_bytes(&key, &data).unwrap();
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let (store, data) = (Arc::clone(&store), Arc::clone(&data));
            std::thread::spawn(move || {
                // Alternate split reads (≥ 8 MiB) and streamed ones.
                let (offset, len) = if i % 2 == 0 {
                    (i * 1000, 10 * MIB)
                } else {
                    (i * MIB, MIB)
                };
                let got = store
                    .read_exact_range(&key, offset as u64, len as u64)
                    .unwrap();
                assert!(got == data[offset..offset + len], "reader {i}");
            })
        })
        .collect();
    for reader in readers {
        reader.join().unwrap();
    }
}

#[test]
fn listing_keeps_build_ids_only_and_follows_pages() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let store = Arc::new(garage.store("list"));
    // More than one page: S3 lists at most 1000 keys or prefixes per page.
    let mut builds: Vec<Uuid> = (0..1010).map(|_| Uuid::new_v4()).collect();
    let workers: Vec<_> = builds
        .chunks(1010 / 5 + 1)
        .map(|chunk| {
            let (store, chunk) = (Arc::clone(&store), chunk.to_vec());
            std::thread::spawn(move || {
                for build in chunk {
                    let key = ObjectKey::blob(build, Blob::Metadata);
                    store.put_bytes(&key, b"{}").unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    // Names that are not canonical build ids, in and beside the prefix.
    let raw = raw_client(&garage);
    let rt = runtime();
    let upper = Uuid::new_v4().to_string().to_uppercase();
    let simple = Uuid::new_v4().simple().to_string();
    for name in [
        "list/manifest.json".to_string(),
        "list/not-a-build/metadata.json".to_string(),
        format!("list/{upper}/metadata.json"),
        format!("list/{simple}/metadata.json"),
        format!("listing/{}/metadata.json", Uuid::new_v4()),
        format!("{}/metadata.json", Uuid::new_v4()),
    ] {
        rt.block_on(raw.put(&ObjectPath::from(name), "{}".into()))
            .unwrap();
    }
    builds.sort();
    let listed_builds = store.list_builds().unwrap();
    assert_eq!(listed_builds.len(), builds.len());
    assert!(listed_builds == builds, "other build ids listed");
    let listed: Vec<_> = rt
        .block_on(
            raw.list(Some(&ObjectPath::from("list")))
                .try_collect::<Vec<_>>(),
        )
        .unwrap();
    assert_eq!(listed.len(), 1010 + 4);
    // At the bucket root, `list` and `listing` are no build ids either.
    assert_eq!(garage.store("").list_builds().unwrap().len(), 1);
}

#[test]
fn missing_objects_are_not_found() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let store = garage.store("p");
    let key = memfile(Uuid::new_v4());
    let not_found = |r: Result<(), StoreError>| match r {
        Err(StoreError::NotFound { key: name }) => {
            assert!(
                name.contains(&key.to_string()) && name.contains("s3://tdfs/p"),
                "{name}"
            )
        }
        other => panic!("expected NotFound, got {other:?}"),
    };
    not_found(store.size(&key).map(drop));
    not_found(store.uncompressed_size(&key).map(drop));
    not_found(store.read_all(&key, 100).map(drop));
    not_found(store.read_range(&key, 0, 100).map(drop));
    not_found(store.read_range(&key, 0, 100 * MIB as u64).map(drop));
    assert!(!store.exists(&key).unwrap());
    assert!(store.list_builds().unwrap().is_empty());
}

#[test]
fn bad_credentials_and_missing_buckets_fail_at_once_with_a_clear_error() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let timeout = Duration::from_secs(20);
    let opts = garage.options(timeout);
    let wrong = object_store::aws::AmazonS3Builder::new()
        .with_access_key_id(&garage.key_id)
        .with_secret_access_key("0".repeat(64));
    let store = RemoteStore::s3_with_builder(wrong, BUCKET, "prefix", &opts).unwrap();
    let key = ObjectKey::header(Uuid::new_v4(), FileKind::Rootfs);
    let started = Instant::now();
    let err = store.read_all(&key, 1 << 20).unwrap_err();
    assert!(
        started.elapsed() < timeout,
        "a refused request was retried for {:?}",
        started.elapsed()
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("s3://tdfs/prefix: {key}: 403 Forbidden: ")),
        "{msg}"
    );
    assert!(msg.contains("credentials"), "{msg}");
    assert!(matches!(
        err,
        StoreError::Remote {
            status: Some(403),
            transient: false,
            ..
        }
    ));
    let err = store.list_builds().unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    let err = store
        .put_bytes(&key, b"x")
        .expect_err("a write with a bad key must fail");
    assert!(err.to_string().contains("403"), "{err}");

    let unknown_key = object_store::aws::AmazonS3Builder::new()
        .with_access_key_id("GK000000000000000000000000")
        .with_secret_access_key("0".repeat(64));
    let store = RemoteStore::s3_with_builder(unknown_key, BUCKET, "", &opts).unwrap();
    let err = store.size(&key).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Remote {
                status: Some(403),
                ..
            }
        ),
        "{err}"
    );

    let missing =
        RemoteStore::s3_with_builder(garage.credentials(), "no-such-bucket", "", &opts).unwrap();
    let err = missing.read_all(&key, 100).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("s3://no-such-bucket: "), "{msg}");
    assert!(
        !matches!(err, StoreError::NotFound { .. }),
        "a missing bucket is not a missing object: {msg}"
    );
}
