//! Remote stores: S3 (and S3-compatible servers) and GCS through
//! `object_store`, behind the synchronous `Store` trait.
//!
//! The async client runs on the store's own small tokio runtime; each trait
//! method blocks on it. Requests time out after `request_timeout`; transient
//! failures (5xx, throttling, connection errors, timeouts) are retried with
//! exponential backoff and jitter until that same timeout has passed, client
//! errors (4xx) are not. At most `max_requests` requests are in flight per
//! store. A large ranged read is split into parts fetched concurrently and
//! delivered in order; a large upload goes up in parts (multipart upload).
//!
//! S3 is tested against Garage (tests/s3_store.rs, s3_faults.rs). GCS shares
//! all the code above `object_store`'s client; tests/s3_gcs.rs reads through
//! it from fake-gcs-server, which cannot take `object_store`'s (XML API)
//! uploads, so GCS writes are untested here.

mod client;
mod errors;
mod reader;
mod reads;
#[cfg(test)]
mod tests;
mod upload;

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read};
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::StreamExt;
use object_store::limit::LimitStore;
use object_store::path::Path;
use object_store::{Attribute, AttributeValue, Attributes, GetOptions, ObjectStore, PutPayload};
use tokio::runtime::Runtime;
use uuid::Uuid;

use super::{PutOptions, Store, StoreError, WritableStore};
use crate::format::{ObjectKey, parse_build_id};
use errors::store_error;
use reads::SPLIT_READ_THRESHOLD;
use upload::MULTIPART_THRESHOLD;

/// Object metadata key holding a compressed object's uncompressed size.
const UNCOMPRESSED_SIZE: &str = "uncompressed-size";

/// A store in a bucket of S3, an S3-compatible server or GCS, with every
/// object under `prefix/{build}/{name}`.
///
/// Its methods block, so call them from plain threads, not from inside an
/// async runtime. A reader from `read_range` holds one of the `max_requests`
/// slots while its transfer runs: read it to the end or drop it.
pub struct RemoteStore {
    /// `s3://bucket/prefix`, for messages.
    location: String,
    /// The key prefix; empty for the bucket root.
    prefix: Path,
    client: Arc<LimitStore<Box<dyn ObjectStore>>>,
    runtime: Arc<Runtime>,
}

impl fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl RemoteStore {
    fn path(&self, key: &ObjectKey) -> Path {
        self.prefix
            .child(key.build.to_string())
            .child(key.name.as_string())
    }

    /// Run one request to completion on the store's runtime.
    fn run<T>(
        &self,
        key: &str,
        request: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T, StoreError> {
        self.runtime
            .block_on(request)
            .map_err(|e| store_error(&self.location, key, e))
    }
}

impl Store for RemoteStore {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn size(&self, key: &ObjectKey) -> Result<u64, StoreError> {
        let meta = self.run(&key.to_string(), self.client.head(&self.path(key)))?;
        Ok(meta.size)
    }

    fn uncompressed_size(&self, key: &ObjectKey) -> Result<Option<u64>, StoreError> {
        let name = key.to_string();
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let result = self.run(&name, self.client.get_opts(&self.path(key), options))?;
        let attribute = Attribute::Metadata(Cow::Borrowed(UNCOMPRESSED_SIZE));
        let Some(value) = result.attributes.get(&attribute) else {
            return Ok(None);
        };
        let text = value.as_ref().trim();
        text.parse::<u64>().map(Some).map_err(|_| StoreError::Io {
            key: format!("{}/{name}", self.location),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("metadata {UNCOMPRESSED_SIZE} is not a decimal size: {text:?}"),
            ),
        })
    }

    fn read_range(
        &self,
        key: &ObjectKey,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        let end = offset.checked_add(len).ok_or_else(|| StoreError::Io {
            key: key.to_string(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("range {offset}+{len} overflows"),
            ),
        })?;
        if len == 0 {
            return Ok(Box::new(io::empty()));
        }
        if len >= SPLIT_READ_THRESHOLD {
            self.split_range(key, offset..end)
        } else {
            self.stream_range(key, offset..end)
        }
    }

    fn read_all(&self, key: &ObjectKey, max_len: u64) -> Result<Vec<u8>, StoreError> {
        let name = key.to_string();
        let path = self.path(key);
        let request = async {
            let result = self.client.get_opts(&path, GetOptions::default()).await?;
            let size = result.meta.size;
            if size > max_len {
                return Ok(Err(size));
            }
            let mut data = Vec::with_capacity(size as usize);
            let mut body = result.into_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                if (data.len() + chunk.len()) as u64 > max_len {
                    return Ok(Err(data.len() as u64 + chunk.len() as u64));
                }
                data.extend_from_slice(&chunk);
            }
            Ok(Ok(data))
        };
        match self.run(&name, request)? {
            Ok(data) => Ok(data),
            Err(size) => Err(StoreError::TooLarge {
                key: format!("{}/{name}", self.location),
                size,
                limit: max_len,
            }),
        }
    }

    fn list_builds(&self) -> Result<Vec<Uuid>, StoreError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let listing = self.run("(build listing)", self.client.list_with_delimiter(prefix))?;
        let mut builds: Vec<Uuid> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(parse_build_id))
            .collect();
        builds.sort();
        builds.dedup();
        Ok(builds)
    }
}

impl WritableStore for RemoteStore {
    fn put_file(&self, key: &ObjectKey, path: &FsPath, opts: PutOptions) -> Result<(), StoreError> {
        let mut attributes = Attributes::new();
        if let Some(size) = opts.uncompressed_size {
            attributes.insert(
                Attribute::Metadata(Cow::Borrowed(UNCOMPRESSED_SIZE)),
                AttributeValue::from(size.to_string()),
            );
        }
        let mut file = File::open(path).map_err(|e| local_io(path, e))?;
        let size = file.metadata().map_err(|e| local_io(path, e))?.len();
        if size >= MULTIPART_THRESHOLD {
            return self.put_multipart(key, file, path, attributes);
        }
        let mut data = Vec::with_capacity(size as usize);
        file.read_to_end(&mut data).map_err(|e| local_io(path, e))?;
        let options = object_store::PutOptions {
            attributes,
            ..object_store::PutOptions::default()
        };
        let path = self.path(key);
        let put = self.client.put_opts(&path, PutPayload::from(data), options);
        self.run(&key.to_string(), put).map(drop)
    }

    fn put_bytes(&self, key: &ObjectKey, data: &[u8]) -> Result<(), StoreError> {
        let payload = PutPayload::from(Bytes::copy_from_slice(data));
        let path = self.path(key);
        let put = self.client.put(&path, payload);
        self.run(&key.to_string(), put).map(drop)
    }
}

fn local_io(path: &FsPath, source: io::Error) -> StoreError {
    StoreError::Io {
        key: path.display().to_string(),
        source,
    }
}
