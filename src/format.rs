//! Pure codecs of the E2B template storage format (FORMAT.md): header
//! metadata, mappings, frame tables, headers V1–V5 and object keys.
//!
//! No I/O and no panics on input: every length, count and offset read from a
//! file is checked against the bytes present and the caps of FORMAT.md before
//! it is used or sized into an allocation.
//!
//! Where FORMAT.md leaves a case open, tdfs reads it as E2B's own reader
//! (`packages/shared/pkg/storage/header`) does, so both sides agree on every
//! byte:
//! - a V1–V4 header with no mappings is the whole file from the header's own
//!   build at storage offset 0 (E2B's `NewHeader`); a V5 one is all zeros;
//! - bytes after the mappings of a V4/V5 inner block are room for a later
//!   section: skipped (one debug line), not refused. A V1–V3 header's
//!   partial trailing record is still an error, as in E2B;
//! - frames off the header's block grid are read (see
//!   `FrameTable::first_off_grid` for why E2B could not), and `tdfs pack`
//!   never writes them;
//! - metadata.json's `version` decides whether E2B reads its trace
//!   (`trace`), and metadata.json may be re-uploaded (`Blob::may_change`).

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
pub use frame_table::{Frame, FrameTable, OffGrid};
/// Hand-made headers and mappings for unit tests.
#[cfg(test)]
pub(crate) use header::samples;
pub use header::{BuildEntry, Header, MAX_INNER_LEN};
pub use keys::{Blob, FileKind, ObjectKey, ObjectName, parse_build_id};
pub use mapping::{MAX_V5_BUILDS, MAX_V5_MAPPINGS, Mapping, MappingHit, Mappings};
pub use metadata::{METADATA_LEN, Metadata};

/// The unit of alignment of mappings and storage offsets (FORMAT.md).
pub const PAGE_SIZE: u64 = 4096;
