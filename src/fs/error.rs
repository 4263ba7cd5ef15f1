//! The error of a kernel request and the one place such errors become
//! errnos and log lines (rate-limited per object by `log_limit`). Failures
//! of setting a mount up never reach the kernel: they are `mount`'s
//! `MountpointError` and `tdfs mount`'s own error.

use std::sync::LazyLock;
use std::time::Instant;

use fuser::Errno;
use uuid::Uuid;

use super::log_limit::{self, LogLimiter, Verdict};
use crate::format::{Blob, FileKind};
use crate::template::TemplateError;

/// Why a filesystem request failed; `errno` is what the kernel gets.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A name that is not in the directory (not logged: `ls` of a missing
    /// name is normal).
    #[error("no entry named {0:?}")]
    NoEntry(String),
    #[error("no such inode {0}")]
    NoInode(u64),
    #[error("no open file handle {0}")]
    NoHandle(u64),
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("read-only file system")]
    ReadOnly,
    #[error("no extended attribute {0:?}")]
    NoXattr(String),
    /// A template file of a build (its header, or a block of its data).
    #[error("{build}/{file}{}: {source}", at_offset(*.offset))]
    Template {
        build: Uuid,
        file: FileKind,
        offset: Option<u64>,
        #[source]
        source: Box<TemplateError>,
    },
    /// A build's own diff (`<build>/diff/<file>`).
    #[error("{build}/diff/{file}{}: {source}", at_offset(*.offset))]
    Diff {
        build: Uuid,
        file: FileKind,
        offset: Option<u64>,
        #[source]
        source: Box<TemplateError>,
    },
    /// A blob of a build (`snapfile`, `metadata.json`).
    #[error("{build}/{blob}{}: {source}", at_offset(*.offset))]
    Blob {
        build: Uuid,
        blob: Blob,
        offset: Option<u64>,
        #[source]
        source: Box<TemplateError>,
    },
    #[error("listing the builds of the store: {0}")]
    List(#[source] Box<TemplateError>),
    #[error("probing the objects of build {build}: {source}")]
    Probe {
        build: Uuid,
        #[source]
        source: Box<TemplateError>,
    },
}

// Sources are boxed: errors stay small, so every `Result` carrying one does.
impl FsError {
    pub fn template(
        build: Uuid,
        file: FileKind,
        offset: Option<u64>,
        source: TemplateError,
    ) -> Self {
        FsError::Template {
            build,
            file,
            offset,
            source: Box::new(source),
        }
    }

    pub fn diff(build: Uuid, file: FileKind, offset: Option<u64>, source: TemplateError) -> Self {
        FsError::Diff {
            build,
            file,
            offset,
            source: Box::new(source),
        }
    }

    pub fn blob(build: Uuid, blob: Blob, offset: Option<u64>, source: TemplateError) -> Self {
        FsError::Blob {
            build,
            blob,
            offset,
            source: Box::new(source),
        }
    }

    pub fn probe(build: Uuid, source: TemplateError) -> Self {
        FsError::Probe {
            build,
            source: Box::new(source),
        }
    }
}

fn at_offset(offset: Option<u64>) -> String {
    offset
        .map(|o| format!(" at offset {o}"))
        .unwrap_or_default()
}

/// The errno the kernel gets for an error.
pub trait ToErrno {
    fn errno(&self) -> Errno;
}

impl ToErrno for TemplateError {
    fn errno(&self) -> Errno {
        match self {
            TemplateError::NotFound { .. }
            | TemplateError::NoBlob { .. }
            | TemplateError::NoDiff { .. } => Errno::ENOENT,
            // A corrupt header, an unreachable store, a failed or timed out
            // fetch: the data exists but cannot be served right now.
            TemplateError::CorruptHeader { .. }
            | TemplateError::Inconsistent { .. }
            | TemplateError::Cache { .. }
            | TemplateError::Store(_)
            | TemplateError::Chunker(_) => Errno::EIO,
        }
    }
}

impl ToErrno for FsError {
    fn errno(&self) -> Errno {
        match self {
            FsError::NoEntry(_) | FsError::NoInode(_) => Errno::ENOENT,
            FsError::NoHandle(_) => Errno::EBADF,
            FsError::NotADirectory => Errno::ENOTDIR,
            FsError::IsADirectory => Errno::EISDIR,
            FsError::ReadOnly => Errno::EROFS,
            FsError::NoXattr(_) => Errno::NO_XATTR,
            FsError::Template { source, .. }
            | FsError::Diff { source, .. }
            | FsError::Blob { source, .. }
            | FsError::List(source)
            | FsError::Probe { source, .. } => source.errno(),
        }
    }
}

impl FsError {
    /// The object a request failed on, as the log's rate limit counts
    /// failures: a build's file or blob, a build's probe, the listing.
    fn object(&self) -> Option<String> {
        match self {
            FsError::Template { build, file, .. } => Some(format!("{build}/{file}")),
            FsError::Blob { build, blob, .. } => Some(format!("{build}/{blob}")),
            FsError::Probe { build, .. } => Some(build.to_string()),
            FsError::List(_) => Some("the build listing".into()),
            _ => None,
        }
    }
}

/// Failures of the mount's objects, so the log stays bounded however often
/// a broken object is read (see `log_limit`).
static LOG_LIMIT: LazyLock<LogLimiter> =
    LazyLock::new(|| LogLimiter::new(log_limit::INTERVAL, log_limit::MAX_OBJECTS));

/// The errno for a failed request `op`, logging the error: a failure that is
/// the filesystem's fault is logged at error level naming build, file,
/// offset and cause, the first time for its object and then as one summary
/// line per object per minute (`log_limit`); the answers a caller expects
/// (ENOENT, EROFS, ...) go to debug level.
pub fn report(op: std::fmt::Arguments<'_>, err: &FsError) -> Errno {
    let errno = err.errno();
    if errno != Errno::EIO {
        log::debug!("{op}: {err}");
        return errno;
    }
    let Some(object) = err.object() else {
        log::error!("{op}: {}", chain(err));
        return errno;
    };
    match LOG_LIMIT.failure(&object, Instant::now()) {
        Verdict::Full => log::error!("{op}: {}", chain(err)),
        Verdict::Counted => log::debug!("{op}: {}", chain(err)),
        Verdict::Summary { count } => log::error!(
            "{object}: failed {count} more times in the last {} s: {}",
            LOG_LIMIT.interval().as_secs(),
            chain(err)
        ),
    }
    errno
}

/// An error and its sources, `: `-separated.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        // thiserror's transparent and `{source}`-formatted variants already
        // include their source's text.
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::FormatError;
    use crate::template::testing::{short_read, store_io_error};

    #[test]
    fn template_errors_map_to_errnos() {
        let build = Uuid::from_u128(7);
        let not_found = FsError::template(
            build,
            FileKind::Memfile,
            None,
            TemplateError::NotFound {
                build,
                file: FileKind::Memfile,
                location: "/srv/templates".into(),
            },
        );
        assert_eq!(not_found.errno(), Errno::ENOENT);
        let corrupt = FsError::template(
            build,
            FileKind::Rootfs,
            Some(4096),
            TemplateError::CorruptHeader {
                key: format!("{build}/rootfs.ext4.header"),
                source: FormatError::UnsupportedVersion(9),
            },
        );
        assert_eq!(corrupt.errno(), Errno::EIO);
        let text = chain(&corrupt);
        assert!(text.contains(&build.to_string()), "{text}");
        assert!(text.contains("rootfs.ext4"), "{text}");
        assert!(text.contains("at offset 4096"), "{text}");
        let store = FsError::template(build, FileKind::Memfile, Some(0), short_read("k"));
        assert_eq!(store.errno(), Errno::EIO);
    }

    #[test]
    fn passthrough_and_request_errors_map_to_errnos() {
        let build = Uuid::from_u128(7);
        let missing = FsError::blob(
            build,
            Blob::Snapfile,
            None,
            TemplateError::NoBlob {
                build,
                blob: Blob::Snapfile,
                location: "/srv/templates".into(),
            },
        );
        assert_eq!(missing.errno(), Errno::ENOENT);
        let io = FsError::blob(
            build,
            Blob::Snapfile,
            Some(3),
            store_io_error(&format!("{build}/snapfile"), "disk on fire"),
        );
        assert_eq!(io.errno(), Errno::EIO);
        assert!(chain(&io).contains("disk on fire"));
        assert_eq!(FsError::ReadOnly.errno(), Errno::EROFS);
        assert_eq!(FsError::NoXattr("user.x".into()).errno(), Errno::NO_XATTR);
        assert_eq!(FsError::NoEntry("x".into()).errno(), Errno::ENOENT);
        assert_eq!(FsError::IsADirectory.errno(), Errno::EISDIR);
        assert!(std::mem::size_of::<FsError>() <= 64, "errors stay small");
    }
}
