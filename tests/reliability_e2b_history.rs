//! Cases from E2B's own bug history (issue 13, part 6), each over builds
//! made for it (`common::builds`) and read through a real mount, compared
//! with the oracle's flattening or with bytes the test knows.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::builds::{PAGE, TestStore, build_id, mapping, zeros};
use common::mount::{MountGuard, fuse_available};
use common::oracle::oracle_flatten;
use common::pack::local_store;
use common::rng::noise;
use tdfs::format::FileKind;
use uuid::Uuid;

const MEM: FileKind = FileKind::Memfile;
const MIB: u64 = 1 << 20;

/// `build`'s memfile read whole through a new mount of `store`, checked
/// against the oracle.
fn assert_reads_as_oracle(store: &TestStore, build: Uuid) {
    let mount = MountGuard::start(&store.root, &[]);
    let path = mount.join(build.to_string()).join(MEM.name());
    let got = std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let want = oracle_flatten(local_store(&store.root).as_ref(), build, MEM);
    assert_eq!(got.len(), want.len(), "{path:?} size");
    assert!(got == want, "{path:?} differs from the oracle");
}

fn read_at(path: &Path, off: u64, len: usize) -> Vec<u8> {
    let f = File::open(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut buf = vec![0; len];
    let mut done = 0;
    while done < len {
        let n = f.read_at(&mut buf[done..], off + done as u64).unwrap();
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    buf
}

/// E2B #2848: two adjacent mappings of one build whose storage ranges are
/// not contiguous are two mappings, not one.
#[test]
fn adjacent_mappings_of_one_build_with_a_storage_gap_stay_apart() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(dir.path());
    let b = build_id(1);
    store.put_raw_diff(b, MEM, &noise(1, (8 * PAGE) as usize));
    let m = vec![
        mapping(0, 2 * PAGE, b, 0),
        // Adjacent in the file, but 3 pages further on in the diff.
        mapping(2 * PAGE, 2 * PAGE, b, 5 * PAGE),
        mapping(4 * PAGE, PAGE, b, 2 * PAGE),
    ];
    store.put_header(b, MEM, 3, 5 * PAGE, m, Vec::new());
    assert_reads_as_oracle(&store, b);
}

/// A read at or past the end of a file returns 0 bytes, and one that
/// crosses it stops there.
#[test]
fn reads_at_or_past_the_end_return_nothing() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(dir.path());
    let b = build_id(2);
    let size = 3 * PAGE - 10;
    let diff = noise(2, (3 * PAGE) as usize);
    store.put_raw_diff(b, MEM, &diff);
    store.put_header(b, MEM, 3, size, vec![mapping(0, 3 * PAGE, b, 0)], vec![]);
    let mount = MountGuard::start(&store.root, &[]);
    let path = mount.join(b.to_string()).join(MEM.name());
    for off in [size, size + 1, size + PAGE, 1 << 40] {
        assert!(read_at(&path, off, 4096).is_empty(), "read at {off}");
    }
    assert_eq!(
        read_at(&path, size - 5, 4096),
        diff[size as usize - 5..size as usize]
    );
}

/// The last chunk of an uncompressed diff is shorter than 4 MiB: it is
/// fetched and served whole, to the diff's last byte.
#[test]
fn last_partial_chunk_of_an_uncompressed_diff() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(dir.path());
    let b = build_id(3);
    let len = 4 * MIB + 3 * PAGE;
    store.put_raw_diff(b, MEM, &noise(3, len as usize));
    // The partial chunk read first, then the file from the start.
    store.put_header(
        b,
        MEM,
        3,
        len + PAGE,
        vec![
            mapping(0, 3 * PAGE, b, 4 * MIB),
            mapping(3 * PAGE, 4 * MIB, b, 0),
            zeros(4 * MIB + 3 * PAGE, PAGE),
        ],
        vec![],
    );
    assert_reads_as_oracle(&store, b);
}

/// A V4 layer over a V3-era base: the base is uncompressed and missing from
/// the layer's builds section, and is read uncompressed.
#[test]
fn v4_layer_over_a_v3_uncompressed_base_missing_from_its_builds_section() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(dir.path());
    let (base, layer) = (build_id(4), build_id(5));
    let size = 16 * PAGE;
    store.put_raw_diff(base, MEM, &noise(4, size as usize));
    store.put_header(base, MEM, 3, size, vec![mapping(0, size, base, 0)], vec![]);
    let own = store.put_zstd_diff(
        layer,
        MEM,
        &noise(5, (4 * PAGE) as usize),
        2 * PAGE as usize,
    );
    let m = vec![
        mapping(0, 4 * PAGE, base, 0),
        mapping(4 * PAGE, 4 * PAGE, layer, 0),
        mapping(8 * PAGE, 8 * PAGE, base, 8 * PAGE),
    ];
    store.put_header(layer, MEM, 4, size, m, vec![own]);
    assert_reads_as_oracle(&store, layer);
}

/// A V5 header whose mappings alternate between a build and zeros page by
/// page.
#[test]
fn v5_mappings_alternating_with_zeros_page_by_page() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(dir.path());
    let b = build_id(6);
    let pages = 64;
    let own = store.put_zstd_diff(
        b,
        MEM,
        &noise(6, (pages * PAGE) as usize),
        8 * PAGE as usize,
    );
    let m = (0..pages)
        .filter(|p| p % 2 == 0)
        .map(|p| mapping(2 * p * PAGE, PAGE, b, p * PAGE))
        .collect();
    store.put_header(b, MEM, 5, 2 * pages * PAGE, m, vec![own]);
    assert_reads_as_oracle(&store, b);
}

/// A 6 GiB memfile, almost all zeros, with data pages past 4 GiB: offsets
/// over 32 bits read right through the mount.
#[test]
fn offsets_past_4_gib_of_a_6_gib_sparse_memfile() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(dir.path());
    let b = build_id(7);
    let size = 6 << 30;
    let diff = noise(7, (4 * PAGE) as usize);
    store.put_raw_diff(b, MEM, &diff);
    let places = [(4 << 30) + 3 * PAGE, (5 << 30) + 17 * PAGE, size - 2 * PAGE];
    let m = places
        .iter()
        .enumerate()
        .map(|(i, &at)| mapping(at, PAGE, b, i as u64 * PAGE))
        .collect();
    store.put_header(b, MEM, 5, size, m, vec![]);
    let mount = MountGuard::start(&store.root, &[]);
    let path = mount.join(b.to_string()).join(MEM.name());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
    for (i, &at) in places.iter().enumerate() {
        let page = &diff[i * PAGE as usize..(i + 1) * PAGE as usize];
        assert!(read_at(&path, at, PAGE as usize) == page, "page at {at}");
        // Straddling the page: zeros, the page, zeros (or the end).
        let got = read_at(&path, at - 100, PAGE as usize + 200);
        let mut want = vec![0; 100];
        want.extend_from_slice(page);
        want.extend(std::iter::repeat_n(
            0,
            ((size - at - PAGE) as usize).min(100),
        ));
        assert!(got == want, "around {at}");
    }
    assert!(
        read_at(&path, 4 << 30, 3 * PAGE as usize)
            .iter()
            .all(|&b| b == 0)
    );
    assert!(read_at(&path, size, 10).is_empty());
}
