//! How a diff object is cut into fetch units: 4 MiB-aligned chunks of an
//! uncompressed object, or the frames of a compressed one. Also what one bit
//! of the present bitmap stands for: a 4 KiB page of a chunked object (so a
//! chunk becomes readable page by page while it streams in), a whole frame of
//! a compressed one (a frame is usable only once it decoded and verified).

use std::ops::Range;

use super::CHUNK_SIZE;
use crate::format::{FormatError, Frame, FrameTable, PAGE_SIZE};

pub(super) enum Layout {
    Chunks { size: u64 },
    Frames { table: FrameTable },
}

impl Layout {
    pub(super) fn units(&self) -> usize {
        match self {
            Layout::Chunks { size } => size.div_ceil(CHUNK_SIZE) as usize,
            Layout::Frames { table } => table.frames().len(),
        }
    }

    /// Uncompressed byte range of unit `u`.
    pub(super) fn unit_range(&self, u: usize) -> Range<u64> {
        match self {
            Layout::Chunks { size } => {
                let start = u as u64 * CHUNK_SIZE;
                start..(start + CHUNK_SIZE).min(*size)
            }
            Layout::Frames { table } => table.frames()[u].range_u(),
        }
    }

    /// The object's bytes holding unit `u`: its compressed range for a
    /// frame, its own range for a chunk.
    pub(super) fn stored_range(&self, u: usize) -> Range<u64> {
        match self {
            Layout::Chunks { .. } => self.unit_range(u),
            Layout::Frames { table } => {
                let f = &table.frames()[u];
                f.start_c..f.end_c()
            }
        }
    }

    pub(super) fn frame(&self, u: usize) -> Option<&Frame> {
        match self {
            Layout::Chunks { .. } => None,
            Layout::Frames { table } => table.frames().get(u),
        }
    }

    /// Number of bits of the present bitmap.
    pub(super) fn bits(&self) -> usize {
        match self {
            Layout::Chunks { size } => size.div_ceil(PAGE_SIZE) as usize,
            Layout::Frames { table } => table.frames().len(),
        }
    }

    /// The bits that must be set for `range` (inside `units`) to be present.
    pub(super) fn bits_of(&self, range: &Range<u64>, units: &Range<usize>) -> Range<usize> {
        match self {
            Layout::Chunks { .. } => {
                (range.start / PAGE_SIZE) as usize..range.end.div_ceil(PAGE_SIZE) as usize
            }
            Layout::Frames { .. } => units.clone(),
        }
    }

    /// The units holding any byte of `range` (inside the object; gaps of a
    /// sparse frame table are skipped).
    pub(super) fn units_within(&self, range: Range<u64>) -> Range<usize> {
        match self {
            Layout::Chunks { .. } => {
                (range.start / CHUNK_SIZE) as usize..range.end.div_ceil(CHUNK_SIZE) as usize
            }
            Layout::Frames { table } => {
                let frames = table.frames();
                let first = frames.partition_point(|f| f.end_u() <= range.start);
                let end = frames.partition_point(|f| f.start_u < range.end);
                first..end.max(first)
            }
        }
    }

    /// The units that hold `[off, end)`, at most `max_units` of them, and the
    /// end of the part they hold: `end`, or less where the units stop (the
    /// `max_units` limit, or a gap of a sparse frame table). An `off` in no
    /// unit (a gap) is an error.
    pub(super) fn span(
        &self,
        off: u64,
        end: u64,
        max_units: usize,
    ) -> Result<(Range<usize>, u64), FormatError> {
        match self {
            Layout::Chunks { .. } => {
                let first = (off / CHUNK_SIZE) as usize;
                let last = ((end - 1) / CHUNK_SIZE) as usize;
                let last = last.min(first.saturating_add(max_units - 1));
                let end = end.min((last as u64 + 1) * CHUNK_SIZE);
                Ok((first..last + 1, end))
            }
            Layout::Frames { table } => {
                let frames = table.frames();
                let first = table.locate(off)?;
                let mut last = first;
                while frames[last].end_u() < end
                    && last + 1 - first < max_units
                    && frames
                        .get(last + 1)
                        .is_some_and(|next| next.start_u == frames[last].end_u())
                {
                    last += 1;
                }
                Ok((first..last + 1, end.min(frames[last].end_u())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Compression;

    fn frame(start_u: u64, size_u: u32) -> Frame {
        Frame {
            start_u,
            start_c: start_u,
            size_u,
            size_c: size_u,
        }
    }

    #[test]
    fn chunk_spans() {
        let l = Layout::Chunks {
            size: 3 * CHUNK_SIZE + 5,
        };
        assert_eq!(l.units(), 4);
        assert_eq!(l.bits(), 3 * 1024 + 1);
        assert_eq!(l.unit_range(3), 3 * CHUNK_SIZE..3 * CHUNK_SIZE + 5);
        assert_eq!(
            l.span(CHUNK_SIZE - 4096, CHUNK_SIZE + 4096, usize::MAX)
                .unwrap(),
            (0..2, CHUNK_SIZE + 4096)
        );
        assert_eq!(
            l.span(CHUNK_SIZE - 4096, CHUNK_SIZE + 4096, 1).unwrap(),
            (0..1, CHUNK_SIZE)
        );
        assert_eq!(l.bits_of(&(4095..4097), &(0..1)), 0..2);
        assert_eq!(l.units_within(CHUNK_SIZE - 1..CHUNK_SIZE + 1), 0..2);
        assert_eq!(l.units_within(CHUNK_SIZE..2 * CHUNK_SIZE), 1..2);
        assert_eq!(l.units_within(3 * CHUNK_SIZE..3 * CHUNK_SIZE + 5), 3..4);
    }

    #[test]
    fn frame_spans_stop_at_gaps() {
        let table = FrameTable::new(
            Compression::Zstd,
            vec![frame(0, 5000), frame(5000, 3000), frame(20_000, 100)],
        )
        .unwrap();
        let l = Layout::Frames { table };
        assert_eq!(l.span(4096, 12_000, usize::MAX).unwrap(), (0..2, 8000));
        assert_eq!(l.span(4096, 6000, 1).unwrap(), (0..1, 5000));
        assert_eq!(l.span(5000, 5001, usize::MAX).unwrap(), (1..2, 5001));
        assert!(l.span(8000, 9000, usize::MAX).is_err());
        assert_eq!(l.span(20_050, 20_100, usize::MAX).unwrap(), (2..3, 20_100));
        assert!(l.span(20_100, 20_101, usize::MAX).is_err());
        assert_eq!(l.bits_of(&(0..1), &(1..3)), 1..3);
        assert_eq!(l.units_within(4999..20_001), 0..3);
        assert_eq!(l.units_within(8000..20_000), 2..2, "only a gap");
        assert_eq!(l.units_within(5000..8000), 1..2);
    }
}
