//! A `tdfs mount --foreground` child on a temporary mountpoint that is
//! unmounted and killed on drop, for the FUSE integration tests.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::process::{TDFS, run, run_ok, wait_until};
use super::tools::tool_available;

/// How long a mount may take to appear.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// True when FUSE tests can run; see `tools::tool_available` (the switch
/// is TDFS_SKIP_FUSE).
pub fn fuse_available() -> bool {
    tool_available(
        Path::new("/dev/fuse").exists(),
        "TDFS_SKIP_FUSE",
        "/dev/fuse",
        "the FUSE tests need it (modprobe fuse, or a container run with --device /dev/fuse)",
    )
}

/// True when `path` is a mountpoint of this machine (any file system).
pub fn is_mounted(path: &Path) -> bool {
    tdfs::fs::mount_points()
        .expect("reading /proc/self/mountinfo")
        .iter()
        .any(|p| p == path)
}

/// Lazily unmount `path` (bounded) if anything is mounted there: the
/// cleanup every guard of a mount runs on drop.
pub fn unmount_lazily(path: &Path) {
    if is_mounted(path) {
        let _ = run("umount", [OsStr::new("-l"), path.as_os_str()]);
    }
}

/// The extended attribute that tells a template file's prefetch state.
pub const PREFETCH_XATTR: &str = "user.tdfs.prefetch";

/// Extended attribute `name` (e.g. `user.tdfs.prefetch`) of `path`, read
/// with getfattr as a user would.
pub fn xattr(path: &Path, name: &str) -> String {
    run_ok(
        "getfattr",
        [
            "--only-values",
            "-n",
            name,
            path.to_str().expect("UTF-8 path"),
        ],
    )
}

/// `path`'s `user.tdfs.prefetch` once its prefetch has started and ended
/// (30 s at most).
pub fn settled(path: &Path) -> String {
    wait_until(Duration::from_secs(30), "prefetch ended", || {
        let state = xattr(path, PREFETCH_XATTR);
        match state.starts_with("running") || state == "none" {
            true => Err(state),
            false => Ok(state),
        }
    })
}

/// Unmounts its path lazily on drop, for mounts made outside a `MountGuard`
/// (a daemon, the mount helper, a loop mount).
pub struct LazyUnmount(pub PathBuf);

impl Drop for LazyUnmount {
    fn drop(&mut self) {
        unmount_lazily(&self.0);
    }
}

/// How to start a `MountGuard`: `MountGuard::options(store)`, then any of
/// `args`, `env`, `user`, `nofile`, `over`, then `start`.
pub struct MountConfig {
    store: OsString,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Open file limit: soft, hard.
    nofile: Option<(u64, u64)>,
    /// Run as this user and group.
    user: Option<u32>,
    /// Mount where this crashed daemon died, in its temporary directory.
    over: Option<CrashedMount>,
}

impl MountConfig {
    /// Extra `tdfs mount` arguments (e.g. `--passthrough on`).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Environment variables for the daemon (`RUST_LOG` here replaces the
    /// default `info`).
    pub fn env(mut self, env: &[(&str, String)]) -> Self {
        self.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        self
    }

    /// Run the daemon as user and group `id` (no capabilities; fusermount3
    /// mounts for it). Its mountpoint and temporary files are given to
    /// `id`; the store must be readable by it. Only `id` can read the mount
    /// (no allow_other).
    pub fn user(mut self, id: u32) -> Self {
        self.user = Some(id);
        self
    }

    /// The daemon's open file limit: `soft` (current) and `hard` (maximum).
    pub fn nofile(mut self, soft: u64, hard: u64) -> Self {
        self.nofile = Some((soft, hard));
        self
    }

    /// Mount again where `crashed` died (see `MountGuard::crash`).
    pub fn over(mut self, crashed: CrashedMount) -> Self {
        self.over = Some(crashed);
        self
    }

    /// Start the daemon and wait (bounded) until it has mounted.
    pub fn start(mut self) -> MountGuard {
        let (dir, mountpoint) = match self.over.as_mut() {
            Some(crashed) => (
                crashed.dir.take().expect("not restarted yet"),
                crashed.mountpoint.clone(),
            ),
            None => new_mountpoint(),
        };
        if let Some(id) = self.user {
            for path in [dir.path(), &mountpoint] {
                std::os::unix::fs::chown(path, Some(id), Some(id)).expect("chown");
            }
        }
        MountGuard::launch(dir, mountpoint, &self)
    }
}

/// A running `tdfs mount --foreground`.
pub struct MountGuard {
    child: Option<Child>,
    mountpoint: PathBuf,
    log: PathBuf,
    // Dropped last, after the mount is gone.
    _dir: tempfile::TempDir,
}

/// A new temporary directory and the empty mountpoint `mnt` inside it.
fn new_mountpoint() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).expect("mkdir mountpoint");
    (dir, mountpoint)
}

impl MountGuard {
    /// How to mount `store` (a path or URL) on a new temporary mountpoint.
    pub fn options(store: impl AsRef<OsStr>) -> MountConfig {
        MountConfig {
            store: store.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            nofile: None,
            user: None,
            over: None,
        }
    }

    /// `options(store).args(extra).start()`, the common case.
    pub fn start(store: impl AsRef<OsStr>, extra: &[&str]) -> MountGuard {
        Self::options(store).args(extra).start()
    }

    fn launch(dir: tempfile::TempDir, mountpoint: PathBuf, options: &MountConfig) -> MountGuard {
        let mountpoint = std::path::absolute(&mountpoint).expect("absolute mountpoint");
        let log = dir.path().join(format!("tdfs-{}.log", unique()));
        // A test may bring its own --cache-dir (e.g. on a small tmpfs).
        let cache = match options.args.iter().any(|a| a == "--cache-dir") {
            true => vec![],
            false => vec![
                "--cache-dir".into(),
                dir.path().join("cache").into_os_string(),
            ],
        };
        let mut command = Command::new(TDFS);
        if let Some(id) = options.user {
            use std::os::unix::process::CommandExt;
            // std drops the supplementary groups when root sets a uid.
            command.uid(id).gid(id);
        }
        if let Some((soft, hard)) = options.nofile {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: setrlimit is async-signal-safe, and `limit` is a copy
            // owned by the closure.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .arg("mount")
            .arg("--foreground")
            .args(&cache)
            .arg("--log-file")
            .arg(&log)
            .args(&options.args)
            .arg(&options.store)
            .arg(&mountpoint)
            .env("RUST_LOG", "info")
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning tdfs mount");
        let mut guard = MountGuard {
            child: Some(child),
            mountpoint,
            log,
            _dir: dir,
        };
        guard.wait_mounted();
        guard
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// `path` inside the mount.
    pub fn join(&self, path: impl AsRef<Path>) -> PathBuf {
        self.mountpoint.join(path)
    }

    /// The parent of this mount's cache directory (unless the test gave
    /// its own `--cache-dir`).
    pub fn cache_parent(&self) -> PathBuf {
        self._dir.path().join("cache")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait (30 s at most) until a line of the daemon's log passes `line`;
    /// panics naming `what`, with the log, when none does.
    pub fn wait_for_log(&self, what: &str, line: impl Fn(&str) -> bool) {
        wait_until(Duration::from_secs(30), what, || {
            let log = self.log();
            match log.lines().any(&line) {
                true => Ok(()),
                false => Err(format!("log:\n{log}")),
            }
        });
    }

    /// The value of counter `name` (e.g. `tdfs_store_bytes_total`) in the
    /// mount's `.stats` now.
    pub fn stat(&self, name: &str) -> u64 {
        let stats = std::fs::read_to_string(self.join(".stats")).unwrap();
        stats
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in .stats:\n{stats}"))
    }

    /// Wait until this process says it has mounted (mountinfo alone cannot
    /// tell a new mount from a stale one it is about to replace).
    fn wait_mounted(&mut self) {
        let what = format!("{} mounted", self.mountpoint.display());
        wait_until(MOUNT_TIMEOUT, &what, || {
            if self.log().contains("] mounted ") && is_mounted(&self.mountpoint) {
                return Ok(());
            }
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut stderr);
                }
                self.child = None;
                panic!(
                    "tdfs mount exited before mounting ({status}): {stderr}\nlog:\n{}",
                    self.log()
                );
            }
            Err(format!("log:\n{}", self.log()))
        });
    }

    /// Send `signal` and wait (bounded) for the process to exit.
    pub fn signal_and_wait(&mut self, signal: i32) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    return child.wait().ok();
                }
            }
        }
    }

    /// SIGKILL the daemon, leaving a dead mount behind (as a crash does),
    /// for `MountConfig::over` to mount over.
    pub fn crash(mut self) -> CrashedMount {
        let status = self.signal_and_wait(libc::SIGKILL).expect("daemon ran");
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // Hand the dead mount over: this guard's drop must leave it be.
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().expect("temp dir"));
        let mountpoint = std::mem::replace(&mut self.mountpoint, self._dir.path().join("none"));
        CrashedMount {
            dir: Some(dir),
            mountpoint,
        }
    }
}

/// The dead mount a crashed daemon left; lazily unmounted on drop unless a
/// new mount took over.
pub struct CrashedMount {
    dir: Option<tempfile::TempDir>,
    pub mountpoint: PathBuf,
}

impl Drop for CrashedMount {
    fn drop(&mut self) {
        if self.dir.is_some() {
            unmount_lazily(&self.mountpoint);
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        self.signal_and_wait(libc::SIGTERM);
        unmount_lazily(&self.mountpoint);
    }
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
