//! The handle types of a `TemplateFs`: what one open file or directory
//! reads from, and the table of open handles by number. Opening, reading
//! and releasing them is `templatefs::open`'s job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use fuser::FileType;
use uuid::Uuid;

use super::error::FsError;
use crate::format::Blob;
use crate::sync;
use crate::template::{DiffFile, ReadAhead, Recording, TemplateFile};

/// One name in a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: FileType,
    pub name: String,
}

/// What an open handle reads from.
pub(super) enum Handle {
    /// A template file, with this open file's own read-ahead stream (so
    /// readers of one file, or of files sharing a base, do not reset each
    /// other's window).
    Template {
        file: CurrentFile,
        read_ahead: ReadAhead,
        /// With `--record-prefetch`: where this handle's reads are noted.
        recording: Option<Recording>,
    },
    /// A build's own diff.
    Diff(DiffFile),
    Blob {
        build: Uuid,
        blob: Blob,
        /// As probed at open, so reads are cut where getattr said.
        size: u64,
    },
    /// `.stats` as rendered when it was opened, so one reader sees one
    /// consistent snapshot.
    Stats(Vec<u8>),
    /// A directory listing taken at opendir, so paging through it with
    /// offsets stays consistent while the store changes.
    Dir(Vec<DirEntry>),
}

/// The template file a handle reads: fixed, or, for one whose header came
/// from the build's origin peer, replaced when the build leaves its origin
/// (`Builds::reopen`; the bytes are the same, the objects maybe not).
pub(super) enum CurrentFile {
    Fixed(Arc<TemplateFile>),
    FromOrigin(RwLock<Arc<TemplateFile>>),
}

impl CurrentFile {
    pub(super) fn new(file: Arc<TemplateFile>) -> CurrentFile {
        if file.from_origin() {
            CurrentFile::FromOrigin(RwLock::new(file))
        } else {
            CurrentFile::Fixed(file)
        }
    }

    /// The file to read now.
    pub(super) fn get(&self) -> Arc<TemplateFile> {
        match self {
            CurrentFile::Fixed(file) => file.clone(),
            CurrentFile::FromOrigin(file) => sync::read(file).clone(),
        }
    }

    /// Put `new` in place of `old` unless another reader replaced `old`
    /// first; the file to read now.
    pub(super) fn replace(&self, old: &Arc<TemplateFile>, new: TemplateFile) -> Arc<TemplateFile> {
        match self {
            CurrentFile::Fixed(file) => file.clone(),
            CurrentFile::FromOrigin(file) => {
                let mut current = sync::write(file);
                if Arc::ptr_eq(&current, old) {
                    *current = Arc::new(new);
                }
                current.clone()
            }
        }
    }
}

/// Open handles by number; numbers are never reused within a mount, nor
/// across the serving processes of one connection (each starts at its own
/// `first`, see `starting_at`).
pub(super) struct HandleTable {
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next: AtomicU64,
}

impl Default for HandleTable {
    fn default() -> Self {
        HandleTable::starting_at(1)
    }
}

impl HandleTable {
    /// A table whose handles are numbered from `first` on.
    pub(super) fn starting_at(first: u64) -> Self {
        HandleTable {
            handles: RwLock::new(HashMap::new()),
            next: AtomicU64::new(first.max(1)),
        }
    }

    /// Put `handle` under number `fh`, one the kernel already holds (see
    /// `TemplateFs::adopt`), unless another thread did first.
    pub(super) fn insert(&self, fh: u64, handle: Handle) {
        sync::write(&self.handles)
            .entry(fh)
            .or_insert_with(|| Arc::new(handle));
    }

    /// True when `fh` is open here.
    pub(super) fn contains(&self, fh: u64) -> bool {
        sync::read(&self.handles).contains_key(&fh)
    }

    pub(super) fn add(&self, handle: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        sync::write(&self.handles).insert(fh, Arc::new(handle));
        fh
    }

    pub(super) fn get(&self, fh: u64) -> Result<Arc<Handle>, FsError> {
        sync::read(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or(FsError::NoHandle(fh))
    }

    pub(super) fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        sync::write(&self.handles).remove(&fh)
    }
}
