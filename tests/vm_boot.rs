//! A real VM boots from a tdfs mount: runs contrib/vm/boot-from-tdfs.sh
//! (QEMU under TCG with the layer's rootfs.ext4 on the mount as its root
//! disk, lazy-read check in .stats, the memfile mapped as Firecracker maps
//! it) and asserts it exits 0 within a bound. Whatever happens, the script's
//! process group is stopped and any mount it left is lazily unmounted.
//!
//! Needs root, /dev/fuse, and `apt-get install -y qemu-system-x86
//! linux-image-amd64 busybox-static` (.ci/run installs them); fails loudly
//! without them unless TDFS_SKIP_VM=1.

mod common;

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::mount::{fuse_available, unmount_lazily};
use common::process::{TDFS, wait_until};
use common::tools::tool_available;

/// Bound on the whole script: building, packing, two boots, the memfile
/// check. A boot takes 10–20 s under TCG.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(420);
/// Bound on one boot, passed to the script.
const BOOT_TIMEOUT_SECS: u32 = 150;
/// How long the script gets to clean up after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(20);
const APT_LINE: &str = "apt-get install -y qemu-system-x86 linux-image-amd64 busybox-static";

/// True when the VM test can run; see `tools::tool_available` (the switch
/// is TDFS_SKIP_VM).
fn vm_tools_available() -> bool {
    let kernel = std::fs::read_dir("/boot")
        .map(|dir| {
            dir.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
        })
        .unwrap_or(false);
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let busybox = Path::new("/bin/busybox").exists();
    let missing: Vec<&str> = [
        (qemu, "qemu-system-x86_64"),
        (kernel, "a kernel in /boot"),
        (busybox, "/bin/busybox"),
    ]
    .into_iter()
    .filter(|(present, _)| !present)
    .map(|(_, what)| what)
    .collect();
    tool_available(
        missing.is_empty(),
        "TDFS_SKIP_VM",
        &missing.join(", "),
        &format!("the VM boot test needs it: {APT_LINE}"),
    )
}

/// The memfile checker example, built by `cargo test` beside the binaries.
fn memfile_checker() -> PathBuf {
    let path = Path::new(TDFS)
        .parent()
        .expect("the tdfs binary has a directory")
        .join("examples/vm_memfile_check");
    assert!(
        path.exists(),
        "{} is missing: it is built by a plain `cargo test`; after `cargo test --test vm_boot` \
         build it with `cargo build --example vm_memfile_check` (add --release to match)",
        path.display()
    );
    path
}

/// The running script, in its own process group. On drop the group is
/// stopped (TERM, then KILL) and any mount left under the work directory is
/// lazily unmounted, before the work directory goes.
struct BootScript {
    child: Child,
    work: tempfile::TempDir,
    log: PathBuf,
}

impl BootScript {
    fn start() -> BootScript {
        let work = tempfile::tempdir().unwrap();
        let log = work.path().join("boot-from-tdfs.log");
        let output = File::create(&log).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/vm/boot-from-tdfs.sh");
        let child = Command::new("bash")
            .arg(&script)
            .arg(work.path())
            .env("TDFS", TDFS)
            .env("TDFS_VM_MEMFILE_CHECK", memfile_checker())
            .env("TDFS_VM_BOOT_TIMEOUT", BOOT_TIMEOUT_SECS.to_string())
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        BootScript { child, work, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, or None when the script outlives `timeout`.
    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Wait until the log has a line containing `text`; panics naming
    /// `what`, with the log, if the script ends or `timeout` passes first.
    fn wait_for_line(&mut self, what: &str, text: &str, timeout: Duration) {
        wait_until(timeout, what, || {
            let log = self.log();
            if log.contains(text) {
                return Ok(());
            }
            if let Some(status) = self.wait(Duration::ZERO) {
                panic!("{what}: the script ended first ({status}):\n{log}");
            }
            Err(format!("log:\n{log}"))
        });
    }

    /// Processes of the script's group still alive, as "pid command".
    fn group_members(&self) -> Vec<String> {
        let group = self.child.id().to_string();
        let mut members = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid pgrp ...: comm may hold spaces and parens.
            let Some((head, rest)) = stat.rsplit_once(") ") else {
                continue;
            };
            if rest.split(' ').nth(2) == Some(group.as_str()) {
                members.push(head.replacen(" (", " ", 1));
            }
        }
        members
    }

    fn signal_group(&self, signal: i32) {
        // SAFETY: kill has no memory preconditions; the negative pid names the
        // group the script leads (QEMU and tdfs run in it).
        unsafe {
            libc::kill(-(self.child.id() as i32), signal);
        }
    }
}

impl Drop for BootScript {
    fn drop(&mut self) {
        if self.wait(Duration::ZERO).is_none() {
            // The script's trap stops QEMU and tdfs and unmounts on TERM.
            self.signal_group(libc::SIGTERM);
            if self.wait(STOP_GRACE).is_none() {
                self.signal_group(libc::SIGKILL);
                let _ = self.child.wait();
            }
        }
        // Whatever the script's trap did not get to.
        if !self.group_members().is_empty() {
            self.signal_group(libc::SIGKILL);
        }
        for entry in std::fs::read_dir(self.work.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            unmount_lazily(&entry.path().join("mnt"));
        }
    }
}

#[test]
fn vm_boots_from_a_tdfs_mount() {
    if !fuse_available() || !vm_tools_available() {
        return;
    }
    let mut script = BootScript::start();
    let status = script.wait(SCRIPT_TIMEOUT);
    let log = script.log();
    let status = status.unwrap_or_else(|| {
        panic!(
            "boot-from-tdfs.sh did not finish within {} s:\n{log}",
            SCRIPT_TIMEOUT.as_secs()
        )
    });
    assert!(
        status.success(),
        "boot-from-tdfs.sh failed ({status}):\n{log}"
    );
    // The script's own checks passed; these lines show what they measured.
    assert!(
        log.contains("tdfs-mount: marker and the layer's checksum seen"),
        "{log}"
    );
    assert!(log.contains("memfile check: "), "{log}");
    println!("{log}");
}

/// Stopping the script while the VM boots from the mount leaves nothing
/// behind: no QEMU or tdfs process, no mount, no work directory.
#[test]
fn stopping_the_script_mid_boot_cleans_up() {
    if !fuse_available() || !vm_tools_available() {
        return;
    }
    let mut script = BootScript::start();
    script.wait_for_line(
        "the script booting from the mount",
        "booting tdfs-mount",
        SCRIPT_TIMEOUT,
    );
    // Wait for QEMU to start; the guest takes several seconds to power off
    // under TCG, so the stop lands mid-boot.
    wait_until(Duration::from_secs(30), "QEMU started", || {
        script
            .group_members()
            .iter()
            .any(|p| p.contains("qemu-system"))
    });
    assert!(
        script
            .group_members()
            .iter()
            .any(|p| p.contains("qemu-system")),
        "QEMU is not running: {:?}\n{}",
        script.group_members(),
        script.log()
    );
    // SAFETY: kill has no memory preconditions; this is the script's pid.
    unsafe {
        libc::kill(script.child.id() as i32, libc::SIGTERM);
    }
    let status = script.wait(STOP_GRACE);
    let log = script.log();
    let status = status.unwrap_or_else(|| panic!("the script ignored SIGTERM:\n{log}"));
    assert_eq!(status.code(), Some(143), "{log}");
    assert_eq!(script.group_members(), Vec::<String>::new(), "{log}");
    let work = script.work.path();
    let mounted: Vec<PathBuf> = tdfs::fs::mount_points()
        .unwrap()
        .into_iter()
        .filter(|p| p.starts_with(work))
        .collect();
    assert_eq!(mounted, Vec::<PathBuf>::new(), "{log}");
    let left: Vec<PathBuf> = std::fs::read_dir(work)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p != &script.log)
        .collect();
    assert_eq!(left, Vec::<PathBuf>::new(), "{log}");
}
