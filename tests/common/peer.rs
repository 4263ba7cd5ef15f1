//! Peers in tests: a free loopback port, a mount serving ChunkService, a
//! gRPC client of it (the crate's generated one), and certificates for
//! mutual TLS made with `openssl`.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use tdfs::peer::proto::chunk_service_client::ChunkServiceClient;
use tdfs::peer::proto::{PeerAvailability, ReadAtBuildSeekableRequest};
use tonic::transport::Channel;

use super::mount::MountGuard;
use super::process::{require_tool, run_ok};

/// A loopback address with a port free right now.
pub fn free_loopback_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr")
}

/// Mount `store` serving peers on a free loopback port (plus `extra` flags).
pub fn mount_serving(store: &Path, extra: &[&str]) -> (MountGuard, SocketAddr) {
    let addr = free_loopback_addr();
    let listen = addr.to_string();
    let mut args = vec!["--peer-listen", listen.as_str()];
    args.extend_from_slice(extra);
    let mount = MountGuard::start(store, &args);
    assert!(
        mount
            .log()
            .contains(&format!("serving ChunkService to peers on {addr}")),
        "the address is logged at start:\n{}",
        mount.log()
    );
    (mount, addr)
}

/// A runtime for a test's client calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A plain-text client of the peer at `addr`.
pub async fn client(addr: SocketAddr) -> ChunkServiceClient<Channel> {
    ChunkServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the peer")
}

/// One `ReadAtBuildSeekable` stream, whole: its messages' data and
/// availability, or the gRPC status that ended it.
pub async fn read_range(
    client: &mut ChunkServiceClient<Channel>,
    build: &str,
    name: &str,
    offset: i64,
    length: i64,
) -> Result<Vec<(Vec<u8>, Option<PeerAvailability>)>, tonic::Status> {
    let request = ReadAtBuildSeekableRequest {
        build_id: build.to_string(),
        name: name.to_string(),
        offset,
        length,
    };
    let mut stream = client.read_at_build_seekable(request).await?.into_inner();
    let mut messages = Vec::new();
    while let Some(m) = stream.message().await? {
        messages.push((m.data, m.availability));
    }
    Ok(messages)
}

/// PEM files of a CA, a server certificate for 127.0.0.1 and a client
/// certificate, both signed by the CA.
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Make `Certs` in `dir` with `openssl`.
pub fn make_certs(dir: &Path) -> Certs {
    require_tool("openssl");
    let p = |name: &str| dir.join(name);
    let s = |path: &PathBuf| path.to_str().expect("utf-8 path").to_string();
    let (ca, ca_key) = (p("ca.pem"), p("ca.key"));
    run_ok(
        "openssl",
        [
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=tdfs test CA",
            "-keyout",
            &s(&ca_key),
            "-out",
            &s(&ca),
        ],
    );
    let signed = |name: &str, ext: &str| {
        let (cert, key, csr, extfile) = (
            p(&format!("{name}.pem")),
            p(&format!("{name}.key")),
            p(&format!("{name}.csr")),
            p(&format!("{name}.ext")),
        );
        std::fs::write(&extfile, ext).expect("write extensions");
        run_ok(
            "openssl",
            [
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN=tdfs {name}"),
                "-keyout",
                &s(&key),
                "-out",
                &s(&csr),
            ],
        );
        run_ok(
            "openssl",
            [
                "x509",
                "-req",
                "-in",
                &s(&csr),
                "-CA",
                &s(&ca),
                "-CAkey",
                &s(&ca_key),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &s(&extfile),
                "-out",
                &s(&cert),
            ],
        );
        (cert, key)
    };
    let (server_cert, server_key) = signed(
        "server",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    let (client_cert, client_key) = signed("client", "extendedKeyUsage=clientAuth\n");
    Certs {
        ca,
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}
