//! `tdfs mount --peer-registry`: a build paused on an E2B node and not yet
//! uploaded is read from that node (an E2B-like peer in Python, registered
//! in a real redis-server), byte-exact; once the node says `use_storage`
//! (or the store has the build) the mount reads the store, byte-exact, and
//! counts the switch; a dead origin gives EIO, never wrong bytes, until
//! the build is in the store. The builds are the v4-zstd fixture's (an
//! independent E2B writer, SHA-256 manifest).

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::digest::{sha256_hex, sha256_of_file};
use common::e2b::E2bPeer;
use common::fixtures::{fixture_store, manifest_build};
use common::mount::{MountGuard, fuse_available};
use common::process::{run_ok, wait_until};
use common::redis::RedisServer;
use tdfs::format::{Header, METADATA_LEN};

/// The top layer of the v4-zstd fixture: its template files map its own
/// diff and both ancestors' (zstd frames, 2 MiB memfile blocks, 4 KiB
/// rootfs blocks).
const BUILD: &str = "1be99a9b-c149-472e-9bf0-63629925f54a";
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// The listing TTL (5 s), after which an origin's objects are checked
/// against the store, with room.
const SWITCH_WITHIN: Duration = Duration::from_secs(20);

/// The objects an E2B node holds for `BUILD` while uploading it, made from
/// the fixture: headers as V5 with flags bit 0 and no entry for the build
/// itself, its own diffs uncompressed (from a mount's diff view), blobs.
fn origin_dir(fixture: &Path, dir: &Path) {
    let mount = MountGuard::start(fixture, &[]);
    for file in ["memfile", "rootfs.ext4"] {
        std::fs::copy(mount.join(format!("{BUILD}/diff/{file}")), dir.join(file)).unwrap();
        let stored = std::fs::read(fixture.join(format!("{BUILD}/{file}.header"))).unwrap();
        let mut header = Header::decode(&stored).unwrap();
        let id = uuid::Uuid::parse_str(BUILD).unwrap();
        header.builds.retain(|b| b.build_id != id);
        let mut pending = header.encode(5).unwrap();
        pending[METADATA_LEN] |= 1;
        assert!(Header::decode(&pending).is_err(), "a store would refuse it");
        std::fs::write(dir.join(format!("{file}.header")), pending).unwrap();
    }
    for blob in ["snapfile", "metadata.json"] {
        std::fs::copy(fixture.join(format!("{BUILD}/{blob}")), dir.join(blob)).unwrap();
    }
}

/// Every file of `BUILD` read through `mount`, compared with the fixture.
fn check_every_file(mount: &MountGuard, fixture: &Path) -> Result<(), String> {
    let manifest = manifest_build(fixture, BUILD);
    for file in ["memfile", "rootfs.ext4"] {
        let got = sha256_of_file(&mount.join(format!("{BUILD}/{file}")))
            .map_err(|e| format!("{file}: {e}"))?;
        let want = manifest["files"][file]["sha256"].as_str().unwrap();
        if got != want {
            return Err(format!("{file}: sha256 {got}, want {want}"));
        }
    }
    for blob in ["snapfile", "metadata.json"] {
        let got = std::fs::read(mount.join(format!("{BUILD}/{blob}")))
            .map_err(|e| format!("{blob}: {e}"))?;
        if got != std::fs::read(fixture.join(format!("{BUILD}/{blob}"))).unwrap() {
            return Err(format!("{blob}: other bytes than the fixture's"));
        }
    }
    Ok(())
}

/// `fixture` without `BUILD`, as a store that has not got the upload yet.
fn store_without_build(fixture: &Path, store: &Path) {
    run_ok(
        "cp",
        [
            "-r",
            &format!("{}/.", fixture.display()),
            store.to_str().unwrap(),
        ],
    );
    std::fs::remove_dir_all(store.join(BUILD)).unwrap();
}

/// The "upload": `BUILD` copied into the store.
fn upload(fixture: &Path, store: &Path) {
    run_ok(
        "cp",
        [
            "-r",
            fixture.join(BUILD).to_str().unwrap(),
            store.to_str().unwrap(),
        ],
    );
}

fn mount_with_registry(store: &Path, redis: &RedisServer) -> MountGuard {
    let url = redis.url();
    let timeout = format!("{}", FETCH_TIMEOUT.as_secs());
    MountGuard::start(
        store,
        &[
            "--peer-registry",
            &url,
            "--fetch-timeout",
            &timeout,
            "--peer-timeout",
            "2s",
        ],
    )
}

#[test]
fn a_build_being_uploaded_reads_from_its_origin_then_from_the_store() {
    if !fuse_available() {
        return;
    }
    let fixture = fixture_store("v4-zstd");
    let peer_dir = tempfile::tempdir().unwrap();
    origin_dir(&fixture, peer_dir.path());
    let store = tempfile::tempdir().unwrap();
    store_without_build(&fixture, store.path());
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let peer = E2bPeer::start(peer_dir.path(), BUILD, &redis, (2 << 20, 4096));

    // Not in the store's listing, openable by id through its origin.
    let reader = mount_with_registry(store.path(), &redis);
    let later = mount_with_registry(store.path(), &redis);
    // Files held open across the switch: their first bytes read now, from
    // the origin (the uncompressed diff), the rest after it (the store's
    // zstd frames).
    let held_mount = mount_with_registry(store.path(), &redis);
    let mut held = Vec::new();
    for file in ["memfile", "rootfs.ext4"] {
        let f = std::fs::File::open(held_mount.join(format!("{BUILD}/{file}"))).unwrap();
        let mut first = vec![0; 64 << 10];
        f.read_exact_at(&mut first, 0).unwrap();
        held.push((file, f, first));
    }
    check_every_file(&reader, &fixture).unwrap();
    assert!(reader.stat("tdfs_peer_bytes_total") > 0, "{}", reader.log());
    assert_eq!(reader.stat("tdfs_origin_switches_total"), 0);
    // The other mount only saw the build's directory so far.
    assert!(later.join(BUILD).join("memfile").exists());

    upload(&fixture, store.path());
    peer.flip();

    // Its first read after the flip meets use_storage and reads the store.
    check_every_file(&later, &fixture).unwrap();
    assert_eq!(
        later.stat("tdfs_origin_switches_total"),
        1,
        "{}",
        later.log()
    );
    assert!(later.stat("tdfs_peer_fallbacks_total{reason=\"use_storage\"}") > 0);

    // The held files read on through the store, right bytes, no EIO.
    let manifest = manifest_build(&fixture, BUILD);
    for (file, f, first) in held {
        let mut all = first;
        let size = f.metadata().unwrap().len() as usize;
        all.resize(size, 0);
        f.read_exact_at(&mut all[64 << 10..], 64 << 10)
            .unwrap_or_else(|e| {
                panic!(
                    "{file} held open across the switch: {e}\n{}",
                    held_mount.log()
                )
            });
        assert_eq!(
            sha256_hex(&all),
            manifest["files"][file]["sha256"].as_str().unwrap(),
            "{file} held open across the switch"
        );
    }
    assert_eq!(held_mount.stat("tdfs_origin_switches_total"), 1);

    // The mount that read everything from the origin moves to the store
    // too (at the latest when its origin copies are checked again).
    wait_until(SWITCH_WITHIN, "the reader switched to the store", || {
        check_every_file(&reader, &fixture)?;
        match reader.stat("tdfs_origin_switches_total") {
            1 => Ok(()),
            n => Err(format!("{n} switches")),
        }
    });
}

#[test]
fn a_dead_origin_gives_eio_until_the_build_is_in_the_store() {
    if !fuse_available() {
        return;
    }
    let fixture = fixture_store("v4-zstd");
    let peer_dir = tempfile::tempdir().unwrap();
    origin_dir(&fixture, peer_dir.path());
    let store = tempfile::tempdir().unwrap();
    store_without_build(&fixture, store.path());
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut peer = E2bPeer::start(peer_dir.path(), BUILD, &redis, (2 << 20, 4096));

    let mount = mount_with_registry(store.path(), &redis);
    assert!(mount.join(BUILD).join("memfile").exists());
    peer.kill();
    for file in ["memfile", "rootfs.ext4"] {
        let start = Instant::now();
        let err = std::fs::read(mount.join(format!("{BUILD}/{file}")))
            .expect_err("no bytes without the origin or the store");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{file}: {err}");
        assert!(
            start.elapsed() < FETCH_TIMEOUT + Duration::from_secs(2),
            "{file}: failed after {:?}",
            start.elapsed()
        );
    }

    upload(&fixture, store.path());
    wait_until(SWITCH_WITHIN, "reads from the store", || {
        check_every_file(&mount, &fixture)
    });
}
