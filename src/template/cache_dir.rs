//! One instance's private cache directory, `PARENT/session-<uuid>`, held by
//! an exclusive `flock` on its lock file while the instance lives. A session
//! directory whose lock nobody holds was left by a crashed run: its files are
//! never trusted and it is removed when the next instance starts.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::TemplateError;

const SESSION_PREFIX: &str = "session-";
const LOCK_NAME: &str = ".lock";

#[derive(Debug)]
pub struct CacheDir {
    path: PathBuf,
    /// Holds the flock for the life of the instance.
    _lock: File,
}

impl CacheDir {
    /// Create a fresh session directory under `parent` (made 0700 if
    /// missing), removing stale sessions of crashed runs.
    pub fn create(parent: &Path) -> Result<CacheDir, TemplateError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TemplateError::Cache { path, source }
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(err(parent))?;
        remove_stale_sessions(parent).map_err(err(parent))?;
        let path = parent.join(format!("{SESSION_PREFIX}{}", Uuid::new_v4().simple()));
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(err(&path))?;
        let lock = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(path.join(LOCK_NAME))
            .map_err(err(&path))?;
        if !try_lock(&lock) {
            return Err(err(&path)(io::Error::last_os_error()));
        }
        Ok(CacheDir { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CacheDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            log::warn!("removing cache directory {}: {e}", self.path.display());
        }
    }
}

fn try_lock(file: &File) -> bool {
    // SAFETY: flock on an fd we own; no memory is shared with the call.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

fn remove_stale_sessions(parent: &Path) -> io::Result<()> {
    for entry in fs::read_dir(parent)? {
        let entry = entry?;
        let name = entry.file_name();
        let is_session = name.to_str().is_some_and(|n| n.starts_with(SESSION_PREFIX));
        if !is_session || !entry.file_type()?.is_dir() {
            continue;
        }
        let stale = match File::open(entry.path().join(LOCK_NAME)) {
            Ok(lock) => try_lock(&lock),
            // No lock file: a run that crashed while creating it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => return Err(e),
        };
        if stale {
            log::info!(
                "removing cache left by an earlier run: {}",
                entry.path().display()
            );
            fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn sessions_are_private_and_stale_ones_removed() {
        let parent = tempfile::tempdir().unwrap();
        let stale = parent.path().join("session-dead");
        fs::create_dir(&stale).unwrap();
        fs::write(stale.join(LOCK_NAME), b"").unwrap();
        fs::write(stale.join("x.cache"), b"old").unwrap();
        let other = parent.path().join("keep-me");
        fs::create_dir(&other).unwrap();

        let a = CacheDir::create(parent.path()).unwrap();
        assert!(!stale.exists(), "a session nobody locks is stale");
        assert!(other.exists(), "only session directories are touched");
        let mode = fs::metadata(a.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        let b = CacheDir::create(parent.path()).unwrap();
        assert!(a.path().exists(), "a live session is never removed");
        let b_path = b.path().to_path_buf();
        drop(b);
        assert!(!b_path.exists());
    }
}
