//! The peer flags of `tdfs mount`: serving peers (`--peer-listen`, mutual
//! TLS, `--peer-insecure`) and asking them (`--peer`, `--peers-file`,
//! `--peer-timeout`, `--peer-advertise`, `--peer-registry`), checked together before the
//! daemon forks, so a mistake reaches the terminal (`config`'s
//! `PeerArgs::check`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::parse::parse_duration;

/// The peer flags; `config` checks them and turns them into the peer
/// server's and client's settings.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct PeerArgs {
    /// Serve E2B's ChunkService to peers on ADDR:PORT: the builds' own
    /// diffs, from this mount's cache. Plain text only on loopback unless
    /// --peer-insecure; elsewhere mutual TLS (--peer-tls-*).
    #[arg(long, value_name = "ADDR:PORT")]
    pub peer_listen: Option<SocketAddr>,
    /// This host's certificate (PEM) for mutual TLS: served by
    /// --peer-listen, presented to https:// peers.
    #[arg(long, value_name = "FILE")]
    pub peer_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --peer-tls-cert.
    #[arg(long, value_name = "FILE")]
    pub peer_tls_key: Option<PathBuf>,
    /// The fleet's CA (PEM): peers must present a certificate it signed.
    #[arg(long, value_name = "FILE")]
    pub peer_tls_ca: Option<PathBuf>,
    /// Serve peers in plain text on a non-loopback address (for networks
    /// where E2B runs its peers in plain text).
    #[arg(long)]
    pub peer_insecure: bool,
    /// A fleet member to ask for the chunks it owns before the store,
    /// http://HOST:PORT or https://HOST:PORT (mutual TLS); repeatable.
    /// Each chunk or frame has one owner among the members, by rendezvous
    /// hashing; list this host too (see --peer-advertise) so it owns its
    /// share.
    #[arg(long = "peer", value_name = "URL")]
    pub peers: Vec<String>,
    /// A file of fleet members, one URL a line (`#` starts a comment),
    /// read again within seconds of a change; bad lines are warned about
    /// and skipped.
    #[arg(long, value_name = "FILE")]
    pub peers_file: Option<PathBuf>,
    /// How long to wait for a peer's first byte before reading the store:
    /// a number with a unit, ms, s or m (e.g. 300ms or 2s).
    #[arg(long, value_name = "DURATION", default_value = "300ms", value_parser = parse_duration)]
    pub peer_timeout: Duration,
    /// This host's own URL in the fleet list [default: http(s)://ADDR:PORT
    /// of --peer-listen]: the entry equal to it is this host.
    #[arg(long, value_name = "URL")]
    pub peer_advertise: Option<String>,
    /// E2B's registry of origin peers, redis://HOST:PORT[/DB]: a build
    /// whose key `peer:<build>` names another node (NODE_IP:PORT, the E2B
    /// node that paused the sandbox and is still uploading it) is read from
    /// that node while the store lacks it, and from the store once the node
    /// says it is uploaded.
    #[arg(long, value_name = "URL")]
    pub peer_registry: Option<String>,
    /// First skip of a faulty peer, after a timeout too (doubled on each
    /// fault in a row up to 60 s) [default: 5s, 1s after a timeout].
    /// Hidden: it exists so that the peer tests see a back-off end within
    /// a second instead of sleeping 5 s; a fleet has no reason to tune it.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, hide = true)]
    pub peer_backoff: Option<Duration>,
}

/// No peers: serve none, ask none. `peer_timeout` is the flag's default:
/// a peer on the same network answers within a few milliseconds, and a
/// store's first byte takes tens, so waiting longer than that for a peer
/// only adds to a miss.
impl Default for PeerArgs {
    fn default() -> Self {
        PeerArgs {
            peer_listen: None,
            peer_tls_cert: None,
            peer_tls_key: None,
            peer_tls_ca: None,
            peer_insecure: false,
            peers: Vec::new(),
            peers_file: None,
            peer_timeout: Duration::from_millis(300),
            peer_advertise: None,
            peer_backoff: None,
            peer_registry: None,
        }
    }
}
