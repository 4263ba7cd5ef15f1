//! The 64-byte metadata block that starts every header (FORMAT.md
//! "Header"): version, block size, size, generation, build and base build.

use uuid::Uuid;

use super::FormatError;

/// Size of the fixed metadata block that starts every header.
pub const METADATA_LEN: usize = 64;

/// The 64-byte metadata block of a header (FORMAT.md "Header").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    /// Raw version word; the low 16 bits are the format version.
    pub version: u64,
    pub block_size: u64,
    /// Logical size of the template file in bytes.
    pub size: u64,
    pub generation: u64,
    pub build_id: Uuid,
    pub base_build_id: Uuid,
}

impl Metadata {
    /// The format version (low 16 bits of the version word).
    pub fn format_version(&self) -> u16 {
        (self.version & 0xffff) as u16
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b: &[u8; METADATA_LEN] = bytes
            .get(..METADATA_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(FormatError::Truncated {
                what: "header metadata",
                needed: METADATA_LEN as u64,
                available: bytes.len() as u64,
            })?;
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let uuid_at = |i: usize| Uuid::from_bytes(b[i..i + 16].try_into().expect("16 bytes"));
        let md = Metadata {
            version: u64_at(0),
            block_size: u64_at(8),
            size: u64_at(16),
            generation: u64_at(24),
            build_id: uuid_at(32),
            base_build_id: uuid_at(48),
        };
        if !(1..=5).contains(&md.format_version()) {
            return Err(FormatError::UnsupportedVersion(md.version & 0xffff));
        }
        if md.block_size == 0 {
            return Err(FormatError::invalid("block_size", "block size is 0"));
        }
        Ok(md)
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.block_size.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(self.build_id.as_bytes());
        out.extend_from_slice(self.base_build_id.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_reserved_bits() {
        let md = Metadata {
            version: (7 << 32) | 4,
            block_size: 4096,
            size: 1 << 30,
            generation: 3,
            build_id: Uuid::from_u128(1),
            base_build_id: Uuid::from_u128(2),
        };
        let mut buf = Vec::new();
        md.encode_into(&mut buf);
        assert_eq!(buf.len(), METADATA_LEN);
        let back = Metadata::decode(&buf).unwrap();
        assert_eq!(back, md);
        assert_eq!(back.format_version(), 4);
    }

    #[test]
    fn rejects_bad_version_zero_block_and_truncation() {
        let mut md = Metadata {
            version: 6,
            block_size: 4096,
            size: 0,
            generation: 0,
            build_id: Uuid::nil(),
            base_build_id: Uuid::nil(),
        };
        let mut buf = Vec::new();
        md.encode_into(&mut buf);
        assert_eq!(
            Metadata::decode(&buf),
            Err(FormatError::UnsupportedVersion(6))
        );
        md.version = 3;
        md.block_size = 0;
        buf.clear();
        md.encode_into(&mut buf);
        assert!(matches!(
            Metadata::decode(&buf),
            Err(FormatError::Invalid { .. })
        ));
        assert!(matches!(
            Metadata::decode(&buf[..10]),
            Err(FormatError::Truncated { .. })
        ));
    }
}
