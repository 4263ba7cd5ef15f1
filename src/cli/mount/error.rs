//! Why `tdfs mount` failed: setting the mount up (mountpoint, store, files,
//! peers, the daemon process) and taking it down. These reach the user, on
//! the terminal or through the daemon's startup pipe, never the kernel: a
//! kernel request's failure is an `fs::FsError`.

use std::io;
use std::path::PathBuf;

use crate::fs::MountpointError;
use crate::peer::PeerError;
use crate::template::TemplateError;

/// Why `tdfs mount` could not start, or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// FUSE itself, the mountpoint, mounting, serving or unmounting.
    #[error(transparent)]
    Mountpoint(#[from] MountpointError),
    #[error("opening the store: {0}")]
    Open(#[source] Box<TemplateError>),
    /// A file or directory a flag names (`what` says which and what to do).
    #[error("{what} {}: {source}", .path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The peer flags, the peer client or the peer server (`--peer*`).
    #[error(transparent)]
    Peer(Box<PeerError>),
    /// Starting or running the daemon process (fork, pipe, signals, the
    /// metrics endpoint, readiness notices).
    #[error("{0}")]
    Process(String),
}

// Sources are boxed: the error stays small, so every `Result` carrying one does.
impl MountError {
    pub fn open(source: impl Into<TemplateError>) -> Self {
        MountError::Open(Box::new(source.into()))
    }
}

impl From<PeerError> for MountError {
    fn from(e: PeerError) -> Self {
        MountError::Peer(Box::new(e))
    }
}
