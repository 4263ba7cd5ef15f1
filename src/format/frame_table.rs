//! Frame tables (FORMAT.md "Frame table"): the frames of a compressed diff,
//! their offsets and sizes in both spaces, checked on decode against the
//! format's rules and `limits.rs`; lookup of the frame holding an offset and
//! trimming to the frames a header's mappings touch (sparse tables).

use std::ops::Range;

use super::cursor::Cursor;
use super::limits::{MAX_FRAME_SIZE, MAX_FRAMES};
use super::{Compression, FormatError};

/// One independently compressed frame of a diff object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Offset in the uncompressed diff.
    pub start_u: u64,
    /// Offset in the compressed object.
    pub start_c: u64,
    pub size_u: u32,
    pub size_c: u32,
}

impl Frame {
    /// End in the uncompressed diff. Cannot overflow for frames of a
    /// `FrameTable`, whose starts are at most `i64::MAX`.
    pub fn end_u(&self) -> u64 {
        self.start_u.saturating_add(u64::from(self.size_u))
    }
    /// End in the compressed object (same bound as `end_u`).
    pub fn end_c(&self) -> u64 {
        self.start_c.saturating_add(u64::from(self.size_c))
    }
    /// The frame's range in the uncompressed diff.
    pub fn range_u(&self) -> Range<u64> {
        self.start_u..self.end_u()
    }
    /// The frame's range in the compressed object (what to fetch).
    pub fn range_c(&self) -> Range<u64> {
        self.start_c..self.end_c()
    }
}

/// A (possibly sparse) frame table: the frames of a compressed diff, sorted
/// and non-overlapping in both spaces.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FrameTable {
    compression: Compression,
    frames: Vec<Frame>,
}

/// A frame whose edges are off the block grid (see
/// `FrameTable::first_off_grid`); its `Display` says what E2B would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffGrid {
    /// Position of the frame in its table.
    pub index: usize,
    pub frame: Frame,
    /// The header's block size, in bytes.
    pub block_size: u64,
}

impl std::fmt::Display for OffGrid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "frame {} (uncompressed bytes {}..{}) is off the {}-byte block grid: E2B \
             (validateCompressConfig) requires frames to start and end on blocks, and its \
             readers serve wrong bytes for a block across a frame edge; tdfs reads it correctly",
            self.index,
            self.frame.start_u,
            self.frame.end_u(),
            self.block_size
        )
    }
}

/// Bytes of one frame-table entry on disk.
const ENTRY_LEN: u64 = 24;
/// Largest frame start the on-disk `i64` fields can hold.
const MAX_FRAME_START: u64 = i64::MAX as u64;

impl FrameTable {
    /// A validated table. `Compression::None` with frames is an error; a
    /// compressed type without frames means "no table" (read as uncompressed)
    /// and is stored as `Compression::None`.
    /// Frames must be sorted and non-overlapping in both spaces, every size > 0.
    pub fn new(compression: Compression, frames: Vec<Frame>) -> Result<Self, FormatError> {
        if frames.is_empty() {
            return Ok(FrameTable::uncompressed());
        }
        if compression == Compression::None {
            return Err(FormatError::invalid(
                "frame table",
                format!(
                    "compression type 0 (none) with {} frames; an uncompressed build has no frames",
                    frames.len()
                ),
            ));
        }
        if frames.len() > MAX_FRAMES as usize {
            return Err(FormatError::OverLimit {
                what: "frame count",
                value: frames.len() as u64,
                limit: u64::from(MAX_FRAMES),
            });
        }
        let mut prev: Option<&Frame> = None;
        for (i, f) in frames.iter().enumerate() {
            if f.size_u == 0 || f.size_c == 0 {
                return Err(FormatError::invalid(
                    "frame table",
                    format!(
                        "frame {i} has size_u {} and size_c {}; both must be > 0",
                        f.size_u, f.size_c
                    ),
                ));
            }
            // Under the on-disk `i32` too, so `encode_into` writes it exactly.
            if f.size_u > MAX_FRAME_SIZE || f.size_c > MAX_FRAME_SIZE {
                return Err(FormatError::invalid(
                    "frame table",
                    format!(
                        "frame {i} is {} bytes ({} compressed), over the largest frame a mount \
                         serves ({MAX_FRAME_SIZE} bytes, format::limits::MAX_FRAME_SIZE)",
                        f.size_u, f.size_c
                    ),
                ));
            }
            if f.start_u > MAX_FRAME_START || f.start_c > MAX_FRAME_START {
                return Err(FormatError::invalid(
                    "frame table",
                    format!("frame {i} starts beyond {MAX_FRAME_START}"),
                ));
            }
            if let Some(p) = prev
                && (f.start_u < p.end_u() || f.start_c < p.end_c())
            {
                return Err(FormatError::invalid(
                    "frame table",
                    format!(
                        "frame {i} (u {}, c {}) overlaps or precedes frame {} (u {:?}, c {:?}); \
                             frames must be sorted and disjoint",
                        f.start_u,
                        f.start_c,
                        i - 1,
                        p.range_u(),
                        p.range_c()
                    ),
                ));
            }
            prev = Some(f);
        }
        Ok(FrameTable {
            compression,
            frames,
        })
    }

    /// The table of an uncompressed object.
    pub fn uncompressed() -> Self {
        FrameTable::default()
    }

    /// The compression of the object, `None` for "no table".
    pub fn compression(&self) -> Compression {
        self.compression
    }

    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    /// True when reads must go through frames.
    pub fn is_compressed(&self) -> bool {
        !self.frames.is_empty()
    }

    /// Sum of the uncompressed sizes of the listed frames.
    pub fn total_size_u(&self) -> u64 {
        self.frames.iter().map(|f| u64::from(f.size_u)).sum()
    }

    /// The first frame with an edge off the grid of `block_size` (the
    /// header's block size): every frame must start on a block boundary and
    /// end on one, or at `diff_end` (the diff's uncompressed size; 0 when
    /// unknown, then the last listed frame may end anywhere). E2B's writers
    /// refuse a frame size that is not a multiple of the block size
    /// (`validateCompressConfig`) because E2B's chunker marks whole blocks
    /// present after fetching the one frame a block starts in: a block across
    /// a frame edge is served with the neighbour frame's bytes unfetched.
    /// tdfs itself reads such a table correctly (its unit of fetch and of
    /// presence is the frame, `chunker/layout.rs`), so readers only warn.
    pub fn first_off_grid(&self, block_size: u64, diff_end: u64) -> Option<OffGrid> {
        let last_end = self.frames.last().map_or(0, Frame::end_u);
        let free_end = if diff_end == 0 { last_end } else { diff_end };
        let on_grid = |v: u64| block_size == 0 || v.is_multiple_of(block_size);
        self.frames
            .iter()
            .position(|f| !on_grid(f.start_u) || !(on_grid(f.end_u()) || f.end_u() == free_end))
            .map(|index| OffGrid {
                index,
                frame: self.frames[index],
                block_size,
            })
    }

    /// Index of the frame holding uncompressed offset `off_u`: the last frame
    /// with `start_u <= off_u`; an offset past its end is in a gap (error).
    pub fn locate(&self, off_u: u64) -> Result<usize, FormatError> {
        let after = self.frames.partition_point(|f| f.start_u <= off_u);
        let found = after
            .checked_sub(1)
            .filter(|&i| off_u < self.frames[i].end_u());
        found.ok_or_else(|| {
            FormatError::invalid(
                "frame table",
                if self.frames.is_empty() {
                    format!("no frames to hold uncompressed offset {off_u}")
                } else {
                    format!(
                        "uncompressed offset {off_u} falls in a gap of the (sparse) table of {} frames; \
                         the header does not list the frame holding it",
                        self.frames.len()
                    )
                },
            )
        })
    }

    /// The frames that overlap any of `ranges` (uncompressed space). With no
    /// overlap at all the result has no frames, which reads as uncompressed:
    /// callers keep the full table of a build that no mapping references.
    pub fn trim(&self, ranges: &[Range<u64>]) -> FrameTable {
        let mut keep = vec![false; self.frames.len()];
        for r in ranges.iter().filter(|r| r.start < r.end) {
            // Frames are disjoint and sorted, so their ends are sorted too.
            let first = self.frames.partition_point(|f| f.end_u() <= r.start);
            for (i, f) in self.frames.iter().enumerate().skip(first) {
                if f.start_u >= r.end {
                    break;
                }
                keep[i] = true;
            }
        }
        let frames: Vec<Frame> = self
            .frames
            .iter()
            .zip(keep)
            .filter_map(|(f, k)| k.then_some(*f))
            .collect();
        FrameTable {
            compression: if frames.is_empty() {
                Compression::None
            } else {
                self.compression
            },
            frames,
        }
    }

    /// Decode `u32 type, u32 n, n × 24-byte entries` from the front of `bytes`;
    /// returns the table and the bytes consumed.
    pub fn decode(bytes: &[u8]) -> Result<(FrameTable, usize), FormatError> {
        let mut cur = Cursor::new(bytes);
        let table = Self::decode_from(&mut cur)?;
        Ok((table, cur.position()))
    }

    pub(crate) fn decode_from(cur: &mut Cursor<'_>) -> Result<FrameTable, FormatError> {
        let compression = Compression::from_u32(cur.u32("frame table compression type")?)?;
        let n = cur.u32("frame count")?;
        if n > MAX_FRAMES {
            return Err(FormatError::OverLimit {
                what: "frame count",
                value: u64::from(n),
                limit: u64::from(MAX_FRAMES),
            });
        }
        if compression == Compression::None && n > 0 {
            return Err(FormatError::invalid(
                "frame table",
                format!("compression type 0 (none) with {n} frames"),
            ));
        }
        cur.ensure_records("frame table entries", u64::from(n), ENTRY_LEN)?;
        let mut frames = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let start_u = cur.non_negative_i64("frame start_u")?;
            let start_c = cur.non_negative_i64("frame start_c")?;
            let size_u = cur.i32("frame size_u")?;
            let size_c = cur.i32("frame size_c")?;
            let positive = |v: i32, what: &'static str| {
                u32::try_from(v)
                    .ok()
                    .filter(|&v| v > 0)
                    .ok_or_else(|| FormatError::invalid(what, format!("{v}, must be > 0")))
            };
            frames.push(Frame {
                start_u,
                start_c,
                size_u: positive(size_u, "frame size_u")?,
                size_c: positive(size_c, "frame size_c")?,
            });
        }
        FrameTable::new(compression, frames)
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        // `new` bounds the count by MAX_FRAMES and every value by its on-disk
        // signed type, so these conversions are exact.
        out.extend_from_slice(&(self.compression as u32).to_le_bytes());
        out.extend_from_slice(&(self.frames.len() as u32).to_le_bytes());
        for f in &self.frames {
            out.extend_from_slice(&f.start_u.to_le_bytes());
            out.extend_from_slice(&f.start_c.to_le_bytes());
            out.extend_from_slice(&f.size_u.to_le_bytes());
            out.extend_from_slice(&f.size_c.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests;
