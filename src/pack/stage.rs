//! Staging one template file: diff the image against the base's view
//! (`scan`), put the trace's blocks first (`working_set`, unless the
//! template layout is asked for), compress the diff into frames (`frames`),
//! build the builds section and header (`layout`) and check it against
//! E2B's rules (`e2b_rules`). The result sits in the scratch directory,
//! ready to upload; nothing is written to the store here.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::footprint::footprint;
use super::options::{DEFAULT_MEMFILE_BLOCK_SIZE, ROOTFS_BLOCK_SIZE};
use super::progress::byte_bar;
use super::working_set::{Layout, Move, first_touch_blocks, working_set_first};
use super::{FileReport, PackError, PackOptions, e2b_rules, frames, layout, scan};
use crate::codec::DEFAULT_ZSTD_LEVEL;
use crate::format::trace::Trace;
use crate::format::{
    BuildEntry, Compression, FileKind, FrameTable, Header, Mapping, Mappings, Metadata, ObjectKey,
    PAGE_SIZE,
};
use crate::store::Store;
use crate::template::{Builds, TemplateFile};

/// One template file, packed and staged, ready to upload.
pub(super) struct StagedFile {
    pub(super) file: FileKind,
    pub(super) data_key: ObjectKey,
    pub(super) data_path: PathBuf,
    pub(super) uncompressed_size: Option<u64>,
    pub(super) header: Vec<u8>,
    pub(super) report: FileReport,
}

/// The block size of the new build's `file`: `--memfile-block-size`, else
/// the base's, else the default (2 MiB memfile, 4 KiB rootfs).
///
/// # Errors
/// `BadInput` when the base's is not a multiple of 4 KiB.
pub(super) fn block_size(
    opts: &PackOptions,
    file: FileKind,
    base: Option<&TemplateFile>,
) -> Result<u64, PackError> {
    let base_block_size = base.map(TemplateFile::block_size);
    let block_size = match file {
        FileKind::Memfile => opts
            .memfile_block_size
            .or(base_block_size)
            .unwrap_or(DEFAULT_MEMFILE_BLOCK_SIZE),
        FileKind::Rootfs => base_block_size.unwrap_or(ROOTFS_BLOCK_SIZE),
    };
    if block_size == 0 || block_size % PAGE_SIZE != 0 {
        return Err(PackError::BadInput(format!(
            "the base's {file} block size {block_size} is not a multiple of 4 KiB; \
             tdfs packs whole pages (for the memfile, pass --memfile-block-size)"
        )));
    }
    Ok(block_size)
}
/// Bytes copied at a time when the diff is put in working-set order.
const COPY_PIECE: u64 = 4 << 20;

/// Diff, compress and encode the header of one template file, staged under
/// `dir`; nothing is uploaded yet.
#[allow(clippy::too_many_arguments)]
pub(super) fn stage_file(
    store: &dyn Store,
    builds: &Builds,
    opts: &PackOptions,
    dir: &Path,
    file: FileKind,
    image_path: &Path,
    base: Option<&TemplateFile>,
    build_id: Uuid,
    threads: usize,
    trace: Option<&Trace>,
) -> Result<StagedFile, PackError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackError::Io { path, source }
    };
    let image = File::open(image_path).map_err(io_err(image_path))?;
    let size = image.metadata().map_err(io_err(image_path))?.len();
    if size == 0 || size % PAGE_SIZE != 0 {
        return Err(PackError::BadInput(format!(
            "{}: the {file} image is {size} bytes; it must be a non-empty multiple of 4096 \
             (the page size)",
            image_path.display()
        )));
    }
    let block_size = block_size(opts, file, base)?;

    super::options::check_frame_grid(opts, file, block_size)?;

    let diff_path = dir.join(file.name());
    let mut diff = new_staged_file(&diff_path)?;
    let bar = byte_bar(opts.progress, size, &format!("diff {}", file.name()));
    let started = Instant::now();
    let scanned = scan::scan(
        &scan::ScanInput {
            file,
            image: &image,
            image_path,
            size,
            block_size,
            own: build_id,
            base,
            threads,
        },
        &mut diff,
        &bar,
    )?;
    bar.finish_and_clear();
    log::debug!(
        "{file}: diffed {size} bytes in {:?}: {} changed, {} kept, {} zeros",
        started.elapsed(),
        scanned.changed_bytes,
        scanned.unchanged_bytes,
        scanned.zero_bytes
    );

    let counts = Counts {
        zero_bytes: scanned.zero_bytes,
        unchanged_bytes: scanned.unchanged_bytes,
        changed_bytes: scanned.changed_bytes,
    };
    let mut raw = RawDiff {
        path: diff_path,
        file: diff,
        size: scanned.diff_size,
        sha256: scanned.diff_sha256,
        mappings: scanned.mappings,
    };
    let mappings = Mappings::new(std::mem::take(&mut raw.mappings), size)
        .map_err(|source| PackError::Encode { file, source })?;
    raw.mappings = match trace {
        Some(trace) if opts.layout == Layout::WorkingSet => {
            let first = first_touch_blocks(trace, block_size, size);
            let relayout = working_set_first(&mappings, build_id, block_size, &first);
            raw = reorder(dir, file, raw, &relayout.moves)?;
            relayout.mappings
        }
        _ => mappings.as_slice().to_vec(),
    };
    let template = TemplateShape {
        file,
        size,
        block_size,
    };
    finish(
        &Finish {
            store,
            builds,
            opts,
            dir,
            base: base.map(TemplateFile::header),
            build_id,
            threads,
            trace,
        },
        template,
        raw,
        counts,
    )
}

/// Bytes of the template file by what they are (see `FileReport`).
pub(super) struct Counts {
    pub(super) zero_bytes: u64,
    pub(super) unchanged_bytes: u64,
    pub(super) changed_bytes: u64,
}

/// The template file a header describes.
#[derive(Clone, Copy)]
pub(super) struct TemplateShape {
    pub(super) file: FileKind,
    /// Bytes.
    pub(super) size: u64,
    pub(super) block_size: u64,
}

/// A build's own diff, uncompressed, staged in the scratch directory, with
/// the mappings (template order, covering the file) that read it.
pub(super) struct RawDiff {
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// Bytes.
    pub(super) size: u64,
    pub(super) sha256: [u8; 32],
    pub(super) mappings: Vec<Mapping>,
}

/// What every staged file shares: where it goes and what it lies on.
pub(super) struct Finish<'a> {
    pub(super) store: &'a dyn Store,
    pub(super) builds: &'a Builds,
    pub(super) opts: &'a PackOptions,
    pub(super) dir: &'a Path,
    /// The base's header; `None` for a fresh build.
    pub(super) base: Option<&'a Header>,
    pub(super) build_id: Uuid,
    pub(super) threads: usize,
    /// The file's trace, for the report's footprint.
    pub(super) trace: Option<&'a Trace>,
}

/// A new file at `path` in the scratch directory, open to write and read
/// back.
///
/// # Errors
/// `Io` when it exists or cannot be made.
pub(super) fn new_staged_file(path: &Path) -> Result<File, PackError> {
    File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| PackError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Copy `raw`'s bytes into a new staged diff along `moves` (sorted by
/// destination, covering it), hashing the new order.
fn reorder(dir: &Path, file: FileKind, raw: RawDiff, moves: &[Move]) -> Result<RawDiff, PackError> {
    let path = dir.join(format!("{}.working-set", file.name()));
    let io_err = |source| PackError::Io {
        path: path.clone(),
        source,
    };
    let mut out = new_staged_file(&path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_PIECE as usize];
    let mut written = 0u64;
    for mv in moves {
        if mv.to != written {
            return Err(PackError::Internal(format!(
                "working-set layout of {file}: a copy to {} after {written} bytes",
                mv.to
            )));
        }
        let mut done = 0;
        while done < mv.len {
            let n = (mv.len - done).min(COPY_PIECE) as usize;
            raw.file
                .read_exact_at(&mut buf[..n], mv.from + done)
                .map_err(|source| PackError::Io {
                    path: raw.path.clone(),
                    source,
                })?;
            out.write_all(&buf[..n]).map_err(io_err)?;
            hasher.update(&buf[..n]);
            done += n as u64;
        }
        written += mv.len;
    }
    if written != raw.size {
        return Err(PackError::Internal(format!(
            "working-set layout of {file}: {written} bytes copied of {}",
            raw.size
        )));
    }
    drop(raw.file);
    let _ = fs::remove_file(&raw.path);
    Ok(RawDiff {
        path,
        file: out,
        size: written,
        sha256: hasher.finalize().into(),
        mappings: Vec::new(),
    })
}

/// Compress `raw` (unless uncompressed), build the builds section and the
/// header, and check the encoded header against E2B's rules.
pub(super) fn finish(
    ctx: &Finish<'_>,
    template: TemplateShape,
    raw: RawDiff,
    counts: Counts,
) -> Result<StagedFile, PackError> {
    let TemplateShape {
        file,
        size,
        block_size,
    } = template;
    let (opts, dir, base, build_id) = (ctx.opts, ctx.dir, ctx.base, ctx.build_id);
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackError::Io { path, source }
    };
    let RawDiff {
        path: diff_path,
        file: diff,
        size: diff_size,
        sha256,
        mappings,
    } = raw;
    let (data_path, own_frames, stored_size) = if opts.compression == Compression::None {
        (diff_path, FrameTable::uncompressed(), diff_size)
    } else {
        let packed_path = dir.join(format!("{}{}", file.name(), opts.compression.suffix()));
        let mut packed = File::create(&packed_path).map_err(io_err(&packed_path))?;
        let bar = byte_bar(
            opts.progress,
            diff_size,
            &format!("{} {}", opts.compression.name(), file.name()),
        );
        let started = Instant::now();
        let compressed = frames::compress_diff(
            &frames::FrameJob {
                diff: &diff,
                diff_size,
                compression: opts.compression,
                level: opts.level.unwrap_or(DEFAULT_ZSTD_LEVEL),
                frame_size: opts.frame_size,
                threads: ctx.threads,
            },
            &mut packed,
            &bar,
        )?;
        bar.finish_and_clear();
        log::debug!(
            "{file}: compressed {} bytes to {} in {:?}",
            diff_size,
            compressed.size,
            started.elapsed()
        );
        drop(diff);
        let _ = fs::remove_file(&diff_path);
        (packed_path, compressed.frames, compressed.size)
    };
    let frame_count = own_frames.frames().len();

    let mappings = Mappings::new(mappings, size)
        .map_err(|source| PackError::Encode { file, source })?
        .normalized();
    let own = BuildEntry {
        build_id,
        file_size: diff_size,
        sha256,
        frames: own_frames,
    };
    let builds = match base {
        Some(b) => {
            let mut ancestors = layout::AncestorEntries::new(ctx.store, ctx.builds, file, b);
            layout::builds_section(mappings.as_slice(), own, |id| ancestors.entry(id))?
        }
        None => layout::builds_section(mappings.as_slice(), own, |id| {
            Err(PackError::Internal(format!(
                "a fresh build references build {id}"
            )))
        })?,
    };
    let version = layout::choose_version(opts.header_version, opts.compression, &builds)?;
    let (generation, base_build_id) = match base {
        Some(b) => (b.metadata.generation + 1, b.metadata.base_build_id),
        None => (0, build_id),
    };
    let mapping_count = mappings.len();
    let header = Header {
        metadata: Metadata {
            version: u64::from(version),
            block_size,
            size,
            generation,
            build_id,
            base_build_id,
        },
        builds: if version >= 4 { builds } else { Vec::new() },
        mappings,
    };
    let header_bytes = header
        .encode(version)
        .map_err(|source| PackError::Encode { file, source })?;
    // The header as a reader will see it, checked before anything is
    // uploaded: a layout E2B would misread is a bug, never a build.
    let written =
        Header::decode(&header_bytes).map_err(|source| PackError::Encode { file, source })?;
    let broken = if written.mappings != header.mappings {
        Err("the decoded mappings differ from the ones encoded".to_string())
    } else {
        e2b_rules::check(&written, diff_size, opts.frame_size)
    };
    broken.map_err(|rule| PackError::BrokenLayout { file, rule })?;
    let trace = ctx.trace.map(|t| footprint(&written, t));

    // An empty diff has no frames, which the format reads as "uncompressed":
    // store it as an empty uncompressed object so the header and the object
    // agree (a zero-length .zstd/.lz4 object is not a valid stream either).
    let stored_as = if diff_size == 0 {
        Compression::None
    } else {
        opts.compression
    };
    Ok(StagedFile {
        file,
        data_key: ObjectKey::data(build_id, file, stored_as),
        data_path,
        uncompressed_size: (stored_as != Compression::None).then_some(diff_size),
        header: header_bytes,
        report: FileReport {
            file,
            size,
            block_size,
            header_version: version,
            mappings: mapping_count,
            zero_bytes: counts.zero_bytes,
            unchanged_bytes: counts.unchanged_bytes,
            changed_bytes: counts.changed_bytes,
            diff_size,
            stored_size,
            frames: frame_count,
            layout: opts.layout,
            trace,
        },
    })
}
