//! Each build's own diffs as files: `<build>/diff/memfile` and
//! `<build>/diff/rootfs.ext4` through a real mount, for uncompressed, zstd
//! and lz4 stores, equal the oracle's decoding of the data object, and
//! `sha256sum` of each equals the SHA-256 its V4/V5 header records.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::digest::{hex, sha256_hex};
use common::fixtures::{fixture_store, manifest};
use common::mount::{MountGuard, fuse_available};
use common::oracle::{read_header, whole_diff};
use common::process::{run_ok, within};
use tdfs::format::FileKind;
use tdfs::store::{LocalStore, Store};
use uuid::Uuid;

#[test]
fn v3_uncompressed_diffs() {
    check_diffs("v3-none");
}

#[test]
fn v4_zstd_diffs() {
    check_diffs("v4-zstd");
}

#[test]
fn v4_lz4_diffs() {
    check_diffs("v4-lz4");
}

#[test]
fn v5_zstd_dedup_diffs() {
    check_diffs("v5-zstd-dedup");
}

fn check_diffs(name: &str) {
    if !fuse_available() {
        return;
    }
    let store_dir = fixture_store(name);
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(store_dir.clone()).expect("store"));
    let mount = MountGuard::start(&store_dir, &[]);
    let manifest = manifest(&store_dir);
    for build in manifest["builds"].as_array().expect("builds") {
        let id = build["build_id"].as_str().expect("build_id");
        let build_id = Uuid::parse_str(id).expect("uuid");
        let dir = mount.join(Path::new(id).join("diff"));
        let mut listed: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("list {name}/{id}/diff: {e}"))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        listed.sort();
        assert_eq!(listed, ["memfile", "rootfs.ext4"], "{name}/{id}/diff");

        for file in FileKind::ALL {
            let what = format!("{name}/{id}/diff/{file}");
            let path = dir.join(file.name());
            let expected = whole_diff(store.as_ref(), build_id, file);
            let manifest_size = build["files"][file.name()]["diff_size"]
                .as_u64()
                .expect("diff_size");
            let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("stat {what}: {e}"));
            assert_eq!(meta.len(), expected.len() as u64, "size of {what}");
            assert_eq!(meta.len(), manifest_size, "size of {what} (manifest)");

            let mounted = {
                let path = path.clone();
                within(120, &format!("reading {what}"), move || {
                    std::fs::read(&path).expect("read mounted diff")
                })
            };
            assert!(
                mounted == expected,
                "{what} differs from the decoded object"
            );

            let sum = run_ok("sha256sum", [path.to_str().expect("path")]);
            let sum = sum.split_whitespace().next().expect("sha256sum output");
            assert_eq!(sum, sha256_hex(&expected), "sha256sum of {what}");
            let header = read_header(store.as_ref(), build_id, file);
            if header.metadata.format_version() >= 4 {
                let entry = header.build(&build_id).expect("own builds entry");
                assert_eq!(sum, hex(&entry.sha256), "{what} against its header");
            }
        }
    }
    // Read-only like every file of the mount.
    let any = manifest["builds"][0]["build_id"]
        .as_str()
        .expect("build_id");
    let memfile = mount.join(Path::new(any).join("diff").join("memfile"));
    assert!(
        std::fs::OpenOptions::new()
            .write(true)
            .open(&memfile)
            .is_err(),
        "a diff is read-only"
    );
}
