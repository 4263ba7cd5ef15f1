//! The peer flags of `tdfs mount`: serving peers (`--peer-listen`, mutual
//! TLS, `--peer-insecure`) and asking them (`--peer`, `--peers-file`,
//! `--peer-timeout`, `--peer-advertise`), checked together before the
//! daemon forks, so a mistake reaches the terminal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::peer::{PeerBackoff, PeerClientConfig, PeerError, PeerListen, TlsFiles, parse_peer_url};

#[derive(Debug, Clone, clap::Args)]
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
    /// How long to wait for a peer's first byte before reading the store,
    /// e.g. 300ms or 2s.
    #[arg(long, value_name = "DURATION", default_value = "300ms", value_parser = parse_duration)]
    pub peer_timeout: Duration,
    /// This host's own URL in the fleet list [default: http(s)://ADDR:PORT
    /// of --peer-listen]: the entry equal to it is this host.
    #[arg(long, value_name = "URL")]
    pub peer_advertise: Option<String>,
    /// First skip of a faulty peer, after a timeout too (doubled on each
    /// fault in a row up to 60 s) [default: 5s, 1s after a timeout].
    /// Hidden: it exists so that the peer tests see a back-off end within
    /// a second instead of sleeping 5 s; a fleet has no reason to tune it.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, hide = true)]
    pub peer_backoff: Option<Duration>,
}

impl PeerArgs {
    /// The server's settings and the client's (no peers: an empty list).
    ///
    /// # Errors
    /// The `PeerError` of the first flag that is wrong.
    pub fn check(&self) -> Result<(Option<PeerListen>, PeerClientConfig), PeerError> {
        let tls = TlsFiles::from_flags(
            self.peer_tls_cert.clone(),
            self.peer_tls_key.clone(),
            self.peer_tls_ca.clone(),
        )?;
        let has_peers = !self.peers.is_empty() || self.peers_file.is_some();
        let listen =
            PeerListen::from_flags(self.peer_listen, tls.clone(), self.peer_insecure, has_peers)?;
        for peer in &self.peers {
            parse_peer_url(peer).map_err(|detail| PeerError::BadPeer { detail })?;
        }
        if let Some(file) = &self.peers_file {
            std::fs::metadata(file).map_err(|source| PeerError::PeersFile {
                path: file.clone(),
                source,
            })?;
        }
        let self_url = match (&self.peer_advertise, self.peer_listen) {
            (Some(url), _) => Some(parse_peer_url(url).map_err(|detail| PeerError::BadPeer {
                detail: format!("(--peer-advertise) {detail}"),
            })?),
            (None, Some(addr)) => {
                let scheme = if tls.is_some() { "https" } else { "http" };
                Some(format!("{scheme}://{addr}"))
            }
            (None, None) => None,
        };
        let client = PeerClientConfig {
            peers: self.peers.clone(),
            peers_file: self.peers_file.clone(),
            self_url,
            timeout: self.peer_timeout,
            tls,
            backoff: match self.peer_backoff {
                Some(start) => PeerBackoff {
                    start,
                    timeout_start: start,
                    ..PeerBackoff::default()
                },
                None => PeerBackoff::default(),
            },
        };
        Ok((listen, client))
    }
}

/// A duration with its unit: `300ms`, `2s`, `1.5s`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?}: give a positive number of ms or s, e.g. 300ms, 2s or 1.5s");
    let (number, seconds_per_unit) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(bad());
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    Duration::try_from_secs_f64(value * seconds_per_unit)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["300", "0ms", "-1s", "fast"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
