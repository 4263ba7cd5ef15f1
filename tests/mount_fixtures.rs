//! Every build of the E2B fixture stores (V3/V4/V5 headers; none, zstd and
//! lz4 diffs) read through a real FUSE mount: whole-file SHA-256 against the
//! manifest, random ranges read by several `dd` processes at once, mmap, and
//! O_DIRECT 1 MiB reads, all compared with the reference bytes; and reads
//! that keep reaching tdfs while a small cache budget evicts under them.

mod common;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::digest::hex;
use common::fixtures::{fixture_store, manifest};
use common::mount::{MountGuard, fuse_available};
use common::process::{run_ok, within};
use common::rng::Rng;
use sha2::{Digest, Sha256};

#[test]
fn v3_uncompressed() {
    check_store("v3-none", "none", 3);
}

#[test]
fn v4_zstd() {
    check_store("v4-zstd", "zstd", 4);
}

#[test]
fn v4_lz4() {
    check_store("v4-lz4", "lz4", 4);
}

#[test]
fn v5_zstd_dedup() {
    check_store("v5-zstd-dedup", "zstd", 5);
}

/// Replies are slices of the cache, pinned only while they are written: with
/// a budget far below the data, eviction runs under every reply. O_DIRECT
/// keeps each read going to tdfs rather than the kernel's page cache.
#[test]
fn replies_from_an_evicting_cache_are_exact() {
    if !fuse_available() {
        return;
    }
    let store = fixture_store("v4-zstd");
    let cases = Arc::new(manifest_cases(&store));
    let mount = MountGuard::start(&store, &["--max-cache-size", "6MiB"]);
    let root = mount.path().to_path_buf();
    let readers: Vec<_> = (0..6)
        .map(|t| {
            let (root, cases) = (root.clone(), cases.clone());
            std::thread::spawn(move || {
                for round in 0..3 {
                    for i in 0..cases.len() {
                        let case = &cases[(i + t + round) % cases.len()];
                        let path = root.join(&case.build).join(&case.name);
                        assert_eq!(
                            hex(&Sha256::digest(read_o_direct(&path))),
                            case.sha256,
                            "{}/{} read by reader {t}, round {round}",
                            case.build,
                            case.name
                        );
                    }
                }
            })
        })
        .collect();
    within(300, "readers of an evicting cache", move || {
        for r in readers {
            r.join().expect("reader");
        }
    });
    let stats = std::fs::read_to_string(mount.join(".stats")).expect(".stats");
    let evictions: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("tdfs_cache_evictions_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("tdfs_cache_evictions_total in .stats");
    assert!(evictions > 0, "the budget never evicted:\n{stats}");
}

/// The whole file, read with O_DIRECT in 1 MiB requests.
fn read_o_direct(path: &Path) -> Vec<u8> {
    const CHUNK: usize = 1 << 20;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .expect("open O_DIRECT");
    let mut buf = memmap2::MmapMut::map_anon(CHUNK).expect("aligned buffer");
    let mut out = Vec::new();
    loop {
        let n = file.read(&mut buf[..]).expect("O_DIRECT read");
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

struct FileCase {
    build: String,
    name: String,
    size: u64,
    block_size: u64,
    sha256: String,
}

fn manifest_cases(store: &Path) -> Vec<FileCase> {
    let manifest = manifest(store);
    let mut cases = Vec::new();
    for build in manifest["builds"].as_array().expect("builds") {
        let id = build["build_id"].as_str().expect("build_id");
        for (name, file) in build["files"].as_object().expect("files") {
            cases.push(FileCase {
                build: id.to_string(),
                name: name.clone(),
                size: file["size"].as_u64().expect("size"),
                block_size: file["block_size"].as_u64().expect("block_size"),
                sha256: file["sha256"].as_str().expect("sha256").to_string(),
            });
        }
    }
    cases
}

fn check_store(name: &str, codec: &str, version: u64) {
    if !fuse_available() {
        return;
    }
    let store = fixture_store(name);
    let cases = manifest_cases(&store);
    let mount = MountGuard::start(&store, &[]);

    let mut listed: Vec<String> = std::fs::read_dir(mount.path())
        .expect("list root")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = cases.iter().map(|c| c.build.clone()).collect();
    expected.push(".stats".into());
    expected.sort();
    expected.dedup();
    assert_eq!(listed, expected, "root listing of {name}");

    for case in &cases {
        let path = mount.join(Path::new(&case.build).join(&case.name));
        let what = format!("{name}/{}/{}", case.build, case.name);
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("stat {what}: {e}"));
        assert_eq!(meta.len(), case.size, "size of {what}");
        assert_eq!(meta.blksize(), case.block_size, "st_blksize of {what}");
        assert_eq!(meta.mode() & 0o7777, 0o444, "mode of {what}");

        let reference = {
            let path = path.clone();
            within(120, &format!("reading {what}"), move || {
                std::fs::read(&path).expect("read mounted file")
            })
        };
        assert_eq!(
            hex(&Sha256::digest(&reference)),
            case.sha256,
            "SHA-256 of {what}"
        );
        let reference = Arc::new(reference);

        check_xattrs(&path, case, codec, version, &what);
        check_random_reads_by_processes(&path, &reference, &what);
        check_mmap(&path, &reference, &what);
        check_o_direct(&path, &reference, &what);
    }

    for build in cases.iter().map(|c| &c.build) {
        for object in ["snapfile", "metadata.json"] {
            let stored = std::fs::read(store.join(build).join(object)).expect("store object");
            let mounted = std::fs::read(mount.join(Path::new(build).join(object)))
                .unwrap_or_else(|e| panic!("read mounted {build}/{object}: {e}"));
            assert!(stored == mounted, "{name}/{build}/{object} differs");
        }
    }
}

fn check_xattrs(path: &Path, case: &FileCase, codec: &str, version: u64, what: &str) {
    let get = |attr: &str| {
        let out = run_ok(
            "getfattr",
            [
                "--only-values",
                "-n",
                &format!("user.tdfs.{attr}"),
                path.to_str().unwrap(),
            ],
        );
        out.trim().to_string()
    };
    assert_eq!(get("build_id"), case.build, "build_id of {what}");
    assert_eq!(get("block_size"), case.block_size.to_string(), "{what}");
    assert_eq!(get("compression"), codec, "compression of {what}");
    assert_eq!(get("header_version"), version.to_string(), "{what}");
    get("cached_bytes")
        .parse::<u64>()
        .unwrap_or_else(|e| panic!("cached_bytes of {what}: {e}"));
}

/// 24 random ranges (some crossing the end of the file, some of zero
/// length) read by 8 concurrent `dd` processes, 3 each.
fn check_random_reads_by_processes(path: &Path, reference: &[u8], what: &str) {
    let size = reference.len() as u64;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ size);
    let mut ranges = Vec::new();
    for i in 0..24 {
        let offset = match i {
            0 => size - 1,
            1 => size.saturating_sub(5000),
            _ => rng.next() % size,
        };
        let len = match i {
            2 => 0,
            _ => 1 + rng.next() % (3 << 20),
        };
        ranges.push((offset, len));
    }
    for batch in ranges.chunks(8) {
        let children: Vec<(u64, u64, Child)> = batch
            .iter()
            .map(|&(offset, len)| (offset, len, spawn_dd(path, offset, len)))
            .collect();
        for (offset, len, child) in children {
            let out = child.wait_with_output().expect("dd output");
            assert!(
                out.status.success(),
                "dd of {what} at {offset}+{len}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let end = (offset + len).min(size) as usize;
            assert!(
                out.stdout == reference[offset as usize..end],
                "{what}: bytes at {offset}+{len} differ (got {} bytes)",
                out.stdout.len()
            );
        }
    }
}

fn spawn_dd(path: &Path, offset: u64, len: u64) -> Child {
    Command::new("timeout")
        .args(["-k", "5", "120", "dd"])
        .arg(format!("if={}", path.display()))
        .args(["iflag=skip_bytes,count_bytes", "bs=256K", "status=none"])
        .arg(format!("skip={offset}"))
        .arg(format!("count={len}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dd")
}

fn check_mmap(path: &Path, reference: &Arc<Vec<u8>>, what: &str) {
    let path: PathBuf = path.to_path_buf();
    let reference = reference.clone();
    let what_owned = what.to_string();
    within(120, &format!("mmap of {what}"), move || {
        let file = File::open(&path).expect("open for mmap");
        // SAFETY: the mount is read-only; nothing changes the file under us.
        let map = unsafe { memmap2::Mmap::map(&file) }.expect("mmap");
        assert_eq!(map.len(), reference.len(), "mmap length of {what_owned}");
        // Touch pages out of order before comparing everything.
        let mut rng = Rng(7);
        for _ in 0..64 {
            let i = (rng.next() % map.len() as u64) as usize;
            assert_eq!(map[i], reference[i], "{what_owned}: mmap byte {i}");
        }
        assert!(
            map[..] == reference[..],
            "{what_owned}: mmap content differs"
        );
    });
}

/// Aligned 1 MiB reads with O_DIRECT: every read but the last returns a full
/// 1 MiB.
fn check_o_direct(path: &Path, reference: &Arc<Vec<u8>>, what: &str) {
    const CHUNK: usize = 1 << 20;
    let path: PathBuf = path.to_path_buf();
    let reference = reference.clone();
    let what_owned = what.to_string();
    within(120, &format!("O_DIRECT reads of {what}"), move || {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .expect("open O_DIRECT");
        // Page-aligned buffer, as O_DIRECT wants.
        let mut buf = memmap2::MmapMut::map_anon(CHUNK).expect("aligned buffer");
        let mut offset = 0;
        loop {
            let n = file.read(&mut buf[..]).expect("O_DIRECT read");
            let expected = (reference.len() - offset).min(CHUNK);
            assert_eq!(n, expected, "{what_owned}: O_DIRECT read at {offset}");
            if n == 0 {
                break;
            }
            assert!(
                buf[..n] == reference[offset..offset + n],
                "{what_owned}: O_DIRECT bytes at {offset} differ"
            );
            offset += n;
        }
    });
}
