//! `store::open("s3://…")` with credentials, region and endpoint from the
//! standard AWS environment variables, and `--endpoint-url`/`--region`
//! (`StoreConfig`) taking precedence over them. The only test in this
//! binary, as it sets process environment variables.

mod common;

use std::time::Duration;

use common::garage::Garage;
use tdfs::format::{FileKind, ObjectKey};
use tdfs::store::{self, StoreConfig, StoreError};
use uuid::Uuid;

#[test]
fn open_store_reads_the_aws_environment_and_flags_override_it() {
    let Some(garage) = Garage::start() else {
        return;
    };
    for (name, value) in garage.env() {
        // SAFETY: this binary's only test sets the variables before it opens
        // a store; no other thread reads the environment meanwhile.
        unsafe { std::env::set_var(name, value) };
    }
    let opts = StoreConfig {
        request_timeout: Duration::from_secs(20),
        ..StoreConfig::default()
    };
    let store = store::open("s3://tdfs/from-env/", &opts).unwrap();
    assert_eq!(store.location(), "s3://tdfs/from-env");
    let build = Uuid::new_v4();
    let key = ObjectKey::header(build, FileKind::Rootfs);
    store.put_bytes(&key, b"header bytes").unwrap();
    assert_eq!(store.read_all(&key, 100).unwrap(), b"header bytes");
    assert_eq!(store.list_builds().unwrap(), vec![build]);

    // The flag's region wins over AWS_REGION: requests signed for another
    // region are refused, at once.
    let wrong_region = StoreConfig {
        region: Some("us-west-2".to_string()),
        ..opts.clone()
    };
    let err = store::open("s3://tdfs/from-env", &wrong_region)
        .unwrap()
        .read_all(&key, 100)
        .unwrap_err();
    match &err {
        StoreError::Remote {
            status: Some(status),
            transient: false,
            ..
        } if (400..500).contains(status) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }

    // The flag's endpoint wins over AWS_ENDPOINT_URL.
    // SAFETY: as above.
    unsafe { std::env::set_var("AWS_ENDPOINT_URL", "http://127.0.0.1:9") };
    let flagged = StoreConfig {
        endpoint_url: Some(garage.endpoint()),
        ..opts.clone()
    };
    let store = store::open("s3://tdfs/from-env", &flagged).unwrap();
    assert_eq!(store.read_all(&key, 100).unwrap(), b"header bytes");
    let err = store::open("s3://tdfs/from-env", &opts)
        .unwrap()
        .read_all(&key, 100)
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
}
