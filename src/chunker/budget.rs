//! The cache budget (`--max-cache-size`): all Chunkers of a mount charge the
//! bytes they place in their cache files to one `CacheBudget`; when the total
//! goes over the limit, the fetch worker that pushed it over evicts the least
//! recently used whole units (chunks or frames) of any member until the total
//! is back under 90% of the limit: it clears their present bits and punches
//! holes in the cache file (`fallocate(PUNCH_HOLE)`).
//!
//! Eviction is safe against readers holding a `Block`, through one pin word
//! per unit (`Lru::pins`): a reader increments the pin of every unit its
//! block touches *before* it tests the present bits, keeps it while it waits
//! for a fetch, and decrements it when the `Block` is dropped. The evictor
//! claims a unit by swapping its pin word from 0 (no reader) to `EVICTING`,
//! under the Chunker's session lock (so no fetch of that unit runs or
//! starts), and only then clears the bits and punches the hole. Both sides
//! are read-modify-writes of the same word, so exactly one wins: a reader
//! that pinned first makes the evictor skip the unit; a reader that comes
//! during an eviction waits (yields) until it is over, then sees the cleared
//! bits and fetches again. The evictor never waits for a reader: a pinned unit
//! is just not a candidate this round, and a unit fetched for a waiting
//! reader cannot be evicted before that reader got it. The budget is
//! therefore soft: pinned units and fetches in flight may keep the total
//! above the limit for a while.
//!
//! Without a budget there are no pins and no eviction: the hit path is the
//! bitmap test alone.
//!
//! A damaged cache file (`damage`) drops its unreadable units the same way
//! (`Inner::discard`), pins respected under a budget.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::format::PAGE_SIZE;
use crate::sync;

use super::Inner;
use super::layout::Layout;

/// Pin-word flag: the unit is being evicted.
const EVICTING: u32 = 1 << 31;

/// A byte limit shared by the cache files of all Chunkers of a mount.
pub struct CacheBudget {
    limit: u64,
    used: AtomicU64,
    /// Logical time of last use, advanced by each completed fetch.
    clock: AtomicU64,
    members: Mutex<Vec<Weak<Inner>>>,
    /// Held by the one thread evicting at a time.
    evicting: Mutex<()>,
}

impl fmt::Debug for CacheBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBudget")
            .field("limit", &self.limit)
            .field("used", &self.used())
            .finish()
    }
}

impl CacheBudget {
    /// A budget of `limit` bytes of cached (uncompressed) data.
    pub fn new(limit: u64) -> Arc<CacheBudget> {
        Arc::new(CacheBudget {
            limit,
            used: AtomicU64::new(0),
            clock: AtomicU64::new(0),
            members: Mutex::new(Vec::new()),
            evicting: Mutex::new(()),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes currently cached by all members.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub(super) fn register(&self, member: Weak<Inner>) {
        let mut members = sync::lock(&self.members);
        members.retain(|m| m.strong_count() > 0);
        members.push(member);
    }

    /// Count `bytes` (of a cache file, or of a flat file of `template`)
    /// against the limit; the next eviction pass frees units to make room.
    pub fn charge(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Stop counting `bytes` charged before.
    pub fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Evict least recently used units while over the limit. Called by fetch
    /// workers after a fetch; a second caller while one evicts returns at
    /// once, so the evictor passes again while the total is still over: a
    /// unit charged during its pass is then seen. It stops when a pass frees
    /// nothing (everything left is pinned or being fetched).
    pub(super) fn enforce(&self) {
        while self.used() > self.limit {
            let Ok(_evicting) = self.evicting.try_lock() else {
                return;
            };
            if self.evict_pass() == 0 {
                return;
            }
        }
    }

    /// One pass over all members' cached units, oldest first, down to 90% of
    /// the limit; returns the bytes freed.
    fn evict_pass(&self) -> u64 {
        let members: Vec<Arc<Inner>> = {
            let mut members = sync::lock(&self.members);
            members.retain(|m| m.strong_count() > 0);
            members.iter().filter_map(Weak::upgrade).collect()
        };
        let mut candidates: Vec<(u64, usize, usize)> = Vec::new();
        for (i, member) in members.iter().enumerate() {
            let Some(lru) = &member.lru else { continue };
            for u in 0..member.layout.units() {
                if member.unit_cached_bytes(u) > 0 {
                    candidates.push((lru.last_use[u].load(Ordering::Relaxed), i, u));
                }
            }
        }
        candidates.sort_unstable();
        let target = self.limit - self.limit / 10;
        let mut freed = 0;
        for (_, i, u) in candidates {
            if self.used() <= target {
                break;
            }
            freed += members[i].try_evict(u);
        }
        freed
    }
}

/// Per-unit eviction state of one Chunker under a budget.
pub(super) struct Lru {
    pub(super) budget: Arc<CacheBudget>,
    pins: Box<[AtomicU32]>,
    last_use: Box<[AtomicU64]>,
}

impl Lru {
    pub(super) fn new(budget: Arc<CacheBudget>, units: usize) -> Lru {
        Lru {
            budget,
            pins: (0..units).map(|_| AtomicU32::new(0)).collect(),
            last_use: (0..units).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Pin `units` against eviction; false (nothing left pinned) when one of
    /// them is being evicted.
    pub(super) fn pin(&self, units: Range<usize>) -> bool {
        for u in units.clone() {
            if self.pins[u].fetch_add(1, Ordering::Acquire) & EVICTING != 0 {
                self.unpin(units.start..u + 1);
                return false;
            }
        }
        true
    }

    pub(super) fn unpin(&self, units: Range<usize>) {
        for u in units {
            self.pins[u].fetch_sub(1, Ordering::Release);
        }
    }

    /// Record a use of `units` now (cheap: the clock moves only per fetch).
    pub(super) fn touch(&self, units: Range<usize>) {
        let now = self.budget.clock.load(Ordering::Relaxed);
        for u in units {
            if self.last_use[u].load(Ordering::Relaxed) != now {
                self.last_use[u].store(now, Ordering::Relaxed);
            }
        }
    }

    /// Record a completed fetch of `u`, advancing the clock.
    pub(super) fn fetched(&self, u: usize) {
        let now = self.budget.clock.fetch_add(1, Ordering::Relaxed) + 1;
        self.last_use[u].store(now, Ordering::Relaxed);
    }

    /// Claim `u` for eviction: only when no reader has it pinned.
    fn begin_evict(&self, u: usize) -> bool {
        self.pins[u]
            .compare_exchange(0, EVICTING, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Keep other readers' transient pins, which `pin` undoes itself.
    fn end_evict(&self, u: usize) {
        self.pins[u].fetch_sub(EVICTING, Ordering::Release);
    }
}

impl Inner {
    /// Evict unit `u` if no reader pins it and no fetch of it runs; returns
    /// the bytes freed.
    fn try_evict(&self, u: usize) -> u64 {
        if self.lru.is_none() {
            return 0;
        }
        let sessions = self.sessions.lock();
        if sessions.contains_key(&u) {
            return 0;
        }
        let Some((bytes, punched)) = self.discard(u, false, true) else {
            return 0;
        };
        drop(sessions);
        if bytes > 0 {
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = punched {
            log::warn!(
                "{}: freeing evicted bytes of {}: {e}",
                self.cache.path().display(),
                self.key
            );
        }
        bytes
    }

    /// Drop unit `u` from the cache (eviction, or a damaged cache file):
    /// clear its present bits (`clear_present`, which advances the discard
    /// epoch first: see `damage`), punch its hole, give its bytes back to
    /// the budget. The caller
    /// holds the session lock and has checked that no fetch of `u` runs, or
    /// runs that fetch itself. Under a budget only when no reader pins `u`
    /// (`None` otherwise), unless `force` (bytes already lost: see
    /// `damage`); without a budget there are no pins to respect. `punch`
    /// frees the unit's disk blocks (eviction); damage handling does not
    /// punch: without a budget nothing pins a reader's `Block`, and the
    /// intact part of a unit cut by a truncation may be under one right now.
    /// Its bytes stay valid, and the refetch writes the same bytes there.
    /// Returns the bytes dropped and how the hole punch went.
    pub(super) fn discard(
        &self,
        u: usize,
        force: bool,
        punch: bool,
    ) -> Option<(u64, std::io::Result<()>)> {
        let lru = self.lru.as_ref().filter(|_| !force);
        if let Some(lru) = lru
            && !lru.begin_evict(u)
        {
            return None;
        }
        let bytes = self.unit_cached_bytes(u);
        let mut punched = Ok(());
        if bytes > 0 {
            self.clear_present(u);
            if punch {
                punched = self.cache.punch_hole(self.layout.unit_range(u));
            }
            self.cached.fetch_sub(bytes, Ordering::Relaxed);
            self.stats.cache_size.dec_by(bytes);
            if let Some(lru) = &self.lru {
                lru.budget.release(bytes);
            }
        }
        if let Some(lru) = lru {
            lru.end_evict(u);
        }
        Some((bytes, punched))
    }

    /// Bytes of unit `u` present in the cache.
    pub(super) fn unit_cached_bytes(&self, u: usize) -> u64 {
        let range = self.layout.unit_range(u);
        match self.layout {
            Layout::Frames { .. } => {
                if self.present.all_set(u..u + 1) {
                    range.end - range.start
                } else {
                    0
                }
            }
            Layout::Chunks { .. } => {
                let pages = self.layout.bits_of(&range, &(u..u + 1));
                let last = pages.end - 1;
                let count = self.present.count(pages) as u64;
                // The object's last page may be partial.
                let tail_gap = (last as u64 + 1) * PAGE_SIZE - range.end;
                count * PAGE_SIZE
                    - if self.present.all_set(last..last + 1) {
                        tail_gap
                    } else {
                        0
                    }
            }
        }
    }
}
