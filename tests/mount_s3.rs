//! A store in S3 (a local Garage server) mounted as a daemon: the read
//! path's remote client starts in the daemon, after the fork, and serves the
//! same bytes as the local fixture store.

mod common;

use std::path::Path;

use common::digest::sha256_hex;
use common::fixtures::{fixture_store, manifest};
use common::garage::{Garage, REGION};
use common::mount::{LazyUnmount, fuse_available, is_mounted};
use common::process::{TDFS, run_ok, within};
use tdfs::format::{Blob, Compression, FileKind, ObjectKey, ObjectName, parse_build_id};
use tdfs::store::{PutOptions, WritableStore};

/// The object a fixture file is, or None for sidecars and non-objects.
fn object_name(file: &str) -> Option<ObjectName> {
    if let Some(kind) = file.strip_suffix(".header").and_then(FileKind::from_name) {
        return Some(ObjectName::Header(kind));
    }
    for compression in [Compression::Zstd, Compression::Lz4, Compression::None] {
        if let Some(kind) = file
            .strip_suffix(compression.suffix())
            .and_then(FileKind::from_name)
        {
            return Some(ObjectName::Data(kind, compression));
        }
    }
    Blob::ALL
        .into_iter()
        .find(|b| b.name() == file)
        .map(ObjectName::Blob)
}

/// Copy every build of a local store into `store`, with the sidecars'
/// uncompressed sizes as object metadata.
fn upload(local: &Path, store: &dyn WritableStore) -> usize {
    let mut objects = 0;
    for build_dir in std::fs::read_dir(local).unwrap() {
        let build_dir = build_dir.unwrap().path();
        let Some(build) = build_dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_build_id)
        else {
            continue;
        };
        for file in std::fs::read_dir(&build_dir).unwrap() {
            let path = file.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let Some(object) = object_name(&name) else {
                continue;
            };
            let sidecar = build_dir.join(format!("{name}.uncompressed-size"));
            let uncompressed_size = std::fs::read_to_string(sidecar)
                .ok()
                .map(|t| t.trim().parse().unwrap());
            store
                .put_file(
                    &ObjectKey::new(build, object),
                    &path,
                    PutOptions { uncompressed_size },
                )
                .unwrap();
            objects += 1;
        }
    }
    objects
}

#[test]
fn an_s3_store_mounted_as_a_daemon_reads_like_the_fixture() {
    if !fuse_available() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let local = fixture_store("v4-zstd");
    assert!(upload(&local, &garage.store("fixtures")) >= 3 * 6);

    // As a daemon: the object store client must be created after the fork.
    let work = tempfile::tempdir().unwrap();
    let mountpoint = work.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let endpoint = garage.endpoint();
    let out = std::process::Command::new("timeout")
        .args(["-k", "5", "60", TDFS, "mount"])
        .args(["--endpoint-url", &endpoint, "--region", REGION])
        .arg("--cache-dir")
        .arg(work.path().join("cache"))
        .arg("--log-file")
        .arg(work.path().join("tdfs.log"))
        .arg("s3://tdfs/fixtures")
        .arg(&mountpoint)
        .envs(garage.env())
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .unwrap();
    let unmount = LazyUnmount(mountpoint.clone());
    assert!(
        out.status.success(),
        "mounting the S3 store: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let manifest = manifest(&local);
    for build in manifest["builds"].as_array().unwrap() {
        let id = build["build_id"].as_str().unwrap();
        for (name, file) in build["files"].as_object().unwrap() {
            let path = mountpoint.join(id).join(name);
            let bytes = within(120, &format!("reading {id}/{name} from S3"), move || {
                std::fs::read(path).unwrap()
            });
            assert_eq!(
                sha256_hex(&bytes),
                file["sha256"].as_str().unwrap(),
                "{id}/{name}"
            );
        }
        let snapfile = std::fs::read(mountpoint.join(id).join("snapfile")).unwrap();
        assert_eq!(
            snapfile,
            std::fs::read(local.join(id).join("snapfile")).unwrap()
        );
    }
    run_ok("umount", [&mountpoint]);

    // A bucket that does not exist fails the start, not the first read.
    let out = std::process::Command::new("timeout")
        .args(["-k", "5", "60", TDFS, "mount"])
        .args(["--endpoint-url", &endpoint, "--region", REGION])
        .arg("--cache-dir")
        .arg(work.path().join("cache"))
        .arg("s3://no-such-bucket/x")
        .arg(&mountpoint)
        .envs(garage.env())
        .output()
        .unwrap();
    assert!(!out.status.success(), "mounted a missing bucket");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-bucket"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&mountpoint));
    drop(unmount);
}
