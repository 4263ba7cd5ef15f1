//! Runs: units that lie next to each other in the object and are all
//! wanted by a prefetch, fetched with one ranged store request. `group`
//! finds them over the object offsets of the wanted units (a unit not
//! wanted, a gap between two units' stored bytes, or `MAX_RUN_BYTES` ends
//! a run) and orders them by their first-touched unit; `run_fetch_run` is
//! the job of one run. It streams the run's bytes but still takes them unit
//! by unit: each frame read whole, decoded and checked for exact size and
//! checksum before it is written and marked present, each chunk's pages
//! published as they arrive, and each unit's own session ended as soon as
//! that unit is done, so a reader waiting on the run's first unit does not
//! wait for its last. A frame that fails its check fails alone (all its
//! bytes were read, so the stream is still in step); a store error ends the
//! run, and the units not yet done fail with it. Nothing is marked present
//! before it is whole and verified.
//!
//! Why 16 MiB: a run is streamed, so its memory is one frame or one
//! 256 KiB chunk piece whatever the bound; the bound trades requests
//! against parallelism and against how long a reader of a run's last unit
//! waits. On a store like a bucket seen from a VM (issue 22's model: 50 ms
//! to first byte, 100 MB/s per request) a 16 MiB run takes about
//! 50 + 168 ms, so the first byte costs under a quarter of it, while the
//! restore bench's working set (9% of a 1 GiB memfile, ~92 MiB) still
//! splits into 6 runs that run side by side on the pool's prefetch workers,
//! against 3 of 390 ms each at 32 MiB. A reader joining a run waits for the
//! stream to reach its unit: at most one run's streaming (~170 ms there)
//! where a fetch of its unit alone would take ~70 ms.

use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::fetch::{read_full, with_fetch_buf};
use super::full_disk::is_disk_full;
use super::layout::Layout;
use super::session::{Fetched, Session};
use super::{ChunkerError, Inner};
use crate::store::StoreError;

/// Most object bytes one run reads with one request (a unit larger than
/// this is a run of its own). See the module docs for the choice.
pub const MAX_RUN_BYTES: u64 = 16 << 20;

/// The units holding `wanted` (diff byte ranges, each with its first-touch
/// rank), grouped into runs of units adjacent in the object, each run at
/// most `max_bytes` of stored bytes (or one unit), with the smallest rank
/// of its units; sorted by that rank (ties in object order). Ranges are
/// clipped to the diff; bytes no unit holds are skipped. Memory: one word
/// per unit of the diff.
pub(super) fn group(
    layout: &Layout,
    size: u64,
    wanted: &[(usize, Range<u64>)],
    max_bytes: u64,
) -> Vec<(usize, Range<usize>)> {
    let mut first_touch = vec![usize::MAX; layout.units()];
    for (rank, range) in wanted {
        let range = range.start.min(size)..range.end.min(size);
        if range.is_empty() {
            continue;
        }
        for u in layout.units_within(range) {
            first_touch[u] = first_touch[u].min(*rank);
        }
    }
    let mut runs: Vec<(usize, Range<usize>)> = Vec::new();
    let mut bytes = 0;
    for (u, &rank) in first_touch.iter().enumerate() {
        if rank == usize::MAX {
            continue;
        }
        let stored = layout.stored_range(u);
        let len = stored.end - stored.start;
        match runs.last_mut() {
            Some((first, units))
                if units.end == u
                    && layout.stored_range(u - 1).end == stored.start
                    && bytes + len <= max_bytes =>
            {
                units.end = u + 1;
                *first = (*first).min(rank);
                bytes += len;
            }
            _ => {
                runs.push((rank, u..u + 1));
                bytes = len;
            }
        }
    }
    runs.sort_by_key(|(rank, _)| *rank);
    runs
}

impl Inner {
    /// Body of a run's fetch job: units `units` (adjacent in the object;
    /// `sessions[i]` is unit `units.start + i`'s) with one store request,
    /// each unit's session ended as it is done, and every one of them
    /// whatever happens, panics included.
    pub(super) fn run_fetch_run(&self, units: Range<usize>, sessions: &[Arc<Session>]) {
        let mut next = units.start;
        let failed = if self.closed.load(Ordering::Relaxed) {
            None
        } else {
            match catch_unwind(AssertUnwindSafe(|| {
                self.fetch_run(units.clone(), sessions, &mut next)
            })) {
                Ok(result) => result.err(),
                Err(panic) => Some(self.panicked(next, panic.as_ref())),
            }
        };
        // The units the run did not reach: the run's error, or (closed, or
        // given up on a full disk) ended unfetched, so their waiters look
        // again and fetch them themselves.
        for u in next..units.end {
            let result = failed.clone().map_or(Ok(Fetched::Cached), Err);
            self.finish_fetch(u, &sessions[u - units.start], result);
        }
    }

    /// Fetch `units` with one ranged read, ending each unit's session once
    /// it is done; `next` is the first unit not yet ended. `Err` is the
    /// error the units from `next` on end with.
    fn fetch_run(
        &self,
        units: Range<usize>,
        sessions: &[Arc<Session>],
        next: &mut usize,
    ) -> Result<(), ChunkerError> {
        let from = self.layout.stored_range(units.start).start;
        let to = self.layout.stored_range(units.end - 1).end;
        let offset = self.layout.unit_range(units.start).start;
        self.stats.store_requests.fetch_add(1, Ordering::Relaxed);
        let mut stream = self
            .store
            .read_range(&self.key, from, to - from)
            .map_err(|e| self.store_error(offset, e))?;
        for u in units.clone() {
            let session = &sessions[u - units.start];
            let got = match self.layout {
                // A run's chunks have no page present (see `prefetch_run`).
                Layout::Chunks { .. } => {
                    let start = self.layout.unit_range(u).start;
                    self.stream_chunk(u, start, &mut *stream, session)
                }
                Layout::Frames { .. } => self.frame_from_stream(u, &mut *stream),
            };
            let result = match got {
                Ok(()) => Ok(Fetched::Cached),
                Err(e @ ChunkerError::CorruptFrame { .. }) => Err(e),
                Err(ChunkerError::Cache { source, .. }) if is_disk_full(&source) => {
                    // This unit's waiters get its bytes from memory (and
                    // read-ahead and prefetch stop, see `full_disk`); the
                    // rest end unfetched.
                    let uncached = self.fetch_uncached(u).map(Fetched::Uncached);
                    self.finish_fetch(u, session, uncached);
                    *next = u + 1;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            self.finish_fetch(u, session, result);
            *next = u + 1;
        }
        Ok(())
    }

    /// Frame `u`'s compressed bytes, the next ones of `stream`: read whole,
    /// decoded, checked, written to its place and published.
    fn frame_from_stream(
        &self,
        u: usize,
        stream: &mut dyn std::io::Read,
    ) -> Result<(), ChunkerError> {
        let frame = self.frame(u);
        with_fetch_buf(frame.size_c as usize, |src| {
            let (got, error) = read_full(stream, src);
            self.stats
                .store_bytes
                .fetch_add(got as u64, Ordering::Relaxed);
            if let Some(e) = error {
                return Err(self.store_error(frame.start_u, StoreError::io(&self.key, e)));
            }
            if got < src.len() {
                return Err(ChunkerError::ShortRead {
                    key: self.key,
                    offset: frame.start_u,
                    expected: u64::from(frame.size_c),
                    got: got as u64,
                });
            }
            let decoded = self.decode_frame(u, &frame, src, |len| self.pool.scratch.take(len))?;
            // Not present yet, and the run's session is the frame's only
            // writer.
            self.write_cache(u, frame.start_u, &decoded)?;
            drop(decoded);
            self.publish(u..u + 1, u64::from(frame.size_u));
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::thread;
    use std::time::{Duration, Instant};

    use uuid::Uuid;

    use super::*;
    use crate::chunker::{CHUNK_SIZE, Chunker, ChunkerConfig, DiffSpec, FetchPool, PrefetchStart};
    use crate::format::{Compression, FileKind, Frame, FrameTable, ObjectKey};
    use crate::metrics::Stats;
    use crate::store::{Fault, FaultStore, LocalStore, WritableStore};

    /// Frames of `sizes_c` stored bytes each, 4 KiB uncompressed each,
    /// stored back to back except where a size is 0 (a gap of 100 bytes).
    fn frames(sizes_c: &[u32]) -> Layout {
        let mut frames = Vec::new();
        let mut start_c = 0;
        for &size_c in sizes_c {
            if size_c == 0 {
                start_c += 100;
                continue;
            }
            frames.push(Frame {
                start_u: frames.len() as u64 * 4096,
                start_c,
                size_u: 4096,
                size_c,
            });
            start_c += u64::from(size_c);
        }
        Layout::Frames {
            table: FrameTable::new(Compression::Zstd, frames).unwrap(),
        }
    }

    fn page(n: u64) -> Range<u64> {
        n * 4096..(n + 1) * 4096
    }

    #[test]
    fn wanted_neighbours_form_one_run_in_first_touch_order() {
        let l = frames(&[1000; 8]);
        // Touched 5, 3, 4, 0: frames 3..6 lie together, 0 alone.
        let wanted = [(0, page(5)), (1, page(3)), (2, page(4)), (3, page(0))];
        assert_eq!(
            group(&l, 8 * 4096, &wanted, MAX_RUN_BYTES),
            vec![(0, 3..6), (3, 0..1)]
        );
    }

    #[test]
    fn a_unit_not_wanted_or_a_stored_gap_splits_runs() {
        let l = frames(&[1000; 8]);
        let wanted = [(0, page(1)), (1, page(2)), (2, page(4))];
        assert_eq!(
            group(&l, 8 * 4096, &wanted, MAX_RUN_BYTES),
            vec![(0, 1..3), (2, 4..5)]
        );
        // Frames 1 and 2 are stored apart (100 bytes between them).
        let l = frames(&[1000, 1000, 0, 1000]);
        let wanted = [(0, 0..3 * 4096)];
        assert_eq!(
            group(&l, 3 * 4096, &wanted, MAX_RUN_BYTES),
            vec![(0, 0..2), (0, 2..3)]
        );
    }

    #[test]
    fn runs_keep_to_the_bound_on_stored_bytes() {
        let l = frames(&[1000; 10]);
        let wanted = [(0, 0..10 * 4096)];
        // 3000 stored bytes per run: three frames each, the last one alone.
        assert_eq!(
            group(&l, 10 * 4096, &wanted, 3000),
            vec![(0, 0..3), (0, 3..6), (0, 6..9), (0, 9..10)]
        );
        // A frame larger than the bound is a run of its own.
        let l = frames(&[5000, 1000, 1000]);
        assert_eq!(
            group(&l, 3 * 4096, &[(0, 0..3 * 4096)], 3000),
            vec![(0, 0..1), (0, 1..3)]
        );
    }

    #[test]
    fn chunks_group_by_offset_and_repeats_count_once() {
        let l = Layout::Chunks {
            size: 10 * CHUNK_SIZE,
        };
        let c = |n: u64| n * CHUNK_SIZE + 5..n * CHUNK_SIZE + 6;
        let wanted = [(0, c(7)), (1, c(2)), (2, c(8)), (3, c(7)), (4, c(3))];
        // Four chunks per 16 MiB run.
        assert_eq!(
            group(&l, 10 * CHUNK_SIZE, &wanted, MAX_RUN_BYTES),
            vec![(0, 7..9), (1, 2..4)]
        );
        let all = [(0, 0..10 * CHUNK_SIZE)];
        assert_eq!(
            group(&l, 10 * CHUNK_SIZE, &all, MAX_RUN_BYTES),
            vec![(0, 0..4), (0, 4..8), (0, 8..10)]
        );
        // Past the diff: clipped.
        assert_eq!(
            group(&l, 10 * CHUNK_SIZE, &[(0, 10 * CHUNK_SIZE..u64::MAX)], 1),
            vec![]
        );
    }

    /// A diff in a store that counts requests, and a Chunker over it.
    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<FaultStore>,
        spec: DiffSpec,
        data: Vec<u8>,
        chunker: Chunker,
    }

    /// Bytes that compress a little, different at every offset.
    fn data(len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 & 0x3f)
            .collect()
    }

    impl Fixture {
        /// `data` in `frame` byte zstd frames (`None`: uncompressed).
        fn new(len: usize, frame: Option<usize>) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let local = Arc::new(LocalStore::create(dir.path().join("store")).unwrap());
            let data = data(len);
            let (compression, object, frames) = match frame {
                None => (Compression::None, data.clone(), FrameTable::uncompressed()),
                Some(size) => {
                    let mut object = Vec::new();
                    let mut frames = Vec::new();
                    for (i, piece) in data.chunks(size).enumerate() {
                        let c = crate::codec::compress_frame(Compression::Zstd, 3, piece).unwrap();
                        frames.push(Frame {
                            start_u: (i * size) as u64,
                            start_c: object.len() as u64,
                            size_u: piece.len() as u32,
                            size_c: c.len() as u32,
                        });
                        object.extend_from_slice(&c);
                    }
                    let table = FrameTable::new(Compression::Zstd, frames).unwrap();
                    (Compression::Zstd, object, table)
                }
            };
            let key = ObjectKey::data(Uuid::new_v4(), FileKind::Memfile, compression);
            local.put_bytes(&key, &object).unwrap();
            let store = Arc::new(FaultStore::new(local));
            let spec = DiffSpec {
                key,
                size: len as u64,
                frames,
            };
            let config = ChunkerConfig {
                cache_dir: dir.path().join("cache"),
                fetch_timeout: Duration::from_secs(30),
                cache_budget: None,
                peers: None,
            };
            let chunker = Chunker::new(
                spec.clone(),
                store.clone(),
                FetchPool::new(4),
                &config,
                Arc::new(Stats::default()),
            )
            .unwrap();
            Fixture {
                _dir: dir,
                store,
                spec,
                data,
                chunker,
            }
        }

        /// Plan all of the diff, queue every run, and wait for the fetches.
        /// (A fetch a reader started is not waited for.)
        fn prefetch_all(&self) {
            let mut runs = self.chunker.plan_prefetch(&[(0, 0..self.spec.size)]);
            for run in &mut runs {
                while let PrefetchStart::Busy { .. } = self.chunker.prefetch_run(run) {
                    thread::sleep(Duration::from_millis(1));
                }
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.chunker.prefetches_in_flight() > 0 {
                assert!(Instant::now() < deadline, "prefetch did not end");
                thread::sleep(Duration::from_millis(1));
            }
        }

        fn assert_reads_right(&self) {
            let mut buf = vec![0; self.data.len()];
            self.chunker.read_blocks(&mut buf, 0).unwrap();
            assert!(buf == self.data, "wrong bytes");
        }
    }

    #[test]
    fn a_run_of_frames_is_one_request_and_verified_frame_by_frame() {
        let f = Fixture::new(8 << 16, Some(1 << 16));
        f.prefetch_all();
        assert_eq!(f.store.requests(), 1);
        assert_eq!(f.chunker.cached_bytes(), 8 << 16);
        f.assert_reads_right();
        assert_eq!(f.store.requests(), 1, "all cached before the read");
    }

    #[test]
    fn a_run_of_chunks_is_one_request() {
        let len = 3 * CHUNK_SIZE as usize + 5000;
        let f = Fixture::new(len, None);
        f.prefetch_all();
        assert_eq!(f.store.requests(), 1);
        assert_eq!(f.chunker.cached_bytes(), len as u64);
        f.assert_reads_right();
        assert_eq!(f.store.requests(), 1);
    }

    #[test]
    fn runs_split_around_units_present_or_in_flight() {
        let f = Fixture::new(8 << 16, Some(1 << 16));
        // Frame 2 present, frame 5 in flight (its request hangs).
        f.chunker.read_blocks(&mut [0; 10], 2 << 16).unwrap();
        f.store.inject(Some(f.spec.key), Fault::Hang, Some(1));
        let (requests, reader) = thread::scope(|s| {
            let read = s.spawn(|| {
                let mut buf = vec![0; 10];
                f.chunker.read_blocks(&mut buf, 5 << 16).map(|()| buf)
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            while f.store.hanging() == 0 {
                assert!(Instant::now() < deadline, "the read never hung");
                thread::sleep(Duration::from_millis(1));
            }
            f.prefetch_all();
            // Runs 0..2, 3..5 and 6..8; frame 5 is left to the reader.
            let requests = f.store.requests();
            f.store.heal();
            (requests, read.join().unwrap())
        });
        assert_eq!(requests, 2 + 3);
        assert_eq!(reader.unwrap(), f.data[5 << 16..(5 << 16) + 10]);
        assert_eq!(f.store.requests(), 5, "frame 5 fetched once");
        f.assert_reads_right();
        assert_eq!(f.store.requests(), 5);
    }

    #[test]
    fn a_corrupt_frame_in_a_run_fails_alone() {
        let f = Fixture::new(8 << 16, Some(1 << 16));
        let table = f.spec.frames.frames();
        let bad = table[4];
        f.store.inject(
            Some(f.spec.key),
            Fault::FlipByte(bad.start_c + u64::from(bad.size_c) / 2),
            Some(1),
        );
        f.prefetch_all();
        assert_eq!(f.store.requests(), 1);
        assert_eq!(
            f.chunker.cached_bytes(),
            7 << 16,
            "every frame but the corrupt one"
        );
        // The next read of it fetches it again, right this time.
        f.assert_reads_right();
        assert_eq!(f.store.requests(), 2);
    }

    #[test]
    fn a_store_error_mid_run_marks_only_what_arrived() {
        let f = Fixture::new(8 << 16, Some(1 << 16));
        let table = f.spec.frames.frames();
        // The stream ends inside frame 3.
        f.store.inject(
            Some(f.spec.key),
            Fault::EndAt(table[3].start_c + 10),
            Some(1),
        );
        f.prefetch_all();
        assert_eq!(f.chunker.cached_bytes(), 3 << 16, "frames 0..3");
        f.assert_reads_right();
    }
}
