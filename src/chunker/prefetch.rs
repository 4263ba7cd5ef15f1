//! Prefetch's way into a Chunker: queue fetches of the units holding a
//! range, at the lowest priority of the pool. A prefetch fetch is queued
//! only when no reader or read-ahead fetch waits in the pool's queue and
//! fewer than all workers but a reserve for readers run prefetch fetches
//! (see `FetchPool::try_start_prefetch`); otherwise the caller is told to come
//! back later. It is an ordinary fetch session, so a reader of a unit a
//! prefetch is fetching joins it (single-flight) rather than waiting
//! behind it.
//!
//! Units prefetch brought in are remembered (a bitmap made on first use),
//! so `.stats` can count the lookups they answered.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use super::cache::PresentBits;
use super::session::{Route, Session};
use super::{Chunker, ChunkerError, Inner};

/// What a prefetch request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefetchStart {
    /// Every unit of the range is cached or being fetched; units of
    /// `queued_bytes` bytes were queued by this request.
    Started { queued_bytes: u64 },
    /// The pool has no room for prefetch now: ask again later (the units
    /// before the first one that found no room may have been queued).
    Busy,
}

/// What prefetch keeps of a Chunker (`Inner::prefetch`), changed only here.
#[derive(Default)]
pub(super) struct PrefetchState {
    /// Units prefetch brought in, made on first use; never cleared (see
    /// `note_prefetch_hit`).
    prefetched: OnceLock<PresentBits>,
    /// Prefetch fetches of this diff queued or running.
    in_flight: AtomicUsize,
}

impl Chunker {
    /// Queue fetches of the units holding `[off, off + len)` below every
    /// reader and read-ahead fetch (see the module docs). Bytes no frame
    /// holds (a gap of a sparse frame table) end the range, as is everything once the cache disk is full.
    ///
    /// # Errors
    /// `OutOfRange` when the range reaches past the diff.
    pub fn prefetch(&self, off: u64, len: u64) -> Result<PrefetchStart, ChunkerError> {
        let end = self.inner.end_inside(off, len)?;
        Ok(self.inner.prefetch(off..end))
    }

    /// Prefetch fetches of this diff queued or running.
    pub fn prefetches_in_flight(&self) -> usize {
        self.inner.prefetch.in_flight.load(Ordering::Acquire)
    }
}

impl Inner {
    fn prefetch(self: &Arc<Self>, range: Range<u64>) -> PrefetchStart {
        let mut queued_bytes = 0;
        if self.full_disk.seen() || self.closed.load(Ordering::Relaxed) {
            return PrefetchStart::Started { queued_bytes };
        }
        let mut pos = range.start;
        while pos < range.end {
            // One unit at a time; a gap of a sparse frame table ends the
            // range (no frame of this diff holds it: nothing to fetch).
            let Ok((units, end)) = self.layout.span(pos, range.end, 1) else {
                break;
            };
            pos = end;
            let u = units.start;
            if self.unit_complete(u) {
                continue;
            }
            let mut sessions = self.sessions.lock();
            if sessions.contains_key(&u) || self.unit_complete(u) {
                continue;
            }
            if !self.pool.try_start_prefetch() {
                return PrefetchStart::Busy;
            }
            let session = Arc::new(Session::new(Route::PeerThenStore));
            // Queued while holding the session lock, so the job cannot end
            // its session before it is in the map.
            if self
                .pool
                .try_submit(self.prefetch_job(u, &session))
                .is_err()
            {
                self.pool.end_prefetch();
                return PrefetchStart::Busy;
            }
            self.prefetch.in_flight.fetch_add(1, Ordering::AcqRel);
            sessions.insert(u, session);
            self.stats.prefetch_fetches.fetch_add(1, Ordering::Relaxed);
            let unit = self.layout.unit_range(u);
            queued_bytes += unit.end - unit.start;
        }
        PrefetchStart::Started { queued_bytes }
    }

    /// The pool job of a prefetch fetch of unit `u`: the fetch, then its
    /// accounting. The pool slot is given back whatever happened.
    fn prefetch_job(self: &Arc<Self>, u: usize, session: &Arc<Session>) -> super::pool::Job {
        let inner = Arc::clone(self);
        let session = Arc::clone(session);
        Box::new(move || {
            inner.run_fetch(u, &session);
            if inner.unit_complete(u) {
                let unit = inner.layout.unit_range(u);
                inner
                    .stats
                    .prefetch_bytes
                    .fetch_add(unit.end - unit.start, Ordering::Relaxed);
                inner
                    .prefetch
                    .prefetched
                    .get_or_init(|| PresentBits::new(inner.layout.units()))
                    .set(u..u + 1);
            }
            inner.prefetch.in_flight.fetch_sub(1, Ordering::AcqRel);
            inner.pool.end_prefetch();
        })
    }

    /// Count a lookup of `units` answered from the cache when prefetch
    /// brought any of them in. (A prefetched unit evicted and fetched again
    /// by a reader still counts: the bitmap is not cleared on eviction.)
    pub(super) fn note_prefetch_hit(&self, units: &Range<usize>) {
        if let Some(bits) = self.prefetch.prefetched.get()
            && bits.count(units.clone()) > 0
        {
            self.stats.prefetch_hits.fetch_add(1, Ordering::Relaxed);
        }
    }
}
