//! The mount's cache directory, `PARENT/mount-<uuid>`: private to one
//! instance (a mount, or a tool that reads diffs) and held by an exclusive
//! `flock` on its lock file while the instance lives. A cache directory whose
//! lock nobody holds was left by a crashed run: its files are never trusted
//! and it is removed when the next instance starts. Earlier versions
//! named them `session-<uuid>`; those are removed the same way.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::TemplateError;

const PREFIX: &str = "mount-";
/// The prefix older versions used, whose leftovers are removed too.
const OLD_PREFIX: &str = "session-";
const LOCK_NAME: &str = ".lock";

#[derive(Debug)]
pub struct CacheDir {
    path: PathBuf,
    /// Holds the flock for the life of the instance.
    _lock: File,
}

impl CacheDir {
    /// Create a fresh cache directory under `parent` (made 0700 if
    /// missing), removing stale ones of crashed runs.
    ///
    /// # Errors
    /// `TemplateError::Cache` when a directory cannot be made, read or
    /// locked.
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
        remove_stale(parent).map_err(err(parent))?;
        let path = parent.join(format!("{PREFIX}{}", Uuid::new_v4().simple()));
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

fn remove_stale(parent: &Path) -> io::Result<()> {
    for entry in fs::read_dir(parent)? {
        let entry = entry?;
        let name = entry.file_name();
        let is_cache = name
            .to_str()
            .is_some_and(|n| n.starts_with(PREFIX) || n.starts_with(OLD_PREFIX));
        if !is_cache || !entry.file_type()?.is_dir() {
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
    fn cache_dirs_are_private_and_stale_ones_removed() {
        let parent = tempfile::tempdir().unwrap();
        let stale = parent.path().join("mount-dead");
        let old = parent.path().join("session-dead");
        for dir in [&stale, &old] {
            fs::create_dir(dir).unwrap();
            fs::write(dir.join(LOCK_NAME), b"").unwrap();
            fs::write(dir.join("x.cache"), b"old").unwrap();
        }
        let other = parent.path().join("keep-me");
        fs::create_dir(&other).unwrap();

        let a = CacheDir::create(parent.path()).unwrap();
        assert!(!stale.exists(), "a cache directory nobody locks is stale");
        assert!(!old.exists(), "older versions' session-* leftovers go too");
        assert!(other.exists(), "only cache directories are touched");
        let name = a.path().file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("mount-"), "{name}");
        let mode = fs::metadata(a.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        let b = CacheDir::create(parent.path()).unwrap();
        assert!(a.path().exists(), "a live cache directory is never removed");
        let b_path = b.path().to_path_buf();
        drop(b);
        assert!(!b_path.exists());
    }
}
