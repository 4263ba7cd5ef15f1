//! A mount outlives its serving process (issue 25): while one reader faults
//! random pages of a mapped memfile and another streams rootfs.ext4, the
//! serving process is SIGKILLed again and again (also with every read slow
//! on the store, and across an upgrade in place, SIGUSR2): both readers see
//! every byte right and no error, only pauses. Serving processes that keep
//! failing to start end the mount with a message; the fd-store protocol is
//! driven by a stand-in for systemd. Each kill prints the time to the next
//! successful read.

mod common;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::digest::sha256_hex;
use common::fixtures::{fixture_store, manifest_build};
use common::mount::{LazyUnmount, MountGuard, fuse_available, is_mounted};
use common::oracle::oracle_flatten;
use common::process::TDFS;
use common::rng::Rng;
use tdfs::format::FileKind;
use tdfs::store::LocalStore;
use uuid::Uuid;

/// The top build of the v4-zstd fixture (three generations of diffs).
const TOP: &str = "bd87702b-8d31-4e8d-beda-66b642c931a9";
const PAGE: usize = 4096;
/// Longest a test waits for anything.
const BOUND: Duration = Duration::from_secs(60);

/// The flattened reference of `file` of the fixture build, and the
/// manifest's SHA-256 of it.
fn reference(file: FileKind) -> (Vec<u8>, String) {
    let store = fixture_store("v4-zstd");
    let local = LocalStore::open(&store).unwrap();
    let bytes = oracle_flatten(&local, Uuid::parse_str(TOP).unwrap(), file);
    let sha = manifest_build(&store, TOP)["files"][file.name()]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        sha256_hex(&bytes),
        sha,
        "the oracle agrees with the manifest"
    );
    (bytes, sha)
}

/// The serving process under supervisor `supervisor`, if one runs.
fn serving_pid(supervisor: u32) -> Option<i32> {
    let children =
        std::fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// Wait (bounded) until `takeovers` serving processes have logged that
/// they took the connection over.
fn wait_taken_over(mount: &MountGuard, takeovers: usize) {
    let deadline = Instant::now() + BOUND;
    // The serving process's own line (the supervisor's says "serving
    // process N took over").
    while mount.log().matches("] took over ").count() < takeovers {
        assert!(
            Instant::now() < deadline,
            "no takeover; log:\n{}",
            mount.log()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Drop the kernel's cached pages of `file`, so the next read reaches tdfs.
fn drop_cache(file: &File) {
    // SAFETY: fadvise on an open descriptor.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// The two readers, run until `stop`: `last_read` is the time (ns since
/// `start`) of the last read that completed. They panic on any error or
/// wrong byte; `passes` counts whole rootfs streams checked by SHA-256.
struct Readers {
    stop: Arc<AtomicBool>,
    last_read: Arc<AtomicU64>,
    passes: Arc<AtomicU64>,
    start: Instant,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Readers {
    fn start(mount: &MountGuard) -> Readers {
        let stop = Arc::new(AtomicBool::new(false));
        let last_read = Arc::new(AtomicU64::new(0));
        let passes = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let (memfile, _) = reference(FileKind::Memfile);
        let (_, rootfs_sha) = reference(FileKind::Rootfs);
        let mut threads = Vec::new();
        let path = mount.join(TOP).join("memfile");
        let (s, l) = (stop.clone(), last_read.clone());
        threads.push(thread::spawn(move || {
            let file = File::open(&path).expect("open memfile");
            let map = unsafe { memmap2::Mmap::map(&file) }.expect("map memfile");
            let mut rng = Rng(25);
            let pages = memfile.len() / PAGE;
            while !s.load(Ordering::Relaxed) {
                let page = rng.below(pages as u64) as usize;
                let range = page * PAGE..(page + 1) * PAGE;
                // Not mapped in, and not in the page cache: a real fault.
                unsafe {
                    libc::madvise(
                        map.as_ptr().add(range.start) as *mut _,
                        PAGE,
                        libc::MADV_DONTNEED,
                    );
                }
                drop_cache(&file);
                assert!(
                    map[range.clone()] == memfile[range],
                    "memfile page {page} wrong"
                );
                l.store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
        }));
        let path = mount.join(TOP).join("rootfs.ext4");
        let (s, l, p) = (stop.clone(), last_read.clone(), passes.clone());
        threads.push(thread::spawn(move || {
            use std::io::Read;
            while !s.load(Ordering::Relaxed) {
                let mut file = File::open(&path).expect("open rootfs.ext4");
                drop_cache(&file);
                let mut all = Vec::new();
                let mut buf = vec![0; 128 << 10];
                loop {
                    let n = file.read(&mut buf).expect("read rootfs.ext4");
                    if n == 0 {
                        break;
                    }
                    all.extend_from_slice(&buf[..n]);
                    l.store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
                assert_eq!(sha256_hex(&all), rootfs_sha, "rootfs.ext4 stream wrong");
                p.fetch_add(1, Ordering::Relaxed);
            }
        }));
        Readers {
            stop,
            last_read,
            passes,
            start,
            threads,
        }
    }

    /// Wait (bounded) for a read that completed after `at`; how long after.
    fn next_read_after(&self, at: Instant) -> Duration {
        let deadline = Instant::now() + BOUND;
        let since = at.duration_since(self.start).as_nanos() as u64;
        while self.last_read.load(Ordering::Relaxed) <= since {
            assert!(
                Instant::now() < deadline,
                "no read completed after the kill"
            );
            assert!(
                !self.threads.iter().any(|t| t.is_finished()),
                "a reader failed"
            );
            thread::sleep(Duration::from_millis(1));
        }
        Duration::from_nanos(self.last_read.load(Ordering::Relaxed) - since)
    }

    /// Stop them; panics if either failed.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a reader failed (see its panic above)");
        }
        self.passes.load(Ordering::Relaxed)
    }
}

/// Kill the serving process `kills` times at random moments while the
/// readers run, each time waiting for the next one to take over.
fn kill_while_reading(extra: &[&str], kills: usize, seed: u64) {
    if !fuse_available() {
        return;
    }
    let mount = MountGuard::start(fixture_store("v4-zstd"), extra);
    let readers = Readers::start(&mount);
    let mut rng = Rng(seed);
    for kill in 1..=kills {
        thread::sleep(Duration::from_millis(100 + rng.below(400)));
        let pid = serving_pid(mount.pid()).expect("a serving process");
        let at = Instant::now();
        // SAFETY: kill of the serving process the test found.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let pause = readers.next_read_after(at);
        println!(
            "kill {kill}: next successful read {} ms after the SIGKILL",
            pause.as_millis()
        );
        wait_taken_over(&mount, kill);
    }
    let passes = readers.finish();
    assert!(passes > 0, "the rootfs reader finished no pass");
    assert!(is_mounted(mount.path()));
    assert!(!mount.log().contains("ERROR"), "{}", mount.log());
}

#[test]
fn readers_see_right_bytes_while_the_serving_process_is_killed() {
    kill_while_reading(&[], 4, 1);
}

#[test]
fn a_read_blocked_on_a_slow_store_survives_the_kill() {
    // Every store read waits 300 ms first: kills land on reads in flight.
    kill_while_reading(&["--bench-throttle", "300ms,50MB"], 3, 2);
}

#[test]
fn an_upgrade_in_place_is_only_a_pause() {
    if !fuse_available() {
        return;
    }
    let mount = MountGuard::start(
        fixture_store("v4-zstd"),
        &["--bench-throttle", "50ms,100MB"],
    );
    let readers = Readers::start(&mount);
    for upgrade in 1..=2 {
        thread::sleep(Duration::from_millis(300));
        let old = serving_pid(mount.pid()).expect("a serving process");
        let at = Instant::now();
        // SAFETY: a signal to our own child, the supervisor.
        unsafe {
            libc::kill(mount.pid() as i32, libc::SIGUSR2);
        }
        wait_taken_over(&mount, upgrade);
        let pause = readers.next_read_after(at);
        println!(
            "upgrade {upgrade}: next successful read {} ms after SIGUSR2",
            pause.as_millis()
        );
        assert_ne!(serving_pid(mount.pid()), Some(old));
    }
    readers.finish();
    assert!(mount.log().contains("leaving"), "{}", mount.log());
}

#[test]
fn serving_processes_that_keep_failing_to_start_end_the_mount() {
    if !fuse_available() {
        return;
    }
    let mut mount = MountGuard::start(fixture_store("v4-zstd"), &[]);
    // Every takeover now fails at start: its parameters are unreadable.
    let state = std::fs::read_dir(mount.cache_parent())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("takeover-")
        })
        .expect("a state directory");
    std::fs::write(state.join("connection"), "garbage\n").unwrap();
    let pid = serving_pid(mount.pid()).expect("a serving process");
    // SAFETY: kill of the serving process the test found.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + BOUND;
    while !mount.log().contains("giving up") {
        assert!(
            Instant::now() < deadline,
            "no give-up; log:\n{}",
            mount.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let status = mount.signal_and_wait(0).expect("the supervisor ran");
    assert_eq!(status.code(), Some(1), "{}", mount.log());
    let log = mount.log();
    assert!(
        log.contains("failed 5 times within 60s of starting"),
        "{log}"
    );
    assert!(log.contains("not a connection file tdfs wrote"), "{log}");
}

/// A stand-in for systemd: its notify socket, and the descriptors stored.
struct StandIn {
    socket: UnixDatagram,
    path: PathBuf,
}

impl StandIn {
    /// The next notice, and the descriptor it carried.
    fn notice(&self) -> (String, Option<OwnedFd>) {
        let mut buf = vec![0u8; 4096];
        let mut space = [0u64; 4];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: a zeroed msghdr pointing at live buffers; the received
        // descriptor becomes ours.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = space.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&space);
            let n = libc::recvmsg(self.socket.as_raw_fd(), &mut msg, 0);
            assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            let fd = (!cmsg.is_null() && (*cmsg).cmsg_type == libc::SCM_RIGHTS).then(|| {
                OwnedFd::from_raw_fd(std::ptr::read_unaligned(
                    libc::CMSG_DATA(cmsg).cast::<i32>(),
                ))
            });
            (String::from_utf8_lossy(&buf[..n as usize]).into_owned(), fd)
        }
    }

    /// Notices until one containing `want` (bounded by the socket timeout).
    fn until(&self, want: &str) -> (String, Option<OwnedFd>) {
        loop {
            let (text, fd) = self.notice();
            if text.contains(want) {
                return (text, fd);
            }
        }
    }

    /// Start the unit's main process, as systemd does: `$NOTIFY_SOCKET`,
    /// `$FDSTORE`, a runtime directory, and `stored` given back at fd 3
    /// with LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES.
    fn start(&self, dir: &Path, store: &Path, mnt: &Path, stored: Option<&OwnedFd>) -> Child {
        let mut command = Command::new("sh");
        // LISTEN_PID must be the main process's own pid: sh's, kept by exec.
        command
            .arg("-c")
            .arg("[ -n \"$LISTEN_FDS\" ] && export LISTEN_PID=$$; exec \"$0\" \"$@\"")
            .arg(TDFS)
            .args(["mount", "--foreground", "--cache-dir"])
            .arg(dir.join("cache"))
            .arg("--log-file")
            .arg(dir.join("tdfs.log"))
            .arg(store)
            .arg(mnt)
            .env("NOTIFY_SOCKET", &self.path)
            .env("FDSTORE", "1")
            .env("RUNTIME_DIRECTORY", dir.join("run"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(fd) = stored {
            let raw = fd.as_raw_fd();
            command.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", "fuse");
            // SAFETY: dup2 is async-signal-safe; fd 3 is where systemd puts
            // the first descriptor.
            unsafe {
                command.pre_exec(move || {
                    if libc::dup2(raw, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        command.spawn().expect("starting tdfs")
    }
}

#[test]
fn the_fd_store_gives_the_connection_to_the_next_start() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    std::fs::create_dir(dir.path().join("run")).unwrap();
    let _unmount = LazyUnmount(mnt.clone());
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(BOUND)).unwrap();
    let standin = StandIn { socket, path };
    let store = fixture_store("v4-zstd");
    let mut first = standin.start(dir.path(), &store, &mnt, None);
    let (_, stored) = standin.until("FDSTORE=1");
    let stored = stored.expect("FDSTORE=1 came with a descriptor");
    let (stored_notice, _) = standin.until("READY=1");
    assert!(stored_notice.contains("STATUS=serving"), "{stored_notice}");
    let (memfile, _) = reference(FileKind::Memfile);
    let file = mnt.join(TOP).join("memfile");
    assert!(std::fs::read(&file).unwrap() == memfile);

    // The main process dies; a reader waits meanwhile; the next start gets
    // the descriptor back and serves it.
    first.kill().unwrap();
    first.wait().unwrap();
    let reader = thread::spawn(move || {
        let f = File::open(&file).expect("open after the crash");
        drop_cache(&f);
        std::fs::read(&file).expect("read after the crash")
    });
    thread::sleep(Duration::from_millis(200));
    let at = Instant::now();
    let mut second = standin.start(dir.path(), &store, &mnt, Some(&stored));
    standin.until("READY=1");
    let read = reader.join().expect("the reader failed");
    println!(
        "fd store: the waiting read finished {} ms after the restart",
        at.elapsed().as_millis()
    );
    assert!(read == memfile, "wrong bytes after the takeover");
    let log = std::fs::read_to_string(dir.path().join("tdfs.log")).unwrap();
    assert!(log.contains("took over"), "{log}");

    // The upgrade in place (the unit's ExecReload=): the process leaves
    // with 75, which the unit restarts on, and the next start takes over.
    // SAFETY: SIGUSR2 to our own child.
    unsafe {
        libc::kill(second.id() as i32, libc::SIGUSR2);
    }
    assert_eq!(second.wait().unwrap().code(), Some(75));
    assert!(is_mounted(&mnt), "leaving must not unmount");
    let mut third = standin.start(dir.path(), &store, &mnt, Some(&stored));
    standin.until("READY=1");
    assert!(
        std::fs::read(mnt.join(TOP).join("memfile")).unwrap() == reference(FileKind::Memfile).0
    );

    // A stop still unmounts.
    // SAFETY: SIGTERM to our own child.
    unsafe {
        libc::kill(third.id() as i32, libc::SIGTERM);
    }
    let status = third.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&mnt));
}
