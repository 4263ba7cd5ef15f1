//! `Compression`: the codec of a diff object, as the frame table's
//! `compression_type` and the data object's name suffix give it.

use super::FormatError;

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
    /// The compression of on-disk `compression_type` `v` (FORMAT.md "Frame
    /// table").
    ///
    /// # Errors
    /// `FormatError::Invalid` for a type other than 0, 1 or 2.
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

    /// The name users type and read (`--compression`, inspect, messages).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
        }
    }
}
