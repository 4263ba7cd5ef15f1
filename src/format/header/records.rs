//! The 40-byte mapping record (FORMAT.md "Versions 1–3"): the whole body
//! of a V1–V3 header and the mapping list of a V4 inner block.

use crate::format::cursor::Cursor;
use crate::format::{FormatError, Mapping};

/// Bytes of one V1–V4 mapping record.
pub(super) const RECORD_LEN: usize = 40;

pub(super) fn encode_record(out: &mut Vec<u8>, m: &Mapping) {
    out.extend_from_slice(&m.offset.to_le_bytes());
    out.extend_from_slice(&m.length.to_le_bytes());
    out.extend_from_slice(m.build_id.as_bytes());
    out.extend_from_slice(&m.storage_offset.to_le_bytes());
}

pub(super) fn decode_records(
    cur: &mut Cursor<'_>,
    count: usize,
) -> Result<Vec<Mapping>, FormatError> {
    cur.ensure_records("mapping records", count as u64, RECORD_LEN as u64)?;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        items.push(Mapping {
            offset: cur.u64("mapping offset")?,
            length: cur.u64("mapping length")?,
            build_id: cur.uuid("mapping build id")?,
            storage_offset: cur.u64("mapping storage offset")?,
        });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::super::samples::{P, decode_err, mapping, metadata};
    use super::*;
    use crate::format::{FormatError, Header};

    #[test]
    fn nil_storage_offsets_are_ignored() {
        let size = 2 * P;
        let mut bytes = Vec::new();
        metadata(3, size).encode_into(&mut bytes);
        encode_record(&mut bytes, &mapping(0, P, 0, 123_456_789));
        encode_record(&mut bytes, &mapping(P, P, 1, 0));
        let h = Header::decode(&bytes).unwrap();
        assert_eq!(h.mappings.as_slice()[0].storage_offset, 0);
    }

    #[test]
    fn no_records_mean_the_whole_build_at_offset_zero() {
        // E2B's NewHeader: a V1–V3 header with no mappings is the whole file
        // from the header's own build (id 3 in `metadata`), storage offset 0.
        let size = 3 * P + 512;
        for version in [1, 2, 3] {
            let mut bytes = Vec::new();
            metadata(version, size).encode_into(&mut bytes);
            let h = Header::decode(&bytes).unwrap();
            assert_eq!(
                h.mappings.as_slice(),
                [mapping(0, size, 3, 0)],
                "V{version}"
            );
            let again = Header::decode(&h.encode(3).unwrap()).unwrap();
            assert_eq!(again.mappings, h.mappings);
        }
        let mut empty = Vec::new();
        metadata(3, 0).encode_into(&mut empty);
        assert!(Header::decode(&empty).unwrap().mappings.is_empty());
    }

    #[test]
    fn v3_ending_exactly_at_unaligned_size_is_accepted() {
        let size = 3 * P + 512;
        let mut bytes = Vec::new();
        metadata(3, size).encode_into(&mut bytes);
        encode_record(&mut bytes, &mapping(0, 3 * P, 1, 0));
        encode_record(&mut bytes, &mapping(3 * P, 512, 1, 3 * P));
        let h = Header::decode(&bytes).unwrap();
        assert_eq!(h.mappings.end(), size);
        for v in [3, 4, 5] {
            assert_eq!(
                Header::decode(&h.encode(v).unwrap()).unwrap().mappings,
                h.mappings
            );
        }
    }

    #[test]
    fn rejects_bad_v3_mappings() {
        let size = 4 * P;
        let cases = [
            vec![mapping(0, 2 * P, 1, 0), mapping(P, 3 * P, 1, 0)], // overlap
            vec![mapping(0, 2 * P, 1, 0), mapping(2 * P, 3 * P, 1, 0)], // out of bounds
            vec![
                mapping(0, 2 * P + 1, 1, 0),
                mapping(2 * P + 1, 2 * P - 1, 1, 0),
            ], // unaligned
            vec![mapping(0, 0, 1, 0), mapping(0, 4 * P, 1, 0)],     // zero length
            vec![mapping(0, 2 * P, 1, 0)],                          // short
        ];
        for items in cases {
            let mut bytes = Vec::new();
            metadata(3, size).encode_into(&mut bytes);
            for m in &items {
                encode_record(&mut bytes, m);
            }
            assert!(
                matches!(
                    decode_err(&bytes),
                    FormatError::Invalid {
                        what: "mappings",
                        ..
                    }
                ),
                "{items:?}"
            );
        }
    }
}
