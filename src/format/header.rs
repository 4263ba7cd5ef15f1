use uuid::Uuid;

use super::{FormatError, FrameTable, Mappings, Metadata};

/// Cap on the decoded inner block of a V4/V5 header.
pub const MAX_INNER_LEN: u32 = 256 << 20;

/// One entry of a V4/V5 builds section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildEntry {
    pub build_id: Uuid,
    /// Uncompressed size of that build's diff (0 with a zero sha = unknown).
    pub file_size: u64,
    /// SHA-256 of the uncompressed diff; all zero = unknown.
    pub sha256: [u8; 32],
    pub frames: FrameTable,
}

/// A decoded header: metadata, builds section (empty for V1–V3) and mappings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub metadata: Metadata,
    pub builds: Vec<BuildEntry>,
    pub mappings: Mappings,
}

impl Header {
    /// Decode any version 1–5.
    pub fn decode(bytes: &[u8]) -> Result<Header, FormatError> {
        todo!()
    }

    /// Encode as version 3, 4 or 5 (the version word's reserved bits are
    /// taken from `metadata.version`, the low 16 bits set to `version`).
    pub fn encode(&self, version: u16) -> Result<Vec<u8>, FormatError> {
        todo!()
    }

    pub fn version(&self) -> u16 {
        self.metadata.format_version()
    }

    pub fn build(&self, id: &Uuid) -> Option<&BuildEntry> {
        self.builds.iter().find(|b| b.build_id == *id)
    }
}
