//! Header decoding and mapping lookup at scale: a V4 and a V5 header with
//! 1,000,000 mappings, and 1,000,000 random lookups in that list.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tdfs::format::{Header, Mapping, Mappings, Metadata, PAGE_SIZE};
use uuid::Uuid;

const MAPPINGS: u64 = 1_000_000;

/// Deterministic xorshift, so runs compare like for like without a rand dep.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A dedup-style layered header: 1–4 page mappings from three builds and
/// zero ranges, each build's diff packed in template order.
fn big_header() -> Header {
    let builds = [Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3)];
    let mut next_storage = [0u64; 3];
    let mut rng = 0x9e37_79b9_7f4a_7c15;
    let mut offset = 0;
    let mut items = Vec::with_capacity(MAPPINGS as usize);
    for i in 0..MAPPINGS {
        let r = xorshift(&mut rng);
        let length = (1 + r % 4) * PAGE_SIZE;
        // Alternate so neighbours never merge and the count stays exact.
        let slot = (i % 4) as usize;
        let (build_id, storage_offset) = if slot == 3 {
            (Uuid::nil(), 0)
        } else {
            let s = next_storage[slot];
            next_storage[slot] += length + PAGE_SIZE * (r >> 60);
            (builds[slot], s)
        };
        items.push(Mapping {
            offset,
            length,
            build_id,
            storage_offset,
        });
        offset += length;
    }
    Header {
        metadata: Metadata {
            version: 4,
            block_size: 2 << 20,
            size: offset,
            generation: 2,
            build_id: builds[2],
            base_build_id: builds[0],
        },
        builds: Vec::new(),
        mappings: Mappings::new(items, offset).expect("valid chain"),
    }
}

fn decode(c: &mut Criterion) {
    let header = big_header();
    let mut group = c.benchmark_group("decode_1m_mappings");
    group.throughput(Throughput::Elements(MAPPINGS));
    group.sample_size(10);
    for version in [3u16, 4, 5] {
        let bytes = header.encode(version).expect("encodes");
        group.bench_function(format!("v{version}_{}KiB", bytes.len() >> 10), |b| {
            b.iter(|| Header::decode(black_box(&bytes)).expect("decodes"))
        });
    }
    group.finish();
}

fn lookup(c: &mut Criterion) {
    let header = big_header();
    let size = header.metadata.size;
    let mut rng = 42;
    let probes: Vec<u64> = (0..MAPPINGS).map(|_| xorshift(&mut rng) % size).collect();
    let mut group = c.benchmark_group("lookup_1m_random");
    group.throughput(Throughput::Elements(probes.len() as u64));
    group.bench_function("mappings_lookup", |b| {
        b.iter(|| {
            probes
                .iter()
                .map(|&off| header.mappings.lookup(off).map_or(0, |h| h.remaining))
                .sum::<u64>()
        })
    });
    // Baseline: the same loop touching only the probe array, to separate
    // the cost of the binary search from the loop around it.
    group.bench_function("baseline_probe_loop", |b| {
        b.iter(|| {
            probes
                .iter()
                .map(|&off| black_box(off) & 0xfff)
                .sum::<u64>()
        })
    });
    group.finish();
}

criterion_group!(benches, decode, lookup);
criterion_main!(benches);
