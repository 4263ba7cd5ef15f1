//! Prefetch's way into a Chunker: plan the units a replay wants into runs
//! (`plan_prefetch`: units adjacent in the object, fetched with one ranged
//! store request each, see `run`), then queue the runs at the lowest
//! priority of the pool (`prefetch_run`). A prefetch fetch is queued only
//! when no reader or read-ahead fetch waits in the pool's queue and fewer
//! than all workers but a reserve for readers run prefetch fetches (see
//! `FetchPool::try_start_prefetch`); otherwise the caller is told to come
//! back later. Each unit of a run has an ordinary fetch session, so a
//! reader of a unit a prefetch is fetching joins it (single-flight) rather
//! than waiting behind it, and a unit present or in flight is never fetched
//! twice: the run is split around it.
//!
//! With peers a run is one unit: each unit asks its owner peer first, which
//! one store request for many units would skip.
//!
//! Units prefetch brought in are remembered (a bitmap made on first use),
//! so `.stats` can count the lookups they answered.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use super::cache::PresentBits;
use super::pool::Job;
use super::run::{self, MAX_RUN_BYTES};
use super::session::{Route, Session};
use super::{Chunker, Inner};

/// What a prefetch request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefetchStart {
    /// Every unit of the run is cached or being fetched; units of
    /// `queued_bytes` bytes were queued by this request.
    Started { queued_bytes: u64 },
    /// The pool has no room for prefetch now: ask again later with the same
    /// run, which keeps what is left of it. Units of `queued_bytes` bytes
    /// were queued before the pool ran out of room.
    Busy { queued_bytes: u64 },
}

/// A run of a prefetch plan (`Chunker::plan_prefetch`): units of one diff
/// next to each other in the object, fetched with one store request, and
/// the part of them not queued yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchRun {
    first_touch: usize,
    units: Range<usize>,
}

impl PrefetchRun {
    /// The smallest first-touch rank among the ranges that want this run:
    /// a replay issues runs in this order.
    pub fn first_touch(&self) -> usize {
        self.first_touch
    }
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
    /// The units holding the diff byte ranges `wanted` (each with its
    /// first-touch rank: its place in the replay's order), grouped into runs
    /// of wanted units adjacent in the object, each at most `MAX_RUN_BYTES`
    /// of stored bytes (a larger unit alone; one unit each with peers), in
    /// the order of their first-touched unit. Ranges are clipped to the
    /// diff; bytes no frame holds are skipped. Memory: a word per unit of
    /// the diff, and the runs.
    pub fn plan_prefetch(&self, wanted: &[(usize, Range<u64>)]) -> Vec<PrefetchRun> {
        let inner = &self.inner;
        let max_bytes = match inner.peers {
            Some(_) => 0,
            None => MAX_RUN_BYTES,
        };
        run::group(&inner.layout, inner.size, wanted, max_bytes)
            .into_iter()
            .map(|(first_touch, units)| PrefetchRun { first_touch, units })
            .collect()
    }

    /// Queue the fetches of `run` below every reader and read-ahead fetch
    /// (see the module docs): units present or in flight are skipped and
    /// split the run around them, and each piece is one fetch job and one
    /// store request. Nothing is queued once the cache disk is full. Errors
    /// of the fetches surface when the bytes are read.
    pub fn prefetch_run(&self, run: &mut PrefetchRun) -> PrefetchStart {
        self.inner.prefetch_run(run)
    }

    /// Prefetch fetches of this diff queued or running.
    pub fn prefetches_in_flight(&self) -> usize {
        self.inner.prefetch.in_flight.load(Ordering::Acquire)
    }
}

impl Inner {
    fn prefetch_run(self: &Arc<Self>, run: &mut PrefetchRun) -> PrefetchStart {
        let mut queued_bytes = 0;
        if self.full_disk.seen() || self.closed.load(Ordering::Relaxed) {
            run.units.start = run.units.end;
        }
        while !run.units.is_empty() {
            let mut sessions = self.sessions.lock();
            let start = run.units.start;
            if sessions.contains_key(&start) || self.unit_complete(start) {
                run.units.start += 1;
                continue;
            }
            // A chunk with a present prefix (a fetch that failed part-way)
            // goes alone: a run writes its chunks whole.
            let mut end = start + 1;
            if self.unit_untouched(start) {
                while end < run.units.end
                    && !sessions.contains_key(&end)
                    && self.unit_untouched(end)
                {
                    end += 1;
                }
            }
            if !self.pool.try_start_prefetch() {
                return PrefetchStart::Busy { queued_bytes };
            }
            let piece: Vec<Arc<Session>> = (start..end)
                .map(|_| Arc::new(Session::new(Route::PeerThenStore)))
                .collect();
            // Queued while holding the session lock, so the job cannot end
            // a session before it is in the map.
            if self
                .pool
                .try_submit(self.prefetch_job(start..end, &piece))
                .is_err()
            {
                self.pool.end_prefetch();
                return PrefetchStart::Busy { queued_bytes };
            }
            self.prefetch.in_flight.fetch_add(1, Ordering::AcqRel);
            for (u, session) in (start..end).zip(piece) {
                sessions.insert(u, session);
                let unit = self.layout.unit_range(u);
                queued_bytes += unit.end - unit.start;
            }
            self.stats
                .prefetch_fetches
                .fetch_add((end - start) as u64, Ordering::Relaxed);
            run.units.start = end;
        }
        PrefetchStart::Started { queued_bytes }
    }

    /// True when no byte of unit `u` is present.
    fn unit_untouched(&self, u: usize) -> bool {
        let range = self.layout.unit_range(u);
        self.present.count(self.layout.bits_of(&range, &(u..u + 1))) == 0
    }

    /// The pool job of a prefetch fetch of `units` (`sessions` in order):
    /// the fetch, then its accounting. The pool slot is given back whatever
    /// happened.
    fn prefetch_job(self: &Arc<Self>, units: Range<usize>, sessions: &[Arc<Session>]) -> Job {
        let inner = Arc::clone(self);
        let sessions = sessions.to_vec();
        Box::new(move || {
            if units.len() == 1 {
                inner.run_fetch(units.start, &sessions[0]);
            } else {
                inner.run_fetch_run(units.clone(), &sessions);
            }
            for u in units {
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
