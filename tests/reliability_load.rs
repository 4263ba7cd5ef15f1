//! Load on a cold mount: 64 concurrent readers (32 threads of this process,
//! 32 `dd` child processes at a time) read three layered builds, mixing
//! sequential and random reads, for a bounded time. Every byte is compared
//! with the images the builds were packed from; `.stats` shows each unit was
//! fetched from the store about once (single-flight), and the daemon's peak
//! RSS stays bounded; the store is left untouched. A watchdog fails the test when no read completes for
//! 60 s (the mount guard then tears the mount down, freeing stuck readers).

mod common;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::mount::{MountGuard, fuse_available};
use common::process::{run_ok, tdfs_pack};
use common::rng::Rng;

const MEMFILE_SIZE: usize = 32 << 20;
const ROOTFS_SIZE: usize = 8 << 20;
const FRAME_SIZE: u64 = 2 << 20;
const CHUNK_SIZE: u64 = 4 << 20;
const THREAD_READERS: usize = 32;
const PROCESS_READERS: usize = 32;
const LOAD_DURATION: Duration = Duration::from_secs(15);
const STALL_LIMIT: Duration = Duration::from_secs(60);
const MAX_DAEMON_RSS: u64 = 256 << 20;
const FILES: [&str; 2] = ["memfile", "rootfs.ext4"];

/// A build id and its two images.
struct Build {
    id: String,
    images: [Vec<u8>; 2],
}

/// Base (zstd), layer 1 (uncompressed) on it, layer 2 (lz4) on layer 1;
/// each layer rewrites some memfile blocks and rootfs pages.
fn make_store(root: &Path, scratch: &Path) -> Vec<Build> {
    let mut rng = Rng(0x5eed_2026);
    let mut memfile = vec![0u8; MEMFILE_SIZE];
    let mut rootfs = vec![0u8; ROOTFS_SIZE];
    // Leave some zero regions, as real images have.
    rng.fill(&mut memfile[..MEMFILE_SIZE - (6 << 20)]);
    rng.fill(&mut rootfs[..ROOTFS_SIZE / 2]);
    let ids = [
        "11111111-2222-4333-8444-555555555501",
        "11111111-2222-4333-8444-555555555502",
        "11111111-2222-4333-8444-555555555503",
    ];
    let mut builds = Vec::new();
    for (layer, (id, compress)) in ids.iter().zip(["zstd", "none", "lz4"]).enumerate() {
        if layer > 0 {
            for _ in 0..3 {
                let block = rng.below((MEMFILE_SIZE >> 21) as u64) as usize;
                rng.fill(&mut memfile[block << 21..(block + 1) << 21]);
            }
            for _ in 0..64 {
                let page = rng.below((ROOTFS_SIZE / 4096) as u64) as usize;
                rng.fill(&mut rootfs[page * 4096..(page + 1) * 4096]);
            }
        }
        let mem_path = scratch.join(format!("{layer}.mem"));
        let rootfs_path = scratch.join(format!("{layer}.rootfs"));
        fs::write(&mem_path, &memfile).unwrap();
        fs::write(&rootfs_path, &rootfs).unwrap();
        let mut extra = vec!["--compress", compress];
        if layer > 0 {
            extra.extend(["--base", ids[layer - 1]]);
        }
        tdfs_pack(root, id, &mem_path, &rootfs_path, &extra);
        builds.push(Build {
            id: id.to_string(),
            images: [memfile.clone(), rootfs.clone()],
        });
    }
    builds
}

/// Upper bound on distinct fetch units of the store: frames of compressed
/// objects, 4 MiB chunks of uncompressed ones.
fn store_units(root: &Path) -> u64 {
    let mut units = 0;
    for build in fs::read_dir(root).unwrap() {
        for entry in fs::read_dir(build.unwrap().path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".zstd") || name.ends_with(".lz4") {
                let sidecar = path.with_file_name(format!("{name}.uncompressed-size"));
                let size: u64 = fs::read_to_string(sidecar).unwrap().trim().parse().unwrap();
                units += size.div_ceil(FRAME_SIZE);
            } else if name == "memfile" || name == "rootfs.ext4" {
                units += fs::metadata(&path).unwrap().len().div_ceil(CHUNK_SIZE);
            }
        }
    }
    units
}

/// One reader's choice: a file and a range of it.
fn pick(rng: &mut Rng, builds: &[Build]) -> (usize, usize, usize, usize) {
    let build = rng.below(builds.len() as u64) as usize;
    let file = rng.below(2) as usize;
    let size = builds[build].images[file].len();
    let len = 4096 * (1 + rng.below(64) as usize);
    let offset = 4096 * rng.below(((size - len) / 4096) as u64 + 1) as usize;
    (build, file, offset, len)
}

/// Thread reader `n`: odd ones read whole files sequentially in 128 KiB
/// reads, even ones read random unaligned ranges.
fn thread_reader(
    n: usize,
    mountpoint: &Path,
    builds: &[Build],
    stop: &AtomicBool,
    progress: &AtomicU64,
) {
    let mut rng = Rng(0x1000 + n as u64);
    while !stop.load(Ordering::Relaxed) {
        let (b, f, offset, len) = pick(&mut rng, builds);
        let reference = &builds[b].images[f];
        let file = File::open(mountpoint.join(&builds[b].id).join(FILES[f])).expect("open");
        if n % 2 == 1 {
            let mut buf = vec![0u8; 128 << 10];
            let mut pos = 0;
            while pos < reference.len() && !stop.load(Ordering::Relaxed) {
                let got = file.read_at(&mut buf, pos as u64).expect("sequential read");
                assert!(got > 0, "early end of file at {pos}");
                assert!(
                    buf[..got] == reference[pos..pos + got],
                    "wrong bytes: build {} {} at {pos}",
                    builds[b].id,
                    FILES[f]
                );
                pos += got;
                progress.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            let offset = offset + rng.below(4096) as usize;
            let len = len.min(reference.len() - offset);
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset as u64)
                .expect("random read");
            assert!(
                buf == reference[offset..offset + len],
                "wrong bytes: build {} {} at {offset}+{len}",
                builds[b].id,
                FILES[f]
            );
            progress.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Process reader `n`: `dd` children, one at a time, of random ranges (odd
/// readers: whole files).
fn process_reader(
    n: usize,
    mountpoint: &Path,
    builds: &[Build],
    stop: &AtomicBool,
    progress: &AtomicU64,
) {
    let mut rng = Rng(0x2000 + n as u64);
    while !stop.load(Ordering::Relaxed) {
        let (b, f, mut offset, mut len) = pick(&mut rng, builds);
        let reference = &builds[b].images[f];
        if n % 2 == 1 {
            (offset, len) = (0, reference.len());
        }
        let path = mountpoint.join(&builds[b].id).join(FILES[f]);
        let out = Command::new("timeout")
            .args(["-k", "5", "120", "dd"])
            .arg(format!("if={}", path.display()))
            .args([
                "bs=4096".to_string(),
                format!("skip={}", offset / 4096),
                format!("count={}", len / 4096),
                "status=none".to_string(),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("running dd");
        assert!(
            out.status.success(),
            "dd of {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == reference[offset..offset + len],
            "wrong bytes from dd: build {} {} at {offset}+{len}",
            builds[b].id,
            FILES[f]
        );
        progress.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every file of the store with its size and modification time.
fn store_snapshot(root: &Path) -> Vec<(PathBuf, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut files = Vec::new();
    for build in fs::read_dir(root).unwrap() {
        for entry in fs::read_dir(build.unwrap().path()).unwrap() {
            let path = entry.unwrap().path();
            let md = fs::metadata(&path).unwrap();
            files.push((path, md.len(), md.mtime(), md.mtime_nsec()));
        }
    }
    files.sort();
    files
}

fn stat_value(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in .stats:\n{stats}"))
}

/// A `/proc/PID/status` field in bytes.
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("daemon status");
    let kib: u64 = status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kib * 1024
}

#[test]
fn sixty_four_readers_get_right_bytes_with_single_flight_and_bounded_memory() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let scratch = dir.path().join("images");
    fs::create_dir(&scratch).unwrap();
    let builds = Arc::new(make_store(&root, &scratch));
    let units = store_units(&root);
    let before = store_snapshot(&root);
    let mount = MountGuard::start(&root, &[]);
    let mountpoint: PathBuf = mount.path().to_path_buf();

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for n in 0..THREAD_READERS + PROCESS_READERS {
        let (builds, stop, progress, mountpoint) = (
            Arc::clone(&builds),
            Arc::clone(&stop),
            Arc::clone(&progress),
            mountpoint.clone(),
        );
        readers.push(thread::spawn(move || {
            if n < THREAD_READERS {
                thread_reader(n, &mountpoint, &builds, &stop, &progress);
            } else {
                process_reader(n, &mountpoint, &builds, &stop, &progress);
            }
        }));
    }

    // Watchdog: the readers must keep making progress, and all end soon
    // after they are told to stop.
    let start = Instant::now();
    let mut last = (0, Instant::now());
    while !readers.iter().all(|r| r.is_finished()) {
        thread::sleep(Duration::from_millis(200));
        if start.elapsed() > LOAD_DURATION {
            stop.store(true, Ordering::Relaxed);
        }
        let now = progress.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
        assert!(
            last.1.elapsed() < STALL_LIMIT,
            "no read completed for {STALL_LIMIT:?}; log:\n{}",
            mount.log()
        );
        if readers.iter().any(|r| r.is_finished()) && !stop.load(Ordering::Relaxed) {
            // A reader ended early: it failed; stop the rest and report it.
            stop.store(true, Ordering::Relaxed);
        }
    }
    let mut failures = 0;
    for r in readers {
        if r.join().is_err() {
            failures += 1;
        }
    }
    assert_eq!(failures, 0, "readers failed; log:\n{}", mount.log());
    let reads = progress.load(Ordering::Relaxed);
    assert!(reads > 64, "only {reads} reads completed");

    let stats = run_ok("cat", [mount.join(".stats").to_str().unwrap()]);
    let requests = stat_value(&stats, "tdfs_store_requests_total");
    let fetch_errors = stat_value(&stats, "tdfs_fetch_errors_total");
    assert_eq!(fetch_errors, 0, "{stats}");
    assert!(
        requests <= units + 4,
        "{requests} store requests for at most {units} distinct units: not single-flight\n{stats}"
    );
    let peak = proc_status_bytes(mount.pid(), "VmHWM:");
    let anon = proc_status_bytes(mount.pid(), "RssAnon:");
    eprintln!(
        "{reads} reads; {requests} store requests for {units} units; daemon peak RSS {} MiB, \
         anonymous RSS {} MiB",
        peak >> 20,
        anon >> 20
    );
    assert_eq!(store_snapshot(&root), before, "the mount changed the store");
    assert!(
        peak < MAX_DAEMON_RSS,
        "daemon peak RSS {} MiB is over {} MiB",
        peak >> 20,
        MAX_DAEMON_RSS >> 20
    );
}
