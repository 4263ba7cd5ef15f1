//! `--metrics-listen`: serves `GET /metrics` (the registry's text) over
//! HTTP/1 for Prometheus; any other path is 404. It runs on a small tokio
//! runtime of its own, apart from the read path, which has no async.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

use super::Stats;

/// What prometheus-client's text encoder writes.
const CONTENT_TYPE_OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Pause after a failed accept (out of descriptors, say) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A running endpoint; dropping it stops the server.
pub struct MetricsEndpoint {
    address: SocketAddr,
    // Dropping the runtime cancels the accept loop and open connections.
    _runtime: Runtime,
}

impl MetricsEndpoint {
    /// Listen on `address` (port 0 picks a free one) and serve `stats`.
    ///
    /// Errors: the runtime's threads cannot start, or the address cannot be
    /// bound (in use, not local, or a port under 1024 without privilege).
    pub fn start(address: SocketAddr, stats: Arc<Stats>) -> io::Result<MetricsEndpoint> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("metrics")
            .enable_io()
            .enable_time()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind(address))?;
        let address = listener.local_addr()?;
        runtime.spawn(accept_loop(listener, stats));
        Ok(MetricsEndpoint {
            address,
            _runtime: runtime,
        })
    }

    /// `start` when `address` is given (`--metrics-listen`), logging the
    /// URL it serves. Errors: a message naming the address and what to do.
    pub fn start_if_asked(
        address: Option<SocketAddr>,
        stats: &Arc<Stats>,
    ) -> Result<Option<MetricsEndpoint>, String> {
        let Some(address) = address else {
            return Ok(None);
        };
        let endpoint = MetricsEndpoint::start(address, stats.clone()).map_err(|e| {
            format!(
                "--metrics-listen {address}: {e} (give a free address of this host, e.g. 127.0.0.1:9110)"
            )
        })?;
        if !endpoint.address.ip().is_loopback() {
            log::warn!(
                "metrics are served beyond this host, on {}: anyone who reaches it can read them",
                endpoint.address
            );
        }
        log::info!("metrics at http://{}/metrics", endpoint.address);
        Ok(Some(endpoint))
    }

    /// The address bound, with the port chosen when 0 was asked for.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

async fn accept_loop(listener: TcpListener, stats: Arc<Stats>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("metrics endpoint: accepting a connection: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&request, &stats);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                log::debug!("metrics endpoint: connection ended: {e}");
            }
        });
    }
}

fn respond(request: &Request<Incoming>, stats: &Stats) -> Response<Full<Bytes>> {
    if request.method() == Method::GET && request.uri().path() == "/metrics" {
        let mut response = Response::new(Full::new(Bytes::from(stats.render_prometheus())));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static(CONTENT_TYPE_OPENMETRICS),
        );
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from_static(
        b"not found: tdfs serves GET /metrics only\n",
    )));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn get(address: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(address).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    #[test]
    fn serves_metrics_and_404_elsewhere() {
        let stats = Arc::new(Stats::default());
        stats.cache_budget.set(12345);
        let endpoint = MetricsEndpoint::start("127.0.0.1:0".parse().unwrap(), stats).unwrap();
        assert_ne!(endpoint.address().port(), 0);
        let ok = get(endpoint.address(), "/metrics");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains(CONTENT_TYPE_OPENMETRICS), "{ok}");
        assert!(ok.contains("tdfs_cache_budget_bytes 12345"), "{ok}");
        let missing = get(endpoint.address(), "/");
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    }
}
