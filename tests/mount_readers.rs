//! Many readers of one template at once, on a slow store (the mount's
//! `--bench-throttle`: 20 ms to first byte, 100 MB/s per request), cold:
//! three `sha256sum`s of one memfile, and three of layers sharing one base.
//! Each open file keeps its own read-ahead window, and the Chunkers skip
//! units already present or in flight, so the bytes fetched from the store
//! (`.stats`) stay at the unique bytes, and every reader gets the packed
//! image's bytes.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use common::digest::sha256_hex;
use common::mount::{MountGuard, fuse_available};
use common::process::tdfs_pack;
use common::rng::Rng;

const MEMFILE_SIZE: usize = 32 << 20;
const ROOTFS_SIZE: usize = 1 << 20;
const BASE: &str = "22222222-3333-4444-8555-666666666600";
const LAYERS: [&str; 3] = [
    "22222222-3333-4444-8555-666666666601",
    "22222222-3333-4444-8555-666666666602",
    "22222222-3333-4444-8555-666666666603",
];
const SLOW_STORE: [&str; 2] = ["--bench-throttle", "20ms,100MB"];

/// The base (zstd) and three zstd layers packed on it, each rewriting a few
/// 2 MiB blocks of the memfile; returns each build's memfile SHA-256.
fn make_store(root: &Path, scratch: &Path) -> Vec<(String, String)> {
    let mut rng = Rng(0x0015_2026);
    let mut base = vec![0u8; MEMFILE_SIZE];
    // Zero regions, as real memfiles have.
    rng.fill(&mut base[..MEMFILE_SIZE - (6 << 20)]);
    let rootfs = vec![0u8; ROOTFS_SIZE];
    let rootfs_path = scratch.join("rootfs");
    fs::write(&rootfs_path, &rootfs).unwrap();
    let mut digests = Vec::new();
    let mut pack = |id: &str, memfile: &[u8], extra: &[&str]| {
        let path = scratch.join(format!("{id}.mem"));
        fs::write(&path, memfile).unwrap();
        let mut args = vec!["--compress", "zstd"];
        args.extend(extra);
        tdfs_pack(root, id, &path, &rootfs_path, &args);
        digests.push((id.to_string(), sha256_hex(memfile)));
    };
    pack(BASE, &base, &[]);
    for id in LAYERS {
        let mut layer = base.clone();
        for _ in 0..3 {
            let block = rng.below((MEMFILE_SIZE >> 21) as u64) as usize;
            rng.fill(&mut layer[block << 21..(block + 1) << 21]);
        }
        pack(id, &layer, &["--base", BASE]);
    }
    digests
}

/// Bytes of `build`'s memfile data object in the store.
fn memfile_object_bytes(root: &Path, build: &str) -> u64 {
    fs::metadata(root.join(build).join("memfile.zstd"))
        .unwrap()
        .len()
}

/// `sha256sum` of every build's memfile at once, one process each; checks
/// each against the packed image's digest.
fn read_all_at_once(mount: &MountGuard, builds: &[&(String, String)]) {
    let readers: Vec<_> = builds
        .iter()
        .map(|(id, _)| {
            Command::new("sha256sum")
                .arg(mount.join(id).join("memfile"))
                .stdout(Stdio::piped())
                .spawn()
                .expect("sha256sum")
        })
        .collect();
    for (reader, (id, want)) in readers.into_iter().zip(builds) {
        let out = reader.wait_with_output().unwrap();
        assert!(out.status.success(), "sha256sum of {id}/memfile failed");
        let got = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            got.split_whitespace().next(),
            Some(want.as_str()),
            "{id}/memfile"
        );
    }
}

#[test]
fn readers_of_one_memfile_and_of_layers_on_one_base_fetch_each_unit_once() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (root, scratch) = (dir.path().join("store"), dir.path().join("scratch"));
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&scratch).unwrap();
    let digests = make_store(&root, &scratch);

    // Three readers of the same memfile: its object is fetched once.
    let mount = MountGuard::start(&root, &SLOW_STORE);
    let base = &digests[0];
    read_all_at_once(&mount, &[base, base, base]);
    let fetched = mount.stat("tdfs_store_bytes_total");
    let stored = memfile_object_bytes(&root, BASE);
    assert!(
        fetched as f64 <= 1.05 * stored as f64,
        "3 readers of one memfile fetched {fetched} bytes of a {stored}-byte object"
    );
    assert!(mount.stat("tdfs_readahead_fetches_total") > 0);
    drop(mount);

    // Three layers on one base, read at once on a fresh (cold) mount: the
    // base's bytes are fetched once for all of them.
    let mount = MountGuard::start(&root, &SLOW_STORE);
    let layers: Vec<_> = digests[1..].iter().collect();
    read_all_at_once(&mount, &layers);
    let fetched = mount.stat("tdfs_store_bytes_total");
    let unique: u64 = [BASE]
        .into_iter()
        .chain(LAYERS)
        .map(|id| memfile_object_bytes(&root, id))
        .sum();
    assert!(
        fetched as f64 <= 1.1 * unique as f64,
        "3 layers fetched {fetched} bytes; their objects hold {unique}"
    );
    assert!(mount.stat("tdfs_readahead_fetches_total") > 0);
}
