//! A throwaway Garage S3 server on loopback for the `s3_*` tests: one node in
//! a temp dir, a bucket `tdfs` and a read-write key, killed on drop.
//!
//! Without `garage` on PATH the tests fail and say how to install it, unless
//! `TDFS_SKIP_S3=1` is set, when `Garage::start` returns `None` (see
//! `tools`).

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use tdfs::store::{RemoteStore, StoreConfig};
use tempfile::TempDir;

use super::process::wait_until;
use super::tools::tool_available;

/// The bucket every server starts with.
pub const BUCKET: &str = "tdfs";
/// The region Garage signs requests for (`s3_region`).
pub const REGION: &str = "garage";
/// Longest wait for the server to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running (or stopped, between `stop` and `restart`) Garage node.
pub struct Garage {
    dir: TempDir,
    config: PathBuf,
    s3_port: u16,
    server: Option<Child>,
    pub key_id: String,
    pub secret: String,
}

impl Garage {
    /// Start a fresh node with the bucket and key; `None` when the S3 tests
    /// are to be skipped (`TDFS_SKIP_S3=1`).
    pub fn start() -> Option<Garage> {
        let found = Command::new("garage")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !tool_available(
            found,
            "TDFS_SKIP_S3",
            "the `garage` S3 server on PATH",
            "install it with `cargo install --locked garage` (or run contrib/garage/install.sh)",
        ) {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir for garage");
        let [rpc_port, s3_port, admin_port] = free_ports();
        let config = dir.path().join("garage.toml");
        let template = include_str!("../../contrib/garage/garage.toml.in");
        let text = template
            .replace("@DIR@", &dir.path().display().to_string())
            .replace("@RPC_PORT@", &rpc_port.to_string())
            .replace("@S3_PORT@", &s3_port.to_string())
            .replace("@ADMIN_PORT@", &admin_port.to_string())
            .replace("@RPC_SECRET@", &random_hex(32));
        write_private(&config, &text);
        let mut garage = Garage {
            dir,
            config,
            s3_port,
            server: None,
            key_id: String::new(),
            secret: String::new(),
        };
        garage.launch();
        let status = garage.cli(&["status"]);
        let node = status
            .lines()
            .skip_while(|l| !l.starts_with("ID"))
            .nth(1)
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no node id in `garage status`:\n{status}"))
            .to_string();
        garage.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        garage.cli(&["layout", "apply", "--version", "1"]);
        garage.cli(&["bucket", "create", BUCKET]);
        let key = garage.cli(&["key", "create", "tdfs-key"]);
        garage.key_id = field(&key, "Key ID:");
        garage.secret = field(&key, "Secret key:");
        garage.cli(&[
            "bucket", "allow", "--read", "--write", BUCKET, "--key", "tdfs-key",
        ]);
        garage.wait_for_s3();
        Some(garage)
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Options reaching this server, with `request_timeout`.
    pub fn options(&self, request_timeout: Duration) -> StoreConfig {
        StoreConfig {
            endpoint_url: Some(self.endpoint()),
            region: Some(REGION.to_string()),
            request_timeout,
            ..StoreConfig::default()
        }
    }

    /// A client builder holding this server's credentials.
    pub fn credentials(&self) -> AmazonS3Builder {
        AmazonS3Builder::new()
            .with_access_key_id(&self.key_id)
            .with_secret_access_key(&self.secret)
    }

    /// A store at `s3://tdfs/{prefix}` with `opts`.
    pub fn store_with(&self, prefix: &str, opts: &StoreConfig) -> RemoteStore {
        RemoteStore::s3_with_builder(self.credentials(), BUCKET, prefix, opts)
            .expect("open the garage store")
    }

    /// A store at `s3://tdfs/{prefix}` with a 20 s request timeout.
    pub fn store(&self, prefix: &str) -> RemoteStore {
        self.store_with(prefix, &self.options(Duration::from_secs(20)))
    }

    /// Environment variables that point the AWS SDK conventions at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
        ]
    }

    /// Kill the server (its data stays for `restart`).
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    /// Freeze (`SIGSTOP`) or thaw (`SIGCONT`) the server: it keeps its
    /// sockets open but answers nothing while frozen.
    pub fn freeze(&self, frozen: bool) {
        let server = self.server.as_ref().expect("garage is running");
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        let pid = i32::try_from(server.id()).expect("pid fits");
        // SAFETY: signals the server process this helper started.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "signal garage: {}", std::io::Error::last_os_error());
        // The signal lands asynchronously: wait until the state shows it.
        let stat = format!("/proc/{pid}/stat");
        let what = format!("garage {}", if frozen { "stopped" } else { "running" });
        wait_until(START_TIMEOUT, &what, || {
            let text = fs::read_to_string(&stat).expect("read the server's /proc stat");
            // The state follows the parenthesised command name.
            let state = text
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or("")
                .to_string();
            match (state == "T") == frozen {
                true => Ok(()),
                false => Err(format!("state {state:?}")),
            }
        });
    }

    /// Start the stopped server again on the same ports and data.
    pub fn restart(&mut self) {
        assert!(self.server.is_none(), "garage is still running");
        self.launch();
        self.wait_for_s3();
    }

    fn launch(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("garage log file");
        let server = Command::new("garage")
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn garage server");
        self.server = Some(server);
        wait_until(START_TIMEOUT, "garage up", || {
            let status = Command::new("garage")
                .arg("-c")
                .arg(&self.config)
                .arg("status")
                .output()
                .expect("run garage status");
            self.check_alive();
            match status.status.success() {
                true => Ok(()),
                false => Err(format!("log:\n{}", self.log())),
            }
        });
    }

    /// Wait until the S3 API answers an HTTP request (any answer will do:
    /// anonymous requests are refused once the node serves requests).
    fn wait_for_s3(&mut self) {
        wait_until(START_TIMEOUT, "garage's S3 API answering", || {
            if self
                .probe_s3()
                .is_some_and(|status| status.starts_with("HTTP/1.1 4"))
            {
                return Ok(());
            }
            self.check_alive();
            Err(format!("log:\n{}", self.log()))
        });
    }

    fn probe_s3(&self) -> Option<String> {
        let mut conn = TcpStream::connect(("127.0.0.1", self.s3_port)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let request = format!(
            "GET /{BUCKET}/ HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.s3_port
        );
        conn.write_all(request.as_bytes()).ok()?;
        let mut head = [0u8; 12];
        conn.read_exact(&mut head).ok()?;
        Some(String::from_utf8_lossy(&head).into_owned())
    }

    fn check_alive(&mut self) {
        if let Some(server) = self.server.as_mut()
            && let Ok(Some(exit)) = server.try_wait()
        {
            panic!("garage exited with {exit}:\n{}", self.log());
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("garage")
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run garage");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "garage {args:?} failed: {}{}\nserver log:\n{}",
            stdout,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        stdout
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn log(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let skip = text.chars().count().saturating_sub(4000);
        text.chars().skip(skip).collect()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        // SIGKILL ends a frozen server too.
        self.stop();
    }
}

/// Three distinct free loopback ports (held together while chosen).
fn free_ports() -> [u16; 3] {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    let port = |i: usize| listeners[i].local_addr().expect("local addr").port();
    [port(0), port(1), port(2)]
}

fn random_hex(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes * 2);
    while out.len() < bytes * 2 {
        out.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    out.truncate(bytes * 2);
    out
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .expect("write garage.toml");
    file.write_all(text.as_bytes()).expect("write garage.toml");
}

/// The value after `label` on its line of a `garage key` report.
fn field(report: &str, label: &str) -> String {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {label:?} in:\n{report}"))
}
