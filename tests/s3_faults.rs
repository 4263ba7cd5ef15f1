//! The S3 store when its server dies or stalls: reads fail within the request
//! timeout (with retries bounded by it) instead of hanging, the errors say a
//! retry may help, and the same store works again once the server is back.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::garage::Garage;
use common::rng::noise;
use tdfs::format::{Compression, FileKind, ObjectKey};
use tdfs::store::{Store, StoreError, WritableStore};
use uuid::Uuid;

const MIB: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(2);
/// A failing request may take one timeout per attempt, and attempts stop
/// one timeout after the first: allow that and scheduling slack.
const FAIL_WITHIN: Duration = Duration::from_secs(4 * 2 + 5);

fn assert_transient(err: &StoreError) {
    assert!(err.is_transient(), "not marked transient: {err}");
    let msg = err.to_string();
    assert!(msg.contains("s3://tdfs/faults"), "{msg}");
}

#[test]
fn a_server_stopped_mid_read_fails_the_read_in_time_and_the_store_recovers() {
    let Some(mut garage) = Garage::start() else {
        return;
    };
    let store = garage.store_with("faults", &garage.options(TIMEOUT));
    let key = ObjectKey::data(Uuid::new_v4(), FileKind::Rootfs, Compression::None);
    let data = noise(1, 40 * MIB);
    store.put_bytes(&key, &data).unwrap();

    let mut reader = store.read_range(&key, 0, data.len() as u64).unwrap();
    let mut first = vec![0u8; MIB];
    reader.read_exact(&mut first).unwrap();
    assert!(first == data[..MIB]);
    garage.stop();

    let started = Instant::now();
    let mut rest = Vec::new();
    let err = reader
        .read_to_end(&mut rest)
        .expect_err("the read must fail once the server is gone");
    assert!(
        started.elapsed() < FAIL_WITHIN,
        "the failed read took {:?}",
        started.elapsed()
    );
    assert!(rest.len() < data.len() - MIB, "read past the stop");
    assert!(
        rest == data[MIB..MIB + rest.len()],
        "bytes before the error differ"
    );
    let err = err
        .into_inner()
        .and_then(|e| e.downcast::<StoreError>().ok())
        .expect("the reader's error carries the StoreError");
    assert_transient(&err);

    let started = Instant::now();
    let err = store.size(&key).unwrap_err();
    assert!(
        started.elapsed() < FAIL_WITHIN,
        "took {:?}",
        started.elapsed()
    );
    assert_transient(&err);

    garage.restart();
    let all = store.read_exact_range(&key, 0, data.len() as u64).unwrap();
    assert!(all == data, "data after restart differs");
    assert_eq!(store.size(&key).unwrap(), data.len() as u64);
}

#[test]
fn a_stalled_server_times_out_instead_of_hanging() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let store = garage.store_with("faults", &garage.options(TIMEOUT));
    let key = ObjectKey::header(Uuid::new_v4(), FileKind::Memfile);
    let data = noise(1, MIB);
    store.put_bytes(&key, &data).unwrap();

    garage.freeze(true);
    for attempt in [
        Box::new(|| store.size(&key).map(drop)) as Box<dyn Fn() -> Result<(), StoreError>>,
        Box::new(|| store.read_exact_range(&key, 0, 4096).map(drop)),
        Box::new(|| store.list_builds().map(drop)),
    ] {
        let started = Instant::now();
        let err = attempt().unwrap_err();
        assert!(
            started.elapsed() < FAIL_WITHIN,
            "took {:?}",
            started.elapsed()
        );
        assert!(
            started.elapsed() >= TIMEOUT,
            "failed before the timeout: {err}"
        );
        assert_transient(&err);
    }
    garage.freeze(false);
    assert_eq!(store.read_all(&key, 2 * MIB as u64).unwrap(), data);
}

#[test]
fn a_slow_reader_of_a_large_range_outlasts_the_request_timeout() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let store = garage.store_with("faults", &garage.options(TIMEOUT));
    let key = ObjectKey::data(Uuid::new_v4(), FileKind::Memfile, Compression::None);
    let data = noise(1, 32 * MIB);
    store.put_bytes(&key, &data).unwrap();
    let mut reader = store.read_range(&key, 0, data.len() as u64).unwrap();
    let mut got = vec![0u8; MIB];
    reader.read_exact(&mut got).unwrap();
    // Each part is a request of its own, timed on its own: a pause longer
    // than the timeout between parts is fine.
    std::thread::sleep(TIMEOUT + Duration::from_millis(500));
    reader.read_to_end(&mut got).unwrap();
    assert!(got == data, "bytes differ");

    // A range read in one request is fetched whatever the reader does.
    let mut reader = store.read_range(&key, 0, (4 * MIB) as u64).unwrap();
    let mut got = vec![0u8; 64 << 10];
    reader.read_exact(&mut got).unwrap();
    std::thread::sleep(TIMEOUT + Duration::from_millis(500));
    reader.read_to_end(&mut got).unwrap();
    assert!(got == data[..4 * MIB], "bytes differ");
}
