//! Cutting a staged diff into frames and compressing them on every core,
//! written in order to the compressed object with its frame table.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use indicatif::ProgressBar;

use super::PackError;
use super::parallel::ordered_map;
use crate::codec::compress_frame;
use crate::format::limits::{MAX_FRAME_SIZE, MAX_FRAMES};
use crate::format::{Compression, Frame, FrameTable};

/// The compressed object: its frame table and size.
#[derive(Debug, Clone)]
pub struct Compressed {
    pub frames: FrameTable,
    pub size: u64,
}

/// What to compress and how.
pub struct FrameJob<'a> {
    pub diff: &'a File,
    pub diff_size: u64,
    pub compression: Compression,
    pub level: i32,
    pub frame_size: u64,
    pub threads: usize,
}

/// Compress `[0, diff_size)` of `job.diff` into frames of `frame_size`
/// uncompressed bytes (the last one shorter), appending them to `out`.
pub fn compress_diff(
    job: &FrameJob<'_>,
    out: &mut File,
    bar: &ProgressBar,
) -> Result<Compressed, PackError> {
    let count = job.diff_size.div_ceil(job.frame_size);
    if count > u64::from(MAX_FRAMES) {
        return Err(PackError::BadOption(format!(
            "a diff of {} bytes needs {count} frames of {} bytes, over the format's limit of \
             {MAX_FRAMES}; use a larger --frame-size",
            job.diff_size, job.frame_size
        )));
    }
    let mut frames = Vec::with_capacity(count as usize);
    let mut start_c = 0u64;
    ordered_map(
        count as usize,
        job.threads,
        |i| {
            let start_u = i as u64 * job.frame_size;
            let len = job.frame_size.min(job.diff_size - start_u) as usize;
            let mut raw = vec![0u8; len];
            job.diff
                .read_exact_at(&mut raw, start_u)
                .map_err(|source| PackError::Io {
                    path: "staged diff".into(),
                    source,
                })?;
            let packed = compress_frame(job.compression, job.level, &raw).map_err(|e| {
                PackError::Compress {
                    compression: job.compression,
                    frame: i,
                    message: e.to_string(),
                }
            })?;
            Ok((start_u, len, packed))
        },
        |i, (start_u, len, packed)| {
            // Incompressible data grows a little when compressed, so a frame
            // of a --frame-size near the limit can compress to more than it.
            let size_c = u32::try_from(packed.len())
                .ok()
                .filter(|&n| n <= MAX_FRAME_SIZE)
                .ok_or_else(|| PackError::Compress {
                    compression: job.compression,
                    frame: i,
                    message: format!(
                        "the compressed frame is {} bytes, over the largest frame a mount \
                         serves ({MAX_FRAME_SIZE} bytes); use a smaller --frame-size",
                        packed.len()
                    ),
                })?;
            out.write_all(&packed).map_err(|source| PackError::Io {
                path: "staged compressed diff".into(),
                source,
            })?;
            frames.push(Frame {
                start_u,
                start_c,
                size_u: len as u32,
                size_c,
            });
            start_c += packed.len() as u64;
            bar.inc(len as u64);
            Ok::<(), PackError>(())
        },
    )?;
    let frames = FrameTable::new(job.compression, frames).map_err(|source| {
        PackError::Internal(format!("frame table of a fresh diff rejected: {source}"))
    })?;
    Ok(Compressed {
        frames,
        size: start_c,
    })
}
