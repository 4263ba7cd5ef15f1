//! Inputs of the pack and CLI tests: images that look like real ones
//! (runs of zero pages, repeated and random pages) and the local store they
//! are packed into.

use std::path::Path;
use std::sync::Arc;

use tdfs::format::{Compression, FileKind, ObjectKey};
use tdfs::store::{LocalStore, WritableStore};
use uuid::Uuid;

use super::rng::Rng;

/// The page of the images, in bytes.
pub const PAGE: usize = 4096;

/// VM-like images from the test RNG.
impl Rng {
    /// One page: zeros, one repeated byte, text, or random bytes.
    pub fn page(&mut self) -> Vec<u8> {
        match self.below(5) {
            0 => vec![0; PAGE],
            1 => vec![self.next() as u8; PAGE],
            2 => (0..PAGE).map(|i| b"tdfs pack test "[i % 15]).collect(),
            _ => (0..PAGE / 8)
                .flat_map(|_| self.next().to_le_bytes())
                .collect(),
        }
    }

    /// An image of `pages` pages: runs of zero pages, repeated and random ones.
    pub fn image(&mut self, pages: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(pages * PAGE);
        while out.len() < pages * PAGE {
            let run = 1 + self.below(600) as usize;
            let zero = self.below(3) == 0;
            for _ in 0..run.min(pages - out.len() / PAGE) {
                if zero {
                    out.extend_from_slice(&[0; PAGE]);
                } else {
                    out.extend_from_slice(&self.page());
                }
            }
        }
        out
    }

    /// Change `count` random pages of `image` (new data, zeros or repeats).
    pub fn mutate(&mut self, image: &mut [u8], count: usize) {
        let pages = image.len() / PAGE;
        for _ in 0..count {
            let p = self.below(pages as u64) as usize;
            let page = self.page();
            image[p * PAGE..(p + 1) * PAGE].copy_from_slice(&page);
        }
    }
}

/// The existing local store at `dir`.
pub fn local_store(dir: &Path) -> Arc<dyn WritableStore> {
    Arc::new(LocalStore::open(dir).expect("store dir"))
}

/// A legacy build in `store`: raw `memfile` and `rootfs.ext4` data objects
/// and no `.header` objects (readers see one identity mapping per file).
pub fn put_legacy_build(store: &dyn WritableStore, memfile: &[u8], rootfs: &[u8]) -> Uuid {
    let build = Uuid::new_v4();
    for (file, bytes) in [(FileKind::Memfile, memfile), (FileKind::Rootfs, rootfs)] {
        store
            .put_bytes(&ObjectKey::data(build, file, Compression::None), bytes)
            .expect("write a legacy data object");
    }
    build
}
