//! The fetch pool: a fixed set of worker threads fed by a bounded
//! crossbeam channel. All Chunkers of a mount share one, so the number of
//! concurrent store requests is bounded by its workers whatever the number of
//! readers.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Instant;

use crossbeam_channel::{Sender, bounded};

use super::scratch::ScratchBuffers;

/// Work for a fetch worker. It must finish its session itself, panics
/// included (see `Inner::run_fetch`).
pub(super) type Job = Box<dyn FnOnce() + Send>;

/// Queue slots per worker. Read-ahead only uses the first `workers` of them,
/// so reader fetches always find room soon.
const QUEUE_PER_WORKER: usize = 4;

/// A bounded pool of fetch threads. Workers exit when the pool is dropped and
/// the queue has drained.
pub struct FetchPool {
    jobs: Sender<Job>,
    workers: usize,
    /// Prefetch fetches queued or running (see `try_start_prefetch`).
    prefetching: AtomicUsize,
    /// Decode buffers, one per core (see `scratch`).
    pub(super) scratch: ScratchBuffers,
}

impl std::fmt::Debug for FetchPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchPool")
            .field("workers", &self.workers)
            .field("queued", &self.jobs.len())
            .finish()
    }
}

impl FetchPool {
    /// Start `workers` fetch threads (at least one).
    ///
    /// # Panics
    /// When the OS refuses to start a thread (out of resources at start-up).
    pub fn new(workers: usize) -> std::sync::Arc<FetchPool> {
        let workers = workers.max(1);
        let (jobs, queue) = bounded::<Job>(workers * QUEUE_PER_WORKER);
        for i in 0..workers {
            let queue = queue.clone();
            thread::Builder::new()
                .name(format!("tdfs-fetch-{i}"))
                .spawn(move || {
                    for job in queue {
                        // A job reports its own panics to its waiters; the
                        // worker survives them.
                        let _ = catch_unwind(AssertUnwindSafe(job));
                    }
                })
                .expect("starting a fetch worker thread");
        }
        let cores = thread::available_parallelism().map_or(2, |n| n.get());
        std::sync::Arc::new(FetchPool {
            jobs,
            workers,
            prefetching: AtomicUsize::new(0),
            scratch: ScratchBuffers::new(cores.min(workers)),
        })
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Queue a fetch a reader waits for; waits for a free slot until
    /// `deadline`. Gives the job back when it could not be queued.
    pub(super) fn submit(&self, job: Job, deadline: Instant) -> Result<(), Job> {
        self.jobs.send_deadline(job, deadline).map_err(|e| match e {
            crossbeam_channel::SendTimeoutError::Timeout(j)
            | crossbeam_channel::SendTimeoutError::Disconnected(j) => j,
        })
    }

    /// True when the queue has room for optional work (read-ahead) without
    /// delaying reader fetches.
    pub(super) fn has_spare_room(&self) -> bool {
        self.jobs.len() < self.workers
    }

    /// Queue optional work only if there is room right now.
    pub(super) fn try_submit(&self, job: Job) -> Result<(), Job> {
        if !self.has_spare_room() {
            return Err(job);
        }
        self.jobs.try_send(job).map_err(|e| e.into_inner())
    }

    /// Most prefetch fetches queued or running at once: all workers but a
    /// reserve of a quarter (at least one), so a reader's fetch always finds
    /// an idle worker whatever a trace lists, while prefetch gets most of the
    /// pool's concurrency (a trace of scattered pages touches nearly every
    /// unit, so prefetch wins over demand faults by running many at once).
    /// With one worker there is no reserve: prefetch still needs it.
    fn max_prefetching(&self) -> usize {
        let reserve = (self.workers / 4).max(1);
        self.workers.saturating_sub(reserve).max(1)
    }

    /// Claim a slot for one prefetch fetch: only when nothing else waits in
    /// the queue (readers and read-ahead go first) and under
    /// `max_prefetching`. Give it back with `end_prefetch`.
    pub(super) fn try_start_prefetch(&self) -> bool {
        if !self.jobs.is_empty() {
            return false;
        }
        self.prefetching
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_prefetching()).then_some(n + 1)
            })
            .is_ok()
    }

    pub(super) fn end_prefetch(&self) {
        self.prefetching.fetch_sub(1, Ordering::AcqRel);
    }
}
