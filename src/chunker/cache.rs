//! The cache file of one Chunker: a sparse file of the diff's uncompressed
//! size, mapped shared, plus the present bitmap that says which parts of it
//! hold verified bytes.
//!
//! Something outside tdfs may truncate the file or its disk may fail. User
//! space then never touches the mapping where bytes may be gone (that would
//! be a SIGBUS): copies go through `read_at` (`pread`, whose error or short
//! read is seen), and a range handed to the kernel in place is `populate`d
//! first (an error instead of a fault). See `damage`.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use crate::format::PAGE_SIZE;

/// Bytes written per `pwrite` into the cache file. The page cache sizes a
/// written range's folios after the write: a 2 MiB `pwrite` gets 2 MiB
/// folios, which on a VM with free page reporting come from blocks handed
/// back to the host and fault in page by page. Writing 600 MiB into a fresh
/// file on the development VM (2026-11-30, after `drop_caches` and 3 s):
/// 2.05 s of system CPU in 2 MiB writes, 0.20 s in 256 KiB, 0.23 s in 64
/// KiB, 0.35 s in 16 KiB.
const WRITE_PIECE: usize = 256 << 10;

/// A sparse cache file mapped into memory. Writes (`pwrite`) go into ranges
/// no reader can see yet; reads are slices of the mapping over ranges
/// already marked present. The file is flock'ed so two processes never share one.
pub(super) struct CacheFile {
    path: PathBuf,
    file: File,
    map: MmapRaw,
    len: u64,
}

impl CacheFile {
    /// Create (or take over and empty) `dir/name` with `len` bytes of hole.
    /// `dir` is created 0700 when missing; the file is 0600. A stale file of
    /// the same name is truncated first: its bytes are never trusted.
    pub(super) fn create(dir: &Path, name: &str, len: u64) -> io::Result<CacheFile> {
        if !dir.is_dir() {
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        let path = dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)?;
        // SAFETY: flock on a valid open descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    "in use by another reader of the same object (another tdfs process on the \
                     same cache directory?); give each mount its own --cache-dir",
                ));
            }
            return Err(err);
        }
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.set_len(0)?;
        file.set_len(len)?;
        let map = MmapOptions::new().len(len as usize).map_raw(&file)?;
        Ok(CacheFile {
            path,
            file,
            map,
            len,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes `[off, off+len)`.
    ///
    /// # Safety
    /// The range must be inside the file and hold present bytes that no one
    /// writes for as long as the slice lives (the present bitmap and the
    /// eviction pins guarantee this).
    pub(super) unsafe fn slice(&self, off: u64, len: u64) -> &[u8] {
        debug_assert!(off + len <= self.len);
        // SAFETY: in bounds of the mapping (caller), which lives as long as self.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(off as usize), len as usize) }
    }

    /// Fill `buf` from the file at `off` with `pread`, not through the
    /// mapping, so bytes lost from the file are an error here rather than a
    /// SIGBUS.
    ///
    /// # Errors
    /// The read's error (EIO from a failing disk), or `UnexpectedEof` when
    /// the file was truncated below `off + buf.len()`.
    pub(super) fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        debug_assert!(off + buf.len() as u64 <= self.len);
        self.file.read_exact_at(buf, off)
    }

    /// Make sure the pages of `[off, off+len)` can be read before the
    /// kernel copies a reply out of them: when the file still reaches past
    /// them and they are all in the page cache (`mincore`) they can (a
    /// truncation may leave a large folio across the new end in the page
    /// cache, hence the length check); otherwise they are faulted in
    /// (`MADV_POPULATE_READ`), and a page that cannot be read (past a
    /// truncated end, or an I/O error) is an error here, where a copy from
    /// the mapping would fault. Kernels before 5.14 lack the advice
    /// (EINVAL): the range is then taken as it is.
    ///
    /// # Errors
    /// EFAULT (beyond the file's end) or EIO/EFAULT (a failing disk).
    pub(super) fn populate(&self, off: u64, len: u64) -> io::Result<()> {
        debug_assert!(off + len <= self.len);
        if len == 0 {
            return Ok(());
        }
        // madvise and mincore want a page-aligned start.
        let start = off - off % PAGE_SIZE;
        let within = self.current_len().is_ok_and(|n| n >= off + len);
        if within && self.resident(start, off + len - start) {
            return Ok(());
        }
        // SAFETY: a range inside the mapping, which lives as long as self;
        // populating reads the pages and writes nothing.
        let rc = unsafe {
            libc::madvise(
                self.map.as_ptr().add(start as usize) as *mut libc::c_void,
                (off + len - start) as usize,
                libc::MADV_POPULATE_READ,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINVAL) => Ok(()),
            _ => Err(err),
        }
    }

    /// True when every page of `[start, start+len)` (`start` page-aligned)
    /// is in the page cache. Asking is much cheaper than populating pages
    /// already there, which walks and marks each page: on the development
    /// VM (2026-11-30) 1.5–3.6 µs per MiB against 95 µs for a file written
    /// in 256 KiB pieces (`WRITE_PIECE`; small folios are mapped page by
    /// page). False when the kernel cannot say.
    fn resident(&self, start: u64, len: u64) -> bool {
        // Pages asked about per call: 1 MiB, the largest FUSE read.
        const BATCH: u64 = 256;
        let mut vec = [0u8; BATCH as usize];
        let mut pos = start;
        let end = start + len;
        while pos < end {
            let n = (end - pos).min(BATCH * PAGE_SIZE);
            // SAFETY: a page-aligned range inside the mapping, which lives
            // as long as self; `vec` holds a byte for each of its at most
            // BATCH pages.
            let rc = unsafe {
                libc::mincore(
                    self.map.as_ptr().add(pos as usize) as *mut libc::c_void,
                    n as usize,
                    vec.as_mut_ptr(),
                )
            };
            let pages = n.div_ceil(PAGE_SIZE) as usize;
            if rc != 0 || vec[..pages].iter().any(|&v| v & 1 == 0) {
                return false;
            }
            pos += n;
        }
        true
    }

    /// The file's size now, in bytes: less than the diff when something
    /// truncated it.
    pub(super) fn current_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Give a truncated file back its full length (the lost part reads as
    /// a hole). Only once no byte past the truncation is marked present.
    pub(super) fn restore_len(&self) -> io::Result<()> {
        self.file.set_len(self.len)
    }

    /// Write `bytes` at `off` with `pwrite` (into a range that is not present
    /// and is owned by the caller's fetch session), in `WRITE_PIECE`s.
    /// Unlike a write through the mapping, whole pages written this way are
    /// never zeroed first. The written pages are not mapped here: the
    /// kernel's copy of an in-place reply faults them in (`populate` only
    /// makes sure they can be read), and a copy out (`read_at`) never needs
    /// them mapped.
    pub(super) fn write_at(&self, off: u64, bytes: &[u8]) -> io::Result<()> {
        debug_assert!(off + bytes.len() as u64 <= self.len);
        let mut done = 0;
        for piece in bytes.chunks(WRITE_PIECE) {
            if let Err(e) = self.file.write_all_at(piece, off + done) {
                // Give back what part of it was written: a full disk needs room.
                let _ = self.punch_hole(off..off + bytes.len() as u64);
                return Err(e);
            }
            done += piece.len() as u64;
        }
        Ok(())
    }

    /// Reserve disk blocks for a range before writing it, so a full disk is
    /// an error here rather than part-way through a write.
    pub(super) fn allocate(&self, range: Range<u64>) -> io::Result<()> {
        self.fallocate(0, range)
            .or_else(|e| match e.raw_os_error() {
                Some(libc::EOPNOTSUPP) => Ok(()),
                _ => Err(e),
            })
    }

    /// Give a range's disk blocks back; it then reads as zeros. Partial pages
    /// at the ends are zeroed only within the range.
    pub(super) fn punch_hole(&self, range: Range<u64>) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            range,
        )
    }

    fn fallocate(&self, mode: libc::c_int, range: Range<u64>) -> io::Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        // SAFETY: fallocate on a valid descriptor with an in-file range.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                range.start as libc::off_t,
                (range.end - range.start) as libc::off_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Unlink the file; the mapping stays valid until the last user drops it.
    pub(super) fn unlink(&self) {
        if let Err(e) = fs::remove_file(&self.path) {
            log::warn!("removing cache file {}: {e}", self.path.display());
        }
    }
}

/// A fixed-size bitmap of atomic words. Bits are set with Release once the
/// bytes they stand for are complete and verified, and tested with Acquire, so
/// a reader that sees a bit also sees the bytes.
pub(super) struct PresentBits {
    words: Box<[AtomicU64]>,
}

impl PresentBits {
    pub(super) fn new(bits: usize) -> PresentBits {
        PresentBits {
            words: (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Word indices and masks covering `bits`.
    fn spans(bits: Range<usize>) -> impl Iterator<Item = (usize, u64)> {
        let (start, end) = (bits.start, bits.end);
        let words = if start < end {
            start / 64..(end - 1) / 64 + 1
        } else {
            0..0
        };
        words.map(move |w| {
            let lo = start.max(w * 64) - w * 64;
            let hi = end.min(w * 64 + 64) - w * 64;
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            (w, mask)
        })
    }

    pub(super) fn all_set(&self, bits: Range<usize>) -> bool {
        Self::spans(bits).all(|(w, m)| self.words[w].load(Ordering::Acquire) & m == m)
    }

    pub(super) fn set(&self, bits: Range<usize>) {
        for (w, m) in Self::spans(bits) {
            self.words[w].fetch_or(m, Ordering::Release);
        }
    }

    pub(super) fn clear(&self, bits: Range<usize>) {
        for (w, m) in Self::spans(bits) {
            self.words[w].fetch_and(!m, Ordering::Release);
        }
    }

    /// How many of `bits` are set.
    pub(super) fn count(&self, bits: Range<usize>) -> usize {
        Self::spans(bits)
            .map(|(w, m)| (self.words[w].load(Ordering::Acquire) & m).count_ones() as usize)
            .sum()
    }

    /// The first clear bit in `bits`, if any.
    pub(super) fn first_clear(&self, bits: Range<usize>) -> Option<usize> {
        Self::spans(bits).find_map(|(w, m)| {
            let missing = !self.words[w].load(Ordering::Acquire) & m;
            (missing != 0).then(|| w * 64 + missing.trailing_zeros() as usize)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_across_word_boundaries() {
        let b = PresentBits::new(200);
        assert!(b.all_set(5..5));
        b.set(60..130);
        assert!(b.all_set(60..130));
        assert!(!b.all_set(59..130));
        assert!(!b.all_set(60..131));
        assert_eq!(b.count(0..200), 70);
        assert_eq!(b.first_clear(60..200), Some(130));
        assert_eq!(b.first_clear(60..130), None);
        b.clear(64..128);
        assert_eq!(b.count(0..200), 6);
        assert_eq!(b.first_clear(60..130), Some(64));
        b.set(0..200);
        assert!(b.all_set(0..200));
        assert_eq!(b.count(0..200), 200);
    }

    #[test]
    fn cache_file_is_private_sparse_and_replaces_stale_files() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("cache");
        fs::write(dir.path().join("stale"), b"x").unwrap();
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("obj.cache"), vec![7u8; 10_000]).unwrap();
        let f = CacheFile::create(&sub, "obj.cache", 1 << 30).unwrap();
        let md = fs::metadata(f.path()).unwrap();
        assert_eq!(md.len(), 1 << 30);
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        use std::os::unix::fs::MetadataExt;
        assert!(md.blocks() * 512 < 1 << 20, "the file must be sparse");
        // SAFETY: nothing else uses the file.
        assert!(unsafe { f.slice(0, 10_000) }.iter().all(|&b| b == 0));
        assert!(CacheFile::create(&sub, "obj.cache", 10).is_err());
        let path = f.path().to_path_buf();
        f.unlink();
        assert!(!path.exists());

        let fresh = dir.path().join("new/dir");
        let g = CacheFile::create(&fresh, "x.cache", 0).unwrap();
        assert_eq!(
            fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // SAFETY: empty slice of an empty mapping.
        assert!(unsafe { g.slice(0, 0) }.is_empty());
    }

    #[test]
    fn a_truncated_cache_file_is_an_error_to_pread_and_populate_not_a_fault() {
        let dir = tempfile::tempdir().unwrap();
        let f = CacheFile::create(dir.path(), "obj.cache", 1 << 20).unwrap();
        f.write_at(0, &[9u8; 1 << 20]).unwrap();
        let mut buf = vec![0u8; 8192];
        f.read_at(&mut buf, 4096).unwrap();
        assert!(buf.iter().all(|&b| b == 9));
        f.populate(100, 5000).unwrap();

        // What an operator's `truncate -s 0` does under a running mount.
        fs::OpenOptions::new()
            .write(true)
            .open(f.path())
            .unwrap()
            .set_len(4096)
            .unwrap();
        assert_eq!(f.current_len().unwrap(), 4096);
        f.populate(0, 4096).unwrap();
        f.read_at(&mut buf[..4096], 0).unwrap();
        let short = f.read_at(&mut buf, 4096).unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);
        let fault = f.populate(4096, 8192).unwrap_err();
        assert_eq!(fault.raw_os_error(), Some(libc::EFAULT), "{fault}");

        f.restore_len().unwrap();
        assert_eq!(f.current_len().unwrap(), 1 << 20);
        f.populate(4096, 8192).unwrap();
        f.read_at(&mut buf, 4096).unwrap();
        assert!(buf.iter().all(|&b| b == 0), "the lost part reads as a hole");
    }
}
