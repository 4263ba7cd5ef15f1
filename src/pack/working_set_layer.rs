//! `tdfs working-set`: the working-set-first layout for a build already in
//! a store (one E2B packed in template order, say) without rewriting any
//! of its objects, which E2B readers and other hosts may hold. The new
//! build is a thin layer over it: its own diff is a copy of the base's
//! working set (the trace's blocks as the base's template file has them,
//! zeros left out) in first-touch order, and its header maps every other
//! byte to exactly where the base's header maps it. The copy costs the
//! working set once; the snapfile is copied, and the base's metadata.json
//! with the traces set and `template.build_id` the layer's own.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::layout::copy_base_range;
use super::parallel::ordered_map;
use super::stage::{self, Counts, Finish, RawDiff, StagedFile, TemplateShape};
use super::trace::{check_against_image, read_trace};
use super::working_set::first_touch_blocks;
use super::{
    MetadataSource, PackError, PackOptions, PackReport, ScratchDir, default_threads, upload,
};
use crate::format::limits::MAX_METADATA_LEN;
use crate::format::trace::{self, Trace};
use crate::format::{Blob, FileKind, Mapping, ObjectKey};
use crate::store::{Store, StoreError, WritableStore};
use crate::template::{Builds, TemplateConfig, TemplateFile};

/// Bytes read from the base per work item (at least one block): the
/// scan's segment size, so the items in flight (two per thread) hold a
/// few MiB per thread whatever the block size.
const ITEM_BYTES: u64 = 4 << 20;

/// The traces of a working-set layer: a file whose trace is `None` takes
/// the one the base's metadata.json lists (E2B writes `prefetch.memory`).
#[derive(Debug, Clone, Default)]
pub struct LayerTraces {
    pub memfile: Option<PathBuf>,
    pub rootfs: Option<PathBuf>,
}

/// Write a working-set layer over `opts.base` (required) and upload it,
/// headers last. `opts`' compression, level, frame size, header version,
/// build id, work directory and threads apply; its layout and memfile block
/// size do not (the layer keeps the base's blocks).
///
/// # Errors
/// `BadOption` without a base; `BadInput` when no file has a trace (given
/// or in the base's metadata.json) or a trace does not fit the base's
/// file; `BuildExists`; base read and store errors; `BrokenLayout` (a bug).
pub fn working_set_layer(
    store: Arc<dyn WritableStore>,
    opts: &PackOptions,
    given: &LayerTraces,
) -> Result<PackReport, PackError> {
    super::options::check_options(opts)?;
    let Some(base_id) = opts.base else {
        return Err(PackError::BadOption(
            "a working-set layer needs the build it lies over (--base)".to_string(),
        ));
    };
    let build_id = super::new_build_id(store.as_ref(), opts)?;
    let threads = if opts.threads == 0 {
        default_threads()
    } else {
        opts.threads
    };
    // Only the headers and metadata before the scratch directory: a bad
    // trace fails at once, with nothing staged.
    // Reads headers and blobs only: no cache directory is made.
    let readers = Builds::new(
        store.clone(),
        TemplateConfig::for_tool(std::env::temp_dir()),
    );
    let base_metadata = readers
        .read_whole_blob(base_id, Blob::Metadata, MAX_METADATA_LEN)
        .map_err(|source| PackError::BaseOpen {
            build: base_id,
            source,
        })?;
    let mut traces = Vec::new();
    for (file, path) in [
        (FileKind::Memfile, &given.memfile),
        (FileKind::Rootfs, &given.rootfs),
    ] {
        let size = readers
            .header(base_id, file)
            .map_err(|source| PackError::BaseOpen {
                build: base_id,
                source,
            })?
            .metadata
            .size;
        let trace = match path {
            Some(path) => Some(read_trace(path, file, size)?),
            None => base_trace(base_metadata.as_deref(), base_id, file, size)?,
        };
        traces.extend(trace.map(|t| (file, t)));
    }
    if traces.is_empty() {
        return Err(PackError::BadInput(format!(
            "no trace for build {base_id}: its metadata.json lists none; give \
             --prefetch-memfile and/or --prefetch-rootfs (a recording of \
             `tdfs mount --record-prefetch`, or a metadata.json that lists one)"
        )));
    }

    let staging = ScratchDir::new(opts.work_dir.as_deref())?;
    let builds = Builds::new(
        store.clone(),
        TemplateConfig::for_tool(staging.path().join("base-cache")),
    );
    let mut staged = Vec::with_capacity(2);
    for file in FileKind::ALL {
        let base = builds
            .open(base_id, file)
            .map_err(|source| PackError::BaseOpen {
                build: base_id,
                source,
            })?;
        let trace = traces.iter().find(|(f, _)| *f == file).map(|(_, t)| t);
        let ctx = Finish {
            store: store.as_ref(),
            builds: &builds,
            opts,
            dir: staging.path(),
            base: Some(base.header()),
            build_id,
            threads,
            trace,
        };
        staged.push(stage_layer_file(&ctx, &base, trace)?);
    }

    let snapfile = copy_snapfile(store.as_ref(), base_id, staging.path())?;
    let metadata = layer_metadata(base_metadata.as_deref(), build_id, base_id, &traces)?;
    upload(
        store.as_ref(),
        build_id,
        &staged,
        snapfile.as_deref(),
        MetadataSource::Bytes(metadata),
    )?;
    let base_md = staged_base_metadata(&readers, base_id)?;
    Ok(PackReport {
        build_id,
        base_build_id: base_md.base_build_id,
        generation: base_md.generation + 1,
        files: staged.into_iter().map(|s| s.report).collect(),
    })
}

/// The metadata of the base's memfile header (generation, base build).
fn staged_base_metadata(
    readers: &Builds,
    base: Uuid,
) -> Result<crate::format::Metadata, PackError> {
    readers
        .header(base, FileKind::Memfile)
        .map(|h| h.metadata)
        .map_err(|source| PackError::BaseOpen {
            build: base,
            source,
        })
}

/// The trace the base's metadata.json lists for `file`, checked against
/// the file's `size` in bytes; `None` when it lists none.
fn base_trace(
    metadata: Option<&[u8]>,
    base: Uuid,
    file: FileKind,
    size: u64,
) -> Result<Option<Trace>, PackError> {
    let Some(bytes) = metadata else {
        return Ok(None);
    };
    let bad = |why: String| {
        PackError::BadInput(format!(
            "the prefetch.{} trace in the metadata.json of build {base}: {why} (give a \
             sound one with --prefetch-{})",
            trace::metadata_key(file),
            match file {
                FileKind::Memfile => "memfile",
                FileKind::Rootfs => "rootfs",
            }
        ))
    };
    let parsed = match trace::parse_metadata(bytes, file) {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    if !parsed.notes.is_empty() {
        return Err(bad(parsed.notes.join("; ")));
    }
    check_against_image(&parsed.trace, size).map_err(bad)?;
    Ok(Some(parsed.trace))
}

/// Stage one template file of the layer: the trace's non-zero blocks copied
/// from `base` in first-touch order, every other byte mapped as `base`
/// maps it.
fn stage_layer_file(
    ctx: &Finish<'_>,
    base: &TemplateFile,
    trace: Option<&Trace>,
) -> Result<StagedFile, PackError> {
    let file = base.file();
    let size = base.size();
    let block_size = base.block_size();
    super::options::check_frame_grid(ctx.opts, file, block_size)?;
    let mut first = trace.map_or_else(Vec::new, |t| first_touch_blocks(t, block_size, size));
    // A short last block goes last, so every other block keeps a storage
    // offset on the block grid (E2B's rule, checked in `finish`).
    if !size.is_multiple_of(block_size)
        && let Some(at) = first.iter().position(|&b| b == size / block_size)
    {
        let tail = first.remove(at);
        first.push(tail);
    }

    let path = ctx.dir.join(file.name());
    let io_err = |source| PackError::Io {
        path: path.clone(),
        source,
    };
    let mut diff = stage::new_staged_file(&path)?;
    let mut hasher = Sha256::new();
    // (template offset, length, storage offset) of each copied block.
    let mut copied: Vec<(u64, u64, u64)> = Vec::new();
    let mut diff_size = 0u64;
    let per_item = (ITEM_BYTES / block_size).max(1) as usize;
    ordered_map(
        first.len().div_ceil(per_item),
        ctx.threads,
        |i| {
            let blocks = &first[i * per_item..((i + 1) * per_item).min(first.len())];
            blocks
                .iter()
                .map(|&b| {
                    let start = b * block_size;
                    read_base(base, start, (start + block_size).min(size)).map(|d| (start, d))
                })
                .collect::<Result<Vec<_>, _>>()
        },
        |_, blocks| {
            for (start, data) in blocks {
                // Zeros are stored nowhere: the base's mapping stays.
                if data.iter().all(|&b| b == 0) {
                    continue;
                }
                diff.write_all(&data).map_err(io_err)?;
                hasher.update(&data);
                copied.push((start, data.len() as u64, diff_size));
                diff_size += data.len() as u64;
            }
            Ok::<(), PackError>(())
        },
    )?;

    copied.sort_unstable_by_key(|c| c.0);
    let base_maps = &base.header().mappings;
    let mut mappings = Vec::with_capacity(base_maps.len() + 2 * copied.len());
    let mut off = 0u64;
    for &(start, len, storage) in &copied {
        copy_base_range(base_maps, off, start, &mut mappings);
        mappings.push(Mapping {
            offset: start,
            length: len,
            build_id: ctx.build_id,
            storage_offset: storage,
        });
        off = start + len;
    }
    copy_base_range(base_maps, off, size, &mut mappings);
    let zero_bytes = mappings
        .iter()
        .filter(|m| m.is_zero())
        .map(|m| m.length)
        .sum::<u64>();
    let counts = Counts {
        zero_bytes,
        unchanged_bytes: size - zero_bytes - diff_size,
        changed_bytes: diff_size,
    };
    let raw = RawDiff {
        path: path.clone(),
        file: diff,
        size: diff_size,
        sha256: hasher.finalize().into(),
        mappings,
    };
    let shape = TemplateShape {
        file,
        size,
        block_size,
    };
    stage::finish(ctx, shape, raw, counts)
}

/// Bytes `[start, end)` of the base's template file.
fn read_base(base: &TemplateFile, start: u64, end: u64) -> Result<Vec<u8>, PackError> {
    let mut buf = vec![0u8; (end - start) as usize];
    let mut filled = 0;
    while filled < buf.len() {
        let n = base
            .read_at(&mut buf[filled..], start + filled as u64)
            .map_err(|source| PackError::Base {
                build: base.build_id(),
                file: base.file(),
                source,
            })?;
        if n == 0 {
            return Err(PackError::Internal(format!(
                "the base's {} ended at {} inside its size",
                base.file(),
                start + filled as u64
            )));
        }
        filled += n;
    }
    Ok(buf)
}

/// The base's snapfile, staged in `dir` for the layer (a VM restores from
/// the layer alone); `None` when the base has none.
fn copy_snapfile(store: &dyn Store, base: Uuid, dir: &Path) -> Result<Option<PathBuf>, PackError> {
    let key = ObjectKey::blob(base, Blob::Snapfile);
    let size = match store.size(&key) {
        Ok(size) => size,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let path = dir.join("snapfile");
    let io_err = |source| PackError::Io {
        path: path.clone(),
        source,
    };
    let mut out = File::create(&path).map_err(io_err)?;
    let copied = std::io::copy(&mut store.read_range(&key, 0, size)?, &mut out).map_err(io_err)?;
    if copied != size {
        return Err(StoreError::ShortRead {
            key: key.to_string(),
            expected: size,
            got: copied,
        }
        .into());
    }
    Ok(Some(path))
}

/// The layer's metadata.json: the base's (every key kept) with
/// `template.build_id` set to the layer and the traces set under
/// `prefetch`; a minimal one when the base has none that is a JSON object.
fn layer_metadata(
    base_metadata: Option<&[u8]>,
    build_id: Uuid,
    base: Uuid,
    traces: &[(FileKind, Trace)],
) -> Result<Vec<u8>, PackError> {
    let doc = base_metadata
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .filter(Value::is_object)
        .map(|mut doc| {
            if let Some(template) = doc.get_mut("template").and_then(Value::as_object_mut) {
                template.insert("build_id".into(), Value::String(build_id.to_string()));
            }
            doc
        })
        .unwrap_or_else(|| super::default_metadata(build_id, Some(base)));
    let bytes = serde_json::to_vec(&doc).map_err(|e| PackError::Internal(e.to_string()))?;
    let traces: Vec<(FileKind, &Trace)> = traces.iter().map(|(f, t)| (*f, t)).collect();
    trace::merge_into_metadata(Some(&bytes), &traces, || Value::Null)
        .map_err(|e| PackError::Internal(format!("the layer's metadata.json: {e}")))
}
