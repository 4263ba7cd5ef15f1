//! Property tests of the whole header codec: every version round-trips,
//! and random or mutated bytes never panic and decode only to headers whose
//! lookups agree with their mappings.

use proptest::prelude::*;
use uuid::Uuid;

use super::{BuildEntry, Header, deflate_into, inflate};
use crate::format::{
    Compression, Frame, FrameTable, METADATA_LEN, Mapping, Mappings, Metadata, PAGE_SIZE,
};

const P: u64 = PAGE_SIZE;

/// Sorted, disjoint frames with random sizes and gaps in both spaces.
fn frame_table() -> impl Strategy<Value = FrameTable> {
    let frame = (0u64..3, 1u32..(8 << 20), 0u64..3, 1u32..(4 << 20));
    (
        prop_oneof![Just(Compression::Zstd), Just(Compression::Lz4)],
        prop::collection::vec(frame, 0..12),
    )
        .prop_map(|(c, specs)| {
            let (mut u, mut cz) = (0u64, 0u64);
            let frames = specs
                .into_iter()
                .map(|(gap_u, size_u, gap_c, size_c)| {
                    let f = Frame {
                        start_u: u + gap_u * P,
                        start_c: cz + gap_c * 100,
                        size_u,
                        size_c,
                    };
                    (u, cz) = (f.end_u(), f.end_c());
                    f
                })
                .collect();
            FrameTable::new(c, frames).unwrap()
        })
}

fn build_ids() -> [Uuid; 4] {
    [
        Uuid::from_u128(0xf000_0000_0000_0000_0000_0000_0000_0001),
        Uuid::from_u128(2),
        Uuid::from_u128(0x8000_0000_0000_0000_0000_0000_0000_0003),
        Uuid::from_u128(4),
    ]
}

/// A random chain: each link is (pages, build index or nil, storage page).
/// The size may end inside the last page (V3/V4 only: V5 counts pages).
fn mappings(unaligned_tail: bool) -> impl Strategy<Value = (Mappings, u64)> {
    let link = (
        1u64..64,
        prop::option::weighted(0.7, 0usize..4),
        0u64..1 << 30,
    );
    (prop::collection::vec(link, 0..40), 0u64..P).prop_map(move |(links, cut)| {
        let mut items = Vec::new();
        let mut offset = 0;
        for (pages, build, storage_page) in links {
            items.push(Mapping {
                offset,
                length: pages * P,
                build_id: build.map_or(Uuid::nil(), |i| build_ids()[i]),
                storage_offset: build.map_or(0, |_| storage_page * P),
            });
            offset += pages * P;
        }
        let size = if unaligned_tail && offset > 0 {
            offset - cut
        } else {
            offset
        };
        (Mappings::new(items, size).unwrap(), size)
    })
}

fn header(version: u16) -> impl Strategy<Value = Header> {
    let ids = build_ids();
    (
        mappings(version < 5),
        prop::collection::vec((any::<bool>(), frame_table(), any::<u32>()), 4),
        (any::<u64>(), 1u64..(1 << 40), any::<u64>(), any::<u128>()),
    )
        .prop_map(
            move |((mappings, size), entries, (bits, block, generation, base))| {
                let builds = if version == 3 {
                    Vec::new()
                } else {
                    entries
                        .into_iter()
                        .zip(ids)
                        .filter(|((present, _, _), _)| *present)
                        .map(|((_, frames, size), build_id)| BuildEntry {
                            build_id,
                            file_size: u64::from(size),
                            sha256: [size as u8; 32],
                            frames,
                        })
                        .collect()
                };
                Header {
                    metadata: Metadata {
                        version: (bits & !0xffff) | u64::from(version),
                        block_size: block,
                        size,
                        generation,
                        build_id: ids[0],
                        base_build_id: Uuid::from_u128(base),
                    },
                    builds,
                    mappings,
                }
            },
        )
}

fn sorted(mut h: Header) -> Header {
    h.builds.sort_by_key(|b| *b.build_id.as_bytes());
    h
}

/// V5 stores no zero ranges, so adjacent ones come back as one.
fn zeros_merged(mut h: Header) -> Header {
    let mut items: Vec<Mapping> = Vec::new();
    for m in h.mappings.as_slice() {
        match items.last_mut() {
            Some(last) if last.is_zero() && m.is_zero() => last.length += m.length,
            _ => items.push(*m),
        }
    }
    h.mappings = Mappings::new(items, h.metadata.size).unwrap();
    h
}

/// Whatever decodes must answer lookups consistently with its mappings.
fn check_lookups(h: &Header, probes: &[u64]) {
    let size = h.metadata.size;
    for &p in probes {
        let off = if size == 0 { p } else { p % size };
        match h.mappings.lookup(off) {
            Some(hit) => {
                assert!(off < size);
                assert!(hit.remaining > 0 && off + hit.remaining <= size);
            }
            None => assert!(off >= size),
        }
    }
}

proptest! {
    #[test]
    fn v3_round_trips(h in header(3)) {
        prop_assert_eq!(Header::decode(&h.encode(3).unwrap()).unwrap(), h);
    }

    #[test]
    fn v4_round_trips(h in header(4)) {
        prop_assert_eq!(Header::decode(&h.encode(4).unwrap()).unwrap(), sorted(h));
    }

    #[test]
    fn v5_round_trips(h in header(5)) {
        prop_assert_eq!(Header::decode(&h.encode(5).unwrap()).unwrap(), zeros_merged(sorted(h)));
    }

    #[test]
    fn normalized_reads_the_same(h in header(4), probes in prop::collection::vec(any::<u64>(), 32)) {
        let norm = h.mappings.normalized();
        prop_assert!(norm.len() <= h.mappings.len());
        prop_assert_eq!(norm.end(), h.mappings.end());
        for p in probes {
            let off = p % (h.metadata.size + 1);
            let (a, b) = (h.mappings.lookup(off), norm.lookup(off));
            prop_assert_eq!(a.map(|x| x.build_id), b.map(|x| x.build_id));
            if let (Some(a), Some(b)) = (a, b) {
                prop_assert!(b.remaining >= a.remaining);
                if !a.build_id.is_nil() {
                    prop_assert_eq!(a.storage_offset, b.storage_offset);
                }
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), version in 1u64..=5) {
        let mut bytes = bytes;
        if bytes.len() >= 16 {
            bytes[..8].copy_from_slice(&version.to_le_bytes());
            bytes[8..16].copy_from_slice(&4096u64.to_le_bytes());
        }
        if let Ok(h) = Header::decode(&bytes) {
            check_lookups(&h, &[0, 1, 4096, u64::MAX]);
        }
    }

    #[test]
    fn mutated_headers_never_panic(
        h in header(3),
        version in 3u16..=5,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        probes in prop::collection::vec(any::<u64>(), 16),
    ) {
        // Mutate the plain bytes: for V4/V5 the inner block, re-wrapped so
        // the mutation reaches the parser instead of the LZ4 checksum.
        let encoded = h.encode(version).unwrap();
        let (prefix, mut body) = if version == 3 {
            (encoded[..METADATA_LEN].to_vec(), encoded[METADATA_LEN..].to_vec())
        } else {
            let len = u32::from_le_bytes(encoded[65..69].try_into().unwrap());
            (encoded[..METADATA_LEN].to_vec(), inflate(&encoded[69..], len).unwrap())
        };
        if !body.is_empty() {
            for (at, byte) in edits {
                let i = at.index(body.len());
                body[i] = byte;
            }
            body.truncate(body.len() - cut.index(body.len() / 4 + 1));
        }
        let mut bytes = prefix;
        if version == 3 {
            bytes.extend_from_slice(&body);
        } else {
            bytes.push(0);
            bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
            deflate_into(&mut bytes, &body).unwrap();
        }
        if let Ok(decoded) = Header::decode(&bytes) {
            check_lookups(&decoded, &probes);
            let again = decoded.encode(version);
            prop_assert!(again.is_ok() || version == 3);
        }
    }
}
