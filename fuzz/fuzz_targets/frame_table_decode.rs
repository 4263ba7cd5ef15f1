//! Any bytes: `FrameTable::decode` never panics; a decoded table round-trips,
//! `locate` agrees with a linear scan and `trim` keeps exactly the frames
//! that overlap the ranges.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tdfs::format::FrameTable;

fuzz_target!(|data: &[u8]| {
    let Ok((table, used)) = FrameTable::decode(data) else {
        return;
    };
    assert!(used <= data.len());
    let mut encoded = Vec::new();
    table.encode_into(&mut encoded);
    assert_eq!(
        FrameTable::decode(&encoded),
        Ok((table.clone(), encoded.len()))
    );

    let probes: Vec<u64> = data
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .chain(
            table
                .frames()
                .iter()
                .flat_map(|f| [f.start_u, f.end_u() - 1, f.end_u()]),
        )
        .collect();
    for &off in &probes {
        let scan = table
            .frames()
            .iter()
            .position(|f| f.range_u().contains(&off));
        assert_eq!(table.locate(off).ok(), scan, "offset {off}");
    }
    let ranges: Vec<_> = probes
        .chunks_exact(2)
        .map(|p| p[0].min(p[1])..p[0].max(p[1]))
        .collect();
    let trimmed = table.trim(&ranges);
    let overlaps = |f: &tdfs::format::Frame| {
        ranges
            .iter()
            .any(|r| f.start_u < r.end && r.start < f.end_u())
    };
    let expected: Vec<_> = table.frames().iter().copied().filter(overlaps).collect();
    assert_eq!(trimmed.frames(), expected.as_slice());
});
