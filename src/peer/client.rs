//! `PeerClient`: the Chunkers' `PeerSource` over gRPC. A unit whose owner
//! (see `ring`) is another peer is asked of it with `ReadAtBuildSeekable`
//! for exactly the unit's missing range, and the stream is checked whole
//! into the fetch job's buffer (one unit, at most 4 MiB or one frame)
//! before anything reaches the cache: exact total length, availability
//! only in the first message, no message over `MAX_MESSAGE_DATA` plus
//! framing slack. Any fault returns its reason, and the fetch reads its
//! store. A diff's size (for a host whose store lacks the data object) is
//! asked of the owner of its first unit with `GetBuildFileSize`, within
//! the first-byte timeout. A peer that faults (anything but `not_available`, which is the
//! normal answer of a busy peer or one without the build) is skipped for a
//! back-off period (`PeerBackoff`) that doubles from its start (a shorter one
//! when the first fault is a timeout) to a maximum and is reset by a
//! success; the fault that starts a back-off is logged, and so is its end,
//! the requests that were already in flight to it are only counted.
//!
//! With `--peer-registry`, a build registered by an E2B node (see
//! `origin`) has that node as the owner of all its units, before the
//! ring, and its headers and blobs are asked of it whole (`GetBuildBlob`,
//! one message or many, appended into one buffer; the decode limit raised
//! to the object's own cap, since E2B sends a header as one message and a
//! snapfile in 4 MiB ones). `use_storage` in any message of any answer
//! switches the build to the store for the rest of the mount.
//!
//! The Chunker's fetch workers are plain threads: each blocks on this
//! client's own small tokio runtime for the one request it makes.

use std::collections::HashMap;
use std::fmt;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use uuid::Uuid;

use super::PeerError;
use super::fleet::Fleet;
use super::listen::TlsFiles;
use super::origin::Origins;
use super::proto::chunk_service_client::ChunkServiceClient;
use super::proto::{GetBuildBlobRequest, GetBuildFileSizeRequest, ReadAtBuildSeekableRequest};
use super::registry::RegistryUrl;
use super::server::MAX_MESSAGE_DATA;
use crate::chunker::{PeerFallback, PeerSource};
use crate::format::FileKind;
use crate::metrics::Stats;
use crate::sync;

/// Threads of the client's runtime: they only drive sockets; the fetch
/// workers copy the bytes.
const RUNTIME_THREADS: usize = 2;
/// Room over `MAX_MESSAGE_DATA` a message may take: a peer that packs a
/// little more than 2 MiB is still within a Go client's 4 MiB limit.
const MESSAGE_SLACK: usize = 64 << 10;
/// The shortest bound on the wait between two messages of a stream (the
/// first-byte timeout, when longer, is used instead): a 2 MiB message takes
/// 20 ms at 100 MB/s, so a second of silence is a stalled peer.
const MIN_STALL: Duration = Duration::from_secs(1);
/// Bound on one whole request past its first byte: a peer trickling bytes
/// cannot hold a fetch worker for long (a 4 MiB unit at 1 MB/s fits).
const STREAM_DEADLINE: Duration = Duration::from_secs(5);
/// HTTP/2 receive window of one stream: a whole 4 MiB unit flows without
/// waiting on window updates (the default 64 KiB needs a round trip per
/// 64 KiB, which under CPU load made sequential reads through a peer
/// slower than the store).
const STREAM_WINDOW: u32 = 4 << 20;
/// HTTP/2 receive window of the connection, shared by all its streams:
/// room for every fetch worker's unit at once.
const CONNECTION_WINDOW: u32 = 64 << 20;
/// Largest HTTP/2 frame this client accepts: fewer frames per 2 MiB
/// message than the default 16 KiB, so less work per byte on both hosts.
const MAX_FRAME: u32 = 1 << 20;
/// Room over an object's own cap that tonic's decode limit of a
/// `GetBuildBlob` message leaves for the message's framing: E2B sends a
/// header or metadata.json as one message, so the limit of a header is
/// `MAX_HEADER_LEN` plus this (the bytes are then checked against the cap
/// itself), far over tonic's default of 4 MiB.
const BLOB_MESSAGE_SLACK: u64 = 64 << 10;
/// `not_available` answers of one peer are logged at most this often.
const NOT_AVAILABLE_LOG: Duration = Duration::from_secs(60);

/// How long a faulty peer is skipped: `start` after a first fault,
/// `timeout_start` when that fault is a timeout, doubled on each fault in a
/// row up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerBackoff {
    /// First skip after a fault other than a timeout.
    pub start: Duration,
    /// First skip after a timeout.
    pub timeout_start: Duration,
    /// Longest skip, however many faults in a row.
    pub max: Duration,
}

impl Default for PeerBackoff {
    fn default() -> PeerBackoff {
        PeerBackoff {
            // Long enough that a peer failing every request costs one
            // failed request in 5 s, short enough that a peer that had a
            // passing fault is asked again soon.
            start: Duration::from_secs(5),
            // A late first byte is as often this host's own load (or its
            // many requests queued on the one connection) as the peer's
            // fault, so it costs a short detour to the store, not 5 s of
            // it; timeouts in a row still double it.
            timeout_start: Duration::from_secs(1),
            // A peer down for good is still tried once a minute, so it is
            // used again soon after it comes back.
            max: Duration::from_secs(60),
        }
    }
}

/// What `--peer`, `--peers-file`, `--peer-registry` and their companions
/// asked for. The default asks no peers (a first-byte timeout of 300 ms
/// if some are added).
#[derive(Debug, Clone)]
pub struct PeerClientConfig {
    /// `--peer` URLs.
    pub peers: Vec<String>,
    /// `--peers-file`.
    pub peers_file: Option<std::path::PathBuf>,
    /// `--peer-registry`: members from Redis, and this host's entry there
    /// when `self_url` is set.
    pub registry: Option<RegistryUrl>,
    /// This host's own URL in the fleet list (`--peer-advertise`, or
    /// derived from `--peer-listen`).
    pub self_url: Option<String>,
    /// `--peer-listen`: registry entries naming it are this host's own
    /// server.
    pub listen: Option<SocketAddr>,
    /// Time to the first byte of an answer (`--peer-timeout`).
    pub timeout: Duration,
    /// Mutual TLS for https:// peers (`--peer-tls-*`).
    pub tls: Option<TlsFiles>,
    /// How long a faulty peer is skipped.
    pub backoff: PeerBackoff,
}

impl Default for PeerClientConfig {
    fn default() -> Self {
        PeerClientConfig {
            peers: Vec::new(),
            peers_file: None,
            registry: None,
            self_url: None,
            listen: None,
            timeout: Duration::from_millis(300),
            tls: None,
            backoff: PeerBackoff::default(),
        }
    }
}

/// A peer's recent faults.
#[derive(Debug, Default)]
struct Health {
    /// Skipped until then.
    skip_until: Option<Instant>,
    /// The next back-off period.
    next_backoff: Option<Duration>,
    /// When a `not_available` was last logged.
    not_available_logged: Option<Instant>,
}

/// The client; see the module docs.
pub struct PeerClient {
    fleet: Fleet,
    origins: Option<Origins>,
    /// Shut down without waiting on drop (see `Drop`).
    runtime: ManuallyDrop<tokio::runtime::Runtime>,
    tls: Option<ClientTlsConfig>,
    timeout: Duration,
    backoff: PeerBackoff,
    channels: Mutex<HashMap<String, Channel>>,
    health: Mutex<HashMap<String, Health>>,
}

impl fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerClient")
            .field("fleet", &self.fleet)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl PeerClient {
    /// The client of `config`'s fleet and registry; `None` without any
    /// `--peer`, `--peers-file` or `--peer-registry`. Connects lazily, at
    /// the first request to a peer or the registry.
    ///
    /// # Errors
    /// `BadPeer` for a URL that is not http(s)://HOST:PORT or an https://
    /// peer without TLS files; `Registry` when the registry's watcher cannot
    /// start; `BadRegistry` when E2B's origin lookup cannot be made; `PeersFile` when the peers file cannot be
    /// read; `ReadTls` when a PEM file cannot be read; `Server` when the
    /// runtime cannot start.
    pub fn from_config(config: &PeerClientConfig) -> Result<Option<PeerClient>, PeerError> {
        if config.peers.is_empty() && config.peers_file.is_none() && config.registry.is_none() {
            return Ok(None);
        }
        let origins = match &config.registry {
            Some(url) => {
                // E2B's registry holds NODE_IP:PORT, without a scheme.
                let own = config
                    .self_url
                    .iter()
                    .filter_map(|u| u.split_once("://").map(|(_, addr)| addr.to_string()));
                Some(Origins::new(
                    &url.to_string(),
                    config.timeout,
                    own.collect(),
                )?)
            }
            None => None,
        };
        let fleet = Fleet::new(config)?;
        let tls = match &config.tls {
            Some(files) => {
                let pem = files.read()?;
                Some(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(pem.ca))
                        .identity(Identity::from_pem(pem.cert, pem.key)),
                )
            }
            None => None,
        };
        if tls.is_none()
            && let Some(m) = fleet
                .ring()
                .members()
                .iter()
                .find(|m| !m.is_self && m.url.starts_with("https://"))
        {
            return Err(PeerError::BadPeer {
                detail: format!(
                    "{}: https:// peers need --peer-tls-cert, --peer-tls-key and --peer-tls-ca",
                    m.url
                ),
            });
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("tdfs-peer-client")
            .enable_all()
            .build()
            .map_err(|e| PeerError::Server(format!("starting the client's runtime: {e}")))?;
        let members = fleet.ring().members().len();
        log::info!(
            "asking peers for the chunks they own (fleet of {members}; first-byte timeout {:?})",
            config.timeout
        );
        if let Some(url) = &config.registry {
            log::info!(
                "asking the origin peers E2B's registry {url} names for builds being uploaded"
            );
        }
        Ok(Some(PeerClient {
            fleet,
            origins,
            runtime: ManuallyDrop::new(runtime),
            tls,
            timeout: config.timeout,
            backoff: config.backoff,
            channels: Mutex::new(HashMap::new()),
            health: Mutex::new(HashMap::new()),
        }))
    }

    /// Show the fleet's member count and registry errors in `stats` (the
    /// mount's figures, made after the client).
    pub fn count_into(&self, stats: Arc<Stats>) {
        self.fleet.count_into(stats);
    }

    /// The (lazily connecting) channel to `url`, made once.
    fn channel(&self, url: &str) -> Result<Channel, String> {
        let mut channels = sync::lock(&self.channels);
        if let Some(c) = channels.get(url) {
            return Ok(c.clone());
        }
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| e.to_string())?
            .connect_timeout(self.timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME);
        if url.starts_with("https://") {
            let tls = self
                .tls
                .clone()
                .ok_or("https:// needs --peer-tls-cert, --peer-tls-key and --peer-tls-ca")?;
            endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
        }
        let channel = {
            let _entered = self.runtime.enter();
            endpoint.connect_lazy()
        };
        channels.insert(url.to_string(), channel.clone());
        Ok(channel)
    }

    /// Whether `url` is in back-off now.
    fn skipped(&self, url: &str) -> bool {
        sync::lock(&self.health)
            .get(url)
            .and_then(|h| h.skip_until)
            .is_some_and(|until| Instant::now() < until)
    }

    fn succeeded(&self, url: &str) {
        let mut health = sync::lock(&self.health);
        if let Some(h) = health.get_mut(url) {
            h.skip_until = None;
            h.next_backoff = None;
        }
    }

    /// Note a fault of `url`: back-off (except for `not_available`) and
    /// one log line per fault that starts a back-off.
    fn fault(&self, url: &str, reason: PeerFallback, what: &str, detail: &str) {
        let now = Instant::now();
        let mut health = sync::lock(&self.health);
        let h = health.entry(url.to_string()).or_default();
        if reason == PeerFallback::NotAvailable {
            if h.not_available_logged
                .is_none_or(|t| now.duration_since(t) >= NOT_AVAILABLE_LOG)
            {
                h.not_available_logged = Some(now);
                log::info!(
                    "peer {url}: not_available for {what}; reading the store (logged once a minute per peer)"
                );
            }
            return;
        }
        if h.skip_until.is_some_and(|until| now < until) {
            // In flight when the back-off started: already logged.
            return;
        }
        let first = match reason {
            PeerFallback::Timeout => self.backoff.timeout_start,
            _ => self.backoff.start,
        };
        let backoff = h.next_backoff.unwrap_or(first);
        h.skip_until = Some(now + backoff);
        h.next_backoff = Some((backoff * 2).min(self.backoff.max));
        log::warn!(
            "peer {url}: {} reading {what}: {detail}; reading the store instead and skipping this peer for {backoff:?}",
            reason.name(),
        );
        // Said when it happens (the timer ends after `skip_until`), so a
        // reader of the log knows when the peer is asked again.
        let url = url.to_string();
        self.runtime.spawn(async move {
            tokio::time::sleep(backoff).await;
            log::info!("peer {url}: back-off over; asking it again");
        });
    }
}

impl Drop for PeerClient {
    fn drop(&mut self) {
        // SAFETY: `runtime` is taken once, here, and never used again.
        let runtime = unsafe { ManuallyDrop::take(&mut self.runtime) };
        // The last holder of the mount's `Builds` may be the peer server,
        // dropped inside its own runtime, where a plain drop (which waits
        // for this runtime's threads) panics; nothing here needs waiting for.
        runtime.shutdown_background();
    }
}

impl PeerSource for PeerClient {
    fn read_unit(
        &self,
        build: Uuid,
        file: FileKind,
        unit: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), PeerFallback> {
        let what = format!("{build}/{file} at {offset} ({} bytes)", buf.len());
        let owner = self.owner_channel(build, file, unit, &what)?;
        let url = owner.url.as_str();
        let (Ok(offset), Ok(length)) = (i64::try_from(offset), i64::try_from(buf.len())) else {
            return Err(PeerFallback::Owned);
        };
        let request = ReadAtBuildSeekableRequest {
            build_id: build.to_string(),
            name: file.name().to_string(),
            offset,
            length,
        };
        let stall = self.timeout.max(MIN_STALL);
        let read = read_range(owner.channel.clone(), request, buf, self.timeout, stall);
        match self.runtime.block_on(read) {
            Ok(()) => {
                self.succeeded(url);
                Ok(())
            }
            Err((reason, detail)) => Err(self.failed(build, &owner, reason, &what, &detail)),
        }
    }

    fn diff_size(&self, build: Uuid, file: FileKind) -> Result<u64, PeerFallback> {
        let what = format!("the size of {build}/{file}");
        let owner = self.owner_channel(build, file, 0, &what)?;
        let channel = owner.channel.clone();
        let request = GetBuildFileSizeRequest {
            build_id: build.to_string(),
            name: file.name().to_string(),
        };
        let ask = async {
            let mut client = ChunkServiceClient::new(channel);
            tokio::time::timeout(self.timeout, client.get_build_file_size(request)).await
        };
        let answer = match self.runtime.block_on(ask) {
            Err(_) => Err((PeerFallback::Timeout, "no answer within the timeout".into())),
            Ok(Err(status)) => Err((PeerFallback::Error, status.to_string())),
            Ok(Ok(response)) => {
                let response = response.into_inner();
                match (response.availability, u64::try_from(response.total_size)) {
                    (Some(a), _) if a.use_storage => {
                        Err((PeerFallback::UseStorage, "use_storage".into()))
                    }
                    (Some(a), _) if a.not_available => {
                        Err((PeerFallback::NotAvailable, "not_available".into()))
                    }
                    (_, Ok(size)) => Ok(size),
                    (_, Err(_)) => Err((
                        PeerFallback::Malformed,
                        format!("a negative size {}", response.total_size),
                    )),
                }
            }
        };
        answer
            .inspect(|_| self.succeeded(&owner.url))
            .map_err(|(reason, detail)| self.failed(build, &owner, reason, &what, &detail))
    }

    fn origin_object(
        &self,
        build: Uuid,
        name: &str,
        max_len: u64,
    ) -> Result<Vec<u8>, PeerFallback> {
        let Some(url) = self.origins.as_ref().and_then(|o| o.origin(build)) else {
            return Err(PeerFallback::Owned);
        };
        let owner = self.connect(url, true, &format!("{build}/{name}"))?;
        let what = format!("{build}/{name} from its origin");
        let request = GetBuildBlobRequest {
            build_id: build.to_string(),
            name: name.to_string(),
        };
        let stall = self.timeout.max(MIN_STALL);
        let read = read_object(owner.channel.clone(), request, max_len, self.timeout, stall);
        match self.runtime.block_on(read) {
            Ok(bytes) => {
                self.succeeded(&owner.url);
                Ok(bytes)
            }
            Err((reason, detail)) => Err(self.failed(build, &owner, reason, &what, &detail)),
        }
    }

    fn origin_switched(&self, build: Uuid) -> bool {
        self.origins.as_ref().is_some_and(|o| o.is_switched(build))
    }
}

/// The peer a request goes to.
struct Owner {
    url: String,
    channel: Channel,
    /// The build's origin (from the registry), not a ring member.
    origin: bool,
}

impl PeerClient {
    /// The peer owning `build`'s `file` unit `unit` and a channel to it,
    /// for a request about `what`: the build's origin while it has one
    /// (see `origin`), else the ring's owner.
    ///
    /// # Errors
    /// `Owned` when this host owns the unit (or there is no member);
    /// `Backoff` when the owner is skipped now; `Error` when no channel to
    /// it can be made (logged as its fault).
    fn owner_channel(
        &self,
        build: Uuid,
        file: FileKind,
        unit: u64,
        what: &str,
    ) -> Result<Owner, PeerFallback> {
        if let Some(url) = self.origins.as_ref().and_then(|o| o.origin(build)) {
            return self.connect(url, true, what);
        }
        let ring = self.fleet.ring();
        let url = match ring.owner(build, file, unit) {
            Some(m) if !m.is_self => m.url.clone(),
            _ => return Err(PeerFallback::Owned),
        };
        self.connect(url, false, what)
    }

    /// `url` as the owner of a request about `what`, unless it is skipped.
    fn connect(&self, url: String, origin: bool, what: &str) -> Result<Owner, PeerFallback> {
        if self.skipped(&url) {
            return Err(PeerFallback::Backoff);
        }
        let channel = self.channel(&url).map_err(|detail| {
            self.fault(&url, PeerFallback::Error, what, &detail);
            PeerFallback::Error
        })?;
        Ok(Owner {
            url,
            channel,
            origin,
        })
    }

    /// Note a failed request about `what` to `owner`, returning `reason`:
    /// `use_storage` from a build's origin switches the build to the store
    /// (the origin is not at fault); anything else is the peer's fault.
    fn failed(
        &self,
        build: Uuid,
        owner: &Owner,
        reason: PeerFallback,
        what: &str,
        detail: &str,
    ) -> PeerFallback {
        match &self.origins {
            Some(origins) if owner.origin && reason == PeerFallback::UseStorage => {
                origins.switch(build);
            }
            _ => self.fault(&owner.url, reason, what, detail),
        }
        reason
    }
}

/// All of the object `request` names, its messages appended into one
/// buffer (which grows with the bytes received, never past `max_len`):
/// `use_storage` in any message, `not_available` in the first, ends it.
async fn read_object(
    channel: Channel,
    request: GetBuildBlobRequest,
    max_len: u64,
    first_byte: Duration,
    stall: Duration,
) -> Result<Vec<u8>, (PeerFallback, String)> {
    use PeerFallback::{Error, Long, Malformed, NotAvailable, Timeout, UseStorage};
    let limit = usize::try_from(max_len.saturating_add(BLOB_MESSAGE_SLACK)).unwrap_or(usize::MAX);
    let mut client = ChunkServiceClient::new(channel).max_decoding_message_size(limit);
    let first_deadline = tokio::time::Instant::now() + first_byte;
    let mut stream =
        match tokio::time::timeout_at(first_deadline, client.get_build_blob(request)).await {
            Err(_) => return Err((Timeout, "no answer within the first-byte timeout".into())),
            Ok(Err(status)) => return Err((Error, status.to_string())),
            Ok(Ok(response)) => response.into_inner(),
        };
    let mut bytes = Vec::new();
    let mut first = true;
    loop {
        let deadline = tokio::time::Instant::now() + stall;
        let message = match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => return Err((Timeout, "the stream stalled".into())),
            Ok(Err(status)) => return Err((Error, status.to_string())),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(m))) => m,
        };
        match (&message.availability, first) {
            (Some(a), _) if a.use_storage => return Err((UseStorage, "use_storage".into())),
            (Some(a), true) if a.not_available => {
                return Err((NotAvailable, "not_available".into()));
            }
            (Some(a), false) if a.not_available => {
                return Err((Malformed, "not_available past the first message".into()));
            }
            _ => {}
        }
        first = false;
        if (bytes.len() + message.data.len()) as u64 > max_len {
            return Err((Long, format!("over {max_len} bytes, the object's cap")));
        }
        bytes.extend_from_slice(&message.data);
    }
    Ok(bytes)
}

/// Stream `request`'s range into all of `buf`, checking every message.
async fn read_range(
    channel: Channel,
    request: ReadAtBuildSeekableRequest,
    buf: &mut [u8],
    first_byte: Duration,
    stall: Duration,
) -> Result<(), (PeerFallback, String)> {
    use PeerFallback::{Error, Long, Malformed, NotAvailable, Short, Timeout, UseStorage};
    let start = tokio::time::Instant::now();
    let first_deadline = start + first_byte;
    let last_deadline = first_deadline + STREAM_DEADLINE;
    let timed_out = |what: &str| (Timeout, what.to_string());
    let mut client = ChunkServiceClient::new(channel);
    let mut stream =
        match tokio::time::timeout_at(first_deadline, client.read_at_build_seekable(request)).await
        {
            Err(_) => return Err(timed_out("no answer within the first-byte timeout")),
            Ok(Err(status)) => return Err((Error, status.to_string())),
            Ok(Ok(response)) => response.into_inner(),
        };
    let mut got = 0;
    let mut first = true;
    loop {
        // The answer's headers came within the first-byte timeout: from
        // here on only stalls count. A first 2 MiB message shares the one
        // connection with every other request in flight to this peer, so
        // under load it can take longer than the first-byte timeout
        // without anything being wrong with the peer.
        let deadline = (tokio::time::Instant::now() + stall).min(last_deadline);
        let message = match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) if first => return Err(timed_out("no first message (the stream stalled)")),
            Err(_) => return Err(timed_out("the stream stalled")),
            Ok(Err(status)) => return Err((Error, status.to_string())),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(m))) => m,
        };
        match (&message.availability, first) {
            // E2B's origin may say it in the middle of a stream too.
            (Some(a), _) if a.use_storage => return Err((UseStorage, "use_storage".into())),
            (Some(a), true) if a.not_available => {
                return Err((NotAvailable, "not_available".into()));
            }
            (Some(_), false) => {
                return Err((Malformed, "availability past the first message".into()));
            }
            _ => {}
        }
        first = false;
        let n = message.data.len();
        if n > MAX_MESSAGE_DATA + MESSAGE_SLACK {
            return Err((Malformed, format!("a message of {n} bytes")));
        }
        let Some(place) = buf.get_mut(got..got + n) else {
            return Err((
                Long,
                format!("over {} bytes sent for {} asked", got + n, buf.len()),
            ));
        };
        place.copy_from_slice(&message.data);
        got += n;
    }
    if got < buf.len() {
        return Err((Short, format!("{got} bytes sent for {} asked", buf.len())));
    }
    Ok(())
}
