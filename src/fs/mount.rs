//! Putting a `TemplateFs` on a mountpoint: checks of the mountpoint
//! (missing, not a directory, not empty, already mounted, or a stale mount
//! left by a crashed run, which is cleared), serving it through fuser with
//! our options and threads, and unmounting. (fuser calls its serving loop a
//! `Session`; in tdfs "session" means only the Chunker's fetch session.)

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::Receiver;
use fuser::{Config, InitFlags, MountOption, Negotiated, Session, SessionACL, SessionUnmounter};

use super::connection::Connection;
use super::fuse::{FuseAdapter, MAX_READAHEAD};
use super::takeover::Handover;
use super::templatefs::TemplateFs;
use crate::sync;

/// Why FUSE, a mountpoint, mounting, serving or unmounting failed. These
/// reach the user, never the kernel; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum MountpointError {
    #[error(
        "FUSE is not available: {0} (load the module with `modprobe fuse`; in a container pass --device /dev/fuse)"
    )]
    FuseUnavailable(String),
    #[error("mountpoint {}: {reason}", .path.display())]
    Mountpoint { path: PathBuf, reason: String },
    #[error("mounting on {}: {source}", .path.display())]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How the mount is exposed.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// Let users other than the mounting one in (`allow_other`).
    pub allow_other: bool,
    /// FUSE worker threads. They block while a read waits on a fetch, so
    /// there should be enough that cache hits never queue behind misses.
    pub threads: usize,
    /// The connection may be taken over by a later serving process (see
    /// `takeover`): every worker reads the one /dev/fuse file.
    pub takeover: bool,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            // Only the mounting user, as FUSE itself defaults to: letting
            // others in is the mounter's choice (and needs fuse.conf).
            allow_other: false,
            // Each worker blocks while its read waits for a fetch; 32 keeps
            // cache hits from queueing behind a burst of misses (a VM's
            // page faults come many at once) at a few idle threads' cost.
            threads: 32,
            takeover: false,
        }
    }
}

/// Check that FUSE can be used at all.
pub fn check_fuse_device() -> Result<(), MountpointError> {
    match std::fs::metadata("/dev/fuse") {
        Ok(_) => Ok(()),
        Err(e) => Err(MountpointError::FuseUnavailable(format!("/dev/fuse: {e}"))),
    }
}

/// Make `path` ready to mount on and return it absolute and canonical:
/// clears a stale FUSE mount left there by a crashed process, and refuses a
/// missing path, a non-directory, a live mount or a non-empty directory.
pub fn prepare_mountpoint(path: &Path) -> Result<PathBuf, MountpointError> {
    let bad = |reason: String| MountpointError::Mountpoint {
        path: path.to_path_buf(),
        reason,
    };
    let absolute = std::path::absolute(path).map_err(|e| bad(e.to_string()))?;
    if let Err(e) = statfs(&absolute)
        && e.raw_os_error() == Some(libc::ENOTCONN)
    {
        log::warn!(
            "{}: clearing a stale mount left by a tdfs process that exited without unmounting \
             (\"{e}\")",
            absolute.display()
        );
        detach(&absolute).map_err(|e| {
            bad(format!(
                "is a stale mount (transport endpoint is not connected) that could not be \
                 cleared: {e}; run `umount -l {}` and retry",
                absolute.display()
            ))
        })?;
    }
    let meta = std::fs::metadata(&absolute).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => bad(format!(
            "does not exist (create it first: mkdir -p {})",
            absolute.display()
        )),
        _ => bad(e.to_string()),
    })?;
    if !meta.is_dir() {
        return Err(bad("is not a directory".into()));
    }
    let canonical = absolute.canonicalize().map_err(|e| bad(e.to_string()))?;
    if mount_points()
        .map_err(|e| bad(format!("reading /proc/self/mountinfo: {e}")))?
        .contains(&canonical)
    {
        return Err(bad(format!(
            "something is already mounted there (unmount it first: umount {})",
            canonical.display()
        )));
    }
    let mut entries = std::fs::read_dir(&canonical).map_err(|e| bad(e.to_string()))?;
    if entries.next().is_some() {
        return Err(bad(
            "is not empty (mount on an empty directory so nothing is hidden)".into(),
        ));
    }
    Ok(canonical)
}

/// statfs(2) of `path`. Unlike stat, which the kernel may answer from its
/// attribute cache, a FUSE statfs always reaches the daemon, so a dead one
/// shows as ENOTCONN.
fn statfs(path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statfs is plain data; c_path is NUL-terminated.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut buf) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Mount points of this process's mount namespace.
pub fn mount_points() -> io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .collect())
}

/// Undo the octal escapes (`\040` for a space) of mountinfo fields.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let text = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmount `path` now (EBUSY when a file is open): directly when we may
/// (root), else through fusermount3.
fn unmount_path(path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: c_path is a valid NUL-terminated string for the call.
    if unsafe { libc::umount2(c_path.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let direct = io::Error::last_os_error();
    if direct.raw_os_error() == Some(libc::EBUSY) {
        return Err(direct);
    }
    match Command::new("fusermount3")
        .args(["-u", "--"])
        .arg(path)
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        // fusermount3 says why on stderr; a busy mount is what it means.
        Ok(_) => Err(io::Error::from_raw_os_error(libc::EBUSY)),
        Err(e) => Err(io::Error::other(format!(
            "umount2: {direct}; fusermount3: {e}"
        ))),
    }
}

/// Lazily unmount `path`: directly when we may (root), else through
/// fusermount3.
fn detach(path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: c_path is a valid NUL-terminated string for the call.
    if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let direct = io::Error::last_os_error();
    let status = Command::new("fusermount3")
        .args(["-u", "-z", "--"])
        .arg(path)
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(io::Error::other(format!(
            "umount2: {direct}; fusermount3 -u -z: {s}"
        ))),
        Err(e) => Err(io::Error::other(format!(
            "umount2: {direct}; fusermount3: {e}"
        ))),
    }
}

/// A live mount. Dropping it without `unmount` leaves the mount to the
/// serving thread (the process exiting ends it).
pub struct Mounted {
    path: PathBuf,
    unmounter: Unmounter,
    serving: JoinHandle<()>,
    ended: Receiver<io::Result<()>>,
    /// What INIT settled, for a process that takes the connection over.
    negotiated: Negotiated,
    /// Watched while the mount lives (see `connection`); also what
    /// `handover` duplicates.
    connection: Connection,
}

/// How a mount is unmounted: through fuser, which mounted it, or, for a
/// connection taken over from another process (fuser holds no mount for
/// it), by its path.
enum Unmounter {
    Session(SessionUnmounter),
    Path,
}

/// How `unmount` went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmounted {
    /// Nothing was open: the mount is gone and serving has ended.
    Done,
    /// Files were open: the mount was detached; serving went on until they
    /// were closed, and has ended.
    DetachedThenDone,
    /// Files were still open after the grace period; serving is left to
    /// the process exit.
    StillInUse,
}

/// fuser's configuration of a tdfs mount.
fn session_config(options: &MountConfig) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("tdfs".into()),
        MountOption::Subtype("tdfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(options.threads.max(1));
    // A cloned /dev/fuse file per worker spares the workers one shared
    // file's queue lock, but each is a device of its own in the kernel,
    // which ends the requests read from it (ECONNABORTED to the reader)
    // when the process holding it dies. A mount that may be taken over
    // keeps every request on the one file the keeper holds too, so they
    // survive for FUSE_NOTIFY_RESEND (see `takeover`). Not measured.
    config.clone_fd = !options.takeover;
    config
}

/// Mount `fs` on `mountpoint` (already prepared) and serve it from
/// `options.threads` worker threads. Returns once the kernel has
/// connected, so the mount is usable.
pub fn mount(
    fs: Arc<TemplateFs>,
    mountpoint: &Path,
    options: &MountConfig,
) -> Result<Mounted, MountpointError> {
    let failed = |source| MountpointError::Mount {
        path: mountpoint.to_path_buf(),
        source,
    };
    let (adapter, adapter_mount) = FuseAdapter::new(fs);
    let mut fuse = Session::new(adapter, mountpoint, &session_config(options)).map_err(failed)?;
    let negotiated = fuse
        .negotiated()
        .ok_or_else(|| failed(io::Error::other("no INIT from the kernel")))?;
    let unmounter = Unmounter::Session(fuse.unmount_callable());
    *sync::lock(&adapter_mount) = Some(fuse.unmount_callable());
    serve(fuse, mountpoint, unmounter, negotiated)
}

/// Serve `fs` on the connection `handover` of a mount on `mountpoint` that
/// another process made and served: no INIT (it happened once), the
/// negotiated parameters as handed over, and the requests the other
/// process left unanswered queued again (FUSE_NOTIFY_RESEND).
pub fn resume(
    fs: Arc<TemplateFs>,
    mountpoint: &Path,
    options: &MountConfig,
    handover: Handover,
) -> Result<Mounted, MountpointError> {
    let Handover { device, negotiated } = handover;
    let (adapter, _) = FuseAdapter::new(fs);
    adapter.adopt(&negotiated);
    let fuse = Session::from_initialized_fd(
        adapter,
        device,
        session_config(options).acl,
        session_config(options),
        negotiated,
    );
    // Before any worker reads: the kernel resends every request read and
    // not answered on the connection, so a request this process had
    // already read would be served twice and its first reply refused
    // (ENOENT, the id changed).
    if !negotiated.kernel_flags.contains(InitFlags::FUSE_HAS_RESEND) {
        log::warn!(
            "{}: the kernel cannot resend requests (FUSE_NOTIFY_RESEND needs Linux 6.9): \
             reads that were in flight in the previous serving process wait forever",
            mountpoint.display()
        );
    } else if let Err(e) = fuse.notifier().resend() {
        log::warn!(
            "{}: asking the kernel to resend the requests in flight: {e}",
            mountpoint.display()
        );
    }
    let mounted = serve(fuse, mountpoint, Unmounter::Path, negotiated)?;
    Ok(mounted)
}

/// Run `fuse`'s serving loop on a thread of its own.
fn serve(
    fuse: Session<FuseAdapter>,
    mountpoint: &Path,
    unmounter: Unmounter,
    negotiated: Negotiated,
) -> Result<Mounted, MountpointError> {
    let failed = |source| MountpointError::Mount {
        path: mountpoint.to_path_buf(),
        source,
    };
    let connection = Connection::watch(&fuse).map_err(failed)?;
    let (tx, ended) = crossbeam_channel::bounded(1);
    let serving = thread::Builder::new()
        .name("fuse-serve".into())
        .spawn(move || {
            let _ = tx.send(fuse.run().or_else(normal_end));
        })
        .map_err(failed)?;
    // Only now: finding the mount's device stats its root, which needs the
    // mount served.
    raise_readahead(mountpoint);
    Ok(Mounted {
        path: mountpoint.to_path_buf(),
        unmounter,
        serving,
        ended,
        negotiated,
        connection,
    })
}

/// The errors a serving loop ends with when the mount simply went away.
/// The kernel answers a worker's read of /dev/fuse with ECONNABORTED when it
/// ends the connection (the last file of a detached mount closed, or an
/// unmount) while that worker was being handed a request (fs/fuse/dev.c,
/// `fuse_dev_do_read`); the other workers get ENODEV, which fuser already
/// counts as a normal end.
fn normal_end(e: io::Error) -> io::Result<()> {
    match e.raw_os_error() {
        Some(libc::ECONNABORTED | libc::ENODEV) => Ok(()),
        _ => Err(e),
    }
}

/// The kernel offers FUSE mounts a small read-ahead window and only lets the
/// filesystem shrink it at init; the bdi setting raises it (root only; a
/// failure only costs speed).
fn raise_readahead(mountpoint: &Path) {
    let Ok(meta) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = meta.dev();
    let bdi = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    match std::fs::write(&bdi, format!("{}", MAX_READAHEAD / 1024)) {
        Ok(()) => log::debug!("{bdi} set to {} KiB", MAX_READAHEAD / 1024),
        Err(e) => log::debug!("cannot raise read-ahead via {bdi}: {e}"),
    }
}

impl Mounted {
    /// The connection, for a later process to take over: a duplicate of
    /// the /dev/fuse descriptor (the same open file) and what INIT settled.
    ///
    /// # Errors
    /// The error of dup(2) (out of descriptors).
    pub fn handover(&self) -> io::Result<Handover> {
        Ok(Handover {
            device: self.connection.duplicate()?,
            negotiated: self.negotiated,
        })
    }

    /// Yields once when serving ends (unmounted by us or from outside, or
    /// failed).
    pub fn ended(&self) -> &Receiver<io::Result<()>> {
        &self.ended
    }

    /// Unmount and wait up to `grace` for serving to finish. A busy
    /// mount (EBUSY: a file is open) is detached lazily: open files keep
    /// working until closed, or until this process exits. Once serving has
    /// ended, the `TemplateFs` is dropped, and with it the cache directory.
    ///
    /// # Errors
    /// `MountpointError::Mount` when the mount could neither be unmounted nor
    /// detached, or serving failed.
    pub fn unmount(mut self, grace: Duration) -> Result<Unmounted, MountpointError> {
        let mut how = Unmounted::Done;
        let unmounted = match &mut self.unmounter {
            Unmounter::Session(session) => session.unmount(),
            Unmounter::Path => unmount_path(&self.path),
        };
        if let Err(e) = unmounted {
            if e.raw_os_error() != Some(libc::EBUSY) {
                log::warn!(
                    "{}: unmount failed ({e}); detaching it lazily",
                    self.path.display()
                );
            }
            detach(&self.path).map_err(|source| MountpointError::Mount {
                path: self.path.clone(),
                source,
            })?;
            how = Unmounted::DetachedThenDone;
        }
        match self.ended.recv_timeout(grace) {
            Ok(result) => {
                let _ = self.serving.join();
                result.map_err(|source| MountpointError::Mount {
                    path: self.path.clone(),
                    source,
                })?;
                Ok(how)
            }
            Err(_) => Ok(Unmounted::StillInUse),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo("/mnt/tab\\011x\\134"), "/mnt/tab\tx\\");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("\\"), "\\");
        assert_eq!(unescape_mountinfo("\\04"), "\\04");
    }

    #[test]
    fn mountpoint_checks() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = prepare_mountpoint(&missing).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = prepare_mountpoint(&file).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        let err = prepare_mountpoint(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert_eq!(
            prepare_mountpoint(&empty).unwrap(),
            empty.canonicalize().unwrap()
        );
        let err = prepare_mountpoint(Path::new("/proc"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("already mounted"), "{err}");
    }
}
