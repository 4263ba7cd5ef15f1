//! Object stores, as two traits: `Store`, the read side (the size and ranged
//! reads of an object key, listing of builds) that the whole read path holds
//! as `Arc<dyn Store>`, and `WritableStore`, the write side (uploads) that
//! only `pack` needs. The two backends are both: the local directory store
//! (the embedded default) and S3/GCS through `object_store`. Wrappers that
//! change reads are read-only `Store`s, so they forward reads alone: a
//! throttling one for benchmarks, a metered one that times reads for
//! `metrics`, and, for tests only (feature `testing`), a fault-injecting one.

mod error;
#[cfg(any(test, feature = "testing"))]
mod fault;
mod local;
mod location;
mod metered;
mod object;
mod throttle;

use std::io::Read;
use std::path::Path;

use uuid::Uuid;

pub use error::StoreError;
#[cfg(any(test, feature = "testing"))]
pub use fault::{Fault, FaultStore};
pub use local::LocalStore;
pub use location::{StoreConfig, StoreLocation, open};
pub use metered::MeteredStore;
pub use object::RemoteStore;
pub use throttle::{Throttle, ThrottleStore};

use crate::format::ObjectKey;

/// Extra facts stored with an object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Uncompressed size of a compressed diff (object metadata
    /// `uncompressed-size`; the local store writes a sidecar file).
    pub uncompressed_size: Option<u64>,
}

/// The read side of a backing store of template objects. Implementations
/// are synchronous and shareable across threads; a remote store runs its own
/// async client inside.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Where this store is, for messages (`/srv/templates`, `s3://bucket/p`).
    fn location(&self) -> String;

    /// Size in bytes of the object; `StoreError::NotFound` when absent.
    fn size(&self, key: &ObjectKey) -> Result<u64, StoreError>;

    /// The `uncompressed-size` recorded with a compressed object, if any.
    fn uncompressed_size(&self, key: &ObjectKey) -> Result<Option<u64>, StoreError>;

    /// A stream of bytes `[offset, offset+len)` of the object. The stream may
    /// end early (a short read): callers check they got `len` bytes.
    fn read_range(
        &self,
        key: &ObjectKey,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send>, StoreError>;

    /// The whole object, refused with `StoreError::TooLarge` over `max_len`
    /// (checked before anything is read or allocated).
    fn read_all(&self, key: &ObjectKey, max_len: u64) -> Result<Vec<u8>, StoreError> {
        let size = self.size(key)?;
        if size > max_len {
            return Err(StoreError::TooLarge {
                key: key.to_string(),
                size,
                limit: max_len,
            });
        }
        self.read_exact_range(key, 0, size)
    }

    /// The build ids present (names under the root that are UUIDs; anything
    /// else is skipped).
    fn list_builds(&self) -> Result<Vec<Uuid>, StoreError>;

    /// True when the object exists.
    fn exists(&self, key: &ObjectKey) -> Result<bool, StoreError> {
        match self.size(key) {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Fill `buf` with bytes `[offset, offset + buf.len())` of the object; a
    /// short object is `StoreError::ShortRead`. Lets a caller reuse a buffer.
    fn read_exact_into(
        &self,
        key: &ObjectKey,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), StoreError> {
        let mut stream = self.read_range(key, offset, buf.len() as u64)?;
        let mut got = 0;
        while got < buf.len() {
            match stream.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => return Err(StoreError::io(key, source)),
            }
        }
        if got < buf.len() {
            return Err(StoreError::ShortRead {
                key: key.to_string(),
                expected: buf.len() as u64,
                got: got as u64,
            });
        }
        Ok(())
    }

    /// Read exactly `[offset, offset+len)` into a new buffer; a short object
    /// is `StoreError::ShortRead`.
    fn read_exact_range(
        &self,
        key: &ObjectKey,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let mut stream = self.read_range(key, offset, len)?;
        let mut buf = Vec::with_capacity(len.min(64 << 20) as usize);
        stream
            .by_ref()
            .take(len)
            .read_to_end(&mut buf)
            .map_err(|source| StoreError::io(key, source))?;
        if (buf.len() as u64) < len {
            return Err(StoreError::ShortRead {
                key: key.to_string(),
                expected: len,
                got: buf.len() as u64,
            });
        }
        Ok(buf)
    }
}

/// A store that also takes new objects: what `pack` uploads a build to.
/// `LocalStore` and `RemoteStore` are both; an `Arc<dyn WritableStore>`
/// coerces to the `Arc<dyn Store>` a reader takes.
pub trait WritableStore: Store {
    /// Store the file at `path` as `key`, atomically: readers see either no
    /// object or the whole of it.
    fn put_file(&self, key: &ObjectKey, path: &Path, opts: PutOptions) -> Result<(), StoreError>;

    /// Store `data` as `key`, atomically.
    fn put_bytes(&self, key: &ObjectKey, data: &[u8]) -> Result<(), StoreError>;
}
