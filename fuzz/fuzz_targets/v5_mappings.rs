//! Any bytes as the columnar V5 mapping section (build-id table, count and
//! four varint columns): wrapped into a valid V5 envelope so every input
//! reaches the varint parser, which must never panic; decoded mappings must
//! survive a V5 round trip.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use lz4_flex::frame::{BlockSize, FrameEncoder, FrameInfo};
use tdfs::format::{Header, METADATA_LEN};

fuzz_target!(|data: &[u8]| {
    // First byte picks the template size in MiB; the rest is the section.
    let Some((&mib, section)) = data.split_first() else {
        return;
    };
    let size = u64::from(mib) << 20;
    let mut inner = 0u32.to_le_bytes().to_vec(); // empty builds section
    inner.extend_from_slice(section);

    let mut bytes = Vec::with_capacity(METADATA_LEN + 5 + inner.len());
    for word in [5u64, 2 << 20, size, 1] {
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    bytes.extend_from_slice(&[7; 32]);
    bytes.push(0);
    bytes.extend_from_slice(&(inner.len() as u32).to_le_bytes());
    // Small blocks keep each run fast; the reader accepts any block size.
    let info = FrameInfo::new()
        .block_size(BlockSize::Max64KB)
        .block_checksums(true)
        .content_checksum(true);
    let mut encoder = FrameEncoder::with_frame_info(info, bytes);
    encoder.write_all(&inner).unwrap();
    let bytes = encoder.finish().unwrap();

    let Ok(h) = Header::decode(&bytes) else {
        return;
    };
    assert_eq!(h.mappings.end(), size);
    let back = Header::decode(&h.encode(5).expect("re-encodes")).expect("decodes");
    for m in h.mappings.as_slice().iter().filter(|m| !m.is_zero()) {
        let hit = back.mappings.lookup(m.offset).expect("mapped");
        assert_eq!(
            (hit.build_id, hit.storage_offset),
            (m.build_id, m.storage_offset)
        );
    }
});
