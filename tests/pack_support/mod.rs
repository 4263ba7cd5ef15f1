//! Helpers shared by the pack and CLI integration tests: images that look
//! like real ones, an independent flattener (the oracle), and running the
//! built binary.

#![allow(dead_code)] // each test crate uses a different part

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use tdfs::format::{Compression, FileKind, Header, ObjectKey};
use tdfs::store::{LocalStore, Store};
use uuid::Uuid;

pub const PAGE: usize = 4096;

/// Deterministic bytes (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn page(&mut self) -> Vec<u8> {
        match self.below(5) {
            0 => vec![0; PAGE],
            1 => vec![self.next() as u8; PAGE],
            2 => (0..PAGE).map(|i| b"tdfs pack test "[i % 15]).collect(),
            _ => (0..PAGE / 8)
                .flat_map(|_| self.next().to_le_bytes())
                .collect(),
        }
    }

    /// An image of `pages` pages: runs of zero pages, repeated and random ones.
    pub fn image(&mut self, pages: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(pages * PAGE);
        while out.len() < pages * PAGE {
            let run = 1 + self.below(600) as usize;
            let zero = self.below(3) == 0;
            for _ in 0..run.min(pages - out.len() / PAGE) {
                if zero {
                    out.extend_from_slice(&[0; PAGE]);
                } else {
                    out.extend_from_slice(&self.page());
                }
            }
        }
        out
    }

    /// Change `count` random pages of `image` (new data, zeros or repeats).
    pub fn mutate(&mut self, image: &mut [u8], count: usize) {
        let pages = image.len() / PAGE;
        for _ in 0..count {
            let p = self.below(pages as u64) as usize;
            let page = self.page();
            image[p * PAGE..(p + 1) * PAGE].copy_from_slice(&page);
        }
    }
}

pub fn open_store(dir: &Path) -> Arc<dyn Store> {
    Arc::new(LocalStore::open(dir).expect("store dir"))
}

pub fn read_header(store: &dyn Store, build: Uuid, file: FileKind) -> Header {
    let bytes = store
        .read_all(&ObjectKey::header(build, file), 1 << 30)
        .expect("header");
    Header::decode(&bytes).expect("header decodes")
}

/// The whole uncompressed diff of `build`'s `file`, decoded as a stream of
/// frames without looking at any frame table: independent of the packer's
/// and the reader's table handling.
pub fn whole_diff(store: &dyn Store, build: Uuid, file: FileKind) -> Vec<u8> {
    for c in [Compression::None, Compression::Zstd, Compression::Lz4] {
        let key = ObjectKey::data(build, file, c);
        let Ok(raw) = store.read_all(&key, 1 << 32) else {
            continue;
        };
        let mut out = Vec::new();
        match c {
            Compression::None => out = raw,
            Compression::Zstd => {
                zstd::stream::read::Decoder::new(&raw[..])
                    .unwrap()
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Compression::Lz4 => {
                // One decoder per frame: lz4_flex stops at a frame's end.
                let mut rest = &raw[..];
                while !rest.is_empty() {
                    lz4_flex::frame::FrameDecoder::new(&mut rest)
                        .read_to_end(&mut out)
                        .unwrap();
                }
            }
        }
        return out;
    }
    panic!("build {build} has no {file} data object");
}

/// The template file flattened by the oracle: mappings over whole diffs.
pub fn oracle_flatten(store: &dyn Store, build: Uuid, file: FileKind) -> Vec<u8> {
    let header = read_header(store, build, file);
    let size = header.metadata.size as usize;
    let mut out = vec![0u8; size];
    let mut diffs: HashMap<Uuid, Vec<u8>> = HashMap::new();
    for m in header.mappings.as_slice() {
        if m.is_zero() || m.offset as usize >= size {
            continue;
        }
        let diff = diffs
            .entry(m.build_id)
            .or_insert_with(|| whole_diff(store, m.build_id, file));
        let start = m.offset as usize;
        let len = (m.length as usize).min(size - start);
        let src = m.storage_offset as usize;
        out[start..start + len].copy_from_slice(&diff[src..src + len]);
    }
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

/// Run the built `tdfs` binary.
pub fn tdfs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tdfs"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run tdfs")
}

/// Run `tdfs`, require success, return stdout.
pub fn tdfs_ok(args: &[&str]) -> String {
    let out = tdfs(args);
    assert!(
        out.status.success(),
        "tdfs {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/e2b")
}

/// The fixture stores (directories holding manifest.json).
pub fn fixture_stores() -> Vec<PathBuf> {
    let mut stores: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("manifest.json").is_file())
        .collect();
    stores.sort();
    assert_eq!(stores.len(), 4, "fixture stores missing");
    stores
}

pub fn manifest(store: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(store.join("manifest.json")).unwrap()).unwrap()
}

/// A required external program; fails loudly when it is missing.
pub fn require_tool(name: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is required by this test (install it: apt-get install {name})"
    );
}
