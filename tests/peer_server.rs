//! `tdfs mount --peer-listen`: a real mount serving E2B's ChunkService on
//! loopback, read by the crate's generated client and by a Python grpcio
//! client generated from the `.proto`; mutual TLS refusing a client without
//! a certificate; plain text off loopback refused at start.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::digest::sha256_hex;
use common::fixtures::fixture_store;
use common::mount::{MountGuard, fuse_available};
use common::oracle::whole_diff;
use common::peer::{client, make_certs, mount_serving, read_range, runtime};
use common::process::{require_tool, run_ok, tdfs};
use tdfs::format::FileKind;
use tdfs::peer::MAX_MESSAGE_DATA;
use tdfs::peer::proto::GetBuildFileSizeRequest;
use tdfs::peer::proto::chunk_service_client::ChunkServiceClient;
use tdfs::store::{LocalStore, Store};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use uuid::Uuid;

/// The base build of the v4-zstd fixture: its rootfs.ext4 has 4 KiB blocks
/// and a diff of 4898816 bytes (over 4 MiB).
const BASE: &str = "4c8cee25-4691-41ad-bee6-af9d9284b55b";

fn base_rootfs_diff(store: &Path) -> Vec<u8> {
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(store.to_path_buf()).expect("store"));
    whole_diff(
        store.as_ref(),
        Uuid::parse_str(BASE).unwrap(),
        FileKind::Rootfs,
    )
}

/// The seed bug: a 4 MiB request over 4 KiB blocks must come back whole,
/// byte-exact, in messages of at most 2 MiB; and the edges of a range.
#[test]
fn ranges_of_a_4k_block_diff_come_back_whole() {
    if !fuse_available() {
        return;
    }
    let store = fixture_store("v4-zstd");
    let expected = base_rootfs_diff(&store);
    let size = expected.len() as i64;
    assert!(size > 4 << 20, "the fixture's diff is over 4 MiB");
    let (mount, addr) = mount_serving(&store, &[]);
    runtime().block_on(async {
        let mut c = client(addr).await;
        let got = c
            .get_build_file_size(GetBuildFileSizeRequest {
                build_id: BASE.into(),
                name: "rootfs.ext4".into(),
            })
            .await
            .expect("size")
            .into_inner();
        assert_eq!(got.total_size, size);
        assert_eq!(got.availability, Some(Default::default()));

        let cases: [(i64, i64); 5] = [
            (0, 4 << 20),
            (4097, (3 << 20) + 13),
            (size - 5000, 5000),
            (1, 1),
            (0, size),
        ];
        for (offset, length) in cases {
            let messages = read_range(&mut c, BASE, "rootfs.ext4", offset, length)
                .await
                .unwrap_or_else(|e| panic!("range {offset}+{length}: {e}"));
            let data: Vec<u8> = messages.iter().flat_map(|(d, _)| d.clone()).collect();
            assert_eq!(data.len() as i64, length, "range {offset}+{length}: length");
            let (o, l) = (offset as usize, length as usize);
            assert!(data == expected[o..o + l], "range {offset}+{length}: bytes");
            assert!(
                messages.iter().all(|(d, _)| d.len() <= MAX_MESSAGE_DATA),
                "range {offset}+{length}: a message over 2 MiB"
            );
            assert_eq!(messages[0].1, Some(Default::default()), "first: served");
            assert!(
                messages[1..].iter().all(|(_, a)| a.is_none()),
                "availability only in the first message"
            );
        }

        let empty = read_range(&mut c, BASE, "rootfs.ext4", 100, 0)
            .await
            .expect("length 0");
        assert_eq!(empty.len(), 1);
        assert!(empty[0].0.is_empty());
        assert_eq!(empty[0].1, Some(Default::default()));

        let past = read_range(&mut c, BASE, "rootfs.ext4", size - 10, 11)
            .await
            .unwrap_err();
        assert_eq!(past.code(), Code::OutOfRange, "{past}");
        assert!(past.message().contains("past the end"), "{past}");
        for (offset, length) in [(-1, 10), (0, -5)] {
            let bad = read_range(&mut c, BASE, "rootfs.ext4", offset, length)
                .await
                .unwrap_err();
            assert_eq!(bad.code(), Code::InvalidArgument, "{bad}");
        }
        let bad_name = read_range(&mut c, BASE, "snapfile", 0, 1)
            .await
            .unwrap_err();
        assert_eq!(bad_name.code(), Code::InvalidArgument, "{bad_name}");

        let missing = "6f0e0000-0000-4000-8000-00000000beef";
        let absent = read_range(&mut c, missing, "memfile", 0, 4096)
            .await
            .expect("a build the peer lacks");
        assert_eq!(absent.len(), 1);
        assert!(absent[0].1.as_ref().is_some_and(|a| a.not_available));
    });
    let stats = std::fs::read_to_string(mount.join(".stats")).expect(".stats");
    let served = stats
        .lines()
        .find_map(|l| l.strip_prefix("tdfs_peer_served_bytes_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("served bytes in .stats");
    assert!(served >= (8 << 20), "{served} bytes served counted");
}

/// E2B's own peers are not tdfs: a client generated by Python's grpcio-tools
/// from the `.proto` reads a size, a range and a blob.
#[test]
fn a_python_grpc_client_reads_sizes_ranges_and_blobs() {
    if !fuse_available() {
        return;
    }
    require_tool("python3");
    let store = fixture_store("v4-zstd");
    let expected = base_rootfs_diff(&store);
    let (_mount, addr) = mount_serving(&store, &[]);
    let out = tempfile::tempdir().expect("temp dir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (offset, length) = (12_345usize, (4 << 20) + 77);
    let report = run_ok(
        "python3",
        [
            root.join("tests/peer/client.py").to_str().unwrap(),
            root.join("proto").to_str().unwrap(),
            out.path().to_str().unwrap(),
            &addr.to_string(),
            BASE,
            "rootfs.ext4",
            &offset.to_string(),
            &length.to_string(),
            "memfile.header",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&report).expect("JSON report");
    assert_eq!(report["size"], expected.len() as u64, "{report}");
    assert_eq!(report["size_not_available"], false, "{report}");
    assert_eq!(report["snapfile_not_available"], false, "{report}");
    assert_eq!(
        report["range_sha256"],
        sha256_hex(&expected[offset..offset + length]),
        "{report}"
    );
    assert_eq!(report["first_has_availability"], true, "{report}");
    let sizes = report["message_sizes"].as_array().expect("message sizes");
    assert!(sizes.len() >= 3, "{report}");
    assert!(
        sizes
            .iter()
            .all(|s| s.as_u64().is_some_and(|n| n as usize <= MAX_MESSAGE_DATA)),
        "{report}"
    );
    let header = std::fs::read(store.join(BASE).join("memfile.header")).expect("header");
    assert_eq!(report["blob_sha256"], sha256_hex(&header), "{report}");
}

/// With --peer-tls-*, a client with the fleet's certificate reads, one
/// without gets nothing.
#[test]
fn mutual_tls_refuses_a_client_without_a_certificate() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = make_certs(dir.path());
    let store = fixture_store("v4-zstd");
    let (_mount, addr) = mount_serving(
        &store,
        &[
            "--peer-tls-cert",
            certs.server_cert.to_str().unwrap(),
            "--peer-tls-key",
            certs.server_key.to_str().unwrap(),
            "--peer-tls-ca",
            certs.ca.to_str().unwrap(),
        ],
    );
    let ca = Certificate::from_pem(std::fs::read(&certs.ca).unwrap());
    let identity = Identity::from_pem(
        std::fs::read(&certs.client_cert).unwrap(),
        std::fs::read(&certs.client_key).unwrap(),
    );
    runtime().block_on(async {
        let connect = |tls: ClientTlsConfig| async move {
            let channel = Channel::from_shared(format!("https://{addr}"))
                .expect("uri")
                .tls_config(tls)
                .expect("tls config")
                .connect()
                .await?;
            ChunkServiceClient::new(channel)
                .get_build_file_size(GetBuildFileSizeRequest {
                    build_id: BASE.into(),
                    name: "memfile".into(),
                })
                .await
                .map(|r| r.into_inner().total_size)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error>)
        };
        let trusted = ClientTlsConfig::new()
            .ca_certificate(ca.clone())
            .identity(identity);
        let size = connect(trusted).await.expect("a client with a certificate");
        assert!(size > 0);
        let anonymous = ClientTlsConfig::new().ca_certificate(ca);
        assert!(
            connect(anonymous).await.is_err(),
            "a client without a certificate is refused"
        );
        let plain = ChunkServiceClient::connect(format!("http://{addr}")).await;
        if let Ok(mut plain) = plain {
            assert!(
                plain
                    .get_build_file_size(GetBuildFileSizeRequest {
                        build_id: BASE.into(),
                        name: "memfile".into(),
                    })
                    .await
                    .is_err(),
                "plain text is refused"
            );
        }
    });
}

/// Plain text on a non-loopback address needs --peer-insecure: refused
/// before anything is mounted, saying what to give instead.
#[test]
fn plain_text_off_loopback_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = fixture_store("v4-zstd");
    let out = tdfs(&[
        "mount",
        "--foreground",
        "--peer-listen",
        "0.0.0.0:0",
        store.to_str().unwrap(),
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--peer-listen 0.0.0.0:0"), "{stderr}");
    assert!(stderr.contains("only on loopback"), "{stderr}");
    assert!(stderr.contains("--peer-insecure"), "{stderr}");
    assert!(stderr.contains("--peer-tls-cert"), "{stderr}");
}

/// `--peer-insecure` lets plain text listen off loopback.
#[test]
fn peer_insecure_allows_plain_text_anywhere() {
    if !fuse_available() {
        return;
    }
    let store = fixture_store("v4-zstd");
    let mount = MountGuard::start(&store, &["--peer-listen", "0.0.0.0:0", "--peer-insecure"]);
    assert!(
        mount
            .log()
            .contains("serving ChunkService to peers on 0.0.0.0:"),
        "{}",
        mount.log()
    );
}
