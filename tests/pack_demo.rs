//! The demo store: three builds whose rootfs is a real ext4 in every layer
//! (checked with `e2fsck -fn` on an exported copy) and whose layers store
//! only what changed.

mod common;

use common::pack::local_store;
use common::process::{require_tool, tdfs_ok};
use tdfs::format::{Compression, FileKind};
use tdfs::pack::demo::{DEMO_MEMFILE_SIZE, DEMO_ROOTFS_SIZE, make_demo_store};

#[test]
fn demo_store_has_three_sound_builds_with_real_ext4() {
    require_tool("mkfs.ext4");
    require_tool("e2fsck");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let demo = make_demo_store(&store, Compression::Zstd, 4, false).unwrap();
    let ids: Vec<String> = demo.builds.iter().map(|b| b.to_string()).collect();
    let listed = local_store(&store).list_builds().unwrap();
    assert_eq!(listed.len(), 3);
    for b in &demo.builds {
        assert!(listed.contains(b));
    }

    for (layer, id) in ids.iter().enumerate() {
        tdfs_ok(&["verify", "--store", store.to_str().unwrap(), id]);
        let json: serde_json::Value = serde_json::from_str(&tdfs_ok(&[
            "inspect",
            "--store",
            store.to_str().unwrap(),
            id,
            "--json",
        ]))
        .unwrap();
        let mem = &json["files"][0];
        assert_eq!(mem["size"], DEMO_MEMFILE_SIZE);
        assert_eq!(mem["generation"], layer as u64);
        assert_eq!(mem["base_build_id"], ids[0]);
        assert_eq!(json["files"][1]["size"], DEMO_ROOTFS_SIZE);
        let zero = mem["mappings"]["zero_bytes"].as_u64().unwrap();
        assert!(
            zero > DEMO_MEMFILE_SIZE / 4,
            "a guest's memory is largely free"
        );
        if layer > 0 {
            // A layer stores a small part of the image and keeps the rest.
            let own = mem["mappings"]["by_build"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["build_id"] == *id)
                .map(|s| s["bytes"].as_u64().unwrap())
                .unwrap_or(0);
            assert!(own > 0 && own < DEMO_MEMFILE_SIZE / 4, "{own}");
        }

        let image = dir.path().join(format!("rootfs-{layer}.ext4"));
        tdfs_ok(&[
            "export",
            "--store",
            store.to_str().unwrap(),
            id,
            FileKind::Rootfs.name(),
            "-o",
            image.to_str().unwrap(),
        ]);
        let fsck = std::process::Command::new("e2fsck")
            .arg("-fn")
            .arg(&image)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "layer {layer}: e2fsck -fn failed:\n{}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
        let listing = std::process::Command::new("debugfs")
            .args(["-R", "ls -p /opt"])
            .arg(&image)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        assert_eq!(listing.contains("app1"), layer >= 1, "{listing}");
        assert_eq!(listing.contains("app2"), layer >= 2, "{listing}");
    }
}
