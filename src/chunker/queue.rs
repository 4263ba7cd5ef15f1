//! Starting fetches: the single-flight map of fetch sessions (one per unit
//! in flight), filled by readers (`join_or_start`, `start_fetches`) and by
//! read-ahead (`queue_read_ahead`, which only takes the pool's spare room), and
//! the job each session queues on the `FetchPool`.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::pool::Job;
use super::session::{Route, Session};
use super::{ChunkerError, Inner};
use crate::sync;

/// The fetch in flight per unit (single-flight), `Inner::sessions`. A unit
/// has a session from the moment its fetch is decided until the fetch has
/// published its bits and ended (`Inner::end_session`), so a unit with no
/// session and clear bits is one nobody fetches. Eviction and damage
/// handling hold this lock while they drop units, so no fetch of a unit
/// starts or runs while it is dropped.
#[derive(Default)]
pub(super) struct Sessions(Mutex<HashMap<usize, Arc<Session>>>);

impl Sessions {
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<usize, Arc<Session>>> {
        sync::lock(&self.0)
    }
}

impl Inner {
    /// The session to wait on for `part` of unit `u`: the running one, or a
    /// new one queued on the pool, reading as `route` allows; `None` when
    /// `part` is already present.
    ///
    /// # Errors
    /// `Timeout` when the pool has no room before `deadline`; `AskingPeer`
    /// for a `StoreOnly` read while the running fetch is asking a peer.
    pub(super) fn join_or_start(
        self: &Arc<Self>,
        u: usize,
        part: &Range<u64>,
        deadline: Instant,
        route: Route,
    ) -> Result<Option<Arc<Session>>, ChunkerError> {
        let mut sessions = self.sessions.lock();
        if let Some(s) = sessions.get(&u) {
            if route == Route::StoreOnly && !s.keep_to_store() {
                return Err(ChunkerError::AskingPeer {
                    key: self.key,
                    offset: part.start,
                });
            }
            return Ok(Some(Arc::clone(s)));
        }
        // Checked under the lock: a fetch ends (removes its session) only
        // after publishing its bits.
        if self.range_present(part, &(u..u + 1)) {
            return Ok(None);
        }
        let session = Arc::new(Session::new(route));
        sessions.insert(u, Arc::clone(&session));
        drop(sessions);
        if self.pool.submit(self.job(u, &session), deadline).is_err() {
            let offset = self.layout.unit_range(u).start;
            let err = ChunkerError::Timeout {
                key: self.key,
                offset,
                timeout: self.fetch_timeout,
            };
            self.end_session(u, &session, Err(err.clone()));
            return Err(err);
        }
        Ok(Some(session))
    }

    /// Start fetches of the missing units of `range`, reading as `route`
    /// allows (best effort: errors surface when the range itself is read).
    pub(super) fn start_fetches(
        self: &Arc<Self>,
        range: Range<u64>,
        deadline: Instant,
        route: Route,
    ) {
        let mut pos = range.start;
        while pos < range.end {
            let Ok((units, end)) = self.layout.span(pos, range.end, 1) else {
                return;
            };
            if self
                .join_or_start(units.start, &(pos..end), deadline, route)
                .is_err()
            {
                return;
            }
            pos = end;
        }
    }

    /// Queue fetches of `units` for read-ahead, skipping units present or in
    /// flight, while the pool has spare room. Returns the first unit left
    /// unqueued for lack of room, `None` when all are covered.
    pub(super) fn queue_read_ahead(self: &Arc<Self>, units: Range<usize>) -> Option<usize> {
        let mut sessions = None;
        for v in units {
            if self.unit_complete(v) {
                continue;
            }
            if !self.pool.has_spare_room() {
                return Some(v);
            }
            let sessions = sessions.get_or_insert_with(|| self.sessions.lock());
            if sessions.contains_key(&v) || self.unit_complete(v) {
                continue;
            }
            let session = Arc::new(Session::new(Route::PeerThenStore));
            // Queued while holding the session lock, so the job cannot end
            // its session before it is in the map.
            if self.pool.try_submit(self.job(v, &session)).is_err() {
                return Some(v);
            }
            sessions.insert(v, session);
            self.stats.readahead_fetches.fetch_add(1, Ordering::Relaxed);
        }
        None
    }

    /// The pool job that fetches unit `u` and ends `session`.
    fn job(self: &Arc<Self>, u: usize, session: &Arc<Session>) -> Job {
        let inner = Arc::clone(self);
        let session = Arc::clone(session);
        Box::new(move || inner.run_fetch(u, &session))
    }
}
