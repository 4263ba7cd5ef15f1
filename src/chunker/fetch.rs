//! The fetch job: bring one unit from the store (or first from its owner
//! peer, `peer_source`) into the cache file. A
//! chunk streams in piece by piece and its pages are published as they
//! complete; a frame is read whole, decoded into a scratch buffer, checked,
//! written to its place and published at once. Both go through one store
//! read accounting, one cache write and one publish; a full cache disk
//! turns into the fallback of `full_disk`. The job ends its session whatever
//! happens, panics included.

use std::any::Any;
use std::io::{self, Read};
use std::ops::{DerefMut, Range};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::full_disk::is_disk_full;
use super::layout::Layout;
use super::session::{Fetched, Session};
use super::{ChunkerError, Inner, scratch};
use crate::format::{Frame, PAGE_SIZE};
use crate::store::StoreError;

/// Bytes of a streaming chunk fetch read before its pages are published.
const STREAM_PIECE: usize = 256 << 10;

thread_local! {
    /// Each fetch worker's buffer for what it reads from the store (a chunk
    /// piece or a compressed frame): reused, so its pages are not fresh
    /// memory on every fetch.
    static FETCH_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Run `f` on this thread's fetch buffer, `len` bytes long.
pub(super) fn with_fetch_buf<T>(len: usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
    FETCH_BUF.with_borrow_mut(|buf| {
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let out = f(&mut buf[..len]);
        if buf.len() > scratch::KEEP_AT_MOST {
            *buf = Vec::new();
        }
        out
    })
}

impl Inner {
    /// Body of a fetch job: fetch, then end the session whatever happened.
    pub(super) fn run_fetch(&self, u: usize, session: &Arc<Session>) {
        let result = if self.closed.load(Ordering::Relaxed) {
            Ok(Fetched::Cached)
        } else {
            catch_unwind(AssertUnwindSafe(|| self.fetch_unit(u, session)))
                .unwrap_or_else(|panic| Err(self.panicked(u, panic.as_ref())))
        };
        self.finish_fetch(u, session, result);
    }

    /// The error a fetch of unit `u` that panicked ends with.
    pub(super) fn panicked(&self, u: usize, panic: &(dyn Any + Send)) -> ChunkerError {
        let detail = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_string());
        ChunkerError::Internal {
            key: self.key,
            offset: self.layout.unit_range(u).start,
            detail,
        }
    }

    /// The end of unit `u`'s fetch: count and log a failure, end the
    /// session, account the unit under the cache budget, and check the
    /// whole diff once it is all cached.
    pub(super) fn finish_fetch(
        &self,
        u: usize,
        session: &Arc<Session>,
        result: Result<Fetched, ChunkerError>,
    ) {
        if let Err(e) = &result {
            self.stats.fetch_errors.fetch_add(1, Ordering::Relaxed);
            log::warn!("{e}");
        }
        let cached = matches!(result, Ok(Fetched::Cached));
        self.end_session(u, session, result);
        if let Some(lru) = &self.lru {
            if cached {
                lru.fetched(u);
            }
            lru.budget.enforce();
        }
        if cached && self.cached.load(Ordering::Relaxed) == self.size {
            self.check_whole_diff();
        }
    }

    /// Remove the session from the map (so the next read starts afresh),
    /// then wake its waiters with the result.
    pub(super) fn end_session(
        &self,
        u: usize,
        session: &Arc<Session>,
        result: Result<Fetched, ChunkerError>,
    ) {
        {
            let mut sessions = self.sessions.lock();
            if sessions.get(&u).is_some_and(|s| Arc::ptr_eq(s, session)) {
                sessions.remove(&u);
            }
        }
        session.finish(result);
    }

    /// Fetch unit `u` into the cache; when the cache disk is full, into
    /// memory for the session's waiters instead.
    pub(super) fn fetch_unit(&self, u: usize, session: &Session) -> Result<Fetched, ChunkerError> {
        let result = match self.layout {
            Layout::Chunks { .. } => self.fetch_chunk(u, session),
            Layout::Frames { .. } => self.fetch_frame(u, session),
        };
        match result {
            Ok(()) => Ok(Fetched::Cached),
            Err(ChunkerError::Cache { source, .. }) if is_disk_full(&source) => {
                self.fetch_uncached(u).map(Fetched::Uncached)
            }
            Err(e) => Err(e),
        }
    }

    /// Stream chunk `u` from its first missing page to its end into the
    /// cache file, publishing pages as they complete. Present pages of a chunk
    /// always form a prefix (fetches fill forward, eviction clears whole
    /// chunks), so a retry after a failure resumes where the last one stopped.
    fn fetch_chunk(&self, u: usize, session: &Session) -> Result<(), ChunkerError> {
        let range = self.layout.unit_range(u);
        let pages = self.layout.bits_of(&range, &(u..u + 1));
        let Some(first_missing) = self.present.first_clear(pages.clone()) else {
            return Ok(());
        };
        let from = first_missing as u64 * PAGE_SIZE;
        let len = range.end - from;
        self.reserve_if_full(from..range.end)?;
        if self.write_from_peer(u, from..range.end, session)? {
            self.publish(first_missing..pages.end, len);
            session.progress();
            return Ok(());
        }
        self.stats.store_requests.fetch_add(1, Ordering::Relaxed);
        let mut stream = self
            .store
            .read_range(&self.key, from, len)
            .map_err(|e| self.store_error(from, e))?;
        self.stream_chunk(u, from, &mut *stream, session)
    }

    /// Write chunk `u` from `from` (its first missing page) to its end,
    /// read from `stream`, into the cache file, publishing its pages as
    /// they complete. The caller's session is the chunk's only writer.
    pub(super) fn stream_chunk(
        &self,
        u: usize,
        from: u64,
        stream: &mut dyn Read,
        session: &Session,
    ) -> Result<(), ChunkerError> {
        let range = self.layout.unit_range(u);
        let pages = self.layout.bits_of(&range, &(u..u + 1));
        let first_missing = (from / PAGE_SIZE) as usize;
        let len = range.end - from;
        let mut done = 0u64;
        let mut published = first_missing;
        while done < len {
            let piece = (len - done).min(STREAM_PIECE as u64) as usize;
            // Read into a warm buffer and pwrite it (see `CacheFile::write_at`).
            let (got, error) = with_fetch_buf(piece, |buf| {
                let (got, error) = read_full(stream, buf);
                // Pages from `first_missing` on are not present, and this
                // session is the unit's only writer.
                match self.write_cache(u, from + done, &buf[..got]) {
                    Ok(()) => (
                        got,
                        error.map(|e| {
                            self.store_error(from + done + got as u64, StoreError::io(&self.key, e))
                        }),
                    ),
                    Err(e) => (0, Some(e)),
                }
            });
            done += got as u64;
            self.stats
                .store_bytes
                .fetch_add(got as u64, Ordering::Relaxed);
            // Publish the pages now complete (the object's last page counts
            // once the object's end is reached).
            let upto = if from + done == self.size {
                pages.end
            } else {
                ((from + done) / PAGE_SIZE) as usize
            };
            if upto > published {
                self.publish(
                    published..upto,
                    (upto as u64 * PAGE_SIZE).min(self.size) - published as u64 * PAGE_SIZE,
                );
                published = upto;
                session.progress();
            }
            if let Some(e) = error {
                return Err(e);
            }
            if got < piece {
                return Err(ChunkerError::ShortRead {
                    key: self.key,
                    offset: from,
                    expected: len,
                    got: done,
                });
            }
        }
        Ok(())
    }

    /// Fetch frame `u` whole, decode and verify it, write it to its place,
    /// publish.
    fn fetch_frame(&self, u: usize, session: &Session) -> Result<(), ChunkerError> {
        let frame = self.frame(u);
        let range = frame.range_u();
        self.reserve_if_full(range.clone())?;
        // A peer sends the frame's uncompressed range: nothing to decode.
        if self.write_from_peer(u, range.clone(), session)? {
            self.publish(u..u + 1, u64::from(frame.size_u));
            return Ok(());
        }
        let decoded = self.load_frame(u, &frame, |len| self.pool.scratch.take(len))?;
        // Not present yet, and this session is the frame's only writer.
        self.write_cache(u, range.start, &decoded)?;
        drop(decoded);
        self.publish(u..u + 1, u64::from(frame.size_u));
        Ok(())
    }

    /// Frame `u` of a compressed object.
    pub(super) fn frame(&self, u: usize) -> Frame {
        *self.layout.frame(u).expect("frame units are frame indices")
    }

    /// Frame `u` (`frame`) read from the store and decoded into the buffer
    /// `dst` gives for its `size_u` bytes. `dst` is called only once the
    /// compressed bytes are in, so no decode buffer waits on the store.
    pub(super) fn load_frame<D: DerefMut<Target = [u8]>>(
        &self,
        u: usize,
        frame: &Frame,
        dst: impl FnOnce(usize) -> D,
    ) -> Result<D, ChunkerError> {
        with_fetch_buf(frame.size_c as usize, |src| {
            self.read_store(frame.start_u, frame.start_c, src)?;
            self.decode_frame(u, frame, src, dst)
        })
    }

    /// Frame `u`'s compressed bytes `src` decoded into the buffer `dst`
    /// gives for its `size_u` bytes, checked for exact size and checksum.
    ///
    /// # Errors
    /// `CorruptFrame` naming the frame and its compressed range.
    pub(super) fn decode_frame<D: DerefMut<Target = [u8]>>(
        &self,
        u: usize,
        frame: &Frame,
        src: &[u8],
        dst: impl FnOnce(usize) -> D,
    ) -> Result<D, ChunkerError> {
        let mut decoded = dst(frame.size_u as usize);
        crate::codec::decode_frame(self.compression, src, &mut decoded).map_err(|detail| {
            ChunkerError::CorruptFrame {
                key: self.key,
                offset: frame.start_u,
                detail: format!(
                    "frame {u} (compressed bytes {}..{}): {detail}",
                    frame.start_c,
                    frame.end_c()
                ),
            }
        })?;
        Ok(decoded)
    }

    /// Fill `buf` from the object's stored bytes at `stored_off`; errors
    /// name `offset`, the uncompressed offset in the diff they serve.
    pub(super) fn read_store(
        &self,
        offset: u64,
        stored_off: u64,
        buf: &mut [u8],
    ) -> Result<(), ChunkerError> {
        self.stats.store_requests.fetch_add(1, Ordering::Relaxed);
        self.store
            .read_exact_into(&self.key, stored_off, buf)
            .map_err(|e| self.store_error(offset, e))?;
        self.stats
            .store_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Write `bytes` into the cache file at `off`: a range that is not
    /// present, written by its unit's only session.
    /// A truncated file is repaired first (`damage`).
    pub(super) fn write_cache(&self, u: usize, off: u64, bytes: &[u8]) -> Result<(), ChunkerError> {
        self.check_cache_len(u, off)?;
        self.cache
            .write_at(off, bytes)
            .map_err(|e| self.cache_error(off, e))
    }

    /// Mark `bits` present, `bytes` of the diff newly cached.
    pub(super) fn publish(&self, bits: Range<usize>, bytes: u64) {
        self.present.set(bits);
        self.cached.fetch_add(bytes, Ordering::Relaxed);
        self.stats
            .cache_written_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        self.stats.cache_size.inc_by(bytes);
        if let Some(lru) = &self.lru {
            lru.budget.charge(bytes);
        }
    }
}

/// Read until `buf` is full, the stream ends, or an error; returns the bytes
/// read and the error, if any.
pub(super) fn read_full(stream: &mut dyn Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut n = 0;
    while n < buf.len() {
        match stream.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (n, Some(e)),
        }
    }
    (n, None)
}
