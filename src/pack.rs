//! The write side: diff raw images against a base build's view, compress
//! frames, encode headers and upload a build.
//!
//! A build's objects are written in a fixed order: the data objects, the
//! snapfile and `metadata.json` first, the two `.header` objects last. Each
//! object is written atomically, so a reader either finds a header or not;
//! a build whose headers are missing is incomplete (an interrupted pack) and
//! is not shown by readers.

pub mod demo;
mod e2b_rules;
mod error;
mod footprint;
mod frames;
mod layout;
mod options;
mod parallel;
mod progress;
mod scan;
mod scratch;
mod stage;
mod trace;
mod working_set;
mod working_set_layer;

use std::sync::Arc;
use std::time::Instant;

use uuid::Uuid;

pub use error::PackError;
pub use footprint::{Footprint, footprint};
pub use options::{
    DEFAULT_FRAME_SIZE, DEFAULT_MEMFILE_BLOCK_SIZE, PackInputs, PackOptions, ROOTFS_BLOCK_SIZE,
};
pub use parallel::{default_threads, ordered_map};
pub use progress::byte_bar;
pub use scratch::ScratchDir;
pub use working_set::Layout;
pub use working_set_layer::{LayerTraces, working_set_layer};

use crate::format::trace::Trace;
use crate::format::{Blob, FileKind, ObjectKey};
use crate::store::{PutOptions, Store, WritableStore};
use crate::template::{Builds, TemplateConfig};

/// What was written for one template file.
#[derive(Debug, Clone)]
pub struct FileReport {
    pub file: FileKind,
    pub size: u64,
    pub block_size: u64,
    pub header_version: u16,
    pub mappings: usize,
    pub zero_bytes: u64,
    pub unchanged_bytes: u64,
    pub changed_bytes: u64,
    /// Uncompressed diff size.
    pub diff_size: u64,
    /// Size of the stored data object.
    pub stored_size: u64,
    pub frames: usize,
    /// The layout asked for (`Template` is what a working-set pack
    /// without a trace amounts to).
    pub layout: Layout,
    /// What a replay of the file's trace costs in the written header;
    /// `None` without a trace.
    pub trace: Option<Footprint>,
}

/// What `pack_build` wrote.
#[derive(Debug, Clone)]
pub struct PackReport {
    pub build_id: Uuid,
    pub base_build_id: Uuid,
    pub generation: u64,
    pub files: Vec<FileReport>,
}

/// Pack `inputs` as a new build in `store` (a layer on `opts.base`, or a
/// fresh build) and upload it, headers last.
pub fn pack_build(
    store: Arc<dyn WritableStore>,
    opts: &PackOptions,
    inputs: &PackInputs,
) -> Result<PackReport, PackError> {
    options::check_options(opts)?;
    let build_id = new_build_id(store.as_ref(), opts)?;
    // Before any work: a bad trace or metadata fails the pack at once.
    let traces = read_traces(inputs)?;
    let metadata = match &inputs.metadata {
        Some(path) if traces.is_empty() => MetadataSource::File(path),
        given => {
            let minimal = default_metadata(build_id, opts.base);
            MetadataSource::Bytes(trace::metadata_with(given.as_deref(), &traces, minimal)?)
        }
    };
    let staging = ScratchDir::new(opts.work_dir.as_deref())?;
    let threads = if opts.threads == 0 {
        default_threads()
    } else {
        opts.threads
    };

    // One `Builds` reads the base and loads its ancestors' headers.
    let builds = Builds::new(
        store.clone(),
        TemplateConfig::for_tool(staging.path().join("base-cache")),
    );
    let bases = match opts.base {
        Some(base) => {
            let open = |file| {
                builds
                    .open(base, file)
                    .map_err(|source| PackError::BaseOpen {
                        build: base,
                        source,
                    })
            };
            Some((open(FileKind::Memfile)?, open(FileKind::Rootfs)?))
        }
        None => None,
    };

    let base_of = |file| {
        bases.as_ref().map(|(m, r)| match file {
            FileKind::Memfile => m,
            FileKind::Rootfs => r,
        })
    };
    // Both files before either is staged: a bad rootfs grid must not cost a
    // memfile diff first.
    for file in FileKind::ALL {
        let block_size = stage::block_size(opts, file, base_of(file))?;
        options::check_frame_grid(opts, file, block_size)?;
    }

    let mut staged = Vec::with_capacity(2);
    for file in FileKind::ALL {
        let image = match file {
            FileKind::Memfile => &inputs.memfile,
            FileKind::Rootfs => &inputs.rootfs,
        };
        let trace = traces.iter().find(|(f, _)| *f == file).map(|(_, t)| t);
        staged.push(stage::stage_file(
            store.as_ref(),
            &builds,
            opts,
            staging.path(),
            file,
            image,
            base_of(file),
            build_id,
            threads,
            trace,
        )?);
    }

    upload(
        store.as_ref(),
        build_id,
        &staged,
        inputs.snapfile.as_deref(),
        metadata,
    )?;

    let (generation, base_build_id) = match &bases {
        Some((mem, _)) => (
            mem.header().metadata.generation + 1,
            mem.header().metadata.base_build_id,
        ),
        None => (0, build_id),
    };
    Ok(PackReport {
        build_id,
        base_build_id,
        generation,
        files: staged.into_iter().map(|s| s.report).collect(),
    })
}

/// The id of the new build: `opts.build_id` or a random one, refused when
/// nil or already in `store`.
fn new_build_id(store: &dyn Store, opts: &PackOptions) -> Result<Uuid, PackError> {
    let build_id = opts.build_id.unwrap_or_else(Uuid::new_v4);
    if build_id.is_nil() {
        return Err(PackError::BadOption(
            "the nil UUID means \"zeros\" in headers and cannot be a build id".to_string(),
        ));
    }
    for file in FileKind::ALL {
        if store.exists(&ObjectKey::header(build_id, file))? {
            return Err(PackError::BuildExists(build_id));
        }
    }
    Ok(build_id)
}

/// The `metadata.json` a build gets: a given file stored as it is, or
/// bytes pack wrote.
enum MetadataSource<'a> {
    File(&'a std::path::Path),
    Bytes(Vec<u8>),
}

/// Upload a staged build: the data objects, the snapfile and
/// `metadata.json` first, the two headers last (a build without headers is
/// an interrupted pack and is not shown).
fn upload(
    store: &dyn WritableStore,
    build_id: Uuid,
    staged: &[stage::StagedFile],
    snapfile: Option<&std::path::Path>,
    metadata: MetadataSource<'_>,
) -> Result<(), PackError> {
    let started = Instant::now();
    for s in staged {
        store.put_file(
            &s.data_key,
            &s.data_path,
            PutOptions {
                uncompressed_size: s.uncompressed_size,
            },
        )?;
    }
    if let Some(snapfile) = snapfile {
        store.put_file(
            &ObjectKey::blob(build_id, Blob::Snapfile),
            snapfile,
            PutOptions::default(),
        )?;
    }
    let metadata_key = ObjectKey::blob(build_id, Blob::Metadata);
    match metadata {
        MetadataSource::File(path) => store.put_file(&metadata_key, path, PutOptions::default())?,
        MetadataSource::Bytes(bytes) => store.put_bytes(&metadata_key, &bytes)?,
    }
    for s in staged {
        store.put_bytes(&ObjectKey::header(build_id, s.file), &s.header)?;
    }
    log::debug!("uploaded build {build_id} in {:?}", started.elapsed());
    Ok(())
}

/// A minimal `metadata.json` in E2B's shape, for builds packed without one:
/// version 2, E2B's current, the lowest whose fields (the trace) E2B reads.
fn default_metadata(build_id: Uuid, base: Option<Uuid>) -> serde_json::Value {
    serde_json::json!({
        "version": 2,
        "template": { "build_id": build_id.to_string() },
        "from_template": base.map(|b| serde_json::json!({ "build_id": b.to_string() })),
    })
}

/// The prefetch traces given (`--prefetch-memfile`, `--prefetch-rootfs`),
/// each checked against the size of its raw image.
fn read_traces(inputs: &PackInputs) -> Result<Vec<(FileKind, Trace)>, PackError> {
    let mut traces = Vec::new();
    for (file, trace, image) in [
        (FileKind::Memfile, &inputs.prefetch_memfile, &inputs.memfile),
        (FileKind::Rootfs, &inputs.prefetch_rootfs, &inputs.rootfs),
    ] {
        let Some(path) = trace else { continue };
        let size = std::fs::metadata(image)
            .map_err(|source| PackError::Io {
                path: image.clone(),
                source,
            })?
            .len();
        traces.push((file, trace::read_trace(path, file, size)?));
    }
    Ok(traces)
}

#[cfg(test)]
mod tests;
