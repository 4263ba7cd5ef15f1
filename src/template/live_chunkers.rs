//! The live Chunkers of a `Builds`, so per-mount state stays bounded however
//! many builds are looked at.
//!
//! There is at most one Chunker per (build, file) diff at a time: a map of
//! weak references finds the one any open template file holds. When a
//! `TemplateFile` is dropped it hands its Chunkers back here, to a list of
//! the most recently used ones held strongly for reuse; past `limit` the
//! least recently used is dropped, which closes it (cache file removed,
//! cache budget credited) unless an open file still holds it. Every last
//! strong reference is dropped with this lock held, so a Chunker is closed
//! before another one of the same diff can be made (their cache files share
//! a name).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use uuid::Uuid;

use super::TemplateError;
use crate::chunker::Chunker;
use crate::format::FileKind;
use crate::sync;

pub(super) type FileId = (Uuid, FileKind);

/// The weak map is swept of closed Chunkers when it has this many entries
/// (or twice as many as after the last sweep), so a store of many builds
/// does not leave one dead entry per diff ever read.
const MIN_SWEEP: usize = 64;

/// See the module docs.
pub(super) struct LiveChunkers {
    /// Idle Chunkers kept for reuse.
    limit: usize,
    state: Mutex<State>,
}

struct State {
    live: HashMap<FileId, Weak<Chunker>>,
    /// Most recently used last.
    recent: VecDeque<(FileId, Arc<Chunker>)>,
    sweep_at: usize,
}

impl LiveChunkers {
    /// Keeps up to `limit` idle Chunkers open.
    pub(super) fn new(limit: usize) -> LiveChunkers {
        LiveChunkers {
            limit,
            state: Mutex::new(State {
                live: HashMap::new(),
                recent: VecDeque::new(),
                sweep_at: MIN_SWEEP,
            }),
        }
    }

    /// The live Chunker of `id`, made with `make` when there is none.
    /// `make` runs with the lock held: it must touch only the local disk.
    ///
    /// # Errors
    /// What `make` returns.
    pub(super) fn get_or_make(
        &self,
        id: FileId,
        make: impl FnOnce() -> Result<Chunker, TemplateError>,
    ) -> Result<Arc<Chunker>, TemplateError> {
        let mut state = sync::lock(&self.state);
        if let Some(c) = state.live.get(&id).and_then(Weak::upgrade) {
            return Ok(c);
        }
        let chunker = Arc::new(make()?);
        state.live.insert(id, Arc::downgrade(&chunker));
        if state.live.len() >= state.sweep_at {
            state.live.retain(|_, c| c.strong_count() > 0);
            state.sweep_at = MIN_SWEEP.max(2 * state.live.len());
        }
        Ok(chunker)
    }

    /// The live Chunker of `id`, if any, without making one.
    pub(super) fn live(&self, id: FileId) -> Option<Arc<Chunker>> {
        sync::lock(&self.state)
            .live
            .get(&id)
            .and_then(Weak::upgrade)
    }

    /// Take back the Chunkers of a dropped template file as the most
    /// recently used, closing the least recently used idle ones past the
    /// limit.
    pub(super) fn release(&self, file: FileKind, chunkers: Vec<(Uuid, Arc<Chunker>)>) {
        let mut state = sync::lock(&self.state);
        for (build, chunker) in chunkers {
            let id = (build, file);
            if let Some(at) = state.recent.iter().position(|(i, _)| *i == id) {
                state.recent.remove(at);
            }
            state.recent.push_back((id, chunker));
        }
        while state.recent.len() > self.limit {
            // Dropped here, under the lock: see the module docs.
            state.recent.pop_front();
        }
    }

    /// Stop sharing `id`'s Chunker: the next open makes a new one (a build
    /// switched from its origin peer to the store has a new header, so
    /// maybe a new data object). An idle one is closed; one held by open
    /// files lives on with them.
    pub(super) fn forget(&self, id: FileId) {
        let mut state = sync::lock(&self.state);
        state.live.remove(&id);
        // Dropped here, under the lock: see the module docs.
        state.recent.retain(|(i, _)| *i != id);
    }

    /// Chunkers open now (held by open files or kept idle).
    #[cfg(test)]
    pub(super) fn open_count(&self) -> usize {
        sync::lock(&self.state)
            .live
            .values()
            .filter(|c| c.strong_count() > 0)
            .count()
    }
}
