//! Builds the store does not have yet, read from their E2B origin peer
//! (`--peer-registry`, see `crate::peer::Origins`): the headers (flags bit
//! 0 accepted here, and only here) and blobs it serves, kept for the
//! listing TTL, after which the store is asked whether it has the object
//! now. A build leaves its origin for good when the origin said
//! `use_storage` (`PeerSource::origin_switched`) or the store has the
//! object: what came from the origin is dropped, the build's own Chunkers
//! are no longer shared (the store's header may name another data object),
//! and the switch is counted in `.stats` (`origin_switches`). The size of
//! the build's own diff, absent from its origin's header during the upload,
//! comes from `GetBuildFileSize` (`Builds::diff`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::TemplateError;
use super::live_chunkers::{FileId, LiveChunkers};
use crate::chunker::{PeerFallback, PeerSource};
use crate::format::limits::{MAX_HEADER_LEN, MAX_METADATA_LEN};
use crate::format::{Blob, FileKind, Header, ObjectKey};
use crate::metrics::Stats;
use crate::store::{Store, StoreError};
use crate::sync;

/// Cap on a snapfile served by an origin, held in memory until the build
/// is uploaded: Firecracker's VM state is a few MiB (E2B's snapfiles are
/// 1–20 MiB), so this is far over any real one.
const MAX_ORIGIN_SNAPFILE: u64 = 256 << 20;

/// Whether an object from an origin is still to be used.
enum Still {
    /// Within the TTL of its last check.
    Fresh,
    /// The store was asked and still lacks it: trusted for another TTL.
    Checked,
    /// The build left its origin.
    Gone,
}

/// What came from origin peers, owned by `Builds`.
pub(super) struct FromOrigin {
    ttl: Duration,
    /// Each object with when it was loaded or last checked in the store.
    headers: Mutex<HashMap<FileId, Loaded<Header>>>,
    blobs: Mutex<HashMap<BlobId, Loaded<Vec<u8>>>>,
}

/// An object and when it was loaded or last checked in the store.
type Loaded<T> = (Arc<T>, Instant);

/// A build's blob.
type BlobId = (Uuid, Blob);

/// What `FromOrigin` needs of its `Builds`.
pub(super) struct Context<'a> {
    pub peers: &'a dyn PeerSource,
    pub store: &'a dyn Store,
    pub stats: &'a Stats,
    pub live_chunkers: &'a LiveChunkers,
}

impl FromOrigin {
    /// Objects from origins are trusted for `ttl` before the store is
    /// asked again.
    pub(super) fn new(ttl: Duration) -> FromOrigin {
        FromOrigin {
            ttl,
            headers: Mutex::new(HashMap::new()),
            blobs: Mutex::new(HashMap::new()),
        }
    }

    /// The header of `build`'s `file` from its origin, when one was
    /// loaded and the build has not left its origin since.
    pub(super) fn cached_header(
        &self,
        cx: &Context<'_>,
        build: Uuid,
        file: FileKind,
    ) -> Option<Arc<Header>> {
        let (header, at) = sync::lock(&self.headers).get(&(build, file)).cloned()?;
        match self.still_origin(cx, build, at, &ObjectKey::header(build, file)) {
            Still::Fresh => Some(header),
            Still::Checked => {
                sync::lock(&self.headers).insert((build, file), (header.clone(), Instant::now()));
                Some(header)
            }
            Still::Gone => {
                self.switch(cx, build);
                None
            }
        }
    }

    /// The header of `build`'s `file` asked of its origin (for a build the
    /// store lacks the header of); `None` when it has no origin or the
    /// origin did not give it (the reason counted; the store is read).
    ///
    /// # Errors
    /// `CorruptHeader` when the origin's header does not decode.
    pub(super) fn load_header(
        &self,
        cx: &Context<'_>,
        build: Uuid,
        file: FileKind,
    ) -> Result<Option<Arc<Header>>, TemplateError> {
        let key = ObjectKey::header(build, file);
        let name = key.name.as_string();
        let Some(bytes) = ask(cx, build, &name, MAX_HEADER_LEN) else {
            return Ok(None);
        };
        let header =
            Header::decode_from_peer(&bytes).map_err(|source| TemplateError::CorruptHeader {
                key: format!("{key} (from its origin peer)"),
                source,
            })?;
        let header = Arc::new(header);
        sync::lock(&self.headers).insert((build, file), (header.clone(), Instant::now()));
        Ok(Some(header))
    }

    /// All of `build`'s `blob` from its origin: as loaded before while the
    /// build has not left its origin, else asked of it when `fetch`.
    pub(super) fn blob(
        &self,
        cx: &Context<'_>,
        build: Uuid,
        blob: Blob,
        fetch: bool,
    ) -> Option<Arc<Vec<u8>>> {
        let known = sync::lock(&self.blobs).get(&(build, blob)).cloned();
        if let Some((bytes, at)) = known {
            return match self.still_origin(cx, build, at, &ObjectKey::blob(build, blob)) {
                Still::Fresh => Some(bytes),
                Still::Checked => {
                    sync::lock(&self.blobs).insert((build, blob), (bytes.clone(), Instant::now()));
                    Some(bytes)
                }
                Still::Gone => {
                    self.switch(cx, build);
                    None
                }
            };
        }
        if !fetch {
            return None;
        }
        let max_len = match blob {
            Blob::Metadata => MAX_METADATA_LEN,
            Blob::Snapfile => MAX_ORIGIN_SNAPFILE,
        };
        let bytes = Arc::new(ask(cx, build, blob.name(), max_len)?);
        sync::lock(&self.blobs).insert((build, blob), (bytes.clone(), Instant::now()));
        Some(bytes)
    }

    /// Whether an object of `build` loaded (or last checked) at `at` is
    /// still to be used: not switched, and, past the TTL, still missing from
    /// the store (a store that cannot be asked keeps the origin's copy).
    fn still_origin(&self, cx: &Context<'_>, build: Uuid, at: Instant, key: &ObjectKey) -> Still {
        if cx.peers.origin_switched(build) {
            return Still::Gone;
        }
        if at.elapsed() < self.ttl {
            return Still::Fresh;
        }
        match cx.store.exists(key) {
            Ok(true) => Still::Gone,
            _ => Still::Checked,
        }
    }

    /// The store has `build` whole: whatever came from its origin goes.
    pub(super) fn stored(&self, cx: &Context<'_>, build: Uuid) {
        let known = sync::lock(&self.headers).keys().any(|(b, _)| *b == build)
            || sync::lock(&self.blobs).keys().any(|(b, _)| *b == build);
        if known {
            self.switch(cx, build);
        }
    }

    /// `build` leaves its origin: see the module docs.
    fn switch(&self, cx: &Context<'_>, build: Uuid) {
        let mut dropped = false;
        sync::lock(&self.headers).retain(|(b, _), _| {
            dropped |= *b == build;
            *b != build
        });
        sync::lock(&self.blobs).retain(|(b, _), _| {
            dropped |= *b == build;
            *b != build
        });
        for file in FileKind::ALL {
            cx.live_chunkers.forget((build, file));
        }
        if dropped {
            cx.stats.origin_switches.fetch_add(1, Ordering::Relaxed);
            log::info!(
                "build {build}: read from the store from now on, no longer from its origin peer"
            );
        }
    }
}

/// Bytes `[offset, offset + buf.len())` of the object `bytes` (`key`).
///
/// # Errors
/// `ShortRead` when the object is shorter than the range.
pub(super) fn copy_range(
    bytes: &[u8],
    key: &ObjectKey,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), TemplateError> {
    let part = usize::try_from(offset)
        .ok()
        .and_then(|start| bytes.get(start..start.checked_add(buf.len())?));
    let Some(part) = part else {
        return Err(StoreError::ShortRead {
            key: key.to_string(),
            expected: offset + buf.len() as u64,
            got: bytes.len() as u64,
        }
        .into());
    };
    buf.copy_from_slice(part);
    Ok(())
}

/// The object `name` of `build` from its origin, the failure counted.
fn ask(cx: &Context<'_>, build: Uuid, name: &str, max_len: u64) -> Option<Vec<u8>> {
    let answer = cx.peers.origin_object(build, name, max_len);
    match &answer {
        Ok(_) => {
            cx.stats.peer_requests.fetch_add(1, Ordering::Relaxed);
        }
        Err(reason) => {
            if reason.asked() {
                cx.stats.peer_requests.fetch_add(1, Ordering::Relaxed);
            }
            if *reason != PeerFallback::Owned {
                cx.stats.record_peer_fallback(reason.name());
            }
        }
    }
    answer.ok()
}
