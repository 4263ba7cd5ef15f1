//! `FormatError`: why bytes are not a valid header, frame table or mapping
//! list, in the format's terms.

use thiserror::Error;

/// Why a header, frame table or mapping list was rejected. Every variant says
/// what is wrong in terms of the format, so the message can name the object.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FormatError {
    #[error("truncated: need {needed} bytes for {what}, {available} left")]
    Truncated {
        what: &'static str,
        needed: u64,
        available: u64,
    },
    #[error("unsupported header version {0} (tdfs reads versions 1 to 5)")]
    UnsupportedVersion(u64),
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    #[error("{what} is {value}, over the limit of {limit}")]
    OverLimit {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("compressed inner block is corrupt: {0}")]
    CorruptInner(String),
}

impl FormatError {
    pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        FormatError::Invalid {
            what,
            detail: detail.into(),
        }
    }
}
