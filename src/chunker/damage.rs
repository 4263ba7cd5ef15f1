//! A damaged cache file: bytes marked present that can no longer be read,
//! because something truncated the file (an operator cleaning the cache
//! directory, a bug) or its disk fails (EIO). The daemon must not die of
//! it and must serve nothing wrong.
//!
//! Nothing in user space reads the mapping where bytes may be gone: a copy
//! is a `pread` (`CacheFile::read_at`), and a range served in place is
//! populated first (`CacheFile::populate`), so the damage shows as an error,
//! never as a SIGBUS. After the read or the populate, the range's present
//! bits are tested again: a unit dropped meanwhile (by eviction or by
//! damage handling, which clears the bits before it gives the file its
//! length back) is looked up again rather than served as the hole it now is.
//!
//! On such an error the reader drops its pins and calls `cache_damaged`:
//! under the session lock, every unit whose bytes are gone (the ones the
//! read touched, and all units reaching past a truncated file's end) is
//! dropped as eviction drops it (`Inner::discard`: pins respected, present
//! bits cleared, hole punched), counted in `cache_damaged_units`; then, when
//! no unit past the end is left present, the file gets its length back.
//! The reader looks its range up again, which fetches the dropped units
//! anew, verified like any fetch. One warning per cache file is logged. A
//! read gives up with a `Cache` error (EIO) after `MAX_REPAIRS` tries, and
//! the next read tries again.
//!
//! A fetch checks the file's length before each write: a `pwrite` past a
//! truncated end would extend the file with a hole under units still marked
//! present. It repairs the file first, or fails (EIO for its readers).
//!
//! Races left, documented rather than locked against (the hit path takes no
//! lock): damage between a populate and the kernel's copy of that reply
//! makes the copy fail, so that one read gets EIO and the next one finds the
//! damage; and a file truncated again between a fetch's length check and
//! its write, or a unit left present because a reader pinned it, wait for
//! the next read that finds them.

use std::io;
use std::ops::Range;
use std::sync::atomic::Ordering;

use super::{ChunkerError, Inner};

/// Repairs one read attempts before it fails with EIO. Two: a repair can
/// race with a fetch or another reader's pin once, and the second look
/// normally finds the units fetched again.
pub(super) const MAX_REPAIRS: u32 = 2;

impl Inner {
    /// Reading the present bytes of `units` from the cache file failed with
    /// `cause`: drop them, and every unit lost to a truncation, so they are
    /// fetched again. The caller holds no pin. See the module doc.
    pub(super) fn cache_damaged(&self, units: Range<usize>, cause: &io::Error) {
        let sessions = self.lock_sessions();
        let file_len = match self.cache.current_len() {
            Ok(len) => len.min(self.size),
            Err(_) => self.size,
        };
        let truncated = file_len < self.size;
        let mut dropped = 0u64;
        let mut left_past_end = false;
        for u in 0..self.layout.units() {
            let range = self.layout.unit_range(u);
            let past_end = range.end > file_len;
            if !(past_end || units.contains(&u)) || self.unit_cached_bytes(u) == 0 {
                continue;
            }
            if sessions.contains_key(&u) {
                left_past_end |= past_end;
                continue;
            }
            match self.discard(u) {
                Some((bytes, _)) if bytes > 0 => dropped += 1,
                Some(_) => {}
                None => left_past_end |= past_end,
            }
        }
        let restored = match truncated && !left_past_end {
            true => self.cache.restore_len().err(),
            false => None,
        };
        drop(sessions);
        self.stats
            .cache_damaged_units
            .fetch_add(dropped, Ordering::Relaxed);
        if !self.cache_damage_reported.swap(true, Ordering::Relaxed) {
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
        if let Some(e) = restored {
            log::warn!(
                "{}: giving truncated cache file {} back its length: {e}",
                self.key,
                self.cache.path().display()
            );
        }
    }

    /// After reading `range` from the cache file failed with `cause` on try
    /// `*repairs`: repair the file (`cache_damaged`) and let the caller look
    /// the range up again, or, after `MAX_REPAIRS` tries, fail the read.
    ///
    /// # Errors
    /// `Cache` (the read's cause) once the tries are used up.
    pub(super) fn repair(
        &self,
        repairs: &mut u32,
        range: &Range<u64>,
        cause: io::Error,
    ) -> Result<(), ChunkerError> {
        let units = self.units_of(range);
        self.cache_damaged(units, &cause);
        *repairs += 1;
        if *repairs > MAX_REPAIRS {
            return Err(self.cache_error(range.start, cause));
        }
        Ok(())
    }

    /// Before a fetch writes at `off`: when the file is shorter than the
    /// diff (truncated), repair it first, since a write past its end would
    /// extend it with a hole under units still marked present.
    ///
    /// # Errors
    /// `Cache` when the file could not be given its length back.
    pub(super) fn check_cache_len(&self, off: u64) -> Result<(), ChunkerError> {
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
        self.cache_damaged(0..0, &cause);
        match self.cache.current_len() {
            Ok(len) if len >= self.size => Ok(()),
            _ => Err(self.cache_error(off, cause)),
        }
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
