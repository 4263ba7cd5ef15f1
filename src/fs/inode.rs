//! Inode numbers: what each node of the tree is, and a table that gives a
//! build the same inode numbers for the whole life of the mount, across
//! serving processes too: a mount that can be taken over keeps the table in
//! a file (one build id a line, in order) that the next process reads, so
//! the inodes the kernel holds still mean the same builds.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use uuid::Uuid;

use crate::format::{Blob, FileKind};
use crate::sync;

pub const ROOT_INO: u64 = 1;
pub const STATS_INO: u64 = 2;
/// The first build directory's inode; each build owns `SLOTS` inodes from
/// there: its directory, one per `BuildDirFile`, its `diff` directory and
/// one per file in it.
const FIRST_BUILD_INO: u64 = 16;
const SLOTS: u64 = 8;

/// The name of the statistics file in the root.
pub const STATS_NAME: &str = ".stats";

/// The name of a build's directory of its own diffs.
pub const DIFF_DIR_NAME: &str = "diff";
/// Slot of a build's `diff` directory; its files follow, in `FileKind::ALL`
/// order.
const DIFF_DIR_SLOT: u64 = 5;

/// A file of a build directory: a template file or a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildDirFile {
    /// `memfile` or `rootfs.ext4`, resolved through its header.
    Template(FileKind),
    /// `snapfile` or `metadata.json`, shown as stored.
    Blob(Blob),
}

impl BuildDirFile {
    pub const ALL: [BuildDirFile; 4] = [
        BuildDirFile::Template(FileKind::Memfile),
        BuildDirFile::Template(FileKind::Rootfs),
        BuildDirFile::Blob(Blob::Snapfile),
        BuildDirFile::Blob(Blob::Metadata),
    ];

    pub fn name(self) -> &'static str {
        match self {
            BuildDirFile::Template(kind) => kind.name(),
            BuildDirFile::Blob(blob) => blob.name(),
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        BuildDirFile::ALL.into_iter().find(|f| f.name() == name)
    }

    fn slot(self) -> u64 {
        match self {
            BuildDirFile::Template(FileKind::Memfile) => 1,
            BuildDirFile::Template(FileKind::Rootfs) => 2,
            BuildDirFile::Blob(Blob::Snapfile) => 3,
            BuildDirFile::Blob(Blob::Metadata) => 4,
        }
    }

    fn from_slot(slot: u64) -> Option<Self> {
        BuildDirFile::ALL.into_iter().find(|f| f.slot() == slot)
    }
}

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Root,
    Stats,
    Build(Uuid),
    File(Uuid, BuildDirFile),
    /// A build's `diff` directory.
    DiffDir(Uuid),
    /// `diff/memfile` or `diff/rootfs.ext4`: the build's own diff.
    Diff(Uuid, FileKind),
}

/// Builds get inodes in the order they are first seen, and keep them.
/// Only builds known to exist are added, so the table grows with the store,
/// not with the names callers try.
#[derive(Debug, Default)]
pub struct InodeTable {
    inner: RwLock<BuildInodes>,
    /// Where a build is noted before its inodes are handed out (see
    /// `persistent`).
    file: Option<(PathBuf, File)>,
}

/// Most builds an inode table file may name: each takes 37 bytes, so this
/// bounds what reading it allocates (untrusted: it is a file on disk).
const MAX_SAVED_BUILDS: u64 = 1 << 24;
/// One line of the file: a hyphenated build id and a newline.
const LINE: usize = 37;

/// The builds seen so far, in order: a build's index gives its inodes.
#[derive(Debug, Default)]
struct BuildInodes {
    index: HashMap<Uuid, u64>,
    ids: Vec<Uuid>,
}

impl InodeTable {
    /// A table kept in `path`: the builds already named there keep their
    /// inodes, in that order, and each new build is appended before its
    /// inodes are handed out. `fresh` starts the file over (a new
    /// connection: no inode of an earlier one is held by the kernel).
    ///
    /// # Errors
    /// The file cannot be read, written or created, names more than 2^24
    /// builds, or has a line that is not a build id (the line number says
    /// which).
    pub fn persistent(path: &Path, fresh: bool) -> io::Result<InodeTable> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let mut inner = BuildInodes::default();
        if !fresh {
            let size = std::fs::metadata(path)?.len();
            if size > MAX_SAVED_BUILDS * LINE as u64 {
                return Err(bad(format!(
                    "inode table {}: {size} bytes, more than {MAX_SAVED_BUILDS} builds",
                    path.display()
                )));
            }
            let text = std::fs::read(path)?;
            // A line without its newline was never finished, so its build
            // was never handed out.
            for (n, line) in text.chunks_exact(LINE).enumerate() {
                let build = std::str::from_utf8(&line[..LINE - 1])
                    .ok()
                    .filter(|_| line[LINE - 1] == b'\n')
                    .and_then(|id| Uuid::try_parse(id).ok())
                    .ok_or_else(|| {
                        bad(format!(
                            "inode table {} line {}: not a build id",
                            path.display(),
                            n + 1
                        ))
                    })?;
                let index = inner.ids.len() as u64;
                if inner.index.insert(build, index).is_some() {
                    return Err(bad(format!(
                        "inode table {} line {}: build {build} named twice",
                        path.display(),
                        n + 1
                    )));
                }
                inner.ids.push(build);
            }
        }
        let mut options = std::fs::OpenOptions::new();
        options.append(true).create(true).mode(0o600);
        if fresh {
            options.truncate(true).write(true).append(false);
        }
        let file = options.open(path)?;
        if !fresh {
            // Drop an unfinished last line, so appends start on a line.
            file.set_len((inner.ids.len() * LINE) as u64)?;
        }
        Ok(InodeTable {
            inner: RwLock::new(inner),
            file: Some((path.to_path_buf(), file)),
        })
    }

    /// The directory inode of `build`, assigned on first use.
    pub fn build_ino(&self, build: Uuid) -> u64 {
        let index = {
            let inner = sync::read(&self.inner);
            inner.index.get(&build).copied()
        };
        let index = index.unwrap_or_else(|| {
            let mut inner = sync::write(&self.inner);
            let next = inner.ids.len() as u64;
            let index = *inner.index.entry(build).or_insert(next);
            if index == next {
                inner.ids.push(build);
                self.save(build);
            }
            index
        });
        FIRST_BUILD_INO + index * SLOTS
    }

    /// Note `build` in the table's file (under the table's write lock, so
    /// lines go in index order). A failure costs only a later takeover,
    /// which would not know this build's inodes: logged, not fatal.
    fn save(&self, build: Uuid) {
        let Some((path, file)) = &self.file else {
            return;
        };
        let line = format!("{}\n", build.hyphenated());
        if let Err(e) = (&*file).write_all(line.as_bytes()) {
            log::error!(
                "inode table {}: noting build {build}: {e} (a takeover of this mount will \
                 not know its inodes)",
                path.display()
            );
        }
    }

    /// Inodes handed out so far: the root, `.stats`, and each build seen
    /// with its directory, every file it may hold, its `diff` directory and
    /// the diff files in it.
    pub fn known(&self) -> u64 {
        let builds = sync::read(&self.inner).ids.len() as u64;
        2 + builds * (1 + BuildDirFile::ALL.len() as u64 + 1 + FileKind::ALL.len() as u64)
    }

    /// The inode of `file` in the directory `build_ino`.
    pub fn file_ino(build_ino: u64, file: BuildDirFile) -> u64 {
        build_ino + file.slot()
    }

    /// The inode of the `diff` directory of the build directory `build_ino`.
    pub fn diff_dir_ino(build_ino: u64) -> u64 {
        build_ino + DIFF_DIR_SLOT
    }

    /// The inode of `diff/<file>` in the build directory `build_ino`.
    pub fn diff_ino(build_ino: u64, file: FileKind) -> u64 {
        let index = FileKind::ALL.iter().position(|f| *f == file).unwrap_or(0);
        build_ino + DIFF_DIR_SLOT + 1 + index as u64
    }

    /// What `ino` is; None for inodes never handed out.
    pub fn node(&self, ino: u64) -> Option<Node> {
        match ino {
            ROOT_INO => return Some(Node::Root),
            STATS_INO => return Some(Node::Stats),
            _ if ino < FIRST_BUILD_INO => return None,
            _ => {}
        }
        let index = (ino - FIRST_BUILD_INO) / SLOTS;
        let slot = (ino - FIRST_BUILD_INO) % SLOTS;
        let build = {
            let inner = sync::read(&self.inner);
            *inner.ids.get(usize::try_from(index).ok()?)?
        };
        match slot {
            0 => Some(Node::Build(build)),
            DIFF_DIR_SLOT => Some(Node::DiffDir(build)),
            _ if slot > DIFF_DIR_SLOT => FileKind::ALL
                .get((slot - DIFF_DIR_SLOT - 1) as usize)
                .map(|f| Node::Diff(build, *f)),
            _ => BuildDirFile::from_slot(slot).map(|f| Node::File(build, f)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inodes_are_stable_and_round_trip() {
        let table = InodeTable::default();
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let ia = table.build_ino(a);
        let ib = table.build_ino(b);
        assert_ne!(ia, ib);
        assert_eq!(table.build_ino(a), ia);
        assert_eq!(table.node(ia), Some(Node::Build(a)));
        for f in BuildDirFile::ALL {
            let ino = InodeTable::file_ino(ib, f);
            assert_eq!(table.node(ino), Some(Node::File(b, f)));
            assert_eq!(BuildDirFile::from_name(f.name()), Some(f));
        }
        let diff_dir = InodeTable::diff_dir_ino(ib);
        assert_eq!(table.node(diff_dir), Some(Node::DiffDir(b)));
        for f in FileKind::ALL {
            let ino = InodeTable::diff_ino(ib, f);
            assert!(
                ino > diff_dir && ino < ib + SLOTS,
                "inside the build's slots"
            );
            assert_eq!(table.node(ino), Some(Node::Diff(b, f)));
        }
        assert_eq!(table.known(), 2 + 2 * 8);
        assert_eq!(table.node(ROOT_INO), Some(Node::Root));
        assert_eq!(table.node(STATS_INO), Some(Node::Stats));
        assert_eq!(table.node(0), None);
        assert_eq!(table.node(5), None);
        assert_eq!(table.node(ib + SLOTS), None);
        assert_eq!(table.node(u64::MAX), None);
        assert_eq!(BuildDirFile::from_name("memfile.header"), None);
    }

    #[test]
    fn a_saved_table_gives_the_next_process_the_same_inodes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inodes");
        let (a, b, c) = (Uuid::from_u128(7), Uuid::from_u128(3), Uuid::from_u128(9));
        let first = InodeTable::persistent(&path, true).unwrap();
        let (ia, ib) = (first.build_ino(a), first.build_ino(b));
        drop(first);
        // The next process sees the builds in another order: same inodes.
        let next = InodeTable::persistent(&path, false).unwrap();
        assert_eq!(next.node(ib), Some(Node::Build(b)));
        assert_eq!(next.build_ino(c), ib + SLOTS);
        assert_eq!(next.build_ino(b), ib);
        assert_eq!(next.build_ino(a), ia);
        drop(next);
        let again = InodeTable::persistent(&path, false).unwrap();
        assert_eq!(again.node(ib + SLOTS), Some(Node::Build(c)));
        // A new connection starts over.
        let fresh = InodeTable::persistent(&path, true).unwrap();
        assert_eq!(fresh.node(ia), None);
    }

    #[test]
    fn a_damaged_table_is_refused_and_an_unfinished_line_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inodes");
        let id = Uuid::from_u128(1).hyphenated().to_string();
        std::fs::write(
            &path,
            format!("{id}\nnot-a-build-id-at-all-but-36-bytes!!\n"),
        )
        .unwrap();
        let err = InodeTable::persistent(&path, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2: not a build id"), "{err}");
        std::fs::write(&path, format!("{id}\n{id}\n")).unwrap();
        let err = InodeTable::persistent(&path, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("named twice"), "{err}");
        std::fs::write(&path, format!("{id}\n{}", &id[..10])).unwrap();
        let table = InodeTable::persistent(&path, false).unwrap();
        let other = Uuid::from_u128(2);
        assert_eq!(table.build_ino(other), FIRST_BUILD_INO + SLOTS);
        drop(table);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{id}\n{}\n", other.hyphenated()));
    }
}
