//! Peers in tests: a free loopback port, a mount serving ChunkService, a
//! gRPC client of it (the crate's generated one), a fake peer that
//! misbehaves on demand, and certificates for mutual TLS made with
//! `openssl`.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use tdfs::peer::proto::chunk_service_client::ChunkServiceClient;
use tdfs::peer::proto::chunk_service_server::{ChunkService, ChunkServiceServer};
use tdfs::peer::proto::{
    GetBuildBlobRequest, GetBuildBlobResponse, GetBuildFileExistsRequest,
    GetBuildFileExistsResponse, GetBuildFileSizeRequest, GetBuildFileSizeResponse,
    PeerAvailability, ReadAtBuildSeekableRequest, ReadAtBuildSeekableResponse,
};
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

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
        messages.push((m.data.to_vec(), m.availability));
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

/// How a `FakePeer` answers `ReadAtBuildSeekable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeMode {
    /// The right bytes, in 1 MiB messages.
    Healthy,
    /// One message saying `not_available`.
    NotAvailable,
    /// One message saying `use_storage`.
    UseStorage,
    /// The right bytes but the last one.
    Short,
    /// The right bytes and ten more.
    Long,
    /// Availability set on every message, not only the first.
    LateAvailability,
    /// The range in 3 MiB messages: over the protocol's 2 MiB, within a
    /// gRPC client's 4 MiB.
    Oversized,
    /// Nothing at all: the stream stays open, silent.
    Stall,
    /// The first message, then silence.
    StallMidway,
    /// The first message, then a gRPC error.
    ErrorMidway,
}

type Messages = Pin<Box<dyn Stream<Item = Result<ReadAtBuildSeekableResponse, Status>> + Send>>;
type Blobs = Pin<Box<dyn Stream<Item = Result<GetBuildBlobResponse, Status>> + Send>>;

struct FakeService {
    /// Diffs by (build, name): the uncompressed bytes at storage offsets.
    diffs: Arc<HashMap<(String, String), Vec<u8>>>,
    mode: Arc<Mutex<FakeMode>>,
}

#[tonic::async_trait]
impl ChunkService for FakeService {
    async fn get_build_file_size(
        &self,
        _: Request<GetBuildFileSizeRequest>,
    ) -> Result<Response<GetBuildFileSizeResponse>, Status> {
        Err(Status::unimplemented("fake peer"))
    }

    async fn get_build_file_exists(
        &self,
        _: Request<GetBuildFileExistsRequest>,
    ) -> Result<Response<GetBuildFileExistsResponse>, Status> {
        Err(Status::unimplemented("fake peer"))
    }

    type ReadAtBuildSeekableStream = Messages;

    async fn read_at_build_seekable(
        &self,
        request: Request<ReadAtBuildSeekableRequest>,
    ) -> Result<Response<Messages>, Status> {
        let r = request.into_inner();
        let mode = *self.mode.lock().unwrap();
        let message = |data: Vec<u8>, availability| {
            Ok(ReadAtBuildSeekableResponse {
                data: data.into(),
                availability,
            })
        };
        let flags = |not_available, use_storage| {
            Some(PeerAvailability {
                not_available,
                use_storage,
            })
        };
        let Some(diff) = self.diffs.get(&(r.build_id.clone(), r.name.clone())) else {
            return Ok(Response::new(Box::pin(futures::stream::iter([message(
                Vec::new(),
                flags(true, false),
            )]))));
        };
        let (o, l) = (r.offset as usize, r.length as usize);
        let range = diff[o..o + l].to_vec();
        let pieces =
            |bytes: &[u8], every: bool| -> Vec<Result<ReadAtBuildSeekableResponse, Status>> {
                bytes
                    .chunks(1 << 20)
                    .enumerate()
                    .map(|(i, c)| {
                        message(
                            c.to_vec(),
                            (i == 0 || every).then(PeerAvailability::default),
                        )
                    })
                    .collect()
            };
        let messages = match mode {
            FakeMode::Healthy => pieces(&range, false),
            FakeMode::NotAvailable => vec![message(Vec::new(), flags(true, false))],
            FakeMode::UseStorage => vec![message(Vec::new(), flags(false, true))],
            FakeMode::Short => pieces(&range[..l - 1], false),
            FakeMode::Long => {
                let mut m = pieces(&range, false);
                m.push(message(vec![7; 10], None));
                m
            }
            FakeMode::LateAvailability => pieces(&range, true),
            FakeMode::Oversized => range
                .chunks(3 << 20)
                .enumerate()
                .map(|(i, c)| message(c.to_vec(), (i == 0).then(PeerAvailability::default)))
                .collect(),
            FakeMode::Stall => {
                return Ok(Response::new(Box::pin(futures::stream::pending())));
            }
            FakeMode::StallMidway => {
                let first = pieces(&range, false).swap_remove(0);
                return Ok(Response::new(Box::pin(
                    futures::stream::iter([first]).chain(futures::stream::pending()),
                )));
            }
            FakeMode::ErrorMidway => {
                let first = pieces(&range, false).swap_remove(0);
                vec![first, Err(Status::internal("fake peer fails midway"))]
            }
        };
        Ok(Response::new(Box::pin(futures::stream::iter(messages))))
    }

    type GetBuildBlobStream = Blobs;

    async fn get_build_blob(
        &self,
        _: Request<GetBuildBlobRequest>,
    ) -> Result<Response<Blobs>, Status> {
        Err(Status::unimplemented("fake peer"))
    }
}

/// A ChunkService on loopback answering ranges of given diffs as its
/// `FakeMode` says; stopped on drop (its runtime dropped, stalled streams
/// and all).
pub struct FakePeer {
    addr: SocketAddr,
    mode: Arc<Mutex<FakeMode>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakePeer {
    /// Serve `diffs` ((build id, file name) -> the diff's bytes) in `mode`.
    pub fn start(diffs: HashMap<(String, String), Vec<u8>>, mode: FakeMode) -> FakePeer {
        let mode = Arc::new(Mutex::new(mode));
        let service = FakeService {
            diffs: Arc::new(diffs),
            mode: mode.clone(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let incoming = {
            let _entered = runtime.enter();
            tonic::transport::server::TcpIncoming::from(
                tokio::net::TcpListener::from_std(listener).expect("listener"),
            )
        };
        runtime.spawn(
            Server::builder()
                .add_service(ChunkServiceServer::new(service))
                .serve_with_incoming(incoming),
        );
        FakePeer {
            addr,
            mode,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: FakeMode) {
        *self.mode.lock().unwrap() = mode;
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
