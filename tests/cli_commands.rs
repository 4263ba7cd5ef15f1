//! The `tdfs` binary's offline commands end to end: pack, inspect, verify
//! and export on fresh builds, layers and the independent fixture stores,
//! and clear failures on bad input.

mod common;

use std::path::Path;

use common::digest::sha256_hex;
use common::fixtures::{fixture_stores, manifest};
use common::pack::{PAGE, local_store, put_legacy_build};
use common::process::{tdfs, tdfs_ok};
use common::rng::Rng;
use tdfs::format::{Compression, FileKind, ObjectKey};
use uuid::Uuid;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr_of(args: &[&str]) -> (i32, String) {
    let out = tdfs(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Images {
    _dir: tempfile::TempDir,
    mem: Vec<u8>,
    root: Vec<u8>,
    mem_path: std::path::PathBuf,
    root_path: std::path::PathBuf,
    store: std::path::PathBuf,
}

fn images(seed: u64) -> Images {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(seed);
    let mem = rng.image(2048);
    let root = rng.image(700);
    let mem_path = dir.path().join("mem.img");
    let root_path = dir.path().join("root.img");
    std::fs::write(&mem_path, &mem).unwrap();
    std::fs::write(&root_path, &root).unwrap();
    let store = dir.path().join("store");
    Images {
        _dir: dir,
        mem,
        root,
        mem_path,
        root_path,
        store,
    }
}

/// The arguments of `tdfs pack` of `img`'s images into its store, then `extra`.
fn pack_args<'a>(img: &'a Images, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "pack",
        "--store",
        s(&img.store),
        "--memfile",
        s(&img.mem_path),
        "--rootfs",
        s(&img.root_path),
    ];
    args.extend_from_slice(extra);
    args
}

fn pack(img: &Images, extra: &[&str]) -> Uuid {
    tdfs_ok(&pack_args(img, extra))
        .trim()
        .parse()
        .expect("pack prints the build id")
}

fn export(store: &Path, build: Uuid, file: FileKind, out: &Path) -> Vec<u8> {
    tdfs_ok(&[
        "export",
        "--store",
        s(store),
        &build.to_string(),
        file.name(),
        "-o",
        s(out),
    ]);
    std::fs::read(out).unwrap()
}

#[test]
fn pack_inspect_verify_export_happy_path() {
    let mut img = images(1);
    let snap = img.store.with_file_name("snap");
    std::fs::write(&snap, b"snapshot state").unwrap();
    let meta = img.store.with_file_name("meta.json");
    std::fs::write(&meta, br#"{"version":2,"note":"given"}"#).unwrap();
    let base = pack(
        &img,
        &[
            "--snapfile",
            s(&snap),
            "--metadata",
            s(&meta),
            "--frame-size",
            "512KiB",
            "--memfile-block-size",
            "4KiB",
        ],
    );
    let store = local_store(&img.store);
    assert_eq!(
        store
            .read_all(&ObjectKey::blob(base, tdfs::format::Blob::Snapfile), 100)
            .unwrap(),
        b"snapshot state"
    );

    let json: serde_json::Value = serde_json::from_str(&tdfs_ok(&[
        "inspect",
        "--store",
        s(&img.store),
        &base.to_string(),
        "--json",
    ]))
    .unwrap();
    assert_eq!(json["build_id"], base.to_string());
    assert_eq!(json["metadata_json"]["note"], "given");
    assert_eq!(json["snapfile_size"], 14);
    let mem = &json["files"][0];
    assert_eq!(mem["file"], "memfile");
    assert_eq!(mem["header_version"], 4);
    assert_eq!(mem["block_size"], 4096);
    assert_eq!(mem["generation"], 0);
    assert_eq!(mem["builds"][0]["compression"], "zstd");
    let frames = mem["builds"][0]["frames"].as_u64().unwrap();
    assert!(frames >= 2, "512 KiB frames over a multi-MiB diff");
    let zero = img
        .mem
        .chunks(PAGE)
        .filter(|p| p.iter().all(|&b| b == 0))
        .count() as u64;
    assert_eq!(mem["mappings"]["zero_bytes"], zero * PAGE as u64);

    let text = tdfs_ok(&[
        "inspect",
        "--store",
        s(&img.store),
        &base.to_string(),
        "rootfs.ext4",
    ]);
    assert!(
        text.contains("rootfs.ext4") && !text.contains("\nmemfile"),
        "{text}"
    );
    assert!(text.contains("frames"), "{text}");

    let out = tdfs_ok(&["verify", "--store", s(&img.store), &base.to_string()]);
    assert!(out.contains("ok"), "{out}");

    let out_path = img.store.with_file_name("mem.out");
    assert!(export(&img.store, base, FileKind::Memfile, &out_path) == img.mem);

    // A layer with lz4 and a V5 header on top.
    let mut rng = Rng(2);
    rng.mutate(&mut img.mem, 100);
    std::fs::write(&img.mem_path, &img.mem).unwrap();
    let layer = pack(
        &img,
        &[
            "--base",
            &base.to_string(),
            "--compress",
            "lz4",
            "--header-version",
            "5",
        ],
    );
    let json: serde_json::Value = serde_json::from_str(&tdfs_ok(&[
        "inspect",
        "--store",
        s(&img.store),
        &layer.to_string(),
        "memfile",
        "--json",
    ]))
    .unwrap();
    assert_eq!(json["files"][0]["generation"], 1);
    assert_eq!(json["files"][0]["base_build_id"], base.to_string());
    assert_eq!(json["files"][0]["header_version"], 5);
    tdfs_ok(&["verify", "--store", s(&img.store), &layer.to_string()]);
    assert!(export(&img.store, layer, FileKind::Memfile, &out_path) == img.mem);
    let root_out = img.store.with_file_name("root.out");
    assert!(export(&img.store, layer, FileKind::Rootfs, &root_out) == img.root);
}

#[test]
fn export_leaves_zero_ranges_as_holes() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let mut mem = vec![0u8; 64 << 20];
    mem[..4096].fill(7);
    let mem_path = dir.path().join("mem");
    std::fs::write(&mem_path, &mem).unwrap();
    let store = dir.path().join("store");
    let id: Uuid = tdfs_ok(&[
        "pack",
        "--store",
        s(&store),
        "--memfile",
        s(&mem_path),
        "--rootfs",
        s(&mem_path),
    ])
    .trim()
    .parse()
    .unwrap();
    let out = dir.path().join("out");
    assert!(export(&store, id, FileKind::Memfile, &out) == mem);
    // `-o -` is standard output, holes written as zeros, and no file `-`.
    let piped = tdfs(&[
        "export",
        "--store",
        s(&store),
        &id.to_string(),
        "memfile",
        "-o",
        "-",
    ]);
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert!(
        piped.stdout == mem,
        "{} bytes on stdout",
        piped.stdout.len()
    );
    assert!(!Path::new("-").exists(), "export wrote a file named -");
    let md = std::fs::metadata(&out).unwrap();
    assert_eq!(md.len(), 64 << 20);
    assert!(
        md.blocks() * 512 < 8 << 20,
        "{} bytes allocated",
        md.blocks() * 512
    );
}

#[test]
fn fixture_builds_verify_and_export_as_the_manifest_says() {
    let out_dir = tempfile::tempdir().unwrap();
    for store in fixture_stores() {
        for build in manifest(&store)["builds"].as_array().unwrap() {
            let id: Uuid = build["build_id"].as_str().unwrap().parse().unwrap();
            tdfs_ok(&["verify", "--store", s(&store), &id.to_string()]);
            for file in FileKind::ALL {
                let out = out_dir.path().join(format!("{id}-{}", file.name()));
                let bytes = export(&store, id, file, &out);
                assert_eq!(
                    sha256_hex(&bytes),
                    build["files"][file.name()]["sha256"].as_str().unwrap(),
                    "{} {id} {}",
                    store.display(),
                    file.name()
                );
            }
        }
    }
}

/// A legacy build: raw `memfile` and `rootfs.ext4` objects and no
/// headers. `inspect` and `verify` read it as `export` and `mount` do, through
/// its identity mapping (they used to call it missing).
#[test]
fn inspect_and_verify_read_a_legacy_build_without_headers() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = tdfs::store::LocalStore::create(&store_dir).unwrap();
    let mut rng = Rng(4);
    let mem = rng.image(300);
    let root = rng.image(70);
    let build = put_legacy_build(&store, &mem, &root);

    let json: serde_json::Value = serde_json::from_str(&tdfs_ok(&[
        "inspect",
        "--store",
        s(&store_dir),
        &build.to_string(),
        "--json",
    ]))
    .unwrap();
    let files = json["files"].as_array().unwrap();
    assert_eq!(files.len(), 2, "{json}");
    for (report, bytes) in files.iter().zip([&mem, &root]) {
        assert_eq!(report["header_version"], 3, "{report}");
        assert_eq!(report["size"], bytes.len() as u64, "{report}");
        assert_eq!(report["build_id"], build.to_string());
        assert_eq!(report["mappings"]["count"], 1, "one identity mapping");
    }

    let out = tdfs_ok(&["verify", "--store", s(&store_dir), &build.to_string()]);
    assert!(out.contains("ok"), "{out}");
    let out_path = dir.path().join("root.out");
    assert!(export(&store_dir, build, FileKind::Rootfs, &out_path) == root);
}

#[test]
fn missing_build_and_wrong_flags_fail_clearly() {
    let img = images(3);
    pack(&img, &[]);
    let missing = Uuid::new_v4().to_string();
    for cmd in ["inspect", "verify"] {
        let (code, err) = stderr_of(&[cmd, "--store", s(&img.store), &missing]);
        assert_eq!(code, 1, "{cmd}: {err}");
        assert!(
            err.contains(&missing) && err.contains("has no memfile header"),
            "{cmd}: {err}"
        );
    }
    let out = img.store.with_file_name("x");
    let (code, err) = stderr_of(&[
        "export",
        "--store",
        s(&img.store),
        &missing,
        "memfile",
        "-o",
        s(&out),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("tdfs: error:") && err.contains(&missing),
        "{err}"
    );
    assert!(!out.exists());

    let (code, err) = stderr_of(&["pack", "--store", s(&img.store), "--bogus"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--bogus"), "{err}");
    let (code, err) = stderr_of(&["inspect", "--store", s(&img.store), "not-a-uuid"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a build id"), "{err}");
    for (flag, value) in [
        ("--frame-size", "2XB"),
        ("--compress", "gzip"),
        ("--header-version", "6"),
    ] {
        let (code, err) = stderr_of(&pack_args(&img, &[flag, value]));
        assert_eq!(code, 2, "{flag} {value}: {err}");
        assert!(err.contains(value), "{err}");
    }
    let (code, err) = stderr_of(&[
        "pack",
        "--store",
        s(&img.store),
        "--memfile",
        "/nonexistent/mem",
        "--rootfs",
        s(&img.root_path),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/mem"), "{err}");
    let (code, err) = stderr_of(&pack_args(&img, &["--base", &missing]));
    assert_eq!(code, 1);
    assert!(err.contains(&missing), "{err}");
    let (code, err) = stderr_of(&["verify", "--store", "/nonexistent/store", &missing]);
    assert_eq!(code, 1);
    assert!(err.contains("not a directory"), "{err}");
}

#[test]
fn corrupt_header_is_reported_with_its_key() {
    let img = images(4);
    let id = pack(&img, &[]);
    let key = ObjectKey::header(id, FileKind::Rootfs);
    let path = img.store.join(key.to_string());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(70);
    std::fs::write(&path, &bytes).unwrap();
    for cmd in ["inspect", "verify"] {
        let (code, err) = stderr_of(&[cmd, "--store", s(&img.store), &id.to_string()]);
        assert_eq!(code, 1, "{cmd}");
        assert!(
            err.contains(&key.to_string()) && err.contains("corrupt"),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn verify_detects_a_flipped_byte_in_a_data_object() {
    for (compression, needle) in [
        (Compression::Zstd, "frame"),
        (Compression::Lz4, "frame"),
        (Compression::None, "sha256"),
    ] {
        let img = images(5);
        let id = pack(
            &img,
            &["--compress", compression.name(), "--header-version", "4"],
        );
        tdfs_ok(&["verify", "--store", s(&img.store), &id.to_string()]);
        let key = ObjectKey::data(id, FileKind::Memfile, compression);
        let path = img.store.join(key.to_string());
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let (code, err) = stderr_of(&["verify", "--store", s(&img.store), &id.to_string()]);
        assert_eq!(code, 1, "{compression:?}: {err}");
        assert!(
            err.contains(&key.to_string()) && err.contains(needle),
            "{compression:?}: {err}"
        );
        assert!(err.contains("failed verification"), "{err}");
    }
}

#[test]
fn verify_detects_a_truncated_object() {
    let img = images(6);
    let id = pack(
        &img,
        &["--frame-size", "1MiB", "--memfile-block-size", "4KiB"],
    );
    let key = ObjectKey::data(id, FileKind::Memfile, Compression::Zstd);
    let path = img.store.join(key.to_string());
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let (code, err) = stderr_of(&["verify", "--store", s(&img.store), &id.to_string()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("past the object") || err.contains("ended after"),
        "{err}"
    );
}

#[test]
fn pack_refuses_a_frame_size_the_mount_would_refuse() {
    let img = images(7);
    let (code, err) = stderr_of(&pack_args(&img, &["--frame-size", "128MiB"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--frame-size 134217728 bytes")
            && err.contains("largest frame a mount serves (64 MiB)"),
        "{err}"
    );
    let written = std::fs::read_dir(&img.store).map_or(0, |d| d.count());
    assert_eq!(written, 0, "pack wrote to the store before refusing");
}

/// Replace the last frame of `build`'s memfile data object by `edit` of
/// it, and give the header's frame table its new compressed size, as a
/// writer that made such a frame would. Returns the frame's index.
fn rewrite_last_memfile_frame(
    store: &Path,
    build: Uuid,
    compression: Compression,
    edit: impl Fn(&mut Vec<u8>),
) -> usize {
    let header_path = store.join(ObjectKey::header(build, FileKind::Memfile).to_string());
    let mut header = tdfs::format::Header::decode(&std::fs::read(&header_path).unwrap()).unwrap();
    let entry = header
        .builds
        .iter_mut()
        .find(|b| b.build_id == build)
        .expect("the header lists its own build");
    let mut frames = entry.frames.frames().to_vec();
    let last = frames.last_mut().expect("a compressed diff has frames");

    let data_path = store.join(ObjectKey::data(build, FileKind::Memfile, compression).to_string());
    let mut object = std::fs::read(&data_path).unwrap();
    assert_eq!(
        object.len() as u64,
        last.end_c(),
        "the last frame ends the object"
    );
    let mut frame = object.split_off(last.start_c as usize);
    edit(&mut frame);
    last.size_c = frame.len() as u32;
    object.extend_from_slice(&frame);
    std::fs::write(&data_path, &object).unwrap();

    let index = frames.len() - 1;
    entry.frames = tdfs::format::FrameTable::new(compression, frames).unwrap();
    let version = header.version();
    std::fs::write(&header_path, header.encode(version).unwrap()).unwrap();
    index
}

#[test]
fn verify_rejects_frames_the_mount_would_refuse() {
    // A zstd skippable frame of no data (magic 0x184D2A50, length 0): the
    // zstd decoder passes it unless told the input is one frame.
    const SKIPPABLE: [u8; 8] = [0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0];
    type Edit = fn(&mut Vec<u8>);
    let cases: [(Compression, Edit, &str); 3] = [
        (
            Compression::Lz4,
            |f| f.truncate(f.len() - 4),
            "lz4: the frame has no end mark",
        ),
        (
            Compression::Lz4,
            |f| f.extend_from_slice(b"tail"),
            "lz4: 4 bytes follow the end of the frame",
        ),
        (
            Compression::Zstd,
            |f| f.extend_from_slice(&SKIPPABLE),
            "zstd: 8 bytes follow the end of the frame",
        ),
    ];
    for (compression, edit, needle) in cases {
        let img = images(8);
        let id = pack(
            &img,
            &["--compress", compression.name(), "--header-version", "4"],
        );
        tdfs_ok(&["verify", "--store", s(&img.store), &id.to_string()]);
        let frame = rewrite_last_memfile_frame(&img.store, id, compression, edit);
        let (code, err) = stderr_of(&["verify", "--store", s(&img.store), &id.to_string()]);
        let key = ObjectKey::data(id, FileKind::Memfile, compression);
        assert_eq!(code, 1, "{needle}: {err}");
        assert!(
            err.contains(&format!("{key}: frame {frame} ")) && err.contains(needle),
            "{needle}: {err}"
        );
    }
}
