//! Frame-table unit tests: round trips, sparse tables and trimming, and
//! the refusal of invalid or corrupt tables.

use super::*;

fn frame(start_u: u64, start_c: u64, size_u: u32, size_c: u32) -> Frame {
    Frame {
        start_u,
        start_c,
        size_u,
        size_c,
    }
}

fn table() -> FrameTable {
    FrameTable::new(
        Compression::Zstd,
        vec![
            frame(0, 0, 100, 10),
            frame(100, 10, 100, 20),
            // Sparse: [200, 400) is not listed.
            frame(400, 50, 50, 5),
        ],
    )
    .unwrap()
}

fn encoded(t: &FrameTable) -> Vec<u8> {
    let mut out = Vec::new();
    t.encode_into(&mut out);
    out
}

#[test]
fn round_trip_every_codec() {
    for c in [Compression::Zstd, Compression::Lz4] {
        let t = FrameTable::new(c, table().frames().to_vec()).unwrap();
        let mut bytes = encoded(&t);
        assert_eq!(bytes.len(), 8 + 3 * 24);
        bytes.extend_from_slice(b"rest");
        assert_eq!(FrameTable::decode(&bytes), Ok((t, 8 + 3 * 24)));
    }
    let none = FrameTable::uncompressed();
    assert_eq!(encoded(&none), [0u8; 8]);
    assert_eq!(FrameTable::decode(&[0u8; 8]), Ok((none, 8)));
}

#[test]
fn compressed_type_without_frames_reads_as_uncompressed() {
    let mut bytes = 1u32.to_le_bytes().to_vec();
    bytes.extend_from_slice(&0u32.to_le_bytes());
    let (t, used) = FrameTable::decode(&bytes).unwrap();
    assert_eq!(used, 8);
    assert_eq!(t.compression(), Compression::None);
    assert!(!t.is_compressed());
}

#[test]
fn locate_finds_frames_and_rejects_gaps() {
    let t = table();
    assert_eq!(t.locate(0), Ok(0));
    assert_eq!(t.locate(99), Ok(0));
    assert_eq!(t.locate(100), Ok(1));
    assert_eq!(t.locate(199), Ok(1));
    assert!(t.locate(200).is_err());
    assert!(t.locate(399).is_err());
    assert_eq!(t.locate(449), Ok(2));
    assert!(t.locate(450).is_err());
    assert!(t.locate(u64::MAX).is_err());
    assert!(FrameTable::uncompressed().locate(0).is_err());
    let late = FrameTable::new(Compression::Lz4, vec![frame(10, 0, 5, 5)]).unwrap();
    assert!(late.locate(3).is_err());
}

fn trim_one(t: &FrameTable, range: Range<u64>) -> FrameTable {
    t.trim(std::slice::from_ref(&range))
}

#[test]
fn trim_keeps_overlapping_frames() {
    let t = table();
    let starts = |t: &FrameTable| t.frames().iter().map(|f| f.start_u).collect::<Vec<_>>();
    assert_eq!(starts(&trim_one(&t, 99..101)), [0, 100]);
    assert_eq!(starts(&t.trim(&[420..421, 0..1])), [0, 400]);
    assert_eq!(starts(&trim_one(&t, 0..1000)), [0, 100, 400]);
    assert_eq!(starts(&trim_one(&t, 100..100)), Vec::<u64>::new());
    let gap_only = trim_one(&t, 200..400);
    assert!(!gap_only.is_compressed());
    assert_eq!(trim_one(&t, 150..160).compression(), Compression::Zstd);
}

#[test]
fn rejects_invalid_tables() {
    let bad = |c, frames| FrameTable::new(c, frames).unwrap_err();
    assert!(matches!(
        bad(Compression::None, vec![frame(0, 0, 1, 1)]),
        FormatError::Invalid { .. }
    ));
    for frames in [
        vec![frame(0, 0, 0, 1)],
        vec![frame(0, 0, 1, 0)],
        vec![frame(0, 0, 10, 10), frame(5, 10, 10, 10)],
        vec![frame(0, 0, 10, 10), frame(10, 5, 10, 10)],
        vec![frame(10, 10, 10, 10), frame(0, 0, 10, 10)],
        vec![frame(1 << 63, 0, 1, 1)],
        vec![frame(0, 0, 1 << 31, 1)],
    ] {
        assert!(
            matches!(
                bad(Compression::Zstd, frames.clone()),
                FormatError::Invalid { .. }
            ),
            "{frames:?}"
        );
    }
}

#[test]
fn frames_over_the_mount_limit_are_refused_naming_it() {
    let max = MAX_FRAME_SIZE;
    assert!(FrameTable::new(Compression::Zstd, vec![frame(0, 0, max, max)]).is_ok());
    for f in [frame(0, 0, max + 1, 1), frame(0, 0, 1, max + 1)] {
        let err = FrameTable::new(Compression::Lz4, vec![f]).unwrap_err();
        assert!(
            matches!(&err, FormatError::Invalid { detail, .. }
                if detail.contains(&format!("over the largest frame a mount serves ({max} bytes"))),
            "{err}"
        );
    }
    let bytes = raw(1, &[(0, 0, max as i32 + 1, 1)]);
    assert!(matches!(
        FrameTable::decode(&bytes),
        Err(FormatError::Invalid { .. })
    ));
}

fn raw(ty: u32, entries: &[(i64, i64, i32, i32)]) -> Vec<u8> {
    let mut out = ty.to_le_bytes().to_vec();
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (a, b, c, d) in entries {
        out.extend_from_slice(&a.to_le_bytes());
        out.extend_from_slice(&b.to_le_bytes());
        out.extend_from_slice(&c.to_le_bytes());
        out.extend_from_slice(&d.to_le_bytes());
    }
    out
}

#[test]
fn decode_rejects_corrupt_bytes() {
    let err = |b: &[u8]| FrameTable::decode(b).unwrap_err();
    assert!(matches!(err(&[1, 0, 0]), FormatError::Truncated { .. }));
    assert!(matches!(
        err(&raw(3, &[])),
        FormatError::Invalid {
            what: "compression type",
            ..
        }
    ));
    assert!(matches!(
        err(&raw(0, &[(0, 0, 1, 1)])),
        FormatError::Invalid { .. }
    ));
    assert!(matches!(
        err(&raw(1, &[(-1, 0, 1, 1)])),
        FormatError::Invalid { .. }
    ));
    assert!(matches!(
        err(&raw(1, &[(0, -5, 1, 1)])),
        FormatError::Invalid { .. }
    ));
    assert!(matches!(
        err(&raw(1, &[(0, 0, -1, 1)])),
        FormatError::Invalid { .. }
    ));
    assert!(matches!(
        err(&raw(2, &[(0, 0, 10, 10), (5, 20, 10, 10)])),
        FormatError::Invalid { .. }
    ));
    // A count over the cap is refused before anything is allocated.
    let mut over = 1u32.to_le_bytes().to_vec();
    over.extend_from_slice(&(MAX_FRAMES + 1).to_le_bytes());
    assert!(matches!(err(&over), FormatError::OverLimit { .. }));
    // A count the bytes cannot hold is refused the same way.
    let mut short = 1u32.to_le_bytes().to_vec();
    short.extend_from_slice(&MAX_FRAMES.to_le_bytes());
    short.extend_from_slice(&[0; 24]);
    assert!(matches!(err(&short), FormatError::Truncated { .. }));
}

#[test]
fn frames_off_the_block_grid_are_found() {
    const B: u64 = 4096;
    let table = |sizes: &[u32]| {
        let mut start = 0;
        let frames = sizes
            .iter()
            .map(|&s| {
                let f = frame(start, start, s, s);
                start += u64::from(s);
                f
            })
            .collect();
        FrameTable::new(Compression::Zstd, frames).unwrap()
    };
    // On the grid, with a short last frame ending at the diff's end.
    let t = table(&[8192, 8192, 100]);
    assert_eq!(t.first_off_grid(B, 16_484), None);
    assert_eq!(
        t.first_off_grid(B, 0),
        None,
        "unknown end: the last may be short"
    );
    // The short frame is not at the diff's end: a sparse table's gap follows.
    assert_eq!(t.first_off_grid(B, 1 << 20).map(|o| o.index), Some(2));
    // 6000-byte frames: the first edge is already off the 4 KiB grid.
    let odd = table(&[6000, 6000]).first_off_grid(B, 12_000).unwrap();
    assert_eq!(odd.index, 0);
    let text = odd.to_string();
    assert!(
        text.contains("validateCompressConfig") && text.contains("4096-byte block grid"),
        "{text}"
    );
    // 1 MiB frames in a 2 MiB-block memfile.
    let half = table(&[1 << 20, 1 << 20]);
    assert_eq!(
        half.first_off_grid(2 << 20, 2 << 20).map(|o| o.index),
        Some(0)
    );
    assert_eq!(half.first_off_grid(1 << 20, 2 << 20), None);
}

proptest::proptest! {
    #[test]
    fn decode_never_panics_and_locate_agrees_with_a_scan(
        head in proptest::collection::vec(0u8..4, 8),
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        probes in proptest::collection::vec(0u64..1 << 40, 16),
    ) {
        // A small type and count up front so some inputs get past them.
        let mut bytes = vec![head[0] % 3, 0, 0, 0, head[1] % 8, 0, 0, 0];
        bytes.extend_from_slice(&body);
        if let Ok((t, used)) = FrameTable::decode(&bytes) {
            proptest::prop_assert_eq!(used, 8 + 24 * t.frames().len());
            for off in probes {
                let scan = t.frames().iter().position(|f| f.range_u().contains(&off));
                proptest::prop_assert_eq!(t.locate(off).ok(), scan);
            }
        }
    }
}
