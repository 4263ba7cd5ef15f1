//! Read-ahead of one reader, after the kernel's per-open-file read-ahead
//! (`file_ra_state`) and mountpoint-s3's prefetcher per file handle: it
//! spots a sequential stream of reads of a template file and says which part
//! of the file to fetch ahead of it. Each open file handle has its own
//! `ReadAhead`, so several readers of one template file, or of templates
//! sharing a base build's diff, each keep their own window instead of
//! resetting one shared window; the Chunkers only get "fetch these units"
//! requests (`Chunker::read_ahead`), which skip units already present or in
//! flight, so readers of shared bytes still fetch each unit once.
//!
//! The stream is tracked in *steps* of the template file: `step` bytes each,
//! the largest fetch unit (chunk or frame) of the file's diffs, so a window
//! of N steps asks for about N units of each diff it maps to, as the
//! per-diff window did before. The window starts at the configured size
//! (`--readahead`), doubles each time the reader comes within half a window
//! of the end of what read-ahead queued (it is consuming read-ahead, so more
//! would help), up to `MAX_READAHEAD_UNITS` steps and `MAX_READAHEAD_BYTES`,
//! and falls back to the start size on a jump. A reader that never moves
//! sequentially gets no read-ahead at all, and a short sequential run only
//! the start size, which keeps lazy readers (a booting VM) lazy.
//!
//! Fetches are queued in batches: a new batch only once the reader has used
//! up half the window, not a scan of the window on every read. All state is
//! in Relaxed atomics: the kernel sends one handle's reads on several FUSE
//! threads at once, and a lost update only costs a slightly worse guess.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Largest read-ahead window, in steps (fetch units).
pub const MAX_READAHEAD_UNITS: usize = 64;

/// Largest read-ahead window, in bytes of the template file: 32 steps of
/// 4 MiB chunks, or 64 of 2 MiB frames.
pub const MAX_READAHEAD_BYTES: u64 = 128 << 20;

/// How far (in steps) a read may land past the stream's furthest step and
/// still count as sequential, or behind it and count as a straggler of the
/// same stream (ignored). The kernel sends a sequential reader's requests on
/// several FUSE threads at once, so they arrive slightly out of order.
const TOLERANCE: usize = 2;

/// `last` before the first read.
const NO_STEP: usize = usize::MAX;

/// One reader's sequential-stream state (see the module docs).
#[derive(Debug)]
pub struct ReadAhead {
    /// Bytes of the template file per step.
    step: u64,
    /// Window of a new sequential stream (`--readahead`); 0 = off.
    initial: usize,
    /// Largest window (at least `initial`).
    max: usize,
    /// Steps of the file: nothing is planned past them.
    steps: usize,
    /// Bytes of the file.
    size: u64,
    /// Furthest step of the current stream.
    last: AtomicUsize,
    /// Window of the current stream.
    window: AtomicUsize,
    /// End (exclusive) of the steps read-ahead has queued (or found present
    /// or in flight) for the current stream; 0 = none yet.
    queued_end: AtomicUsize,
}

impl ReadAhead {
    /// Read-ahead over a file of `size` bytes in steps of `step` bytes (at
    /// least 1), starting with a window of `initial` steps (0 = off) and
    /// growing up to `max` (raised to `initial` if below it).
    pub fn new(step: u64, initial: usize, max: usize, size: u64) -> ReadAhead {
        let step = step.max(1);
        ReadAhead {
            step,
            initial,
            max: max.max(initial),
            steps: usize::try_from(size.div_ceil(step)).unwrap_or(usize::MAX),
            size,
            last: AtomicUsize::new(NO_STEP),
            window: AtomicUsize::new(initial),
            queued_end: AtomicUsize::new(0),
        }
    }

    /// Read-ahead over a file of `size` bytes in steps of `step` bytes
    /// (a fetch unit), starting at `initial` steps (0 = off), capped by
    /// `MAX_READAHEAD_UNITS` and `MAX_READAHEAD_BYTES`.
    pub fn for_file(size: u64, step: u64, initial: usize) -> ReadAhead {
        let max = MAX_READAHEAD_UNITS.min((MAX_READAHEAD_BYTES / step.max(1)).max(1) as usize);
        ReadAhead::new(step, initial, max, size)
    }

    /// Note a read of `[off, off + len)` of the file; returns the byte range
    /// of the file to fetch ahead now, if any (whole steps, cut at the end
    /// of the file). The caller reports how far it got with `queued`.
    pub fn on_read(&self, off: u64, len: u64) -> Option<Range<u64>> {
        let end = off.saturating_add(len).min(self.size);
        if off >= end {
            return None;
        }
        let first = usize::try_from(off / self.step).unwrap_or(usize::MAX);
        let last = usize::try_from((end - 1) / self.step).unwrap_or(usize::MAX);
        let plan = self.on_steps(first..last.saturating_add(1))?;
        let to_bytes = |s: usize| (s as u64).saturating_mul(self.step).min(self.size);
        Some(to_bytes(plan.start)..to_bytes(plan.end))
    }

    /// The caller queued `plan` (from `on_read`) only up to file offset
    /// `reached` (the fetch pool had no room for more): the next read plans
    /// from there.
    pub fn queued(&self, plan: &Range<u64>, reached: u64) {
        if reached < plan.end {
            let steps = |b: u64| usize::try_from(b / self.step).unwrap_or(usize::MAX);
            let plan_steps = steps(plan.start)..steps(plan.end.div_ceil(self.step) * self.step);
            self.queued_steps(&plan_steps, steps(reached));
        }
    }

    /// Note a read of `steps` (one step, or the several a long read spans);
    /// returns the steps to queue now, if any. Cheap when the read ends in
    /// the step the previous one ended in (the common case: a step holds
    /// many reads).
    fn on_steps(&self, steps: Range<usize>) -> Option<Range<usize>> {
        if self.initial == 0 || steps.is_empty() {
            return None;
        }
        let (first, u) = (steps.start, steps.end - 1);
        let mut last = self.last.load(Relaxed);
        let sequential = loop {
            if u == last {
                return None;
            }
            let known = last != NO_STEP;
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
        let plan_end = next.saturating_add(window).min(self.steps);
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

    /// `plan` (from `on_steps`) was queued only up to step `reached`.
    fn queued_steps(&self, plan: &Range<usize>, reached: usize) {
        if reached < plan.end {
            let _ = self
                .queued_end
                .compare_exchange(plan.end, reached, Relaxed, Relaxed);
        }
    }

    /// The current window, in steps.
    pub fn window(&self) -> usize {
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
            if let Some(plan) = ra.on_steps(u..u + 1) {
                ra.queued_steps(&plan, plan.end);
                plans.push(plan);
            }
        }
        plans
    }

    #[test]
    fn off_plans_nothing() {
        let ra = ReadAhead::new(1, 0, 64, 1000);
        assert!(run(&ra, 0..500).is_empty());
    }

    #[test]
    fn sequential_reader_grows_the_window_in_batches_up_to_the_cap() {
        let ra = ReadAhead::new(1, 4, 64, 10_000);
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
        let ra = ReadAhead::new(1, 4, 16, 100);
        let plans = run(&ra, 0..100);
        assert_eq!(ra.window(), 16);
        assert!(plans.iter().all(|p| p.len() <= 16));
        assert_eq!(plans.last().unwrap().end, 100);
        // An explicit start window above the cap is kept.
        let ra = ReadAhead::new(1, 32, 16, 1000);
        assert_eq!(run(&ra, 0..2)[0], 2..34);
    }

    #[test]
    fn random_reader_gets_no_read_ahead() {
        let ra = ReadAhead::new(1, 4, 64, 1000);
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
        let ra = ReadAhead::new(1, 4, 64, 10_000);
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
        let ra = ReadAhead::new(1, 4, 64, 10_000);
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
        let ra = ReadAhead::new(1, 4, 64, 10_000);
        // Pairs of lookups swapped, as two FUSE threads may deliver them.
        let units = (0..1000).map(|i| if i % 2 == 0 { i + 1 } else { i - 1 });
        let plans = run(&ra, units);
        assert_eq!(ra.window(), 64, "still seen as sequential");
        for pair in plans.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        // A skipped unit is still sequential.
        let ra = ReadAhead::new(1, 4, 64, 10_000);
        assert_eq!(run(&ra, [0, 2]), vec![3..7]);
    }

    #[test]
    fn lookups_spanning_several_units_are_one_stream() {
        let ra = ReadAhead::new(1, 4, 64, 10_000);
        // Long reads of four units each, back to back.
        let mut plans = Vec::new();
        for start in (0..400).step_by(4) {
            if let Some(plan) = ra.on_steps(start..start + 4) {
                ra.queued_steps(&plan, plan.end);
                plans.push(plan);
            }
        }
        assert_eq!(plans[0], 8..12, "planned past the end of the lookup");
        assert_eq!(ra.window(), 64);
        // Overlapping the previous lookup still moves forward.
        let ra = ReadAhead::new(1, 4, 64, 10_000);
        ra.on_steps(0..3);
        assert_eq!(ra.on_steps(2..6), Some(6..10));
        // A long lookup far away is a jump.
        assert_eq!(ra.on_steps(100..104), None);
        assert_eq!(ra.window(), 4);
    }

    #[test]
    fn a_short_queue_is_resumed_by_the_next_lookup() {
        let ra = ReadAhead::new(1, 4, 64, 10_000);
        ra.on_steps(0..1);
        let plan = ra.on_steps(1..2).unwrap();
        assert_eq!(plan, 2..6);
        ra.queued_steps(&plan, 3);
        // The reader is now within half a window of what was queued.
        assert_eq!(ra.on_steps(2..3), Some(3..11));
    }

    #[test]
    fn two_readers_interleaved_both_grow_their_windows() {
        // Two handles reading one file (or two layers of one base) at once,
        // their reads interleaved as the FUSE threads deliver them: each
        // keeps its own stream, so neither resets the other's window.
        let (a, b) = (
            ReadAhead::new(1, 4, 64, 10_000),
            ReadAhead::new(1, 4, 64, 10_000),
        );
        let (mut plans_a, mut plans_b) = (Vec::new(), Vec::new());
        for i in 0..500 {
            plans_a.extend(run(&a, [i]));
            plans_b.extend(run(&b, [5000 + i]));
        }
        assert_eq!(a.window(), 64);
        assert_eq!(b.window(), 64);
        for plans in [&plans_a, &plans_b] {
            for pair in plans.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "one unbroken stream");
            }
        }
        assert_eq!(plans_a[0], 2..6);
        assert_eq!(plans_b[0], 5002..5006);
        // The same two streams on one shared state (the old per-diff
        // window) never get past the start window.
        let shared = ReadAhead::new(1, 4, 64, 10_000);
        for i in 0..500 {
            run(&shared, [i, 5000 + i]);
        }
        assert_eq!(shared.window(), 4);
    }

    #[test]
    fn a_jump_resets_only_that_readers_window() {
        let (a, b) = (
            ReadAhead::new(1, 4, 64, 10_000),
            ReadAhead::new(1, 4, 64, 10_000),
        );
        run(&a, 0..200);
        run(&b, 0..200);
        assert!(run(&a, [7000]).is_empty());
        assert_eq!(a.window(), 4);
        assert_eq!(b.window(), 64, "the other reader keeps its window");
        let before = run(&b, [199]);
        assert!(before.is_empty(), "no change of stream for b");
        let plans = run(&b, 200..300);
        assert!(!plans.is_empty(), "b goes on reading ahead");
        assert_eq!(b.window(), 64);
    }

    #[test]
    fn out_of_order_reads_of_two_readers_stay_two_streams() {
        // Each reader's reads arrive in swapped pairs, interleaved with the
        // other's: both still grow to the cap.
        let (a, b) = (
            ReadAhead::new(1, 4, 64, 10_000),
            ReadAhead::new(1, 4, 64, 10_000),
        );
        for i in 0..1000 {
            let u = if i % 2 == 0 { i + 1 } else { i - 1 };
            run(&a, [u]);
            run(&b, [3000 + u]);
        }
        assert_eq!(a.window(), 64);
        assert_eq!(b.window(), 64);
    }

    #[test]
    fn for_file_caps_the_window_by_bytes_and_steps() {
        let mib = 1u64 << 20;
        // 2 MiB frames: 64 steps fit in 128 MiB.
        let ra = ReadAhead::for_file(1 << 30, 2 * mib, 4);
        assert_eq!((ra.step, ra.max, ra.steps), (2 * mib, 64, 512));
        // 4 MiB chunks: 32 steps make 128 MiB.
        let ra = ReadAhead::for_file(10 * mib + 1, 4 * mib, 4);
        assert_eq!((ra.max, ra.steps), (32, 3));
        // Reads of bytes: plans of whole steps, cut at the end of the file.
        let ra = ReadAhead::for_file(10 * mib + 1, 4 * mib, 1);
        assert_eq!(ra.on_read(0, mib), None, "the first read plans nothing");
        assert_eq!(ra.on_read(4 * mib - 1, 2), Some(8 * mib..10 * mib + 1));
        let ra = ReadAhead::for_file(100 * mib, 4 * mib, 2);
        ra.on_read(0, mib);
        let plan = ra.on_read(4 * mib, mib).unwrap();
        assert_eq!(plan, 8 * mib..16 * mib);
        // Queued only up to 10 MiB: the reader, now in the step that was cut
        // short, reads it itself; the next plan starts right after it and
        // is twice the window.
        ra.queued(&plan, 10 * mib);
        assert_eq!(ra.on_read(8 * mib, mib), Some(12 * mib..28 * mib));
    }
}
