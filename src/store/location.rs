//! Turning a `STORE` argument (`s3://bucket/prefix`, `gs://bucket/prefix`,
//! `file:///dir` or a plain path) into an open store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{LocalStore, RemoteStore, StoreError, WritableStore};

/// How to reach a store. Credentials are not here: they come from each
/// cloud's standard environment (see [`RemoteStore`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// S3-compatible server to talk to instead of AWS (`--endpoint-url`);
    /// overrides `AWS_ENDPOINT_URL`. S3 only.
    pub endpoint_url: Option<String>,
    /// S3 region (`--region`); overrides `AWS_REGION`. S3 only.
    pub region: Option<String>,
    /// Most requests in flight at once against a remote store.
    pub max_requests: usize,
    /// Limit for one HTTP request, and for its retries together.
    pub request_timeout: Duration,
    /// Create a local store's directory when missing (writers).
    pub create: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            endpoint_url: None,
            region: None,
            max_requests: 32,
            request_timeout: Duration::from_secs(30),
            create: false,
        }
    }
}

/// Where a `STORE` argument points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
    Gcs { bucket: String, prefix: String },
}

impl StoreLocation {
    /// Parse `s3://bucket[/prefix]`, `gs://bucket[/prefix]`, `file://path`
    /// or a plain path. The prefix loses its leading and trailing slashes.
    pub fn parse(location: &str) -> Result<Self, StoreError> {
        let Some((scheme, rest)) = location.split_once("://") else {
            if location.is_empty() {
                return Err(StoreError::BadLocation(
                    "empty store location: give a directory, s3://bucket[/prefix] or gs://bucket[/prefix]"
                        .to_string(),
                ));
            }
            return Ok(StoreLocation::Local(PathBuf::from(location)));
        };
        match scheme {
            "file" if !rest.is_empty() => Ok(StoreLocation::Local(PathBuf::from(rest))),
            "s3" | "gs" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(StoreError::BadLocation(format!(
                        "{location}: no bucket name (write {scheme}://BUCKET[/PREFIX])"
                    )));
                }
                let bucket = bucket.to_string();
                let prefix = prefix.trim_matches('/').to_string();
                Ok(if scheme == "s3" {
                    StoreLocation::S3 { bucket, prefix }
                } else {
                    StoreLocation::Gcs { bucket, prefix }
                })
            }
            _ => Err(StoreError::BadLocation(format!(
                "{location}: unsupported store location (use a directory, file://DIR, s3://BUCKET[/PREFIX] or gs://BUCKET[/PREFIX])"
            ))),
        }
    }
}

/// Open the store `location` names. Remote stores connect lazily: the first
/// request reports a missing bucket or bad credentials. Every backend takes
/// writes, so the store comes writable; a reader keeps it as an
/// `Arc<dyn Store>`.
pub fn open(location: &str, opts: &StoreConfig) -> Result<Arc<dyn WritableStore>, StoreError> {
    let parsed = StoreLocation::parse(location)?;
    if !matches!(parsed, StoreLocation::S3 { .. }) {
        let flag = if opts.endpoint_url.is_some() {
            Some("--endpoint-url")
        } else if opts.region.is_some() {
            Some("--region")
        } else {
            None
        };
        if let Some(flag) = flag {
            return Err(StoreError::BadLocation(format!(
                "{location}: {flag} applies to s3:// stores only"
            )));
        }
    }
    Ok(match parsed {
        StoreLocation::Local(dir) if opts.create => Arc::new(LocalStore::create(dir)?),
        StoreLocation::Local(dir) => Arc::new(LocalStore::open(dir)?),
        StoreLocation::S3 { bucket, prefix } => Arc::new(RemoteStore::s3(&bucket, &prefix, opts)?),
        StoreLocation::Gcs { bucket, prefix } => {
            Arc::new(RemoteStore::gcs(&bucket, &prefix, opts)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(bucket: &str, prefix: &str) -> StoreLocation {
        StoreLocation::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn parses_every_location_form() {
        let parse = |s| StoreLocation::parse(s).unwrap();
        assert_eq!(parse("s3://b"), s3("b", ""));
        assert_eq!(parse("s3://b/"), s3("b", ""));
        assert_eq!(parse("s3://b/a/p/"), s3("b", "a/p"));
        assert_eq!(
            parse("gs://g/t"),
            StoreLocation::Gcs {
                bucket: "g".into(),
                prefix: "t".into()
            }
        );
        assert_eq!(
            parse("/srv/templates"),
            StoreLocation::Local("/srv/templates".into())
        );
        assert_eq!(parse("rel/dir"), StoreLocation::Local("rel/dir".into()));
        assert_eq!(
            parse("file:///srv/t"),
            StoreLocation::Local("/srv/t".into())
        );
    }

    #[test]
    fn rejects_bad_locations() {
        for bad in [
            "",
            "s3://",
            "s3:///prefix",
            "http://x/y",
            "file://",
            "az://c/p",
        ] {
            let err = StoreLocation::parse(bad).unwrap_err();
            assert!(matches!(err, StoreError::BadLocation(_)), "{bad}: {err}");
        }
        let msg = StoreLocation::parse("http://x/y").unwrap_err().to_string();
        assert!(msg.contains("s3://BUCKET"), "{msg}");
    }

    #[test]
    fn opens_local_directories() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("new");
        let missing = missing.to_str().unwrap();
        let opts = StoreConfig::default();
        assert!(matches!(
            open(missing, &opts),
            Err(StoreError::BadLocation(_))
        ));
        let create = StoreConfig {
            create: true,
            ..StoreConfig::default()
        };
        let store = open(&format!("file://{missing}"), &create).unwrap();
        assert_eq!(store.location(), missing);
        assert!(store.list_builds().unwrap().is_empty());
        open(missing, &opts).unwrap();
    }

    #[test]
    fn s3_only_flags_are_refused_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreConfig {
            endpoint_url: Some("http://127.0.0.1:1".into()),
            ..StoreConfig::default()
        };
        let err = open(dir.path().to_str().unwrap(), &opts).unwrap_err();
        assert!(err.to_string().contains("--endpoint-url"), "{err}");
        let opts = StoreConfig {
            region: Some("eu-west-1".into()),
            ..StoreConfig::default()
        };
        let err = open("gs://bucket/p", &opts).unwrap_err();
        assert!(err.to_string().contains("--region"), "{err}");
    }
}
