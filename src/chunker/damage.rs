//! A damaged cache file: bytes marked present that can no longer be read,
//! because something truncated the file (an operator cleaning the cache
//! directory, a bug) or its disk fails (EIO). The daemon must not die of
//! it and must serve nothing wrong.
//!
//! Nothing in user space reads the mapping where bytes may be gone: a copy
//! is a `pread` (`CacheFile::read_at`), and a range served in place is
//! populated first (`CacheFile::populate`), so the damage shows as an error,
//! never as a SIGBUS. A reader notes the Chunker's discard epoch before it
//! tests the present bits and checks it again after the read or the
//! populate: every drop of present units (eviction, damage) advances the
//! epoch before it clears their bits (`clear_present`, the one place bits
//! are cleared), and damage handling gives the file its length back only
//! after, so a read that may have seen the hole left behind (even if the
//! unit was fetched again since, its bits set again) looks its range up
//! again rather than serve it. The whole-diff SHA-256 check (`verify`) uses
//! the same epoch. This is the whole contract between `present` and the
//! epoch: bits are set only by a fetch's publish, which needs no epoch
//! change (a reader that saw them clear just looks again).
//!
//! On such an error the reader drops its pins and repairs the file
//! (`cache_damaged`): under the session lock, every unit whose bytes are
//! gone (the ones the read touched, and all units reaching past a truncated
//! file's end) is dropped as eviction drops it (`Inner::discard`: pins
//! respected, present bits cleared), but without punching its hole: a
//! reader may hold the intact part of a cut unit right now (nothing pins
//! it without a budget), and the refetch writes the same bytes there. Counted in
//! `cache_damaged_units`; then, when no unit past the end is left present,
//! the file gets its length back. The reader looks its range up again,
//! which fetches the dropped units anew, verified like any fetch. One
//! warning per cache file is logged. A read backs off and tries again up to
//! `MAX_REPAIRS` times (a unit another reader pins, or whose fetch runs, is
//! dropped by a later repair), then fails with a `Cache` error (EIO); the
//! next read tries again.
//!
//! A fetch checks the file's length before each write, since a `pwrite`
//! past a truncated end would extend the file with a hole under units still
//! marked present. It repairs the file first, dropping the part of its own
//! chunk already written (that bytes are lost, pins or not), and then fails
//! with a `Cache` error when its own unit lost bytes or the file could not
//! be repaired: its readers look again (above) and start the unit over.
//!
//! Races left, documented rather than locked against (the hit path takes no
//! lock): damage between a populate and the kernel's copy of that reply
//! makes the copy fail, so that one read gets EIO and the next one finds
//! the damage; a file truncated again between a fetch's length check and
//! its write is found by the next read of the units it hides.

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::{ChunkerError, Inner};

/// Tries one read makes before it fails with EIO, backing off 2, 4, 8 and
/// 16 ms: what a repair leaves (a unit another reader pins, a fetch that
/// runs) is gone by then in every test run.
pub(super) const MAX_REPAIRS: u32 = 4;

/// What this file keeps of a Chunker (`Inner::damage`), changed only here.
#[derive(Default)]
pub(super) struct Damage {
    /// Set once damage to the cache file was logged (one warning per file).
    reported: AtomicBool,
    /// Advanced by every drop of present units, before their bits are
    /// cleared (`clear_present`): see the module doc.
    discard_epoch: AtomicU64,
}

impl Inner {
    /// Clear the present bits of unit `u`, which is being dropped (evicted,
    /// or lost to damage): the one place present bits are cleared. The
    /// discard epoch advances first, so a reader that noted the epoch
    /// before it tested the bits sees the change after its read (the
    /// module doc).
    pub(super) fn clear_present(&self, u: usize) {
        self.damage.discard_epoch.fetch_add(1, Ordering::AcqRel);
        let range = self.layout.unit_range(u);
        self.present.clear(self.layout.bits_of(&range, &(u..u + 1)));
    }

    /// Reading the present bytes of `units` from the cache file failed with
    /// `cause`: drop them, and every unit lost to a truncation, so they are
    /// fetched again. `own` is the unit whose fetch the caller runs (its
    /// written part is dropped despite the session). The caller holds no
    /// pin. Returns whether the file is whole again (nothing lost left
    /// present, the length back) and whether `own` lost bytes. See the
    /// module doc.
    pub(super) fn cache_damaged(
        &self,
        units: Range<usize>,
        cause: &io::Error,
        own: Option<usize>,
    ) -> Repaired {
        let sessions = self.sessions.lock();
        let file_len = match self.cache.current_len() {
            Ok(len) => len.min(self.size),
            Err(_) => self.size,
        };
        let truncated = file_len < self.size;
        let mut dropped = 0u64;
        let mut own_dropped = false;
        let mut whole = true;
        for u in 0..self.layout.units() {
            let range = self.layout.unit_range(u);
            let lost = range.end > file_len || units.contains(&u);
            if !lost || self.unit_cached_bytes(u) == 0 {
                continue;
            }
            let mine = own == Some(u);
            if sessions.contains_key(&u) && !mine {
                whole = false;
                continue;
            }
            match self.discard(u, mine, false) {
                Some((bytes, _)) if bytes > 0 => {
                    dropped += 1;
                    own_dropped |= mine;
                }
                Some(_) => {}
                None => whole = false,
            }
        }
        let restored = match truncated && whole {
            true => self.cache.restore_len().err(),
            false => None,
        };
        if dropped > 0 {
            // The units fetched again are checked with the rest.
            self.integrity.recheck();
        }
        drop(sessions);
        self.stats
            .cache_damaged_units
            .fetch_add(dropped, Ordering::Relaxed);
        if !self.damage.reported.swap(true, Ordering::Relaxed) {
            let what = match truncated {
                true => format!("was truncated to {file_len} bytes"),
                false => format!("cannot be read ({cause})"),
            };
            log::warn!(
                "{}: cache file {} {what}; dropped {dropped} cached chunks or frames, they are \
                 fetched again (keep the cache directory out of cache cleaners, and check its \
                 disk); further damage to this file is counted in .stats, not logged",
                self.key,
                self.cache.path().display()
            );
        }
        if let Some(e) = &restored {
            log::warn!(
                "{}: giving truncated cache file {} back its length: {e}",
                self.key,
                self.cache.path().display()
            );
        }
        Repaired {
            whole: whole && restored.is_none(),
            own_dropped,
        }
    }

    /// After reading `range` from the cache file failed with `cause`:
    /// repair the file (`cache_damaged`) and back off, so the caller looks
    /// the range up again; after `MAX_REPAIRS` tries, fail the read.
    ///
    /// # Errors
    /// `Cache` (the read's cause) once the tries are used up.
    pub(super) fn repair(
        &self,
        repairs: &mut u32,
        range: &Range<u64>,
        cause: io::Error,
    ) -> Result<(), ChunkerError> {
        if *repairs >= MAX_REPAIRS {
            return Err(self.cache_error(range.start, cause));
        }
        self.cache_damaged(self.units_of(range), &cause, None);
        self.back_off(repairs, &cause);
        Ok(())
    }

    /// Count a try and wait a little before the next: what a repair left
    /// behind (a pinned unit, a running fetch) is short-lived.
    pub(super) fn back_off(&self, repairs: &mut u32, cause: &io::Error) {
        *repairs += 1;
        log::debug!("{}: cache file damaged ({cause}), looking again", self.key);
        std::thread::sleep(Duration::from_millis(1 << *repairs));
    }

    /// Before the fetch of unit `u` writes at `off`: when the file is
    /// shorter than the diff (truncated), repair it first, since a write
    /// past its end would extend it with a hole under units still marked
    /// present.
    ///
    /// # Errors
    /// `Cache` when the file could not be repaired, or `u` itself lost
    /// bytes already written (its readers then start it over).
    pub(super) fn check_cache_len(&self, u: usize, off: u64) -> Result<(), ChunkerError> {
        let len = self
            .cache
            .current_len()
            .map_err(|e| self.cache_error(off, e))?;
        if len >= self.size {
            return Ok(());
        }
        let cause = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the cache file was truncated to {len} bytes"),
        );
        match self.cache_damaged(0..0, &cause, Some(u)) {
            Repaired {
                whole: true,
                own_dropped: false,
            } => Ok(()),
            _ => Err(self.cache_error(off, cause)),
        }
    }

    /// The discard epoch: advanced by every drop of present units. A reader
    /// notes it before a lookup and keeps what it read only if it is
    /// unchanged after.
    pub(super) fn discard_epoch(&self) -> u64 {
        self.damage.discard_epoch.load(Ordering::Acquire)
    }

    /// The units holding `range` (inside the diff); none for a range in a
    /// gap of a sparse frame table.
    pub(super) fn units_of(&self, range: &Range<u64>) -> Range<usize> {
        if range.is_empty() {
            return 0..0;
        }
        self.layout
            .span(range.start, range.end, usize::MAX)
            .map_or(0..0, |(units, _)| units)
    }
}

/// What a repair of the cache file achieved.
pub(super) struct Repaired {
    /// Nothing lost is left present, and the file has its length back.
    whole: bool,
    /// The caller's own unit lost bytes it had written.
    own_dropped: bool,
}
