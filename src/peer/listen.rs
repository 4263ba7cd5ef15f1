//! Where and to whom the peer server listens: the `--peer-listen` address,
//! the trust check (plain text only on loopback unless `--peer-insecure`;
//! otherwise mutual TLS with the fleet's CA), and the server's own tokio
//! runtime on a thread of its own, stopped when `PeerServer` is dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use super::PeerError;
use super::proto::chunk_service_server::ChunkServiceServer;
use super::server::ChunkServer;
use crate::template::Builds;

/// Threads of the server's runtime: they only move bytes that blocking
/// threads (`spawn_blocking`) copied out of the cache.
const RUNTIME_THREADS: usize = 2;
/// A connection that answers no HTTP/2 ping within this is dropped, with its
/// streams: a vanished peer frees its stream slots.
const KEEPALIVE: Duration = Duration::from_secs(20);

/// The PEM files of mutual TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// This host's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The fleet's CA: clients must present a certificate it signed.
    pub ca: PathBuf,
}

impl TlsFiles {
    /// The three files from their flags: `None` when none is given.
    ///
    /// # Errors
    /// `PartialTls` when only some are given.
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
    ) -> Result<Option<TlsFiles>, PeerError> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles { cert, key, ca })),
            _ => Err(PeerError::PartialTls),
        }
    }

    /// The PEM bytes of the three files, for the server and the client
    /// alike.
    ///
    /// # Errors
    /// `ReadTls` naming the file that cannot be read.
    pub fn read(&self) -> Result<TlsPem, PeerError> {
        let read = |what, path: &PathBuf| {
            std::fs::read(path).map_err(|source| PeerError::ReadTls {
                what,
                path: path.clone(),
                source,
            })
        };
        Ok(TlsPem {
            cert: read("--peer-tls-cert", &self.cert)?,
            key: read("--peer-tls-key", &self.key)?,
            ca: read("--peer-tls-ca", &self.ca)?,
        })
    }
}

/// The contents of `TlsFiles`.
pub struct TlsPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub ca: Vec<u8>,
}

/// What `--peer-listen` and its companions asked for.
#[derive(Debug, Clone)]
pub struct PeerListen {
    pub addr: SocketAddr,
    pub tls: Option<TlsFiles>,
    /// Plain text on a non-loopback address (`--peer-insecure`).
    pub insecure: bool,
}

impl PeerListen {
    /// The peer server's settings from the mount's flags: None without
    /// `--peer-listen`. `has_peers`: the mount is a client of peers too
    /// (`--peer`, `--peers-file`), which uses the TLS files without a
    /// server. Checked before anything starts.
    ///
    /// # Errors
    /// `PartialTls` when only some TLS files are given, `TlsWithoutListen`
    /// when TLS files come with neither an address nor peers,
    /// `PlainTextOffLoopback` for plain text on a non-loopback address
    /// without `insecure`.
    pub fn from_flags(
        addr: Option<SocketAddr>,
        tls: Option<TlsFiles>,
        insecure: bool,
        has_peers: bool,
    ) -> Result<Option<PeerListen>, PeerError> {
        let Some(addr) = addr else {
            return match tls {
                Some(_) if !has_peers => Err(PeerError::TlsWithoutListen),
                _ => Ok(None),
            };
        };
        if tls.is_none() && !insecure && !addr.ip().is_loopback() {
            return Err(PeerError::PlainTextOffLoopback { addr });
        }
        Ok(Some(PeerListen {
            addr,
            tls,
            insecure,
        }))
    }

    /// Bind the address and serve ChunkService for `builds` until the
    /// returned server is dropped. Logs the address it listens on.
    ///
    /// # Errors
    /// `ReadTls` when a PEM file cannot be read, `Bind` when the address
    /// cannot be bound, `Server` when the TLS setup or runtime fails.
    pub fn start(&self, builds: Arc<Builds>) -> Result<PeerServer, PeerError> {
        let tls = self.tls.as_ref().map(tls_config).transpose()?;
        let bind = |source| PeerError::Bind {
            addr: self.addr,
            source,
        };
        let listener = TcpListener::bind(self.addr).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let local = listener.local_addr().map_err(bind)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("tdfs-peer")
            .enable_all()
            .build()
            .map_err(|e| PeerError::Server(format!("starting its runtime: {e}")))?;
        let mut server = Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE))
            .http2_keepalive_timeout(Some(KEEPALIVE));
        if let Some(tls) = tls {
            server = server
                .tls_config(tls)
                .map_err(|e| PeerError::Server(format!("TLS setup: {e}")))?;
        }
        let service = ChunkServiceServer::new(ChunkServer::new(builds));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let incoming = {
            let _entered = runtime.enter();
            let listener = tokio::net::TcpListener::from_std(listener).map_err(bind)?;
            TcpIncoming::from(listener).with_nodelay(Some(true))
        };
        let thread = std::thread::Builder::new()
            .name("tdfs-peer-server".into())
            .spawn(move || {
                let serving =
                    server
                        .add_service(service)
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = stopped.await;
                        });
                if let Err(e) = runtime.block_on(serving) {
                    log::error!("peer server on {local} stopped: {e}");
                }
            })
            .map_err(|e| PeerError::Server(format!("starting its thread: {e}")))?;
        let mode = match (&self.tls, self.insecure) {
            (Some(_), _) => "mutual TLS",
            (None, true) => "plain text (--peer-insecure)",
            (None, false) => "plain text, loopback",
        };
        log::info!("serving ChunkService to peers on {local} ({mode})");
        Ok(PeerServer {
            local,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

fn tls_config(files: &TlsFiles) -> Result<ServerTlsConfig, PeerError> {
    let pem = files.read()?;
    // A CA root makes a client certificate required (tonic's default).
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(pem.cert, pem.key))
        .client_ca_root(Certificate::from_pem(pem.ca)))
}

/// A running peer server; dropping it stops the server and waits for it.
pub struct PeerServer {
    local: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl PeerServer {
    /// The address it listens on (the bound port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(
        cert: Option<&str>,
        key: Option<&str>,
        ca: Option<&str>,
    ) -> Result<Option<TlsFiles>, PeerError> {
        TlsFiles::from_flags(
            cert.map(PathBuf::from),
            key.map(PathBuf::from),
            ca.map(PathBuf::from),
        )
    }

    fn flags(addr: &str, tls: bool, insecure: bool) -> Result<Option<PeerListen>, PeerError> {
        let tls = if tls {
            files(Some("c.pem"), Some("k.pem"), Some("ca.pem"))?
        } else {
            None
        };
        PeerListen::from_flags(Some(addr.parse().unwrap()), tls, insecure, false)
    }

    #[test]
    fn plain_text_only_on_loopback_unless_insecure() {
        assert!(flags("127.0.0.1:5008", false, false).unwrap().is_some());
        assert!(flags("[::1]:5008", false, false).unwrap().is_some());
        let refused = flags("0.0.0.0:5008", false, false).unwrap_err();
        assert!(matches!(refused, PeerError::PlainTextOffLoopback { .. }));
        assert!(refused.to_string().contains("--peer-insecure"), "{refused}");
        assert!(flags("10.0.0.7:5008", false, true).unwrap().is_some());
        assert!(flags("10.0.0.7:5008", true, false).unwrap().is_some());
    }

    #[test]
    fn tls_flags_go_together() {
        let partial = files(Some("c.pem"), None, Some("ca.pem"));
        assert!(matches!(partial, Err(PeerError::PartialTls)));
        let all = files(Some("c"), Some("k"), Some("ca")).unwrap();
        let no_listen = PeerListen::from_flags(None, all.clone(), false, false);
        assert!(matches!(no_listen, Err(PeerError::TlsWithoutListen)));
        // A client of peers uses the files without a server.
        assert!(
            PeerListen::from_flags(None, all, false, true)
                .unwrap()
                .is_none()
        );
        assert!(
            PeerListen::from_flags(None, None, false, false)
                .unwrap()
                .is_none()
        );
    }
}
