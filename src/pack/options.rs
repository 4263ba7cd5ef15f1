//! What `tdfs pack` is asked to do: the options and input files of a pack,
//! their defaults, and the checks made before anything is read or written
//! (pack refuses what a mount would refuse).

use std::path::PathBuf;

use uuid::Uuid;

use super::PackError;
use super::working_set::Layout;
use crate::format::limits::MAX_FRAME_SIZE;
use crate::format::{Compression, FileKind, PAGE_SIZE};

/// Default uncompressed frame size: the 2 MiB hugepage E2B's writers use.
pub const DEFAULT_FRAME_SIZE: u64 = 2 << 20;
/// Default memfile block size of a fresh build (hugepages).
pub const DEFAULT_MEMFILE_BLOCK_SIZE: u64 = 2 << 20;
/// Block size of every rootfs.
pub const ROOTFS_BLOCK_SIZE: u64 = 4096;

/// How to pack a build.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Build to layer on; `None` packs a fresh build (generation 0).
    pub base: Option<Uuid>,
    /// Id of the new build; `None` draws a random one.
    pub build_id: Option<Uuid>,
    pub compression: Compression,
    /// zstd level; `None` is `DEFAULT_ZSTD_LEVEL`. Only valid with zstd.
    pub level: Option<i32>,
    /// Uncompressed bytes per frame of a compressed diff.
    pub frame_size: u64,
    /// Memfile block size; `None` takes the base's, or 2 MiB for a fresh build.
    pub memfile_block_size: Option<u64>,
    /// Header version 3, 4 or 5; `None`: 3 when nothing involved is
    /// compressed, 4 otherwise.
    pub header_version: Option<u16>,
    /// Draw progress bars (only when stderr is a terminal).
    pub progress: bool,
    /// Where staged diffs and the base's read cache go; `None` is the
    /// system temp directory.
    pub work_dir: Option<PathBuf>,
    /// Worker threads; 0 = all cores.
    pub threads: usize,
    /// Order of the own diff when a trace is given (without one both
    /// layouts are the template order).
    pub layout: Layout,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            base: None,
            build_id: None,
            compression: Compression::Zstd,
            level: None,
            frame_size: DEFAULT_FRAME_SIZE,
            memfile_block_size: None,
            header_version: None,
            progress: false,
            work_dir: None,
            threads: 0,
            layout: Layout::WorkingSet,
        }
    }
}

/// The raw files of a build.
#[derive(Debug, Clone)]
pub struct PackInputs {
    pub memfile: PathBuf,
    pub rootfs: PathBuf,
    pub snapfile: Option<PathBuf>,
    /// `metadata.json` to store as is (with the traces below merged in);
    /// `None` writes a minimal E2B-style one.
    pub metadata: Option<PathBuf>,
    /// Prefetch trace of the memfile (a recording, or a metadata.json
    /// listing one), stored as `prefetch.memory` of metadata.json.
    pub prefetch_memfile: Option<PathBuf>,
    /// Prefetch trace of the rootfs, stored as `prefetch.rootfs`.
    pub prefetch_rootfs: Option<PathBuf>,
}

/// Refuse options a mount could not serve or a codec cannot honour.
///
/// # Errors
/// `PackError::BadOption` naming the option and the allowed range.
pub(super) fn check_options(opts: &PackOptions) -> Result<(), PackError> {
    if opts.frame_size == 0 {
        return Err(PackError::BadOption(
            "--frame-size 0 is not a size (the default is 2 MiB)".to_string(),
        ));
    }
    // A mount refuses frames over the limit, so pack must not write them.
    if opts.frame_size > u64::from(MAX_FRAME_SIZE) {
        return Err(PackError::BadOption(format!(
            "--frame-size {} bytes is over the largest frame a mount serves ({} MiB); \
             pick at most {} MiB (the default is 2 MiB)",
            opts.frame_size,
            MAX_FRAME_SIZE >> 20,
            MAX_FRAME_SIZE >> 20
        )));
    }
    if let Some(bs) = opts.memfile_block_size
        && (bs == 0 || bs % PAGE_SIZE != 0)
    {
        return Err(PackError::BadOption(format!(
            "memfile block size {bs} must be a non-zero multiple of 4 KiB (4KiB or 2MiB)"
        )));
    }
    if opts.level.is_some() && opts.compression != Compression::Zstd {
        return Err(PackError::BadOption(format!(
            "--level applies only to zstd, not to {}",
            opts.compression.name()
        )));
    }
    if let Some(level) = opts.level {
        let range = zstd::compression_level_range();
        if !range.contains(&level) {
            return Err(PackError::BadOption(format!(
                "zstd level {level} is out of range ({} to {})",
                range.start(),
                range.end()
            )));
        }
    }
    Ok(())
}

/// Refuse a frame size off the block grid of `file` (E2B's
/// `validateCompressConfig`: the frame size must be a multiple of the
/// header's block size, or E2B's readers serve a neighbour's bytes for a
/// block across a frame edge). Only a compressed diff has frames.
///
/// # Errors
/// `PackError::BadOption` naming the rule, both sizes and where the block
/// size came from.
pub(super) fn check_frame_grid(
    opts: &PackOptions,
    file: FileKind,
    block_size: u64,
) -> Result<(), PackError> {
    if opts.compression == Compression::None || opts.frame_size.is_multiple_of(block_size) {
        return Ok(());
    }
    let source = match file {
        FileKind::Memfile if opts.memfile_block_size.is_some() => "--memfile-block-size",
        _ if opts.base.is_some() => "the base build's",
        FileKind::Memfile => "the default",
        FileKind::Rootfs => "every rootfs's",
    };
    Err(PackError::BadOption(format!(
        "--frame-size {} bytes is not a multiple of the {file} block size {block_size} bytes \
         ({source}): E2B requires frames on the block grid (validateCompressConfig) and serves \
         wrong bytes otherwise; pick a multiple of {block_size} (the default, 2 MiB, fits \
         every block size)",
        opts.frame_size
    )))
}
