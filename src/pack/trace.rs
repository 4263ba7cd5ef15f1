//! Prefetch traces a pack stores (`--prefetch-memfile`, `--prefetch-rootfs`):
//! read from a recording (`--record-prefetch`'s `<file>.prefetch.json`) or
//! from a whole `metadata.json` that lists one, checked against the image
//! they describe, and merged into the new build's `metadata.json` under
//! `prefetch.memory` / `prefetch.rootfs` (every other key kept as it is).
//! Pack refuses a trace a mount would have to repair.

use std::collections::HashSet;
use std::path::Path;

use serde_json::Value;

use super::PackError;
use crate::format::FileKind;
use crate::format::trace::{self, Trace};
use crate::template::read_bounded;

/// The trace in `path` for `file`, whose raw image is `image_size` bytes.
///
/// # Errors
/// `Io` when it cannot be read (or is over `MAX_METADATA_LEN` bytes);
/// `BadInput` when it is neither a recording nor a metadata.json listing a
/// trace for `file`, needs a repair (more entries than the limit, lengths
/// that disagree), or does not fit the image (`check_against_image`).
pub(super) fn read_trace(path: &Path, file: FileKind, image_size: u64) -> Result<Trace, PackError> {
    let bytes = read_file(path)?;
    let bad = |why: String| {
        PackError::BadInput(format!(
            "prefetch trace {} for {file}: {why}",
            path.display()
        ))
    };
    let parsed = match trace::parse_trace_file(&bytes) {
        Ok(p) => p,
        // A whole metadata.json (E2B's, or one pack wrote) is taken too.
        Err(as_recording) => match trace::parse_metadata(&bytes, file) {
            Ok(Some(p)) => p,
            Ok(None) => {
                let why = trace::fields_ignored(&bytes)
                    .map_or_else(String::new, |why| format!(" ({why})"));
                return Err(bad(format!(
                    "a metadata.json without prefetch.{}{why}",
                    trace::metadata_key(file)
                )));
            }
            Err(_) => return Err(bad(as_recording.to_string())),
        },
    };
    if !parsed.notes.is_empty() {
        return Err(bad(parsed.notes.join("; ")));
    }
    let trace = parsed.trace;
    check_against_image(&trace, image_size).map_err(bad)?;
    Ok(trace)
}

/// Refuse a trace that does not describe an image of `image_size` bytes:
/// more blocks than the image has, blocks at or past its end, or a block
/// listed twice. Each refusal gives the count and the first bad entry (its
/// position in the list and its block index), so the operator can tell a
/// trace of another build from a damaged one.
///
/// # Errors
/// The first of those faults, in words.
pub(super) fn check_against_image(trace: &Trace, image_size: u64) -> Result<(), String> {
    let bs = trace.block_size;
    let blocks = image_size.div_ceil(bs);
    let listed = trace.indices.len() as u64;
    if listed > blocks {
        return Err(format!(
            "{listed} blocks of {bs} bytes listed, more than the image has ({blocks} in \
             {image_size} bytes); the first one too many is entry {blocks} (block {}): was it \
             recorded from another build?",
            trace.indices[blocks as usize]
        ));
    }
    let mut past = trace
        .indices
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, i)| *i >= blocks);
    if let Some((at, index)) = past.next() {
        return Err(format!(
            "{} blocks of {bs} bytes lie past the end of the image ({image_size} bytes, \
             {blocks} blocks); the first is entry {at} (block {index}): was it recorded from \
             another build?",
            1 + past.count()
        ));
    }
    // Every index is below `blocks` and there are at most `blocks` of
    // them, so this set is bounded by the image.
    let mut seen = HashSet::with_capacity(trace.indices.len());
    let mut repeats = trace
        .indices
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, i)| !seen.insert(*i));
    if let Some((at, index)) = repeats.next() {
        return Err(format!(
            "{} entries repeat a block listed before them; the first is entry {at} (block \
             {index}); a trace lists each block once, at its first touch",
            1 + repeats.count()
        ));
    }
    Ok(())
}

/// The `metadata.json` to store: `given` (a path) or `minimal`, with
/// `traces` set under `prefetch`.
///
/// # Errors
/// `Io` when `given` cannot be read; `BadInput` when it is not a JSON
/// object, or `traces` are given and E2B would read none of its fields
/// (`version` not a number above 1).
pub(super) fn metadata_with(
    given: Option<&Path>,
    traces: &[(FileKind, Trace)],
    minimal: Value,
) -> Result<Vec<u8>, PackError> {
    let bytes = match given {
        Some(path) => Some(read_file(path)?),
        None => None,
    };
    // A trace merged into a document E2B reads as empty would be lost on
    // E2B's side: refused, so what pack writes is what E2B replays.
    if let (Some(path), Some(bytes), false) = (given, &bytes, traces.is_empty())
        && let Some(why) = trace::fields_ignored(bytes)
    {
        return Err(PackError::BadInput(format!(
            "{}: {why}; set its \"version\" to 2 (E2B's current one) to store the trace in it",
            path.display()
        )));
    }
    let traces: Vec<(FileKind, &Trace)> = traces.iter().map(|(f, t)| (*f, t)).collect();
    trace::merge_into_metadata(bytes.as_deref(), &traces, || minimal).map_err(|e| {
        let what = given.map_or("the minimal metadata".to_string(), |p| {
            p.display().to_string()
        });
        PackError::BadInput(format!(
            "{what}: {e} (give E2B's metadata.json, or none for a minimal one)"
        ))
    })
}

/// The bytes of `path`, refused over `format::limits::MAX_METADATA_LEN`
/// bytes before it is read.
fn read_file(path: &Path) -> Result<Vec<u8>, PackError> {
    let io = |source| PackError::Io {
        path: path.to_path_buf(),
        source,
    };
    read_bounded(path).map_err(io)?.ok_or_else(|| {
        io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(indices: Vec<u64>, size: u64) -> Result<(), String> {
        check_against_image(&Trace::of_reads(4096, indices).unwrap(), size)
    }

    #[test]
    fn a_trace_that_does_not_fit_the_image_is_refused_with_count_and_first_entry() {
        assert_eq!(check(vec![3, 0, 2], 4 * 4096), Ok(()));
        // The last block may be short.
        assert_eq!(check(vec![1], 4096 + 100), Ok(()));
        let e = check(vec![0, 1, 9, 3, 12], 4 * 4096).unwrap_err();
        assert!(
            e.contains("more than the image has (4 in") && e.contains("entry 4 (block 12)"),
            "{e}"
        );
        let e = check(vec![0, 7, 1, 4], 4 * 4096).unwrap_err();
        assert!(
            e.starts_with("2 blocks of 4096 bytes lie past") && e.contains("entry 1 (block 7)"),
            "{e}"
        );
        let e = check(vec![2, 1, 2, 1], 4 * 4096).unwrap_err();
        assert!(
            e.starts_with("2 entries repeat") && e.contains("entry 2 (block 2)"),
            "{e}"
        );
    }
}
