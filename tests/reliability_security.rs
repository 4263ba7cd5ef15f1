//! What a mount exposes and keeps private: mount options (read-only,
//! default_permissions, no allow_other unless asked), cache files 0600 in
//! 0700 directories owned by the mounting user, and lookups of names that are
//! not build ids or known files (`..`, `/`, NUL, non-canonical UUIDs) answered
//! ENOENT. Writes (EROFS) and other users' access are in mount_behaviour.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use common::fixtures::fixture_store;
use common::mount::{MountGuard, fuse_available};
use common::process::run_ok;
use tdfs::fs::{FsConfig, TemplateFs, ToErrno};
use tdfs::store::LocalStore;
use tdfs::template::{Builds, TemplateConfig};

/// The base build of the v3-none fixture.
const BASE: &str = "cd62c694-5fb3-4cd8-b26e-db3191758be8";
/// FUSE's root inode number.
const ROOT_INO: u64 = 1;

fn mount_options(mountpoint: &Path) -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(mountpoint.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} not in /proc/mounts", mountpoint.display()));
    line.split(' ')
        .nth(3)
        .unwrap()
        .split(',')
        .map(String::from)
        .collect()
}

/// Every directory under `dir` (itself included) is 0700 and every file
/// 0600, all owned by this user; returns how many files there are.
fn assert_private(dir: &Path) -> usize {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let md = std::fs::metadata(dir).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o700, "{}", dir.display());
    assert_eq!(md.uid(), uid, "{}", dir.display());
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let md = std::fs::symlink_metadata(&path).unwrap();
        if md.is_dir() {
            files += assert_private(&path);
        } else {
            assert!(md.is_file(), "{} is not a plain file", path.display());
            assert_eq!(md.permissions().mode() & 0o777, 0o600, "{}", path.display());
            assert_eq!(md.uid(), uid, "{}", path.display());
            files += 1;
        }
    }
    files
}

#[test]
fn a_live_mount_is_read_only_private_and_its_cache_too() {
    if !fuse_available() {
        return;
    }
    let store = fixture_store("v3-none");
    let mount = MountGuard::start(&store, &[]);
    let options = mount_options(mount.path());
    assert!(options.iter().any(|o| o == "ro"), "{options:?}");
    assert!(
        options.iter().any(|o| o == "default_permissions"),
        "{options:?}"
    );
    assert!(!options.iter().any(|o| o == "allow_other"), "{options:?}");

    // Read something so cache files exist, then check them while they do.
    run_ok(
        "sha256sum",
        [mount.join(BASE).join("memfile").to_str().unwrap()],
    );
    let cache = mount.path().parent().unwrap().join("cache");
    let files = assert_private(&cache);
    assert!(files >= 2, "a lock file and a cache file at least");
}

#[test]
fn names_that_are_not_builds_or_files_are_enoent_through_the_mount() {
    if !fuse_available() {
        return;
    }
    let store = fixture_store("v3-none");
    let mount = MountGuard::start(&store, &[]);
    let enoent = |path: &Path| {
        let err = std::fs::symlink_metadata(path).expect_err(&path.display().to_string());
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{}", path.display());
    };
    let simple = BASE.replace('-', "");
    for name in [
        "...",
        "manifest.json",
        "not-a-build",
        &format!("{{{BASE}}}"),
        &simple,
        &format!("urn:uuid:{BASE}"),
        &format!("{BASE}x"),
        &format!(" {BASE}"),
        "00000000-0000-0000-0000-000000000000",
    ] {
        enoent(&mount.join(name));
    }
    for name in ["memfile.header", "rootfs.ext4.header", "...", "memfile2"] {
        enoent(&mount.join(BASE).join(name));
    }
    let err = std::fs::metadata(mount.join(BASE).join("memfile/x")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR));
}

#[test]
fn lookups_of_dot_dot_slash_and_nul_names_are_enoent() {
    let cache = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open(fixture_store("v3-none")).unwrap());
    let config = TemplateConfig {
        cache_dir: cache.path().to_path_buf(),
        readahead: 0,
        fetch_workers: 2,
        max_idle_diffs: 4,
        ..TemplateConfig::default()
    };
    let options = FsConfig { uid: 0, gid: 0 };
    let fs = TemplateFs::new(Builds::new(store, config), options);
    let build_dir = fs.lookup(ROOT_INO, OsStr::new(BASE)).unwrap().attr.ino.0;
    let bad: [&[u8]; 9] = [
        b"",
        b".",
        b"..",
        b"/",
        b"../etc",
        b"cd62c694-5fb3-4cd8-b26e-db3191758be8/memfile",
        b"cd62c694-5fb3-4cd8-b26e-db3191758be8\0",
        b"mem\0file",
        b"memfile/../memfile",
    ];
    for parent in [ROOT_INO, build_dir] {
        for name in bad {
            let err = fs
                .lookup(parent, OsStr::from_bytes(name))
                .expect_err(&String::from_utf8_lossy(name));
            assert_eq!(
                err.errno(),
                fuser::Errno::ENOENT,
                "{:?} in inode {parent}",
                String::from_utf8_lossy(name)
            );
        }
    }
}
