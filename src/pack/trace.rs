//! Prefetch traces a pack stores (`--prefetch-memfile`, `--prefetch-rootfs`):
//! read from a recording (`--record-prefetch`'s `<file>.prefetch.json`) or
//! from a whole `metadata.json` that lists one, checked against the image
//! they describe, and merged into the new build's `metadata.json` under
//! `prefetch.memory` / `prefetch.rootfs` (every other key kept as it is).
//! Pack refuses a trace a mount would have to repair.

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
/// that disagree), or lists a block past the end of the image.
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
    let mut trace = parsed.trace;
    let past_end = trace.clamp_to(image_size);
    if past_end > 0 {
        return Err(bad(format!(
            "{past_end} blocks of {} bytes lie past the end of the image ({image_size} bytes): \
             was it recorded from another build?",
            trace.block_size
        )));
    }
    Ok(trace)
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
