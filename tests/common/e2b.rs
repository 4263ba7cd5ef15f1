//! An E2B cluster in miniature for tests: a real `redis-server` (E2B's
//! registry of origin peers) on a free loopback port, and an E2B-like
//! origin peer (`e2b_peer.py`, Python grpcio) serving one build that the
//! test's store lacks. Both are killed by their guards.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::peer::free_loopback_addr;
use super::process::require_tool;
use super::redis::RedisServer;

/// The fake origin peer of `build`, serving the objects in `dir`; killed
/// on drop (or by `kill`).
pub struct E2bPeer {
    child: Option<Child>,
    pub flip_file: PathBuf,
    /// The generated Python code and the flip file.
    _out: tempfile::TempDir,
}

impl E2bPeer {
    /// Start it and wait until it registered `peer:<build>` in `redis`.
    /// `blocks` are the memfile's and rootfs's block sizes (bytes per
    /// message of a seekable read).
    pub fn start(dir: &Path, build: &str, redis: &RedisServer, blocks: (u64, u64)) -> E2bPeer {
        require_tool("python3");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out_dir = tempfile::tempdir().expect("tempdir");
        let out = out_dir.path();
        let flip_file = out.join("uploaded");
        let port = free_loopback_addr().port();
        let mut child = Command::new("python3")
            .arg(root.join("tests/common/e2b_peer.py"))
            .arg(root.join("proto"))
            .arg(out)
            .arg(port.to_string())
            .arg(dir)
            .arg(build)
            .arg(redis.port().to_string())
            .arg(&flip_file)
            .arg(blocks.0.to_string())
            .arg(blocks.1.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start e2b_peer.py");
        let stdout = child.stdout.take().expect("stdout");
        let mut peer = E2bPeer {
            child: Some(child),
            flip_file,
            _out: out_dir,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("e2b_peer.py ready within 60 s");
        if line.trim() != "serving" {
            peer.kill();
            panic!("e2b_peer.py did not start: {line:?}");
        }
        peer
    }

    /// Its "upload" is done: every answer says `use_storage` from now on.
    pub fn flip(&self) {
        std::fs::write(&self.flip_file, b"").expect("write the flip file");
    }

    /// Kill it (its Redis key stays, as a crashed E2B node's does).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for E2bPeer {
    fn drop(&mut self) {
        self.kill();
    }
}
