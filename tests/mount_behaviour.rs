//! What users and tools see of a mount besides file content: `ls -l`,
//! `stat`, `getfattr`, `.stats`, read-only errors, isolation of broken
//! builds, and the mount's lifecycle (daemon, signals, stale mounts,
//! refused mountpoints, the mount.tdfs helper).

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::digest::sha256_hex;
use common::fixtures::{fixture_store, manifest_build};
use common::mount::{LazyUnmount, MountGuard, fuse_available, is_mounted};
use common::process::{TDFS, run, run_ok, wait_until, within};

/// A build of the v4-zstd fixture: generation 1 on top of its base.
const V4_LAYER: &str = "bd87702b-8d31-4e8d-beda-66b642c931a9";

fn os_error<T: std::fmt::Debug>(result: std::io::Result<T>) -> i32 {
    result
        .expect_err("expected an error")
        .raw_os_error()
        .expect("an OS error")
}

#[test]
fn ls_stat_getfattr_and_stats_show_the_build() {
    if !fuse_available() {
        return;
    }
    let store = fixture_store("v4-zstd");
    let build = manifest_build(&store, V4_LAYER);
    let mount = MountGuard::start(&store, &["--uid", "1234", "--gid", "4321"]);
    let dir = mount.join(V4_LAYER);
    let memfile = dir.join("memfile");

    let ls = run_ok("ls", ["-l", dir.to_str().unwrap()]);
    for name in ["memfile", "rootfs.ext4", "snapfile", "metadata.json"] {
        let line = ls
            .lines()
            .find(|l| l.ends_with(&format!(" {name}")))
            .unwrap_or_else(|| panic!("{name} missing from ls -l:\n{ls}"));
        assert!(line.starts_with("-r--r--r-- 1 1234 4321 "), "{line}");
    }
    let size = build["files"]["memfile"]["size"].as_u64().unwrap();
    let block_size = build["files"]["memfile"]["block_size"].as_u64().unwrap();
    let stat = run_ok(
        "stat",
        ["-c", "%s %o %a %u %g %F", memfile.to_str().unwrap()],
    );
    assert_eq!(
        stat.trim(),
        format!("{size} {block_size} 444 1234 4321 regular file")
    );
    let stat = run_ok("stat", ["-c", "%a %F", dir.to_str().unwrap()]);
    assert_eq!(stat.trim(), "555 directory");
    let stat = run_ok("stat", ["-c", "%a %F", mount.path().to_str().unwrap()]);
    assert_eq!(stat.trim(), "555 directory");
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&memfile), ino(&memfile), "inodes are stable");
    assert_ne!(ino(&memfile), ino(&dir.join("rootfs.ext4")));

    // Read something so the counters move.
    let data = within(60, "reading memfile", {
        let memfile = memfile.clone();
        move || std::fs::read(memfile).unwrap()
    });
    assert_eq!(data.len() as u64, size);

    let attrs = run_ok("getfattr", ["-d", memfile.to_str().unwrap()]);
    for expected in [
        format!("user.tdfs.build_id=\"{V4_LAYER}\""),
        format!(
            "user.tdfs.base_build_id=\"{}\"",
            build["base_build_id"].as_str().unwrap()
        ),
        format!("user.tdfs.generation=\"{}\"", build["generation"]),
        format!("user.tdfs.block_size=\"{block_size}\""),
        "user.tdfs.compression=\"zstd\"".to_string(),
        "user.tdfs.header_version=\"4\"".to_string(),
        "user.tdfs.cached_bytes=\"".to_string(),
    ] {
        assert!(
            attrs.contains(&expected),
            "{expected} missing from:\n{attrs}"
        );
    }
    let cached: u64 = run_ok(
        "getfattr",
        [
            "--only-values",
            "-n",
            "user.tdfs.cached_bytes",
            memfile.to_str().unwrap(),
        ],
    )
    .trim()
    .parse()
    .expect("cached_bytes is a number");
    assert!(cached > 0, "a fully read file has cached bytes");

    // The size-probe protocol, straight through the syscalls.
    within(30, "xattr syscalls", move || {
        let path = CString::new(memfile.as_os_str().as_bytes()).unwrap();
        let name = CString::new("user.tdfs.build_id").unwrap();
        // SAFETY: valid C strings; null buffer with size 0 is the probe.
        let len = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        assert_eq!(len, 36, "size probe of build_id");
        let mut small = [0u8; 8];
        // SAFETY: the buffer is 8 bytes long as passed.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                small.as_mut_ptr().cast(),
                small.len(),
            )
        };
        assert_eq!(n, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ERANGE)
        );
        // SAFETY: as above.
        let list_len = unsafe { libc::listxattr(path.as_ptr(), std::ptr::null_mut(), 0) };
        assert!(list_len > 0);
        let mut list = vec![0u8; list_len as usize];
        // SAFETY: the buffer has list_len bytes.
        let n = unsafe { libc::listxattr(path.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
        assert_eq!(n, list_len);
        let names: Vec<&[u8]> = list.split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
        assert!(names.contains(&&b"user.tdfs.compression"[..]));
        let missing = CString::new("user.tdfs.nope").unwrap();
        // SAFETY: as above.
        let n = unsafe { libc::getxattr(path.as_ptr(), missing.as_ptr(), std::ptr::null_mut(), 0) };
        assert_eq!(n, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENODATA)
        );
    });

    let stats = run_ok("cat", [mount.join(".stats").to_str().unwrap()]);
    let reads: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("tdfs_reads_total "))
        .unwrap_or_else(|| panic!("no tdfs_reads_total in .stats:\n{stats}"))
        .parse()
        .unwrap();
    assert!(reads > 0, ".stats counts the reads:\n{stats}");
    assert!(
        stats.contains("tdfs_read_latency_seconds_bucket"),
        "{stats}"
    );
}

#[test]
fn everything_is_read_only() {
    if !fuse_available() {
        return;
    }
    let mount = MountGuard::start(fixture_store("v4-lz4"), &[]);
    let build = std::fs::read_dir(mount.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !p.ends_with(".stats"))
        .expect("a build");
    let memfile = build.join("memfile");
    within(60, "write attempts", move || {
        let write = std::fs::OpenOptions::new().write(true).open(&memfile);
        assert_eq!(os_error(write), libc::EROFS, "open for writing");
        assert_eq!(
            os_error(std::fs::File::create(build.join("new"))),
            libc::EROFS
        );
        assert_eq!(os_error(std::fs::create_dir(build.join("d"))), libc::EROFS);
        assert_eq!(os_error(std::fs::remove_file(&memfile)), libc::EROFS);
        assert_eq!(
            os_error(std::fs::rename(&memfile, build.join("m2"))),
            libc::EROFS
        );
        let perms = std::fs::Permissions::from_mode(0o644);
        assert_eq!(
            os_error(std::fs::set_permissions(&memfile, perms)),
            libc::EROFS
        );
        let path = CString::new(memfile.as_os_str().as_bytes()).unwrap();
        let name = CString::new("user.tdfs.mine").unwrap();
        // SAFETY: valid C strings and a 1-byte value.
        let rc =
            unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"x".as_ptr().cast(), 1, 0) };
        assert_eq!(rc, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EROFS)
        );
    });
}

#[test]
fn broken_and_missing_builds_affect_only_themselves() {
    if !fuse_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    run_ok(
        "cp",
        [
            "-a",
            fixture_store("v4-zstd").to_str().unwrap(),
            store.to_str().unwrap(),
        ],
    );
    // A build whose headers are garbage, with an intact snapfile.
    let corrupt = "0badc0de-0000-4000-8000-000000000001";
    std::fs::create_dir(store.join(corrupt)).unwrap();
    std::fs::write(store.join(corrupt).join("memfile.header"), [0xffu8; 200]).unwrap();
    std::fs::write(store.join(corrupt).join("rootfs.ext4.header"), b"short").unwrap();
    std::fs::write(store.join(corrupt).join("snapfile"), b"snapshot state").unwrap();

    let mount = MountGuard::start(&store, &[]);
    let corrupt_dir = mount.join(corrupt);
    let good = mount.join(V4_LAYER).join("rootfs.ext4");
    let expected_sha = manifest_build(&store, V4_LAYER)["files"]["rootfs.ext4"]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let missing = mount.join("6f0e0000-0000-4000-8000-00000000beef");
    let not_a_build = mount.join("not-a-build");
    let log_has = {
        let corrupt_dir = corrupt_dir.clone();
        within(60, "broken build checks", move || {
            let mut names: Vec<String> = std::fs::read_dir(&corrupt_dir)
                .expect("the broken build's directory lists")
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(names, ["diff", "memfile", "rootfs.ext4", "snapfile"]);
            assert_eq!(
                os_error(std::fs::metadata(corrupt_dir.join("memfile"))),
                libc::EIO
            );
            assert_eq!(
                os_error(std::fs::read(corrupt_dir.join("rootfs.ext4"))),
                libc::EIO
            );
            assert_eq!(
                std::fs::read(corrupt_dir.join("snapfile")).unwrap(),
                b"snapshot state"
            );
            assert_eq!(os_error(std::fs::metadata(&missing)), libc::ENOENT);
            assert_eq!(os_error(std::fs::metadata(&not_a_build)), libc::ENOENT);
            let bytes = std::fs::read(&good).expect("a good build still reads");
            assert_eq!(sha256_hex(&bytes), expected_sha);
        });
        mount.log()
    };
    assert!(
        log_has.contains(&format!("{corrupt}/memfile")),
        "the log names the broken object:\n{log_has}"
    );
    // The mount survived all of it.
    assert!(is_mounted(mount.path()));
}

#[test]
fn mountpoint_problems_are_refused_clearly() {
    if !fuse_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let store = fixture_store("v3-none");
    let non_empty = work.path().join("full");
    std::fs::create_dir(&non_empty).unwrap();
    std::fs::write(non_empty.join("keep"), b"x").unwrap();
    let cases: [(PathBuf, &str); 3] = [
        (non_empty, "not empty"),
        (work.path().join("missing"), "does not exist"),
        (non_empty_file(work.path()), "not a directory"),
    ];
    for (mountpoint, reason) in cases {
        let out = run(
            TDFS,
            [
                "mount".as_ref(),
                "--foreground".as_ref(),
                store.as_os_str(),
                mountpoint.as_os_str(),
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{}: mounted anyway",
            mountpoint.display()
        );
        assert!(stderr.contains(reason), "{reason} not in: {stderr}");
        assert!(!is_mounted(&mountpoint));
    }
}

fn non_empty_file(dir: &Path) -> PathBuf {
    let file = dir.join("file");
    std::fs::write(&file, b"x").unwrap();
    file
}

#[test]
fn sigterm_unmounts_and_exits_zero() {
    if !fuse_available() {
        return;
    }
    let mut mount = MountGuard::start(fixture_store("v3-none"), &[]);
    let status = mount.signal_and_wait(libc::SIGTERM).expect("was running");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(!is_mounted(mount.path()), "still mounted after SIGTERM");
    assert!(mount.log().contains("SIGTERM"), "{}", mount.log());
}

#[test]
fn a_crashed_mount_is_cleared_by_the_next_one() {
    if !fuse_available() {
        return;
    }
    let store = fixture_store("v5-zstd-dedup");
    let crashed = MountGuard::start(&store, &[]).crash();
    let statfs = run("stat", ["-f".as_ref(), crashed.mountpoint.as_os_str()]);
    assert!(
        String::from_utf8_lossy(&statfs.stderr).contains("not connected"),
        "a killed daemon leaves a dead mount: {statfs:?}"
    );
    let mount = MountGuard::options(&store).over(crashed).start();
    let entries = within(30, "listing the new mount", {
        let root = mount.path().to_path_buf();
        move || std::fs::read_dir(root).unwrap().count()
    });
    assert_eq!(entries, 4, "three builds and .stats");
    assert!(mount.log().contains("stale"), "{}", mount.log());
}

#[test]
fn daemon_returns_once_mounted_and_reports_startup_errors() {
    if !fuse_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mountpoint = work.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let log = work.path().join("daemon.log");
    let _unmount = LazyUnmount(mountpoint.clone());
    let args = |store: &Path| {
        vec![
            "mount".into(),
            "--cache-dir".into(),
            work.path().join("cache").into_os_string(),
            "--log-file".into(),
            log.clone().into_os_string(),
            store.as_os_str().to_owned(),
            mountpoint.as_os_str().to_owned(),
        ]
    };

    let out = run(TDFS, args(Path::new("/nonexistent/tdfs-store")));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/tdfs-store"), "{stderr}");
    assert!(!is_mounted(&mountpoint));

    let out = run(TDFS, args(&fixture_store("v4-lz4")));
    assert!(
        out.status.success(),
        "daemon start failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&mountpoint), "mounted when `tdfs mount` returns");
    let listed = within(30, "listing the daemon's mount", {
        let m = mountpoint.clone();
        move || std::fs::read_dir(m).unwrap().count()
    });
    assert_eq!(listed, 4);
    run_ok("umount", [&mountpoint]);
    wait_until(
        Duration::from_secs(20),
        "the daemon noticing the unmount",
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("was unmounted")
        },
    );
}

#[test]
fn mount_helper_turns_options_into_flags() {
    if !fuse_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mountpoint = work.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let _unmount = LazyUnmount(mountpoint.clone());
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/mount.tdfs");
    let options = format!(
        "defaults,nofail,uid=2001,gid=2002,threads=4,cache_dir={},log_file={}",
        work.path().join("cache").display(),
        work.path().join("helper.log").display()
    );
    let out = std::process::Command::new("timeout")
        .args(["-k", "5", "60", "sh"])
        .arg(&helper)
        .arg(fixture_store("v3-none"))
        .arg(&mountpoint)
        .args(["-o", &options])
        .env("TDFS_BIN", TDFS)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount.tdfs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&mountpoint));
    let stat = run_ok("stat", ["-c", "%u %g", mountpoint.to_str().unwrap()]);
    assert_eq!(stat.trim(), "2001 2002");

    let out = std::process::Command::new("sh")
        .arg(&helper)
        .arg("/srv/x")
        .arg(work.path())
        .args(["-o", "bogus_option"])
        .env("TDFS_BIN", "/bin/false")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus_option"));
}

#[test]
fn other_users_get_in_only_with_allow_other() {
    if !fuse_available() {
        return;
    }
    let store = fixture_store("v3-none");
    let as_nobody = |mount: &MountGuard| {
        run(
            "setpriv",
            [
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "ls",
                mount.path().to_str().unwrap(),
            ],
        )
    };
    let private = MountGuard::start(&store, &[]);
    let out = as_nobody(&private);
    assert!(!out.status.success(), "another user read a private mount");
    drop(private);
    let shared = MountGuard::start(&store, &["--allow-other"]);
    let out = as_nobody(&shared);
    assert!(
        out.status.success(),
        "allow_other: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
}
