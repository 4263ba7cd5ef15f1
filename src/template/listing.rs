//! What the store holds, as last asked: the list of builds, and which
//! objects each build has. Both are trusted for the listing TTL; a build that
//! has every object is probed once, since a build never changes once
//! complete, except for the size of a blob that may be re-uploaded
//! (`Blob::may_change`: metadata.json), asked again after the TTL. The store is always asked without a lock held: a LIST or HEAD
//! is a network call, and readers of a fresh answer must not queue behind it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::{TemplateError, blob};
use crate::format::{Blob, FileKind, ObjectKey};
use crate::store::Store;
use crate::sync;

/// The cached answers, owned by `Builds`.
pub(super) struct Listing {
    ttl: Duration,
    builds: RwLock<Option<(Arc<Vec<Uuid>>, Instant)>>,
    contents: RwLock<HashMap<Uuid, BuildContents>>,
}

impl Listing {
    pub(super) fn new(ttl: Duration) -> Self {
        Listing {
            ttl,
            builds: RwLock::new(None),
            contents: RwLock::new(HashMap::new()),
        }
    }

    /// How long the listing (and the probe of an incomplete build) is
    /// trusted.
    pub(super) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// `store`'s build ids, listed at most once per TTL. Two callers that
    /// find the listing stale at once both list, and the later answer
    /// stays: as fresh as the other, and cheaper than making readers of a
    /// fresh listing wait on a lock held across a LIST.
    ///
    /// # Errors
    /// `TemplateError::Store` when the store cannot be listed.
    pub(super) fn list(&self, store: &dyn Store) -> Result<Arc<Vec<Uuid>>, TemplateError> {
        if let Some((builds, listed)) = &*sync::read(&self.builds)
            && listed.elapsed() < self.ttl
        {
            return Ok(builds.clone());
        }
        let builds = Arc::new(store.list_builds()?);
        *sync::write(&self.builds) = Some((builds.clone(), Instant::now()));
        Ok(builds)
    }

    /// Which objects `build` has in `store`. A complete build is probed
    /// once (but for the size of a blob that may change, asked again after
    /// the TTL); one with objects missing again after the TTL (it may be
    /// mid-upload). Concurrent probes of one build may both ask the store
    /// (see `list`).
    ///
    /// # Errors
    /// `TemplateError::Store` when the store cannot be asked.
    pub(super) fn contents(
        &self,
        store: &dyn Store,
        build: Uuid,
    ) -> Result<BuildContents, TemplateError> {
        let known = sync::read(&self.contents).get(&build).copied();
        if let Some(known) = known
            && known.probed.elapsed() < self.ttl
        {
            return Ok(known);
        }
        let contents = match known {
            // Only what may change of a complete build is asked again.
            Some(mut known) if known.complete() => {
                for (size, blob) in known.blobs.iter_mut().zip(Blob::ALL) {
                    if blob.may_change() {
                        *size = blob::size(store, build, blob)?;
                    }
                }
                known.probed = Instant::now();
                known
            }
            _ => {
                let mut headers = [false; 2];
                for (has, file) in headers.iter_mut().zip(FileKind::ALL) {
                    *has = store.exists(&ObjectKey::header(build, file))?;
                }
                let mut blobs = [None; 2];
                for (size, blob) in blobs.iter_mut().zip(Blob::ALL) {
                    *size = blob::size(store, build, blob)?;
                }
                BuildContents {
                    headers,
                    blobs,
                    probed: Instant::now(),
                }
            }
        };
        // Only builds that exist are kept, so the map grows with the store,
        // not with the names callers try.
        if contents.any() {
            sync::write(&self.contents).insert(build, contents);
        }
        Ok(contents)
    }
}

/// Which of a build's objects the store holds, as last probed.
#[derive(Debug, Clone, Copy)]
pub struct BuildContents {
    /// Whether each template file's header exists, indexed like
    /// `FileKind::ALL`.
    headers: [bool; 2],
    /// Each blob's size in bytes, indexed like `Blob::ALL`.
    blobs: [Option<u64>; 2],
    probed: Instant,
}

impl BuildContents {
    /// Contents known otherwise than by probing the store (a build's
    /// origin peer): `headers` indexed like `FileKind::ALL`, blob sizes in
    /// bytes like `Blob::ALL`.
    pub(super) fn new(headers: [bool; 2], blobs: [Option<u64>; 2]) -> BuildContents {
        BuildContents {
            headers,
            blobs,
            probed: Instant::now(),
        }
    }

    /// True when the header of `file` exists.
    pub fn has_header(&self, file: FileKind) -> bool {
        FileKind::ALL
            .iter()
            .position(|f| *f == file)
            .is_some_and(|i| self.headers[i])
    }

    /// The size in bytes of `blob`, None when it does not exist.
    pub fn blob_size(&self, blob: Blob) -> Option<u64> {
        let i = Blob::ALL.iter().position(|b| *b == blob)?;
        self.blobs[i]
    }

    /// True when the build has any object at all.
    pub fn any(&self) -> bool {
        self.headers.iter().any(|h| *h) || self.blobs.iter().any(Option::is_some)
    }

    /// True when the build has every object: it cannot change any more.
    pub fn complete(&self) -> bool {
        self.headers.iter().all(|h| *h) && self.blobs.iter().all(Option::is_some)
    }
}
