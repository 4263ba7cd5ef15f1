//! `tdfs mount --verify-checksums`: once a diff is wholly cached it is
//! checked against the SHA-256 in its V4/V5 header. A diff that matches
//! keeps being served; one that does not is logged and every later read of
//! it fails with EIO.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use common::mount::{MountGuard, fuse_available};
use common::process::tdfs_pack;
use common::rng::noise;

const MEMFILE_SIZE: usize = 8 << 20;
const GOOD_ZSTD: &str = "5c0ffee0-0000-4000-8000-000000000001";
const GOOD_PLAIN: &str = "5c0ffee0-0000-4000-8000-000000000002";
const DAMAGED: &str = "5c0ffee0-0000-4000-8000-000000000003";

/// Read all of `path`, bypassing the page cache, in a child under `timeout`.
fn read_direct(path: &Path) -> (bool, Vec<u8>, String) {
    let out = Command::new("timeout")
        .args(["-k", "5", "60", "dd"])
        .arg(format!("if={}", path.display()))
        .args(["bs=1M", "iflag=direct", "status=none"])
        .stdin(Stdio::null())
        .output()
        .expect("running dd");
    assert!(
        !matches!(out.status.code(), Some(124) | Some(137) | None),
        "reading {} hung",
        path.display()
    );
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn whole_diffs_are_checked_and_a_mismatch_fails_later_reads() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let memfile = noise(21, MEMFILE_SIZE);
    fs::write(dir.path().join("mem"), &memfile).unwrap();
    fs::write(dir.path().join("rootfs"), noise(22, 1 << 20)).unwrap();
    for (build, compress) in [(GOOD_ZSTD, "zstd"), (GOOD_PLAIN, "none"), (DAMAGED, "none")] {
        tdfs_pack(
            &store,
            build,
            &dir.path().join("mem"),
            &dir.path().join("rootfs"),
            &["--compress", compress, "--header-version", "4"],
        );
    }
    // A flipped byte in an uncompressed diff: no frame checksum can see it,
    // only the header's SHA-256 of the whole diff.
    let object = store.join(DAMAGED).join("memfile");
    let mut bytes = fs::read(&object).unwrap();
    bytes[3 << 20] ^= 1;
    fs::write(&object, &bytes).unwrap();

    let mount = MountGuard::options(&store)
        .args(&["--verify-checksums"])
        .env(&[("RUST_LOG", "info,tdfs::chunker=debug".to_string())])
        .start();
    for build in [GOOD_ZSTD, GOOD_PLAIN] {
        let path = mount.join(build).join("memfile");
        for _ in 0..2 {
            let (ok, data, stderr) = read_direct(&path);
            assert!(ok, "{build}: {stderr}\nlog:\n{}", mount.log());
            assert!(data == memfile, "{build}: wrong bytes");
        }
    }
    for build in [GOOD_ZSTD, GOOD_PLAIN] {
        mount.wait_for_log(&format!("{build} was checked"), |l| {
            l.contains(build) && l.contains("whole diff matches its SHA-256")
        });
    }

    // The read that completes the damaged diff is served (the check runs
    // once all of it is cached); the check then fails it for good.
    let damaged = mount.join(DAMAGED).join("memfile");
    let _ = read_direct(&damaged);
    let key = format!("{DAMAGED}/memfile");
    mount.wait_for_log("a checksum error logged", |l| {
        l.contains("ERROR") && l.contains(&key) && l.contains("SHA-256")
    });
    let (ok, data, stderr) = read_direct(&damaged);
    assert!(!ok && data.is_empty(), "the damaged diff is still served");
    assert!(stderr.contains("Input/output error"), "{stderr}");
    // The good builds are untouched, and no checksum error names them.
    let (ok, data, _) = read_direct(&mount.join(GOOD_PLAIN).join("memfile"));
    assert!(ok && data == memfile);
    let log = mount.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("ERROR") && (l.contains(GOOD_ZSTD) || l.contains(GOOD_PLAIN))),
        "{log}"
    );
}
