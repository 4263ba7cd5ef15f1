//! Per-mount state stays bounded on a store of thousands of builds (issue
//! 13, part 4): `ls -l` and `stat` read only headers (no data object is
//! asked for, no cache file made), and the Chunkers of files read are closed
//! once idle past a limit set from the open file limit, which the mount
//! raises to its hard limit. The daemon's open files and memory are printed
//! after each phase and held to stated bounds.

mod common;

use std::time::Duration;

use common::builds::{PAGE, TestStore, build_id, mapping};
use common::chunker::cache_files;
use common::mount::{MountGuard, fuse_available};
use common::process::{run_ok, wait_until};
use common::rng::{Rng, noise};
use tdfs::format::FileKind;

const BUILDS: u64 = 5000;
const READ_BUILDS: usize = 100;
/// The daemon starts with this soft limit and must raise it to the hard one.
const SOFT_NOFILE: u64 = 256;
const HARD_NOFILE: u64 = 512;
/// Idle Chunkers kept under `HARD_NOFILE` (README: half of what 256 reserved
/// descriptors leave).
const IDLE_LIMIT: usize = 128;
const MAX_RSS_KIB: u64 = 256 << 10;

/// Size of build `n`'s `file` (a few pages, different per build).
fn file_size(n: u64, file: FileKind) -> u64 {
    let pages = match file {
        FileKind::Memfile => 2 + n % 5,
        FileKind::Rootfs => 1 + n % 3,
    };
    // Not a page multiple: the last page is partial.
    pages * PAGE - 100
}

fn content(n: u64, file: FileKind) -> Vec<u8> {
    let seed = n * 2 + u64::from(file == FileKind::Rootfs);
    noise(seed, file_size(n, file) as usize)
}

/// V3 headers of `BUILDS` builds, each mapping all of its own diff; the
/// diffs are written by `put_diffs`, after the mount has listed and stat'ed
/// everything.
fn put_headers(store: &TestStore) {
    for n in 0..BUILDS {
        for file in FileKind::ALL {
            let size = file_size(n, file);
            let whole = size.div_ceil(PAGE) * PAGE;
            let m = vec![mapping(0, whole, build_id(n), 0)];
            store.put_header(build_id(n), file, 3, size, m, Vec::new());
        }
    }
}

fn put_diffs(store: &TestStore) {
    for n in 0..BUILDS {
        for file in FileKind::ALL {
            store.put_raw_diff(build_id(n), file, &content(n, file));
        }
    }
}

/// (open descriptors, resident KiB) of process `pid`.
fn usage(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("daemon fds")
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("daemon status");
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    (fds, rss)
}

fn report(phase: &str, mount: &MountGuard) -> (usize, u64) {
    let (fds, rss) = usage(mount.pid());
    let cached = cache_files(&mount.cache_parent()).len();
    println!("{phase}: daemon fds {fds}, VmRSS {rss} KiB, cache files {cached}");
    assert!(
        fds < SOFT_NOFILE as usize + IDLE_LIMIT,
        "{phase}: {fds} open fds"
    );
    assert!(rss < MAX_RSS_KIB, "{phase}: VmRSS {rss} KiB");
    (fds, rss)
}

#[test]
fn thousands_of_builds_keep_open_files_and_memory_bounded() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(&dir.path().join("store"));
    put_headers(&store);
    let mount = MountGuard::options(&store.root)
        .nofile(SOFT_NOFILE, HARD_NOFILE)
        .start();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", mount.pid())).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("nofile limit");
    assert!(
        nofile.split_whitespace().nth(3) == Some(&HARD_NOFILE.to_string()),
        "the mount raises its soft limit to the hard one: {nofile}"
    );
    report("mounted", &mount);

    // Phase 1 and 2: no data object exists yet, so any request for one (a
    // size, a read) or a Chunker made for it would fail these.
    // `ls -l MNT/*/`: every build directory's entries with their sizes (a
    // build's `diff/` is not descended into: a diff's size may need its
    // data object).
    let listing = format!("ls -l {}/*/ > /dev/null", mount.path().display());
    run_ok("sh", ["-c", listing.as_str()]);
    report("ls -l MNT/*/", &mount);
    for n in 0..BUILDS {
        for file in FileKind::ALL {
            let path = mount.join(build_id(n).to_string()).join(file.name());
            let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            assert_eq!(meta.len(), file_size(n, file), "{path:?}");
        }
    }
    report("stat", &mount);
    assert_eq!(
        cache_files(&mount.cache_parent()).len(),
        0,
        "stat made cache files"
    );
    assert_eq!(mount.stat("tdfs_store_requests_total"), 0);

    // Phase 3: reads of random builds, byte for byte.
    put_diffs(&store);
    let mut rng = Rng(13);
    for _ in 0..READ_BUILDS {
        let n = rng.below(BUILDS);
        for file in FileKind::ALL {
            let path = mount.join(build_id(n).to_string()).join(file.name());
            let got = std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            assert!(got == content(n, file), "{path:?} differs");
        }
    }
    report("reads", &mount);
    // The kernel sends the last file's RELEASE after `read` returned: its
    // Chunkers join the idle ones (and the oldest close) moments later.
    wait_until(
        Duration::from_secs(5),
        "idle Chunkers closed down to the limit",
        || match cache_files(&mount.cache_parent()).len() {
            cached if cached <= IDLE_LIMIT => Ok(()),
            cached => Err(format!("{cached} cache files")),
        },
    );
    assert!(mount.stat("tdfs_store_requests_total") > 0);
}
