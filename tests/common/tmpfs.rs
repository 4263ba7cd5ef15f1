//! A small tmpfs mounted for a test (a cache disk that fills up), unmounted
//! on drop. Mounting needs root.

use std::path::{Path, PathBuf};

use super::mount::unmount_lazily;
use super::process::run_ok;

/// A tmpfs mounted at a test's directory.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mount a tmpfs of `size` (as `mount -o size=` takes it, e.g. "2m") at
    /// `path`, creating the directory; mode 0700, as tdfs wants its cache.
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        // SAFETY: geteuid cannot fail.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "mounting a tmpfs needs root (run the test as root)"
        );
        std::fs::create_dir_all(path).expect("tmpfs mountpoint");
        run_ok(
            "mount",
            [
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
                path.to_str().expect("utf-8 temp path"),
            ],
        );
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount_lazily(&self.0);
    }
}
