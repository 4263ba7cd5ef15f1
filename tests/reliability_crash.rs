//! A daemon killed (SIGKILL) while a reader waits inside it: the reader gets
//! an error rather than hanging, the next `tdfs mount` on the same
//! mountpoint clears the dead mount and serves right bytes, and the crashed
//! run's cache directory is discarded, never reused.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fixtures::fixture_store;
use common::mount::{MountGuard, fuse_available};
use common::process::{run_ok, wait_until};

/// The base build of the v3-none fixture (uncompressed objects).
const BASE: &str = "cd62c694-5fb3-4cd8-b26e-db3191758be8";
/// SHA-256 of its flattened memfile (the fixture's manifest.json).
const BASE_MEMFILE_SHA256: &str =
    "a9846a428541dc811c49ec867196a5c7b28b22b9dad824f34697396018be9140";

fn copy_dir(from: &Path, to: &Path) {
    run_ok("cp", ["-a", from.to_str().unwrap(), to.to_str().unwrap()]);
}

fn cache_dirs(cache: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(cache)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("mount-")
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

#[test]
fn a_reader_inside_a_killed_daemon_gets_an_error_and_the_next_mount_serves() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    copy_dir(&fixture_store("v3-none"), &store);
    let object = store.join(BASE).join("memfile");
    let original = fs::read(&object).unwrap();

    // A long fetch timeout: the reader is still waiting when the kill comes.
    let mount = MountGuard::start(&store, &["--fetch-timeout", "120"]);
    let memfile = mount.join(BASE).join("memfile");
    // Held open, so the diff's Chunker (made at open, with the object's
    // size) stays open while the object is swapped below.
    let _held = fs::File::open(&memfile).expect("open memfile");
    let cache = mount.path().parent().unwrap().join("cache");
    let before = cache_dirs(&cache);
    assert_eq!(before.len(), 1, "one cache directory per mount");

    // The data object becomes a FIFO nobody writes: the fetch never answers.
    fs::remove_file(&object).unwrap();
    run_ok("mkfifo", [object.to_str().unwrap()]);
    let requests = mount.stat("tdfs_store_requests_total");
    let mut reader = Command::new("timeout")
        .args(["-k", "5", "60", "dd"])
        .arg(format!("if={}", memfile.display()))
        .args(["of=/dev/null", "bs=1M", "count=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning dd");
    // Wait until the read reaches the daemon and blocks on the store (the
    // request is counted before it is made).
    wait_until(Duration::from_secs(30), "the read asking the store", || {
        mount.stat("tdfs_store_requests_total") > requests
    });
    assert!(
        reader.try_wait().expect("try_wait").is_none(),
        "the reader should still be waiting for the store"
    );

    let killed_at = Instant::now();
    let crashed = mount.crash();
    let out = reader.wait_with_output().expect("waiting for dd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && !matches!(out.status.code(), Some(124) | Some(137)),
        "the reader must fail, not hang or succeed ({}): {stderr}",
        out.status
    );
    assert!(
        killed_at.elapsed() < Duration::from_secs(30),
        "the reader took {:?} to see the crash",
        killed_at.elapsed()
    );
    assert!(
        [
            "Transport endpoint is not connected",
            "Input/output error",
            "Software caused connection abort"
        ]
        .iter()
        .any(|e| stderr.contains(e)),
        "unexpected error: {stderr}"
    );

    fs::remove_file(&object).unwrap();
    fs::write(&object, &original).unwrap();
    assert_eq!(
        cache_dirs(&cache),
        before,
        "the dead cache directory is left for the next mount"
    );

    let mount = MountGuard::options(&store).over(crashed).start();
    let after = cache_dirs(&cache);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(
        after, before,
        "the crashed run's cache directory is discarded"
    );
    assert!(
        mount
            .log()
            .contains("removing cache left by an earlier run"),
        "{}",
        mount.log()
    );
    let sum = run_ok("sha256sum", [memfile.to_str().unwrap()]);
    assert_eq!(sum.split_whitespace().next(), Some(BASE_MEMFILE_SHA256));
}
