//! `ChunkServer`: E2B's ChunkService answered from a mount's `Builds`.
//! `ReadAtBuildSeekable` streams a range of a build's own diff (the diff
//! view, uncompressed, at storage offsets) through its shared Chunker, so a
//! range not cached yet is fetched once for the peer and the mount's own
//! readers alike.
//!
//! A range is sent in messages of at most `MAX_MESSAGE_DATA` bytes, looping
//! until the whole requested length is sent: a server that answered a range
//! with one block broke every multi-block read of E2B's client (the bug this
//! project started from). Each message's bytes are copied out of the cache
//! on a blocking thread before the send is awaited, so no cache unit stays
//! pinned while a slow client reads; the channel to the sender holds one
//! message, so a stream holds at most about three messages' worth of memory.
//! At most `MAX_STREAMS` streams run at once; the next one gets
//! `not_available`, and its caller reads its store.
//!
//! A range not cached is fetched from this host's store only, never from
//! a peer: the caller asked because its list says this host owns the unit,
//! and asking on could loop back to it (two hosts whose lists disagree
//! would wait on each other until the peer timeout). When this host is
//! itself asking a peer for the unit right now, the answer is
//! `not_available`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures::Stream;
use tokio::sync::{Semaphore, mpsc};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::proto::chunk_service_server::ChunkService;
use super::proto::{
    GetBuildBlobRequest, GetBuildBlobResponse, GetBuildFileExistsRequest,
    GetBuildFileExistsResponse, GetBuildFileSizeRequest, GetBuildFileSizeResponse,
    PeerAvailability, ReadAtBuildSeekableRequest, ReadAtBuildSeekableResponse,
};
use crate::chunker::ChunkerError;
use crate::format::{Blob, FileKind, parse_build_id};
use crate::metrics::Stats;
use crate::template::{Builds, TemplateError};

/// Most data bytes in one message: a Go client's default receive limit is
/// 4 MiB per message, and half of it leaves room for framing.
pub const MAX_MESSAGE_DATA: usize = 2 << 20;
/// Streams served at once (each holds up to about three messages).
const MAX_STREAMS: usize = 64;
/// A client that takes no message for this long loses its stream, so a
/// stalled client cannot hold a stream slot for ever.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

type Sent<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The service. See the module docs.
pub struct ChunkServer {
    builds: Arc<Builds>,
    stats: Arc<Stats>,
    streams: Arc<Semaphore>,
}

impl ChunkServer {
    pub fn new(builds: Arc<Builds>) -> Self {
        ChunkServer {
            stats: builds.stats().clone(),
            builds,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        }
    }
}

/// Served by this peer: the default (neither flag set).
fn served() -> Option<PeerAvailability> {
    Some(PeerAvailability::default())
}

fn not_available() -> Option<PeerAvailability> {
    Some(PeerAvailability {
        not_available: true,
        use_storage: false,
    })
}

fn build_id(text: &str) -> Result<Uuid, Status> {
    parse_build_id(text).ok_or_else(|| {
        Status::invalid_argument(format!(
            "build_id {text:?} is not a build id (a lower-case UUID)"
        ))
    })
}

fn diff_name(name: &str) -> Result<FileKind, Status> {
    FileKind::ALL
        .into_iter()
        .find(|f| f.name() == name)
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "name {name:?}: a build's diffs are memfile and rootfs.ext4"
            ))
        })
}

/// A template error as the caller sees it: `None` when the peer simply
/// does not have it (answer `not_available`), a gRPC error otherwise.
fn unavailable(build: Uuid, what: &str, e: TemplateError) -> Option<Status> {
    match e {
        TemplateError::NotFound { .. }
        | TemplateError::NoDiff { .. }
        | TemplateError::NoBlob { .. } => None,
        e => Some(Status::unavailable(format!(
            "{build}/{what}: {e} (read it from the store)"
        ))),
    }
}

/// Run blocking template work (header loads, store probes, cache reads) off
/// the runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(format!("peer request failed: {e}")))
}

/// One message of a stream: a range's next piece, availability on the first.
trait Message: Send + 'static {
    fn new(data: Vec<u8>, availability: Option<PeerAvailability>) -> Self;
}

impl Message for ReadAtBuildSeekableResponse {
    fn new(data: Vec<u8>, availability: Option<PeerAvailability>) -> Self {
        ReadAtBuildSeekableResponse {
            data: data.into(),
            availability,
        }
    }
}

impl Message for GetBuildBlobResponse {
    fn new(data: Vec<u8>, availability: Option<PeerAvailability>) -> Self {
        GetBuildBlobResponse {
            data: data.into(),
            availability,
        }
    }
}

/// A stream of one message saying the peer does not have it.
fn one_not_available<M: Message>() -> Sent<M> {
    Box::pin(futures::stream::iter([Ok(M::new(
        Vec::new(),
        not_available(),
    ))]))
}

/// Why a piece of a stream could not be read.
enum Refused {
    /// This host is asking a peer for these bytes itself: `not_available`
    /// when nothing was sent yet.
    NotAvailable(String),
    /// Any other failure: the stream ends with `UNAVAILABLE`.
    Failed(String),
}

impl Refused {
    /// A failed read of the diff view at `what`.
    fn diff(what: String, e: TemplateError) -> Refused {
        match e {
            TemplateError::Chunker(e @ ChunkerError::AskingPeer { .. }) => {
                Refused::NotAvailable(format!("{what}: {e}"))
            }
            e => Refused::Failed(format!("{what}: {e}")),
        }
    }
}

impl ChunkServer {
    /// Stream `[start, end)` read by `read(buf, offset)` (fills all of
    /// `buf` or fails) in messages of at most `MAX_MESSAGE_DATA` bytes;
    /// one empty message for an empty range. `None` when every stream slot
    /// is taken.
    fn stream_range<M: Message>(
        &self,
        start: u64,
        end: u64,
        read: impl Fn(&mut [u8], u64) -> Result<(), Refused> + Send + Sync + 'static,
    ) -> Option<Sent<M>> {
        let permit = self.streams.clone().try_acquire_owned().ok()?;
        self.stats.peer_served_requests.fetch_add(1, Relaxed);
        let stats = self.stats.clone();
        let read = Arc::new(read);
        let (tx, rx) = mpsc::channel::<Result<M, Status>>(1);
        tokio::spawn(async move {
            let _permit = permit;
            let mut pos = start;
            let mut availability = served();
            loop {
                let n = (end - pos).min(MAX_MESSAGE_DATA as u64) as usize;
                let read = read.clone();
                let piece = blocking(move || {
                    let mut buf = vec![0; n];
                    read(&mut buf, pos).map(|()| buf)
                })
                .await;
                let (message, failed) = match piece {
                    Ok(Ok(data)) => (Ok(M::new(data, availability.take())), false),
                    Ok(Err(Refused::NotAvailable(_))) if availability.is_some() => {
                        (Ok(M::new(Vec::new(), not_available())), true)
                    }
                    Ok(Err(Refused::NotAvailable(e) | Refused::Failed(e))) => (
                        Err(Status::unavailable(format!("{e} (read it from the store)"))),
                        true,
                    ),
                    Err(status) => (Err(status), true),
                };
                let sent = tokio::time::timeout(SEND_TIMEOUT, tx.send(message)).await;
                if failed || !matches!(sent, Ok(Ok(()))) {
                    return;
                }
                stats.peer_served_bytes.fetch_add(n as u64, Relaxed);
                pos += n as u64;
                if pos >= end {
                    return;
                }
            }
        });
        Some(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        })))
    }
}

#[tonic::async_trait]
impl ChunkService for ChunkServer {
    async fn get_build_file_size(
        &self,
        request: Request<GetBuildFileSizeRequest>,
    ) -> Result<Response<GetBuildFileSizeResponse>, Status> {
        let request = request.into_inner();
        let build = build_id(&request.build_id)?;
        let file = diff_name(&request.name)?;
        let builds = self.builds.clone();
        let response = match blocking(move || builds.open_diff(build, file)).await? {
            Ok(diff) => GetBuildFileSizeResponse {
                total_size: i64::try_from(diff.size()).unwrap_or(i64::MAX),
                availability: served(),
            },
            Err(e) => match unavailable(build, file.name(), e) {
                Some(status) => return Err(status),
                None => GetBuildFileSizeResponse {
                    total_size: 0,
                    availability: not_available(),
                },
            },
        };
        Ok(Response::new(response))
    }

    async fn get_build_file_exists(
        &self,
        request: Request<GetBuildFileExistsRequest>,
    ) -> Result<Response<GetBuildFileExistsResponse>, Status> {
        let request = request.into_inner();
        let build = build_id(&request.build_id)?;
        let blob = Blob::ALL
            .into_iter()
            .find(|b| b.name() == request.name)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "name {:?}: a build's blobs are snapfile and metadata.json",
                    request.name
                ))
            })?;
        let builds = self.builds.clone();
        let size = blocking(move || builds.blob_size(build, blob)).await?;
        let availability = match size {
            Ok(Some(_)) => served(),
            Ok(None) => not_available(),
            Err(e) => match unavailable(build, blob.name(), e) {
                Some(status) => return Err(status),
                None => not_available(),
            },
        };
        Ok(Response::new(GetBuildFileExistsResponse { availability }))
    }

    type ReadAtBuildSeekableStream = Sent<ReadAtBuildSeekableResponse>;

    async fn read_at_build_seekable(
        &self,
        request: Request<ReadAtBuildSeekableRequest>,
    ) -> Result<Response<Self::ReadAtBuildSeekableStream>, Status> {
        let request = request.into_inner();
        let build = build_id(&request.build_id)?;
        let file = diff_name(&request.name)?;
        let (Ok(offset), Ok(length)) =
            (u64::try_from(request.offset), u64::try_from(request.length))
        else {
            return Err(Status::invalid_argument(format!(
                "offset {} and length {} must not be negative",
                request.offset, request.length
            )));
        };
        let builds = self.builds.clone();
        let diff = match blocking(move || builds.open_diff(build, file)).await? {
            Ok(diff) => diff,
            Err(e) => match unavailable(build, file.name(), e) {
                Some(status) => return Err(status),
                None => return Ok(Response::new(one_not_available())),
            },
        };
        let size = diff.size();
        let end = offset
            .checked_add(length)
            .filter(|&end| end <= size)
            .ok_or_else(|| {
                Status::out_of_range(format!(
                    "{build}/{file}: range at {offset} of {length} bytes reaches past the end of the diff ({size} bytes)"
                ))
            })?;
        let read = move |buf: &mut [u8], off: u64| {
            diff.read_for_peer(buf, off)
                .map(drop)
                .map_err(|e| Refused::diff(format!("{build}/{file} at {off}"), e))
        };
        Ok(Response::new(
            self.stream_range(offset, end, read)
                .unwrap_or_else(one_not_available),
        ))
    }

    type GetBuildBlobStream = Sent<GetBuildBlobResponse>;

    async fn get_build_blob(
        &self,
        request: Request<GetBuildBlobRequest>,
    ) -> Result<Response<Self::GetBuildBlobStream>, Status> {
        let request = request.into_inner();
        let build = build_id(&request.build_id)?;
        let name = request.name;
        let builds = self.builds.clone();
        if let Some(blob) = Blob::ALL.into_iter().find(|b| b.name() == name) {
            let size = match blocking(move || builds.blob_size(build, blob)).await? {
                Ok(Some(size)) => size,
                Ok(None) => return Ok(Response::new(one_not_available())),
                Err(e) => match unavailable(build, blob.name(), e) {
                    Some(status) => return Err(status),
                    None => return Ok(Response::new(one_not_available())),
                },
            };
            let builds = self.builds.clone();
            let read = move |buf: &mut [u8], off: u64| {
                builds
                    .read_blob(build, blob, off, buf)
                    .map_err(|e| Refused::Failed(format!("{build}/{blob}: {e}")))
            };
            return Ok(Response::new(
                self.stream_range(0, size, read)
                    .unwrap_or_else(one_not_available),
            ));
        }
        let file = FileKind::ALL
            .into_iter()
            .find(|f| format!("{}.header", f.name()) == name)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "name {name:?}: a build's blobs are snapfile, metadata.json, memfile.header and rootfs.ext4.header"
                ))
            })?;
        let header = match blocking(move || builds.read_header_object(build, file)).await? {
            Ok(Some(bytes)) => Arc::new(bytes),
            Ok(None) => return Ok(Response::new(one_not_available())),
            Err(e) => {
                return Err(unavailable(build, &name, e)
                    .unwrap_or_else(|| Status::not_found(format!("{build}/{name}"))));
            }
        };
        let size = header.len() as u64;
        let read = move |buf: &mut [u8], off: u64| {
            let at = off as usize;
            buf.copy_from_slice(&header[at..at + buf.len()]);
            Ok(())
        };
        Ok(Response::new(
            self.stream_range(0, size, read)
                .unwrap_or_else(one_not_available),
        ))
    }
}
