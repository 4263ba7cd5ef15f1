//! `TemplateFs` driven without a kernel over the v4-zstd fixture store.

use std::ffi::OsStr;
use std::path::Path;

use fuser::{FileType, FopenFlags};

use super::*;
use crate::fs::ToErrno;
use crate::fs::inode::{ROOT_INO, STATS_INO, STATS_NAME};
use crate::template::testing::fixture_builds;
use crate::template::{PrefetchConfig, TemplateConfig};

/// A layer of the v4-zstd fixture and its base.
const LAYER: &str = "bd87702b-8d31-4e8d-beda-66b642c931a9";
const BASE: &str = "4c8cee25-4691-41ad-bee6-af9d9284b55b";

fn fixture_fs(cache: &Path) -> TemplateFs {
    let config = TemplateConfig {
        cache_dir: cache.to_path_buf(),
        readahead: 1,
        fetch_workers: 2,
        max_idle_diffs: 4,
        // The xattr test checks what a mount with `--prefetch off` shows.
        prefetch: PrefetchConfig {
            enabled: false,
            ..PrefetchConfig::default()
        },
        ..TemplateConfig::default()
    };
    let options = FsConfig {
        uid: 1000,
        gid: 1001,
    };
    TemplateFs::new(fixture_builds("v4-zstd", config), options)
}

fn names(entries: &[DirEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.name.as_str()).collect()
}

#[test]
fn tree_attributes_and_listing() {
    let cache = tempfile::tempdir().unwrap();
    let fs = fixture_fs(cache.path());
    let root = fs.getattr(ROOT_INO).unwrap();
    assert_eq!(root.attr.kind, FileType::Directory);
    assert_eq!(root.attr.perm, 0o555);
    assert_eq!((root.attr.uid, root.attr.gid), (1000, 1001));

    let opened = fs.opendir(ROOT_INO).unwrap();
    let entries = fs.readdir(opened.fh, 0).unwrap();
    assert_eq!(names(&entries)[..3], [".", "..", STATS_NAME]);
    assert_eq!(entries.len(), 6, "three builds: {:?}", names(&entries));
    // Offsets continue where the kernel left off.
    assert_eq!(fs.readdir(opened.fh, 4).unwrap(), entries[4..]);
    fs.release(opened.fh);
    assert_eq!(
        fs.readdir(opened.fh, 0).unwrap_err().errno(),
        fuser::Errno::EBADF
    );

    let dir = fs.lookup(ROOT_INO, OsStr::new(LAYER)).unwrap();
    assert_eq!(dir.ttl, IMMUTABLE_TTL);
    let listed = entries.iter().find(|e| e.name == LAYER).unwrap();
    assert_eq!(dir.attr.ino.0, listed.ino, "one inode per build");
    let opened = fs.opendir(dir.attr.ino.0).unwrap();
    assert!(opened.flags.contains(FopenFlags::FOPEN_CACHE_DIR));
    let files = fs.readdir(opened.fh, 0).unwrap();
    assert_eq!(
        names(&files),
        [
            ".",
            "..",
            "memfile",
            "rootfs.ext4",
            "snapfile",
            "metadata.json",
            "diff"
        ]
    );

    let memfile = fs.lookup(dir.attr.ino.0, OsStr::new("memfile")).unwrap();
    assert_eq!(memfile.attr.size, 16 << 20);
    assert_eq!(memfile.attr.blksize, 2 << 20);
    assert_eq!(memfile.attr.perm, 0o444);
    assert_eq!(fs.getattr(memfile.attr.ino.0).unwrap().attr, memfile.attr);
    let snapfile = fs.lookup(dir.attr.ino.0, OsStr::new("snapfile")).unwrap();
    let stored = std::fs::metadata(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/e2b/v4-zstd")
            .join(LAYER)
            .join("snapfile"),
    )
    .unwrap();
    assert_eq!(snapfile.attr.size, stored.len());
}

#[test]
fn missing_names_and_non_directories() {
    let cache = tempfile::tempdir().unwrap();
    let fs = fixture_fs(cache.path());
    let enoent = |parent, name: &str| fs.lookup(parent, OsStr::new(name)).unwrap_err().errno();
    assert_eq!(enoent(ROOT_INO, "manifest.json"), fuser::Errno::ENOENT);
    assert_eq!(
        enoent(ROOT_INO, "00000000-0000-4000-8000-000000000000"),
        fuser::Errno::ENOENT
    );
    assert_eq!(
        enoent(ROOT_INO, &LAYER.to_uppercase()),
        fuser::Errno::ENOENT
    );
    let dir = fs.lookup(ROOT_INO, OsStr::new(LAYER)).unwrap().attr.ino.0;
    assert_eq!(enoent(dir, "memfile.header"), fuser::Errno::ENOENT);
    assert_eq!(enoent(dir, ".."), fuser::Errno::ENOENT);
    assert_eq!(enoent(STATS_INO, "x"), fuser::Errno::ENOTDIR);
    assert_eq!(
        fs.getattr(999_999).unwrap_err().errno(),
        fuser::Errno::ENOENT
    );
    assert_eq!(
        fs.open(ROOT_INO, libc::O_RDONLY).unwrap_err().errno(),
        fuser::Errno::EISDIR
    );
}

#[test]
fn reads_stats_and_xattrs() {
    let cache = tempfile::tempdir().unwrap();
    let fs = fixture_fs(cache.path());
    let dir = fs.lookup(ROOT_INO, OsStr::new(LAYER)).unwrap().attr.ino.0;
    let memfile = fs.lookup(dir, OsStr::new("memfile")).unwrap().attr.ino.0;
    assert_eq!(
        fs.open(memfile, libc::O_RDWR).unwrap_err().errno(),
        fuser::Errno::EROFS
    );
    assert_eq!(
        fs.open(memfile, libc::O_WRONLY).unwrap_err().errno(),
        fuser::Errno::EROFS
    );
    let opened = fs.open(memfile, libc::O_RDONLY).unwrap();
    assert!(opened.flags.contains(FopenFlags::FOPEN_KEEP_CACHE));

    let mut buf = Vec::new();
    let size = 16u64 << 20;
    let whole = fs
        .read(opened.fh, 0, 1 << 20, &mut buf, <[u8]>::to_vec)
        .unwrap();
    assert_eq!(whole.len(), 1 << 20);
    // Reads clip at the end, and are empty past it.
    assert_eq!(
        fs.read(opened.fh, size - 100, 4096, &mut buf, <[u8]>::to_vec)
            .unwrap()
            .len(),
        100
    );
    assert!(
        fs.read(opened.fh, size, 4096, &mut buf, <[u8]>::to_vec)
            .unwrap()
            .is_empty()
    );
    assert!(
        fs.read(opened.fh, u64::MAX, 4096, &mut buf, <[u8]>::to_vec)
            .unwrap()
            .is_empty()
    );
    // A read in the middle of a previous one gives the same bytes.
    let part = fs
        .read(opened.fh, 12345, 1000, &mut buf, <[u8]>::to_vec)
        .unwrap();
    assert_eq!(part, &whole[12345..13345]);
    fs.release(opened.fh);

    let names = fs.listxattr(memfile).unwrap();
    assert!(names.ends_with(b"user.tdfs.cached_bytes\0"));
    let value =
        |name: &str| String::from_utf8(fs.getxattr(memfile, OsStr::new(name)).unwrap()).unwrap();
    assert_eq!(value("user.tdfs.build_id"), LAYER);
    assert_eq!(value("user.tdfs.base_build_id"), BASE);
    assert_eq!(value("user.tdfs.generation"), "1");
    assert_eq!(value("user.tdfs.block_size"), "2097152");
    assert_eq!(value("user.tdfs.compression"), "zstd");
    assert_eq!(value("user.tdfs.header_version"), "4");
    // Opened for reading, on a `Builds` whose prefetch is off.
    assert_eq!(
        value("user.tdfs.prefetch"),
        "skipped: prefetch is off (--prefetch off)"
    );
    assert_eq!(
        fs.getxattr(memfile, OsStr::new("user.tdfs.nope"))
            .unwrap_err()
            .errno(),
        fuser::Errno::NO_XATTR
    );
    assert_eq!(
        fs.getxattr(dir, OsStr::new("user.tdfs.build_id"))
            .unwrap_err()
            .errno(),
        fuser::Errno::NO_XATTR
    );
    assert!(fs.listxattr(dir).unwrap().is_empty());

    let stats = fs.open(STATS_INO, libc::O_RDONLY).unwrap();
    assert!(stats.flags.contains(FopenFlags::FOPEN_DIRECT_IO));
    let text = String::from_utf8(
        fs.read(stats.fh, 0, 1 << 20, &mut buf, <[u8]>::to_vec)
            .unwrap(),
    )
    .unwrap();
    assert!(text.contains("tdfs_reads_total"), "{text}");
    let tail = fs
        .read(stats.fh, 10, 1 << 20, &mut buf, <[u8]>::to_vec)
        .unwrap();
    assert_eq!(tail, &text.as_bytes()[10..]);
}

#[test]
fn statfs_shows_cache_use_and_known_inodes() {
    let cache = tempfile::tempdir().unwrap();
    let fs = fixture_fs(cache.path());
    let before = fs.statfs();
    assert_eq!((before.block_size, before.name_max), (4096, 255));
    assert_eq!(before.files, 2, "root and .stats");
    assert!(before.blocks > 0, "no budget: the cache disk's size");
    assert_eq!(before.free, before.blocks, "nothing cached yet");
    assert_eq!(before.available, before.free);

    let build = fs.lookup(ROOT_INO, OsStr::new(LAYER)).unwrap().attr.ino.0;
    let memfile = fs.lookup(build, OsStr::new("memfile")).unwrap().attr.ino.0;
    let opened = fs.open(memfile, libc::O_RDONLY).unwrap();
    let mut buf = Vec::new();
    fs.read(opened.fh, 0, 1 << 20, &mut buf, <[u8]>::to_vec)
        .unwrap();
    let after = fs.statfs();
    assert_eq!(
        after.files,
        2 + 8,
        "one build seen: its directory, files, diff directory and diff files"
    );
    let used = after.blocks - after.free;
    assert!(used >= (1 << 20) / 4096, "used grows with reads: {after:?}");
}

#[test]
fn diff_directory_shows_the_builds_own_diffs() {
    let cache = tempfile::tempdir().unwrap();
    let fs = fixture_fs(cache.path());
    let dir = fs.lookup(ROOT_INO, OsStr::new(LAYER)).unwrap().attr.ino.0;
    let diff_dir = fs.lookup(dir, OsStr::new("diff")).unwrap();
    assert_eq!(diff_dir.attr.kind, FileType::Directory);
    assert_eq!(diff_dir.attr.perm, 0o555);
    let opened = fs.opendir(diff_dir.attr.ino.0).unwrap();
    let entries = fs.readdir(opened.fh, 0).unwrap();
    assert_eq!(names(&entries), [".", "..", "memfile", "rootfs.ext4"]);
    assert_eq!(entries[1].ino, dir, "`..` is the build directory");
    fs.release(opened.fh);

    let diff = fs
        .lookup(diff_dir.attr.ino.0, OsStr::new("memfile"))
        .unwrap();
    // The layer's own memfile diff in the v4-zstd fixture: one 2 MiB block.
    assert_eq!(diff.attr.size, 2 << 20);
    assert_eq!(diff.attr.kind, FileType::RegularFile);
    assert_eq!(diff.attr.perm, 0o444);
    let ino = diff.attr.ino.0;
    assert_eq!(
        fs.open(ino, libc::O_RDWR).unwrap_err().errno(),
        fuser::Errno::EROFS
    );
    let opened = fs.open(ino, libc::O_RDONLY).unwrap();
    let mut buf = Vec::new();
    let whole = fs
        .read(opened.fh, 0, 4 << 20, &mut buf, <[u8]>::to_vec)
        .unwrap();
    assert_eq!(whole.len(), 2 << 20, "cut at the end of the diff");
    let part = fs
        .read(opened.fh, 4097, 10_000, &mut buf, <[u8]>::to_vec)
        .unwrap();
    assert_eq!(part, &whole[4097..14_097]);
    assert!(
        fs.read(opened.fh, 2 << 20, 10, &mut buf, <[u8]>::to_vec)
            .unwrap()
            .is_empty()
    );
    fs.release(opened.fh);

    let enoent = |parent, name: &str| fs.lookup(parent, OsStr::new(name)).unwrap_err().errno();
    assert_eq!(
        enoent(diff_dir.attr.ino.0, "snapfile"),
        fuser::Errno::ENOENT
    );
    assert_eq!(enoent(ino, "x"), fuser::Errno::ENOTDIR);
    assert_eq!(
        fs.open(diff_dir.attr.ino.0, libc::O_RDONLY)
            .unwrap_err()
            .errno(),
        fuser::Errno::EISDIR
    );
}

#[test]
fn metadata_json_is_trusted_only_for_the_listing_ttl() {
    let cache = tempfile::tempdir().unwrap();
    let fs = fixture_fs(cache.path());
    let dir = fs.lookup(ROOT_INO, OsStr::new(LAYER)).unwrap().attr.ino.0;
    let metadata = fs.lookup(dir, OsStr::new("metadata.json")).unwrap();
    assert_eq!(metadata.ttl, fs.builds.listing_ttl());
    let opened = fs.open(metadata.attr.ino.0, libc::O_RDONLY).unwrap();
    assert!(!opened.flags.contains(FopenFlags::FOPEN_KEEP_CACHE));
    // The snapfile is written once.
    let snapfile = fs.lookup(dir, OsStr::new("snapfile")).unwrap();
    assert_eq!(snapfile.ttl, IMMUTABLE_TTL);
    let opened = fs.open(snapfile.attr.ino.0, libc::O_RDONLY).unwrap();
    assert!(opened.flags.contains(FopenFlags::FOPEN_KEEP_CACHE));
}
