//! The working-set-first layout (issue 22): builds packed with a trace
//! store the trace's blocks first, in first-touch order, and still read
//! byte for byte through a real mount and through the independent oracle,
//! for every codec, 4 KiB and 2 MiB memfile blocks and the rootfs, alone
//! and as the base of further layers; `tdfs working-set` gives a build
//! already in a store (template order) a thin layer with the same layout
//! without touching any of its objects; bad traces are refused before
//! anything is written.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use common::digest::sha256_hex;
use common::mount::{MountGuard, fuse_available};
use common::oracle::{oracle_flatten, read_header, whole_diff};
use common::pack::{PAGE, local_store};
use common::process::{tdfs, tdfs_ok, tdfs_pack};
use common::rng::Rng;
use serde_json::Value;
use tdfs::format::{FileKind, Header};
use uuid::Uuid;

const HUGEPAGE: usize = 2 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An image of `len` bytes whose pages are all different and non-zero,
/// so every block a trace lists is one this build stores.
fn image(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rng.fill(&mut out);
    out
}

/// `count` distinct blocks of `block_size` (of an image of `len` bytes)
/// in a shuffled order, the last block among them, written as a recording
/// at `path`; returns the indices.
fn write_trace(
    rng: &mut Rng,
    path: &Path,
    len: usize,
    block_size: usize,
    count: usize,
) -> Vec<u64> {
    let blocks = len.div_ceil(block_size) as u64;
    let mut picked = vec![blocks - 1];
    while picked.len() < count {
        let b = rng.below(blocks);
        if !picked.contains(&b) {
            picked.push(b);
        }
    }
    for i in (1..picked.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        picked.swap(i, j);
    }
    let doc = serde_json::json!({ "indices": picked, "block_size": block_size });
    std::fs::write(path, doc.to_string()).unwrap();
    picked
}

/// The bytes of the header block holding trace block `index`, as the image
/// has them: what the working-set layout stores first.
fn block_of(image: &[u8], index: u64, trace_bs: usize, block_size: usize) -> &[u8] {
    let start = index as usize * trace_bs / block_size * block_size;
    &image[start..(start + block_size).min(image.len())]
}

/// `inspect --json`'s replay footprint of `build`'s `file`.
fn replay(store: &Path, build: &str, file: &str) -> Value {
    let out = tdfs_ok(&["inspect", "--store", s(store), "--json", build, file]);
    let doc: Value = serde_json::from_str(&out).unwrap();
    doc["files"][0]["prefetch"]["replay"].clone()
}

/// Both readers (the oracle and a mount) return `expected` for every
/// (build, file) listed.
fn check_reads(store: &Path, expected: &BTreeMap<(String, &'static str), Vec<u8>>) {
    let local = local_store(store);
    for ((build, file), bytes) in expected {
        let kind = FileKind::ALL
            .into_iter()
            .find(|k| k.name() == *file)
            .unwrap();
        let id: Uuid = build.parse().unwrap();
        assert!(
            oracle_flatten(local.as_ref(), id, kind) == *bytes,
            "{file} of {build}: the oracle reads other bytes"
        );
    }
    if !fuse_available() {
        return;
    }
    let mount = MountGuard::start(store, &[]);
    for ((build, file), bytes) in expected {
        let got = std::fs::read(mount.join(Path::new(build).join(file))).unwrap();
        assert_eq!(got.len(), bytes.len(), "{file} of {build}: size");
        assert!(
            sha256_hex(&got) == sha256_hex(bytes),
            "{file} of {build}: the mount reads other bytes"
        );
    }
}

/// The header of `build`'s `file` in `store`.
fn header(store: &Path, build: &str, file: FileKind) -> Header {
    read_header(local_store(store).as_ref(), build.parse().unwrap(), file)
}

#[test]
fn working_set_builds_read_back_exactly_for_every_codec_and_block_size() {
    for codec in ["none", "zstd", "lz4"] {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let mut expected = BTreeMap::new();
        for memfile_block in [PAGE, HUGEPAGE] {
            let mut rng = Rng(memfile_block as u64 + codec.len() as u64);
            // A short last block (8 KiB past the last 2 MiB boundary): the
            // layout stores it last wherever the trace lists it.
            let mem_len = 6 * HUGEPAGE + 2 * PAGE;
            let mut mem = image(&mut rng, mem_len);
            let mut root = image(&mut rng, 1 << 20);
            let work = dir.path().join(format!("work-{memfile_block}"));
            std::fs::create_dir(&work).unwrap();
            let (mem_path, root_path) = (work.join("mem"), work.join("root"));
            let (mem_trace, root_trace) = (work.join("mem.trace"), work.join("root.trace"));
            let mut parent: Option<String> = None;
            // A fresh build, a layer on it (both with traces), a layer
            // without a trace on top.
            for step in 0..3 {
                if step > 0 {
                    rng.mutate(&mut mem, 40);
                    rng.mutate(&mut root, 40);
                    // `mutate` may write zero pages: fine, zeros are stored nowhere.
                }
                std::fs::write(&mem_path, &mem).unwrap();
                std::fs::write(&root_path, &root).unwrap();
                let build = Uuid::new_v4().to_string();
                let block = memfile_block.to_string();
                let mut args = vec!["--compress", codec, "--memfile-block-size", &block];
                if let Some(p) = &parent {
                    args.extend(["--base", p]);
                }
                let traced = step < 2;
                let (mem_indices, root_indices) = if traced {
                    args.extend(["--prefetch-memfile", s(&mem_trace)]);
                    args.extend(["--prefetch-rootfs", s(&root_trace)]);
                    (
                        write_trace(&mut rng, &mem_trace, mem_len, PAGE, 300),
                        write_trace(&mut rng, &root_trace, root.len(), PAGE, 50),
                    )
                } else {
                    (Vec::new(), Vec::new())
                };
                tdfs_pack(&store, &build, &mem_path, &root_path, &args);

                if traced && step == 0 {
                    // The own diff starts with the first-touched block.
                    let local = local_store(&store);
                    let id = build.parse().unwrap();
                    for (kind, indices, img, bs) in [
                        (FileKind::Memfile, &mem_indices, &mem, memfile_block),
                        (FileKind::Rootfs, &root_indices, &root, PAGE),
                    ] {
                        let first = indices.iter().copied().find(|&i| {
                            // The short last block is stored last.
                            (i as usize * PAGE / bs + 1) * bs <= img.len()
                        });
                        let want = block_of(img, first.unwrap(), PAGE, bs);
                        let diff = whole_diff(local.as_ref(), id, kind);
                        assert!(
                            diff[..want.len()] == *want,
                            "{kind} of {codec}/{bs}: layout"
                        );
                    }
                    for file in ["memfile", "rootfs.ext4"] {
                        let fp = replay(&store, &build, file);
                        assert_eq!(
                            fp["own_first"], true,
                            "{file} {codec} {memfile_block}: {fp}"
                        );
                        // One stretch, and the short last block stored last.
                        let runs = fp["runs"].as_u64().unwrap();
                        assert!(runs <= 3, "{file} {codec} {memfile_block}: {fp}");
                    }
                }
                expected.insert((build.clone(), "memfile"), mem.clone());
                expected.insert((build.clone(), "rootfs.ext4"), root.clone());
                parent = Some(build);
            }
        }
        check_reads(&store, &expected);
    }
}

#[test]
fn the_working_set_layout_touches_fewer_units_than_the_template_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut rng = Rng(22);
    let mem = image(&mut rng, 16 << 20);
    let root = image(&mut rng, 1 << 20);
    let (mem_path, root_path, trace) = (
        dir.path().join("mem"),
        dir.path().join("root"),
        dir.path().join("trace"),
    );
    std::fs::write(&mem_path, &mem).unwrap();
    std::fs::write(&root_path, &root).unwrap();
    // 5% of the pages, scattered: in template order nearly every 1 MiB
    // frame holds one of them.
    write_trace(&mut rng, &trace, mem.len(), PAGE, 200);
    let mut units = Vec::new();
    for layout in ["template", "working-set"] {
        let build = Uuid::new_v4().to_string();
        tdfs_pack(
            &store,
            &build,
            &mem_path,
            &root_path,
            &[
                "--memfile-block-size",
                "4KiB",
                "--frame-size",
                "1MiB",
                "--prefetch-memfile",
                s(&trace),
                "--layout",
                layout,
            ],
        );
        let fp = replay(&store, &build, "memfile");
        units.push(fp["units"].as_u64().unwrap());
        let text = tdfs_ok(&["inspect", "--store", s(&store), &build, "memfile"]);
        assert!(text.contains("a replay touches"), "{text}");
    }
    // 200 pages = 800 KiB: one frame stored together, against most of 16.
    assert!(units[0] >= 12, "template order touches {} frames", units[0]);
    assert_eq!(
        units[1], 1,
        "working-set layout touches {} frames",
        units[1]
    );
}

/// Modification time and bytes of every object of `build` in `store`.
fn objects_of(store: &Path, build: &str) -> BTreeMap<PathBuf, (SystemTime, String)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(store.join(build)).unwrap() {
        let path = entry.unwrap().path();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        out.insert(
            path.clone(),
            (mtime, sha256_hex(&std::fs::read(&path).unwrap())),
        );
    }
    out
}

#[test]
fn a_thin_working_set_layer_leaves_the_base_untouched_and_reads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut rng = Rng(7);
    let mut mem = image(&mut rng, 8 << 20);
    // Zero pages in the trace are left to the base's zero mapping.
    mem[..PAGE].fill(0);
    let root = image(&mut rng, 1 << 20);
    let (mem_path, root_path) = (dir.path().join("mem"), dir.path().join("root"));
    let (mem_trace, root_trace) = (dir.path().join("mem.trace"), dir.path().join("root.trace"));
    std::fs::write(&mem_path, &mem).unwrap();
    std::fs::write(&root_path, &root).unwrap();
    std::fs::write(dir.path().join("snap"), b"vm state").unwrap();
    let mem_indices = write_trace(&mut rng, &mem_trace, mem.len(), PAGE, 150);
    let mut with_zero = vec![0u64];
    with_zero.extend(mem_indices.iter().filter(|&&i| i != 0));
    std::fs::write(
        &mem_trace,
        serde_json::json!({ "indices": with_zero, "block_size": PAGE }).to_string(),
    )
    .unwrap();
    write_trace(&mut rng, &root_trace, root.len(), PAGE, 40);

    // The base: template order, as E2B writes it, with its trace in its
    // metadata.json (prefetch.memory).
    let base = Uuid::new_v4().to_string();
    tdfs_pack(
        &store,
        &base,
        &mem_path,
        &root_path,
        &[
            "--memfile-block-size",
            "4KiB",
            "--frame-size",
            "1MiB",
            "--prefetch-memfile",
            s(&mem_trace),
            "--snapfile",
            s(&dir.path().join("snap")),
            "--layout",
            "template",
        ],
    );
    let before = objects_of(&store, &base);
    let base_units = replay(&store, &base, "memfile")["units"].as_u64().unwrap();

    // The memfile's trace from the base's metadata, the rootfs's given.
    let out = tdfs_ok(&[
        "working-set",
        "--store",
        s(&store),
        &base,
        "--prefetch-rootfs",
        s(&root_trace),
    ]);
    let layer = out.trim().to_string();
    assert_eq!(
        objects_of(&store, &base),
        before,
        "the base's objects changed"
    );

    let local = local_store(&store);
    let (base_id, layer_id): (Uuid, Uuid) = (base.parse().unwrap(), layer.parse().unwrap());
    for kind in FileKind::ALL {
        assert!(
            oracle_flatten(local.as_ref(), layer_id, kind)
                == oracle_flatten(local.as_ref(), base_id, kind),
            "{kind}: the layer reads other bytes than its base"
        );
    }
    // The layer stores only the working set (the zero page left out), in
    // first-touch order; everything else maps to the base.
    let h = header(&store, &layer, FileKind::Memfile);
    assert_eq!(h.metadata.generation, 1);
    assert_eq!(h.metadata.base_build_id, base_id);
    let diff = whole_diff(local.as_ref(), layer_id, FileKind::Memfile);
    assert_eq!(diff.len(), (with_zero.len() - 1) * PAGE);
    for (n, &i) in with_zero[1..].iter().enumerate() {
        let want = &mem[i as usize * PAGE..(i as usize + 1) * PAGE];
        assert!(
            diff[n * PAGE..(n + 1) * PAGE] == *want,
            "entry {n}: block {i}"
        );
    }
    let fp = replay(&store, &layer, "memfile");
    assert_eq!(fp["own_first"], true, "{fp}");
    assert_eq!(fp["runs"], 1, "{fp}");
    assert!(
        fp["units"].as_u64().unwrap() < base_units,
        "{fp} against {base_units}"
    );
    let meta: Value =
        serde_json::from_slice(&std::fs::read(store.join(&layer).join("metadata.json")).unwrap())
            .unwrap();
    assert_eq!(meta["template"]["build_id"], layer.as_str());
    assert_eq!(
        meta["prefetch"]["memory"]["indices"],
        serde_json::json!(with_zero)
    );
    assert_eq!(
        meta["prefetch"]["rootfs"]["indices"]
            .as_array()
            .unwrap()
            .len(),
        40
    );
    assert_eq!(
        std::fs::read(store.join(&layer).join("snapfile")).unwrap(),
        b"vm state"
    );

    // A further layer packed on the thin one reads right too.
    let mut mem2 = mem.clone();
    rng.mutate(&mut mem2, 30);
    std::fs::write(&mem_path, &mem2).unwrap();
    let top = Uuid::new_v4().to_string();
    tdfs_pack(
        &store,
        &top,
        &mem_path,
        &root_path,
        &["--base", &layer, "--frame-size", "1MiB"],
    );
    let mut expected = BTreeMap::new();
    for (build, m) in [(&base, &mem), (&layer, &mem), (&top, &mem2)] {
        expected.insert((build.clone(), "memfile"), m.clone());
        expected.insert((build.clone(), "rootfs.ext4"), root.clone());
    }
    check_reads(&store, &expected);
    assert_eq!(
        objects_of(&store, &base),
        before,
        "the base's objects changed"
    );
}

#[test]
fn a_thin_layer_over_a_hugepage_base_copies_whole_blocks_the_short_one_last() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut rng = Rng(11);
    // Five 2 MiB blocks and a short one of 8 KiB.
    let mem = image(&mut rng, 5 * HUGEPAGE + 2 * PAGE);
    let root = image(&mut rng, 256 * PAGE);
    let (mem_path, root_path, trace) = (
        dir.path().join("mem"),
        dir.path().join("root"),
        dir.path().join("trace"),
    );
    std::fs::write(&mem_path, &mem).unwrap();
    std::fs::write(&root_path, &root).unwrap();
    // 4 KiB entries, as E2B records pages: in blocks 3, 5 (the short
    // one), 1, and 3 again.
    let pages = (HUGEPAGE / PAGE) as u64;
    let indices = [3 * pages + 5, 5 * pages + 1, pages + 100, 3 * pages + 6];
    std::fs::write(
        &trace,
        serde_json::json!({ "indices": indices, "block_size": PAGE }).to_string(),
    )
    .unwrap();
    let base = Uuid::new_v4().to_string();
    tdfs_pack(
        &store,
        &base,
        &mem_path,
        &root_path,
        &[
            "--compress",
            "lz4",
            "--memfile-block-size",
            "2MiB",
            "--prefetch-memfile",
            s(&trace),
            "--layout",
            "template",
        ],
    );
    let before = objects_of(&store, &base);
    let out = tdfs_ok(&[
        "working-set",
        "--store",
        s(&store),
        &base,
        "--compress",
        "lz4",
    ]);
    let layer = out.trim().to_string();
    assert_eq!(
        objects_of(&store, &base),
        before,
        "the base's objects changed"
    );

    let local = local_store(&store);
    let diff = whole_diff(local.as_ref(), layer.parse().unwrap(), FileKind::Memfile);
    let block = |b: usize| &mem[b * HUGEPAGE..((b + 1) * HUGEPAGE).min(mem.len())];
    assert!(
        diff == [block(3), block(1), block(5)].concat(),
        "the layer holds blocks 3, 1, then the short 5"
    );
    // The rootfs has no trace: its layer header maps all of it to the base.
    assert!(whole_diff(local.as_ref(), layer.parse().unwrap(), FileKind::Rootfs).is_empty());
    let fp = replay(&store, &layer, "memfile");
    assert_eq!(fp["own_first"], true, "{fp}");
    assert_eq!(fp["units"], 3, "{fp}");
    let mut expected = BTreeMap::new();
    for build in [&base, &layer] {
        expected.insert((build.clone(), "memfile"), mem.clone());
        expected.insert((build.clone(), "rootfs.ext4"), root.clone());
    }
    check_reads(&store, &expected);
}

#[test]
fn bad_traces_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let mut rng = Rng(3);
    let (mem_path, root_path, trace) = (
        dir.path().join("mem"),
        dir.path().join("root"),
        dir.path().join("trace"),
    );
    std::fs::write(&mem_path, image(&mut rng, 16 * PAGE)).unwrap();
    std::fs::write(&root_path, image(&mut rng, 16 * PAGE)).unwrap();
    let cases: [(Vec<u64>, &str); 3] = [
        (
            vec![1, 2, 1, 3, 2],
            "2 entries repeat a block listed before them; the first is entry 2 (block 1)",
        ),
        (
            vec![0, 99, 3, 16],
            "2 blocks of 4096 bytes lie past the end of the image (65536 bytes, 16 blocks); the first is entry 1 (block 99)",
        ),
        (
            (0..17).collect(),
            "17 blocks of 4096 bytes listed, more than the image has (16 in 65536 bytes); the first one too many is entry 16 (block 16)",
        ),
    ];
    for (indices, message) in cases {
        std::fs::write(
            &trace,
            serde_json::json!({ "indices": indices, "block_size": PAGE }).to_string(),
        )
        .unwrap();
        let out = tdfs(&[
            "pack",
            "--store",
            s(&store),
            "--memfile",
            s(&mem_path),
            "--rootfs",
            s(&root_path),
            "--memfile-block-size",
            "4KiB",
            "--prefetch-rootfs",
            s(&trace),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(message), "{err}");
        assert_eq!(std::fs::read_dir(&store).unwrap().count(), 0, "{err}");
    }
    // A frame edge inside a 2 MiB block is refused too, before the store
    // is touched.
    let out = tdfs(&[
        "pack",
        "--store",
        s(&store),
        "--memfile",
        s(&mem_path),
        "--rootfs",
        s(&root_path),
        "--frame-size",
        "1MiB",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a multiple of the memfile block size"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), 0, "{err}");
}
