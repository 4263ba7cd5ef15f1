//! Pure codecs of the E2B template storage format (FORMAT.md): header
//! metadata, mappings, frame tables, headers V1–V5 and object keys.
//!
//! No I/O and no panics on input: every length, count and offset read from a
//! file is checked against the bytes present and the caps of FORMAT.md before
//! it is used or sized into an allocation.

mod compression;
mod cursor;
mod digest;
mod error;
mod frame_table;
mod header;
mod keys;
pub mod limits;
mod mapping;
mod metadata;
pub mod trace;
mod varint;

pub use compression::Compression;
pub use digest::hex;
pub use error::FormatError;
pub use frame_table::{Frame, FrameTable};
/// Hand-made headers and mappings for unit tests.
#[cfg(test)]
pub(crate) use header::samples;
pub use header::{BuildEntry, Header, MAX_INNER_LEN};
pub use keys::{Blob, FileKind, ObjectKey, ObjectName, parse_build_id};
pub use mapping::{MAX_V5_BUILDS, MAX_V5_MAPPINGS, Mapping, MappingHit, Mappings};
pub use metadata::{METADATA_LEN, Metadata};

/// The unit of alignment of mappings and storage offsets (FORMAT.md).
pub const PAGE_SIZE: u64 = 4096;
