//! The filesystem as the kernel sees it, minus the kernel: a tree of nodes
//! over `Builds` (root → build directories → template files and blobs, plus
//! `.stats`; each build directory with a header also has `diff/`, the
//! build's own diffs as files), their attributes, directory listings and
//! extended attributes. Opening, reading and releasing handles is in
//! `templatefs::open`; the handle types are `handles`. Every call returns a `Result`
//! the FUSE adapter replies with, so all of it can be driven by tests
//! without a mount.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{FileAttr, FileType, FopenFlags, INodeNo};
use uuid::Uuid;

use super::error::FsError;
use super::handles::{DirEntry, Handle, HandleTable};
use super::inode::{
    BuildDirFile, DIFF_DIR_NAME, InodeTable, Node, ROOT_INO, STATS_INO, STATS_NAME,
};
use super::passthrough::{Backing, Passthrough};
use super::takeover::Continuity;
use super::xattr;
use crate::format::{Blob, FileKind, Header, parse_build_id};
use crate::template::{BuildContents, Builds, DiffFile, TemplateError, TemplateFile};

mod open;
#[cfg(test)]
mod tests;

/// Attribute and entry lifetime of what never changes: a build, once
/// written, is immutable.
pub const IMMUTABLE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// What the mount shows besides the store's content.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Owner of every node.
    pub uid: u32,
    pub gid: u32,
}

/// The mounting user and group own every node, as they would own files
/// they had copied out of the store.
impl Default for FsConfig {
    fn default() -> Self {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        FsConfig { uid, gid }
    }
}

/// A node's attributes and how long the kernel may keep them.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub attr: FileAttr,
    pub ttl: Duration,
}

/// Answer to an open: the handle and the kernel caching flags, and for a
/// passthrough open the file the kernel is to read from (see
/// `fs::passthrough`).
#[derive(Debug)]
pub struct Opened {
    pub fh: u64,
    pub flags: FopenFlags,
    pub backing: Option<Backing>,
}

/// The filesystem. See the module docs.
pub struct TemplateFs {
    /// First, so it is dropped first: a handle the kernel never released
    /// (its RELEASE was lost when the mount ended) holds Chunkers whose
    /// cache files lie in the cache directory that `builds` removes.
    handles: HandleTable,
    pub(super) builds: Arc<Builds>,
    config: FsConfig,
    pub(super) inodes: InodeTable,
    /// Which opens of template files go straight to their flat files.
    passthrough: Passthrough,
    /// Timestamp of every node: the store keeps none.
    mounted_at: SystemTime,
}

impl TemplateFs {
    pub fn new(builds: Arc<Builds>, config: FsConfig) -> Self {
        TemplateFs {
            handles: HandleTable::default(),
            passthrough: Passthrough::new(builds.passthrough()),
            builds,
            config,
            inodes: InodeTable::default(),
            mounted_at: SystemTime::now(),
        }
    }

    /// The tree of a mount whose connection may be taken over: inodes from
    /// (and noted in) the saved table, handles numbered from this
    /// process's first (see `fs::takeover`).
    pub fn continuing(builds: Arc<Builds>, options: FsConfig, continuity: Continuity) -> Self {
        TemplateFs {
            handles: HandleTable::starting_at(continuity.first_handle),
            inodes: continuity.inodes,
            ..TemplateFs::new(builds, options)
        }
    }

    /// The entry `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Entry, FsError> {
        let text = || name.to_string_lossy().into_owned();
        let name = name.to_str().ok_or_else(|| FsError::NoEntry(text()))?;
        match self.node(parent)? {
            Node::Root if name == STATS_NAME => self.entry(STATS_INO, Node::Stats),
            Node::Root => {
                // Any canonical build id resolves, listed or not: listing a
                // big store is slow, probing one build is not.
                let build = parse_build_id(name).ok_or_else(|| FsError::NoEntry(text()))?;
                if !self.contents(build)?.any() {
                    return Err(FsError::NoEntry(text()));
                }
                let ino = self.inodes.build_ino(build);
                self.entry(ino, Node::Build(build))
            }
            Node::Build(build) if name == DIFF_DIR_NAME => {
                let ino = InodeTable::diff_dir_ino(self.inodes.build_ino(build));
                self.entry(ino, Node::DiffDir(build))
            }
            Node::Build(build) => {
                let file = BuildDirFile::from_name(name).ok_or_else(|| FsError::NoEntry(text()))?;
                let ino = InodeTable::file_ino(self.inodes.build_ino(build), file);
                self.entry(ino, Node::File(build, file))
            }
            Node::DiffDir(build) => {
                let file = FileKind::ALL
                    .into_iter()
                    .find(|f| f.name() == name)
                    .ok_or_else(|| FsError::NoEntry(text()))?;
                let ino = InodeTable::diff_ino(self.inodes.build_ino(build), file);
                self.entry(ino, Node::Diff(build, file))
            }
            Node::Stats | Node::File(..) | Node::Diff(..) => Err(FsError::NotADirectory),
        }
    }

    pub fn getattr(&self, ino: u64) -> Result<Entry, FsError> {
        let node = self.node(ino)?;
        self.entry(ino, node)
    }

    /// Snapshot the listing of directory `ino` into a new handle.
    pub fn opendir(&self, ino: u64) -> Result<Opened, FsError> {
        let (handle, flags) = self.dir_handle(ino)?;
        Ok(Opened {
            fh: self.handles.add(handle),
            flags,
            backing: None,
        })
    }

    /// The listing of directory `ino` as an open handle, and its caching
    /// flags.
    pub(super) fn dir_handle(&self, ino: u64) -> Result<(Handle, FopenFlags), FsError> {
        let mut flags = FopenFlags::empty();
        let entries = match self.node(ino)? {
            Node::Root => {
                let mut entries = vec![
                    dir_entry(ROOT_INO, FileType::Directory, "."),
                    dir_entry(ROOT_INO, FileType::Directory, ".."),
                    dir_entry(STATS_INO, FileType::RegularFile, STATS_NAME),
                ];
                let builds = self.builds.list().map_err(|e| FsError::List(Box::new(e)))?;
                for build in builds.iter() {
                    let ino = self.inodes.build_ino(*build);
                    entries.push(dir_entry(ino, FileType::Directory, &build.to_string()));
                }
                entries
            }
            Node::Build(build) => {
                let contents = self.contents(build)?;
                if contents.complete() {
                    // Nothing can be added to it: let the kernel keep the listing.
                    flags = FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE;
                }
                let mut entries = vec![
                    dir_entry(ino, FileType::Directory, "."),
                    dir_entry(ROOT_INO, FileType::Directory, ".."),
                ];
                for file in BuildDirFile::ALL {
                    let present = match file {
                        BuildDirFile::Template(file) => contents.has_header(file),
                        BuildDirFile::Blob(blob) => contents.blob_size(blob).is_some(),
                    };
                    if present {
                        let file_ino = InodeTable::file_ino(ino, file);
                        entries.push(dir_entry(file_ino, FileType::RegularFile, file.name()));
                    }
                }
                if has_diff_dir(&contents) {
                    let dir_ino = InodeTable::diff_dir_ino(ino);
                    entries.push(dir_entry(dir_ino, FileType::Directory, DIFF_DIR_NAME));
                }
                entries
            }
            Node::DiffDir(build) => {
                let build_ino = self.inodes.build_ino(build);
                let mut entries = vec![
                    dir_entry(ino, FileType::Directory, "."),
                    dir_entry(build_ino, FileType::Directory, ".."),
                ];
                for file in FileKind::ALL {
                    // Only the diffs the build has: a header that maps
                    // nothing to its own build has none.
                    match self.builds.open_diff(build, file) {
                        Ok(_) => {
                            let diff_ino = InodeTable::diff_ino(build_ino, file);
                            entries.push(dir_entry(diff_ino, FileType::RegularFile, file.name()));
                        }
                        Err(TemplateError::NoDiff { .. } | TemplateError::NotFound { .. }) => {}
                        Err(e) => return Err(FsError::diff(build, file, None, e)),
                    }
                }
                entries
            }
            Node::Stats | Node::File(..) | Node::Diff(..) => return Err(FsError::NotADirectory),
        };
        Ok((Handle::Dir(entries), flags))
    }

    /// The NUL-separated attribute names of `ino`.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        match self.node(ino)? {
            Node::File(build, BuildDirFile::Template(file)) => {
                // Listing names of a build whose header is unreadable would
                // promise values getxattr cannot give.
                self.header(build, file)?;
                Ok(xattr::names())
            }
            _ => Ok(Vec::new()),
        }
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>, FsError> {
        let missing = || FsError::NoXattr(name.to_string_lossy().into_owned());
        match self.node(ino)? {
            Node::File(build, BuildDirFile::Template(file)) => {
                let name = name.to_str().ok_or_else(missing)?;
                let header = self.header(build, file)?;
                let cached = || self.builds.cached_bytes(build, file);
                let prefetch = || self.builds.prefetch_state(build, file);
                let passthrough = || self.passthrough_state(ino, build, file);
                xattr::value(&header, cached, prefetch, passthrough, name)
                    .map(String::into_bytes)
                    .ok_or_else(missing)
            }
            _ => Err(missing()),
        }
    }

    /// `user.tdfs.passthrough` of template file `ino`: where its flat file
    /// stands, and how it is open now.
    fn passthrough_state(&self, ino: u64, build: Uuid, file: FileKind) -> String {
        if !self.passthrough.enabled() {
            return "off".into();
        }
        format!(
            "{}; {}",
            self.builds.flat_state(build, file),
            self.passthrough.describe(ino)
        )
    }

    /// The kernel connection cannot do passthrough (it does not offer it,
    /// or refused a backing file: `why`): every open from now on is normal.
    pub fn passthrough_unavailable(&self, why: &str) {
        self.passthrough.disable(why);
    }

    /// The kernel's `max_stack_depth` for passthrough to this mount's flat
    /// files (see `passthrough::stack_depth`).
    pub fn passthrough_stack_depth(&self) -> u32 {
        self.builds
            .cache_dir()
            .map_or(1, super::passthrough::stack_depth)
    }

    /// Whether opens may still go passthrough (see `fs::passthrough`).
    pub fn passthrough_enabled(&self) -> bool {
        self.passthrough.enabled()
    }

    /// The open `fh` was answered in passthrough mode (`passthrough`) or,
    /// its backing file refused, normally.
    pub fn opened_as(&self, fh: u64, passthrough: bool) {
        if passthrough {
            self.passthrough.opened_passthrough();
        } else {
            self.passthrough.opened_normally(fh);
        }
    }

    fn node(&self, ino: u64) -> Result<Node, FsError> {
        self.inodes.node(ino).ok_or(FsError::NoInode(ino))
    }

    fn entry(&self, ino: u64, node: Node) -> Result<Entry, FsError> {
        let (kind, size, blksize, ttl) = match node {
            Node::Root => (FileType::Directory, 0, 4096, self.builds.listing_ttl()),
            Node::Build(_) => (FileType::Directory, 0, 4096, IMMUTABLE_TTL),
            Node::DiffDir(build) => {
                if !has_diff_dir(&self.contents(build)?) {
                    return Err(FsError::NoEntry(DIFF_DIR_NAME.to_string()));
                }
                (FileType::Directory, 0, 4096, IMMUTABLE_TTL)
            }
            Node::Diff(build, file) => {
                let diff = self.open_diff(build, file)?;
                let blksize = u32::try_from(diff.block_size()).unwrap_or(u32::MAX);
                (FileType::RegularFile, diff.size(), blksize, IMMUTABLE_TTL)
            }
            // Size 0 like procfs: `.stats` is opened with direct I/O.
            Node::Stats => (FileType::RegularFile, 0, 4096, Duration::ZERO),
            // The header has the size: no diff is opened, nothing is
            // asked of the store but the header.
            Node::File(build, BuildDirFile::Template(file)) => {
                let meta = &self.header(build, file)?.metadata;
                let blksize = u32::try_from(meta.block_size).unwrap_or(u32::MAX);
                (FileType::RegularFile, meta.size, blksize, IMMUTABLE_TTL)
            }
            Node::File(build, BuildDirFile::Blob(blob)) => {
                let size = self.blob_size(build, blob)?;
                (
                    FileType::RegularFile,
                    size,
                    4096,
                    blob_ttl(&self.builds, blob),
                )
            }
        };
        let (perm, nlink) = match kind {
            FileType::Directory => (0o555, 2),
            _ => (0o444, 1),
        };
        let attr = FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind,
            perm,
            nlink,
            uid: self.config.uid,
            gid: self.config.gid,
            rdev: 0,
            blksize,
            flags: 0,
        };
        Ok(Entry { attr, ttl })
    }

    /// `build`'s `file` opened for reading: its diffs' Chunkers are open
    /// while the handle holding it lives.
    fn open_template(&self, build: Uuid, file: FileKind) -> Result<Arc<TemplateFile>, FsError> {
        self.builds
            .open(build, file)
            .map(Arc::new)
            .map_err(|e| FsError::template(build, file, None, e))
    }

    fn header(&self, build: Uuid, file: FileKind) -> Result<Arc<Header>, FsError> {
        self.builds
            .header(build, file)
            .map_err(|e| FsError::template(build, file, None, e))
    }

    fn open_diff(&self, build: Uuid, file: FileKind) -> Result<DiffFile, FsError> {
        self.builds
            .open_diff(build, file)
            .map_err(|e| FsError::diff(build, file, None, e))
    }

    /// The size of `build`'s `blob` as last probed; ENOENT when it has none.
    fn blob_size(&self, build: Uuid, blob: Blob) -> Result<u64, FsError> {
        self.contents(build)?
            .blob_size(blob)
            .ok_or_else(|| FsError::NoEntry(blob.name().to_string()))
    }

    fn contents(&self, build: Uuid) -> Result<BuildContents, FsError> {
        self.builds
            .contents(build)
            .map_err(|e| FsError::probe(build, e))
    }
}

/// Attribute lifetime of `blob`: a blob that may be re-uploaded
/// (metadata.json gains its prefetch trace after the build appears) is
/// trusted only as long as the listing, so `cat` shows the new bytes
/// within the listing TTL.
fn blob_ttl(builds: &Builds, blob: Blob) -> Duration {
    if blob.may_change() {
        builds.listing_ttl()
    } else {
        IMMUTABLE_TTL
    }
}

/// A build directory shows `diff/` when the build has a header: only a
/// header says whether the build has a diff of its own.
fn has_diff_dir(contents: &BuildContents) -> bool {
    FileKind::ALL.into_iter().any(|f| contents.has_header(f))
}

fn dir_entry(ino: u64, kind: FileType, name: &str) -> DirEntry {
    DirEntry {
        ino,
        kind,
        name: name.to_string(),
    }
}
