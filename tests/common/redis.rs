//! A throwaway `redis-server` on a free loopback port (no persistence, in a
//! temporary directory), killed on drop: the fleet registry of the
//! `--peer-registry` tests. Without `redis-server` on PATH the tests fail
//! and say how to install it, unless `TDFS_SKIP_REDIS=1` is set, when
//! `RedisServer::start` returns `None`.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Longest wait for the server to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running (or stopped) redis-server.
pub struct RedisServer {
    _dir: TempDir,
    port: u16,
    server: Option<Child>,
}

impl RedisServer {
    /// Start one; `None` when the Redis tests are to be skipped.
    pub fn start() -> Option<RedisServer> {
        if std::env::var("TDFS_SKIP_REDIS").is_ok_and(|v| v == "1") {
            eprintln!("TDFS_SKIP_REDIS=1: skipping a test that needs redis-server");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "the registry tests need redis-server on PATH ({e}): apt-get install redis-server, or set TDFS_SKIP_REDIS=1 to skip them"
                )
            });
        let redis = RedisServer {
            _dir: dir,
            port,
            server: Some(server),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while redis.cli(&["PING"]).as_deref() != Some("PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on port {port}"
            );
            sleep(Duration::from_millis(50));
        }
        Some(redis)
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` with `args` against this server (bounded); its output,
    /// trimmed, or `None` when it failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("timeout")
            .args([
                "5",
                "redis-cli",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Kill the server (as a crash or an outage would).
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
