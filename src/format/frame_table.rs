use std::ops::Range;

use super::FormatError;

/// Most frames one table may list (FORMAT.md).
pub const MAX_FRAMES: u32 = 1_048_576;

/// Compression of a diff object (frame table `compression_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
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
    pub fn end_u(&self) -> u64 {
        self.start_u + u64::from(self.size_u)
    }
    pub fn end_c(&self) -> u64 {
        self.start_c + u64::from(self.size_c)
    }
}

/// A (possibly sparse) frame table: the frames of a compressed diff, sorted
/// and non-overlapping in both spaces.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FrameTable {
    compression: Compression,
    frames: Vec<Frame>,
}

impl FrameTable {
    /// A validated table. `Compression::None` with frames is an error; a
    /// compressed type without frames means "no table" (read as uncompressed).
    /// Frames must be sorted and non-overlapping in both spaces, every size > 0.
    pub fn new(compression: Compression, frames: Vec<Frame>) -> Result<Self, FormatError> {
        todo!("format helper: validate and build")
    }

    /// The table of an uncompressed object.
    pub fn uncompressed() -> Self {
        FrameTable::default()
    }

    /// The compression of the object, `None` for "no table".
    pub fn compression(&self) -> Compression {
        todo!()
    }

    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    /// True when reads must go through frames.
    pub fn is_compressed(&self) -> bool {
        !self.frames.is_empty()
    }

    /// Index of the frame holding uncompressed offset `off_u`: the last frame
    /// with `start_u <= off_u`; an offset past its end is in a gap (error).
    pub fn locate(&self, off_u: u64) -> Result<usize, FormatError> {
        todo!()
    }

    /// The frames that overlap any of `ranges` (uncompressed space).
    pub fn trim(&self, ranges: &[Range<u64>]) -> FrameTable {
        todo!()
    }

    /// Decode `u32 type, u32 n, n × 24-byte entries` from the front of `bytes`;
    /// returns the table and the bytes consumed.
    pub fn decode(bytes: &[u8]) -> Result<(FrameTable, usize), FormatError> {
        todo!()
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        todo!()
    }
}
