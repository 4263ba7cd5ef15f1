//! Links fuser's callbacks to `TemplateFs`, and is only that: each callback
//! calls the matching method and replies; every error goes through
//! `error::report` (logged once, turned into an errno). Anything that would
//! write gets EROFS.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, Negotiated, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, SessionUnmounter, TimeOrNow, WriteFlags,
};

use super::error::report;
use super::passthrough::may_register_backing_files;
use super::templatefs::TemplateFs;
use super::xattr::{XattrReply, size_probe};
use crate::sync;

/// Largest read-ahead we ask the kernel for (it may offer less).
pub const MAX_READAHEAD: u32 = 1 << 20;
/// Background requests (read-ahead) the kernel may queue: enough to keep
/// the fetch pool busy.
const MAX_BACKGROUND: u16 = 64;

/// The fuser `Filesystem` of a mount.
pub struct FuseAdapter {
    fs: Arc<TemplateFs>,
    /// The mount, for `destroy` to take (see there); set once mounted.
    mount: Arc<Mutex<Option<SessionUnmounter>>>,
}

impl FuseAdapter {
    /// The adapter, and the slot to put the mount's unmounter in once the
    /// session exists.
    pub fn new(fs: Arc<TemplateFs>) -> (Self, Arc<Mutex<Option<SessionUnmounter>>>) {
        let mount = Arc::new(Mutex::new(None));
        (
            FuseAdapter {
                fs,
                mount: mount.clone(),
            },
            mount,
        )
    }
}

impl FuseAdapter {
    /// Take on a connection another process initialised (`fs::resume`):
    /// `init` is never called for it, so what it would have decided from
    /// the kernel's offer is decided from what was negotiated.
    pub fn adopt(&self, negotiated: &Negotiated) {
        if self.fs.passthrough_enabled() && !may_register_backing_files() {
            self.fs.passthrough_unavailable(
                "tdfs lacks CAP_SYS_ADMIN, which the kernel requires of a backing file",
            );
        }
        if self.fs.passthrough_enabled() && !negotiated.flags.contains(InitFlags::FUSE_PASSTHROUGH)
        {
            self.fs
                .passthrough_unavailable("the connection was set up without FUSE passthrough");
        }
        log::debug!("kernel connection taken over: {negotiated:?}");
    }
}

thread_local! {
    /// Each worker thread copies reads that are not served in place (see
    /// `TemplateFs::read`) into one buffer it keeps.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Unwrap a result or reply its error and return.
macro_rules! try_reply {
    ($reply:ident, $result:expr, $($op:tt)+) => {
        match $result {
            Ok(v) => v,
            Err(e) => {
                $reply.error(report(format_args!($($op)+), &e));
                return;
            }
        }
    };
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        if let Err(offered) = config.set_max_readahead(MAX_READAHEAD) {
            // The kernel caps read-ahead at what it offered; take all of it.
            let _ = config.set_max_readahead(offered);
        }
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_congestion_threshold(MAX_BACKGROUND * 3 / 4);
        // Lookups and listings need not be serialized per directory.
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        if self.fs.passthrough_enabled() && !may_register_backing_files() {
            self.fs.passthrough_unavailable(
                "tdfs lacks CAP_SYS_ADMIN, which the kernel requires of a backing file",
            );
        }
        if self.fs.passthrough_enabled() {
            match config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
                Ok(()) => {
                    let _ = config.set_max_stack_depth(self.fs.passthrough_stack_depth());
                }
                Err(_) => self
                    .fs
                    .passthrough_unavailable("the kernel does not offer FUSE passthrough"),
            }
        }
        log::debug!("kernel connection: {config:?}");
        Ok(())
    }

    /// Serving has ended. If the mount was unmounted from outside, fuser
    /// would now unmount its path again and warn that it could not (EINVAL:
    /// nothing is mounted there any more). Taking the mount here ends that
    /// attempt quietly: its error only says the mount is already gone.
    fn destroy(&mut self) {
        if let Some(mut mount) = sync::lock(&self.mount).take()
            && let Err(e) = mount.unmount()
        {
            log::debug!("unmounting at the end of serving: {e} (already unmounted)");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let entry = try_reply!(
            reply,
            self.fs.lookup(parent.0, name),
            "lookup {name:?} in inode {parent}"
        );
        reply.entry(&entry.ttl, &entry.attr, Generation(0));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let entry = try_reply!(reply, self.fs.getattr(ino.0), "getattr of inode {ino}");
        reply.attr(&entry.ttl, &entry.attr);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let opened = try_reply!(reply, self.fs.opendir(ino.0), "opendir of inode {ino}");
        reply.opened(FileHandle(opened.fh), opened.flags);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        try_reply!(reply, self.fs.adopt(ino.0, fh.0), "readdir of inode {ino}");
        let entries = try_reply!(
            reply,
            self.fs.readdir(fh.0, offset),
            "readdir of inode {ino}"
        );
        for (i, e) in entries.iter().enumerate() {
            if reply.add(INodeNo(e.ino), offset + i as u64 + 1, e.kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    /// A passthrough open registers the flat file with the kernel once per
    /// inode (the first open of its passthrough opens; see
    /// `fs::passthrough`); if the kernel refuses it, this open and all later
    /// ones are normal.
    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let opened = try_reply!(reply, self.fs.open(ino.0, flags.0), "open of inode {ino}");
        let fh = FileHandle(opened.fh);
        let Some(backing) = opened.backing else {
            reply.opened(fh, opened.flags);
            return;
        };
        let mut slot = sync::lock(&backing.slot);
        if slot.is_none() && self.fs.passthrough_enabled() {
            match reply.open_backing(&*backing.file) {
                Ok(id) => *slot = Some(id),
                Err(e) => self.fs.passthrough_unavailable(&format!(
                    "the kernel refused a backing file ({e}; it needs CAP_SYS_ADMIN)"
                )),
            }
        }
        match slot.as_ref() {
            Some(id) => {
                self.fs.opened_as(opened.fh, true);
                // No caching flags: the kernel refuses them with
                // FOPEN_PASSTHROUGH (FOPEN_PASSTHROUGH_MASK, fs/fuse/iomode.c);
                // the page cache is the flat file's own.
                reply.opened_passthrough(fh, FopenFlags::empty(), id);
            }
            None => {
                self.fs.opened_as(opened.fh, false);
                reply.opened(fh, opened.flags);
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        try_reply!(
            reply,
            self.fs.adopt(ino.0, fh.0),
            "read of {size} bytes at {offset} of inode {ino}"
        );
        READ_BUF.with_borrow_mut(|buf| {
            // The reply goes inside the read: in-place bytes are pinned
            // cache only while it runs.
            let mut reply = Some(reply);
            if let Err(e) = self.fs.read(fh.0, offset, size, buf, |data| {
                reply.take().expect("replied once").data(data)
            }) && let Some(reply) = reply
            {
                reply.error(report(
                    format_args!("read of {size} bytes at {offset} of inode {ino}"),
                    &e,
                ));
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let f = self.fs.statfs();
        reply.statfs(
            f.blocks,
            f.free,
            f.available,
            f.files,
            f.files_free,
            f.block_size,
            f.name_max,
            f.block_size,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let value = try_reply!(
            reply,
            self.fs.getxattr(ino.0, name),
            "getxattr {name:?} of inode {ino}"
        );
        reply_xattr(reply, &value, size);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let names = try_reply!(reply, self.fs.listxattr(ino.0), "listxattr of inode {ino}");
        reply_xattr(reply, &names, size);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Only called without default_permissions; the modes say it all.
        reply.ok();
    }

    /// No ioctls: terminals probe with TCGETS when a tool reads `.stats`;
    /// a quiet ENOTTY is the answer a plain file gives.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    // Everything below would change the tree.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever dirty.
        reply.ok();
    }
}

fn reply_xattr(reply: ReplyXattr, value: &[u8], size: u32) {
    match size_probe(value, size) {
        XattrReply::Size(n) => reply.size(n),
        XattrReply::Data(d) => reply.data(d),
        XattrReply::TooSmall => reply.error(Errno::ERANGE),
    }
}
