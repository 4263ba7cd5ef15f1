//! A lookup: the block for a wanted range of the diff. On a hit it pins the
//! range's units and tests their present bits; on a miss it joins or starts
//! the fetch session of each missing unit and waits (at most
//! `fetch_timeout`) until the range is present, or, when the cache disk is
//! full, puts it together from the bytes the sessions fetched into memory.
//! `get_in_place` and `copy_out` turn a block into what a reader gets,
//! checking that its cached bytes can still be read (`damage`).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::damage::MAX_REPAIRS;
use super::session::{Route, Waited};
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
    /// that `extent` allows, waiting for fetches (reading as `route`
    /// allows) as needed.
    pub(super) fn get(
        self: &Arc<Self>,
        want: Range<u64>,
        extent: Extent,
        route: Route,
    ) -> Result<Block<'_>, ChunkerError> {
        if let Some(e) = self.integrity.failed() {
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
        let _waiting = self.stats.time_fetch_wait();
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
                if let Some(session) = self.join_or_start(u, &part, deadline, route)? {
                    waits.push((u, part, session));
                }
            }
            if !rest_started {
                rest_started = true;
                self.start_fetches(end..want.end, deadline, route);
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
                return self.assemble(block, &range, &units, &uncached);
            }
            if Instant::now() >= deadline {
                return Err(timeout());
            }
        }
    }

    /// `want` (inside the diff, not empty) as one block to hand to the
    /// kernel in place, or its prefix before a gap of a sparse frame table:
    /// its cached pages are populated first, so bytes lost from the cache
    /// file are found here (and fetched again) rather than by the kernel's
    /// copy. See `damage`.
    pub(super) fn get_in_place(
        self: &Arc<Self>,
        want: Range<u64>,
    ) -> Result<Block<'_>, ChunkerError> {
        let mut repairs = 0;
        loop {
            let epoch = self.discard_epoch();
            let block = match self.get(want.clone(), Extent::Whole, Route::PeerThenStore) {
                Err(ChunkerError::Cache { source, .. }) if repairs < MAX_REPAIRS => {
                    // A fetch found the cache file damaged and repaired it.
                    self.back_off(&mut repairs, &source);
                    continue;
                }
                got => got?,
            };
            let range = want.start..want.start + block.len() as u64;
            let ready = match block.in_cache() {
                true => self.cache.populate(range.start, range.end - range.start),
                // A copy (`assemble`), read with `pread`.
                false => Ok(()),
            };
            match ready {
                Ok(()) if self.discard_epoch() == epoch => return Ok(block),
                // Dropped meanwhile: look it up again.
                Ok(()) => {}
                Err(e) => {
                    drop(block);
                    self.repair(&mut repairs, &range, e)?;
                }
            }
        }
    }

    /// Fill `buf` with the diff's bytes at `off` (inside the diff), copied
    /// out of the cache file with `pread`, never through the mapping,
    /// fetching as `route` allows. See `damage`.
    pub(super) fn copy_out(
        self: &Arc<Self>,
        buf: &mut [u8],
        off: u64,
        route: Route,
    ) -> Result<(), ChunkerError> {
        let end = off + buf.len() as u64;
        let mut pos = off;
        let mut repairs = 0;
        while pos < end {
            let epoch = self.discard_epoch();
            // One unit at a time; on a miss, `get` starts the fetches of the
            // whole rest of the range so they run in parallel.
            let block = match self.get(pos..end, Extent::FirstUnit, route) {
                Err(ChunkerError::Cache { source, .. }) if repairs < MAX_REPAIRS => {
                    // A fetch found the cache file damaged and repaired it.
                    self.back_off(&mut repairs, &source);
                    continue;
                }
                got => got?,
            };
            let range = pos..pos + block.len() as u64;
            let out = &mut buf[(pos - off) as usize..(range.end - off) as usize];
            let read = match block.in_cache() {
                true => self.cache.read_at(out, pos),
                false => {
                    out.copy_from_slice(&block);
                    Ok(())
                }
            };
            match read {
                Ok(()) if self.discard_epoch() == epoch => pos = range.end,
                // Dropped meanwhile: look it up again.
                Ok(()) => {}
                Err(e) => {
                    drop(block);
                    self.repair(&mut repairs, &range, e)?;
                }
            }
        }
        Ok(())
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
