//! A fetch session: one in-flight fetch of one unit (chunk or frame) that any
//! number of readers wait on. Progress (present bits) is published by the
//! fetcher before it wakes the waiters, so each waiter re-checks its own range
//! and leaves as soon as that range is present, not when the whole unit is.
//!
//! A session also records where its fetch reads (`Route`): a fetch started
//! or joined to answer a peer must never ask a peer itself, or two hosts
//! whose member lists disagree would ask each other for the unit and both
//! wait out the peer timeout.

use std::sync::atomic::{AtomicU8, Ordering};
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

/// Who a fetch may read a unit from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// The unit's owner peer first (when it is another host), then the
    /// store: a read of this mount.
    PeerThenStore,
    /// The store only: a read to answer a peer, which asked this host
    /// because its own list says this host owns the unit.
    StoreOnly,
}

/// `Session::route`: the fetch has not decided yet whether to ask a peer.
const UNDECIDED: u8 = 0;
/// The fetch is asking a peer.
const ASKING_PEER: u8 = 1;
/// The fetch reads (or will read) the store only.
const STORE: u8 = 2;

pub(super) struct Session {
    state: Mutex<State>,
    changed: Condvar,
    /// `UNDECIDED`, `ASKING_PEER` or `STORE`.
    route: AtomicU8,
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
    /// A session whose fetch reads as `route` allows.
    pub(super) fn new(route: Route) -> Session {
        Session {
            state: Mutex::new(State::Running),
            changed: Condvar::new(),
            route: AtomicU8::new(match route {
                Route::PeerThenStore => UNDECIDED,
                Route::StoreOnly => STORE,
            }),
        }
    }

    /// Called by the fetch before it asks a peer: false when the session
    /// was kept to the store (a peer's read joined it), and the fetch must
    /// read the store.
    pub(super) fn begin_peer(&self) -> bool {
        self.route
            .compare_exchange(UNDECIDED, ASKING_PEER, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Called by the fetch once the peer answered or failed: from here on
    /// it reads the store only.
    pub(super) fn end_peer(&self) {
        self.route.store(STORE, Ordering::Release);
    }

    /// Keep the fetch to the store, for a peer's read joining it: false
    /// when it is asking a peer right now (which may be the very peer
    /// waiting on this read), and the joiner must not wait on it.
    pub(super) fn keep_to_store(&self) -> bool {
        match self
            .route
            .compare_exchange(UNDECIDED, STORE, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(now) => now == STORE,
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
