//! Inode numbers: what each node of the tree is, and a table that gives a
//! build the same inode numbers for the whole life of the mount.

use std::collections::HashMap;
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
}

/// The builds seen so far, in order: a build's index gives its inodes.
#[derive(Debug, Default)]
struct BuildInodes {
    index: HashMap<Uuid, u64>,
    ids: Vec<Uuid>,
}

impl InodeTable {
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
            }
            index
        });
        FIRST_BUILD_INO + index * SLOTS
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
}
