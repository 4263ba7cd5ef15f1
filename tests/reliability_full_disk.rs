//! A full cache disk: with `--cache-dir` on a 2 MiB tmpfs, files far larger
//! than it still read right (the chunker serves units it cannot cache
//! straight from the store) and the mount warns about it once.
//! Needs root (to mount the tmpfs).

mod common;

use std::fs;

use common::mount::{MountGuard, fuse_available};
use common::process::{run, tdfs_pack};
use common::rng::noise;
use common::tmpfs::Tmpfs;

const MEMFILE_SIZE: usize = 24 << 20;
const ROOTFS_SIZE: usize = 4 << 20;
/// Two independent builds of the same images: compressed and not.
const BUILDS: [(&str, &str); 2] = [
    ("7b1e9c2a-3d4f-4e5a-8b6c-7d8e9f0a1b2c", "zstd"),
    ("7b1e9c2a-3d4f-4e5a-8b6c-7d8e9f0a1b2d", "none"),
];

#[test]
fn reads_succeed_when_the_cache_disk_is_full() {
    if !fuse_available() {
        return;
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test mounts a tmpfs and needs root");
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let memfile = noise(7, MEMFILE_SIZE);
    for (name, data) in [("mem", &memfile), ("rootfs", &noise(8, ROOTFS_SIZE))] {
        fs::write(dir.path().join(name), data).unwrap();
    }
    for (build, compress) in BUILDS {
        tdfs_pack(
            &store,
            build,
            &dir.path().join("mem"),
            &dir.path().join("rootfs"),
            &["--compress", compress],
        );
    }
    let cache = dir.path().join("small-cache");
    let _tmpfs = Tmpfs::mount(&cache, "2m");
    let mount = MountGuard::start(&store, &["--cache-dir", cache.to_str().unwrap()]);

    for (build, _) in BUILDS {
        let path = mount.join(build).join("memfile");
        for _ in 0..2 {
            let out = run(
                "dd",
                [&format!("if={}", path.display()), "bs=1M", "status=none"],
            );
            assert!(
                out.status.success(),
                "reading with a full cache disk: {}\nlog:\n{}",
                String::from_utf8_lossy(&out.stderr),
                mount.log()
            );
            assert!(out.stdout == memfile, "wrong bytes with a full cache disk");
        }
    }
    let log = mount.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("no space"))
        .count();
    assert_eq!(warnings, 2, "one warning per object; log:\n{log}");
}
