//! FUSE passthrough of wholly cached template files (issue 15): once a
//! memfile has been read whole, tdfs writes its flat copy, and later opens
//! are answered in passthrough mode: read() and mmap give the packed bytes
//! without a read reaching tdfs. An open made before (a normal one) keeps
//! the file out of passthrough until it is closed, as the kernel demands.
//! A daemon without CAP_SYS_ADMIN (mounted by an unprivileged user) turns
//! passthrough off, says so once, and serves the same bytes.

mod common;

use std::fs::{self, File};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use common::mount::{MountGuard, fuse_available};
use common::process::{run_ok, tdfs_pack, wait_until};
use common::rng::Rng;

const BUILD: &str = "15151515-3333-4444-8555-666666666601";
const SIZE: usize = 24 << 20;
/// The user an unprivileged mount runs as (nobody).
const NOBODY: u32 = 65534;

/// A zstd build whose memfile has zero blocks among random ones (so its
/// header has holes); returns the memfile's bytes.
fn make_store(root: &Path, scratch: &Path) -> Vec<u8> {
    let mut image = vec![0u8; SIZE];
    let mut rng = Rng(0x0015_0003);
    rng.fill(&mut image[4 << 20..12 << 20]);
    rng.fill(&mut image[16 << 20..]);
    let memfile = scratch.join("memfile");
    let rootfs = scratch.join("rootfs");
    fs::write(&memfile, &image).unwrap();
    fs::write(&rootfs, vec![0u8; 1 << 20]).unwrap();
    tdfs_pack(root, BUILD, &memfile, &rootfs, &["--compress", "zstd"]);
    image
}

/// `user.tdfs.passthrough` of `path`, read by `getfattr` run as `user`.
fn passthrough(path: &Path, user: Option<u32>) -> String {
    let getfattr = [
        "getfattr",
        "--only-values",
        "-n",
        "user.tdfs.passthrough",
        path.to_str().unwrap(),
    ];
    match user {
        None => run_ok(getfattr[0], &getfattr[1..]),
        Some(id) => run_ok("setpriv", as_user(id, &getfattr)),
    }
}

/// setpriv arguments that run `command` as user and group `id`.
fn as_user(id: u32, command: &[&str]) -> Vec<String> {
    let mut args = vec![
        format!("--reuid={id}"),
        format!("--regid={id}"),
        "--clear-groups".to_string(),
    ];
    args.extend(command.iter().map(|s| s.to_string()));
    args
}

/// Poll `path`'s passthrough state until it contains `want` (30 s at most).
fn wait_for(path: &Path, want: &str) -> String {
    wait_until(Duration::from_secs(30), want, || {
        let state = passthrough(path, None);
        match state.contains(want) {
            true => Ok(state),
            false => Err(state),
        }
    })
}

fn read_all(mut file: &File) -> Vec<u8> {
    let mut out = Vec::new();
    file.read_to_end(&mut out).unwrap();
    out
}

/// The first `len` bytes of `file` through a shared read-only mapping, as
/// Firecracker maps a memfile: each page is a page fault.
fn mmap_bytes(file: &File, len: usize) -> Vec<u8> {
    // SAFETY: a fresh read-only mapping of an open file, unmapped below;
    // nothing else maps it in this process.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let bytes = std::slice::from_raw_parts(p as *const u8, len).to_vec();
        libc::munmap(p, len);
        bytes
    }
}

#[test]
fn a_wholly_cached_memfile_is_read_through_passthrough() {
    if !fuse_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let store = scratch.path().join("store");
    let image = make_store(&store, scratch.path());
    let mount = MountGuard::start(&store, &["--passthrough", "on"]);
    let memfile = mount.join(BUILD).join("memfile");

    // Opened before the file is cached: a normal open.
    let early = File::open(&memfile).unwrap();
    assert_eq!(fs::read(&memfile).unwrap(), image, "cold read");
    // Closing the reader that cached it all starts the flat copy.
    wait_for(&memfile, "ready");
    // While the normal open lives, a new open is normal too.
    let second = File::open(&memfile).unwrap();
    let state = passthrough(&memfile, None);
    assert!(
        state.contains("0 passthrough and 2 normal opens now"),
        "{state}"
    );
    assert_eq!(read_all(&second), image);
    assert_eq!(mmap_bytes(&early, SIZE), image);
    drop(early);
    drop(second);
    // RELEASE reaches tdfs after close returns.
    wait_for(&memfile, "0 passthrough and 0 normal opens now");

    // Now every open is passthrough, the two sharing one backing file.
    let reads = mount.stat("tdfs_reads_total");
    let a = File::open(&memfile).unwrap();
    let b = File::open(&memfile).unwrap();
    let state = passthrough(&memfile, None);
    assert!(
        state.contains("2 passthrough and 0 normal opens now"),
        "{state}"
    );
    assert_eq!(read_all(&a), image, "read() of a passthrough open");
    assert_eq!(mmap_bytes(&b, SIZE), image, "mmap of a passthrough open");
    assert_eq!(
        mount.stat("tdfs_reads_total"),
        reads,
        "passthrough reads never reach tdfs"
    );
    drop(a);
    drop(b);
    wait_for(&memfile, "0 passthrough and 0 normal opens now");
    // The backing file was given up with the last passthrough open; a new
    // one serves the next open.
    let c = File::open(&memfile).unwrap();
    assert_eq!(read_all(&c), image);
    let state = passthrough(&memfile, None);
    assert!(
        state.contains("3 passthrough opens in this mount"),
        "{state}"
    );
}

#[test]
fn without_cap_sys_admin_passthrough_is_off_and_reads_are_unchanged() {
    if !fuse_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let store = scratch.path().join("store");
    make_store(&store, scratch.path());
    let oracle = scratch.path().join("memfile");
    let owner = format!("{NOBODY}:{NOBODY}");
    run_ok("chown", ["-R", &owner, scratch.path().to_str().unwrap()]);
    let mount = MountGuard::options(&store)
        .args(&["--passthrough", "on"])
        .user(NOBODY)
        .start();
    let memfile = mount.join(BUILD).join("memfile");
    let memfile_str = memfile.to_str().unwrap();
    let oracle_str = oracle.to_str().unwrap();
    for _ in 0..3 {
        run_ok(
            "setpriv",
            as_user(NOBODY, &["cmp", memfile_str, oracle_str]),
        );
    }
    assert_eq!(passthrough(&memfile, Some(NOBODY)), "off");
    let log = mount.log();
    assert_eq!(
        log.matches("FUSE passthrough is off").count(),
        1,
        "logged once:\n{log}"
    );
    assert!(log.contains("CAP_SYS_ADMIN"), "says why:\n{log}");
}
