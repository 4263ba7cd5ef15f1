//! A fetch session: one in-flight fetch of one unit (chunk or frame) that any
//! number of readers wait on. Progress (present bits) is published by the
//! fetcher before it wakes the waiters, so each waiter re-checks its own range
//! and leaves as soon as that range is present, not when the whole unit is.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use super::ChunkerError;
use crate::sync;

enum State {
    Running,
    Done(Fetched),
    Failed(ChunkerError),
}

/// What a fetch that succeeded left behind.
#[derive(Clone)]
pub(super) enum Fetched {
    /// The unit is present in the cache file.
    Cached,
    /// The cache disk was full: the whole unit's bytes, for the session's
    /// waiters only (nothing was marked present).
    Uncached(Arc<[u8]>),
}

pub(super) struct Session {
    state: Mutex<State>,
    changed: Condvar,
}

/// How a wait ended.
pub(super) enum Waited {
    /// The caller's range became present.
    Ready,
    /// The session ended (the range may still be missing, e.g. evicted or
    /// never fetched by this session): the caller looks again.
    Ended,
    /// The session could not cache the unit; here are its bytes.
    Uncached(Arc<[u8]>),
    Failed(ChunkerError),
    TimedOut,
}

impl Session {
    pub(super) fn new() -> Session {
        Session {
            state: Mutex::new(State::Running),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        sync::lock(&self.state)
    }

    /// Wake waiters after publishing more present bits. Taking the lock
    /// orders the wake-up after any waiter's check of those bits.
    pub(super) fn progress(&self) {
        drop(self.lock());
        self.changed.notify_all();
    }

    /// End the session and wake every waiter.
    pub(super) fn finish(&self, result: Result<Fetched, ChunkerError>) {
        *self.lock() = match result {
            Ok(fetched) => State::Done(fetched),
            Err(e) => State::Failed(e),
        };
        self.changed.notify_all();
    }

    /// Block until `ready()` holds, the session ends, or `deadline`.
    pub(super) fn wait(&self, ready: impl Fn() -> bool, deadline: Instant) -> Waited {
        let mut state = self.lock();
        loop {
            if ready() {
                return Waited::Ready;
            }
            match &*state {
                State::Done(Fetched::Cached) => return Waited::Ended,
                State::Done(Fetched::Uncached(bytes)) => {
                    return Waited::Uncached(Arc::clone(bytes));
                }
                State::Failed(e) => return Waited::Failed(e.clone()),
                State::Running => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Waited::TimedOut;
            }
            state = sync::wait_timeout(&self.changed, state, deadline - now).0;
        }
    }
}
