//! The last check before a header is uploaded: the written header, decoded
//! again, against what E2B's reader requires of a writer (issue 22,
//! FORMAT.md). A layout that breaks one of these is a bug in pack, so pack
//! refuses to upload it rather than publish a build E2B would misread.
//!
//! The rules, for the header's own build:
//! - storage offsets and lengths of every stored mapping are whole 4 KiB
//!   pages; the own build's mappings start on its block grid, lie inside
//!   its diff and never share a byte of it;
//! - the mapping list is sorted by template offset (the decoder already
//!   refuses anything else) and same-build neighbours are merged only where
//!   their storage is contiguous (a merge across a jump would read the
//!   wrong bytes, so the decoded list must resolve every own block to where
//!   the layout put it; the caller compares);
//! - frames have one fixed uncompressed size, the last one shorter, a
//!   multiple of the header's block size (E2B's cache marks whole blocks,
//!   so a frame edge off the block grid makes E2B serve wrong bytes), and
//!   cover the diff from 0 without gaps.

use crate::format::{Header, PAGE_SIZE};

/// Check `header` (as decoded from the bytes about to be uploaded), whose
/// own diff is `diff_size` uncompressed bytes cut into frames of
/// `frame_size` bytes when compressed, against E2B's writer rules.
///
/// # Errors
/// The first rule broken, in words naming the mapping or frame.
pub fn check(header: &Header, diff_size: u64, frame_size: u64) -> Result<(), String> {
    let md = &header.metadata;
    let block = md.block_size;
    if block == 0 || !block.is_multiple_of(PAGE_SIZE) {
        return Err(format!("block size {block} is not a whole number of pages"));
    }
    let own = md.build_id;
    let mut own_ranges = Vec::new();
    for (i, m) in header.mappings.as_slice().iter().enumerate() {
        if m.is_zero() {
            continue;
        }
        // The last mapping may end at an unaligned size; pack's sizes are
        // whole pages, so here every length is.
        if !m.storage_offset.is_multiple_of(PAGE_SIZE) || !m.length.is_multiple_of(PAGE_SIZE) {
            return Err(format!(
                "mapping {i} (offset {}, length {}) has storage offset {} or length not in whole pages",
                m.offset, m.length, m.storage_offset
            ));
        }
        if m.build_id == own {
            if !m.storage_offset.is_multiple_of(block) || !m.offset.is_multiple_of(block) {
                return Err(format!(
                    "own mapping {i} (offset {}, storage offset {}) is off the {block}-byte block grid",
                    m.offset, m.storage_offset
                ));
            }
            if m.storage_offset + m.length > diff_size {
                return Err(format!(
                    "own mapping {i} reads [{}, {}) of a {diff_size}-byte diff",
                    m.storage_offset,
                    m.storage_offset + m.length
                ));
            }
            own_ranges.push(m.storage_offset..m.storage_offset + m.length);
        }
    }
    own_ranges.sort_by_key(|r| r.start);
    if let Some(w) = own_ranges.windows(2).find(|w| w[1].start < w[0].end) {
        return Err(format!(
            "own storage ranges {:?} and {:?} overlap",
            w[0], w[1]
        ));
    }

    let Some(entry) = header.build(&own) else {
        // V1–V3: no builds section, the own diff is uncompressed.
        return Ok(());
    };
    let frames = entry.frames.frames();
    if frames.is_empty() {
        return Ok(());
    }
    let frame = frame_size;
    if !frame.is_multiple_of(block) {
        return Err(format!(
            "frames of {frame} bytes are not a multiple of the {block}-byte block"
        ));
    }
    let mut next = 0u64;
    for (i, f) in frames.iter().enumerate() {
        let last = i + 1 == frames.len();
        let size = u64::from(f.size_u);
        if f.start_u != next || size > frame || (!last && size != frame) {
            return Err(format!(
                "frame {i} ([{}, +{size})) breaks the fixed frame size of {frame} bytes",
                f.start_u
            ));
        }
        next += size;
    }
    if next != diff_size || entry.file_size != diff_size {
        return Err(format!(
            "frames cover {next} bytes, the builds section says {}, the diff is {diff_size}",
            entry.file_size
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::format::{BuildEntry, Compression, Frame, FrameTable, Mapping, Mappings, Metadata};

    const B: u64 = 2 << 20;

    fn header(mappings: Vec<Mapping>, frames: Vec<(u64, u32)>) -> Header {
        let own = Uuid::from_u128(1);
        let frames: Vec<Frame> = frames
            .into_iter()
            .map(|(start_u, size_u)| Frame {
                start_u,
                start_c: start_u,
                size_u,
                size_c: size_u,
            })
            .collect();
        let size = mappings.iter().map(Mapping::end).max().unwrap();
        Header {
            metadata: Metadata {
                version: 4,
                block_size: B,
                size,
                generation: 0,
                build_id: own,
                base_build_id: own,
            },
            builds: vec![BuildEntry {
                build_id: own,
                file_size: frames.iter().map(|f| u64::from(f.size_u)).sum(),
                sha256: [0; 32],
                frames: FrameTable::new(Compression::Zstd, frames).unwrap(),
            }],
            mappings: Mappings::new(mappings, size).unwrap(),
        }
    }

    fn own(offset: u64, length: u64, storage_offset: u64) -> Mapping {
        Mapping {
            offset,
            length,
            build_id: Uuid::from_u128(1),
            storage_offset,
        }
    }

    #[test]
    fn a_working_set_layout_passes() {
        let h = header(
            vec![own(0, B, 2 * B), own(B, 2 * B, 0), own(3 * B, 4096, 3 * B)],
            vec![(0, 2 * B as u32), (2 * B, 2 * B as u32 / 2 + 4096)],
        );
        assert_eq!(check(&h, 3 * B + 4096, 2 * B), Ok(()));
        // One short frame alone is the last one.
        let one = header(vec![own(0, B, 0)], vec![(0, B as u32)]);
        assert_eq!(check(&one, B, 4 * B), Ok(()));
    }

    #[test]
    fn broken_rules_are_named() {
        let frames = vec![(0, B as u32), (B, B as u32)];
        let off_grid = header(vec![own(0, B, 4096), own(B, B, B + 4096)], frames.clone());
        assert!(
            check(&off_grid, 2 * B, B)
                .unwrap_err()
                .contains("block grid")
        );
        let overlap = header(vec![own(0, B, 0), own(B, B, 0)], frames.clone());
        assert!(check(&overlap, 2 * B, B).unwrap_err().contains("overlap"));
        let outside = header(vec![own(0, B, 0), own(B, B, 2 * B)], frames);
        assert!(check(&outside, 2 * B, B).unwrap_err().contains("of a"));
        let small = header(
            vec![own(0, 2 * B, 0)],
            vec![(0, (B / 2) as u32), (B / 2, (3 * B / 2) as u32)],
        );
        assert!(
            check(&small, 2 * B, B / 2)
                .unwrap_err()
                .contains("not a multiple")
        );
        let uneven = header(
            vec![own(0, 3 * B, 0)],
            vec![(0, B as u32), (B, 2 * B as u32)],
        );
        assert!(
            check(&uneven, 3 * B, B)
                .unwrap_err()
                .contains("fixed frame size")
        );
    }
}
