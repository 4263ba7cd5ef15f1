//! Hand-made headers, mappings and header bytes shared by the unit tests
//! of the header codec.

use uuid::Uuid;

use super::inner::deflate_into;
use super::{BuildEntry, Header};
use crate::format::{
    Compression, FormatError, Frame, FrameTable, Mapping, Mappings, Metadata, PAGE_SIZE,
};

pub(super) const P: u64 = PAGE_SIZE;

pub(crate) fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

pub(super) fn metadata(version: u64, size: u64) -> Metadata {
    Metadata {
        version,
        block_size: 2 << 20,
        size,
        generation: 2,
        build_id: id(3),
        base_build_id: id(1),
    }
}

/// A mapping of `[offset, offset + length)` to build `build` (`id(build)`;
/// 0 is the zero build) at `storage_offset`: unit tests of format and pack.
pub(crate) fn mapping(offset: u64, length: u64, build: u128, storage_offset: u64) -> Mapping {
    Mapping {
        offset,
        length,
        build_id: id(build),
        storage_offset,
    }
}

pub(super) fn layered_mappings(size: u64) -> Mappings {
    Mappings::new(
        vec![
            mapping(0, 4 * P, 1, 0),
            mapping(4 * P, 2 * P, 0, 0),
            mapping(6 * P, P, 3, 0),
            mapping(7 * P, 3 * P, 1, 8 * P),
            mapping(10 * P, P, 2, 2 * P),
            mapping(11 * P, P, 3, P),
            mapping(12 * P, size - 12 * P, 0, 0),
        ],
        size,
    )
    .unwrap()
}

pub(super) fn frames(c: Compression, count: u64) -> FrameTable {
    let list = (0..count)
        .map(|i| Frame {
            start_u: i * 4 * P,
            start_c: i * 1000 + 7,
            size_u: (4 * P) as u32,
            size_c: 900,
        })
        .collect();
    FrameTable::new(c, list).unwrap()
}

pub(super) fn header(version: u64, compression: Compression) -> Header {
    let size = 16 * P;
    let entry = |n, frames: FrameTable| BuildEntry {
        build_id: id(n),
        file_size: frames.total_size_u(),
        sha256: [n as u8; 32],
        frames,
    };
    let builds = if compression == Compression::None {
        Vec::new()
    } else {
        // Sorted by id, as decode returns them.
        vec![
            entry(1, frames(compression, 3)),
            entry(2, frames(compression, 1)),
            entry(3, frames(compression, 2)),
        ]
    };
    Header {
        metadata: metadata(version, size),
        builds,
        mappings: layered_mappings(size),
    }
}

/// A V4/V5 header around hand-made inner bytes.
pub(super) fn wrap(version: u64, size: u64, flags: u8, inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    metadata(version, size).encode_into(&mut out);
    out.push(flags);
    out.extend_from_slice(&(inner.len() as u32).to_le_bytes());
    deflate_into(&mut out, inner).unwrap();
    out
}

pub(super) fn decode_err(bytes: &[u8]) -> FormatError {
    Header::decode(bytes).unwrap_err()
}
