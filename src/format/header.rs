//! The header object of a template file (FORMAT.md "Header"): the `Header`
//! type and its outer layout per version. Every version starts with the
//! metadata; V1–V3 follow it with plain mapping records (`records`), V4/V5
//! with a flags byte, the inner block's length and the LZ4 inner block
//! (`inner`), whose mappings are records in V4 and columns in V5
//! (`v5_mappings`).

mod inner;
#[cfg(test)]
mod props;
mod records;
#[cfg(test)]
pub(crate) mod samples;
mod v5_mappings;

use uuid::Uuid;

use super::cursor::Cursor;
use super::{FormatError, FrameTable, METADATA_LEN, Mappings, Metadata};
use inner::{decode_inner, deflate_into, encode_inner, inflate};
use records::{RECORD_LEN, decode_records, encode_record};

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

/// Bit 0 of the V4/V5 flags byte: the upload was still in flight.
const FLAG_UPLOAD_IN_FLIGHT: u8 = 1;

impl Header {
    /// Decode any version 1–5. The builds section comes back sorted by UUID
    /// bytes whatever order the file used (readers must not require it). A
    /// V4/V5 header with flags bit 0 (upload in flight) is refused: a store
    /// never holds one (E2B refuses to persist it).
    pub fn decode(bytes: &[u8]) -> Result<Header, FormatError> {
        Header::decode_flagged(bytes, false)
    }

    /// Decode a header an E2B origin peer served while the build's upload
    /// is in flight: as `decode`, but flags bit 0 is accepted (E2B sets it
    /// on every header its peers serve). For a peer's answer only, never a
    /// store's object.
    pub fn decode_from_peer(bytes: &[u8]) -> Result<Header, FormatError> {
        Header::decode_flagged(bytes, true)
    }

    fn decode_flagged(bytes: &[u8], upload_in_flight_ok: bool) -> Result<Header, FormatError> {
        let metadata = Metadata::decode(bytes)?;
        let mut cur = Cursor::new(bytes);
        cur.take(METADATA_LEN, "header metadata")?;
        match metadata.format_version() {
            1..=3 => {
                let count = cur.remaining() / RECORD_LEN;
                let mappings = decode_records(&mut cur, count)?;
                if cur.remaining() != 0 {
                    return Err(FormatError::invalid(
                        "mapping records",
                        format!(
                            "{} trailing bytes are not a whole {RECORD_LEN}-byte record; \
                             the header is truncated or corrupt",
                            cur.remaining()
                        ),
                    ));
                }
                Ok(Header {
                    metadata,
                    builds: Vec::new(),
                    mappings: records_to_mappings(mappings, &metadata)?,
                })
            }
            version @ (4 | 5) => {
                let flags = cur.u8("header flags")?;
                if flags & FLAG_UPLOAD_IN_FLIGHT != 0 && !upload_in_flight_ok {
                    return Err(FormatError::invalid(
                        "header flags",
                        "bit 0 is set: this header was captured while its upload was still \
                         in flight; wait for the upload to finish and read it again",
                    ));
                }
                let inner_len = cur.u32("inner block length")?;
                if inner_len > MAX_INNER_LEN {
                    return Err(FormatError::OverLimit {
                        what: "inner block length",
                        value: u64::from(inner_len),
                        limit: u64::from(MAX_INNER_LEN),
                    });
                }
                let compressed = cur.take(cur.remaining(), "inner block")?;
                let inner = inflate(compressed, inner_len)?;
                decode_inner(&inner, metadata, version)
            }
            _ => Err(FormatError::UnsupportedVersion(metadata.version & 0xffff)),
        }
    }

    /// Encode as version 3, 4 or 5 (the version word's reserved bits are
    /// taken from `metadata.version`, the low 16 bits set to `version`).
    /// V4/V5 list the builds sorted by UUID bytes. V3 has no builds section,
    /// so it refuses a header with a compressed build and drops the rest.
    pub fn encode(&self, version: u16) -> Result<Vec<u8>, FormatError> {
        let size = self.metadata.size;
        if self.mappings.end() != size {
            return Err(FormatError::invalid(
                "header",
                format!(
                    "mappings cover {} bytes but the metadata says the template is {size}",
                    self.mappings.end()
                ),
            ));
        }
        let mut metadata = self.metadata;
        metadata.version = (metadata.version & !0xffff) | u64::from(version);
        let mut out = Vec::new();
        metadata.encode_into(&mut out);
        match version {
            3 => {
                if let Some(b) = self.builds.iter().find(|b| b.frames.is_compressed()) {
                    return Err(FormatError::invalid(
                        "header",
                        format!(
                            "build {} is compressed; version 3 cannot describe compressed builds",
                            b.build_id
                        ),
                    ));
                }
                for m in self.mappings.as_slice() {
                    encode_record(&mut out, m);
                }
            }
            4 | 5 => {
                let inner = encode_inner(self, version)?;
                let inner_len = u32::try_from(inner.len())
                    .ok()
                    .filter(|&len| len <= MAX_INNER_LEN)
                    .ok_or(FormatError::OverLimit {
                        what: "inner block length",
                        value: inner.len() as u64,
                        limit: u64::from(MAX_INNER_LEN),
                    })?;
                out.push(0);
                out.extend_from_slice(&inner_len.to_le_bytes());
                deflate_into(&mut out, &inner)?;
            }
            other => {
                return Err(FormatError::invalid(
                    "header version",
                    format!("tdfs writes versions 3, 4 and 5, not {other}"),
                ));
            }
        }
        Ok(out)
    }

    /// The format version, 1 to 5 (the low 16 bits of the version word).
    pub fn version(&self) -> u16 {
        self.metadata.format_version()
    }

    /// The builds-section entry of build `id`; `None` if the header does
    /// not list it (always for V1–V3, which have no builds section).
    pub fn build(&self, id: &Uuid) -> Option<&BuildEntry> {
        self.builds.iter().find(|b| b.build_id == *id)
    }
}

/// The mappings of V1–V4 records. No records at all mean the whole file
/// from the header's own build at storage offset 0 (E2B's `NewHeader`);
/// V5 differs: its empty mapping section is all zeros.
fn records_to_mappings(
    records: Vec<super::Mapping>,
    metadata: &Metadata,
) -> Result<Mappings, FormatError> {
    if records.is_empty() {
        return Mappings::whole_build(metadata.build_id, metadata.size);
    }
    Mappings::new(records, metadata.size)
}

/// Write a u32 count, refusing one over `limit`.
fn put_count(
    out: &mut Vec<u8>,
    count: usize,
    limit: u32,
    what: &'static str,
) -> Result<(), FormatError> {
    let value =
        u32::try_from(count)
            .ok()
            .filter(|&c| c <= limit)
            .ok_or(FormatError::OverLimit {
                what,
                value: count as u64,
                limit: u64::from(limit),
            })?;
    out.extend_from_slice(&value.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::samples::{P, decode_err, header, id};
    use super::*;
    use crate::format::Compression;

    #[test]
    fn round_trip_every_version_and_codec() {
        for (version, c) in [
            (3, Compression::None),
            (4, Compression::None),
            (4, Compression::Zstd),
            (4, Compression::Lz4),
            (5, Compression::None),
            (5, Compression::Zstd),
            (5, Compression::Lz4),
        ] {
            let h = header(version, c);
            let bytes = h.encode(version as u16).unwrap();
            let back = Header::decode(&bytes).unwrap();
            assert_eq!(back, h, "V{version} {c:?}");
            assert_eq!(back.version(), version as u16);
            if c != Compression::None {
                assert_eq!(back.build(&id(2)).unwrap().frames.compression(), c);
            }
        }
    }

    #[test]
    fn v1_and_v2_parse_like_v3_and_reserved_bits_survive() {
        let h = header(3, Compression::None);
        let v3 = h.encode(3).unwrap();
        for v in [1u64, 2] {
            let mut bytes = v3.clone();
            bytes[..8].copy_from_slice(&v.to_le_bytes());
            let back = Header::decode(&bytes).unwrap();
            assert_eq!(back.version(), v as u16);
            assert_eq!(back.mappings, h.mappings);
        }
        let mut reserved = header(5, Compression::Zstd);
        reserved.metadata.version = (0xabcd << 16) | 5;
        let back = Header::decode(&reserved.encode(5).unwrap()).unwrap();
        assert_eq!(back.metadata.version, (0xabcd << 16) | 5);
        // Re-encoding in another version keeps the reserved bits.
        let v4 = Header::decode(&back.encode(4).unwrap()).unwrap();
        assert_eq!(v4.metadata.version, (0xabcd << 16) | 4);
    }

    #[test]
    fn rejects_truncated_and_bad_versions() {
        let good = header(4, Compression::Zstd).encode(4).unwrap();
        for len in [0, 10, 63, 64, 65, 68, 69, 80, good.len() - 1] {
            let err = decode_err(&good[..len]);
            assert!(
                matches!(
                    err,
                    FormatError::Truncated { .. } | FormatError::CorruptInner(_)
                ),
                "{len}: {err}"
            );
        }
        let v3 = header(3, Compression::None).encode(3).unwrap();
        assert!(matches!(
            decode_err(&v3[..v3.len() - 1]),
            FormatError::Invalid { .. }
        ));
        for v in [0u64, 6, 0xffff] {
            let mut bytes = v3.clone();
            bytes[..8].copy_from_slice(&v.to_le_bytes());
            assert_eq!(decode_err(&bytes), FormatError::UnsupportedVersion(v));
        }
        assert!(header(3, Compression::None).encode(2).is_err());
        assert!(header(4, Compression::Zstd).encode(3).is_err());
    }

    #[test]
    fn encode_refuses_what_it_cannot_write() {
        let mut h = header(4, Compression::Zstd);
        h.metadata.size += P;
        assert!(h.encode(4).is_err());
        let mut h = header(4, Compression::Zstd);
        h.builds[0].file_size = u64::MAX;
        assert!(h.encode(4).is_err());
    }
}
