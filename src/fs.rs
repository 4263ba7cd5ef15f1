//! The FUSE adapter (fuser): inodes, attributes, xattrs, `.stats`, errno
//! mapping. Thin: it translates FUSE calls into `template` calls.
//!
//! `TemplateFs` is the tree itself and can be driven without a kernel
//! (`templatefs` for nodes, attributes and xattrs, `templatefs::open` for
//! opening, reading and releasing; `handles` holds the handle types,
//! `xattr` the attribute values, `inode` the inode numbers); `fuse` links fuser's callbacks to it; `mount` mounts and
//! unmounts; `error` is where every failure becomes an errno and a log line;
//! `connection` tells the log a reply refused because the mount ended;
//! `passthrough` decides which opens the kernel serves from flat files;
//! `statfs` is what `df` shows; `log_limit` keeps the error log bounded;
//! `takeover` is what one serving process of a mount leaves the next (the
//! negotiated parameters, the inode table, handle numbering).

mod connection;
mod error;
mod fuse;
mod handles;
mod inode;
mod log_limit;
mod mount;
mod passthrough;
mod statfs;
mod takeover;
mod templatefs;
mod xattr;

pub use connection::{has_ended, is_reply_after_end};
pub use error::{FsError, ToErrno, chain};
pub use handles::DirEntry;
pub use inode::STATS_NAME;
pub use mount::{
    MountConfig, Mounted, MountpointError, Unmounted, check_fuse_device, mount, mount_points,
    prepare_mountpoint, resume,
};
pub use statfs::{FsFigures, NAME_MAX, STATFS_BLOCK};
pub use takeover::{Continuity, Handover, StateDir};
pub use templatefs::{Entry, FsConfig, IMMUTABLE_TTL, Opened, TemplateFs};
