use uuid::Uuid;

use super::FormatError;

/// Most entries of a V5 build-id table.
pub const MAX_V5_BUILDS: u32 = 65_535;
/// Most mappings of a V5 mapping section.
pub const MAX_V5_MAPPINGS: u32 = 8_388_608;

/// One mapping record: template range `[offset, offset+length)` comes from
/// `build_id`'s diff at `storage_offset`. The nil build id means zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub offset: u64,
    pub length: u64,
    pub build_id: Uuid,
    pub storage_offset: u64,
}

impl Mapping {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
    pub fn is_zero(&self) -> bool {
        self.build_id.is_nil()
    }
}

/// Where one template offset is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappingHit {
    /// Nil: the bytes are zeros.
    pub build_id: Uuid,
    /// Byte offset inside that build's (uncompressed) diff; meaningless for nil.
    pub storage_offset: u64,
    /// Bytes from the looked-up offset to the end of the mapping.
    pub remaining: u64,
}

/// A validated mapping list: sorted, gap-free, non-overlapping, page-aligned,
/// covering `[0, size)` (its end may reach `size` rounded up to a page).
/// V5 gaps are filled with nil mappings on decode, so lookups never miss.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mappings {
    items: Vec<Mapping>,
}

impl Mappings {
    /// Validate `items` for a template of `size` bytes. Zero mappings get
    /// storage offset 0 (their stored value is meaningless).
    pub fn new(items: Vec<Mapping>, size: u64) -> Result<Self, FormatError> {
        todo!()
    }

    /// Like `new`, but gaps (and a short tail) read as zeros: V5 semantics.
    pub fn with_gaps_as_zeros(items: Vec<Mapping>, size: u64) -> Result<Self, FormatError> {
        todo!()
    }

    pub fn as_slice(&self) -> &[Mapping] {
        &self.items
    }

    /// Binary search for the mapping holding `off`; None past the end.
    pub fn lookup(&self, off: u64) -> Option<MappingHit> {
        todo!()
    }
}
