//! What an operator of a worker host sees of a mount: stopping it while a
//! file is open (SIGTERM, SIGINT, `umount`, `umount -l`, in the foreground
//! and as a daemon) ends it cleanly every time; `df` shows how full the
//! cache is; a broken build read in a loop does not flood the log.

mod common;

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::digest::sha256_hex;
use common::fixtures::{fixture_store, manifest};
use common::mount::{LazyUnmount, MountGuard, fuse_available, is_mounted};
use common::process::{TDFS, run_ok, wait_until};

/// How a test stops a mount.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Signal(i32),
    /// Plain `umount`: refused while a file is open, so the file is closed
    /// first.
    Umount,
    /// `umount -l` while the file is open.
    UmountLazy,
}

const STOPS: [Stop; 4] = [
    Stop::Signal(libc::SIGTERM),
    Stop::Signal(libc::SIGINT),
    Stop::Umount,
    Stop::UmountLazy,
];
/// Each stop is repeated: the faults this guards against were races.
const REPEATS: usize = 5;

/// One mountpoint, cache directory and log, reused by every mount of a
/// test (a remount on the same path is part of the promise).
struct Place {
    _dir: tempfile::TempDir,
    mountpoint: PathBuf,
    cache: PathBuf,
    store: PathBuf,
    build: String,
    memfile_sha256: String,
}

impl Place {
    fn new() -> Place {
        let dir = tempfile::tempdir().unwrap();
        let mountpoint = dir.path().join("mnt");
        fs::create_dir(&mountpoint).unwrap();
        let store = fixture_store("v4-zstd");
        let manifest = manifest(&store);
        let last = manifest["builds"].as_array().unwrap().last().unwrap();
        Place {
            mountpoint,
            cache: dir.path().join("cache"),
            build: last["build_id"].as_str().unwrap().to_string(),
            memfile_sha256: last["files"]["memfile"]["sha256"]
                .as_str()
                .unwrap()
                .to_string(),
            store,
            _dir: dir,
        }
    }

    fn memfile(&self) -> PathBuf {
        self.mountpoint.join(&self.build).join("memfile")
    }

    /// Start `tdfs mount` logging to `log`; returns the foreground child,
    /// or None for a daemon (whose starter has exited 0).
    fn mount(&self, log: &Path, foreground: bool) -> Option<Child> {
        let mut cmd = Command::new(TDFS);
        cmd.arg("mount")
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--log-file")
            .arg(log)
            .arg(&self.store)
            .arg(&self.mountpoint)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = if foreground {
            Some(
                cmd.arg("--foreground")
                    .spawn()
                    .expect("spawning tdfs mount"),
            )
        } else {
            let status = cmd.status().expect("running tdfs mount");
            assert!(status.success(), "daemon start: {status}");
            None
        };
        wait_until(Duration::from_secs(20), "mounted", || {
            let text = read_log(log);
            match text.contains("] mounted ") && is_mounted(&self.mountpoint) {
                true => Ok(()),
                false => Err(format!("log:\n{text}")),
            }
        });
        child
    }

    /// Cache directories left under the cache root.
    fn cache_dirs(&self) -> Vec<String> {
        fs::read_dir(&self.cache)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn read_log(log: &Path) -> String {
    fs::read_to_string(log).unwrap_or_default()
}

/// The pid of the tdfs process serving `mountpoint` (a daemon), from /proc.
fn serving_pid(mountpoint: &Path) -> i32 {
    let wanted = mountpoint.as_os_str().as_encoded_bytes();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.contains(&b"mount".as_slice()) && args.contains(&wanted) {
            return pid;
        }
    }
    panic!("no process serves {}", mountpoint.display());
}

fn process_gone(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) != 0 }
}

/// Wait (bounded) for the mount to end: the foreground child's exit
/// status, or the daemon gone.
fn wait_ended(child: Option<Child>, pid: i32, log: &Path) -> Option<std::process::ExitStatus> {
    let still = || format!("log:\n{}", read_log(log));
    match child {
        Some(mut child) => Some(wait_until(
            Duration::from_secs(15),
            "the mount ended",
            || child.try_wait().unwrap().ok_or_else(still),
        )),
        None => {
            wait_until(
                Duration::from_secs(15),
                "the daemon ended",
                || match process_gone(pid) {
                    true => Ok(()),
                    false => Err(still()),
                },
            );
            None
        }
    }
}

fn stop_while_open(place: &Place, stop: Stop, foreground: bool, round: usize) {
    let log = place.cache.with_file_name(format!("tdfs-{round}.log"));
    let child = place.mount(&log, foreground);
    let pid = match &child {
        Some(c) => c.id() as i32,
        None => serving_pid(&place.mountpoint),
    };
    // Every mount after the first is a remount on the same path: it serves
    // the right bytes.
    let memfile = fs::read(place.memfile()).unwrap();
    assert_eq!(sha256_hex(&memfile), place.memfile_sha256, "round {round}");
    let mut open = File::open(place.memfile()).unwrap();
    let mut first = [0u8; 100];
    open.read_exact(&mut first).unwrap();
    match stop {
        Stop::Signal(signal) => {
            // SAFETY: kill on the pid of our mount.
            unsafe { libc::kill(pid, signal) };
            // Closed only once the daemon is unmounting with it open.
            wait_until(Duration::from_secs(10), "the daemon unmounting", || {
                read_log(&log).contains(": unmounting ")
            });
            drop(open);
        }
        Stop::Umount => {
            drop(open);
            run_ok("umount", [&place.mountpoint]);
        }
        Stop::UmountLazy => {
            run_ok("umount", [Path::new("-l"), &place.mountpoint]);
            // Detached, yet the open file is still served until closed.
            assert!(!is_mounted(&place.mountpoint), "umount -l detaches");
            open.read_exact(&mut first).unwrap();
            drop(open);
        }
    }
    let status = wait_ended(child, pid, &log);
    let text = read_log(&log);
    let what = format!("{stop:?}, foreground {foreground}, round {round}; log:\n{text}");
    if let Some(status) = status {
        assert!(status.success(), "{status}: {what}");
    }
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("ended") || l.contains("stopped"))
            .count(),
        1,
        "one line says how the mount ended: {what}"
    );
    assert!(
        !text.contains(" ERROR ") && !text.contains(" WARN "),
        "{what}"
    );
    assert!(
        place.cache_dirs().is_empty(),
        "cache left: {:?}: {what}",
        place.cache_dirs()
    );
    assert!(!is_mounted(&place.mountpoint), "{what}");
}

fn stops_end_cleanly(foreground: bool) {
    let place = Place::new();
    let _cleanup = LazyUnmount(place.mountpoint.clone());
    let mut round = 0;
    for stop in STOPS {
        for _ in 0..REPEATS {
            stop_while_open(&place, stop, foreground, round);
            round += 1;
        }
    }
}

#[test]
fn stopping_a_foreground_mount_with_a_file_open_ends_cleanly() {
    if fuse_available() {
        stops_end_cleanly(true);
    }
}

#[test]
fn stopping_a_daemon_with_a_file_open_ends_cleanly() {
    if fuse_available() {
        stops_end_cleanly(false);
    }
}

/// `stat -f` figures: (block size, blocks, free, available, files).
fn statfs(path: &Path) -> (u64, u64, u64, u64, u64) {
    let out = run_ok(
        "stat",
        [
            Path::new("-f"),
            Path::new("-c"),
            Path::new("%S %b %f %a %c"),
            path,
        ],
    );
    let v: Vec<u64> = out.split_whitespace().map(|s| s.parse().unwrap()).collect();
    (v[0], v[1], v[2], v[3], v[4])
}

#[test]
fn df_shows_how_full_the_cache_is() {
    if !fuse_available() {
        return;
    }
    let budget: u64 = 64 << 20;
    let mount = MountGuard::start(fixture_store("v4-zstd"), &["--max-cache-size", "64MiB"]);
    let (bsize, blocks, free, avail, files) = statfs(mount.path());
    assert_eq!(
        (bsize, blocks),
        (4096, budget / 4096),
        "size is the cache budget"
    );
    assert_eq!((free, avail), (blocks, blocks), "nothing cached yet");
    assert_eq!(files, 2, "root and .stats");
    let flags = run_ok(
        "findmnt",
        ["-n", "-o", "OPTIONS", mount.path().to_str().unwrap()],
    );
    assert!(
        flags.split(',').any(|f| f.trim() == "ro"),
        "mounted ro: {flags}"
    );

    let build = manifest(&fixture_store("v4-zstd"))["builds"][2]["build_id"]
        .as_str()
        .unwrap()
        .to_string();
    let bytes = fs::read(mount.join(&build).join("memfile")).unwrap();
    let (_, _, free, _, files) = statfs(mount.path());
    let used = (blocks - free) * 4096;
    assert!(
        used >= 8 << 20,
        "used grows after a read: {used} after {} bytes",
        bytes.len()
    );
    assert!(used <= budget);
    assert!(files >= 2 + 5, "the build seen: {files}");
    // df shows Use% as used / size.
    let df = run_ok(
        "df",
        [
            "-B1",
            "--output=size,used,pcent",
            mount.path().to_str().unwrap(),
        ],
    );
    let row: Vec<&str> = df.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[0].parse::<u64>().unwrap(), budget, "{df}");
    assert_eq!(row[1].parse::<u64>().unwrap(), used, "{df}");
    let pcent = used.saturating_mul(100).div_ceil(budget);
    assert_eq!(row[2], format!("{pcent}%"), "{df}");
}

#[test]
fn a_broken_build_read_in_a_loop_logs_a_bounded_number_of_lines() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    run_ok("cp", [Path::new("-r"), &fixture_store("v4-zstd"), &store]);
    let build = manifest(&store)["builds"][1]["build_id"]
        .as_str()
        .unwrap()
        .to_string();
    fs::write(store.join(&build).join("memfile.header"), [0xffu8; 256]).unwrap();
    let mount = MountGuard::start(&store, &[]);
    let memfile = mount.join(&build).join("memfile");
    for _ in 0..1000 {
        let err = fs::read(&memfile).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
    }
    let log = mount.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&build)).collect();
    assert!(
        !lines.is_empty() && lines.len() <= 3,
        "{} lines:\n{log}",
        lines.len()
    );
    assert!(
        lines[0].contains("corrupt"),
        "the first line names the cause: {}",
        lines[0]
    );
}
