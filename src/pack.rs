//! The write side: diff raw images against a base build's view, compress
//! frames, encode headers and upload a build.
//!
//! A build's objects are written in a fixed order: the data objects, the
//! snapfile and `metadata.json` first, the two `.header` objects last. Each
//! object is written atomically, so a reader either finds a header or not;
//! a build whose headers are missing is incomplete (an interrupted pack) and
//! is not shown by readers.

pub mod demo;
mod frames;
mod layout;
mod parallel;
mod progress;
mod scan;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use uuid::Uuid;

pub use parallel::{default_threads, ordered_map};
pub use progress::byte_bar;

use crate::codec::DEFAULT_ZSTD_LEVEL;
use crate::format::limits::MAX_FRAME_SIZE;
use crate::format::{
    Blob, BuildEntry, Compression, FileKind, FormatError, FrameTable, Header, Mappings, Metadata,
    ObjectKey, PAGE_SIZE,
};
use crate::store::{PutOptions, Store, StoreError};
use crate::template::{Builds, TemplateConfig, TemplateError, TemplateFile};

/// Default uncompressed frame size: the 2 MiB hugepage E2B's writers use.
pub const DEFAULT_FRAME_SIZE: u64 = 2 << 20;
/// Default memfile block size of a fresh build (hugepages).
pub const DEFAULT_MEMFILE_BLOCK_SIZE: u64 = 2 << 20;
/// Block size of every rootfs.
pub const ROOTFS_BLOCK_SIZE: u64 = 4096;

/// Why a build could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    BadOption(String),
    #[error(
        "build {0} already exists in the store (builds are immutable; pick another --build-id)"
    )]
    BuildExists(Uuid),
    #[error("reading {file} of base build {build}: {source}")]
    Base {
        build: Uuid,
        file: FileKind,
        #[source]
        source: TemplateError,
    },
    #[error("opening base build {build}: {source}")]
    BaseOpen {
        build: Uuid,
        #[source]
        source: TemplateError,
    },
    #[error(
        "{file} of ancestor build {build} has no diff object {key}; the base chain is incomplete"
    )]
    MissingAncestor {
        build: Uuid,
        file: FileKind,
        key: String,
    },
    #[error("header {key} is corrupt: {source}")]
    CorruptHeader {
        key: String,
        #[source]
        source: FormatError,
    },
    #[error("{compression:?} compression of frame {frame} failed: {message}")]
    Compress {
        compression: Compression,
        frame: usize,
        message: String,
    },
    #[error("encoding the {file} header: {source}")]
    Encode {
        file: FileKind,
        #[source]
        source: FormatError,
    },
    #[error("{0}")]
    Tool(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

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
        }
    }
}

/// The raw files of a build.
#[derive(Debug, Clone)]
pub struct PackInputs {
    pub memfile: PathBuf,
    pub rootfs: PathBuf,
    pub snapfile: Option<PathBuf>,
    /// `metadata.json` to store as is; `None` writes a minimal E2B-style one.
    pub metadata: Option<PathBuf>,
}

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
}

/// What `pack_build` wrote.
#[derive(Debug, Clone)]
pub struct PackReport {
    pub build_id: Uuid,
    pub base_build_id: Uuid,
    pub generation: u64,
    pub files: Vec<FileReport>,
}

/// One template file, packed and staged, ready to upload.
struct StagedFile {
    file: FileKind,
    data_key: ObjectKey,
    data_path: PathBuf,
    uncompressed_size: Option<u64>,
    header: Vec<u8>,
    report: FileReport,
}

/// A private scratch directory (staged objects, a read cache), removed on
/// drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// A new directory under `parent`, or under the system temp directory.
    pub fn new(parent: Option<&Path>) -> Result<Self, PackError> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let path = parent.join(format!("tdfs-pack-{}", Uuid::new_v4().simple()));
        fs::create_dir_all(&path).map_err(|source| PackError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Pack `inputs` as a new build in `store` (a layer on `opts.base`, or a
/// fresh build) and upload it, headers last.
pub fn pack_build(
    store: Arc<dyn Store>,
    opts: &PackOptions,
    inputs: &PackInputs,
) -> Result<PackReport, PackError> {
    check_options(opts)?;
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
    let staging = ScratchDir::new(opts.work_dir.as_deref())?;
    let threads = if opts.threads == 0 {
        default_threads()
    } else {
        opts.threads
    };

    let bases = match opts.base {
        Some(base) => {
            let config = TemplateConfig::for_tool(staging.path.join("base-cache"));
            let builds = Builds::new(store.clone(), config);
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

    let mut staged = Vec::with_capacity(2);
    for file in FileKind::ALL {
        let image = match file {
            FileKind::Memfile => &inputs.memfile,
            FileKind::Rootfs => &inputs.rootfs,
        };
        let base = bases.as_ref().map(|(m, r)| match file {
            FileKind::Memfile => m,
            FileKind::Rootfs => r,
        });
        staged.push(stage_file(
            store.as_ref(),
            opts,
            &staging.path,
            file,
            image,
            base,
            build_id,
            threads,
        )?);
    }

    let started = Instant::now();
    for s in &staged {
        store.put_file(
            &s.data_key,
            &s.data_path,
            PutOptions {
                uncompressed_size: s.uncompressed_size,
            },
        )?;
    }
    if let Some(snapfile) = &inputs.snapfile {
        store.put_file(
            &ObjectKey::blob(build_id, Blob::Snapfile),
            snapfile,
            PutOptions::default(),
        )?;
    }
    let metadata_key = ObjectKey::blob(build_id, Blob::Metadata);
    match &inputs.metadata {
        Some(path) => store.put_file(&metadata_key, path, PutOptions::default())?,
        None => store.put_bytes(&metadata_key, &default_metadata(build_id, opts.base))?,
    }
    for s in &staged {
        store.put_bytes(&ObjectKey::header(build_id, s.file), &s.header)?;
    }
    log::debug!("uploaded build {build_id} in {:?}", started.elapsed());

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

fn check_options(opts: &PackOptions) -> Result<(), PackError> {
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

/// Diff, compress and encode the header of one template file, staged under
/// `dir`; nothing is uploaded yet.
#[allow(clippy::too_many_arguments)]
fn stage_file(
    store: &dyn Store,
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
            let mut ancestors = layout::AncestorEntries::new(store, file, b.header());
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

/// A minimal `metadata.json` in E2B's shape, for builds packed without one.
fn default_metadata(build_id: Uuid, base: Option<Uuid>) -> Vec<u8> {
    let value = serde_json::json!({
        "version": 2,
        "template": { "build_id": build_id.to_string() },
        "from_template": base.map(|b| serde_json::json!({ "build_id": b.to_string() })),
    });
    serde_json::to_vec_pretty(&value).expect("a JSON value serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    /// A store directory and two small images (`pages` pages of varied
    /// bytes each).
    fn setup(pages: usize) -> (tempfile::TempDir, Arc<dyn Store>, PackInputs) {
        let dir = tempfile::tempdir().unwrap();
        let image: Vec<u8> = (0..pages * PAGE_SIZE as usize)
            .map(|i| (i * 7 / 4096 % 251) as u8)
            .collect();
        let memfile = dir.path().join("mem.img");
        let rootfs = dir.path().join("root.img");
        fs::write(&memfile, &image).unwrap();
        fs::write(&rootfs, &image).unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::create(dir.path().join("store")).unwrap());
        let inputs = PackInputs {
            memfile,
            rootfs,
            snapfile: None,
            metadata: None,
        };
        (dir, store, inputs)
    }

    #[test]
    fn frame_size_over_the_mount_limit_is_refused_before_anything_is_written() {
        let (dir, store, inputs) = setup(8);
        let opts = PackOptions {
            frame_size: 128 << 20,
            work_dir: Some(dir.path().to_path_buf()),
            ..PackOptions::default()
        };
        let err = pack_build(store.clone(), &opts, &inputs).unwrap_err();
        assert!(matches!(err, PackError::BadOption(_)), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("--frame-size 134217728 bytes")
                && message.contains("largest frame a mount serves (64 MiB)"),
            "{message}"
        );
        assert_eq!(store.list_builds().unwrap(), Vec::<Uuid>::new());
        assert_eq!(fs::read_dir(dir.path().join("store")).unwrap().count(), 0);
    }

    #[test]
    fn frame_size_at_the_mount_limit_packs() {
        let (dir, store, inputs) = setup(8);
        let opts = PackOptions {
            frame_size: u64::from(MAX_FRAME_SIZE),
            work_dir: Some(dir.path().to_path_buf()),
            ..PackOptions::default()
        };
        let report = pack_build(store.clone(), &opts, &inputs).unwrap();
        assert_eq!(store.list_builds().unwrap(), vec![report.build_id]);
    }
}
