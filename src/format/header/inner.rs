//! The inner block of a V4/V5 header (FORMAT.md "Version 4 (compressed
//! builds)"): an LZ4 frame holding the builds section (each build's diff
//! size, SHA-256 and frame table) and then the mappings, as records (V4) or
//! columns (V5). Inflating is bounded by the declared length, so a bomb
//! cannot grow the buffer.

use std::io::Read;

use lz4_flex::frame::{BlockMode, BlockSize, FrameDecoder, FrameEncoder, FrameInfo};

use super::records::{decode_records, encode_record};
use super::v5_mappings::{decode_v5_mappings, encode_v5_mappings};
use super::{BuildEntry, Header, put_count, records_to_mappings};
use crate::format::cursor::Cursor;
use crate::format::{FormatError, FrameTable, Metadata};

/// Smallest builds-section entry: id, size, sha and an empty frame table.
const MIN_BUILD_ENTRY_LEN: u64 = 16 + 8 + 32 + 8;

/// The inner block of a V4/V5 header: builds section, then mappings.
pub(super) fn encode_inner(header: &Header, version: u16) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::new();
    let mut builds: Vec<&BuildEntry> = header.builds.iter().collect();
    builds.sort_by_key(|b| *b.build_id.as_bytes());
    put_count(&mut out, builds.len(), u32::MAX, "build count")?;
    for b in builds {
        let file_size = i64::try_from(b.file_size).map_err(|_| {
            FormatError::invalid(
                "build entry",
                format!("file size {} of {} exceeds i64", b.file_size, b.build_id),
            )
        })?;
        out.extend_from_slice(b.build_id.as_bytes());
        out.extend_from_slice(&file_size.to_le_bytes());
        out.extend_from_slice(&b.sha256);
        b.frames.encode_into(&mut out);
    }
    let mappings = header.mappings.as_slice();
    if version == 4 {
        put_count(&mut out, mappings.len(), u32::MAX, "mapping count")?;
        for m in mappings {
            encode_record(&mut out, m);
        }
    } else {
        encode_v5_mappings(&mut out, &header.mappings)?;
    }
    Ok(out)
}

/// LZ4 frame settings of the inner block (FORMAT.md, V4).
fn inner_frame_info() -> FrameInfo {
    FrameInfo::new()
        .block_size(BlockSize::Max4MB)
        .block_mode(BlockMode::Independent)
        .block_checksums(true)
        .content_checksum(true)
}

/// Decode the LZ4 inner block to exactly `inner_len` bytes. Reads at most one
/// byte more than promised, so a bomb cannot grow the buffer past the cap.
pub(super) fn inflate(compressed: &[u8], inner_len: u32) -> Result<Vec<u8>, FormatError> {
    let mut inner = Vec::new();
    FrameDecoder::new(compressed)
        .take(u64::from(inner_len) + 1)
        .read_to_end(&mut inner)
        .map_err(|e| FormatError::CorruptInner(e.to_string()))?;
    if inner.len() != inner_len as usize {
        return Err(FormatError::CorruptInner(
            if inner.len() > inner_len as usize {
                format!("decodes to more than the {inner_len} bytes the header declares")
            } else {
                format!(
                    "decodes to {} bytes, the header declares {inner_len}",
                    inner.len()
                )
            },
        ));
    }
    Ok(inner)
}

pub(super) fn deflate_into(out: &mut Vec<u8>, inner: &[u8]) -> Result<(), FormatError> {
    let fail = |e: &dyn std::fmt::Display| {
        FormatError::invalid("inner block", format!("LZ4 compression failed: {e}"))
    };
    let mut encoder = FrameEncoder::with_frame_info(inner_frame_info(), out);
    std::io::Write::write_all(&mut encoder, inner).map_err(|e| fail(&e))?;
    encoder.finish().map_err(|e| fail(&e))?;
    Ok(())
}

pub(super) fn decode_inner(
    inner: &[u8],
    metadata: Metadata,
    version: u16,
) -> Result<Header, FormatError> {
    let mut cur = Cursor::new(inner);
    let num_builds = cur.u32("build count")?;
    cur.ensure_records("builds section", u64::from(num_builds), MIN_BUILD_ENTRY_LEN)?;
    let mut builds = Vec::with_capacity(num_builds as usize);
    for _ in 0..num_builds {
        builds.push(BuildEntry {
            build_id: cur.uuid("build id")?,
            file_size: cur.non_negative_i64("build file size")?,
            sha256: cur.sha256("build sha256")?,
            frames: FrameTable::decode_from(&mut cur)?,
        });
    }
    builds.sort_by_key(|b| *b.build_id.as_bytes());
    if let Some(pair) = builds.windows(2).find(|w| w[0].build_id == w[1].build_id) {
        return Err(FormatError::invalid(
            "builds section",
            format!("build {} is listed twice", pair[0].build_id),
        ));
    }
    let mappings = if version == 4 {
        let count = cur.u32("mapping count")?;
        let items = decode_records(&mut cur, count as usize)?;
        records_to_mappings(items, &metadata)?
    } else {
        decode_v5_mappings(&mut cur, metadata.size)?
    };
    // E2B stops reading after the mappings: what follows is room for a
    // later section, so it is skipped, not refused.
    if cur.remaining() != 0 {
        log::debug!(
            "header of build {} (V{version}): {} bytes after the mappings of the inner block \
             ignored (room for a later section, as E2B reads it)",
            metadata.build_id,
            cur.remaining()
        );
    }
    Ok(Header {
        metadata,
        builds,
        mappings,
    })
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::super::samples::{P, decode_err, header, id, mapping, metadata, wrap};
    use super::*;
    use crate::format::{Compression, MAX_INNER_LEN, METADATA_LEN};

    #[test]
    fn v4_and_v5_encode_sorted_and_read_unsorted() {
        let mut h = header(4, Compression::Lz4);
        h.builds.reverse();
        let bytes = h.encode(4).unwrap();
        let back = Header::decode(&bytes).unwrap();
        let order: Vec<Uuid> = back.builds.iter().map(|b| b.build_id).collect();
        assert_eq!(order, [id(1), id(2), id(3)]);

        // Hand-written inner block with builds in descending order.
        let mut inner = 2u32.to_le_bytes().to_vec();
        for n in [9u128, 4] {
            inner.extend_from_slice(id(n).as_bytes());
            inner.extend_from_slice(&0i64.to_le_bytes());
            inner.extend_from_slice(&[0; 32]);
            FrameTable::uncompressed().encode_into(&mut inner);
        }
        inner.extend_from_slice(&1u32.to_le_bytes());
        encode_record(&mut inner, &mapping(0, P, 9, 0));
        let back = Header::decode(&wrap(4, P, 0, &inner)).unwrap();
        assert_eq!(back.builds.len(), 2);
        assert!(back.build(&id(9)).is_some());
    }

    #[test]
    fn rejects_bad_v4_envelopes() {
        let inner = 0u32.to_le_bytes();
        // Flags bit 0: upload in flight.
        let err = decode_err(&wrap(4, 0, 1, &inner));
        assert!(err.to_string().contains("in flight"), "{err}");
        // ... accepted from an E2B origin peer, and only there.
        assert!(Header::decode_from_peer(&wrap(4, 0, 1, &[0u8; 8])).is_ok());
        assert!(Header::decode(&wrap(4, 0, 1, &[0u8; 8])).is_err());
        // Other flag bits are ignored.
        assert!(Header::decode(&wrap(4, 0, 0b10, &[0u8; 8])).is_ok());
        // Inner length over the cap, refused before decoding anything.
        let mut bytes = Vec::new();
        metadata(4, 0).encode_into(&mut bytes);
        bytes.push(0);
        bytes.extend_from_slice(&(MAX_INNER_LEN + 1).to_le_bytes());
        assert!(matches!(
            decode_err(&bytes),
            FormatError::OverLimit {
                what: "inner block length",
                ..
            }
        ));
        // Garbage instead of an LZ4 frame.
        bytes.truncate(METADATA_LEN + 1);
        bytes.extend_from_slice(&100u32.to_le_bytes());
        bytes.extend_from_slice(b"this is not an lz4 frame at all");
        assert!(matches!(decode_err(&bytes), FormatError::CorruptInner(_)));
        // A valid frame whose length disagrees with inner_len, both ways.
        let mut good = wrap(4, 0, 0, &[0u8; 8]);
        good[65..69].copy_from_slice(&7u32.to_le_bytes());
        assert!(matches!(decode_err(&good), FormatError::CorruptInner(_)));
        good[65..69].copy_from_slice(&9u32.to_le_bytes());
        assert!(matches!(decode_err(&good), FormatError::CorruptInner(_)));
        // A corrupted byte inside the frame fails its checksum.
        let mut flipped = header(4, Compression::Lz4).encode(4).unwrap();
        let mid = 69 + (flipped.len() - 69) / 2;
        flipped[mid] ^= 0x55;
        assert!(Header::decode(&flipped).is_err());
    }

    #[test]
    fn bytes_after_the_mappings_are_ignored() {
        // E2B reads nothing after the mappings (room for a later section):
        // the header decodes as if they were not there, in V4 and V5.
        for version in [4u16, 5] {
            let h = header(u64::from(version), Compression::Zstd);
            let inner = encode_inner(&h, version).unwrap();
            let mut longer = inner.clone();
            longer.extend_from_slice(b"a later section");
            let size = h.metadata.size;
            let back = Header::decode(&wrap(u64::from(version), size, 0, &longer)).unwrap();
            let plain = Header::decode(&wrap(u64::from(version), size, 0, &inner)).unwrap();
            assert_eq!(back, plain, "V{version}");
            assert_eq!(back.mappings, h.mappings, "V{version}");
        }
    }

    #[test]
    fn zero_v4_mappings_are_the_whole_build_but_zero_v5_mappings_are_zeros() {
        let size = 5 * P + 100;
        // No builds, no mappings: V4 reads it as E2B's NewHeader does.
        let v4 = Header::decode(&wrap(4, size, 0, &[0u8; 8])).unwrap();
        assert_eq!(v4.mappings.as_slice(), [mapping(0, size, 3, 0)]);
        // V5: an empty build-id table and no mappings, all zeros.
        let v5 = Header::decode(&wrap(5, size, 0, &[0u8; 12])).unwrap();
        assert_eq!(v5.mappings.as_slice().len(), 1);
        assert!(v5.mappings.as_slice()[0].is_zero());
    }

    #[test]
    fn rejects_bad_builds_sections() {
        // More builds than bytes: refused before allocating.
        let mut inner = u32::MAX.to_le_bytes().to_vec();
        inner.extend_from_slice(&[0; 64]);
        assert!(matches!(
            decode_err(&wrap(4, 0, 0, &inner)),
            FormatError::Truncated { .. }
        ));
        let entry = |n: u128, size: i64, table: &[u8]| {
            let mut e = id(n).as_bytes().to_vec();
            e.extend_from_slice(&size.to_le_bytes());
            e.extend_from_slice(&[0; 32]);
            e.extend_from_slice(table);
            e
        };
        let none = [0u8; 8];
        let with = |entries: &[Vec<u8>]| {
            let mut inner = (entries.len() as u32).to_le_bytes().to_vec();
            for e in entries {
                inner.extend_from_slice(e);
            }
            inner.extend_from_slice(&0u32.to_le_bytes());
            wrap(4, 0, 0, &inner)
        };
        assert!(Header::decode(&with(&[entry(1, 0, &none)])).is_ok());
        assert!(matches!(
            decode_err(&with(&[entry(1, -1, &none)])),
            FormatError::Invalid { .. }
        ));
        assert!(matches!(
            decode_err(&with(&[entry(1, 0, &none), entry(1, 0, &none)])),
            FormatError::Invalid {
                what: "builds section",
                ..
            }
        ));
        // Frame count over the cap.
        let mut over = 1u32.to_le_bytes().to_vec();
        over.extend_from_slice(&(crate::format::limits::MAX_FRAMES + 1).to_le_bytes());
        assert!(matches!(
            decode_err(&with(&[entry(1, 0, &over)])),
            FormatError::OverLimit {
                what: "frame count",
                ..
            }
        ));
        // Unknown compression type.
        let mut unknown = 9u32.to_le_bytes().to_vec();
        unknown.extend_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            decode_err(&with(&[entry(1, 0, &unknown)])),
            FormatError::Invalid {
                what: "compression type",
                ..
            }
        ));
        // Overlapping frames.
        let mut overlapping = 1u32.to_le_bytes().to_vec();
        overlapping.extend_from_slice(&2u32.to_le_bytes());
        for start in [0i64, 10] {
            overlapping.extend_from_slice(&start.to_le_bytes());
            overlapping.extend_from_slice(&(start * 10).to_le_bytes());
            overlapping.extend_from_slice(&20i32.to_le_bytes());
            overlapping.extend_from_slice(&5i32.to_le_bytes());
        }
        assert!(matches!(
            decode_err(&with(&[entry(1, 0, &overlapping)])),
            FormatError::Invalid {
                what: "frame table",
                ..
            }
        ));
    }
}
