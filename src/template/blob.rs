//! The blobs of a build (`snapfile`, `metadata.json`, and headers as a peer
//! passes them on): objects read as they are stored, with no header or diff behind them, so a read goes straight
//! to the store and nothing is cached.

use std::time::Instant;

use uuid::Uuid;

use super::{Builds, TemplateError};
use crate::format::limits::MAX_HEADER_LEN;
use crate::format::{Blob, FileKind, ObjectKey};
use crate::store::StoreError;

impl Builds {
    /// The size in bytes of `build`'s `blob`, None when it does not exist.
    ///
    /// # Errors
    /// `TemplateError::Store` when the store cannot be asked.
    pub fn blob_size(&self, build: Uuid, blob: Blob) -> Result<Option<u64>, TemplateError> {
        match self.store.size(&ObjectKey::blob(build, blob)) {
            Ok(n) => Ok(Some(n)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Fill `buf` with bytes `[offset, offset + buf.len())` of `build`'s
    /// `blob`.
    ///
    /// # Errors
    /// `NoBlob` when the blob does not exist; `TemplateError::Store` when it
    /// is shorter than the range (`ShortRead`) or cannot be read.
    pub fn read_blob(
        &self,
        build: Uuid,
        blob: Blob,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), TemplateError> {
        let key = ObjectKey::blob(build, blob);
        let start = Instant::now();
        let result = self.store.read_exact_into(&key, offset, buf);
        self.stats().record_object_read(key.name, start.elapsed());
        result.map_err(|e| match e {
            StoreError::NotFound { .. } => TemplateError::NoBlob {
                build,
                blob,
                location: self.store.location(),
            },
            e => e.into(),
        })
    }

    /// All of `build`'s `blob`, None when it does not exist.
    ///
    /// # Errors
    /// `TemplateError::Store` when it is over `max_len` bytes (`TooLarge`,
    /// checked before anything is read) or cannot be read.
    pub fn read_whole_blob(
        &self,
        build: Uuid,
        blob: Blob,
        max_len: u64,
    ) -> Result<Option<Vec<u8>>, TemplateError> {
        match self.store.read_all(&ObjectKey::blob(build, blob), max_len) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The header object of `build`'s `file` as stored (E2B peers pass
    /// headers on as blobs), None when it does not exist.
    ///
    /// # Errors
    /// `TemplateError::Store` when it is over `MAX_HEADER_LEN` bytes or
    /// cannot be read.
    pub fn read_header_object(
        &self,
        build: Uuid,
        file: FileKind,
    ) -> Result<Option<Vec<u8>>, TemplateError> {
        match self
            .store
            .read_all(&ObjectKey::header(build, file), MAX_HEADER_LEN)
        {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
