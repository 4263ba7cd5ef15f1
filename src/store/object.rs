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

mod errors;
mod reader;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read};
use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::limit::LimitStore;
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, BackoffConfig, ClientConfigKey, GetOptions,
    MultipartUpload, ObjectStore, PutMultipartOptions, PutPayload, RetryConfig,
};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::location::StoreOptions;
use super::{PutOptions, Store, StoreError};
use crate::format::{ObjectKey, parse_build_id};
use errors::store_error;
use reader::{Ahead, ChannelReader};

/// Object metadata key holding a compressed object's uncompressed size.
const UNCOMPRESSED_SIZE: &str = "uncompressed-size";
/// Threads of the store's runtime: the work is waiting on sockets.
const RUNTIME_THREADS: usize = 2;
/// Ranged reads from this size on are split into parallel parts.
const SPLIT_READ_THRESHOLD: u64 = 8 << 20;
/// Size of one part of a split read.
const READ_PART_SIZE: u64 = 4 << 20;
/// Parts of one split read in flight at once.
const READ_PARTS_IN_FLIGHT: usize = 4;
/// Files from this size on are uploaded in parts.
const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// Size of one uploaded part (S3 wants at least 5 MiB but for the last).
const UPLOAD_PART_SIZE: usize = 8 << 20;
/// Parts of one upload in flight at once.
const UPLOAD_PARTS_IN_FLIGHT: usize = 4;
/// Longest wait for a TCP connection, within the request timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retry count cap; the request timeout usually ends retries first.
const MAX_RETRIES: usize = 10;

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
    /// `s3://bucket/prefix`, with credentials, region and endpoint from the
    /// standard AWS environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`, instance and
    /// container credentials); `opts.endpoint_url` and `opts.region` win.
    pub fn s3(bucket: &str, prefix: &str, opts: &StoreOptions) -> Result<Self, StoreError> {
        Self::s3_with_builder(AmazonS3Builder::from_env(), bucket, prefix, opts)
    }

    /// `s3://bucket/prefix` configured from `builder` (for explicit
    /// credentials) plus `opts`.
    pub fn s3_with_builder(
        builder: AmazonS3Builder,
        bucket: &str,
        prefix: &str,
        opts: &StoreOptions,
    ) -> Result<Self, StoreError> {
        let location = location_name("s3", bucket, prefix);
        check_options(&location, opts)?;
        let mut builder = builder
            .with_bucket_name(bucket)
            .with_retry(retry_config(opts));
        for (key, value) in client_config(opts) {
            builder = builder.with_config(AmazonS3ConfigKey::Client(key), value);
        }
        if let Some(region) = &opts.region {
            builder = builder.with_region(region);
        }
        if let Some(endpoint) = &opts.endpoint_url {
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        let plain_http = builder
            .get_config_value(&AmazonS3ConfigKey::Endpoint)
            .is_some_and(|e| e.starts_with("http://"));
        if plain_http {
            builder = builder.with_allow_http(true);
        }
        let client = builder
            .build()
            .map_err(|e| StoreError::BadLocation(format!("{location}: {e}")))?;
        Self::new(location, prefix, Box::new(client), opts)
    }

    /// `gs://bucket/prefix`, with credentials from the standard Google
    /// environment (`GOOGLE_APPLICATION_CREDENTIALS`, `GOOGLE_SERVICE_ACCOUNT`,
    /// workload identity through the metadata server).
    pub fn gcs(bucket: &str, prefix: &str, opts: &StoreOptions) -> Result<Self, StoreError> {
        Self::gcs_with_builder(GoogleCloudStorageBuilder::from_env(), bucket, prefix, opts)
    }

    /// `gs://bucket/prefix` configured from `builder` plus `opts`.
    pub fn gcs_with_builder(
        builder: GoogleCloudStorageBuilder,
        bucket: &str,
        prefix: &str,
        opts: &StoreOptions,
    ) -> Result<Self, StoreError> {
        let location = location_name("gs", bucket, prefix);
        check_options(&location, opts)?;
        let mut builder = builder
            .with_bucket_name(bucket)
            .with_retry(retry_config(opts));
        for (key, value) in client_config(opts) {
            builder = builder.with_config(GoogleConfigKey::Client(key), value);
        }
        let client = builder
            .build()
            .map_err(|e| StoreError::BadLocation(format!("{location}: {e}")))?;
        Self::new(location, prefix, Box::new(client), opts)
    }

    fn new(
        location: String,
        prefix: &str,
        client: Box<dyn ObjectStore>,
        opts: &StoreOptions,
    ) -> Result<Self, StoreError> {
        let prefix = Path::parse(prefix.trim_matches('/'))
            .map_err(|e| StoreError::BadLocation(format!("{location}: bad key prefix: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("tdfs-store")
            .enable_all()
            .build()
            .map_err(|e| {
                StoreError::BadLocation(format!("{location}: cannot start the I/O threads: {e}"))
            })?;
        Ok(RemoteStore {
            location,
            prefix,
            client: Arc::new(LimitStore::new(client, opts.max_requests)),
            runtime: Arc::new(runtime),
        })
    }

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

    /// One ranged GET whose body streams to the reader as it arrives.
    fn stream_range(
        &self,
        key: &ObjectKey,
        range: Range<u64>,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        let name = key.to_string();
        let options = GetOptions {
            range: Some(range.into()),
            ..GetOptions::default()
        };
        let result = match self.run(&name, self.client.get_opts(&self.path(key), options)) {
            Ok(result) => result,
            Err(e) if is_past_end(&e) => return Ok(Box::new(io::empty())),
            Err(e) => return Err(e),
        };
        let location = self.location.clone();
        let stream = result
            .into_stream()
            .map(move |chunk| chunk.map_err(|e| store_error(&location, &name, e)))
            .boxed();
        // The read is under SPLIT_READ_THRESHOLD: let it arrive whatever the
        // reader does, so a busy reader cannot make it time out.
        Ok(Box::new(ChannelReader::spawn(
            &self.runtime,
            stream,
            Ahead::Everything,
        )))
    }

    /// Parts of `READ_PART_SIZE` fetched `READ_PARTS_IN_FLIGHT` at a time and
    /// delivered in order; the first part's failure is returned here. Each
    /// part is its own task, so parts keep arriving while the reader is busy.
    fn split_range(
        &self,
        key: &ObjectKey,
        range: Range<u64>,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        let path = self.path(key);
        let name = key.to_string();
        let location = self.location.clone();
        let client = Arc::clone(&self.client);
        let runtime = self.runtime.handle().clone();
        let parts = split_parts(range);
        let mut stream = futures::stream::iter(parts)
            .map(move |part| {
                let (client, path) = (Arc::clone(&client), path.clone());
                let (part_location, part_name) = (location.clone(), name.clone());
                let fetch = runtime.spawn(async move {
                    let wanted = part.end - part.start;
                    match client.get_range(&path, part).await {
                        Ok(bytes) => Ok((bytes, wanted)),
                        Err(e) => match store_error(&part_location, &part_name, e) {
                            e if is_past_end(&e) => Ok((Bytes::new(), wanted)),
                            e => Err(e),
                        },
                    }
                });
                let (location, name) = (location.clone(), name.clone());
                async move {
                    fetch.await.unwrap_or_else(|stopped| {
                        Err(StoreError::Remote {
                            location,
                            key: name,
                            status: None,
                            message: format!("fetch of a part stopped: {stopped}"),
                            transient: false,
                        })
                    })
                }
            })
            .buffered(READ_PARTS_IN_FLIGHT)
            .scan(false, |ended, part| {
                // A short part means the object ended there; an error ends
                // the read.
                if *ended {
                    return futures::future::ready(None);
                }
                *ended = !matches!(&part, Ok((bytes, wanted)) if bytes.len() as u64 == *wanted);
                futures::future::ready(Some(part.map(|(bytes, _)| bytes)))
            })
            .boxed();
        let first = match self.runtime.block_on(stream.next()) {
            Some(Ok(bytes)) => bytes,
            Some(Err(e)) => return Err(e),
            None => return Ok(Box::new(io::empty())),
        };
        let stream = futures::stream::once(futures::future::ready(Ok(first)))
            .chain(stream)
            .boxed();
        Ok(Box::new(ChannelReader::spawn(
            &self.runtime,
            stream,
            Ahead::Chunks(1),
        )))
    }

    /// Upload `file` in parts, in order, a few at a time; the parts become
    /// the object only when the upload completes.
    fn put_multipart(
        &self,
        key: &ObjectKey,
        file: File,
        source: &FsPath,
        attributes: Attributes,
    ) -> Result<(), StoreError> {
        let name = key.to_string();
        let options = PutMultipartOptions {
            attributes,
            ..PutMultipartOptions::default()
        };
        let mut upload = self.run(
            &name,
            self.client.put_multipart_opts(&self.path(key), options),
        )?;
        let sent = self.upload_parts(&name, upload.as_mut(), file, source);
        let completed = sent.and_then(|()| self.run(&name, upload.complete()).map(drop));
        if completed.is_err() {
            // Best effort: the server also expires abandoned uploads.
            let _ = self.runtime.block_on(upload.abort());
        }
        completed
    }

    fn upload_parts(
        &self,
        name: &str,
        upload: &mut dyn MultipartUpload,
        mut file: File,
        source: &FsPath,
    ) -> Result<(), StoreError> {
        let mut in_flight: VecDeque<JoinHandle<object_store::Result<()>>> = VecDeque::new();
        let result = (|| {
            loop {
                let part =
                    read_part(&mut file, UPLOAD_PART_SIZE).map_err(|e| local_io(source, e))?;
                if part.is_empty() {
                    break;
                }
                if in_flight.len() >= UPLOAD_PARTS_IN_FLIGHT {
                    let oldest = in_flight.pop_front().expect("parts in flight");
                    self.join_part(name, oldest)?;
                }
                let last = part.len() < UPLOAD_PART_SIZE;
                in_flight.push_back(self.runtime.spawn(upload.put_part(PutPayload::from(part))));
                if last {
                    break;
                }
            }
            while let Some(part) = in_flight.pop_front() {
                self.join_part(name, part)?;
            }
            Ok(())
        })();
        for part in in_flight {
            part.abort();
        }
        result
    }

    fn join_part(
        &self,
        name: &str,
        part: JoinHandle<object_store::Result<()>>,
    ) -> Result<(), StoreError> {
        match self.runtime.block_on(part) {
            Ok(sent) => sent.map_err(|e| store_error(&self.location, name, e)),
            Err(join) => Err(StoreError::Remote {
                location: self.location.clone(),
                key: name.to_string(),
                status: None,
                message: format!("upload of a part stopped: {join}"),
                transient: false,
            }),
        }
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

fn location_name(scheme: &str, bucket: &str, prefix: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        format!("{scheme}://{bucket}")
    } else {
        format!("{scheme}://{bucket}/{prefix}")
    }
}

fn check_options(location: &str, opts: &StoreOptions) -> Result<(), StoreError> {
    if opts.max_requests == 0 {
        return Err(StoreError::BadLocation(format!(
            "{location}: at least one request must be allowed at a time (max_requests is 0)"
        )));
    }
    if opts.request_timeout.is_zero() {
        return Err(StoreError::BadLocation(format!(
            "{location}: the request timeout must be above zero"
        )));
    }
    Ok(())
}

/// Timeouts of one HTTP request.
fn client_config(opts: &StoreOptions) -> [(ClientConfigKey, String); 2] {
    let millis = |d: Duration| format!("{}ms", d.as_millis().max(1));
    [
        (ClientConfigKey::Timeout, millis(opts.request_timeout)),
        (
            ClientConfigKey::ConnectTimeout,
            millis(opts.request_timeout.min(MAX_CONNECT_TIMEOUT)),
        ),
    ]
}

/// Retries of transient failures stop once the request timeout has passed
/// since the first attempt, so a dead server fails a read within about that
/// long instead of stalling it.
fn retry_config(opts: &StoreOptions) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: MAX_RETRIES,
        retry_timeout: opts.request_timeout,
    }
}

/// A range that starts at or past the end of the object: a read of nothing.
fn is_past_end(err: &StoreError) -> bool {
    matches!(
        err,
        StoreError::Remote {
            status: Some(416),
            ..
        }
    )
}

/// `range` cut into `READ_PART_SIZE` pieces.
fn split_parts(range: Range<u64>) -> Vec<Range<u64>> {
    let mut parts = Vec::with_capacity(
        usize::try_from((range.end - range.start).div_ceil(READ_PART_SIZE)).unwrap_or(0),
    );
    let mut start = range.start;
    while start < range.end {
        let end = range.end.min(start + READ_PART_SIZE);
        parts.push(start..end);
        start = end;
    }
    parts
}

/// Up to `size` bytes from `file`: fewer only at its end.
fn read_part(file: &mut File, size: usize) -> io::Result<Vec<u8>> {
    let mut part = Vec::with_capacity(size);
    file.take(size as u64).read_to_end(&mut part)?;
    Ok(part)
}

fn local_io(path: &FsPath, source: io::Error) -> StoreError {
    StoreError::Io {
        key: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_range_in_order() {
        assert_eq!(split_parts(5..5), Vec::<Range<u64>>::new());
        let mib = 1 << 20;
        assert_eq!(
            split_parts(mib..mib + 9 * mib),
            vec![mib..5 * mib, 5 * mib..9 * mib, 9 * mib..10 * mib]
        );
    }

    #[test]
    fn location_names_the_bucket_and_prefix() {
        assert_eq!(location_name("s3", "b", ""), "s3://b");
        assert_eq!(location_name("gs", "b", "/a/p/"), "gs://b/a/p");
    }

    #[test]
    fn bad_options_are_refused() {
        let opts = StoreOptions {
            max_requests: 0,
            ..StoreOptions::default()
        };
        let err = RemoteStore::s3("b", "", &opts).unwrap_err();
        assert!(err.to_string().contains("max_requests is 0"), "{err}");
        let opts = StoreOptions::default();
        let err =
            RemoteStore::s3_with_builder(AmazonS3Builder::new(), "b", "a//b", &opts).unwrap_err();
        assert!(err.to_string().contains("bad key prefix"), "{err}");
    }

    #[test]
    fn keys_live_under_the_prefix() {
        let opts = StoreOptions {
            region: Some("r".into()),
            ..StoreOptions::default()
        };
        let store =
            RemoteStore::s3_with_builder(AmazonS3Builder::new(), "b", "t/p", &opts).unwrap();
        let build = Uuid::new_v4();
        let key = ObjectKey::header(build, crate::format::FileKind::Memfile);
        assert_eq!(
            store.path(&key).as_ref(),
            format!("t/p/{build}/memfile.header")
        );
        assert_eq!(store.location(), "s3://b/t/p");
    }
}
