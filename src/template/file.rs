//! `TemplateFile`: one build's `memfile` or `rootfs.ext4` resolved through
//! its header. A read walks the mappings: a hole is zeros, anything else is
//! read from the Chunker of the build the mapping names. A range inside one
//! mapping can be handed out in place (a slice of the cache, or of a static
//! run of zero pages) so the FUSE reply needs no copy of its own. Read-ahead
//! works on the template file too: a reader's `ReadAhead` plans a range of
//! the file, and `read_ahead` asks each diff the range maps to for its part.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use uuid::Uuid;

use super::live_chunkers::LiveChunkers;
use super::{ReadAhead, TemplateError};
use crate::chunker::{Block, CHUNK_SIZE, Chunker};
use crate::format::{Compression, FileKind, Header, ObjectKey};
use crate::metrics::Stats;

/// Zeros for holes served in place: as long as the largest FUSE read. Never
/// written, so every page of it is the kernel's one shared zero page.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// Bytes of a template file served without a copy: see
/// `TemplateFile::read_in_place`.
pub enum FileBytes<'a> {
    /// A hole (a mapping to no build).
    Zeros(usize),
    /// Bytes in a diff's cache (pinned while this lives).
    Cached(Block<'a>),
}

impl std::ops::Deref for FileBytes<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Zeros(n) => &ZEROS[..*n],
            FileBytes::Cached(block) => block,
        }
    }
}

/// One build's `memfile` or `rootfs.ext4`, resolved through its header.
/// It holds the Chunkers of the diffs it reads while it lives, and hands
/// them back to its `Builds` when dropped (see `LiveChunkers`).
pub struct TemplateFile {
    pub(super) file: FileKind,
    pub(super) header: Arc<Header>,
    /// Chunkers of every build the mappings reference (a handful at most).
    pub(super) diffs: Vec<(Uuid, Arc<Chunker>)>,
    pub(super) stats: Arc<Stats>,
    /// Where the Chunkers go back when this is dropped.
    pub(super) live_chunkers: Arc<LiveChunkers>,
    /// Start window of a reader's read-ahead, in steps (`--readahead`).
    pub(super) readahead: usize,
    /// Whether its header came from the build's origin peer (a build being
    /// uploaded), and `Stats::origin_switches` before it was loaded: a
    /// switch since may have made its Chunkers unable to read (the store's
    /// data object may be compressed where the origin's was not).
    pub(super) from_origin: Option<u64>,
}

impl Drop for TemplateFile {
    fn drop(&mut self) {
        self.live_chunkers
            .release(self.file, std::mem::take(&mut self.diffs));
    }
}

impl TemplateFile {
    pub fn build_id(&self) -> Uuid {
        self.header.metadata.build_id
    }

    pub fn file(&self) -> FileKind {
        self.file
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Whether its header came from an origin peer (see `Builds::reopen`).
    pub fn from_origin(&self) -> bool {
        self.from_origin.is_some()
    }

    /// Whether a build left its origin since this was opened from one: a
    /// hint to ask `Builds::reopen` (one relaxed load per read).
    pub fn origin_switched_since(&self) -> bool {
        self.from_origin
            .is_some_and(|at| self.stats.origin_switches.load(Ordering::Relaxed) != at)
    }

    /// Logical size (the header's size).
    pub fn size(&self) -> u64 {
        self.header.metadata.size
    }

    pub fn block_size(&self) -> u64 {
        self.header.metadata.block_size
    }

    /// Compression of this build's own diff (see `own_compression`).
    pub fn compression(&self) -> Compression {
        own_compression(&self.header)
    }

    /// Read into `buf` from `off`: fills all of `buf` unless the file ends
    /// first (returns the count, 0 at or past the end).
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> Result<usize, TemplateError> {
        let start = Instant::now();
        let result = self.read_mappings(buf, off);
        let n = *result.as_ref().unwrap_or(&0);
        self.stats
            .record_read(self.file, n as u64, start.elapsed(), result.is_ok());
        result
    }

    /// The bytes of `[off, off + len)` (cut at the end of the file) when they
    /// lie in one mapping and, for a diff, in one stretch of its cache; the
    /// diff's missing parts are fetched first. `None` when the range spans
    /// mappings or frames that are not contiguous: use `read_at`. Lets a
    /// reader reply straight from the cache, without a copy of its own.
    pub fn read_in_place(
        &self,
        off: u64,
        len: usize,
    ) -> Result<Option<FileBytes<'_>>, TemplateError> {
        let start = Instant::now();
        let result = self.map_in_place(off, len);
        // A `None` is recorded by the `read_at` that serves it instead.
        match &result {
            Ok(None) => {}
            Ok(Some(bytes)) => {
                self.stats
                    .record_read(self.file, bytes.len() as u64, start.elapsed(), true)
            }
            Err(_) => self.stats.record_read(self.file, 0, start.elapsed(), false),
        }
        result
    }

    fn map_in_place(&self, off: u64, len: usize) -> Result<Option<FileBytes<'_>>, TemplateError> {
        let size = self.size();
        if off >= size {
            return Ok(Some(FileBytes::Zeros(0)));
        }
        let len = (len as u64).min(size - off);
        let Some(hit) = self.header.mappings.lookup(off) else {
            // read_at reports the missing mapping.
            return Ok(None);
        };
        if hit.remaining < len {
            return Ok(None);
        }
        if hit.build_id.is_nil() {
            return Ok((len as usize <= ZEROS.len()).then_some(FileBytes::Zeros(len as usize)));
        }
        let block = self
            .chunker(hit.build_id)?
            .read_in_place(hit.storage_offset, len)?;
        Ok((block.len() as u64 == len).then_some(FileBytes::Cached(block)))
    }

    fn read_mappings(&self, buf: &mut [u8], off: u64) -> Result<usize, TemplateError> {
        let size = self.size();
        if off >= size {
            return Ok(0);
        }
        let len = buf.len().min((size - off) as usize);
        let mut done = 0;
        while done < len {
            let pos = off + done as u64;
            let hit =
                self.header
                    .mappings
                    .lookup(pos)
                    .ok_or_else(|| TemplateError::Inconsistent {
                        key: ObjectKey::header(self.build_id(), self.file).to_string(),
                        detail: format!("no mapping covers offset {pos}"),
                    })?;
            let n = (len - done).min(hit.remaining.min(usize::MAX as u64) as usize);
            let out = &mut buf[done..done + n];
            if hit.build_id.is_nil() {
                out.fill(0);
            } else {
                self.chunker(hit.build_id)?
                    .read_blocks(out, hit.storage_offset)?;
            }
            done += n;
        }
        Ok(len)
    }

    /// A new reader's read-ahead state (one per open file): steps of the
    /// largest fetch unit of the file's diffs (4 MiB chunks when it has
    /// none), starting at the configured window.
    pub fn read_ahead_state(&self) -> ReadAhead {
        let step = self
            .diffs
            .iter()
            .map(|(_, c)| c.unit_size())
            .max()
            .unwrap_or(CHUNK_SIZE);
        ReadAhead::for_file(self.size(), step, self.readahead)
    }

    /// Note that the reader owning `ra` reads `[off, off + len)` and queue
    /// the read-ahead its stream calls for: the planned range of the file
    /// goes through the mappings, and each diff it maps to is asked for its
    /// storage range (`Chunker::read_ahead`, spare pool room only). Best
    /// effort: a mapping problem is reported by the read itself.
    pub fn read_ahead(&self, ra: &ReadAhead, off: u64, len: u64) {
        if let Some(plan) = ra.on_read(off, len) {
            ra.queued(&plan, self.queue_read_ahead(plan.clone()));
        }
    }

    /// Ask the diffs that `range` of the file maps to for their parts; the
    /// file offset up to which all was queued (`range.end` when all was).
    fn queue_read_ahead(&self, range: Range<u64>) -> u64 {
        let mut pos = range.start;
        while pos < range.end {
            let Some(hit) = self.header.mappings.lookup(pos) else {
                return range.end;
            };
            let n = hit.remaining.min(range.end - pos);
            if !hit.build_id.is_nil() {
                let Ok(chunker) = self.chunker(hit.build_id) else {
                    return range.end;
                };
                let storage = hit.storage_offset..hit.storage_offset + n;
                let reached = chunker.read_ahead(storage.clone());
                if reached < storage.end {
                    return pos + (reached - storage.start);
                }
            }
            pos += n;
        }
        range.end
    }

    pub(super) fn chunker(&self, build: Uuid) -> Result<&Chunker, TemplateError> {
        self.diffs
            .iter()
            .find(|(id, _)| *id == build)
            .map(|(_, c)| c.as_ref())
            .ok_or_else(|| TemplateError::Inconsistent {
                key: ObjectKey::header(self.build_id(), self.file).to_string(),
                detail: format!("mapping references build {build} that was not resolved"),
            })
    }

    /// Bytes of this build's own diff held in the local cache (0 when no
    /// mapping reads it).
    pub fn cached_bytes(&self) -> u64 {
        self.diffs
            .iter()
            .find(|(id, _)| *id == self.build_id())
            .map_or(0, |(_, c)| c.cached_bytes())
    }
}

/// Compression of the own diff of the build `header` describes, as its
/// builds section records it (V4/V5); a header without one (V1–V3, legacy)
/// describes an uncompressed diff.
pub fn own_compression(header: &Header) -> Compression {
    header
        .build(&header.metadata.build_id)
        .filter(|b| b.frames.is_compressed())
        .map_or(Compression::None, |b| b.frames.compression())
}
