use std::ops::Range;

use super::FormatError;
use super::cursor::Cursor;
use super::limits::{MAX_FRAME_SIZE, MAX_FRAMES};

/// Compression of a diff object (frame table `compression_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u32)]
pub enum Compression {
    #[default]
    None = 0,
    Zstd = 1,
    Lz4 = 2,
}

impl Compression {
    pub fn from_u32(v: u32) -> Result<Self, FormatError> {
        match v {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Zstd),
            2 => Ok(Compression::Lz4),
            other => Err(FormatError::invalid(
                "compression type",
                format!("{other} (known: 0 none, 1 zstd, 2 lz4)"),
            )),
        }
    }

    /// Object-name suffix of a diff with this compression.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Zstd => ".zstd",
            Compression::Lz4 => ".lz4",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
        }
    }
}

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
mod tests {
    use super::*;

    fn frame(start_u: u64, start_c: u64, size_u: u32, size_c: u32) -> Frame {
        Frame {
            start_u,
            start_c,
            size_u,
            size_c,
        }
    }

    fn table() -> FrameTable {
        FrameTable::new(
            Compression::Zstd,
            vec![
                frame(0, 0, 100, 10),
                frame(100, 10, 100, 20),
                // Sparse: [200, 400) is not listed.
                frame(400, 50, 50, 5),
            ],
        )
        .unwrap()
    }

    fn encoded(t: &FrameTable) -> Vec<u8> {
        let mut out = Vec::new();
        t.encode_into(&mut out);
        out
    }

    #[test]
    fn round_trip_every_codec() {
        for c in [Compression::Zstd, Compression::Lz4] {
            let t = FrameTable::new(c, table().frames().to_vec()).unwrap();
            let mut bytes = encoded(&t);
            assert_eq!(bytes.len(), 8 + 3 * 24);
            bytes.extend_from_slice(b"rest");
            assert_eq!(FrameTable::decode(&bytes), Ok((t, 8 + 3 * 24)));
        }
        let none = FrameTable::uncompressed();
        assert_eq!(encoded(&none), [0u8; 8]);
        assert_eq!(FrameTable::decode(&[0u8; 8]), Ok((none, 8)));
    }

    #[test]
    fn compressed_type_without_frames_reads_as_uncompressed() {
        let mut bytes = 1u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&0u32.to_le_bytes());
        let (t, used) = FrameTable::decode(&bytes).unwrap();
        assert_eq!(used, 8);
        assert_eq!(t.compression(), Compression::None);
        assert!(!t.is_compressed());
    }

    #[test]
    fn locate_finds_frames_and_rejects_gaps() {
        let t = table();
        assert_eq!(t.locate(0), Ok(0));
        assert_eq!(t.locate(99), Ok(0));
        assert_eq!(t.locate(100), Ok(1));
        assert_eq!(t.locate(199), Ok(1));
        assert!(t.locate(200).is_err());
        assert!(t.locate(399).is_err());
        assert_eq!(t.locate(449), Ok(2));
        assert!(t.locate(450).is_err());
        assert!(t.locate(u64::MAX).is_err());
        assert!(FrameTable::uncompressed().locate(0).is_err());
        let late = FrameTable::new(Compression::Lz4, vec![frame(10, 0, 5, 5)]).unwrap();
        assert!(late.locate(3).is_err());
    }

    fn trim_one(t: &FrameTable, range: Range<u64>) -> FrameTable {
        t.trim(std::slice::from_ref(&range))
    }

    #[test]
    fn trim_keeps_overlapping_frames() {
        let t = table();
        let starts = |t: &FrameTable| t.frames().iter().map(|f| f.start_u).collect::<Vec<_>>();
        assert_eq!(starts(&trim_one(&t, 99..101)), [0, 100]);
        assert_eq!(starts(&t.trim(&[420..421, 0..1])), [0, 400]);
        assert_eq!(starts(&trim_one(&t, 0..1000)), [0, 100, 400]);
        assert_eq!(starts(&trim_one(&t, 100..100)), Vec::<u64>::new());
        let gap_only = trim_one(&t, 200..400);
        assert!(!gap_only.is_compressed());
        assert_eq!(trim_one(&t, 150..160).compression(), Compression::Zstd);
    }

    #[test]
    fn rejects_invalid_tables() {
        let bad = |c, frames| FrameTable::new(c, frames).unwrap_err();
        assert!(matches!(
            bad(Compression::None, vec![frame(0, 0, 1, 1)]),
            FormatError::Invalid { .. }
        ));
        for frames in [
            vec![frame(0, 0, 0, 1)],
            vec![frame(0, 0, 1, 0)],
            vec![frame(0, 0, 10, 10), frame(5, 10, 10, 10)],
            vec![frame(0, 0, 10, 10), frame(10, 5, 10, 10)],
            vec![frame(10, 10, 10, 10), frame(0, 0, 10, 10)],
            vec![frame(1 << 63, 0, 1, 1)],
            vec![frame(0, 0, 1 << 31, 1)],
        ] {
            assert!(
                matches!(
                    bad(Compression::Zstd, frames.clone()),
                    FormatError::Invalid { .. }
                ),
                "{frames:?}"
            );
        }
    }

    #[test]
    fn frames_over_the_mount_limit_are_refused_naming_it() {
        let max = MAX_FRAME_SIZE;
        assert!(FrameTable::new(Compression::Zstd, vec![frame(0, 0, max, max)]).is_ok());
        for f in [frame(0, 0, max + 1, 1), frame(0, 0, 1, max + 1)] {
            let err = FrameTable::new(Compression::Lz4, vec![f]).unwrap_err();
            assert!(
                matches!(&err, FormatError::Invalid { detail, .. }
                    if detail.contains(&format!("over the largest frame a mount serves ({max} bytes"))),
                "{err}"
            );
        }
        let bytes = raw(1, &[(0, 0, max as i32 + 1, 1)]);
        assert!(matches!(
            FrameTable::decode(&bytes),
            Err(FormatError::Invalid { .. })
        ));
    }

    fn raw(ty: u32, entries: &[(i64, i64, i32, i32)]) -> Vec<u8> {
        let mut out = ty.to_le_bytes().to_vec();
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for (a, b, c, d) in entries {
            out.extend_from_slice(&a.to_le_bytes());
            out.extend_from_slice(&b.to_le_bytes());
            out.extend_from_slice(&c.to_le_bytes());
            out.extend_from_slice(&d.to_le_bytes());
        }
        out
    }

    #[test]
    fn decode_rejects_corrupt_bytes() {
        let err = |b: &[u8]| FrameTable::decode(b).unwrap_err();
        assert!(matches!(err(&[1, 0, 0]), FormatError::Truncated { .. }));
        assert!(matches!(
            err(&raw(3, &[])),
            FormatError::Invalid {
                what: "compression type",
                ..
            }
        ));
        assert!(matches!(
            err(&raw(0, &[(0, 0, 1, 1)])),
            FormatError::Invalid { .. }
        ));
        assert!(matches!(
            err(&raw(1, &[(-1, 0, 1, 1)])),
            FormatError::Invalid { .. }
        ));
        assert!(matches!(
            err(&raw(1, &[(0, -5, 1, 1)])),
            FormatError::Invalid { .. }
        ));
        assert!(matches!(
            err(&raw(1, &[(0, 0, -1, 1)])),
            FormatError::Invalid { .. }
        ));
        assert!(matches!(
            err(&raw(2, &[(0, 0, 10, 10), (5, 20, 10, 10)])),
            FormatError::Invalid { .. }
        ));
        // A count over the cap is refused before anything is allocated.
        let mut over = 1u32.to_le_bytes().to_vec();
        over.extend_from_slice(&(MAX_FRAMES + 1).to_le_bytes());
        assert!(matches!(err(&over), FormatError::OverLimit { .. }));
        // A count the bytes cannot hold is refused the same way.
        let mut short = 1u32.to_le_bytes().to_vec();
        short.extend_from_slice(&MAX_FRAMES.to_le_bytes());
        short.extend_from_slice(&[0; 24]);
        assert!(matches!(err(&short), FormatError::Truncated { .. }));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics_and_locate_agrees_with_a_scan(
            head in proptest::collection::vec(0u8..4, 8),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            probes in proptest::collection::vec(0u64..1 << 40, 16),
        ) {
            // A small type and count up front so some inputs get past them.
            let mut bytes = vec![head[0] % 3, 0, 0, 0, head[1] % 8, 0, 0, 0];
            bytes.extend_from_slice(&body);
            if let Ok((t, used)) = FrameTable::decode(&bytes) {
                proptest::prop_assert_eq!(used, 8 + 24 * t.frames().len());
                for off in probes {
                    let scan = t.frames().iter().position(|f| f.range_u().contains(&off));
                    proptest::prop_assert_eq!(t.locate(off).ok(), scan);
                }
            }
        }
    }
}
