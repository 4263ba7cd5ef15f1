//! `LocalStore`: a store in a local directory (the embedded default, and
//! what the tests and the demo use), with atomic writes.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::{PutOptions, Store, StoreError, WritableStore};
use crate::format::{ObjectKey, parse_build_id};

/// A store in a local directory: `ROOT/{build}/{object}`, the compressed
/// objects' uncompressed size in `{object}.uncompressed-size` sidecars.
/// Paths come only from `ObjectKey`s, which cannot escape `ROOT`.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Open the store at `root`, which must be an existing directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        if !root.is_dir() {
            return Err(StoreError::BadLocation(format!(
                "{}: not a directory (create it, or give the directory that holds the build folders)",
                root.display()
            )));
        }
        Ok(LocalStore { root })
    }

    /// Open the store at `root`, creating the directory if needed (writers).
    pub fn create(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| {
            StoreError::BadLocation(format!("{}: cannot create: {e}", root.display()))
        })?;
        Ok(LocalStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.to_string())
    }

    /// Write via a temp file in the same directory and rename into place.
    fn write_atomic(
        &self,
        key: &ObjectKey,
        dest: &Path,
        fill: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> Result<(), StoreError> {
        let dir = dest.parent().expect("object paths have a build directory");
        fs::create_dir_all(dir).map_err(|e| StoreError::io(key, e))?;
        let name = dest.file_name().expect("object paths have a name");
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            Uuid::new_v4().simple()
        ));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            fill(&mut f)?;
            f.sync_all()?;
            fs::rename(&tmp, dest)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io(key, e));
        }
        Ok(())
    }
}

impl Store for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn size(&self, key: &ObjectKey) -> Result<u64, StoreError> {
        let md = fs::metadata(self.path(key)).map_err(|e| StoreError::io(key, e))?;
        if !md.is_file() {
            return Err(StoreError::NotFound {
                key: key.to_string(),
            });
        }
        Ok(md.len())
    }

    fn uncompressed_size(&self, key: &ObjectKey) -> Result<Option<u64>, StoreError> {
        let sidecar = self.root.join(key.size_sidecar());
        let text = match fs::read_to_string(&sidecar) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(key, e)),
        };
        text.trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| StoreError::Io {
                key: key.size_sidecar(),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not a decimal size: {:?}", text.trim()),
                ),
            })
    }

    fn read_range(
        &self,
        key: &ObjectKey,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        let mut f = File::open(self.path(key)).map_err(|e| StoreError::io(key, e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| StoreError::io(key, e))?;
        Ok(Box::new(f.take(len)))
    }

    fn list_builds(&self) -> Result<Vec<Uuid>, StoreError> {
        let entries = fs::read_dir(&self.root).map_err(|e| {
            StoreError::BadLocation(format!("{}: cannot list: {e}", self.root.display()))
        })?;
        let mut builds: Vec<Uuid> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().to_str().and_then(parse_build_id))
            .collect();
        builds.sort();
        Ok(builds)
    }
}

impl WritableStore for LocalStore {
    fn put_file(&self, key: &ObjectKey, path: &Path, opts: PutOptions) -> Result<(), StoreError> {
        let dest = self.path(key);
        if let Some(size) = opts.uncompressed_size {
            let sidecar = self.root.join(key.size_sidecar());
            self.write_atomic(key, &sidecar, |f| f.write_all(size.to_string().as_bytes()))?;
        }
        self.write_atomic(key, &dest, |f| {
            let mut src = File::open(path)?;
            io::copy(&mut src, f).map(|_| ())
        })
    }

    fn put_bytes(&self, key: &ObjectKey, data: &[u8]) -> Result<(), StoreError> {
        let dest = self.path(key);
        self.write_atomic(key, &dest, |f| f.write_all(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Compression, FileKind};

    #[test]
    fn put_read_list_and_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::create(dir.path()).unwrap();
        let b = Uuid::new_v4();
        let key = ObjectKey::data(b, FileKind::Memfile, Compression::Zstd);
        store.put_bytes(&key, b"hello world").unwrap();
        assert_eq!(store.size(&key).unwrap(), 11);
        assert_eq!(store.read_exact_range(&key, 6, 5).unwrap(), b"world");
        assert!(matches!(
            store.read_exact_range(&key, 6, 6),
            Err(StoreError::ShortRead { got: 5, .. })
        ));
        assert!(store.uncompressed_size(&key).unwrap().is_none());
        let src = dir.path().join("src");
        fs::write(&src, b"abc").unwrap();
        store
            .put_file(
                &key,
                &src,
                PutOptions {
                    uncompressed_size: Some(42),
                },
            )
            .unwrap();
        assert_eq!(store.uncompressed_size(&key).unwrap(), Some(42));
        fs::write(dir.path().join("manifest.json"), b"{}").unwrap();
        fs::create_dir(dir.path().join("not-a-build")).unwrap();
        assert_eq!(store.list_builds().unwrap(), vec![b]);
        let missing = ObjectKey::header(Uuid::new_v4(), FileKind::Rootfs);
        assert!(matches!(
            store.size(&missing),
            Err(StoreError::NotFound { .. })
        ));
        assert!(!store.exists(&missing).unwrap());
        assert!(matches!(
            store.read_all(&key, 2),
            Err(StoreError::TooLarge { .. })
        ));
    }
}
