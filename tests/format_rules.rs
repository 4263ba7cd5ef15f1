//! E2B's format rules beyond FORMAT.md (issue 24), each with a hand-made
//! build read through `inspect`, `verify`, `export` and a mount: frames off
//! the block grid (read right, warned about), V1–V4 headers without
//! mappings (the whole build), bytes after the mappings of a V4/V5 inner
//! block (skipped), metadata.json `version` <= 1 (no trace) and a
//! metadata.json re-uploaded with its trace after the build appeared.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use common::builds::{PAGE, TestStore, build_id, mapping};
use common::mount::{MountGuard, fuse_available, settled};
use common::process::{run_ok, tdfs, tdfs_ok, wait_until};
use common::rng::noise;
use lz4_flex::frame::{FrameDecoder, FrameEncoder};
use serde_json::{Value, json};
use tdfs::format::{FileKind, Header, METADATA_LEN, Mappings, Metadata, ObjectKey};
use uuid::Uuid;

const MEM: FileKind = FileKind::Memfile;
const ROOT: FileKind = FileKind::Rootfs;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn write(store: &TestStore, key: &ObjectKey, bytes: &[u8]) {
    let path = store.root.join(key.to_string());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Renamed into place, as a store upload replaces an object.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

fn metadata(build: Uuid, version: u64, size: u64) -> Metadata {
    Metadata {
        version,
        block_size: PAGE,
        size,
        generation: 0,
        build_id: build,
        base_build_id: build,
    }
}

/// `build`'s whole `file` from its own uncompressed diff `diff`, the header
/// encoded as `version` and its inner block changed by `edit` (V4/V5; a
/// V3 header has none).
fn put_whole(
    store: &TestStore,
    build: Uuid,
    file: FileKind,
    version: u16,
    diff: &[u8],
    edit: impl FnOnce(&mut Vec<u8>),
) {
    store.put_raw_diff(build, file, diff);
    let size = diff.len() as u64;
    let header = Header {
        metadata: metadata(build, u64::from(version), size),
        builds: Vec::new(),
        mappings: Mappings::new(vec![mapping(0, size, build, 0)], size).unwrap(),
    };
    let mut bytes = header.encode(version).unwrap();
    if version >= 4 {
        bytes = edit_inner(bytes, edit);
    }
    write(store, &ObjectKey::header(build, file), &bytes);
}

/// An encoded V4/V5 header with its inner block changed by `edit`.
fn edit_inner(bytes: Vec<u8>, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let start = METADATA_LEN + 5;
    let mut inner = Vec::new();
    FrameDecoder::new(&bytes[start..])
        .read_to_end(&mut inner)
        .unwrap();
    edit(&mut inner);
    let mut out = bytes[..METADATA_LEN + 1].to_vec();
    out.extend_from_slice(&(inner.len() as u32).to_le_bytes());
    let mut encoder = FrameEncoder::new(out);
    encoder.write_all(&inner).unwrap();
    encoder.finish().unwrap()
}

/// `inspect --json` of `build`.
fn inspect(store: &TestStore, build: Uuid) -> Value {
    let out = tdfs_ok(&[
        "inspect",
        "--store",
        s(&store.root),
        &build.to_string(),
        "--json",
    ]);
    serde_json::from_str(&out).unwrap()
}

/// `verify` of `build` passes; returns its stderr (warnings).
fn verify_ok(store: &TestStore, build: Uuid) -> String {
    let out = tdfs(&["verify", "--store", s(&store.root), &build.to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "verify {build}: {stderr}");
    stderr
}

/// `export` and a mount both give `expected` for each file of `build`.
fn reads_as(store: &TestStore, build: Uuid, expected: &[(FileKind, &[u8])]) {
    let out = tempfile::tempdir().unwrap();
    for (file, bytes) in expected {
        let path = out.path().join(file.name());
        tdfs_ok(&[
            "export",
            "--store",
            s(&store.root),
            &build.to_string(),
            file.name(),
            "-o",
            s(&path),
        ]);
        assert!(
            std::fs::read(&path).unwrap() == *bytes,
            "export {build} {file}"
        );
    }
    if !fuse_available() {
        return;
    }
    let mount = MountGuard::start(&store.root, &[]);
    for (file, bytes) in expected {
        let got = std::fs::read(mount.join(format!("{build}/{file}"))).unwrap();
        assert!(got == *bytes, "mounted {build}/{file}");
    }
}

#[test]
fn frames_off_the_block_grid_read_right_and_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(dir.path());
    let b = build_id(1);
    let size = 8 * PAGE;
    let mem = noise(1, size as usize);
    // 6000-byte frames in a 4 KiB-block memfile: E2B would serve a block
    // across a frame edge half unfetched.
    let own = store.put_zstd_diff(b, MEM, &mem, 6000);
    store.put_header(b, MEM, 4, size, vec![mapping(0, size, b, 0)], vec![own]);
    let root = noise(2, 4 * PAGE as usize);
    put_whole(&store, b, ROOT, 3, &root, |_| {});

    let report = inspect(&store, b);
    let why = report["files"][0]["builds"][0]["off_grid"]
        .as_str()
        .unwrap();
    assert!(
        why.contains("frame 0") && why.contains("validateCompressConfig"),
        "{why}"
    );
    let warnings = verify_ok(&store, b);
    assert!(
        warnings.contains("warning") && warnings.contains("off the 4096-byte block grid"),
        "{warnings}"
    );
    reads_as(&store, b, &[(MEM, &mem), (ROOT, &root)]);
}

#[test]
fn headers_without_mappings_are_the_whole_build() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(dir.path());
    let b = build_id(2);
    // V3: the metadata alone, for a size that is not a whole page.
    let mem = noise(3, 5 * PAGE as usize + 100);
    store.put_raw_diff(b, MEM, &mem);
    let mut v3 = Vec::new();
    metadata(b, 3, mem.len() as u64).encode_into(&mut v3);
    write(&store, &ObjectKey::header(b, MEM), &v3);
    // V4: a mapping count of 0 in place of the one mapping.
    let root = noise(4, 6 * PAGE as usize);
    put_whole(&store, b, ROOT, 4, &root, |inner| {
        inner.truncate(inner.len() - 44);
        inner.extend_from_slice(&0u32.to_le_bytes());
    });

    let report = inspect(&store, b);
    for f in 0..2 {
        let mappings = &report["files"][f]["mappings"];
        assert_eq!(mappings["count"], 1, "{mappings}");
        assert_eq!(mappings["by_build"][0]["build_id"], b.to_string());
    }
    verify_ok(&store, b);
    reads_as(&store, b, &[(MEM, &mem), (ROOT, &root)]);
}

#[test]
fn bytes_after_the_mappings_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(dir.path());
    let b = build_id(3);
    let later = |inner: &mut Vec<u8>| inner.extend_from_slice(b"a later section of the header");
    let mem = noise(5, 6 * PAGE as usize);
    put_whole(&store, b, MEM, 4, &mem, later);
    let root = noise(6, 3 * PAGE as usize);
    put_whole(&store, b, ROOT, 5, &root, later);

    let report = inspect(&store, b);
    assert_eq!(report["files"][0]["header_version"], 4);
    assert_eq!(report["files"][1]["header_version"], 5);
    verify_ok(&store, b);
    reads_as(&store, b, &[(MEM, &mem), (ROOT, &root)]);
}

/// metadata.json of version `version` listing a trace of the memfile's
/// and the rootfs's first two blocks.
fn metadata_json(version: Value) -> Vec<u8> {
    let trace = json!({"indices": [0, 1], "access_types": ["r", "r"], "block_size": 4096});
    serde_json::to_vec(&json!({
        "version": version,
        "template": {"build_id": "x"},
        "prefetch": {"memory": trace, "rootfs": trace},
    }))
    .unwrap()
}

#[test]
fn metadata_version_1_lists_no_trace_and_a_reupload_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(dir.path());
    let b = build_id(4);
    // Frames of 2 pages: a trace of 2 blocks is one prefetch fetch.
    let mem = noise(7, 16 * PAGE as usize);
    let own = store.put_zstd_diff(b, MEM, &mem, 2 * PAGE as usize);
    let size = mem.len() as u64;
    store.put_header(b, MEM, 4, size, vec![mapping(0, size, b, 0)], vec![own]);
    let root = noise(8, 4 * PAGE as usize);
    put_whole(&store, b, ROOT, 3, &root, |_| {});
    let key = ObjectKey::blob(b, tdfs::format::Blob::Metadata);
    let old = metadata_json(json!(1));
    write(&store, &key, &old);

    let report = inspect(&store, b);
    let prefetch = &report["files"][0]["prefetch"];
    assert_eq!(prefetch["state"], "ignored", "{prefetch}");
    assert!(
        prefetch["reason"]
            .as_str()
            .unwrap()
            .contains("version is 1"),
        "{prefetch}"
    );
    verify_ok(&store, b);
    reads_as(&store, b, &[(MEM, &mem), (ROOT, &root)]);
    if !fuse_available() {
        return;
    }

    let mount = MountGuard::start(&store.root, &[]);
    let meta_path = mount.join(format!("{b}/metadata.json"));
    assert_eq!(std::fs::read(&meta_path).unwrap(), old);

    // The trace is made readable later, as E2B's optimize phase adds it
    // (a longer document, so the size changes too).
    let new: Vec<u8> = [metadata_json(json!(2)), b"\n".to_vec()].concat();
    assert_ne!(new.len(), old.len());
    write(&store, &key, &new);
    // Within the listing TTL (5 s) of the mount and that of the kernel's
    // attributes, `cat` shows the new bytes.
    wait_until(
        Duration::from_secs(12),
        "cat shows the new metadata.json",
        || {
            let shown = run_ok("cat", [s(&meta_path)]);
            match shown.as_bytes() == new.as_slice() {
                true => Ok(()),
                false => Err(shown),
            }
        },
    );
    // The memfile, opened for the first time now, replays the new trace.
    let memfile = mount.join(format!("{b}/{MEM}"));
    let _held = std::fs::File::open(&memfile).unwrap();
    assert_eq!(settled(&memfile), "done (trace from metadata.json)");
    assert!(mount.stat("tdfs_prefetch_fetches_total") >= 1);
}
