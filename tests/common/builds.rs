//! Builds a test writes itself into a local store, for the cases the
//! independent fixture stores do not have: headers encoded with the crate's
//! format API (any version 3–5, any mappings and builds section) over diff
//! objects whose bytes the test chooses. Objects are written in place
//! (no fsync) so that thousands of builds take seconds.

use std::path::{Path, PathBuf};

use tdfs::format::{
    BuildEntry, Compression, FileKind, Frame, FrameTable, Header, Mapping, Mappings, Metadata,
    ObjectKey,
};
use uuid::Uuid;

use super::chunker::compress;

/// The page of headers and mappings, in bytes.
pub const PAGE: u64 = 4096;

/// A local store directory being filled with builds.
pub struct TestStore {
    pub root: PathBuf,
}

impl TestStore {
    /// A store at `root` (made when missing).
    pub fn new(root: &Path) -> TestStore {
        std::fs::create_dir_all(root).expect("store dir");
        TestStore {
            root: root.to_path_buf(),
        }
    }

    fn put(&self, key: &ObjectKey, bytes: &[u8]) {
        let path = self.root.join(key.to_string());
        std::fs::create_dir_all(path.parent().expect("build dir")).expect("build dir");
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// `build`'s uncompressed diff of `file`.
    pub fn put_raw_diff(&self, build: Uuid, file: FileKind, diff: &[u8]) {
        self.put(&ObjectKey::data(build, file, Compression::None), diff);
    }

    /// `build`'s zstd diff of `file`, cut into frames of `frame_size` bytes;
    /// returns its builds-section entry.
    pub fn put_zstd_diff(
        &self,
        build: Uuid,
        file: FileKind,
        diff: &[u8],
        frame_size: usize,
    ) -> BuildEntry {
        let mut object = Vec::new();
        let mut frames = Vec::new();
        for (i, piece) in diff.chunks(frame_size).enumerate() {
            let compressed = compress(Compression::Zstd, piece);
            frames.push(Frame {
                start_u: (i * frame_size) as u64,
                start_c: object.len() as u64,
                size_u: piece.len() as u32,
                size_c: compressed.len() as u32,
            });
            object.extend_from_slice(&compressed);
        }
        self.put(&ObjectKey::data(build, file, Compression::Zstd), &object);
        BuildEntry {
            build_id: build,
            file_size: diff.len() as u64,
            sha256: [0; 32],
            frames: FrameTable::new(Compression::Zstd, frames).expect("frame table"),
        }
    }

    /// `build`'s header of `file`, encoded as `version`: a template of
    /// `size` bytes made of `mappings` (gaps read as zeros), with `builds`
    /// as its builds section (V4/V5 only).
    pub fn put_header(
        &self,
        build: Uuid,
        file: FileKind,
        version: u16,
        size: u64,
        mappings: Vec<Mapping>,
        builds: Vec<BuildEntry>,
    ) {
        let metadata = Metadata {
            version: u64::from(version),
            block_size: PAGE,
            size,
            generation: 1,
            build_id: build,
            base_build_id: build,
        };
        let header = Header {
            metadata,
            builds,
            mappings: Mappings::with_gaps_as_zeros(mappings, size).expect("valid mappings"),
        };
        let bytes = header.encode(version).expect("header encodes");
        self.put(&ObjectKey::header(build, file), &bytes);
    }
}

/// Template bytes `[offset, offset + length)` read from `build`'s diff at
/// `storage_offset`.
pub fn mapping(offset: u64, length: u64, build: Uuid, storage_offset: u64) -> Mapping {
    Mapping {
        offset,
        length,
        build_id: build,
        storage_offset,
    }
}

/// Template bytes `[offset, offset + length)` that are zeros.
pub fn zeros(offset: u64, length: u64) -> Mapping {
    mapping(offset, length, Uuid::nil(), 0)
}

/// The build id of test build number `n` (readable in logs).
pub fn build_id(n: u64) -> Uuid {
    Uuid::from_u128(0x7d75_0000_0000_4000_8000_0000_0000_0000 | u128::from(n))
}
