//! A damaged cache file under a Chunker (no mount): truncated while its
//! units are present, every read (copied with `read_blocks`, in place with
//! `read_in_place`) still returns the right bytes, the lost units are
//! fetched again, counted, and the whole-diff check passes again. On the
//! code before `chunker/damage.rs` these reads died of SIGBUS.

mod common;

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;

use common::chunker::{Env, MIB, PAGE, cache_files, test_data, wait_budget_empty};
use sha2::{Digest, Sha256};
use tdfs::chunker::{CHUNK_SIZE, CacheBudget, Chunker, DiffSpec};

/// Three chunks and a partial one; frames of 1 MiB.
const SIZE: usize = (3 * CHUNK_SIZE + 5 * PAGE + 100) as usize;

/// Frame size of the compressed objects.
const FRAME: usize = MIB as usize;

/// The only cache file of `env`.
fn cache_file(env: &Env) -> PathBuf {
    let files = cache_files(&env.config.cache_dir);
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

fn truncate(path: &PathBuf, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn read_all(c: &Chunker) -> Vec<u8> {
    let mut buf = vec![0u8; c.size() as usize];
    c.read_blocks(&mut buf, 0).unwrap();
    buf
}

/// Read every page in place, comparing with `data`.
fn check_in_place(c: &Chunker, data: &[u8]) {
    let mut off = 0;
    while off < data.len() {
        let len = (64 * PAGE as usize).min(data.len() - off);
        let block = c.read_in_place(off as u64, len as u64).unwrap();
        assert!(
            *block == data[off..off + block.len()],
            "wrong bytes at {off}"
        );
        off += block.len();
    }
}

fn damaged_twice(env: &Env, spec: DiffSpec, data: &[u8]) {
    let c = env.chunker(spec);
    c.verify_when_complete(Sha256::digest(data).into());
    assert!(read_all(&c) == data);
    let path = cache_file(env);
    let requests = env.stats.store_requests.load(Relaxed);
    let damaged = env.stats.cache_damaged_units.load(Relaxed);

    // Copies (pread) first: the whole file lost.
    truncate(&path, 0);
    assert!(read_all(&c) == data, "wrong bytes after a truncation");
    assert!(
        env.stats.store_requests.load(Relaxed) > requests,
        "refetched"
    );
    assert!(env.stats.cache_damaged_units.load(Relaxed) > damaged);
    assert_eq!(fs::metadata(&path).unwrap().len(), c.size(), "length back");
    assert_eq!(c.cached_bytes(), c.size());

    // In place (populate) next: the file cut inside the second megabyte,
    // so the units before it stay and are not fetched again.
    let damaged = env.stats.cache_damaged_units.load(Relaxed);
    truncate(&path, MIB + 3 * PAGE);
    check_in_place(&c, data);
    assert!(env.stats.cache_damaged_units.load(Relaxed) > damaged);
    // The whole-diff check ran again on the refetched diff and passed.
    check_in_place(&c, data);
    assert!(read_all(&c) == data);
}

#[test]
fn truncated_cache_files_are_refetched_not_faulted_on() {
    let env = Env::new();
    let data = test_data(SIZE, 31);
    for spec in env.objects(&data, FRAME) {
        damaged_twice(&env, spec, &data);
    }
}

#[test]
fn truncated_cache_files_are_refetched_under_a_cache_budget() {
    let mut env = Env::new();
    env.config.cache_budget = Some(CacheBudget::new(64 * MIB));
    let data = test_data(SIZE, 32);
    for spec in env.objects(&data, FRAME) {
        damaged_twice(&env, spec, &data);
    }
    let budget = env.config.cache_budget.clone().unwrap();
    wait_budget_empty(&budget, "dropped Chunkers give their bytes back");
}

#[test]
fn a_cache_file_truncated_while_idle_heals_on_the_next_fetch() {
    let env = Env::new();
    let data = test_data(SIZE, 33);
    let c = env.chunker(env.put_raw(&data));
    // Only the first chunk cached; the file then loses all of it.
    let mut head = vec![0u8; PAGE as usize];
    c.read_blocks(&mut head, 0).unwrap();
    truncate(&cache_file(&env), 0);
    // A fetch of another chunk finds the file short before it writes.
    let mut tail = vec![0u8; PAGE as usize];
    c.read_blocks(&mut tail, 2 * CHUNK_SIZE).unwrap();
    assert!(tail == data[2 * CHUNK_SIZE as usize..][..PAGE as usize]);
    check_in_place(&c, &data);
    assert!(read_all(&c) == data);
}
