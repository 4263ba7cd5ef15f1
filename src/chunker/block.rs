//! The `Block` guard a read gets: a slice of the cache mapping that, under a
//! `CacheBudget`, keeps its units pinned against eviction while it lives (see
//! `budget`); or, when the cache disk was full, a copy made for its reader.

use std::ops::{Deref, Range};
use std::sync::Arc;

use super::budget::Lru;
use super::lookup::clamp;
use super::{ChunkerError, Inner};

/// One range of the diff: a slice of the cache mapping. While it lives, the
/// units it covers cannot be evicted (see `CacheBudget`).
pub struct Block<'a> {
    bytes: BlockBytes<'a>,
    pinned: Option<(&'a Lru, Range<usize>)>,
}

/// Where a block's bytes are: the cache mapping, or (when the cache disk is
/// full) a copy made for this reader.
enum BlockBytes<'a> {
    Cache(&'a [u8]),
    Heap(Vec<u8>),
}

impl Block<'_> {
    /// True when the bytes are a slice of the cache mapping (not a copy).
    pub(super) fn in_cache(&self) -> bool {
        matches!(self.bytes, BlockBytes::Cache(_))
    }

    /// No bytes, nothing pinned.
    pub(super) fn empty() -> Block<'static> {
        Block {
            bytes: BlockBytes::Cache(&[]),
            pinned: None,
        }
    }
}

impl Deref for Block<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.bytes {
            BlockBytes::Cache(bytes) => bytes,
            BlockBytes::Heap(bytes) => bytes,
        }
    }
}

impl AsRef<[u8]> for Block<'_> {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for Block<'_> {
    fn drop(&mut self) {
        if let Some((lru, units)) = self.pinned.take() {
            lru.unpin(units);
        }
    }
}

impl std::fmt::Debug for Block<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block").field("len", &self.len()).finish()
    }
}

impl Inner {
    /// An empty block holding the eviction pins of `units` (none without a
    /// budget). Waits out an eviction in progress on one of them, which is
    /// short (it runs under the session lock, no I/O but a hole punch).
    pub(super) fn pin(&self, units: &Range<usize>) -> Block<'_> {
        let mut block = Block::empty();
        if let Some(lru) = &self.lru {
            while !lru.pin(units.clone()) {
                std::thread::yield_now();
            }
            block.pinned = Some((lru, units.clone()));
        }
        block
    }

    /// Point a pinned block at `range`, which is present.
    pub(super) fn fill<'a>(
        &'a self,
        mut block: Block<'a>,
        range: &Range<u64>,
        units: &Range<usize>,
    ) -> Block<'a> {
        if let Some(lru) = &self.lru {
            lru.touch(units.clone());
        }
        // SAFETY: the range is inside the file and present: its bytes are
        // complete and nothing writes them while they are present; the pin
        // keeps the evictor away while the block lives.
        block.bytes =
            BlockBytes::Cache(unsafe { self.cache.slice(range.start, range.end - range.start) });
        block
    }

    /// A pinned block of `range` copied together from the units the cache
    /// could not keep (`uncached`) and the present rest (read with `pread`:
    /// see `damage`).
    ///
    /// # Errors
    /// `Cache` when the present rest cannot be read back (the units are
    /// dropped, to be fetched again by the next read).
    pub(super) fn assemble<'a>(
        &'a self,
        mut block: Block<'a>,
        range: &Range<u64>,
        units: &Range<usize>,
        uncached: &[(usize, Arc<[u8]>)],
    ) -> Result<Block<'a>, ChunkerError> {
        let mut bytes = vec![0u8; (range.end - range.start) as usize];
        for u in units.clone() {
            let unit = self.layout.unit_range(u);
            let part = clamp(range, &unit);
            let out =
                &mut bytes[(part.start - range.start) as usize..(part.end - range.start) as usize];
            match uncached.iter().find(|(v, _)| *v == u) {
                Some((_, data)) => out.copy_from_slice(
                    &data[(part.start - unit.start) as usize..(part.end - unit.start) as usize],
                ),
                // Present (checked by the caller) and pinned; the caller
                // checks the discard epoch after (see `damage`).
                None => {
                    let read = self.cache.read_at(out, part.start);
                    if let Err(e) = read {
                        drop(block);
                        self.cache_damaged(u..u + 1, &e, None);
                        return Err(self.cache_error(part.start, e));
                    }
                }
            }
        }
        block.bytes = BlockBytes::Heap(bytes);
        Ok(block)
    }
}
