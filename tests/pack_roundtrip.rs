//! Packing round trips: builds and layers of every codec and header version
//! read back byte for byte, through an independent flattener (whole-object
//! decode + mappings) and through the template read path; the objects decode
//! with the stock `zstd` and `lz4` tools; layers on the independent fixture
//! stores work.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::digest::{hex, sha256_hex};
use common::fixtures::{fixture_stores, manifest};
use common::oracle::{oracle_flatten, read_header};
use common::pack::{PAGE, local_store, put_legacy_build};
use common::process::{require_tool, tdfs_ok};
use common::rng::Rng;
use proptest::prelude::*;
use tdfs::format::{Compression, FileKind, Header, ObjectKey};
use tdfs::pack::{PackError, PackInputs, PackOptions, PackReport, pack_build};
use tdfs::store::{LocalStore, Store, WritableStore};
use tdfs::template::{Builds, TemplateConfig};
use uuid::Uuid;

/// Write the images and pack them as one build.
fn pack_images(
    store_dir: &Path,
    work: &Path,
    memfile: &[u8],
    rootfs: &[u8],
    opts: &PackOptions,
) -> Result<PackReport, PackError> {
    let (m, r) = (work.join("memfile.img"), work.join("rootfs.img"));
    std::fs::write(&m, memfile).unwrap();
    std::fs::write(&r, rootfs).unwrap();
    let store: Arc<dyn WritableStore> = Arc::new(LocalStore::create(store_dir).unwrap());
    pack_build(
        store,
        opts,
        &PackInputs {
            memfile: m,
            rootfs: r,
            snapfile: None,
            metadata: None,
            prefetch_memfile: None,
            prefetch_rootfs: None,
        },
    )
}

/// The file flattened through `tdfs::template`.
fn template_flatten(store_dir: &Path, build: Uuid, file: FileKind) -> Vec<u8> {
    let cache = tempfile::tempdir().unwrap();
    let builds = Builds::new(
        local_store(store_dir),
        TemplateConfig::for_tool(cache.path().into()),
    );
    let tf = builds.open(build, file).unwrap();
    let mut out = vec![0u8; tf.size() as usize];
    let mut filled = 0;
    while filled < out.len() {
        let n = tf.read_at(&mut out[filled..], filled as u64).unwrap();
        assert!(n > 0, "short read at {filled}");
        filled += n;
    }
    out
}

/// The oracle and the template read path both return `expected`.
fn check_flatten(store_dir: &Path, build: Uuid, file: FileKind, expected: &[u8]) {
    let store = local_store(store_dir);
    let oracle = oracle_flatten(store.as_ref(), build, file);
    assert!(oracle == expected, "{file} of {build}: oracle differs");
    let template = template_flatten(store_dir, build, file);
    assert!(
        template == expected,
        "{file} of {build}: template read differs"
    );
}

/// Both readers return `expected`, and the header is consistent with the
/// layer it describes.
fn check_build(store_dir: &Path, report: &PackReport, file: FileKind, expected: &[u8]) {
    check_flatten(store_dir, report.build_id, file, expected);
    let store = local_store(store_dir);
    let header = read_header(store.as_ref(), report.build_id, file);
    check_builds_section(store.as_ref(), &header, file);
}

/// V4+: the section lists the own build and every referenced build; each
/// compressed table lists exactly the frames the mappings touch, drawn from
/// that build's own (full) table.
fn check_builds_section(store: &dyn Store, header: &Header, file: FileKind) {
    if header.version() < 4 {
        assert!(header.builds.is_empty());
        return;
    }
    let own = header.metadata.build_id;
    assert!(header.build(&own).is_some(), "own build listed");
    for m in header.mappings.as_slice().iter().filter(|m| !m.is_zero()) {
        let entry = header
            .build(&m.build_id)
            .unwrap_or_else(|| panic!("referenced build {} not listed", m.build_id));
        if !entry.frames.is_compressed() {
            continue;
        }
        let mut off = m.storage_offset;
        while off < m.storage_offset + m.length {
            let i = entry
                .frames
                .locate(off)
                .expect("mapped range is in a listed frame");
            off = entry.frames.frames()[i].end_u();
        }
    }
    for entry in &header.builds {
        let ranges: Vec<_> = header
            .mappings
            .as_slice()
            .iter()
            .filter(|m| m.build_id == entry.build_id)
            .map(|m| m.storage_offset..m.storage_offset + m.length)
            .collect();
        let full = read_header(store, entry.build_id, file);
        let Some(own_entry) = full.build(&entry.build_id) else {
            assert!(
                !entry.frames.is_compressed(),
                "a V1-V3 build is uncompressed"
            );
            continue;
        };
        let full_table = &own_entry.frames;
        for f in entry.frames.frames() {
            assert!(
                full_table.frames().contains(f),
                "listed frame is a real frame"
            );
            assert!(
                ranges
                    .iter()
                    .any(|r| r.start < f.end_u() && f.start_u < r.end),
                "listed frame {f:?} of {} is touched by a mapping",
                entry.build_id
            );
        }
    }
}

fn opts(compression: Compression, version: u16, base: Option<Uuid>) -> PackOptions {
    PackOptions {
        base,
        compression,
        header_version: Some(version),
        // V4 runs use 4 KiB memfile blocks, the others 2 MiB (hugepages);
        // a frame is a multiple of the block (E2B's rule).
        frame_size: if version == 4 { 256 << 10 } else { 2 << 20 },
        memfile_block_size: Some(if version == 4 { 4096 } else { 2 << 20 }),
        threads: 3,
        ..PackOptions::default()
    }
}

#[test]
fn every_codec_and_header_version_round_trips() {
    for compression in [Compression::None, Compression::Zstd, Compression::Lz4] {
        for version in 3..=5u16 {
            let dir = tempfile::tempdir().unwrap();
            let store_dir = dir.path().join("store");
            let mut rng = Rng(u64::from(version) * 31 + compression as u64);
            let mut mem = rng.image(10 * 512 + 77);
            let mut root = rng.image(1500);
            let result = pack_images(
                &store_dir,
                dir.path(),
                &mem,
                &root,
                &opts(compression, version, None),
            );
            if compression != Compression::None && version == 3 {
                assert!(
                    matches!(result, Err(PackError::BadOption(_))),
                    "V3 refuses {compression:?}"
                );
                continue;
            }
            let base = result.unwrap();
            assert_eq!((base.generation, base.base_build_id), (0, base.build_id));
            check_build(&store_dir, &base, FileKind::Memfile, &mem);
            check_build(&store_dir, &base, FileKind::Rootfs, &root);

            let mut parent = base.clone();
            for layer in 1..=2u64 {
                // Changes stay in the first 2 MiB blocks so later blocks
                // are unchanged even with hugepage blocks.
                rng.mutate(&mut mem[..3 * 512 * PAGE], 60);
                rng.mutate(&mut root, 30);
                // Free a region: it must map to zeros again.
                let start = (layer as usize * 700) * PAGE;
                mem[start..start + 300 * PAGE].fill(0);
                let report = pack_images(
                    &store_dir,
                    dir.path(),
                    &mem,
                    &root,
                    &opts(compression, version, Some(parent.build_id)),
                )
                .unwrap();
                assert_eq!(report.generation, layer);
                assert_eq!(report.base_build_id, base.build_id);
                let mem_report = &report.files[0];
                assert!(mem_report.unchanged_bytes > 0, "a layer keeps base data");
                assert!(
                    mem_report.diff_size < mem.len() as u64 / 2,
                    "a layer stores only changes"
                );
                check_build(&store_dir, &report, FileKind::Memfile, &mem);
                check_build(&store_dir, &report, FileKind::Rootfs, &root);
                let header = read_header(
                    local_store(&store_dir).as_ref(),
                    report.build_id,
                    FileKind::Memfile,
                );
                assert_eq!(header.metadata.generation, layer);
                assert_eq!(header.version(), version);
                parent = report;
            }
        }
    }
}

#[test]
fn zero_blocks_are_not_stored_and_an_unchanged_layer_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let mem = vec![0u8; 4 << 20];
    let mut root = vec![0u8; 1 << 20];
    root[5000] = 1;
    let base = pack_images(&store_dir, dir.path(), &mem, &root, &PackOptions::default()).unwrap();
    assert_eq!(base.files[0].diff_size, 0);
    assert_eq!(base.files[1].diff_size, 4096);
    let store = local_store(&store_dir);
    let header = read_header(store.as_ref(), base.build_id, FileKind::Memfile);
    assert!(header.mappings.as_slice().iter().all(|m| m.is_zero()));

    let same = pack_images(
        &store_dir,
        dir.path(),
        &mem,
        &root,
        &PackOptions {
            base: Some(base.build_id),
            ..PackOptions::default()
        },
    )
    .unwrap();
    assert_eq!(same.files[1].diff_size, 0);
    assert_eq!(same.files[1].unchanged_bytes, 4096);
    check_build(&store_dir, &same, FileKind::Rootfs, &root);
    let header = read_header(store.as_ref(), same.build_id, FileKind::Rootfs);
    assert_eq!(
        header
            .mappings
            .as_slice()
            .iter()
            .filter(|m| !m.is_zero())
            .map(|m| m.build_id)
            .collect::<Vec<_>>(),
        vec![base.build_id]
    );
}

#[test]
fn a_layer_may_change_the_image_size() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let mut rng = Rng(9);
    let mem = rng.image(1024);
    let root = rng.image(600);
    let base = pack_images(&store_dir, dir.path(), &mem, &root, &PackOptions::default()).unwrap();
    let mut bigger = root.clone();
    bigger.extend(rng.image(300));
    let smaller = &mem[..700 * PAGE];
    let layer = pack_images(
        &store_dir,
        dir.path(),
        smaller,
        &bigger,
        &PackOptions {
            base: Some(base.build_id),
            ..PackOptions::default()
        },
    )
    .unwrap();
    check_build(&store_dir, &layer, FileKind::Memfile, smaller);
    check_build(&store_dir, &layer, FileKind::Rootfs, &bigger);
}

#[test]
fn bad_inputs_are_refused_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let odd = vec![1u8; 5000];
    let ok = vec![1u8; 8192];
    let err = pack_images(&store_dir, dir.path(), &odd, &ok, &PackOptions::default()).unwrap_err();
    assert!(err.to_string().contains("multiple of 4096"), "{err}");
    let missing_base = PackOptions {
        base: Some(Uuid::new_v4()),
        ..PackOptions::default()
    };
    let err = pack_images(&store_dir, dir.path(), &ok, &ok, &missing_base).unwrap_err();
    assert!(matches!(err, PackError::BaseOpen { .. }), "{err}");
    let lz4_level = PackOptions {
        compression: Compression::Lz4,
        level: Some(5),
        ..PackOptions::default()
    };
    assert!(matches!(
        pack_images(&store_dir, dir.path(), &ok, &ok, &lz4_level),
        Err(PackError::BadOption(_))
    ));
    let id = Uuid::new_v4();
    let fixed = PackOptions {
        build_id: Some(id),
        ..PackOptions::default()
    };
    pack_images(&store_dir, dir.path(), &ok, &ok, &fixed).unwrap();
    assert!(matches!(
        pack_images(&store_dir, dir.path(), &ok, &ok, &fixed),
        Err(PackError::BuildExists(b)) if b == id
    ));
}

fn run_stdin(cmd: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd} is required by this test: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn objects_decode_with_the_stock_zstd_and_lz4_tools() {
    require_tool("zstd");
    require_tool("lz4");
    for compression in [Compression::Zstd, Compression::Lz4] {
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("store");
        let mut rng = Rng(77);
        let mut mem = rng.image(3000);
        let root = rng.image(700);
        let o = opts(compression, 4, None);
        let base = pack_images(&store_dir, dir.path(), &mem, &root, &o).unwrap();
        rng.mutate(&mut mem, 200);
        let layer = pack_images(
            &store_dir,
            dir.path(),
            &mem,
            &root,
            &PackOptions {
                base: Some(base.build_id),
                ..o
            },
        )
        .unwrap();
        let store = local_store(&store_dir);
        for build in [base.build_id, layer.build_id] {
            for file in FileKind::ALL {
                let header = read_header(store.as_ref(), build, file);
                let entry = header.build(&build).unwrap();
                if entry.file_size == 0 {
                    // An empty diff is stored as an empty uncompressed object.
                    assert!(!entry.frames.is_compressed());
                    let key = ObjectKey::data(build, file, Compression::None);
                    assert_eq!(store.size(&key).unwrap(), 0);
                    continue;
                }
                let key = ObjectKey::data(build, file, compression);
                let object = store.read_all(&key, 1 << 30).unwrap();
                let decoded = match compression {
                    Compression::Zstd => run_stdin("zstd", &["-d", "-q", "-c"], &object),
                    _ => {
                        let mut out = Vec::new();
                        for f in entry.frames.frames() {
                            let frame = &object[f.start_c as usize..f.end_c() as usize];
                            let bytes = run_stdin("lz4", &["-d", "-q", "-c"], frame);
                            assert_eq!(bytes.len(), f.size_u as usize, "lz4 frame size");
                            out.extend(bytes);
                        }
                        out
                    }
                };
                assert_eq!(decoded.len() as u64, entry.file_size, "{key}");
                assert_eq!(sha256_hex(&decoded), hex(&entry.sha256), "{key}");
                assert_eq!(
                    store.uncompressed_size(&key).unwrap(),
                    Some(entry.file_size),
                    "{key} sidecar"
                );
            }
        }
    }
}

/// Copy a fixture store so a test can add builds to it.
fn copy_store(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn layers_on_the_fixture_stores_read_back() {
    for fixture in fixture_stores() {
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("store");
        copy_store(&fixture, &store_dir);
        let manifest = manifest(&fixture);
        let last = manifest["builds"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        let parent: Uuid = last["build_id"].as_str().unwrap().parse().unwrap();
        let store = local_store(&store_dir);
        let mut images = Vec::new();
        for file in FileKind::ALL {
            let flat = oracle_flatten(store.as_ref(), parent, file);
            assert_eq!(
                sha256_hex(&flat),
                last["files"][file.name()]["sha256"].as_str().unwrap(),
                "the oracle reads {} of {parent} as the manifest says",
                file.name()
            );
            images.push(flat);
        }
        let mut rng = Rng(5);
        rng.mutate(&mut images[0], 50);
        rng.mutate(&mut images[1], 50);
        let compression = if fixture.ends_with("v4-lz4") {
            Compression::Lz4
        } else {
            Compression::Zstd
        };
        let version = if fixture.ends_with("v5-zstd-dedup") {
            5
        } else {
            4
        };
        let report = pack_images(
            &store_dir,
            dir.path(),
            &images[0],
            &images[1],
            &PackOptions {
                base: Some(parent),
                compression,
                header_version: Some(version),
                ..PackOptions::default()
            },
        )
        .unwrap();
        assert_eq!(report.generation, last["generation"].as_u64().unwrap() + 1);
        check_build(&store_dir, &report, FileKind::Memfile, &images[0]);
        check_build(&store_dir, &report, FileKind::Rootfs, &images[1]);
        tdfs_ok(&[
            "verify",
            "--store",
            store_dir.to_str().unwrap(),
            &report.build_id.to_string(),
        ]);
    }
}

/// A legacy base and, per FORMAT.md, a V4 base whose builds section leaves
/// out a legacy ancestor (resolved from the ancestor's own header, which a
/// legacy build lacks: the legacy fallback applies). Fails if pack loads
/// the ancestor's header without the fallback.
#[test]
fn layers_on_a_legacy_build_without_headers_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let mut rng = Rng(12);
    // Page by page (no long zero runs), so every layer keeps base pages.
    let mut pages = |n: usize| -> Vec<u8> { (0..n).flat_map(|_| rng.page()).collect() };
    let mut images = [pages(300), pages(70)];
    let store: Arc<dyn WritableStore> = Arc::new(LocalStore::create(&store_dir).unwrap());
    let legacy = put_legacy_build(store.as_ref(), &images[0], &images[1]);

    rng.mutate(&mut images[0], 20);
    rng.mutate(&mut images[1], 20);
    let layer_opts = |base| PackOptions {
        base: Some(base),
        compression: Compression::Zstd,
        header_version: Some(4),
        frame_size: 64 << 10,
        ..PackOptions::default()
    };
    let layer = pack_images(
        &store_dir,
        dir.path(),
        &images[0],
        &images[1],
        &layer_opts(legacy),
    )
    .unwrap();
    assert_eq!(layer.generation, 1);
    for (file, image) in FileKind::ALL.into_iter().zip(&images) {
        check_flatten(&store_dir, layer.build_id, file, image);
    }

    // Leave the legacy build out of the layer's builds section.
    for file in FileKind::ALL {
        let mut header = read_header(store.as_ref(), layer.build_id, file);
        assert!(
            header.build(&legacy).is_some(),
            "pack lists the legacy build"
        );
        header.builds.retain(|b| b.build_id != legacy);
        let bytes = header.encode(4).unwrap();
        store
            .put_bytes(&ObjectKey::header(layer.build_id, file), &bytes)
            .unwrap();
    }
    rng.mutate(&mut images[0], 20);
    rng.mutate(&mut images[1], 20);
    let top = pack_images(
        &store_dir,
        dir.path(),
        &images[0],
        &images[1],
        &layer_opts(layer.build_id),
    )
    .unwrap();
    for (file, image) in FileKind::ALL.into_iter().zip(&images) {
        check_flatten(&store_dir, top.build_id, file, image);
        let header = read_header(store.as_ref(), top.build_id, file);
        let entry = header.build(&legacy).expect("the legacy build is listed");
        assert!(
            !entry.frames.is_compressed(),
            "legacy builds are uncompressed"
        );
    }
}

#[derive(Debug, Clone)]
enum Change {
    Data { page: usize, seed: u64 },
    Zero { page: usize, pages: usize },
    Copy { from: usize, to: usize },
}

fn apply(image: &mut [u8], change: &Change) {
    let pages = image.len() / PAGE;
    match *change {
        Change::Data { page, seed } => {
            let p = page % pages;
            let bytes = Rng(seed).page();
            image[p * PAGE..(p + 1) * PAGE].copy_from_slice(&bytes);
        }
        Change::Zero { page, pages: n } => {
            let p = page % pages;
            let end = (p + n).min(pages);
            image[p * PAGE..end * PAGE].fill(0);
        }
        Change::Copy { from, to } => {
            let (f, t) = (from % pages, to % pages);
            let bytes = image[f * PAGE..(f + 1) * PAGE].to_vec();
            image[t * PAGE..(t + 1) * PAGE].copy_from_slice(&bytes);
        }
    }
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (any::<usize>(), any::<u64>()).prop_map(|(page, seed)| Change::Data { page, seed }),
        (any::<usize>(), 1..600usize).prop_map(|(page, pages)| Change::Zero { page, pages }),
        (any::<usize>(), any::<usize>()).prop_map(|(from, to)| Change::Copy { from, to }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn random_layer_chains_flatten_back(
        seed in any::<u64>(),
        mem_pages in 256usize..1024,
        root_pages in 256usize..1024,
        codec in 0u8..3,
        version in 3u16..=5,
        hugepages in any::<bool>(),
        layers in prop::collection::vec(prop::collection::vec(change(), 1..40), 1..4),
    ) {
        let compression = [Compression::None, Compression::Zstd, Compression::Lz4][codec as usize];
        let version = if compression != Compression::None && version == 3 { 4 } else { version };
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("store");
        let mut rng = Rng(seed);
        let mut mem = rng.image(mem_pages);
        let mut root = rng.image(root_pages);
        let mut o = PackOptions {
            compression,
            header_version: Some(version),
            frame_size: if hugepages { 2 << 20 } else { 64 << 10 },
            memfile_block_size: Some(if hugepages { 2 << 20 } else { 4096 }),
            threads: 2,
            ..PackOptions::default()
        };
        let mut report = pack_images(&store_dir, dir.path(), &mem, &root, &o).unwrap();
        let mut chain = vec![(report.build_id, mem.clone(), root.clone())];
        for changes in &layers {
            for c in changes {
                apply(&mut mem, c);
                apply(&mut root, c);
            }
            o.base = Some(report.build_id);
            report = pack_images(&store_dir, dir.path(), &mem, &root, &o).unwrap();
            check_build(&store_dir, &report, FileKind::Memfile, &mem);
            check_build(&store_dir, &report, FileKind::Rootfs, &root);
            chain.push((report.build_id, mem.clone(), root.clone()));
        }
        random_reads_from_threads(&store_dir, &chain, seed);
    }
}

/// Cold random reads of every build of `chain` (id, memfile, rootfs) from
/// several threads sharing one `Builds`, each equal to the reference image.
fn random_reads_from_threads(store_dir: &Path, chain: &[(Uuid, Vec<u8>, Vec<u8>)], seed: u64) {
    let cache = tempfile::tempdir().unwrap();
    let builds = Builds::new(
        local_store(store_dir),
        TemplateConfig::for_tool(cache.path().into()),
    );
    std::thread::scope(|s| {
        for t in 0..6u64 {
            let builds = &builds;
            s.spawn(move || {
                let mut rng = Rng(seed ^ (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                for _ in 0..200 {
                    let (build, mem, root) = &chain[(rng.next() % chain.len() as u64) as usize];
                    let (file, image) = if rng.next().is_multiple_of(2) {
                        (FileKind::Memfile, mem)
                    } else {
                        (FileKind::Rootfs, root)
                    };
                    let tf = builds.open(*build, file).unwrap();
                    let off = rng.next() % (image.len() as u64 + 10);
                    let mut buf = vec![0x55u8; (rng.next() % (600 << 10)) as usize];
                    let n = tf.read_at(&mut buf, off).unwrap();
                    let start = (off as usize).min(image.len());
                    let want = (image.len() - start).min(buf.len());
                    assert_eq!(n, want, "{build}/{file} at {off}");
                    assert!(
                        buf[..n] == image[start..start + n],
                        "{build}/{file} at {off}"
                    );
                }
            });
        }
    });
}
