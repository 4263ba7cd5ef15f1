//! The read-ahead window of a Chunker, after the kernel's page cache
//! read-ahead: it spots a sequential reader and says which units (chunks or
//! frames) to fetch ahead of it. The window starts at the configured size,
//! doubles each time the reader comes within half a window of the end of
//! what read-ahead queued (it is consuming read-ahead, so more would help),
//! up to a cap, and falls back to the start size on a jump. A reader that
//! never moves sequentially gets no read-ahead at all, and a short sequential
//! run only the start size, which keeps lazy readers (a booting VM) lazy.
//!
//! Fetches are queued in batches: a new batch only once the reader has used
//! up half the window, not a scan of the window on every access. All state
//! is in Relaxed atomics: many FUSE threads call in at once, and a lost
//! update only costs a slightly worse guess.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// How far (in units) a lookup may land past the stream's furthest unit and
/// still count as sequential, or behind it and count as a straggler of the
/// same stream (ignored). The kernel sends a sequential reader's requests on
/// several FUSE threads at once, so they arrive slightly out of order.
const TOLERANCE: usize = 2;

/// `last` before the first lookup.
const NO_UNIT: usize = usize::MAX;

pub(super) struct ReadAhead {
    /// Window of a new sequential stream (`--readahead`); 0 = off.
    initial: usize,
    /// Largest window (at least `initial`).
    max: usize,
    /// Units of the object: nothing is planned past them.
    units: usize,
    /// Furthest unit of the current stream.
    last: AtomicUsize,
    /// Window of the current stream.
    window: AtomicUsize,
    /// End (exclusive) of the units read-ahead has queued (or found present
    /// or in flight) for the current stream; 0 = none yet.
    queued_end: AtomicUsize,
}

impl ReadAhead {
    /// Read-ahead over `units` units starting with a window of `initial`
    /// (0 = off) and growing up to `max` (raised to `initial` if below it).
    pub(super) fn new(initial: usize, max: usize, units: usize) -> ReadAhead {
        ReadAhead {
            initial,
            max: max.max(initial),
            units,
            last: AtomicUsize::new(NO_UNIT),
            window: AtomicUsize::new(initial),
            queued_end: AtomicUsize::new(0),
        }
    }

    /// Note a lookup of `units` (one unit, or the several a long read
    /// spans); returns the units to queue now, if any. The caller reports
    /// how far it got with `queued`. Cheap when the lookup ends in the unit
    /// the previous one ended in (the common case: a unit holds many blocks).
    pub(super) fn on_access(&self, units: Range<usize>) -> Option<Range<usize>> {
        if self.initial == 0 || units.is_empty() {
            return None;
        }
        let (first, u) = (units.start, units.end - 1);
        let mut last = self.last.load(Relaxed);
        let sequential = loop {
            if u == last {
                return None;
            }
            let known = last != NO_UNIT;
            if known && u < last && last - u <= TOLERANCE {
                return None;
            }
            // One thread acts per move of the stream; one that lost the
            // race looks again from where the winner left `last`.
            match self.last.compare_exchange(last, u, Relaxed, Relaxed) {
                Ok(_) => break known && u > last && first <= last.saturating_add(TOLERANCE),
                Err(now) => last = now,
            }
        };
        if !sequential {
            self.window.store(self.initial, Relaxed);
            self.queued_end.store(0, Relaxed);
            return None;
        }
        let next = u + 1;
        let end = self.queued_end.load(Relaxed);
        let window = self.window.load(Relaxed);
        let (start, window) = if end == 0 {
            // The stream's first sequential step: the start window.
            (next, window)
        } else if end.saturating_sub(next) <= window / 2 {
            // The reader is using up what read-ahead queued: a bigger batch.
            (end.max(next), window.saturating_mul(2).min(self.max))
        } else {
            return None;
        };
        let plan_end = next.saturating_add(window).min(self.units);
        if start >= plan_end {
            return None;
        }
        if self
            .queued_end
            .compare_exchange(end, plan_end, Relaxed, Relaxed)
            .is_err()
        {
            return None;
        }
        self.window.store(window, Relaxed);
        Some(start..plan_end)
    }

    /// The caller queued `plan` (from `on_access`) only up to `reached`
    /// (the pool had no room for more): the next lookup plans from there.
    pub(super) fn queued(&self, plan: &Range<usize>, reached: usize) {
        if reached < plan.end {
            let _ = self
                .queued_end
                .compare_exchange(plan.end, reached, Relaxed, Relaxed);
        }
    }

    /// The current window (tests).
    #[cfg(test)]
    fn window(&self) -> usize {
        self.window.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `units` to `ra` in order, queuing every plan in full; returns
    /// the plans.
    fn run(ra: &ReadAhead, units: impl IntoIterator<Item = usize>) -> Vec<Range<usize>> {
        let mut plans = Vec::new();
        for u in units {
            if let Some(plan) = ra.on_access(u..u + 1) {
                ra.queued(&plan, plan.end);
                plans.push(plan);
            }
        }
        plans
    }

    #[test]
    fn off_plans_nothing() {
        let ra = ReadAhead::new(0, 64, 1000);
        assert!(run(&ra, 0..500).is_empty());
    }

    #[test]
    fn sequential_reader_grows_the_window_in_batches_up_to_the_cap() {
        let ra = ReadAhead::new(4, 64, 10_000);
        let plans = run(&ra, 0..2000);
        assert_eq!(plans[0], 2..6, "first sequential step: the start window");
        assert_eq!(plans[1], 6..12, "half the window used: twice the window");
        assert_eq!(plans[2], 12..24);
        assert_eq!(ra.window(), 64);
        // Plans never overlap or leave gaps: every unit queued once.
        for pair in plans.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        // Batches, not one unit per lookup: at the cap, half a window each.
        assert!(plans.len() < 2000 / 16, "{} plans", plans.len());
        let last = plans.last().unwrap();
        assert!(last.end <= 1999 + 1 + 64, "{last:?}: never past the window");
        assert!(
            last.end >= 1999 + 1 + 32,
            "{last:?}: at least half a window ahead"
        );
    }

    #[test]
    fn window_is_capped_and_clipped_to_the_object() {
        let ra = ReadAhead::new(4, 16, 100);
        let plans = run(&ra, 0..100);
        assert_eq!(ra.window(), 16);
        assert!(plans.iter().all(|p| p.len() <= 16));
        assert_eq!(plans.last().unwrap().end, 100);
        // An explicit start window above the cap is kept.
        let ra = ReadAhead::new(32, 16, 1000);
        assert_eq!(run(&ra, 0..2)[0], 2..34);
    }

    #[test]
    fn random_reader_gets_no_read_ahead() {
        let ra = ReadAhead::new(4, 64, 1000);
        let mut x = 12345u64;
        let units = (0..2000).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Strides of 3 or more units either way: never sequential.
            (x % 300) as usize * 3
        });
        assert!(run(&ra, units).is_empty());
        assert_eq!(ra.window(), 4);
    }

    #[test]
    fn short_runs_get_only_the_start_window() {
        let ra = ReadAhead::new(4, 64, 10_000);
        // Runs of three units, each far from the last: the first step of a
        // run plans the start window; the run ends before half of it is used.
        let units = (0..50).flat_map(|run| {
            let base = run * 100;
            [base, base + 1, base + 2]
        });
        let plans = run(&ra, units);
        assert_eq!(plans.len(), 50);
        for (run, plan) in plans.iter().enumerate() {
            assert_eq!(*plan, run * 100 + 2..run * 100 + 6);
        }
    }

    #[test]
    fn a_jump_resets_the_window() {
        let ra = ReadAhead::new(4, 64, 10_000);
        run(&ra, 0..200);
        assert_eq!(ra.window(), 64);
        assert!(run(&ra, [5000]).is_empty(), "a jump plans nothing");
        assert_eq!(ra.window(), 4);
        assert_eq!(run(&ra, [5001]), vec![5002..5006]);
        // Backwards too.
        run(&ra, 5002..5100);
        assert!(ra.window() > 4);
        assert!(run(&ra, [10]).is_empty());
        assert_eq!(run(&ra, [11]), vec![12..16]);
    }

    #[test]
    fn out_of_order_lookups_stay_one_stream() {
        let ra = ReadAhead::new(4, 64, 10_000);
        // Pairs of lookups swapped, as two FUSE threads may deliver them.
        let units = (0..1000).map(|i| if i % 2 == 0 { i + 1 } else { i - 1 });
        let plans = run(&ra, units);
        assert_eq!(ra.window(), 64, "still seen as sequential");
        for pair in plans.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        // A skipped unit is still sequential.
        let ra = ReadAhead::new(4, 64, 10_000);
        assert_eq!(run(&ra, [0, 2]), vec![3..7]);
    }

    #[test]
    fn lookups_spanning_several_units_are_one_stream() {
        let ra = ReadAhead::new(4, 64, 10_000);
        // Long reads of four units each, back to back.
        let mut plans = Vec::new();
        for start in (0..400).step_by(4) {
            if let Some(plan) = ra.on_access(start..start + 4) {
                ra.queued(&plan, plan.end);
                plans.push(plan);
            }
        }
        assert_eq!(plans[0], 8..12, "planned past the end of the lookup");
        assert_eq!(ra.window(), 64);
        // Overlapping the previous lookup still moves forward.
        let ra = ReadAhead::new(4, 64, 10_000);
        ra.on_access(0..3);
        assert_eq!(ra.on_access(2..6), Some(6..10));
        // A long lookup far away is a jump.
        assert_eq!(ra.on_access(100..104), None);
        assert_eq!(ra.window(), 4);
    }

    #[test]
    fn a_short_queue_is_resumed_by_the_next_lookup() {
        let ra = ReadAhead::new(4, 64, 10_000);
        ra.on_access(0..1);
        let plan = ra.on_access(1..2).unwrap();
        assert_eq!(plan, 2..6);
        ra.queued(&plan, 3);
        // The reader is now within half a window of what was queued.
        assert_eq!(ra.on_access(2..3), Some(3..11));
    }
}
