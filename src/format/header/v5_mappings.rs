//! The columnar mapping section of a V5 inner block (FORMAT.md "Version
//! 5"): a table of the builds referenced, then four columns of varints
//! (offset deltas, lengths, storage deltas, table indexes) in pages, with
//! no entries for zero ranges.

use std::collections::HashMap;

use uuid::Uuid;

use super::put_count;
use crate::format::cursor::Cursor;
use crate::format::varint::{put_uvarint, put_varint, read_uvarint, read_varint};
use crate::format::{FormatError, MAX_V5_BUILDS, MAX_V5_MAPPINGS, Mapping, Mappings, PAGE_SIZE};

fn pages_to_bytes(pages: u64, what: &'static str) -> Result<u64, FormatError> {
    pages
        .checked_mul(PAGE_SIZE)
        .ok_or_else(|| FormatError::invalid(what, format!("{pages} pages overflow")))
}

/// The V5 columnar mapping section (FORMAT.md, Version 5).
pub(super) fn decode_v5_mappings(cur: &mut Cursor<'_>, size: u64) -> Result<Mappings, FormatError> {
    let m = cur.u32("V5 build-id table size")?;
    if m > MAX_V5_BUILDS {
        return Err(FormatError::OverLimit {
            what: "V5 build-id table size",
            value: u64::from(m),
            limit: u64::from(MAX_V5_BUILDS),
        });
    }
    cur.ensure_records("V5 build-id table", u64::from(m), 16)?;
    let table = (0..m)
        .map(|_| cur.uuid("V5 build id"))
        .collect::<Result<Vec<_>, _>>()?;
    let n = cur.u32("V5 mapping count")?;
    if n > MAX_V5_MAPPINGS {
        return Err(FormatError::OverLimit {
            what: "V5 mapping count",
            value: u64::from(n),
            limit: u64::from(MAX_V5_MAPPINGS),
        });
    }
    // Four columns of varints, each at least one byte.
    cur.ensure_records("V5 mapping columns", u64::from(n), 4)?;
    let n = n as usize;
    let mut items = Vec::with_capacity(n);
    let mut offset_pages = 0u64;
    for _ in 0..n {
        let delta = read_uvarint(cur, "V5 offset delta")?;
        offset_pages = offset_pages
            .checked_add(delta)
            .ok_or_else(|| FormatError::invalid("V5 offset delta", "offset overflows"))?;
        items.push(Mapping {
            offset: pages_to_bytes(offset_pages, "V5 mapping offset")?,
            length: 0,
            build_id: Uuid::nil(),
            storage_offset: 0,
        });
    }
    for item in &mut items {
        item.length = pages_to_bytes(read_uvarint(cur, "V5 length")?, "V5 mapping length")?;
    }
    // Storage deltas are resolved once the build of each entry is known.
    let storage_deltas = (0..n)
        .map(|_| read_varint(cur, "V5 storage delta"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut storage_pages = 0u64;
    for (item, delta) in items.iter_mut().zip(storage_deltas) {
        let index = read_uvarint(cur, "V5 build index")?;
        let build_id = usize::try_from(index)
            .ok()
            .and_then(|i| table.get(i))
            .ok_or_else(|| {
                FormatError::invalid(
                    "V5 build index",
                    format!("{index} is outside the table of {m} builds"),
                )
            })?;
        // Deltas chain over non-nil entries only (FORMAT.md).
        if build_id.is_nil() {
            continue;
        }
        storage_pages = storage_pages.checked_add_signed(delta).ok_or_else(|| {
            FormatError::invalid(
                "V5 storage delta",
                format!("storage offset {storage_pages} pages plus {delta} is out of range"),
            )
        })?;
        item.build_id = *build_id;
        item.storage_offset = pages_to_bytes(storage_pages, "V5 storage offset")?;
    }
    Mappings::with_gaps_as_zeros(items, size)
}

pub(super) fn encode_v5_mappings(
    out: &mut Vec<u8>,
    mappings: &Mappings,
) -> Result<(), FormatError> {
    let table = mappings.referenced_builds();
    put_count(out, table.len(), MAX_V5_BUILDS, "V5 build-id table size")?;
    for id in &table {
        out.extend_from_slice(id.as_bytes());
    }
    let listed: Vec<&Mapping> = mappings
        .as_slice()
        .iter()
        .filter(|m| !m.is_zero())
        .collect();
    put_count(out, listed.len(), MAX_V5_MAPPINGS, "V5 mapping count")?;
    let mut prev_offset = 0;
    for m in &listed {
        let offset = m.offset / PAGE_SIZE;
        put_uvarint(out, offset - prev_offset);
        prev_offset = offset;
    }
    for m in &listed {
        // Only a last mapping ending at an unaligned size has a partial page;
        // it is written as a whole page, which readers accept and clip.
        put_uvarint(out, m.length.div_ceil(PAGE_SIZE));
    }
    let mut prev_storage: i64 = 0;
    for m in &listed {
        // Page counts are below 2^52, so they and their differences fit i64.
        let storage = (m.storage_offset / PAGE_SIZE) as i64;
        put_varint(out, storage - prev_storage);
        prev_storage = storage;
    }
    let index_of: HashMap<Uuid, u64> = table.iter().zip(0u64..).map(|(id, i)| (*id, i)).collect();
    for m in &listed {
        // `referenced_builds` lists every non-nil build of the mappings.
        put_uvarint(out, index_of[&m.build_id]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::inner::inflate;
    use super::super::samples::{P, decode_err, id, mapping, metadata, wrap};
    use super::*;
    use crate::format::{Header, METADATA_LEN};

    #[test]
    fn v5_layout_matches_the_format() {
        let size = 8 * P;
        let h = Header {
            metadata: metadata(5, size),
            builds: Vec::new(),
            mappings: Mappings::new(
                vec![
                    mapping(0, P, 7, 3 * P),
                    mapping(P, 2 * P, 0, 0),
                    mapping(3 * P, 2 * P, 5, 0),
                    mapping(5 * P, 3 * P, 7, P),
                ],
                size,
            )
            .unwrap(),
        };
        let bytes = h.encode(5).unwrap();
        let inner = inflate(&bytes[METADATA_LEN + 5..], (bytes.len() as u32) * 4).unwrap_err();
        assert!(matches!(inner, FormatError::CorruptInner(_)));
        let inner_len = u32::from_le_bytes(bytes[65..69].try_into().unwrap());
        let inner = inflate(&bytes[69..], inner_len).unwrap();
        let mut want = 0u32.to_le_bytes().to_vec(); // no builds
        want.extend_from_slice(&2u32.to_le_bytes()); // M, first appearance order
        want.extend_from_slice(id(7).as_bytes());
        want.extend_from_slice(id(5).as_bytes());
        want.extend_from_slice(&3u32.to_le_bytes()); // N: the zero range is omitted
        want.extend_from_slice(&[0, 3, 2]); // offset deltas (pages)
        want.extend_from_slice(&[1, 2, 3]); // lengths (pages)
        want.extend_from_slice(&[6, 5, 2]); // storage deltas 3, -3, +1 zig-zagged
        want.extend_from_slice(&[0, 1, 0]); // table indexes
        assert_eq!(inner, want);
        assert_eq!(Header::decode(&bytes).unwrap(), h);
    }

    /// V5 inner block with no builds section entries and the given columns.
    fn v5_inner(table: &[Uuid], n: u32, columns: &[u8]) -> Vec<u8> {
        let mut inner = 0u32.to_le_bytes().to_vec();
        inner.extend_from_slice(&(table.len() as u32).to_le_bytes());
        for t in table {
            inner.extend_from_slice(t.as_bytes());
        }
        inner.extend_from_slice(&n.to_le_bytes());
        inner.extend_from_slice(columns);
        inner
    }

    #[test]
    fn v5_nil_table_entries_read_as_zeros_outside_the_storage_chain() {
        // Entries: build 7 @ storage 2, nil (delta 40 ignored), build 7 @ 2+1.
        let inner = v5_inner(
            &[id(7), Uuid::nil()],
            3,
            &[0, 1, 1, 1, 1, 1, 4, 80, 2, 0, 1, 0],
        );
        let h = Header::decode(&wrap(5, 4 * P, 0, &inner)).unwrap();
        let s = h.mappings.as_slice();
        assert_eq!(s[0], mapping(0, P, 7, 2 * P));
        assert!(s[1].is_zero());
        assert_eq!(s[2], mapping(2 * P, P, 7, 3 * P));
        assert!(s[3].is_zero());
    }

    #[test]
    fn rejects_bad_v5_sections() {
        let size = 4 * P;
        let err = |inner: Vec<u8>| decode_err(&wrap(5, size, 0, &inner));
        // N larger than the bytes allow (4 varints of at least 1 byte each).
        assert!(matches!(
            err(v5_inner(&[id(1)], 3, &[0; 11])),
            FormatError::Truncated { .. }
        ));
        assert!(matches!(
            err(v5_inner(&[id(1)], MAX_V5_MAPPINGS + 1, &[])),
            FormatError::OverLimit { .. }
        ));
        let mut big_table = 0u32.to_le_bytes().to_vec();
        big_table.extend_from_slice(&(MAX_V5_BUILDS + 1).to_le_bytes());
        assert!(matches!(err(big_table), FormatError::OverLimit { .. }));
        // Table larger than the bytes.
        let mut short_table = 0u32.to_le_bytes().to_vec();
        short_table.extend_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(err(short_table), FormatError::Truncated { .. }));
        // Zero length.
        assert!(matches!(
            err(v5_inner(&[id(1)], 1, &[0, 0, 0, 0])),
            FormatError::Invalid {
                what: "mappings",
                ..
            }
        ));
        // Overlap: second starts 1 page after the first, which is 2 long.
        assert!(matches!(
            err(v5_inner(&[id(1)], 2, &[0, 1, 2, 1, 0, 4, 0, 0])),
            FormatError::Invalid {
                what: "mappings",
                ..
            }
        ));
        // Beyond the end of the template.
        assert!(matches!(
            err(v5_inner(&[id(1)], 1, &[0, 5, 0, 0])),
            FormatError::Invalid {
                what: "mappings",
                ..
            }
        ));
        // Index outside the table.
        assert!(matches!(
            err(v5_inner(&[id(1)], 1, &[0, 1, 0, 1])),
            FormatError::Invalid {
                what: "V5 build index",
                ..
            }
        ));
        // Negative storage offset.
        assert!(matches!(
            err(v5_inner(&[id(1)], 1, &[0, 1, 1, 0])),
            FormatError::Invalid {
                what: "V5 storage delta",
                ..
            }
        ));
        // Overflowing varint and page counts.
        let mut huge = vec![0xff; 9];
        huge.push(0x01);
        huge.extend_from_slice(&[1, 0, 0]);
        assert!(
            err(v5_inner(&[id(1)], 1, &huge))
                .to_string()
                .contains("overflow")
        );
        // Gaps and tail read as zeros.
        let h = Header::decode(&wrap(5, size, 0, &v5_inner(&[id(1)], 1, &[1, 1, 0, 0]))).unwrap();
        assert_eq!(h.mappings.len(), 3);
        assert!(h.mappings.lookup(0).unwrap().build_id.is_nil());
        assert_eq!(h.mappings.lookup(P).unwrap().build_id, id(1));
    }
}
