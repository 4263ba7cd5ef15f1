//! What `statfs` (and so `df`) says of a mount: how full its cache is.
//!
//! Size is the cache budget (`--max-cache-size`) or, without one, the size
//! of the disk that holds the cache directory; used is the bytes in the
//! mount's cache files; free and available are what is left of that size
//! for the cache, so `df` shows Use% as used / size. Nothing can be
//! written through the mount: the kernel reports `ST_RDONLY` because it is
//! mounted `ro`. Files are the inodes the mount has handed out.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::templatefs::TemplateFs;

/// The block size of every figure, in bytes.
pub const STATFS_BLOCK: u64 = 4096;
/// Longest name in the tree, in bytes (`NAME_MAX`).
pub const NAME_MAX: u32 = 255;

/// The figures of a `statfs` answer; block counts are in `STATFS_BLOCK`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsFigures {
    pub blocks: u64,
    /// Blocks the cache may still fill.
    pub free: u64,
    /// Same as `free`: the cache is the only writer.
    pub available: u64,
    pub files: u64,
    /// No inodes can be made.
    pub files_free: u64,
    pub block_size: u32,
    pub name_max: u32,
}

impl TemplateFs {
    /// The mount's figures for `statfs` (see the module docs).
    pub fn statfs(&self) -> FsFigures {
        let used = self.builds.cache_used_bytes();
        let size = match self.builds.max_cache_size() {
            0 => self
                .builds
                .cache_dir()
                .ok()
                .and_then(disk_size)
                .unwrap_or(used),
            limit => limit,
        };
        // Eviction runs after a unit is cached, so the budget can be over
        // for a moment: size never shows less than used.
        let blocks = size.max(used).div_ceil(STATFS_BLOCK);
        let free = blocks - used.div_ceil(STATFS_BLOCK);
        FsFigures {
            blocks,
            free,
            available: free,
            files: self.inodes.known(),
            files_free: 0,
            block_size: STATFS_BLOCK as u32,
            name_max: NAME_MAX,
        }
    }
}

/// Bytes of the file system holding `path`; None when it cannot be asked.
fn disk_size(path: &Path) -> Option<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain data, filled by the call below.
    let mut buf: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and out pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut buf) } != 0 {
        return None;
    }
    Some(buf.f_blocks.saturating_mul(buf.f_frsize))
}
