//! Issue 5 end to end against a real S3 server (Garage on loopback): `tdfs
//! pack` writes a base and a layer to the bucket, `inspect`/`verify`/`export`
//! read them there, a mount serves every file byte for byte, and a server
//! stopped mid-read gives EIO in bounded time, then recovers after restart
//! without remounting.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::garage::Garage;
use common::mount::{MountGuard, fuse_available};
use common::process::{TDFS, within};
use common::rng::Rng;

/// Deterministic pseudo-random pages mixed with zero and repeated pages.
fn image(pages: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = vec![0u8; pages * 4096];
    for (i, page) in out.chunks_mut(4096).enumerate() {
        match i % 5 {
            0 => {}
            1 => page.fill((i % 251) as u8),
            _ => rng.fill(page),
        }
    }
    out
}

fn tdfs(garage: &Garage, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["-k", "5", "120", TDFS])
        .args(args)
        .envs(garage.env())
        .output()
        .expect("run tdfs");
    assert!(
        out.status.success(),
        "tdfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn pack(garage: &Garage, dir: &Path, base: Option<&str>, mem: &[u8], root: &[u8]) -> String {
    let (m, r) = (dir.join("mem.img"), dir.join("root.img"));
    std::fs::write(&m, mem).unwrap();
    std::fs::write(&r, root).unwrap();
    let (m, r) = (m.to_str().unwrap(), r.to_str().unwrap());
    let mut args = vec![
        "pack",
        "--store",
        "s3://tdfs/e2e",
        "--memfile",
        m,
        "--rootfs",
        r,
    ];
    if let Some(base) = base {
        args.extend(["--base", base]);
    }
    let out = tdfs(garage, &args);
    out.lines()
        .last()
        .expect("pack prints the build id")
        .trim()
        .to_string()
}

/// `dd` one 4 KiB page of `path`, bounded by timeout(1).
fn read_page(path: &Path, page: u64) -> std::process::Output {
    Command::new("timeout")
        .args(["-k", "5", "150", "dd", "bs=4096", "count=1", "status=none"])
        .arg(format!("skip={page}"))
        .arg(format!("if={}", path.display()))
        .output()
        .unwrap()
}

#[test]
fn pack_to_s3_mount_from_it_and_survive_a_server_outage() {
    if !fuse_available() {
        return;
    }
    let Some(mut garage) = Garage::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let base_mem = image(2048, 1);
    let base_root = image(1024, 2);
    let base = pack(&garage, work.path(), None, &base_mem, &base_root);
    let mut layer_mem = base_mem.clone();
    layer_mem[4096 * 700..4096 * 900].fill(0x5A);
    let mut layer_root = base_root.clone();
    layer_root[4096 * 10..4096 * 12].fill(0);
    let layer = pack(&garage, work.path(), Some(&base), &layer_mem, &layer_root);

    let inspect = tdfs(
        &garage,
        &["inspect", "--store", "s3://tdfs/e2e", &layer, "--json"],
    );
    assert!(
        inspect.contains(&base),
        "the layer references its base: {inspect}"
    );
    tdfs(&garage, &["verify", "--store", "s3://tdfs/e2e", &layer]);
    let exported = work.path().join("exported");
    let out = exported.to_str().unwrap();
    tdfs(
        &garage,
        &[
            "export",
            "--store",
            "s3://tdfs/e2e",
            &layer,
            "memfile",
            "-o",
            out,
        ],
    );
    assert!(
        std::fs::read(&exported).unwrap() == layer_mem,
        "export from S3"
    );

    let mount = MountGuard::options("s3://tdfs/e2e")
        .env(&garage.env())
        .start();
    let listing: Vec<String> = std::fs::read_dir(mount.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        listing.contains(&base) && listing.contains(&layer),
        "{listing:?}"
    );
    for (build, mem, root) in [
        (&base, &base_mem, &base_root),
        (&layer, &layer_mem, &layer_root),
    ] {
        let path = mount.join(build);
        let (m, r) = within(120, "reading the builds from S3", move || {
            (
                std::fs::read(path.join("memfile")).unwrap(),
                std::fs::read(path.join("rootfs.ext4")).unwrap(),
            )
        });
        assert!(&m == mem, "{build}/memfile differs from the packed image");
        assert!(
            &r == root,
            "{build}/rootfs.ext4 differs from the packed image"
        );
    }
    assert!(!mount.join("00000000-0000-4000-8000-000000000000").exists());

    // The server goes away: a cold read fails with EIO within the store's
    // request timeout (plus retries), and nothing wrong is served.
    // A second mount starts cold (the first one has everything cached).
    drop(mount);
    let mount = MountGuard::options("s3://tdfs/e2e")
        .env(&garage.env())
        .start();
    garage.stop();
    let path = mount.join(&base).join("memfile");
    let t = Instant::now();
    let failed = read_page(&path, 3);
    assert!(
        !failed.status.success(),
        "a read with the server down must fail"
    );
    assert_ne!(
        failed.status.code(),
        Some(124),
        "the read hung until timeout(1)"
    );
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("Input/output error"), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(140));

    garage.restart();
    let ok = read_page(&path, 3);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        ok.stdout == base_mem[3 * 4096..4 * 4096],
        "recovered read returns the right page"
    );
}
