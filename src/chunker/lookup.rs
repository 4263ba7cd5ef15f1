//! A lookup: the block for a wanted range of the diff. On a hit it pins the
//! range's units and tests their present bits; on a miss it joins or starts
//! the fetch session of each missing unit and waits (at most
//! `fetch_timeout`) until the range is present, or, when the cache disk is
//! full, puts it together from the bytes the sessions fetched into memory.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::session::Waited;
use super::{Block, ChunkerError, Inner};

/// How much of a wanted range one lookup returns.
#[derive(Debug, Clone, Copy)]
pub(super) enum Extent {
    /// Only the part in the range's first unit. On a miss the fetches of
    /// the rest of the range start too, so a caller that goes on through
    /// the range (`read_blocks`) finds them running.
    FirstUnit,
    /// The whole range as one block, or its prefix before a gap in a sparse
    /// frame table (`read_in_place`).
    Whole,
}

impl Extent {
    /// Most units the returned block may cover.
    fn max_units(self) -> usize {
        match self {
            Extent::FirstUnit => 1,
            Extent::Whole => usize::MAX,
        }
    }
}

impl Inner {
    /// The block for `want` (inside the diff, not empty), or the part of it
    /// that `extent` allows, waiting for fetches as needed.
    pub(super) fn get(
        self: &Arc<Self>,
        want: Range<u64>,
        extent: Extent,
    ) -> Result<Block<'_>, ChunkerError> {
        if let Some(e) = self.checksum_failed.get() {
            return Err(e.clone());
        }
        let off = want.start;
        let (units, end) = self
            .layout
            .span(off, want.end, extent.max_units())
            .map_err(|_| ChunkerError::NotInFrameTable {
                key: self.key,
                offset: off,
            })?;
        self.note_access(units.clone());
        let range = off..end;
        // Pinned from here on, misses included: a unit fetched for this
        // reader cannot be evicted before the reader has it.
        let mut block = self.pin(&units);
        if self.range_present(&range, &units) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            self.note_prefetch_hit(&units);
            return Ok(self.fill(block, &range, &units));
        }
        self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.fetch_timeout;
        let timeout = || ChunkerError::Timeout {
            key: self.key,
            offset: off,
            timeout: self.fetch_timeout,
        };
        let mut rest_started = false;
        // Units a full cache disk kept out of the cache: their bytes.
        let mut uncached: Vec<(usize, Arc<[u8]>)> = Vec::new();
        loop {
            let mut waits = Vec::new();
            for u in units.clone() {
                if uncached.iter().any(|(v, _)| *v == u) {
                    continue;
                }
                let part = clamp(&range, &self.layout.unit_range(u));
                if let Some(session) = self.join_or_start(u, &part, deadline)? {
                    waits.push((u, part, session));
                }
            }
            if !rest_started {
                rest_started = true;
                self.start_fetches(end..want.end, deadline);
            }
            for (u, part, session) in waits {
                match session.wait(|| self.range_present(&part, &(u..u + 1)), deadline) {
                    Waited::Ready | Waited::Ended => {}
                    Waited::Uncached(bytes) => uncached.push((u, bytes)),
                    Waited::Failed(e) => return Err(e),
                    Waited::TimedOut => return Err(timeout()),
                }
            }
            if uncached.is_empty() && self.range_present(&range, &units) {
                block = self.fill(block, &range, &units);
                return Ok(block);
            }
            let covered = units.clone().all(|u| {
                uncached.iter().any(|(v, _)| *v == u)
                    || self.range_present(&clamp(&range, &self.layout.unit_range(u)), &(u..u + 1))
            });
            if covered {
                return Ok(self.assemble(block, &range, &units, &uncached));
            }
            if Instant::now() >= deadline {
                return Err(timeout());
            }
        }
    }

    /// True when all of `range` (held by `units`) is present.
    pub(super) fn range_present(&self, range: &Range<u64>, units: &Range<usize>) -> bool {
        self.present.all_set(self.layout.bits_of(range, units))
    }

    /// True when all of unit `u` is present.
    pub(super) fn unit_complete(&self, u: usize) -> bool {
        self.range_present(&self.layout.unit_range(u), &(u..u + 1))
    }
}

/// The part of `range` inside `to`.
pub(super) fn clamp(range: &Range<u64>, to: &Range<u64>) -> Range<u64> {
    range.start.max(to.start)..range.end.min(to.end)
}
