//! A Chunker with a `PeerSource`: units the peer sends enter the cache
//! exactly as store bytes do, frames come from a peer uncompressed (no
//! decoding), and a peer that fails (after scribbling over the buffer) is
//! replaced by the store in the same fetch, with nothing it sent served.
//! A read answering a peer never asks a peer, and refuses at once while
//! this host is itself asking a peer for the unit (no loop between hosts).
//! No network: the peer is a fake source.

mod common;

use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use common::chunker::{Env, MIB, test_data};
use tdfs::chunker::{Chunker, ChunkerError, PeerFallback, PeerSource};
use tdfs::format::{Compression, FileKind};
use uuid::Uuid;

/// Serves `data` for units `serves` says yes to; fails the others with
/// `Short` after filling the buffer with garbage. Records what it was asked.
#[derive(Debug)]
struct FakeSource {
    data: Vec<u8>,
    fails: fn(u64) -> bool,
    asked: Mutex<Vec<(u64, Range<u64>)>>,
}

impl PeerSource for FakeSource {
    fn read_unit(
        &self,
        _build: Uuid,
        file: FileKind,
        unit: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), PeerFallback> {
        assert_eq!(file, FileKind::Memfile);
        let range = offset..offset + buf.len() as u64;
        self.asked.lock().unwrap().push((unit, range.clone()));
        if (self.fails)(unit) {
            buf.fill(0xAA);
            return Err(PeerFallback::Short);
        }
        buf.copy_from_slice(&self.data[range.start as usize..range.end as usize]);
        Ok(())
    }
}

fn env_with(source: Arc<FakeSource>) -> Env {
    let mut env = Env::new();
    env.config.peers = Some(source);
    env
}

#[test]
fn chunks_from_a_peer_and_its_failures_from_the_store() {
    let data = test_data((10 * MIB + 12345) as usize, 7);
    let source = Arc::new(FakeSource {
        data: data.clone(),
        fails: |u| u % 2 == 1,
        asked: Mutex::new(Vec::new()),
    });
    let env = env_with(source.clone());
    let chunker = env.chunker(env.put_raw(&data));
    let mut got = vec![0; data.len()];
    chunker.read_blocks(&mut got, 0).unwrap();
    assert!(got == data, "peer and store bytes together are the diff");
    let stats = &env.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    // Units 0 and 2 from the peer (4 MiB + the 2 MiB tail), 1 from the store.
    assert_eq!(load(&stats.peer_requests), 3);
    assert_eq!(load(&stats.peer_bytes), 4 * MIB + 2 * MIB + 12345);
    assert_eq!(load(&stats.store_requests), 1);
    assert_eq!(env.store.requests(), 1);
    let text = stats.render_prometheus();
    assert!(
        text.contains("tdfs_peer_fallbacks_total{reason=\"short\"} 1"),
        "{text}"
    );
    let mut asked = source.asked.lock().unwrap().clone();
    asked.sort_by_key(|(u, _)| *u);
    assert_eq!(
        asked,
        [
            (0, 0..4 * MIB),
            (1, 4 * MIB..8 * MIB),
            (2, 8 * MIB..10 * MIB + 12345)
        ]
    );
}

#[test]
fn frames_from_a_peer_are_their_uncompressed_ranges() {
    let data = test_data((3 * MIB + 100) as usize, 9);
    let source = Arc::new(FakeSource {
        data: data.clone(),
        fails: |_| false,
        asked: Mutex::new(Vec::new()),
    });
    let env = env_with(source.clone());
    let spec = env.put_framed(&data, Compression::Zstd, &[MIB as usize]);
    let frames: Vec<_> = spec.frames.frames().iter().map(|f| f.range_u()).collect();
    let chunker = env.chunker(spec);
    let mut got = vec![0; data.len()];
    chunker.read_blocks(&mut got, 0).unwrap();
    assert!(got == data);
    assert_eq!(env.store.requests(), 0, "every frame came from the peer");
    let mut asked = source.asked.lock().unwrap().clone();
    asked.sort_by_key(|(u, _)| *u);
    let ranges: Vec<_> = asked.into_iter().map(|(_, r)| r).collect();
    assert_eq!(ranges, frames, "each frame's uncompressed range");
    assert_eq!(chunker.cached_bytes(), data.len() as u64);
}

#[test]
fn a_read_for_a_peer_reads_the_store_only() {
    let data = test_data((8 * MIB + 5) as usize, 3);
    let source = Arc::new(FakeSource {
        data: data.clone(),
        fails: |_| false,
        asked: Mutex::new(Vec::new()),
    });
    let env = env_with(source.clone());
    let chunker = env.chunker(env.put_raw(&data));
    let mut got = vec![0; data.len()];
    chunker.read_for_peer(&mut got, 0).unwrap();
    assert!(got == data);
    assert!(source.asked.lock().unwrap().is_empty(), "no peer asked");
    assert_eq!(env.store.requests(), 3, "every chunk from the store");
}

/// A peer that, asked for a unit, asks this very host back for it (what
/// two hosts whose lists name each other as owner do), then fails.
#[derive(Debug)]
struct AsksBack {
    chunker: OnceLock<Weak<Chunker>>,
    answer: Mutex<Option<Result<(), ChunkerError>>>,
}

impl PeerSource for AsksBack {
    fn read_unit(
        &self,
        _build: Uuid,
        _file: FileKind,
        _unit: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), PeerFallback> {
        let chunker = self.chunker.get().and_then(Weak::upgrade).unwrap();
        let mut back = vec![0; buf.len()];
        *self.answer.lock().unwrap() = Some(chunker.read_for_peer(&mut back, offset));
        Err(PeerFallback::NotAvailable)
    }
}

#[test]
fn a_read_for_a_peer_refuses_while_this_host_asks_a_peer() {
    let data = test_data((4 * MIB) as usize, 4);
    let source = Arc::new(AsksBack {
        chunker: OnceLock::new(),
        answer: Mutex::new(None),
    });
    let mut env = Env::new();
    env.config.peers = Some(source.clone());
    env.config.fetch_timeout = Duration::from_secs(5);
    let chunker = Arc::new(env.chunker(env.put_raw(&data)));
    source.chunker.set(Arc::downgrade(&chunker)).unwrap();
    let started = Instant::now();
    let mut got = vec![0; data.len()];
    chunker.read_blocks(&mut got, 0).unwrap();
    assert!(got == data, "the store served the unit");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no wait on the loop: {:?}",
        started.elapsed()
    );
    let answer = source.answer.lock().unwrap().take().unwrap();
    assert!(
        matches!(answer, Err(ChunkerError::AskingPeer { .. })),
        "{answer:?}"
    );
}
