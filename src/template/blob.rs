//! The blobs of a build (`snapfile`, `metadata.json`, and headers as a peer
//! passes them on): objects read as they are stored, with no header or diff
//! behind them, so a read goes straight to the store and nothing is cached.
//! `Builds` is the door to these reads (`Builds::read_blob` and its
//! siblings); this file is what they do.

use std::time::Instant;

use uuid::Uuid;

use super::TemplateError;
use crate::format::limits::MAX_HEADER_LEN;
use crate::format::{Blob, FileKind, ObjectKey};
use crate::metrics::Stats;
use crate::store::{Store, StoreError};

/// The size in bytes of `build`'s `blob`, None when it does not exist.
///
/// # Errors
/// `TemplateError::Store` when the store cannot be asked.
pub(super) fn size(
    store: &dyn Store,
    build: Uuid,
    blob: Blob,
) -> Result<Option<u64>, TemplateError> {
    found(store.size(&ObjectKey::blob(build, blob)))
}

/// Fill `buf` with bytes `[offset, offset + buf.len())` of `build`'s
/// `blob`, timed in `stats` as an object read.
///
/// # Errors
/// `NoBlob` when the blob does not exist; `TemplateError::Store` when it is
/// shorter than the range (`ShortRead`) or cannot be read.
pub(super) fn read(
    store: &dyn Store,
    stats: &Stats,
    build: Uuid,
    blob: Blob,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), TemplateError> {
    let key = ObjectKey::blob(build, blob);
    let start = Instant::now();
    let result = store.read_exact_into(&key, offset, buf);
    stats.record_object_read(key.name, start.elapsed());
    result.map_err(|e| match e {
        StoreError::NotFound { .. } => TemplateError::NoBlob {
            build,
            blob,
            location: store.location(),
        },
        e => e.into(),
    })
}

/// All of `build`'s `blob`, None when it does not exist.
///
/// # Errors
/// `TemplateError::Store` when it is over `max_len` bytes (`TooLarge`,
/// checked before anything is read) or cannot be read.
pub(super) fn read_whole(
    store: &dyn Store,
    build: Uuid,
    blob: Blob,
    max_len: u64,
) -> Result<Option<Vec<u8>>, TemplateError> {
    found(store.read_all(&ObjectKey::blob(build, blob), max_len))
}

/// The header object of `build`'s `file` as stored (E2B peers pass headers
/// on as blobs), None when it does not exist.
///
/// # Errors
/// `TemplateError::Store` when it is over `MAX_HEADER_LEN` bytes or cannot
/// be read.
pub(super) fn read_header_object(
    store: &dyn Store,
    build: Uuid,
    file: FileKind,
) -> Result<Option<Vec<u8>>, TemplateError> {
    found(store.read_all(&ObjectKey::header(build, file), MAX_HEADER_LEN))
}

/// A store answer with `NotFound` as `None`.
fn found<T>(answer: Result<T, StoreError>) -> Result<Option<T>, TemplateError> {
    match answer {
        Ok(v) => Ok(Some(v)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
