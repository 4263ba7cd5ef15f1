//! Recording on a real mount (`--record-prefetch`): the blocks read on one
//! mount are written, in first-touch order, as a trace that a fresh mount
//! replays (`--prefetch-dir`) before any read, and that `tdfs pack
//! --prefetch-*` stores in a new build's metadata.json; a recording
//! directory that cannot be written is one warning and a working mount.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fixtures::fixture_store;
use common::mount::{MountGuard, fuse_available, settled, unmount_lazily, xattr};
use common::process::{run_ok, tdfs, tdfs_ok, tdfs_pack, wait_until};
use serde_json::Value;

/// A layer of the v4-zstd fixture: a 16 MiB memfile of 2 MiB blocks (in
/// 1 MiB frames) and an 8 MiB rootfs.ext4 of 4 KiB blocks.
const LAYER: &str = "bd87702b-8d31-4e8d-beda-66b642c931a9";
const MEMFILE_BLOCK: u64 = 2 << 20;
const ROOTFS_BLOCK: u64 = 4096;

/// A copy of the v4-zstd fixture store (its metadata lists no trace).
fn store_copy(dir: &Path) -> PathBuf {
    let store = dir.join("store");
    run_ok(
        "cp",
        [
            "-r",
            fixture_store("v4-zstd").to_str().unwrap(),
            store.to_str().unwrap(),
        ],
    );
    store
}

/// Read block `index` (of `block` bytes) of `path` with dd, one open each,
/// bypassing the page cache so the kernel asks for exactly that block.
fn read_block(path: &Path, block: u64, index: u64) {
    run_ok(
        "dd",
        [
            format!("if={}", path.display()),
            "of=/dev/null".to_string(),
            format!("bs={block}"),
            format!("skip={index}"),
            "count=1".to_string(),
            "iflag=direct".to_string(),
            "status=none".to_string(),
        ],
    );
}

fn recording(dir: &Path, file: &str) -> Value {
    let path = dir.join(LAYER).join(format!("{file}.prefetch.json"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

fn indices(trace: &Value) -> Vec<u64> {
    trace["indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

#[test]
fn a_recording_is_replayed_on_a_fresh_mount() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = store_copy(dir.path());
    let record = dir.path().join("record");
    let memfile_blocks = [5u64, 1, 3];
    let rootfs_blocks = [900u64, 17, 1500];
    let mount = MountGuard::start(&store, &["--record-prefetch", record.to_str().unwrap()]);
    let memfile = mount.join(format!("{LAYER}/memfile"));
    let rootfs = mount.join(format!("{LAYER}/rootfs.ext4"));
    for &b in &memfile_blocks {
        read_block(&memfile, MEMFILE_BLOCK, b);
    }
    // Each dd closed the memfile: written at its last close (the kernel
    // sends RELEASE after close returned, so wait for it, boundedly).
    let path = record.join(LAYER).join("memfile.prefetch.json");
    wait_until(Duration::from_secs(5), "three closes recorded", || {
        path.exists() && indices(&recording(&record, "memfile")).len() >= 3
    });
    let early = recording(&record, "memfile");
    assert_eq!(indices(&early), memfile_blocks, "the union of three opens");
    // Held open across the stop (SIGTERM): written at unmount.
    let open = std::fs::File::open(&rootfs).unwrap();
    for &b in &rootfs_blocks {
        read_block(&rootfs, ROOTFS_BLOCK, b);
    }
    assert!(
        !record
            .join(LAYER)
            .join("rootfs.ext4.prefetch.json")
            .exists()
    );
    drop(mount);
    drop(open);
    let memfile = recording(&record, "memfile");
    assert_eq!(indices(&memfile), memfile_blocks, "first-touch order");
    assert_eq!(memfile["block_size"], MEMFILE_BLOCK);
    assert_eq!(memfile["access_types"], serde_json::json!(["r", "r", "r"]));
    let rootfs = recording(&record, "rootfs.ext4");
    assert_eq!(indices(&rootfs), rootfs_blocks, "written at unmount");
    assert_eq!(rootfs["block_size"], ROOTFS_BLOCK);

    // A fresh mount replays both before any read (read-ahead off, so any
    // store request below is a block prefetch missed).
    let mount = MountGuard::start(
        &store,
        &[
            "--prefetch-dir",
            record.to_str().unwrap(),
            "--readahead",
            "0",
        ],
    );
    let memfile = mount.join(format!("{LAYER}/memfile"));
    let rootfs = mount.join(format!("{LAYER}/rootfs.ext4"));
    let _m = std::fs::File::open(&memfile).unwrap();
    let _r = std::fs::File::open(&rootfs).unwrap();
    assert!(settled(&memfile).starts_with("done (trace from "));
    assert!(settled(&rootfs).starts_with("done (trace from "));
    assert_eq!(mount.stat("tdfs_reads_total"), 0, "no read was made");
    assert!(mount.stat("tdfs_prefetch_fetches_total") > 0);
    let stores = mount.stat("tdfs_store_requests_total");
    for &b in &memfile_blocks {
        read_block(&memfile, MEMFILE_BLOCK, b);
    }
    for &b in &rootfs_blocks {
        read_block(&rootfs, ROOTFS_BLOCK, b);
    }
    assert_eq!(
        mount.stat("tdfs_store_requests_total"),
        stores,
        "every recorded block was already cached"
    );
    assert!(mount.stat("tdfs_prefetch_hits_total") > 0);
}

#[test]
fn an_unwritable_recording_directory_is_one_warning() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = store_copy(dir.path());
    // A regular file where the directory should be is refused at start...
    let record = dir.path().join("not-a-directory");
    std::fs::write(&record, b"x").unwrap();
    let mountpoint = dir.path().join("refused");
    std::fs::create_dir(&mountpoint).unwrap();
    let refused = tdfs(&[
        "mount",
        store.to_str().unwrap(),
        mountpoint.to_str().unwrap(),
        "--record-prefetch",
        record.to_str().unwrap(),
    ]);
    if refused.status.success() {
        unmount_lazily(&mountpoint);
    }
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("--record-prefetch"), "{stderr}");
    // ...and one that becomes a file after the start (root can write
    // anywhere else) is one warning, the mount serving on.
    std::fs::remove_file(&record).unwrap();
    // Passthrough on only for its xattr, which counts the opens not yet
    // released: the event that ends the wait below.
    let mount = MountGuard::start(
        &store,
        &[
            "--record-prefetch",
            record.to_str().unwrap(),
            "--passthrough",
            "on",
        ],
    );
    std::fs::remove_dir(&record).unwrap();
    std::fs::write(&record, b"x").unwrap();
    let memfile = mount.join(format!("{LAYER}/memfile"));
    for b in [2, 4, 2] {
        read_block(&memfile, MEMFILE_BLOCK, b);
    }
    let bytes = std::fs::read(&memfile).unwrap();
    assert_eq!(bytes.len() as u64, 8 * MEMFILE_BLOCK, "the mount serves");
    // Four closes, each a failed write. RELEASE comes after close
    // returned: wait until the mount holds no open of the memfile (tdfs
    // forgets the open, then writes the recording in the same RELEASE,
    // microseconds apart against a getfattr's milliseconds), so every
    // close has had its chance to warn.
    wait_until(Duration::from_secs(5), "every close released", || {
        let state = xattr(&memfile, "user.tdfs.passthrough");
        match state.contains("0 passthrough and 0 normal opens now") {
            true => Ok(()),
            false => Err(state),
        }
    });
    wait_until(Duration::from_secs(5), "a warning", || {
        mount.log().contains("recording not written")
    });
    let log = mount.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("recording"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains(record.to_str().unwrap()),
        "{}",
        warnings[0]
    );
}

/// The loop closed: record on a mount, pack the recordings into a new
/// build's metadata.json (E2B's keys kept), see them in `inspect`, and a
/// mount of the packed build replays them from its metadata.
#[test]
fn packed_recordings_are_inspected_and_replayed() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = store_copy(dir.path());
    let record = dir.path().join("record");
    let memfile_blocks = [6u64, 0];
    let rootfs_blocks = [33u64, 2000];
    {
        let mount = MountGuard::start(&store, &["--record-prefetch", record.to_str().unwrap()]);
        for &b in &memfile_blocks {
            read_block(&mount.join(format!("{LAYER}/memfile")), MEMFILE_BLOCK, b);
        }
        for &b in &rootfs_blocks {
            read_block(&mount.join(format!("{LAYER}/rootfs.ext4")), ROOTFS_BLOCK, b);
        }
    }
    let image = |file: &str| {
        let out = dir.path().join(format!("{file}.raw"));
        let store = store.to_str().unwrap();
        tdfs_ok(&[
            "export",
            "--store",
            store,
            LAYER,
            file,
            "-o",
            out.to_str().unwrap(),
        ]);
        out
    };
    let (memfile, rootfs) = (image("memfile"), image("rootfs.ext4"));
    let traces = record.join(LAYER);
    let memfile_trace = traces.join("memfile.prefetch.json");
    let rootfs_trace = traces.join("rootfs.ext4.prefetch.json");
    let packed = dir.path().join("packed");
    let new = "0b5e7a11-0000-4000-8000-000000000001";
    let e2b_metadata = store.join(LAYER).join("metadata.json");
    tdfs_pack(
        &packed,
        new,
        &memfile,
        &rootfs,
        &[
            "--metadata",
            e2b_metadata.to_str().unwrap(),
            "--prefetch-memfile",
            memfile_trace.to_str().unwrap(),
            "--prefetch-rootfs",
            rootfs_trace.to_str().unwrap(),
        ],
    );

    let inspect = |json: bool| {
        let mut args = vec!["inspect", "--store", packed.to_str().unwrap(), new];
        if json {
            args.push("--json");
        }
        tdfs_ok(&args)
    };
    let report: Value = serde_json::from_str(&inspect(true)).unwrap();
    let given: Value = serde_json::from_slice(&std::fs::read(&e2b_metadata).unwrap()).unwrap();
    for key in ["version", "template", "context", "from_template"] {
        assert_eq!(report["metadata_json"][key], given[key], "E2B's {key} kept");
    }
    let mem = &report["files"][0]["prefetch"];
    assert_eq!(mem["state"], "listed", "{mem}");
    assert_eq!(mem["entries"], 2);
    assert_eq!(mem["block_size"], MEMFILE_BLOCK);
    assert_eq!(mem["bytes"], 2 * MEMFILE_BLOCK);
    assert_eq!((&mem["first"], &mem["last"]), (&6.into(), &0.into()));
    let root = &report["files"][1]["prefetch"];
    assert_eq!(root["entries"], 2);
    assert_eq!(root["block_size"], ROOTFS_BLOCK);
    assert_eq!(
        (&root["lowest"], &root["highest"]),
        (&33.into(), &2000.into())
    );
    let text = inspect(false);
    assert!(
        text.contains("prefetch      2 blocks of 2.0 MiB (4.0 MiB), first 6, last 0"),
        "{text}"
    );

    let mount = MountGuard::start(&packed, &["--readahead", "0"]);
    let memfile = mount.join(format!("{new}/memfile"));
    let rootfs = mount.join(format!("{new}/rootfs.ext4"));
    let _m = std::fs::File::open(&memfile).unwrap();
    let _r = std::fs::File::open(&rootfs).unwrap();
    assert!(settled(&memfile).starts_with("done (trace from "));
    assert!(settled(&rootfs).starts_with("done (trace from "));
    assert_eq!(mount.stat("tdfs_reads_total"), 0);
    let stores = mount.stat("tdfs_store_requests_total");
    for &b in &memfile_blocks {
        read_block(&memfile, MEMFILE_BLOCK, b);
    }
    for &b in &rootfs_blocks {
        read_block(&rootfs, ROOTFS_BLOCK, b);
    }
    assert_eq!(mount.stat("tdfs_store_requests_total"), stores);
}

#[test]
fn pack_refuses_a_trace_past_the_end_of_its_image() {
    let dir = tempfile::tempdir().unwrap();
    let memfile = dir.path().join("memfile.raw");
    let rootfs = dir.path().join("rootfs.raw");
    std::fs::write(&memfile, vec![1u8; 4 << 20]).unwrap();
    std::fs::write(&rootfs, vec![2u8; 1 << 20]).unwrap();
    let trace = dir.path().join("memfile.prefetch.json");
    std::fs::write(
        &trace,
        r#"{"indices": [1, 2], "access_types": ["r", "r"], "block_size": 2097152}"#,
    )
    .unwrap();
    let store = dir.path().join("store");
    let out = tdfs(&[
        "pack",
        "--store",
        store.to_str().unwrap(),
        "--memfile",
        memfile.to_str().unwrap(),
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--prefetch-memfile",
        trace.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("past the end of the image"), "{err}");
    assert!(err.contains(trace.to_str().unwrap()), "{err}");
}
