//! The whole-diff check: the first time every byte of a diff is cached, it
//! is hashed against the SHA-256 its header records (`verify_when_complete`);
//! on a mismatch the diff is failed for good and its cached bytes are never
//! served again.

use std::sync::atomic::Ordering;

use sha2::{Digest, Sha256};

use super::{ChunkerError, Inner};
use crate::format::hex;

impl Inner {
    /// Hash the whole diff, once, when it is all present and a checksum is
    /// known. On a mismatch every later lookup fails with
    /// `ChunkerError::ChecksumMismatch`.
    pub(super) fn check_whole_diff(&self) {
        let Some(expected) = self.expected_sha256.get() else {
            return;
        };
        if self.checksum_checked.swap(true, Ordering::AcqRel) {
            return;
        }
        let all = 0..self.layout.units();
        let pins = self.pin(&all);
        if !self.range_present(&(0..self.size), &all) {
            // Evicted meanwhile: check on a later completion.
            self.checksum_checked.store(false, Ordering::Release);
            return;
        }
        // SAFETY: all present (checked above) and pinned against eviction.
        let got: [u8; 32] = Sha256::digest(unsafe { self.cache.slice(0, self.size) }).into();
        drop(pins);
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
        let _ = self.checksum_failed.set(err);
    }
}
