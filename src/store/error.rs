//! `StoreError`: why a store operation failed, naming the object, and
//! whether a retry may help.

use std::io;

use thiserror::Error;

use crate::format::ObjectKey;

/// A store operation failed. Each variant names the object.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("object {key} not found")]
    NotFound { key: String },
    #[error("reading {key}: {source}")]
    Io {
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("object {key} ended after {got} bytes, expected {expected}")]
    ShortRead {
        key: String,
        expected: u64,
        got: u64,
    },
    #[error("object {key} is {size} bytes, over the limit of {limit}")]
    TooLarge { key: String, size: u64, limit: u64 },
    #[error("{location}: {key}: {message}")]
    Remote {
        location: String,
        key: String,
        status: Option<u16>,
        message: String,
        /// Worth retrying (5xx, throttling, connection reset, timeout).
        transient: bool,
    },
    #[error("bad store location {0}")]
    BadLocation(String),
}

impl StoreError {
    pub fn io(key: &ObjectKey, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::NotFound {
            StoreError::NotFound {
                key: key.to_string(),
            }
        } else {
            StoreError::Io {
                key: key.to_string(),
                source,
            }
        }
    }

    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Remote { transient, .. } => *transient,
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }
}
