//! The filesystem as the kernel sees it, minus the kernel: a tree of nodes
//! over `Builds` (root → build directories → template files and passed-through
//! objects, plus `.stats`), their attributes, directory listings, open
//! handles and reads. Every call returns a `Result` the FUSE adapter replies
//! with, so all of it can be driven by tests without a mount.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use fuser::{FileAttr, FileType, FopenFlags, INodeNo};
use uuid::Uuid;

use super::error::FsError;
use super::inode::{BuildFile, InodeTable, Node, ROOT_INO, STATS_INO, STATS_NAME};
use super::xattr;
use crate::format::{FileKind, ObjectKey};
use crate::store::{StoreError, parse_build_id};
use crate::sync;
use crate::template::{Builds, TemplateFile};

/// Attribute and entry lifetime of what never changes: a build, once
/// written, is immutable.
pub const IMMUTABLE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// What the mount shows besides the store's content.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// Owner of every node.
    pub uid: u32,
    pub gid: u32,
    /// How long the root listing (and a build's missing objects) are
    /// trusted before the store is asked again.
    pub listing_ttl: Duration,
}

/// A node's attributes and how long the kernel may keep them.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub attr: FileAttr,
    pub ttl: Duration,
}

/// One name in a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: FileType,
    pub name: String,
}

/// Answer to an open: the handle and the kernel caching flags.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub fh: u64,
    pub flags: FopenFlags,
}

/// What an open handle reads from.
enum Handle {
    Template(Arc<TemplateFile>),
    Object {
        key: ObjectKey,
        size: u64,
    },
    /// `.stats` as rendered when it was opened, so one reader sees one
    /// consistent snapshot.
    Stats(Vec<u8>),
    /// A directory listing taken at opendir, so paging through it with
    /// offsets stays consistent while the store changes.
    Dir(Vec<DirEntry>),
}

/// Which of a build's objects exist (and their sizes), as last probed.
#[derive(Debug, Clone, Copy)]
struct BuildObjects {
    /// Indexed like `BuildFile::ALL`.
    sizes: [Option<u64>; 4],
    probed: Instant,
}

impl BuildObjects {
    fn size(&self, file: BuildFile) -> Option<u64> {
        let i = BuildFile::ALL.iter().position(|f| *f == file)?;
        self.sizes[i]
    }

    fn any(&self) -> bool {
        self.sizes.iter().any(Option::is_some)
    }

    /// A build with every object cannot change any more.
    fn complete(&self) -> bool {
        self.sizes.iter().all(Option::is_some)
    }
}

struct Listing {
    builds: Arc<Vec<Uuid>>,
    fetched: Instant,
}

/// The filesystem. See the module docs.
pub struct TemplateFs {
    builds: Arc<Builds>,
    options: FsOptions,
    inodes: InodeTable,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next_handle: AtomicU64,
    listing: Mutex<Option<Listing>>,
    objects: RwLock<HashMap<Uuid, BuildObjects>>,
    /// Timestamp of every node: the store keeps none.
    mounted_at: SystemTime,
}

impl TemplateFs {
    pub fn new(builds: Arc<Builds>, options: FsOptions) -> Self {
        TemplateFs {
            builds,
            options,
            inodes: InodeTable::default(),
            handles: RwLock::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            listing: Mutex::new(None),
            objects: RwLock::new(HashMap::new()),
            mounted_at: SystemTime::now(),
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
                if !self.build_objects(build)?.any() {
                    return Err(FsError::NoEntry(text()));
                }
                let ino = self.inodes.build_ino(build);
                self.entry(ino, Node::Build(build))
            }
            Node::Build(build) => {
                let file = BuildFile::from_name(name).ok_or_else(|| FsError::NoEntry(text()))?;
                let ino = InodeTable::file_ino(self.inodes.build_ino(build), file);
                self.entry(ino, Node::File(build, file))
            }
            Node::Stats | Node::File(..) => Err(FsError::NotADirectory),
        }
    }

    pub fn getattr(&self, ino: u64) -> Result<Entry, FsError> {
        let node = self.node(ino)?;
        self.entry(ino, node)
    }

    /// Snapshot the listing of directory `ino` into a new handle.
    pub fn opendir(&self, ino: u64) -> Result<Opened, FsError> {
        let mut flags = FopenFlags::empty();
        let entries = match self.node(ino)? {
            Node::Root => {
                let mut entries = vec![
                    dir_entry(ROOT_INO, FileType::Directory, "."),
                    dir_entry(ROOT_INO, FileType::Directory, ".."),
                    dir_entry(STATS_INO, FileType::RegularFile, STATS_NAME),
                ];
                for build in self.list_builds()?.iter() {
                    let ino = self.inodes.build_ino(*build);
                    entries.push(dir_entry(ino, FileType::Directory, &build.to_string()));
                }
                entries
            }
            Node::Build(build) => {
                let objects = self.build_objects(build)?;
                if objects.complete() {
                    // Nothing can be added to it: let the kernel keep the listing.
                    flags = FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE;
                }
                let mut entries = vec![
                    dir_entry(ino, FileType::Directory, "."),
                    dir_entry(ROOT_INO, FileType::Directory, ".."),
                ];
                for file in BuildFile::ALL {
                    if objects.size(file).is_some() {
                        let file_ino = InodeTable::file_ino(ino, file);
                        entries.push(dir_entry(file_ino, FileType::RegularFile, file.name()));
                    }
                }
                entries
            }
            Node::Stats | Node::File(..) => return Err(FsError::NotADirectory),
        };
        Ok(Opened {
            fh: self.add_handle(Handle::Dir(entries)),
            flags,
        })
    }

    /// The entries of an open directory from position `offset` on; the
    /// offset of entry `i` is `i + 1`.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Vec<DirEntry>, FsError> {
        match &*self.handle(fh)? {
            Handle::Dir(entries) => Ok(entries
                .iter()
                .skip(usize::try_from(offset).unwrap_or(usize::MAX))
                .cloned()
                .collect()),
            _ => Err(FsError::NotADirectory),
        }
    }

    pub fn open(&self, ino: u64, flags: i32) -> Result<Opened, FsError> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(FsError::ReadOnly);
        }
        let (handle, flags) = match self.node(ino)? {
            Node::Root | Node::Build(_) => return Err(FsError::IsADirectory),
            // Direct I/O: the size is not known before the content exists.
            Node::Stats => (
                Handle::Stats(self.builds.stats().render_prometheus().into_bytes()),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Node::File(build, BuildFile::Template(kind)) => (
                Handle::Template(self.open_template(build, kind)?),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Node::File(build, file) => {
                let key = file.object_key(build);
                let size = self
                    .build_objects(build)?
                    .size(file)
                    .ok_or_else(|| FsError::NoEntry(file.name().to_string()))?;
                (Handle::Object { key, size }, FopenFlags::FOPEN_KEEP_CACHE)
            }
        };
        Ok(Opened {
            fh: self.add_handle(handle),
            flags,
        })
    }

    /// Read up to `len` bytes at `offset` of open file `fh` (all `len`
    /// unless the file ends first) and hand them to `reply`. A range of a
    /// template file in one mapping goes to `reply` straight from the cache;
    /// anything else is copied into `buf` first (grown as needed, never
    /// shrunk, so a worker thread reuses one).
    pub fn read<R>(
        &self,
        fh: u64,
        offset: u64,
        len: u32,
        buf: &mut Vec<u8>,
        reply: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, FsError> {
        let handle = self.handle(fh)?;
        if let Handle::Template(file) = &*handle {
            let in_place = file
                .read_in_place(offset, len as usize)
                .map_err(|e| FsError::template(file.build_id(), file.file(), Some(offset), e))?;
            if let Some(bytes) = in_place {
                return Ok(reply(&bytes));
            }
        }
        self.read_copy(&handle, offset, len, buf).map(reply)
    }

    fn read_copy<'b>(
        &self,
        handle: &Handle,
        offset: u64,
        len: u32,
        buf: &'b mut Vec<u8>,
    ) -> Result<&'b [u8], FsError> {
        let size = match handle {
            Handle::Template(file) => file.size(),
            Handle::Object { size, .. } => *size,
            Handle::Stats(text) => text.len() as u64,
            Handle::Dir(_) => return Err(FsError::IsADirectory),
        };
        let want = size.saturating_sub(offset).min(u64::from(len)) as usize;
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let out = &mut buf[..want];
        if want == 0 {
            return Ok(out);
        }
        match handle {
            Handle::Template(file) => {
                let n = file.read_at(out, offset).map_err(|e| {
                    FsError::template(file.build_id(), file.file(), Some(offset), e)
                })?;
                Ok(&out[..n])
            }
            Handle::Object { key, .. } => {
                let start = Instant::now();
                let result = self.builds.store().read_exact_into(key, offset, out);
                self.builds
                    .stats()
                    .record_object_read(key.name, start.elapsed());
                result.map_err(|source| FsError::object(key.to_string(), Some(offset), source))?;
                Ok(out)
            }
            Handle::Stats(text) => {
                let start = offset as usize;
                out.copy_from_slice(&text[start..start + want]);
                Ok(out)
            }
            Handle::Dir(_) => Err(FsError::IsADirectory),
        }
    }

    /// Forget an open file or directory.
    pub fn release(&self, fh: u64) {
        sync::write(&self.handles).remove(&fh);
    }

    /// The NUL-separated attribute names of `ino`.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        match self.node(ino)? {
            Node::File(build, BuildFile::Template(kind)) => {
                // Listing names of a build whose header is unreadable would
                // promise values getxattr cannot give.
                self.open_template(build, kind)?;
                Ok(xattr::names())
            }
            _ => Ok(Vec::new()),
        }
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>, FsError> {
        let missing = || FsError::NoXattr(name.to_string_lossy().into_owned());
        match self.node(ino)? {
            Node::File(build, BuildFile::Template(kind)) => {
                let name = name.to_str().ok_or_else(missing)?;
                let file = self.open_template(build, kind)?;
                xattr::value(&file, name)
                    .map(String::into_bytes)
                    .ok_or_else(missing)
            }
            _ => Err(missing()),
        }
    }

    fn node(&self, ino: u64) -> Result<Node, FsError> {
        self.inodes.node(ino).ok_or(FsError::NoInode(ino))
    }

    fn entry(&self, ino: u64, node: Node) -> Result<Entry, FsError> {
        let (kind, size, blksize, ttl) = match node {
            Node::Root => (FileType::Directory, 0, 4096, self.options.listing_ttl),
            Node::Build(_) => (FileType::Directory, 0, 4096, IMMUTABLE_TTL),
            // Size 0 like procfs: `.stats` is opened with direct I/O.
            Node::Stats => (FileType::RegularFile, 0, 4096, Duration::ZERO),
            Node::File(build, BuildFile::Template(kind)) => {
                let file = self.open_template(build, kind)?;
                let blksize = u32::try_from(file.block_size()).unwrap_or(u32::MAX);
                (FileType::RegularFile, file.size(), blksize, IMMUTABLE_TTL)
            }
            Node::File(build, file) => {
                let size = self
                    .build_objects(build)?
                    .size(file)
                    .ok_or_else(|| FsError::NoEntry(file.name().to_string()))?;
                (FileType::RegularFile, size, 4096, IMMUTABLE_TTL)
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
            uid: self.options.uid,
            gid: self.options.gid,
            rdev: 0,
            blksize,
            flags: 0,
        };
        Ok(Entry { attr, ttl })
    }

    fn open_template(&self, build: Uuid, kind: FileKind) -> Result<Arc<TemplateFile>, FsError> {
        self.builds
            .open(build, kind)
            .map_err(|e| FsError::template(build, kind, None, e))
    }

    /// The store's builds, listed at most once per `listing_ttl`.
    fn list_builds(&self) -> Result<Arc<Vec<Uuid>>, FsError> {
        let mut listing = sync::lock(&self.listing);
        if let Some(l) = &*listing
            && l.fetched.elapsed() < self.options.listing_ttl
        {
            return Ok(l.builds.clone());
        }
        let builds = Arc::new(self.builds.list().map_err(|e| FsError::List(Box::new(e)))?);
        *listing = Some(Listing {
            builds: builds.clone(),
            fetched: Instant::now(),
        });
        Ok(builds)
    }

    /// Which objects `build` has. A complete build is probed once; one with
    /// objects missing again after `listing_ttl` (it may be mid-upload).
    fn build_objects(&self, build: Uuid) -> Result<BuildObjects, FsError> {
        if let Some(known) = sync::read(&self.objects).get(&build)
            && (known.complete() || known.probed.elapsed() < self.options.listing_ttl)
        {
            return Ok(*known);
        }
        let mut sizes = [None; 4];
        for (size, file) in sizes.iter_mut().zip(BuildFile::ALL) {
            let key = file.object_key(build);
            *size = match self.builds.store().size(&key) {
                Ok(n) => Some(n),
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(FsError::object(key.to_string(), None, e)),
            };
        }
        let objects = BuildObjects {
            sizes,
            probed: Instant::now(),
        };
        if objects.any() {
            sync::write(&self.objects).insert(build, objects);
        }
        Ok(objects)
    }

    fn add_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        sync::write(&self.handles).insert(fh, Arc::new(handle));
        fh
    }

    fn handle(&self, fh: u64) -> Result<Arc<Handle>, FsError> {
        sync::read(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or(FsError::NoHandle(fh))
    }
}

fn dir_entry(ino: u64, kind: FileType, name: &str) -> DirEntry {
    DirEntry {
        ino,
        kind,
        name: name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::fs::ToErrno;
    use crate::store::LocalStore;
    use crate::template::TemplateConfig;

    /// A layer of the v4-zstd fixture and its base.
    const LAYER: &str = "bd87702b-8d31-4e8d-beda-66b642c931a9";
    const BASE: &str = "4c8cee25-4691-41ad-bee6-af9d9284b55b";

    fn fixture_fs(cache: &Path) -> TemplateFs {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/e2b/v4-zstd");
        let store = Arc::new(LocalStore::open(root).unwrap());
        let config = TemplateConfig {
            cache_dir: cache.to_path_buf(),
            max_cache_size: 0,
            fetch_timeout: Duration::from_secs(30),
            readahead: 1,
            fetch_workers: 2,
            verify_checksums: false,
        };
        let options = FsOptions {
            uid: 1000,
            gid: 1001,
            listing_ttl: Duration::from_secs(5),
        };
        TemplateFs::new(Builds::new(store, config).unwrap(), options)
    }

    fn names(entries: &[DirEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn tree_attributes_and_listing() {
        let cache = tempfile::tempdir().unwrap();
        let fs = fixture_fs(cache.path());
        let root = fs.getattr(ROOT_INO).unwrap();
        assert_eq!(root.attr.kind, FileType::Directory);
        assert_eq!(root.attr.perm, 0o555);
        assert_eq!((root.attr.uid, root.attr.gid), (1000, 1001));

        let opened = fs.opendir(ROOT_INO).unwrap();
        let entries = fs.readdir(opened.fh, 0).unwrap();
        assert_eq!(names(&entries)[..3], [".", "..", STATS_NAME]);
        assert_eq!(entries.len(), 6, "three builds: {:?}", names(&entries));
        // Offsets continue where the kernel left off.
        assert_eq!(fs.readdir(opened.fh, 4).unwrap(), entries[4..]);
        fs.release(opened.fh);
        assert_eq!(
            fs.readdir(opened.fh, 0).unwrap_err().errno(),
            fuser::Errno::EBADF
        );

        let dir = fs.lookup(ROOT_INO, OsStr::new(LAYER)).unwrap();
        assert_eq!(dir.ttl, IMMUTABLE_TTL);
        let listed = entries.iter().find(|e| e.name == LAYER).unwrap();
        assert_eq!(dir.attr.ino.0, listed.ino, "one inode per build");
        let opened = fs.opendir(dir.attr.ino.0).unwrap();
        assert!(opened.flags.contains(FopenFlags::FOPEN_CACHE_DIR));
        let files = fs.readdir(opened.fh, 0).unwrap();
        assert_eq!(
            names(&files),
            [
                ".",
                "..",
                "memfile",
                "rootfs.ext4",
                "snapfile",
                "metadata.json"
            ]
        );

        let memfile = fs.lookup(dir.attr.ino.0, OsStr::new("memfile")).unwrap();
        assert_eq!(memfile.attr.size, 16 << 20);
        assert_eq!(memfile.attr.blksize, 2 << 20);
        assert_eq!(memfile.attr.perm, 0o444);
        assert_eq!(fs.getattr(memfile.attr.ino.0).unwrap().attr, memfile.attr);
        let snapfile = fs.lookup(dir.attr.ino.0, OsStr::new("snapfile")).unwrap();
        let stored = std::fs::metadata(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/e2b/v4-zstd")
                .join(LAYER)
                .join("snapfile"),
        )
        .unwrap();
        assert_eq!(snapfile.attr.size, stored.len());
    }

    #[test]
    fn missing_names_and_non_directories() {
        let cache = tempfile::tempdir().unwrap();
        let fs = fixture_fs(cache.path());
        let enoent = |parent, name: &str| fs.lookup(parent, OsStr::new(name)).unwrap_err().errno();
        assert_eq!(enoent(ROOT_INO, "manifest.json"), fuser::Errno::ENOENT);
        assert_eq!(
            enoent(ROOT_INO, "00000000-0000-4000-8000-000000000000"),
            fuser::Errno::ENOENT
        );
        assert_eq!(
            enoent(ROOT_INO, &LAYER.to_uppercase()),
            fuser::Errno::ENOENT
        );
        let dir = fs.lookup(ROOT_INO, OsStr::new(LAYER)).unwrap().attr.ino.0;
        assert_eq!(enoent(dir, "memfile.header"), fuser::Errno::ENOENT);
        assert_eq!(enoent(dir, ".."), fuser::Errno::ENOENT);
        assert_eq!(enoent(STATS_INO, "x"), fuser::Errno::ENOTDIR);
        assert_eq!(
            fs.getattr(999_999).unwrap_err().errno(),
            fuser::Errno::ENOENT
        );
        assert_eq!(
            fs.open(ROOT_INO, libc::O_RDONLY).unwrap_err().errno(),
            fuser::Errno::EISDIR
        );
    }

    #[test]
    fn reads_stats_and_xattrs() {
        let cache = tempfile::tempdir().unwrap();
        let fs = fixture_fs(cache.path());
        let dir = fs.lookup(ROOT_INO, OsStr::new(LAYER)).unwrap().attr.ino.0;
        let memfile = fs.lookup(dir, OsStr::new("memfile")).unwrap().attr.ino.0;
        assert_eq!(
            fs.open(memfile, libc::O_RDWR).unwrap_err().errno(),
            fuser::Errno::EROFS
        );
        assert_eq!(
            fs.open(memfile, libc::O_WRONLY).unwrap_err().errno(),
            fuser::Errno::EROFS
        );
        let opened = fs.open(memfile, libc::O_RDONLY).unwrap();
        assert!(opened.flags.contains(FopenFlags::FOPEN_KEEP_CACHE));

        let mut buf = Vec::new();
        let size = 16u64 << 20;
        let whole = fs
            .read(opened.fh, 0, 1 << 20, &mut buf, <[u8]>::to_vec)
            .unwrap();
        assert_eq!(whole.len(), 1 << 20);
        // Reads clip at the end, and are empty past it.
        assert_eq!(
            fs.read(opened.fh, size - 100, 4096, &mut buf, <[u8]>::to_vec)
                .unwrap()
                .len(),
            100
        );
        assert!(
            fs.read(opened.fh, size, 4096, &mut buf, <[u8]>::to_vec)
                .unwrap()
                .is_empty()
        );
        assert!(
            fs.read(opened.fh, u64::MAX, 4096, &mut buf, <[u8]>::to_vec)
                .unwrap()
                .is_empty()
        );
        // A read in the middle of a previous one gives the same bytes.
        let part = fs
            .read(opened.fh, 12345, 1000, &mut buf, <[u8]>::to_vec)
            .unwrap();
        assert_eq!(part, &whole[12345..13345]);
        fs.release(opened.fh);

        let names = fs.listxattr(memfile).unwrap();
        assert!(names.ends_with(b"user.tdfs.cached_bytes\0"));
        let value = |name: &str| {
            String::from_utf8(fs.getxattr(memfile, OsStr::new(name)).unwrap()).unwrap()
        };
        assert_eq!(value("user.tdfs.build_id"), LAYER);
        assert_eq!(value("user.tdfs.base_build_id"), BASE);
        assert_eq!(value("user.tdfs.generation"), "1");
        assert_eq!(value("user.tdfs.block_size"), "2097152");
        assert_eq!(value("user.tdfs.compression"), "zstd");
        assert_eq!(value("user.tdfs.header_version"), "4");
        assert_eq!(
            fs.getxattr(memfile, OsStr::new("user.tdfs.nope"))
                .unwrap_err()
                .errno(),
            fuser::Errno::NO_XATTR
        );
        assert_eq!(
            fs.getxattr(dir, OsStr::new("user.tdfs.build_id"))
                .unwrap_err()
                .errno(),
            fuser::Errno::NO_XATTR
        );
        assert!(fs.listxattr(dir).unwrap().is_empty());

        let stats = fs.open(STATS_INO, libc::O_RDONLY).unwrap();
        assert!(stats.flags.contains(FopenFlags::FOPEN_DIRECT_IO));
        let text = String::from_utf8(
            fs.read(stats.fh, 0, 1 << 20, &mut buf, <[u8]>::to_vec)
                .unwrap(),
        )
        .unwrap();
        assert!(text.contains("tdfs_reads_total"), "{text}");
        let tail = fs
            .read(stats.fh, 10, 1 << 20, &mut buf, <[u8]>::to_vec)
            .unwrap();
        assert_eq!(tail, &text.as_bytes()[10..]);
    }
}
