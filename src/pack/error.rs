//! `PackError`: why a build could not be packed.

use std::path::PathBuf;

use uuid::Uuid;

use crate::format::{Compression, FileKind, FormatError};
use crate::store::StoreError;
use crate::template::TemplateError;

/// Why a build could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    BadOption(String),
    #[error(
        "build {0} already exists in the store (builds are immutable; pick another --build-id)"
    )]
    BuildExists(Uuid),
    #[error("reading {file} of base build {build}: {source}")]
    Base {
        build: Uuid,
        file: FileKind,
        #[source]
        source: TemplateError,
    },
    #[error("opening base build {build}: {source}")]
    BaseOpen {
        build: Uuid,
        #[source]
        source: TemplateError,
    },
    #[error(
        "{file} of ancestor build {build} has no diff object {key}; the base chain is incomplete"
    )]
    MissingAncestor {
        build: Uuid,
        file: FileKind,
        key: String,
    },
    #[error("reading the {file} header of ancestor build {build}: {source}")]
    Ancestor {
        build: Uuid,
        file: FileKind,
        #[source]
        source: TemplateError,
    },
    #[error("{compression:?} compression of frame {frame} failed: {message}")]
    Compress {
        compression: Compression,
        frame: usize,
        message: String,
    },
    #[error("encoding the {file} header: {source}")]
    Encode {
        file: FileKind,
        #[source]
        source: FormatError,
    },
    /// The header pack was about to upload breaks one of E2B's writer
    /// rules (`pack/e2b_rules.rs`): a bug in pack, refused, never written.
    #[error(
        "refusing to upload the {file} header: it breaks an E2B rule ({rule}); \
         this is a bug in tdfs pack, please report it (try --layout template meanwhile)"
    )]
    BrokenLayout { file: FileKind, rule: String },
    #[error("{0}")]
    Tool(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}
