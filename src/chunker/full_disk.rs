//! A full cache disk (ENOSPC or EDQUOT writing a unit) is not a read error:
//! the unit is fetched into memory (at most one chunk or one frame) for the
//! waiters of its session and never marked present. The first time, the
//! Chunker warns and stops read-ahead (it could not keep what it fetches);
//! from then on each unit's space is reserved before its fetch.

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::layout::Layout;
use super::{ChunkerError, Inner};

/// What this file keeps of a Chunker (`Inner::full_disk`), changed only here.
#[derive(Default)]
pub(super) struct FullDisk {
    /// Set once the cache disk was found full (warned once; from then on
    /// units' space is reserved first and read-ahead and prefetch stop, as
    /// they could not keep what they fetch).
    seen: AtomicBool,
}

impl FullDisk {
    /// True once the cache disk was found full.
    pub(super) fn seen(&self) -> bool {
        self.seen.load(Ordering::Relaxed)
    }
}

impl Inner {
    /// Unit `u` whole, fetched (and decoded) into memory, after a write of
    /// it found the cache disk full: at most `CHUNK_SIZE` or
    /// `MAX_FRAME_SIZE` bytes.
    pub(super) fn fetch_uncached(&self, u: usize) -> Result<Arc<[u8]>, ChunkerError> {
        if !self.full_disk.seen.swap(true, Ordering::Relaxed) {
            log::warn!(
                "{}: no space left for cache file {}; serving from the store without \
                 caching (free space in the cache directory or set --max-cache-size)",
                self.key,
                self.cache.path().display()
            );
        }
        match self.layout {
            Layout::Chunks { .. } => {
                let range = self.layout.unit_range(u);
                let mut data = vec![0u8; (range.end - range.start) as usize];
                self.read_store(range.start, range.start, &mut data)?;
                Ok(data.into())
            }
            Layout::Frames { .. } => {
                let frame = self.frame(u);
                let data = self.load_frame(u, &frame, |len| vec![0u8; len])?;
                Ok(data.into())
            }
        }
    }

    /// Once the cache disk was found full, reserve a unit's space before
    /// fetching it, so a disk still full costs a failed `fallocate` rather
    /// than a wasted fetch. Otherwise a full disk shows as the write's
    /// ENOSPC: reserving every unit up front would take the file's lock
    /// against the concurrent writes of other units.
    pub(super) fn reserve_if_full(&self, range: Range<u64>) -> Result<(), ChunkerError> {
        if !self.full_disk.seen() {
            return Ok(());
        }
        let start = range.start;
        self.cache
            .allocate(range)
            .map_err(|e| self.cache_error(start, e))
    }
}

/// True when a cache write failed for want of space (disk or quota).
pub(super) fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}
