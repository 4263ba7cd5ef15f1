//! Units from peers: before a fetch job reads its store, it asks the
//! mount's `PeerSource` (when it has one) for the unit's uncompressed bytes
//! at storage offsets: a chunk's missing tail, or a frame's uncompressed
//! range, so a frame served by a peer needs no decoding. The source checks
//! the whole answer before it returns; the bytes then take the store path's
//! way into the cache (one write, published by the caller), so nothing
//! half-arrived is ever marked present. Any failure of the peer is the
//! source's to log: the fetch reads its store instead, in the same session,
//! and its waiters never see the peer's failure. The Chunker only knows
//! this trait; the gRPC client behind it lives in `crate::peer`.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::Ordering;

use uuid::Uuid;

use super::session::Session;
use super::{ChunkerError, Inner, fetch};
use crate::format::{FileKind, ObjectName};

/// Where a unit's bytes may come from besides the store: the peer owning
/// the unit. Implemented by `crate::peer::PeerClient`.
pub trait PeerSource: Send + Sync + fmt::Debug {
    /// Fill all of `buf` with the bytes of `build`'s own diff of `file` at
    /// storage offset `offset` (uncompressed), the range of its fetch unit
    /// `unit` (chunk or frame index) still missing here, from the peer
    /// that owns the unit. Blocks at most the source's own time limits.
    ///
    /// # Errors
    /// Why the caller should read its store instead: see `PeerFallback`.
    /// `buf` may hold anything then.
    fn read_unit(
        &self,
        build: Uuid,
        file: FileKind,
        unit: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), PeerFallback>;

    /// The size in bytes of `build`'s own diff of `file`, uncompressed
    /// (E2B's `GetBuildFileSize`), from the peer owning the diff's first
    /// unit: for a host whose store lacks the data object. Blocks at most
    /// the source's own time limits.
    ///
    /// # Errors
    /// Why the caller should look in its store instead: see
    /// `PeerFallback`. A source that knows no sizes answers `Owned`.
    fn diff_size(&self, build: Uuid, file: FileKind) -> Result<u64, PeerFallback> {
        let _ = (build, file);
        Err(PeerFallback::Owned)
    }

    /// All of the object `name` of `build` (E2B's `GetBuildBlob`: a header
    /// such as `memfile.header`, or `snapfile`, `metadata.json`) from the
    /// build's origin peer, for a build the store does not have yet (see
    /// `crate::peer::Origins`). Refused past `max_len` bytes. Blocks at
    /// most the source's own time limits.
    ///
    /// # Errors
    /// Why the caller should read its store instead: `Owned` when the build
    /// has no origin (or was switched to the store), `UseStorage` when the
    /// origin says the build is uploaded (the build is switched then, see
    /// `origin_switched`), `Long` past `max_len`; see `PeerFallback`.
    fn origin_object(
        &self,
        build: Uuid,
        name: &str,
        max_len: u64,
    ) -> Result<Vec<u8>, PeerFallback> {
        let _ = (build, name, max_len);
        Err(PeerFallback::Owned)
    }

    /// True once `build`'s origin peer said the build is uploaded
    /// (`use_storage`, in any answer): the store is read for it from then
    /// on, and what came from the origin is to be dropped.
    fn origin_switched(&self, build: Uuid) -> bool {
        let _ = build;
        false
    }
}

/// Why a unit was read from the store rather than from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerFallback {
    /// The unit is this host's own (or there are no peers): no request.
    Owned,
    /// Its owner failed recently and is skipped for a while: no request.
    Backoff,
    /// The owner answered `not_available`.
    NotAvailable,
    /// The owner answered `use_storage`.
    UseStorage,
    /// A gRPC or connection error.
    Error,
    /// No first byte within the first-byte timeout, or a stall between
    /// messages.
    Timeout,
    /// The stream ended before the range was whole.
    Short,
    /// The stream carried more bytes than asked.
    Long,
    /// A message out of protocol: availability past the first message, or
    /// more data in one message than the protocol allows.
    Malformed,
}

impl PeerFallback {
    /// Every reason a request was made and failed or skipped: the `reason`
    /// labels `.stats` shows from the start (given to `Stats::new`); `Owned`
    /// is not a fallback.
    pub const COUNTED: [PeerFallback; 8] = [
        PeerFallback::Backoff,
        PeerFallback::NotAvailable,
        PeerFallback::UseStorage,
        PeerFallback::Error,
        PeerFallback::Timeout,
        PeerFallback::Short,
        PeerFallback::Long,
        PeerFallback::Malformed,
    ];

    /// The reason's label in `.stats` and logs.
    pub fn name(self) -> &'static str {
        match self {
            PeerFallback::Owned => "owned",
            PeerFallback::Backoff => "backoff",
            PeerFallback::NotAvailable => "not_available",
            PeerFallback::UseStorage => "use_storage",
            PeerFallback::Error => "error",
            PeerFallback::Timeout => "timeout",
            PeerFallback::Short => "short",
            PeerFallback::Long => "long",
            PeerFallback::Malformed => "malformed",
        }
    }

    /// Whether a request was sent to a peer.
    pub fn asked(self) -> bool {
        !matches!(self, PeerFallback::Owned | PeerFallback::Backoff)
    }
}

impl Inner {
    /// Unit `u`'s diff bytes `range` from the peer owning it, written to
    /// the cache file but not published (the caller publishes them as the
    /// store path would). `Ok(false)`: read the store instead.
    ///
    /// # Errors
    /// `Cache` when the bytes cannot be written to the cache file (a full
    /// disk included, which the caller turns into its fallback).
    pub(super) fn write_from_peer(
        &self,
        u: usize,
        range: Range<u64>,
        session: &Session,
    ) -> Result<bool, ChunkerError> {
        let Some(peers) = &self.peers else {
            return Ok(false);
        };
        let ObjectName::Data(file, _) = self.key.name else {
            return Ok(false);
        };
        if !session.begin_peer() {
            return Ok(false);
        }
        let len = (range.end - range.start) as usize;
        fetch::with_fetch_buf(len, |buf| {
            let answer = peers.read_unit(self.key.build, file, u as u64, range.start, buf);
            session.end_peer();
            match answer {
                Ok(()) => {
                    self.stats.peer_requests.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .peer_bytes
                        .fetch_add(len as u64, Ordering::Relaxed);
                    // Not present yet, and this session is the unit's only
                    // writer.
                    self.write_cache(u, range.start, buf)?;
                    Ok(true)
                }
                Err(reason) => {
                    if reason.asked() {
                        self.stats.peer_requests.fetch_add(1, Ordering::Relaxed);
                    }
                    if reason != PeerFallback::Owned {
                        self.stats.record_peer_fallback(reason.name());
                    }
                    Ok(false)
                }
            }
        })
    }
}
