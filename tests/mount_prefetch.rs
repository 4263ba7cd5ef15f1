//! Prefetch on a real mount: a build whose metadata.json lists blocks gets
//! them cached when its memfile is opened, before any read; a working set
//! stored together costs a few store requests (runs), not one per unit; a
//! layered build without a trace can replay its own diff (last cycle); a
//! read during a prefetch from a slow store is not held up behind it; bad
//! traces of every kind leave the mount serving right bytes, with one
//! warning.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::digest::sha256_hex;
use common::fixtures::{fixture_store, manifest_build};
use common::mount::{MountGuard, PREFETCH_XATTR, fuse_available, settled, xattr};
use common::process::{run_ok, tdfs_pack, wait_until};
use common::rng::{Rng, noise};
use serde_json::{Value, json};
use tdfs::chunker::MAX_RUN_BYTES;

/// A layer of the v4-zstd fixture: a 16 MiB memfile in 1 MiB frames.
const LAYER: &str = "bd87702b-8d31-4e8d-beda-66b642c931a9";
const MEMFILE_SIZE: u64 = 16 << 20;

/// A copy of the v4-zstd fixture store whose layer's metadata.json (E2B's,
/// every key kept) gets `prefetch` (raw JSON text, or not JSON at all).
fn store_with_prefetch(prefetch: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    run_ok(
        "cp",
        [
            "-r",
            fixture_store("v4-zstd").to_str().unwrap(),
            store.to_str().unwrap(),
        ],
    );
    let path = store.join(LAYER).join("metadata.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let body = text.trim_end().strip_suffix('}').unwrap();
    std::fs::write(&path, format!("{body}, \"prefetch\": {prefetch}}}")).unwrap();
    (dir, store)
}

fn expected_sha() -> String {
    let build = manifest_build(&fixture_store("v4-zstd"), LAYER);
    build["files"]["memfile"]["sha256"]
        .as_str()
        .unwrap()
        .to_string()
}

fn trace(indices: Value, types: usize, block_size: u64) -> String {
    json!({
        "memory": {
            "indices": indices,
            "access_types": vec!["r"; types],
            "block_size": block_size,
        }
    })
    .to_string()
}

#[test]
fn listed_blocks_are_cached_without_a_read() {
    if !fuse_available() {
        return;
    }
    // Blocks in three of the sixteen 1 MiB frames.
    let (_dir, store) = store_with_prefetch(&trace(json!([0, 1, 1024, 3840]), 4, 4096));
    let mount = MountGuard::start(&store, &[]);
    let memfile = mount.join(format!("{LAYER}/memfile"));
    assert_eq!(
        xattr(&memfile, PREFETCH_XATTR),
        "none",
        "nothing starts before an open"
    );
    let file = std::fs::File::open(&memfile).unwrap();
    assert_eq!(settled(&memfile), "done (trace from metadata.json)");
    assert_eq!(mount.stat("tdfs_reads_total"), 0, "no read was made");
    let fetched = mount.stat("tdfs_prefetch_fetches_total");
    assert!((1..=3).contains(&fetched), "{fetched} prefetch fetches");
    assert!(
        mount.stat("tdfs_prefetch_bytes_total") >= 1 << 20,
        "whole frames"
    );
    let stores = mount.stat("tdfs_store_requests_total");

    let bytes = std::fs::read(&memfile).unwrap();
    drop(file);
    assert_eq!(sha256_hex(&bytes), expected_sha());
    assert!(mount.stat("tdfs_prefetch_hits_total") > 0);
    assert!(mount.stat("tdfs_store_requests_total") > stores);
}

const MIB: u64 = 1 << 20;

/// Pack `memfile` (and a small rootfs) into `store` as `build`, with
/// `extra` options.
fn pack(dir: &Path, store: &Path, build: &str, memfile: &[u8], extra: &[&str]) {
    let (m, r) = (dir.join("memfile.img"), dir.join("rootfs.img"));
    std::fs::write(&m, memfile).unwrap();
    std::fs::write(&r, noise(7, MIB as usize)).unwrap();
    tdfs_pack(store, build, &m, &r, extra);
}

/// A working set that lies together in the object is fetched in runs: the
/// replay of a trace over a contiguous stretch of a template-order build
/// (its blocks in a shuffled first-touch order) on a fresh mount makes at
/// most ⌈trace bytes / run size⌉ + 2 store requests (compressed frames and
/// uncompressed chunks alike), and every block of the trace is cached
/// before any read: reading them all afterwards asks the store nothing.
#[test]
fn a_working_set_stored_together_costs_a_few_requests() {
    if !fuse_available() {
        return;
    }
    const BUILD: &str = "22222222-0000-4000-8000-000000000001";
    let image = noise(22, (48 * MIB) as usize);
    // The last 40 MiB: 20 frames of 2 MiB, 10 chunks of 4 MiB. Nothing
    // lies past it, so the reads' own read-ahead (tdfs's or the kernel's)
    // has nothing to fetch.
    let stretch = 8 * MIB..48 * MIB;
    let mut indices: Vec<u64> = (stretch.start / 4096..stretch.end / 4096).collect();
    let mut rng = Rng(5);
    for i in (1..indices.len()).rev() {
        indices.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let trace_bytes = stretch.end - stretch.start;
    let most = trace_bytes.div_ceil(MAX_RUN_BYTES) + 2;
    for compress in ["zstd", "none"] {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let trace = dir.path().join("trace.json");
        std::fs::write(
            &trace,
            json!({"indices": indices, "block_size": 4096}).to_string(),
        )
        .unwrap();
        pack(
            dir.path(),
            &store,
            BUILD,
            &image,
            &[
                "--compress",
                compress,
                "--memfile-block-size",
                "4KiB",
                "--prefetch-memfile",
                trace.to_str().unwrap(),
            ],
        );
        let mount = MountGuard::start(&store, &[]);
        let memfile = mount.join(format!("{BUILD}/memfile"));
        let file = std::fs::File::open(&memfile).unwrap();
        assert_eq!(
            settled(&memfile),
            "done (trace from metadata.json)",
            "{compress}"
        );
        assert_eq!(mount.stat("tdfs_reads_total"), 0, "{compress}: no read yet");
        let requests = mount.stat("tdfs_store_requests_total");
        assert!(
            requests <= most,
            "{compress}: {requests} store requests for a {trace_bytes}-byte working set \
             stored together (at most {most})"
        );
        let mut got = vec![0; trace_bytes as usize];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut got, stretch.start).unwrap();
        assert!(
            got == image[stretch.start as usize..stretch.end as usize],
            "{compress}: wrong bytes"
        );
        assert_eq!(
            mount.stat("tdfs_store_requests_total"),
            requests,
            "{compress}: every block of the trace was cached before the reads"
        );
    }
}

/// `--prefetch-source trace,last-cycle`: a layered build with no trace
/// replays its own diff blocks (E2B's last cycle), so its own diff is
/// cached before any read and in few requests (a layer's diff lies
/// together in its object); the xattr says so. Without the flag nothing is
/// replayed.
#[test]
fn last_cycle_prefetches_a_layers_own_blocks() {
    if !fuse_available() {
        return;
    }
    const BASE: &str = "22222222-0000-4000-8000-00000000000b";
    const LAYER: &str = "22222222-0000-4000-8000-00000000000c";
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut image = noise(3, (32 * MIB) as usize);
    let options = ["--compress", "zstd", "--memfile-block-size", "4KiB"];
    pack(dir.path(), &store, BASE, &image, &options);
    // A VM that dirtied a stretch and pages here and there.
    image[(8 * MIB) as usize..(12 * MIB) as usize].fill(0x5a);
    Rng(9).mutate(&mut image, 200);
    let mut layered = options.to_vec();
    layered.extend(["--base", BASE]);
    pack(dir.path(), &store, LAYER, &image, &layered);

    let mount = MountGuard::start(&store, &[]);
    let memfile = mount.join(format!("{LAYER}/memfile"));
    let _file = std::fs::File::open(&memfile).unwrap();
    // Nothing to settle: the state stays `none`.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(xattr(&memfile, PREFETCH_XATTR), "none", "off by default");
    drop(mount);

    let mount = MountGuard::start(&store, &["--prefetch-source", "trace,last-cycle"]);
    let memfile = mount.join(format!("{LAYER}/memfile"));
    let file = std::fs::File::open(&memfile).unwrap();
    assert_eq!(settled(&memfile), "done (last cycle: the build's own diff)");
    assert!(
        mount.log().contains("prefetch from last cycle"),
        "{}",
        mount.log()
    );
    let requests = mount.stat("tdfs_store_requests_total");
    let diff = std::fs::read(mount.join(format!("{LAYER}/diff/memfile"))).unwrap();
    assert!(
        requests <= (diff.len() as u64).div_ceil(MAX_RUN_BYTES) + 2,
        "{requests} store requests for a {}-byte diff",
        diff.len()
    );
    assert_eq!(
        mount.stat("tdfs_store_requests_total"),
        requests,
        "the layer's own diff was all cached"
    );
    let base = mount.join(format!("{BASE}/memfile"));
    let base_file = std::fs::File::open(&base).unwrap();
    // Nothing to settle: the state stays `none`.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        xattr(&base, PREFETCH_XATTR),
        "none",
        "the base is no layer: nothing to replay"
    );
    drop(base_file);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut &file, &mut bytes).unwrap();
    assert!(bytes == image, "the layer reads right");
}

#[test]
fn prefetch_off_replays_nothing() {
    if !fuse_available() {
        return;
    }
    let (_dir, store) = store_with_prefetch(&trace(json!([0, 1024]), 2, 4096));
    let mount = MountGuard::start(&store, &["--prefetch", "off"]);
    let memfile = mount.join(format!("{LAYER}/memfile"));
    let _file = std::fs::File::open(&memfile).unwrap();
    assert!(settled(&memfile).starts_with("skipped: prefetch is off"));
    assert_eq!(mount.stat("tdfs_prefetch_fetches_total"), 0);
}

/// Prefetch leaves a quarter of the fetch pool idle and queues only when no
/// reader waits: a read of a unit the trace does not list, from a store
/// with 20 ms to first byte and 10 MB/s per request, takes about one fetch
/// (20 ms + 1 MiB at 10 MB/s ≈ 125 ms), however long the trace.
#[test]
fn reads_during_a_prefetch_are_not_held_up() {
    if !fuse_available() {
        return;
    }
    // Every block of the first 15 frames, in order: the last frame stays
    // for the reader.
    let listed: Vec<u64> = (0..15 * 256).collect();
    let (_dir, store) = store_with_prefetch(&trace(json!(listed), listed.len(), 4096));
    let mount = MountGuard::start(&store, &["--bench-throttle", "20ms,10MB"]);
    let memfile = mount.join(format!("{LAYER}/memfile"));
    let _file = std::fs::File::open(&memfile).unwrap();
    // The replay starts once the trace is fetched (20 ms) and parsed: wait
    // for it (bounded), then read while it runs (15 frames of 1 MiB at 10
    // MB/s per request, 4 at a time, take about half a second).
    let state = wait_until(Duration::from_secs(5), "prefetch started", || {
        Some(xattr(&memfile, PREFETCH_XATTR)).filter(|s| s != "none")
    });
    assert!(state.starts_with("running"), "prefetch runs: {state}");
    let start = Instant::now();
    let mut buf = vec![0; 4096];
    let f = std::fs::File::open(&memfile).unwrap();
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, MEMFILE_SIZE - 4096).unwrap();
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(1000),
        "a read during prefetch took {took:?}"
    );
    assert!(settled(&memfile).starts_with("done"));
}

#[test]
fn bad_traces_leave_right_bytes_and_one_warning() {
    if !fuse_available() {
        return;
    }
    let millions: Vec<u64> = (0..1_100_000).map(|i| i % 4096).collect();
    let cases: [(&str, String, &str); 6] = [
        ("not JSON", "{not json".to_string(), "skipped"),
        (
            "indices past the end",
            trace(json!([1, 99999, u64::MAX]), 3, 4096),
            "done",
        ),
        ("lengths disagree", trace(json!([1, 2, 3]), 1, 4096), "done"),
        ("block_size 0", trace(json!([1]), 1, 0), "skipped"),
        ("block_size 12288", trace(json!([1]), 1, 12288), "skipped"),
        (
            "millions of entries",
            trace(json!(millions), millions.len(), 4096),
            "done",
        ),
    ];
    for (what, prefetch, outcome) in cases {
        let (_dir, store) = store_with_prefetch(&prefetch);
        let mount = MountGuard::start(&store, &[]);
        let memfile = mount.join(format!("{LAYER}/memfile"));
        // Held open until the state settles: a file closed while its trace
        // is still being parsed (a big one takes a while) drops its prefetch.
        let mut open = std::fs::File::open(&memfile).unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut open, &mut bytes).unwrap();
        assert_eq!(sha256_hex(&bytes), expected_sha(), "{what}");
        let state = settled(&memfile);
        drop(open);
        assert!(state.starts_with(outcome), "{what}: {state}");
        let log = mount.log();
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("prefetch"))
            .collect();
        assert_eq!(warnings.len(), 1, "{what}: {log}");
        assert!(warnings[0].contains(LAYER), "{what}: {}", warnings[0]);
    }
}
