//! The peer edge: E2B's ChunkService (gRPC, `proto/chunk_service.proto`),
//! through which hosts mounting the same store serve each other the bytes
//! of builds' own diffs from their caches. `server` answers the service
//! from the mount's `Builds` (a peer's read is a read of the diff view,
//! single-flight with the mount's own readers); `listen` checks who may
//! connect (plain text on loopback only, unless told otherwise; mutual TLS
//! elsewhere) and runs the server on its own small tokio runtime.
//!
//! The client half: `fleet` is the member list (`--peer`, `--peers-file`,
//! `--peer-registry`), `registry` the Redis registry of live members (its
//! scheme, its connection, which entries to skip), `watch` the thread that
//! keeps this host's entry alive and re-reads the members, `ring` picks
//! each unit's owner by rendezvous hashing, and `client` asks the owner for
//! units as the Chunkers' `PeerSource`, on a runtime of its own. These
//! runtimes and the object store client are the only async code of the
//! read side; the registry is read with the sync redis client, off the
//! read path.
//! `origin` is E2B's registry of origin peers (the same `--peer-registry`:
//! `peer:<build>` keys): a build registered there is asked of its origin
//! first (headers, sizes, blobs, units) until the origin says it is
//! uploaded.

mod client;
mod fleet;
mod listen;
mod origin;
mod registry;
mod ring;
mod server;
mod watch;

pub use client::{PeerBackoff, PeerClient, PeerClientConfig};
pub use fleet::parse_peer_url;
pub use listen::{PeerListen, PeerServer, TlsFiles};
pub use origin::{Origins, check_registry_url, registry_key};
pub use registry::{MEMBERS_KEY, RegistryUrl};
pub use ring::{Member, Ring};
pub use server::{ChunkServer, MAX_MESSAGE_DATA};
pub use watch::{POLL as REGISTRY_POLL, TTL as REGISTRY_TTL};

use std::net::SocketAddr;
use std::path::PathBuf;

/// The code generated from `proto/chunk_service.proto` (no `package` line,
/// so method paths are `/ChunkService/<Method>`). Public so tests and other
/// tools can use its client.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("_");
}

/// Why the peer server could not start.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(
        "--peer-listen {addr}: plain-text gRPC is served only on loopback, and template memory holds customers' data (give --peer-tls-cert, --peer-tls-key and --peer-tls-ca for mutual TLS, or --peer-insecure on a network you trust)"
    )]
    PlainTextOffLoopback { addr: SocketAddr },
    #[error(
        "--peer-tls-cert, --peer-tls-key and --peer-tls-ca go together (mutual TLS needs this host's certificate, its key and the fleet's CA): give all three"
    )]
    PartialTls,
    #[error(
        "--peer-tls-* given without --peer-listen, --peer or --peers-file: there is nothing to secure"
    )]
    TlsWithoutListen,
    #[error("--peer {detail}")]
    BadPeer { detail: String },
    #[error("--peer-registry {detail}")]
    Registry { detail: String },
    #[error("--peer-registry {url}: {detail}")]
    BadRegistry { url: String, detail: String },
    #[error("--peers-file {}: {source} (check the path and its permissions)", .path.display())]
    PeersFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {}: {source} (check the path and its permissions)", .path.display())]
    ReadTls {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--peer-listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("peer server: {0}")]
    Server(String),
}
