//! `DiffFile`: the diff view of a build — its own data object of a template
//! file, uncompressed, at storage offsets (as the uncompressed object would
//! hold them), whatever the store's compression. It is what the mount shows
//! as `<build>/diff/<file>` and what a peer serves (E2B's
//! `ReadAtBuildSeekable`), read through the same shared Chunker as the
//! template files that reference the diff, so every reader of a unit shares
//! one fetch of it.

use std::sync::Arc;
use std::time::Instant;

use uuid::Uuid;

use super::{Builds, TemplateError, TemplateFile};
use crate::chunker::{Block, Chunker};
use crate::format::FileKind;
use crate::metrics::Stats;

/// One build's own diff of `memfile` or `rootfs.ext4`. Cheap to clone.
#[derive(Clone)]
pub struct DiffFile {
    build: Uuid,
    file: FileKind,
    /// Declared before `template`, so it is dropped first: the template
    /// file then hands its Chunkers back to its `LiveChunkers`, which must
    /// hold the last reference (see `template::live_chunkers`).
    chunker: Arc<Chunker>,
    /// The build's template file, which keeps the Chunker counted as open
    /// by `LiveChunkers` while this view is open.
    template: Arc<TemplateFile>,
    stats: Arc<Stats>,
}

impl DiffFile {
    /// See `Builds::open_diff`, which is the door to this.
    pub(super) fn open(
        builds: &Builds,
        build: Uuid,
        file: FileKind,
    ) -> Result<DiffFile, TemplateError> {
        let mut template = builds.open(build, file)?;
        let own = template
            .diffs
            .iter()
            .find(|(id, _)| *id == build)
            .map(|(_, c)| c.clone());
        let chunker = match own {
            Some(c) => c,
            // A header that maps nothing to its own build may still have a
            // data object.
            None => {
                let header = template.header.clone();
                let c = builds
                    .diff(build, file, &header)
                    .map_err(|_| TemplateError::NoDiff {
                        build,
                        file,
                        location: builds.location(),
                    })?;
                template.diffs.push((build, c.clone()));
                c
            }
        };
        Ok(DiffFile {
            build,
            file,
            chunker,
            template: Arc::new(template),
            stats: builds.stats().clone(),
        })
    }

    pub fn build_id(&self) -> Uuid {
        self.build
    }

    pub fn file(&self) -> FileKind {
        self.file
    }

    /// Uncompressed size of the diff, in bytes.
    pub fn size(&self) -> u64 {
        self.chunker.size()
    }

    /// The header's block size, in bytes.
    pub fn block_size(&self) -> u64 {
        self.template.block_size()
    }

    /// Read into `buf` from storage offset `off`: fills all of `buf` unless
    /// the diff ends first (returns the count, 0 at or past the end).
    /// Recorded in `.stats` as a read of the mount.
    ///
    /// # Errors
    /// `TemplateError::Chunker` when the bytes cannot be fetched (see
    /// `Chunker::read_blocks`).
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> Result<usize, TemplateError> {
        let start = Instant::now();
        let result = self.copy_at(buf, off);
        let n = *result.as_ref().unwrap_or(&0);
        self.stats
            .record_read(self.file, n as u64, start.elapsed(), result.is_ok());
        result
    }

    /// `read_at` without counting a read of the mount.
    fn copy_at(&self, buf: &mut [u8], off: u64) -> Result<usize, TemplateError> {
        let len = self.clamp(off, buf.len() as u64) as usize;
        self.chunker.read_blocks(&mut buf[..len], off)?;
        Ok(len)
    }

    /// `read_at` to answer a peer (which keeps its own counters): not
    /// counted as a read of the mount, and the fetches it needs read the
    /// store only (see `Chunker::read_for_peer`).
    ///
    /// # Errors
    /// As `read_at`, and `Chunker(AskingPeer)` while this host is itself
    /// asking a peer for these bytes.
    pub fn read_for_peer(&self, buf: &mut [u8], off: u64) -> Result<usize, TemplateError> {
        let len = self.clamp(off, buf.len() as u64) as usize;
        self.chunker.read_for_peer(&mut buf[..len], off)?;
        Ok(len)
    }

    /// The bytes of `[off, off + len)` (cut at the end of the diff) as one
    /// block of the cache, fetched as needed, pinned while the block lives;
    /// `None` when they are not one stretch of the cache (frames with a gap
    /// between them): use `read_at`. Recorded in `.stats` like `read_at`.
    ///
    /// # Errors
    /// As `read_at`.
    pub fn read_in_place(&self, off: u64, len: u64) -> Result<Option<Block<'_>>, TemplateError> {
        let start = Instant::now();
        let len = self.clamp(off, len);
        match self.chunker.read_in_place(off.min(self.size()), len) {
            Ok(block) if block.len() as u64 == len => {
                self.stats
                    .record_read(self.file, len, start.elapsed(), true);
                Ok(Some(block))
            }
            // `read_at` records the read that serves it instead.
            Ok(_) => Ok(None),
            Err(e) => {
                self.stats.record_read(self.file, 0, start.elapsed(), false);
                Err(e.into())
            }
        }
    }

    /// The part of `len` bytes at `off` that lies inside the diff.
    fn clamp(&self, off: u64, len: u64) -> u64 {
        self.size().saturating_sub(off).min(len)
    }
}
