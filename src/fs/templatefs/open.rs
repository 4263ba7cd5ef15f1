//! Open files and directories of a `TemplateFs`: opening a node (a wholly
//! cached template file in passthrough mode when `fs::passthrough` allows),
//! listing an open directory, reads from a handle (in place from the cache
//! when the range allows, copied otherwise) and releasing it.

use std::sync::Arc;

use fuser::FopenFlags;

use super::{Opened, TemplateFs};
use crate::fs::error::FsError;
use crate::fs::handles::{CurrentFile, DirEntry, Handle};
use crate::fs::inode::{BuildDirFile, Node};
use crate::template::TemplateFile;

impl TemplateFs {
    /// The entries of an open directory from position `offset` on; the
    /// offset of entry `i` is `i + 1`.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Vec<DirEntry>, FsError> {
        match &*self.handles.get(fh)? {
            Handle::Dir(entries) => Ok(entries
                .iter()
                .skip(usize::try_from(offset).unwrap_or(usize::MAX))
                .cloned()
                .collect()),
            _ => Err(FsError::NotADirectory),
        }
    }

    /// Make sure the handle `fh` of inode `ino`, which the kernel holds, is
    /// open here. It is not when a previous serving process of this
    /// connection opened it and died (see `fs::takeover`): it is opened
    /// again from its inode, read-only (the only way anything is opened),
    /// under the same number. Cheap when it is open (one table lookup).
    ///
    /// # Errors
    /// The inode's node is gone (`NoEntry`) or cannot be opened.
    pub fn adopt(&self, ino: u64, fh: u64) -> Result<(), FsError> {
        if self.handles.contains(fh) {
            return Ok(());
        }
        let handle = match self.node(ino)? {
            Node::Root | Node::Build(_) | Node::DiffDir(_) => self.dir_handle(ino)?.0,
            _ => self.file_handle(ino)?.0,
        };
        log::debug!("handle {fh} of inode {ino} opened again after a takeover");
        self.handles.insert(fh, handle);
        Ok(())
    }

    pub fn open(&self, ino: u64, flags: i32) -> Result<Opened, FsError> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(FsError::ReadOnly);
        }
        let (handle, flags) = self.file_handle(ino)?;
        let Handle::Template { file, .. } = &handle else {
            return Ok(Opened {
                fh: self.handles.add(handle),
                flags,
                backing: None,
            });
        };
        let file = &file.get();
        let (build, kind) = (file.build_id(), file.file());
        self.builds.start_prefetch(file);
        if self.passthrough.enabled() {
            self.builds.flatten_when_cached(file);
        }
        let flat = self.builds.flat_file(build, kind);
        let fh = self.handles.add(handle);
        Ok(Opened {
            fh,
            flags,
            backing: self.passthrough.open(ino, fh, flat),
        })
    }

    /// What an open of file `ino` reads from, and its caching flags.
    fn file_handle(&self, ino: u64) -> Result<(Handle, FopenFlags), FsError> {
        Ok(match self.node(ino)? {
            Node::Root | Node::Build(_) | Node::DiffDir(_) => return Err(FsError::IsADirectory),
            // Direct I/O: the size is not known before the content exists.
            Node::Stats => (
                Handle::Stats(self.builds.stats().render_prometheus().into_bytes()),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Node::File(build, BuildDirFile::Template(kind)) => {
                let file = self.open_template(build, kind)?;
                let read_ahead = file.read_ahead_state();
                let recording = self.builds.record(&file);
                (
                    Handle::Template {
                        file: CurrentFile::new(file),
                        read_ahead,
                        recording,
                    },
                    FopenFlags::FOPEN_KEEP_CACHE,
                )
            }
            Node::Diff(build, kind) => (
                Handle::Diff(self.open_diff(build, kind)?),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Node::File(build, BuildDirFile::Blob(blob)) => {
                let size = self.blob_size(build, blob)?;
                // A blob that may be re-uploaded must not be served from
                // pages the kernel kept from an older version.
                let flags = if blob.may_change() {
                    FopenFlags::empty()
                } else {
                    FopenFlags::FOPEN_KEEP_CACHE
                };
                (Handle::Blob { build, blob, size }, flags)
            }
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
        let handle = self.handles.get(fh)?;
        if let Handle::Template {
            file: current,
            read_ahead,
            recording,
        } = &*handle
        {
            // Only what the kernel asks for is recorded: demand reads and
            // mmap faults, not read-ahead or prefetch.
            if let Some(recording) = recording {
                recording.note(offset, u64::from(len));
            }
            let mut file = current.get();
            if file.origin_switched_since()
                && let Some(new) = self.builds.reopen(&file)
            {
                file = current.replace(&file, new);
            }
            file.read_ahead(read_ahead, offset, u64::from(len));
            let mut retried = false;
            loop {
                let failed = match file.read_in_place(offset, len as usize) {
                    Ok(Some(bytes)) => return Ok(reply(&bytes)),
                    Ok(None) => break,
                    Err(e) => e,
                };
                file = self.after_failure(current, &file, &mut retried, offset, failed)?;
            }
            return self
                .read_template_copy(current, file, offset, len, buf)
                .map(reply);
        }
        if let Handle::Diff(diff) = &*handle {
            let in_place = diff
                .read_in_place(offset, u64::from(len))
                .map_err(|e| FsError::diff(diff.build_id(), diff.file(), Some(offset), e))?;
            if let Some(block) = in_place {
                return Ok(reply(&block));
            }
        }
        self.read_copy(&handle, offset, len, buf).map(reply)
    }

    /// A read of `file` failed: the file to try once more when its build
    /// left its origin peer since it was opened (its Chunkers may read an
    /// object the store does not have), else the failure as the reply.
    fn after_failure(
        &self,
        current: &CurrentFile,
        file: &Arc<TemplateFile>,
        retried: &mut bool,
        offset: u64,
        failed: crate::template::TemplateError,
    ) -> Result<Arc<TemplateFile>, FsError> {
        if !*retried && let Some(new) = self.builds.reopen(file) {
            *retried = true;
            return Ok(current.replace(file, new));
        }
        Err(FsError::template(
            file.build_id(),
            file.file(),
            Some(offset),
            failed,
        ))
    }

    /// A template file's range copied into `buf` (see `read`).
    fn read_template_copy<'b>(
        &self,
        current: &CurrentFile,
        mut file: Arc<TemplateFile>,
        offset: u64,
        len: u32,
        buf: &'b mut Vec<u8>,
    ) -> Result<&'b [u8], FsError> {
        let want = file.size().saturating_sub(offset).min(u64::from(len)) as usize;
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let mut retried = false;
        loop {
            match file.read_at(&mut buf[..want], offset) {
                Ok(n) => return Ok(&buf[..n]),
                Err(e) => file = self.after_failure(current, &file, &mut retried, offset, e)?,
            }
        }
    }

    fn read_copy<'b>(
        &self,
        handle: &Handle,
        offset: u64,
        len: u32,
        buf: &'b mut Vec<u8>,
    ) -> Result<&'b [u8], FsError> {
        let size = match handle {
            Handle::Template { file, .. } => {
                return self.read_template_copy(file, file.get(), offset, len, buf);
            }
            Handle::Diff(diff) => diff.size(),
            Handle::Blob { size, .. } => *size,
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
            // Answered above.
            Handle::Template { .. } | Handle::Dir(_) => Err(FsError::IsADirectory),
            Handle::Diff(diff) => {
                let n = diff
                    .read_at(out, offset)
                    .map_err(|e| FsError::diff(diff.build_id(), diff.file(), Some(offset), e))?;
                Ok(&out[..n])
            }
            Handle::Blob { build, blob, .. } => {
                self.builds
                    .read_blob(*build, *blob, offset, out)
                    .map_err(|e| FsError::blob(*build, *blob, Some(offset), e))?;
                Ok(out)
            }
            Handle::Stats(text) => {
                let start = offset as usize;
                out.copy_from_slice(&text[start..start + want]);
                Ok(out)
            }
        }
    }

    /// Forget an open file or directory. Closing a template file may
    /// start its flattening: a reader that has just read all of it is the
    /// usual way a file becomes wholly cached.
    pub fn release(&self, fh: u64) {
        self.passthrough.release(fh);
        if let Some(handle) = self.handles.remove(fh)
            && let Handle::Template { file, .. } = &*handle
            && self.passthrough.enabled()
        {
            self.builds.flatten_when_cached(&file.get());
        }
    }
}
