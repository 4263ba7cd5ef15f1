//! A damaged cache file never kills the daemon (issue 13, part 2). Every
//! `*.cache` file of a mount truncated to 0 bytes under it (an operator
//! cleaning the cache directory), the kernel's caches dropped: every file
//! of a demo store still reads right, twice, the daemon stays up and
//! `.stats` counts the damage. A cache directory whose disk starts failing
//! (a loop device whose capacity is cut below the cache files) never serves
//! a wrong byte and never kills the daemon. Limitation: the daemon keeps
//! its cache pages mapped, so `drop_caches` does not evict them and the
//! failing disk is not read in this test; the EIO path is the truncation
//! path with another error (`chunker_damage`, `cache.rs` unit tests).
//! Before `chunker/damage.rs` the daemon died of SIGBUS, and files served in
//! place failed with EIO for good.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::chunker::cache_files;
use common::digest::{sha256_of_file, sha256_of_template};
use common::mount::{MountGuard, fuse_available, is_mounted};
use common::process::{run, run_ok, tdfs_pack, within};
use common::rng::noise;
use tdfs::format::{Compression, FileKind};
use tdfs::pack::demo::make_demo_store;
use tdfs::store::LocalStore;
use tdfs::template::{Builds, TemplateConfig};
use uuid::Uuid;

fn drop_kernel_caches() {
    fs::write("/proc/sys/vm/drop_caches", "3").expect("dropping the kernel caches needs root");
}

/// The daemon is up and its mount answers.
fn assert_alive(mount: &MountGuard) {
    assert!(
        Path::new(&format!("/proc/{}", mount.pid())).exists() && is_mounted(mount.path()),
        "the daemon died; log:\n{}",
        mount.log()
    );
    fs::read_dir(mount.path()).expect("the mount answers");
}

fn stat_counter(mount: &MountGuard, name: &str) -> u64 {
    let stats = fs::read_to_string(mount.join(".stats")).unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from .stats:\n{stats}"))
}

#[test]
fn truncated_cache_files_are_fetched_again() {
    if !fuse_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let demo = make_demo_store(&store, Compression::Lz4, 5, false).expect("demo store");
    let library = Builds::new(
        Arc::new(LocalStore::open(&store).unwrap()),
        TemplateConfig::for_tool(work.path().join("library-cache")),
    );
    let files: Vec<(Uuid, FileKind, String)> = demo
        .builds
        .iter()
        .flat_map(|&b| FileKind::ALL.map(|k| (b, k)))
        .map(|(b, k)| (b, k, sha256_of_template(&library, b, k)))
        .collect();
    let cache = work.path().join("cache");
    let mount = MountGuard::start(&store, &["--cache-dir", cache.to_str().unwrap()]);
    let read_every_file = |pass: &str| {
        for (build, kind, want) in &files {
            let path = mount.join(format!("{build}/{kind}"));
            let got = within(300, &format!("{pass}: reading {build}/{kind}"), move || {
                sha256_of_file(&path)
            });
            match got {
                Ok(got) => assert_eq!(&got, want, "{pass}: {build}/{kind} read wrong"),
                Err(e) => panic!("{pass}: {build}/{kind}: {e}; log:\n{}", mount.log()),
            }
        }
    };
    read_every_file("before the damage");

    let damaged = cache_files(&cache);
    assert!(
        !damaged.is_empty(),
        "no cache files under {}",
        cache.display()
    );
    for file in &damaged {
        run_ok("truncate", ["-s".as_ref(), "0".as_ref(), file.as_os_str()]);
    }
    drop_kernel_caches();
    read_every_file("after truncating the cache files");
    assert_alive(&mount);
    drop_kernel_caches();
    read_every_file("a second pass");
    assert_alive(&mount);

    assert!(stat_counter(&mount, "tdfs_cache_damaged_units_total") > 0);
    let log = mount.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("was truncated"))
        .count();
    assert!(
        (1..=damaged.len()).contains(&warnings),
        "one warning per damaged cache file ({} files); log:\n{log}",
        damaged.len()
    );
}

/// A loop device over a file in `work`, with an ext4 file system mounted
/// on `dir`; detached and unmounted on drop.
struct LoopDisk {
    image: PathBuf,
    device: String,
    dir: PathBuf,
}

impl LoopDisk {
    /// `None` (with a loud message) when this machine cannot attach loop
    /// devices, as in some containers.
    fn new(work: &Path, size: &str) -> Option<LoopDisk> {
        let image = work.join("cache-disk.img");
        run_ok("truncate", ["-s", size, image.to_str().unwrap()]);
        run_ok("mkfs.ext4", ["-q", "-F", image.to_str().unwrap()]);
        let out = run("losetup", ["-f", "--show", image.to_str().unwrap()]);
        if !out.status.success() {
            eprintln!(
                "SKIPPED: the cache-disk I/O error case needs a loop device; losetup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        let device = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let dir = work.join("cache-disk");
        fs::create_dir(&dir).unwrap();
        run_ok("mount", [device.as_str(), dir.to_str().unwrap()]);
        Some(LoopDisk { image, device, dir })
    }

    /// Cut the device to its first `size` bytes: reads past them get EIO.
    fn fail_beyond(&self, size: &str) {
        run_ok("truncate", ["-s", size, self.image.to_str().unwrap()]);
        run_ok("losetup", ["-c", self.device.as_str()]);
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = run("umount", ["-l", self.dir.to_str().unwrap()]);
        let _ = run("losetup", ["-d", self.device.as_str()]);
    }
}

#[test]
fn a_failing_cache_disk_serves_nothing_wrong() {
    if !fuse_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let Some(disk) = LoopDisk::new(work.path(), "160M") else {
        return;
    };
    let store = work.path().join("store");
    let memfile = noise(41, 24 << 20);
    fs::write(work.path().join("mem"), &memfile).unwrap();
    fs::write(work.path().join("rootfs"), noise(42, 4 << 20)).unwrap();
    let builds = [
        ("5c0e9c2a-3d4f-4e5a-8b6c-7d8e9f0a1b2c", "zstd"),
        ("5c0e9c2a-3d4f-4e5a-8b6c-7d8e9f0a1b2d", "none"),
    ];
    for (build, compress) in builds {
        tdfs_pack(
            &store,
            build,
            &work.path().join("mem"),
            &work.path().join("rootfs"),
            &["--compress", compress],
        );
    }
    let cache = disk.dir.join("cache");
    let mount = MountGuard::start(&store, &["--cache-dir", cache.to_str().unwrap()]);
    let want = common::digest::sha256_hex(&memfile);
    let read_all = |pass: &str, must_succeed: bool| {
        for (build, _) in builds {
            let path = mount.join(build).join("memfile");
            let got = within(300, &format!("{pass}: reading {build}"), move || {
                sha256_of_file(&path)
            });
            match got {
                Ok(got) => assert_eq!(got, want, "{pass}: {build}/memfile read wrong"),
                Err(e) if !must_succeed && e.raw_os_error() == Some(libc::EIO) => {}
                Err(e) => panic!("{pass}: {build}/memfile: {e}; log:\n{}", mount.log()),
            }
        }
    };
    read_all("before the disk fails", true);
    disk.fail_beyond("4M");
    drop_kernel_caches();
    for pass in ["the disk failing", "again", "once more"] {
        read_all(pass, false);
        assert_alive(&mount);
    }
    drop(mount);
}
