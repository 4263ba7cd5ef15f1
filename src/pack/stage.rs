//! Staging one template file: diff the image against the base's view
//! (`scan`), compress the diff into frames (`frames`), build the builds
//! section and header (`layout`). The result sits in the scratch directory,
//! ready to upload; nothing is written to the store here.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Instant;

use uuid::Uuid;

use super::options::{DEFAULT_MEMFILE_BLOCK_SIZE, ROOTFS_BLOCK_SIZE};
use super::progress::byte_bar;
use super::{FileReport, PackError, PackOptions, frames, layout, scan};
use crate::codec::DEFAULT_ZSTD_LEVEL;
use crate::format::{
    BuildEntry, Compression, FileKind, FrameTable, Header, Mappings, Metadata, ObjectKey, PAGE_SIZE,
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

    let diff_path = dir.join(file.name());
    let mut diff = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&diff_path)
        .map_err(io_err(&diff_path))?;
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

    let (data_path, own_frames, stored_size) = if opts.compression == Compression::None {
        (diff_path, FrameTable::uncompressed(), scanned.diff_size)
    } else {
        let packed_path = dir.join(format!("{}{}", file.name(), opts.compression.suffix()));
        let mut packed = File::create(&packed_path).map_err(io_err(&packed_path))?;
        let bar = byte_bar(
            opts.progress,
            scanned.diff_size,
            &format!("{} {}", opts.compression.name(), file.name()),
        );
        let started = Instant::now();
        let compressed = frames::compress_diff(
            &frames::FrameJob {
                diff: &diff,
                diff_size: scanned.diff_size,
                compression: opts.compression,
                level: opts.level.unwrap_or(DEFAULT_ZSTD_LEVEL),
                frame_size: opts.frame_size,
                threads,
            },
            &mut packed,
            &bar,
        )?;
        bar.finish_and_clear();
        log::debug!(
            "{file}: compressed {} bytes to {} in {:?}",
            scanned.diff_size,
            compressed.size,
            started.elapsed()
        );
        drop(diff);
        let _ = fs::remove_file(&diff_path);
        (packed_path, compressed.frames, compressed.size)
    };
    let frame_count = own_frames.frames().len();

    let mappings = Mappings::new(scanned.mappings, size)
        .map_err(|source| PackError::Encode { file, source })?
        .normalized();
    let own = BuildEntry {
        build_id,
        file_size: scanned.diff_size,
        sha256: scanned.diff_sha256,
        frames: own_frames,
    };
    let builds = match base {
        Some(b) => {
            let mut ancestors = layout::AncestorEntries::new(store, builds, file, b.header());
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
        Some(b) => (
            b.header().metadata.generation + 1,
            b.header().metadata.base_build_id,
        ),
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

    // An empty diff has no frames, which the format reads as "uncompressed":
    // store it as an empty uncompressed object so the header and the object
    // agree (a zero-length .zstd/.lz4 object is not a valid stream either).
    let stored_as = if scanned.diff_size == 0 {
        Compression::None
    } else {
        opts.compression
    };
    Ok(StagedFile {
        file,
        data_key: ObjectKey::data(build_id, file, stored_as),
        data_path,
        uncompressed_size: (stored_as != Compression::None).then_some(scanned.diff_size),
        header: header_bytes,
        report: FileReport {
            file,
            size,
            block_size,
            header_version: version,
            mappings: mapping_count,
            zero_bytes: scanned.zero_bytes,
            unchanged_bytes: scanned.unchanged_bytes,
            changed_bytes: scanned.changed_bytes,
            diff_size: scanned.diff_size,
            stored_size,
            frames: frame_count,
        },
    })
}
