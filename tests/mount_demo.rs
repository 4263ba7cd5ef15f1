//! Demo stores written by `tdfs pack` (a real ext4 rootfs and a guest-like
//! memory image, base + two layers) for each codec and header version, read
//! through a mount: every template file matches the library's own read path
//! byte for byte, every rootfs passes `e2fsck -fn`, and the top build's rootfs
//! loop-mounts read-only with the files each layer put there.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::digest::{sha256_of_file, sha256_of_template};
use common::mount::{LazyUnmount, MountGuard, fuse_available};
use common::process::{run_ok, within};
use tdfs::format::{Compression, FileKind};
use tdfs::pack::demo::make_demo_store;
use tdfs::store::LocalStore;
use tdfs::template::{Builds, TemplateConfig};

#[test]
fn demo_uncompressed_v3() {
    check_demo(Compression::None, 3);
}

#[test]
fn demo_zstd_v4() {
    check_demo(Compression::Zstd, 4);
}

#[test]
fn demo_lz4_v5() {
    check_demo(Compression::Lz4, 5);
}

fn check_demo(compression: Compression, version: u16) {
    if !fuse_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let demo = make_demo_store(&store, compression, version, false).expect("demo store");
    let mount = MountGuard::start(&store, &[]);

    let library = Builds::new(
        Arc::new(LocalStore::open(&store).unwrap()),
        TemplateConfig::for_tool(work.path().join("library-cache")),
    );
    for build in demo.builds {
        for kind in FileKind::ALL {
            let mounted = mount.join(format!("{build}/{kind}"));
            let what = format!("{compression:?}/v{version} {build}/{kind}");
            let via_mount = within(300, &format!("hashing mounted {what}"), {
                let mounted = mounted.clone();
                move || sha256_of_file(&mounted).expect("read mounted file")
            });
            let via_library = sha256_of_template(&library, build, kind);
            assert_eq!(via_mount, via_library, "{what}: mount and library differ");
        }
        let rootfs = mount.join(format!("{build}/rootfs.ext4"));
        run_ok("e2fsck", ["-fn".as_ref(), rootfs.as_os_str()]);
    }
    check_loop_mount(
        &mount.join(format!("{}/rootfs.ext4", demo.builds[2])),
        work.path(),
    );
}

/// What the demo put in the top build's rootfs: the base tree, changed by
/// layer 1 and 2 (new /opt/appN, rewritten boot.log, removed toolN and
/// noteNN).
fn check_loop_mount(rootfs: &Path, work: &Path) {
    let dir = work.join("loop");
    std::fs::create_dir(&dir).unwrap();
    run_ok(
        "mount",
        [
            "-o".as_ref(),
            "loop,ro".as_ref(),
            rootfs.as_os_str(),
            dir.as_os_str(),
        ],
    );
    let _unmount = LazyUnmount(dir.clone());
    assert_eq!(
        std::fs::read(dir.join("etc/hostname")).unwrap(),
        b"tdfs-demo\n"
    );
    for layer in [1, 2] {
        let app = dir.join(format!("opt/app{layer}/app.bin"));
        assert_eq!(std::fs::metadata(&app).unwrap().len(), 160 << 10, "{app:?}");
        assert!(dir.join(format!("opt/app{layer}/app.py")).is_file());
        assert!(!dir.join(format!("usr/bin/tool{layer}")).exists());
        assert!(
            !dir.join(format!("home/user/notes/note{layer:02}.txt"))
                .exists()
        );
    }
    assert!(dir.join("usr/bin/tool0").is_file());
    // Every file reads back without an I/O error.
    let sums = run_ok(
        "find",
        [
            dir.as_os_str(),
            "-type".as_ref(),
            "f".as_ref(),
            "-exec".as_ref(),
            "sha256sum".as_ref(),
            "{}".as_ref(),
            "+".as_ref(),
        ],
    );
    assert!(sums.lines().count() > 20, "{sums}");
}
