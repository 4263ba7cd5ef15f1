//! Faults in a local store under a live mount: a data object truncated,
//! deleted, corrupted or never answering after the mount is up. Reads of the
//! damaged part fail with EIO (never wrong bytes, never a hang), other builds
//! keep being served, every failure is logged naming the object, and once the
//! object is repaired the same mount serves it again (nothing bad was cached).
//!
//! Every read of the mount runs in a child process under `timeout`, so a hang
//! fails the test instead of hanging the run.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::mount::{MountGuard, fuse_available};
use common::process::{run_ok, tdfs_pack};
use common::rng::noise;

const MEMFILE_SIZE: usize = 16 << 20;
const ROOTFS_SIZE: usize = 4 << 20;
/// Uncompressed bytes per zstd frame of the compressed build.
const FRAME_SIZE: usize = 2 << 20;
/// Bound on one read child: far above any honest read of these files.
const READ_TIMEOUT_SECS: u32 = 30;

/// A store of two independent builds (no shared ancestor): `plain`
/// uncompressed, `zstd` compressed in 2 MiB frames, and the images they
/// hold.
struct TestStore {
    _dir: tempfile::TempDir,
    root: PathBuf,
    plain: String,
    zstd: String,
    plain_memfile: Vec<u8>,
    zstd_memfile: Vec<u8>,
}

impl TestStore {
    fn new() -> TestStore {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("store");
        let images = dir.path().join("images");
        fs::create_dir(&images).unwrap();
        let plain = "0f6d3c1e-7a55-4b8e-9c1d-2e4f6a8b0c11".to_string();
        let zstd = "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d".to_string();
        let plain_memfile = noise(1, MEMFILE_SIZE);
        let zstd_memfile = noise(2, MEMFILE_SIZE);
        for (id, memfile, compress, seed) in [
            (&plain, &plain_memfile, "none", 3),
            (&zstd, &zstd_memfile, "zstd", 4),
        ] {
            let mem = images.join(format!("{id}.mem"));
            let rootfs = images.join(format!("{id}.rootfs"));
            fs::write(&mem, memfile).unwrap();
            fs::write(&rootfs, noise(seed, ROOTFS_SIZE)).unwrap();
            tdfs_pack(
                &root,
                id,
                &mem,
                &rootfs,
                &[
                    "--compress",
                    compress,
                    "--frame-size",
                    &FRAME_SIZE.to_string(),
                ],
            );
        }
        TestStore {
            _dir: dir,
            root,
            plain,
            zstd,
            plain_memfile,
            zstd_memfile,
        }
    }

    fn object(&self, build: &str, name: &str) -> PathBuf {
        self.root.join(build).join(name)
    }
}

/// What a read child got: its exit status, the bytes it wrote and its stderr.
struct ReadResult {
    ok: bool,
    bytes: Vec<u8>,
    stderr: String,
    took: Duration,
}

/// `dd` `len` bytes of `path` at `offset` (both multiples of 4096) in a
/// child under `timeout`.
fn read_range(path: &Path, offset: usize, len: usize) -> ReadResult {
    let start = Instant::now();
    let out = Command::new("timeout")
        .args(["-k", "5", &READ_TIMEOUT_SECS.to_string(), "dd"])
        .arg(format!("if={}", path.display()))
        .args([
            "bs=4096",
            &format!("skip={}", offset / 4096),
            &format!("count={}", len / 4096),
            "status=none",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("running dd");
    // 124/137: timeout killed it; that is a hang, never an acceptable answer.
    assert!(
        !matches!(out.status.code(), Some(124) | Some(137) | None),
        "reading {} hung ({})",
        path.display(),
        out.status
    );
    ReadResult {
        ok: out.status.success(),
        bytes: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: start.elapsed(),
    }
}

/// A read that must fail with EIO, having delivered only right bytes.
fn assert_eio(path: &Path, offset: usize, len: usize, reference: &[u8]) -> ReadResult {
    let r = read_range(path, offset, len);
    assert!(!r.ok, "reading {} should fail", path.display());
    assert!(
        r.stderr.contains("Input/output error"),
        "expected EIO: {}",
        r.stderr
    );
    assert!(r.bytes.len() < len);
    assert!(
        r.bytes == reference[offset..offset + r.bytes.len()],
        "the bytes delivered before the error are wrong"
    );
    r
}

fn assert_reads(path: &Path, offset: usize, len: usize, reference: &[u8]) {
    let r = read_range(path, offset, len);
    assert!(r.ok, "reading {}: {}", path.display(), r.stderr);
    assert!(
        r.bytes == reference[offset..offset + len],
        "wrong bytes from {} at {offset}",
        path.display()
    );
}

/// Mount `store` and look the builds up, so their headers are loaded before
/// the test damages data objects.
fn mount(store: &TestStore, extra: &[&str]) -> MountGuard {
    let mount = MountGuard::start(&store.root, extra);
    for build in [&store.plain, &store.zstd] {
        let memfile = mount.join(build).join("memfile");
        let size = fs::metadata(&memfile).expect("stat memfile").len();
        assert_eq!(size, MEMFILE_SIZE as u64);
        // Opened once, so the mount knows the diffs (their Chunkers stay
        // open, idle) before the tests damage their objects.
        fs::File::open(&memfile).expect("open memfile");
    }
    mount
}

/// Count of log lines that name `object` (`build/name`).
fn log_lines_naming(mount: &MountGuard, object: &str) -> usize {
    mount
        .log()
        .lines()
        .filter(|l| l.contains("ERROR"))
        .filter(|l| l.contains(object))
        .count()
}

/// A mount over a fresh store whose plain memfile object `damage` changed
/// (given the object's path and bytes): `check` reads the plain memfile
/// through the damage, the zstd build (another object) still reads right,
/// and once the object is restored the plain memfile does too.
fn damaged_then_restored(
    damage: impl FnOnce(&Path, &[u8]),
    check: impl FnOnce(&TestStore, &MountGuard, &Path),
) {
    if !fuse_available() {
        return;
    }
    let store = TestStore::new();
    let mount = mount(&store, &[]);
    let object = store.object(&store.plain, "memfile");
    let original = fs::read(&object).unwrap();
    damage(&object, &original);

    let plain = mount.join(&store.plain).join("memfile");
    check(&store, &mount, &plain);
    let zstd = mount.join(&store.zstd).join("memfile");
    assert_reads(&zstd, 0, MEMFILE_SIZE, &store.zstd_memfile);

    fs::write(&object, &original).unwrap();
    assert_reads(&plain, 0, MEMFILE_SIZE, &store.plain_memfile);
}

#[test]
fn truncated_object_fails_with_eio_and_recovers_when_restored() {
    damaged_then_restored(
        // Keep the first 6 MiB: chunk 0 is whole, chunk 1 half there.
        |object, original| fs::write(object, &original[..6 << 20]).unwrap(),
        |store, mount, plain| {
            assert_reads(plain, 0, 4 << 20, &store.plain_memfile);
            assert_eio(plain, 4 << 20, 8 << 20, &store.plain_memfile);
            assert_eio(plain, 12 << 20, 4 << 20, &store.plain_memfile);
            // Both failures are of one object: the first is logged in full,
            // the repeat within the minute only counted (the log's rate
            // limit).
            assert_eq!(
                log_lines_naming(mount, &format!("{}/memfile", store.plain)),
                1,
                "{}",
                mount.log()
            );
        },
    );
}

#[test]
fn deleted_object_fails_with_eio_and_recovers_when_restored() {
    damaged_then_restored(
        |object, _| fs::remove_file(object).unwrap(),
        |store, mount, plain| {
            let r = assert_eio(plain, 0, MEMFILE_SIZE, &store.plain_memfile);
            assert!(r.bytes.is_empty());
            assert!(log_lines_naming(mount, &format!("{}/memfile", store.plain)) >= 1);
        },
    );
}

#[test]
fn corrupt_frame_fails_with_eio_for_its_range_only_and_is_not_cached() {
    if !fuse_available() {
        return;
    }
    let store = TestStore::new();
    let mount = mount(&store, &[]);
    let object = store.object(&store.zstd, "memfile.zstd");
    let original = fs::read(&object).unwrap();
    // Incompressible frames are about FRAME_SIZE compressed: this byte is
    // in the middle of frame 2 (uncompressed 4..6 MiB).
    let mut damaged = original.clone();
    damaged[5 << 20] ^= 0x40;
    fs::write(&object, &damaged).unwrap();

    let zstd = mount.join(&store.zstd).join("memfile");
    assert_reads(&zstd, 0, 2 * FRAME_SIZE, &store.zstd_memfile);
    assert_reads(&zstd, 3 * FRAME_SIZE, 5 * FRAME_SIZE, &store.zstd_memfile);
    let r = assert_eio(&zstd, 2 * FRAME_SIZE, FRAME_SIZE, &store.zstd_memfile);
    assert!(r.bytes.is_empty(), "nothing of the corrupt frame is served");
    let lines = mount
        .log()
        .lines()
        .filter(|l| l.contains(&format!("{}/memfile.zstd", store.zstd)) && l.contains("corrupt"))
        .count();
    assert!(lines >= 1, "log:\n{}", mount.log());
    // A second read fetches again (nothing corrupt was cached) and fails again.
    assert_eio(&zstd, 2 * FRAME_SIZE, FRAME_SIZE, &store.zstd_memfile);
    let plain = mount.join(&store.plain).join("memfile");
    assert_reads(&plain, 0, MEMFILE_SIZE, &store.plain_memfile);

    fs::write(&object, &original).unwrap();
    assert_reads(&zstd, 0, MEMFILE_SIZE, &store.zstd_memfile);
}

#[test]
fn object_that_never_answers_times_out_with_eio_and_others_are_served() {
    if !fuse_available() {
        return;
    }
    let store = TestStore::new();
    let mount = mount(&store, &["--fetch-timeout", "2"]);
    let object = store.object(&store.plain, "memfile");
    fs::remove_file(&object).unwrap();
    // A FIFO nobody writes: opening it for reading blocks forever.
    run_ok("mkfifo", [object.to_str().unwrap()]);

    let plain = mount.join(&store.plain).join("memfile");
    let r = assert_eio(&plain, 0, 1 << 20, &store.plain_memfile);
    assert!(
        r.took < Duration::from_secs(15),
        "the read took {:?} with a 2 s fetch timeout",
        r.took
    );
    let log = mount.log();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("{}/memfile", store.plain)) && l.contains("within 2s")),
        "log:\n{log}"
    );
    let zstd = mount.join(&store.zstd).join("memfile");
    assert_reads(&zstd, 0, MEMFILE_SIZE, &store.zstd_memfile);
    let rootfs = mount.join(&store.plain).join("rootfs.ext4");
    let r = read_range(&rootfs, 0, 1 << 20);
    assert!(r.ok, "rootfs of the same build: {}", r.stderr);

    // Let the stuck fetch go (it sees end of file), so the mount winds down.
    release_fifo(&object);
}

/// Open the FIFO for writing and close it: its blocked reader gets EOF.
fn release_fifo(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
}
