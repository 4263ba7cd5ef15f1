//! Any bytes as a header: whatever decodes answers every lookup consistently
//! with its mapping list (checked against a linear scan), never panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tdfs::format::Header;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = Header::decode(data) else { return };
    let maps = h.mappings.as_slice();
    let size = h.metadata.size;
    assert_eq!(h.mappings.end(), size);
    let probes = data
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .map(|v| if size == 0 { v } else { v % (size + 1) })
        .chain(maps.iter().flat_map(|m| [m.offset, m.end() - 1, m.end()]))
        .chain([0, size, u64::MAX]);
    for off in probes {
        let scan = maps.iter().find(|m| m.offset <= off && off < m.end());
        match (h.mappings.lookup(off), scan) {
            (None, None) => assert!(off >= size),
            (Some(hit), Some(m)) => {
                assert_eq!(hit.build_id, m.build_id);
                assert_eq!(hit.remaining, m.end() - off);
                if !m.is_zero() {
                    assert_eq!(hit.storage_offset, m.storage_offset + (off - m.offset));
                }
            }
            (hit, scan) => panic!("offset {off}: lookup {hit:?}, scan {scan:?}"),
        }
    }
    let norm = h.mappings.normalized();
    assert!(norm.len() <= maps.len());
    assert_eq!(norm.end(), size);
});
