//! Making a `RemoteStore`: the S3 and GCS clients with their timeouts and
//! retry policy, the key prefix, and the store's own small tokio runtime.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::limit::LimitStore;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};

use super::RemoteStore;
use crate::store::StoreError;
use crate::store::location::StoreConfig;

/// Threads of the store's runtime: the work is waiting on sockets.
const RUNTIME_THREADS: usize = 2;
/// Longest wait for a TCP connection, within the request timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retry count cap; the request timeout usually ends retries first.
const MAX_RETRIES: usize = 10;

impl RemoteStore {
    /// `s3://bucket/prefix`, with credentials, region and endpoint from the
    /// standard AWS environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`, instance and
    /// container credentials); `opts.endpoint_url` and `opts.region` win.
    pub fn s3(bucket: &str, prefix: &str, opts: &StoreConfig) -> Result<Self, StoreError> {
        Self::s3_with_builder(AmazonS3Builder::from_env(), bucket, prefix, opts)
    }

    /// `s3://bucket/prefix` configured from `builder` (for explicit
    /// credentials) plus `opts`.
    pub fn s3_with_builder(
        builder: AmazonS3Builder,
        bucket: &str,
        prefix: &str,
        opts: &StoreConfig,
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
    pub fn gcs(bucket: &str, prefix: &str, opts: &StoreConfig) -> Result<Self, StoreError> {
        Self::gcs_with_builder(GoogleCloudStorageBuilder::from_env(), bucket, prefix, opts)
    }

    /// `gs://bucket/prefix` configured from `builder` plus `opts`.
    pub fn gcs_with_builder(
        builder: GoogleCloudStorageBuilder,
        bucket: &str,
        prefix: &str,
        opts: &StoreConfig,
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
        opts: &StoreConfig,
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
}

pub(super) fn location_name(scheme: &str, bucket: &str, prefix: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        format!("{scheme}://{bucket}")
    } else {
        format!("{scheme}://{bucket}/{prefix}")
    }
}

fn check_options(location: &str, opts: &StoreConfig) -> Result<(), StoreError> {
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
fn client_config(opts: &StoreConfig) -> [(ClientConfigKey, String); 2] {
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
fn retry_config(opts: &StoreConfig) -> RetryConfig {
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
