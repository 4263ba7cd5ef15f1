//! The whole-diff check: the first time every byte of a diff is cached, it
//! is hashed against the SHA-256 its header records (`verify_when_complete`);
//! on a mismatch the diff is failed for good and its cached bytes are never
//! served again. The bytes are read with `pread`: a damaged cache file
//! (`damage`) is repaired and the check runs again once the diff is whole.

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

use super::{ChunkerError, Inner};
use crate::format::hex;

/// Bytes hashed per `pread`.
const HASH_PIECE: u64 = 1 << 20;

/// The whole-diff check's state (`Inner::integrity`), changed only here.
#[derive(Default)]
pub(super) struct Integrity {
    /// SHA-256 the whole diff must have, checked once it is all cached.
    expected: OnceLock<[u8; 32]>,
    /// Set once the check has run (or is running); cleared when it must
    /// run again: the diff was not whole after all, or units were dropped
    /// and fetched anew (`recheck`).
    checked: AtomicBool,
    /// The check failed: nothing of this diff is served.
    failed: OnceLock<ChunkerError>,
}

impl Integrity {
    /// Check the diff against `sha256` once it is whole; only the first
    /// call counts.
    pub(super) fn expect(&self, sha256: [u8; 32]) {
        let _ = self.expected.set(sha256);
    }

    /// The error every lookup returns once the check failed.
    pub(super) fn failed(&self) -> Option<&ChunkerError> {
        self.failed.get()
    }

    /// Run the check again at the next completion: units were dropped and
    /// are fetched anew, so the hashed bytes are not the ones served.
    pub(super) fn recheck(&self) {
        self.checked.store(false, Ordering::Release);
    }
}

impl Inner {
    /// Hash the whole diff, once, when it is all present and a checksum is
    /// known. On a mismatch every later lookup fails with
    /// `ChunkerError::ChecksumMismatch`.
    pub(super) fn check_whole_diff(&self) {
        let integrity = &self.integrity;
        let Some(expected) = integrity.expected.get() else {
            return;
        };
        if integrity.checked.swap(true, Ordering::AcqRel) {
            return;
        }
        let all = 0..self.layout.units();
        // No pins: an eviction or damage while the diff is hashed shows in
        // the discard epoch (see `damage`), and pins would keep damage
        // handling from dropping the lost units meanwhile.
        let epoch = self.discard_epoch();
        if !self.range_present(&(0..self.size), &all) {
            // Evicted meanwhile: check on a later completion.
            integrity.recheck();
            return;
        }
        let got = match self.hash_cache() {
            Ok(got) if self.discard_epoch() == epoch => got,
            // Dropped while hashed: check on a later completion.
            Ok(_) => {
                integrity.recheck();
                return;
            }
            Err(e) => {
                integrity.recheck();
                self.cache_damaged(0..0, &e, None);
                return;
            }
        };
        if got == *expected {
            log::debug!("{}: whole diff matches its SHA-256", self.key);
            return;
        }
        let err = ChunkerError::ChecksumMismatch {
            key: self.key,
            expected: hex(expected),
            got: hex(&got),
        };
        log::error!("{err}");
        let _ = integrity.failed.set(err);
    }
}

impl Inner {
    /// SHA-256 of the cache file's bytes, read with `pread` (see `damage`).
    fn hash_cache(&self) -> io::Result<[u8; 32]> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; HASH_PIECE.min(self.size) as usize];
        let mut off = 0;
        while off < self.size {
            let n = HASH_PIECE.min(self.size - off) as usize;
            self.cache.read_at(&mut buf[..n], off)?;
            hasher.update(&buf[..n]);
            off += n as u64;
        }
        Ok(hasher.finalize().into())
    }
}
