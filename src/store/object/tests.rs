//! Unit tests of `RemoteStore` that need no server: location names, key
//! paths, option checks and read splitting.

use std::ops::Range;

use object_store::aws::AmazonS3Builder;
use uuid::Uuid;

use super::client::location_name;
use super::reads::split_parts;
use super::*;
use crate::store::location::StoreConfig;

#[test]
fn parts_cover_the_range_in_order() {
    assert_eq!(split_parts(5..5), Vec::<Range<u64>>::new());
    let mib = 1 << 20;
    assert_eq!(
        split_parts(mib..mib + 9 * mib),
        vec![mib..5 * mib, 5 * mib..9 * mib, 9 * mib..10 * mib]
    );
}

#[test]
fn location_names_the_bucket_and_prefix() {
    assert_eq!(location_name("s3", "b", ""), "s3://b");
    assert_eq!(location_name("gs", "b", "/a/p/"), "gs://b/a/p");
}

#[test]
fn bad_options_are_refused() {
    let opts = StoreConfig {
        max_requests: 0,
        ..StoreConfig::default()
    };
    let err = RemoteStore::s3("b", "", &opts).unwrap_err();
    assert!(err.to_string().contains("max_requests is 0"), "{err}");
    let opts = StoreConfig::default();
    let err = RemoteStore::s3_with_builder(AmazonS3Builder::new(), "b", "a//b", &opts).unwrap_err();
    assert!(err.to_string().contains("bad key prefix"), "{err}");
}

#[test]
fn keys_live_under_the_prefix() {
    let opts = StoreConfig {
        region: Some("r".into()),
        ..StoreConfig::default()
    };
    let store = RemoteStore::s3_with_builder(AmazonS3Builder::new(), "b", "t/p", &opts).unwrap();
    let build = Uuid::new_v4();
    let key = ObjectKey::header(build, crate::format::FileKind::Memfile);
    assert_eq!(
        store.path(&key).as_ref(),
        format!("t/p/{build}/memfile.header")
    );
    assert_eq!(store.location(), "s3://b/t/p");
}
