//! A throwaway `redis-server` on a free loopback port (no persistence, in a
//! temporary directory), killed on drop: the fleet registry of the
//! `--peer-registry` tests. Without `redis-server` on PATH the tests fail
//! and say how to install it, unless `TDFS_SKIP_REDIS=1` is set, when
//! `RedisServer::start` returns `None` (`tools`).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::process::wait_until;
use super::tools::tool_available;

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
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !tool_available(
            found,
            "TDFS_SKIP_REDIS",
            "redis-server",
            "the registry tests need it (apt-get install redis-server)",
        ) {
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
            .expect("spawning redis-server");
        let redis = RedisServer {
            _dir: dir,
            port,
            server: Some(server),
        };
        wait_until(START_TIMEOUT, "redis-server answers", || {
            redis.cli(&["PING"]).as_deref() == Some("PONG")
        });
        Some(redis)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
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
