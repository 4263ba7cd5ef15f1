//! Unit tests of `pack_build`: option checks against the mount's limits and
//! E2B's rules (frame grid, metadata version).

use std::fs;

use super::*;
use crate::format::PAGE_SIZE;
use crate::format::limits::MAX_FRAME_SIZE;
use crate::store::LocalStore;

/// A store directory and two small images (`pages` pages of varied
/// bytes each).
fn setup(pages: usize) -> (tempfile::TempDir, Arc<dyn WritableStore>, PackInputs) {
    let dir = tempfile::tempdir().unwrap();
    let image: Vec<u8> = (0..pages * PAGE_SIZE as usize)
        .map(|i| (i * 7 / 4096 % 251) as u8)
        .collect();
    let memfile = dir.path().join("mem.img");
    let rootfs = dir.path().join("root.img");
    fs::write(&memfile, &image).unwrap();
    fs::write(&rootfs, &image).unwrap();
    let store: Arc<dyn WritableStore> =
        Arc::new(LocalStore::create(dir.path().join("store")).unwrap());
    let inputs = PackInputs {
        memfile,
        rootfs,
        snapfile: None,
        metadata: None,
        prefetch_memfile: None,
        prefetch_rootfs: None,
    };
    (dir, store, inputs)
}

#[test]
fn frame_size_over_the_mount_limit_is_refused_before_anything_is_written() {
    let (dir, store, inputs) = setup(8);
    let opts = PackOptions {
        frame_size: 128 << 20,
        work_dir: Some(dir.path().to_path_buf()),
        ..PackOptions::default()
    };
    let err = pack_build(store.clone(), &opts, &inputs).unwrap_err();
    assert!(matches!(err, PackError::BadOption(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("--frame-size 134217728 bytes")
            && message.contains("largest frame a mount serves (64 MiB)"),
        "{message}"
    );
    assert_eq!(store.list_builds().unwrap(), Vec::<Uuid>::new());
    assert_eq!(fs::read_dir(dir.path().join("store")).unwrap().count(), 0);
}

#[test]
fn frame_size_at_the_mount_limit_packs() {
    let (dir, store, inputs) = setup(8);
    let opts = PackOptions {
        frame_size: u64::from(MAX_FRAME_SIZE),
        work_dir: Some(dir.path().to_path_buf()),
        ..PackOptions::default()
    };
    let report = pack_build(store.clone(), &opts, &inputs).unwrap();
    assert_eq!(store.list_builds().unwrap(), vec![report.build_id]);
}

#[test]
fn frame_sizes_off_the_block_grid_are_refused_before_anything_is_written() {
    let (dir, store, inputs) = setup(8);
    for (frame_size, memfile_block_size) in [(6000, None), (1 << 20, Some(2 << 20))] {
        let opts = PackOptions {
            frame_size,
            memfile_block_size,
            work_dir: Some(dir.path().to_path_buf()),
            ..PackOptions::default()
        };
        let err = pack_build(store.clone(), &opts, &inputs).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, PackError::BadOption(_))
                && message.contains("validateCompressConfig")
                && message.contains(&format!("--frame-size {frame_size} bytes"))
                && message.contains("block size 2097152 bytes"),
            "{message}"
        );
        assert_eq!(fs::read_dir(dir.path().join("store")).unwrap().count(), 0);
    }
}

#[test]
fn a_trace_is_not_merged_into_metadata_e2b_reads_as_empty() {
    let (dir, store, mut inputs) = setup(8);
    let trace = dir.path().join("memfile.prefetch.json");
    fs::write(&trace, br#"{"indices": [1, 0], "block_size": 4096}"#).unwrap();
    inputs.prefetch_memfile = Some(trace);
    let metadata = dir.path().join("metadata.json");
    inputs.metadata = Some(metadata.clone());
    let opts = PackOptions {
        memfile_block_size: Some(PAGE_SIZE),
        work_dir: Some(dir.path().to_path_buf()),
        ..PackOptions::default()
    };
    fs::write(&metadata, br#"{"version": 1, "template": {}}"#).unwrap();
    let err = pack_build(store.clone(), &opts, &inputs).unwrap_err();
    assert!(
        matches!(err, PackError::BadInput(_)) && err.to_string().contains("version is 1"),
        "{err}"
    );
    assert_eq!(store.list_builds().unwrap(), Vec::<Uuid>::new());
    fs::write(&metadata, br#"{"version": 2, "template": {}}"#).unwrap();
    let report = pack_build(store.clone(), &opts, &inputs).unwrap();
    let stored = store
        .read_all(&ObjectKey::blob(report.build_id, Blob::Metadata), 1 << 20)
        .unwrap();
    let parsed = crate::format::trace::parse_metadata(&stored, FileKind::Memfile).unwrap();
    assert_eq!(parsed.unwrap().trace.indices, vec![1, 0]);
}
