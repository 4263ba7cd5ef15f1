//! FUSE passthrough of wholly cached template files: which opens of an
//! inode go straight to its flat file (`template::flat`), under the
//! kernel's rules (fs/fuse/iomode.c, Linux 6.9 to 6.18):
//!
//! - every open of an inode that has a passthrough open must be a
//!   passthrough open with the same backing file, or the kernel fails it
//!   with EIO ("FOPEN_PASSTHROUGH expected");
//! - a passthrough open of an inode that has a normal (page-cached) open
//!   fails with EIO too (ETXTBSY inside the kernel).
//!
//! So an inode is opened in passthrough mode only while it has no normal
//! open, and then all its opens are, sharing one backing id, which is
//! closed when its last passthrough handle is released. The counts here
//! lag the kernel's (the kernel drops an open before it sends RELEASE), so
//! they never allow an open the kernel would refuse. When the kernel does
//! not offer passthrough, or refuses a backing file (no CAP_SYS_ADMIN:
//! EPERM), passthrough is turned off for the mount, logged once, and every
//! open is a normal one.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fuser::BackingId;

use crate::sync;
use crate::template::FlatFile;

/// The backing id of one inode's passthrough opens, registered by the
/// first of them (it needs the FUSE reply, so `fs::fuse` does it).
pub type BackingSlot = Arc<Mutex<Option<BackingId>>>;

/// What an open needs to be answered in passthrough mode.
#[derive(Debug)]
pub struct Backing {
    /// The file the kernel reads from.
    pub file: Arc<FlatFile>,
    /// Shared by the inode's passthrough opens: empty for the first.
    pub slot: BackingSlot,
}

/// Open template-file handles of one inode.
#[derive(Default)]
struct InodeOpens {
    normal: usize,
    passthrough: usize,
    slot: BackingSlot,
}

#[derive(Default)]
struct Opens {
    inodes: HashMap<u64, InodeOpens>,
    /// Inode and mode (true: passthrough) of each open handle.
    handles: HashMap<u64, (u64, bool)>,
}

/// The passthrough state of a mount.
pub(super) struct Passthrough {
    enabled: AtomicBool,
    opens: Mutex<Opens>,
    /// Opens answered in passthrough mode so far.
    used: AtomicU64,
}

impl Passthrough {
    /// Off for good when not `enabled` (`--passthrough off`).
    pub(super) fn new(enabled: bool) -> Self {
        Passthrough {
            enabled: AtomicBool::new(enabled),
            opens: Mutex::new(Opens::default()),
            used: AtomicU64::new(0),
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Turn passthrough off for the rest of the mount; the first call logs
    /// `why`.
    pub(super) fn disable(&self, why: &str) {
        if self.enabled.swap(false, Ordering::Relaxed) {
            log::warn!(
                "FUSE passthrough is off: {why}; template files are served through tdfs \
                 (mount as root on Linux 6.9+ with CONFIG_FUSE_PASSTHROUGH=y to use it, or \
                 pass --passthrough off to silence this)"
            );
        }
    }

    /// Count the open `fh` of inode `ino`, whose flat file is `flat` if
    /// written: passthrough (returned) when allowed, normal otherwise.
    pub(super) fn open(&self, ino: u64, fh: u64, flat: Option<Arc<FlatFile>>) -> Option<Backing> {
        let mut opens = sync::lock(&self.opens);
        let inode = opens.inodes.entry(ino).or_default();
        let backing = match flat {
            Some(file) if self.enabled() && inode.normal == 0 => {
                inode.passthrough += 1;
                Some(Backing {
                    file,
                    slot: inode.slot.clone(),
                })
            }
            _ => {
                inode.normal += 1;
                None
            }
        };
        opens.handles.insert(fh, (ino, backing.is_some()));
        backing
    }

    /// The open `fh` was answered in passthrough mode.
    pub(super) fn opened_passthrough(&self) {
        self.used.fetch_add(1, Ordering::Relaxed);
    }

    /// The open `fh`, counted as passthrough, was answered normally (the
    /// backing file was refused): count it as normal.
    pub(super) fn opened_normally(&self, fh: u64) {
        let mut opens = sync::lock(&self.opens);
        let Some((ino, true)) = opens.handles.get(&fh).copied() else {
            return;
        };
        opens.handles.insert(fh, (ino, false));
        let inode = opens.inodes.entry(ino).or_default();
        inode.normal += 1;
        drop_passthrough(inode);
    }

    /// Forget the open `fh` (no-op for handles that are not template files).
    pub(super) fn release(&self, fh: u64) {
        let mut opens = sync::lock(&self.opens);
        let Some((ino, passthrough)) = opens.handles.remove(&fh) else {
            return;
        };
        let Some(inode) = opens.inodes.get_mut(&ino) else {
            return;
        };
        if passthrough {
            drop_passthrough(inode);
        } else {
            inode.normal = inode.normal.saturating_sub(1);
        }
        if inode.normal == 0 && inode.passthrough == 0 {
            opens.inodes.remove(&ino);
        }
    }

    /// How inode `ino` is open now and how many opens went passthrough in
    /// all, for `user.tdfs.passthrough`.
    pub(super) fn describe(&self, ino: u64) -> String {
        let opens = sync::lock(&self.opens);
        let (normal, passthrough) = opens
            .inodes
            .get(&ino)
            .map_or((0, 0), |i| (i.normal, i.passthrough));
        format!(
            "{passthrough} passthrough and {normal} normal opens now, {} passthrough opens in \
             this mount",
            self.used.load(Ordering::Relaxed)
        )
    }
}

/// One passthrough open of `inode` is gone; with the last, its backing id
/// goes too (closed once no open being answered still holds it). A fresh
/// slot is put in its place, so this never waits on the old one's lock.
fn drop_passthrough(inode: &mut InodeOpens) {
    inode.passthrough = inode.passthrough.saturating_sub(1);
    if inode.passthrough == 0 {
        inode.slot = BackingSlot::default();
    }
}

/// False when this process lacks CAP_SYS_ADMIN, without which the kernel
/// refuses every backing file. (It checks the capability in the initial
/// user namespace: a process holding it only in a container's namespace
/// passes here and is refused at its first passthrough open, which
/// `fs::fuse` handles the same way.)
pub(super) fn may_register_backing_files() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_none_or(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// `max_stack_depth` for a mount whose flat files lie in `dir`: the kernel
/// refuses a backing file whose file system is stacked as deep as this
/// mount (ELOOP), so 2 when `dir` is on a stacking file system (overlayfs,
/// FUSE, ecryptfs), else 1, which leaves room to put an overlayfs on this
/// mount. (2 is the kernel's most, FILESYSTEM_MAX_STACK_DEPTH.)
pub(super) fn stack_depth(dir: &Path) -> u32 {
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    const ECRYPTFS_SUPER_MAGIC: i64 = 0xf15f;
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return 1;
    };
    // SAFETY: statfs is plain data.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer.
    if unsafe { libc::statfs(path.as_ptr(), &mut buf) } != 0 {
        return 1;
    }
    #[allow(clippy::unnecessary_cast)] // f_type is i64 or u32 by architecture.
    match buf.f_type as i64 {
        OVERLAYFS_SUPER_MAGIC | FUSE_SUPER_MAGIC | ECRYPTFS_SUPER_MAGIC => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passthrough_of(backing: Option<Backing>) -> bool {
        backing.is_some()
    }

    #[test]
    fn an_inode_is_opened_one_way_at_a_time() {
        let p = Passthrough::new(true);
        // No flat file yet: normal.
        assert!(!passthrough_of(p.open(7, 1, None)));
        // A flat file, but a normal open lives: still normal.
        let dir = tempfile::tempdir().unwrap();
        let flat = crate::template::testing::flat_file(dir.path());
        assert!(!passthrough_of(p.open(7, 2, Some(flat.clone()))));
        p.release(1);
        p.release(2);
        // Now every open is passthrough, and they share one slot.
        let a = p.open(7, 3, Some(flat.clone())).unwrap();
        let b = p.open(7, 4, Some(flat.clone())).unwrap();
        assert!(Arc::ptr_eq(&a.slot, &b.slot));
        // Another inode is independent.
        assert!(passthrough_of(p.open(8, 5, Some(flat.clone()))));
        p.release(3);
        let c = p.open(7, 6, Some(flat.clone())).unwrap();
        assert!(
            Arc::ptr_eq(&a.slot, &c.slot),
            "one passthrough open still lives"
        );
        p.release(4);
        p.release(6);
        // The last passthrough close drops the slot: a new one starts fresh.
        let d = p.open(7, 7, Some(flat.clone())).unwrap();
        assert!(!Arc::ptr_eq(&a.slot, &d.slot));
        assert!(p.describe(7).starts_with("1 passthrough and 0 normal"));
    }

    #[test]
    fn a_refused_backing_file_turns_opens_normal() {
        let p = Passthrough::new(true);
        let dir = tempfile::tempdir().unwrap();
        let flat = crate::template::testing::flat_file(dir.path());
        assert!(p.open(7, 1, Some(flat.clone())).is_some());
        p.disable("test");
        p.opened_normally(1);
        assert!(p.open(7, 2, Some(flat.clone())).is_none());
        assert!(p.describe(7).starts_with("0 passthrough and 2 normal"));
        p.release(1);
        p.release(2);
        assert!(p.describe(7).starts_with("0 passthrough and 0 normal"));
    }

    #[test]
    fn off_means_normal() {
        let p = Passthrough::new(false);
        let dir = tempfile::tempdir().unwrap();
        let flat = crate::template::testing::flat_file(dir.path());
        assert!(p.open(7, 1, Some(flat)).is_none());
    }
}
