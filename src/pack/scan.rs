//! Diffing one image against its base's view: every block is classified as
//! zeros (nil build, not stored), unchanged (keeps the base's mappings) or
//! changed (appended to this build's diff, in template order).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::PackError;
use super::layout::copy_base_range;
use super::parallel::ordered_map;
use crate::format::{FileKind, Mapping, PAGE_SIZE};
use crate::template::TemplateFile;

/// Bytes read per work item (rounded up to whole blocks).
const SEGMENT_TARGET: u64 = 4 << 20;

/// What a block of the new image is, relative to the base's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Zero,
    Unchanged,
    Changed,
}

/// One segment of the image: its bytes and its blocks grouped into runs.
struct Segment {
    offset: u64,
    data: Vec<u8>,
    /// `(start, end, class)` in template offsets, consecutive.
    runs: Vec<(u64, u64, Class)>,
}

/// The outcome of diffing one image.
#[derive(Debug, Clone)]
pub struct ScanResult {
    /// Mappings covering `[0, size)`, one or more per run of blocks (not
    /// yet merged).
    pub mappings: Vec<Mapping>,
    pub diff_size: u64,
    pub diff_sha256: [u8; 32],
    pub zero_bytes: u64,
    pub unchanged_bytes: u64,
    pub changed_bytes: u64,
}

/// What `scan` diffs.
pub struct ScanInput<'a> {
    pub file: FileKind,
    pub image: &'a File,
    pub image_path: &'a Path,
    pub size: u64,
    pub block_size: u64,
    pub own: Uuid,
    pub base: Option<&'a TemplateFile>,
    pub threads: usize,
}

/// Diff the image against the base view, writing the changed blocks to
/// `diff_out` in template order.
pub fn scan(
    input: &ScanInput<'_>,
    diff_out: &mut File,
    bar: &ProgressBar,
) -> Result<ScanResult, PackError> {
    let bs = input.block_size;
    let seg_len = SEGMENT_TARGET.div_ceil(bs).max(1) * bs;
    let count = usize::try_from(input.size.div_ceil(seg_len)).map_err(|_| {
        PackError::BadInput(format!("{}: image too large", input.image_path.display()))
    })?;

    let mut mappings = Vec::new();
    let mut hasher = Sha256::new();
    let mut result = ScanResult {
        mappings: Vec::new(),
        diff_size: 0,
        diff_sha256: [0; 32],
        zero_bytes: 0,
        unchanged_bytes: 0,
        changed_bytes: 0,
    };

    ordered_map(
        count,
        input.threads,
        |i| read_segment(input, i as u64 * seg_len, seg_len),
        |_, seg| {
            for &(start, end, class) in &seg.runs {
                let len = end - start;
                match class {
                    Class::Zero => {
                        result.zero_bytes += len;
                        mappings.push(Mapping {
                            offset: start,
                            length: len,
                            build_id: Uuid::nil(),
                            storage_offset: 0,
                        });
                    }
                    Class::Unchanged => {
                        result.unchanged_bytes += len;
                        let base = input.base.expect("only a base makes blocks unchanged");
                        copy_base_range(&base.header().mappings, start, end, &mut mappings);
                    }
                    Class::Changed => {
                        result.changed_bytes += len;
                        let bytes =
                            &seg.data[(start - seg.offset) as usize..(end - seg.offset) as usize];
                        diff_out.write_all(bytes).map_err(|source| PackError::Io {
                            path: "staged diff".into(),
                            source,
                        })?;
                        hasher.update(bytes);
                        mappings.push(Mapping {
                            offset: start,
                            length: len,
                            build_id: input.own,
                            storage_offset: result.diff_size,
                        });
                        result.diff_size += len;
                    }
                }
            }
            bar.inc(seg.data.len() as u64);
            Ok::<(), PackError>(())
        },
    )?;
    result.mappings = mappings;
    result.diff_sha256 = hasher.finalize().into();
    Ok(result)
}

fn read_segment(input: &ScanInput<'_>, offset: u64, seg_len: u64) -> Result<Segment, PackError> {
    let len = seg_len.min(input.size - offset) as usize;
    let mut data = vec![0u8; len];
    input
        .image
        .read_exact_at(&mut data, offset)
        .map_err(|source| PackError::Io {
            path: input.image_path.to_path_buf(),
            source,
        })?;
    let base_data = match input.base {
        Some(base) => {
            let mut buf = vec![0u8; len];
            let mut filled = 0;
            while filled < len {
                let n = base
                    .read_at(&mut buf[filled..], offset + filled as u64)
                    .map_err(|source| PackError::Base {
                        build: base.build_id(),
                        file: input.file,
                        source,
                    })?;
                if n == 0 {
                    // Past the base's end: the rest of `buf` stays zeros.
                    break;
                }
                filled += n;
            }
            Some(buf)
        }
        None => None,
    };

    let bs = input.block_size as usize;
    let mut runs: Vec<(u64, u64, Class)> = Vec::new();
    for (i, block) in data.chunks(bs).enumerate() {
        let start = i * bs;
        let class = if is_zero(block) {
            Class::Zero
        } else if base_data
            .as_ref()
            .is_some_and(|b| &b[start..start + block.len()] == block)
        {
            Class::Unchanged
        } else {
            Class::Changed
        };
        let (s, e) = (offset + start as u64, offset + (start + block.len()) as u64);
        match runs.last_mut() {
            Some(last) if last.2 == class && last.1 == s => last.1 = e,
            _ => runs.push((s, e, class)),
        }
    }
    Ok(Segment { offset, data, runs })
}

/// True when every byte is zero; checks a page at a time so a non-zero
/// block usually stops after its first page.
fn is_zero(block: &[u8]) -> bool {
    block
        .chunks(PAGE_SIZE as usize)
        .all(|page| page.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 10000]));
        let mut v = vec![0u8; 10000];
        v[9999] = 1;
        assert!(!is_zero(&v));
    }
}
