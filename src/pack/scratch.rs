//! `ScratchDir`: a private directory for staged objects and read caches,
//! removed on drop (pack stages diffs in one, export caches reads in one).

use std::fs;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::PackError;

/// A private scratch directory (staged objects, a read cache), removed on
/// drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// A new directory under `parent`, or under the system temp directory.
    pub fn new(parent: Option<&Path>) -> Result<Self, PackError> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let path = parent.join(format!("tdfs-pack-{}", Uuid::new_v4().simple()));
        fs::create_dir_all(&path).map_err(|source| PackError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
