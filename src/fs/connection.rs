//! Whether a mount's kernel connection has ended, for the one log record
//! that is not an error once it has: fuser's "Failed to send FUSE reply: No
//! such file or directory".
//!
//! Why it cannot be prevented: when the last file of a lazily detached
//! mount is closed, the kernel queues that file's RELEASE and, in the same
//! close(2), ends the connection (a plain FUSE mount has no DESTROY
//! exchange; the kernel sends one only for fuseblk). A worker already
//! holding the RELEASE, or a read that was in flight, then replies to a
//! request the kernel has dropped, and writing to /dev/fuse fails with
//! ENOENT. fuser logs that at error level from inside its reply code, where
//! no filesystem callback runs. So the record is recognised here, and only
//! while the connection is seen to have ended (the /dev/fuse descriptor
//! polls POLLERR): a refused reply on a live connection stays an error.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};

use crate::sync;

/// The log target and message fuser uses for a reply the kernel refused
/// with ENOENT (fuser 0.18, `reply.rs`).
const REPLY_TARGET: &str = "fuser::reply";
const REFUSED_REPLY: &str = "Failed to send FUSE reply: No such file or directory";

/// Connections of this process's live mounts; a `Connection` dropped with
/// its `Mounted` leaves a dead entry that the next `watch` removes.
static CONNECTIONS: Mutex<Vec<Weak<OwnedFd>>> = Mutex::new(Vec::new());

/// A duplicate of a mount's /dev/fuse descriptor, watched while it lives.
/// Its entry in `CONNECTIONS` lives as long as it does.
#[derive(Debug)]
pub struct Connection {
    fd: Arc<OwnedFd>,
}

impl Connection {
    /// Watch the connection of the /dev/fuse descriptor `device`.
    ///
    /// # Errors
    /// The error of dup(2) (out of descriptors).
    pub fn watch(device: impl AsFd) -> std::io::Result<Connection> {
        let fd = Arc::new(device.as_fd().try_clone_to_owned()?);
        let mut all = sync::lock(&CONNECTIONS);
        all.retain(|c| c.strong_count() > 0);
        all.push(Arc::downgrade(&fd));
        Ok(Connection { fd })
    }

    /// Another descriptor of the same open /dev/fuse file.
    ///
    /// # Errors
    /// The error of dup(2) (out of descriptors).
    pub fn duplicate(&self) -> std::io::Result<OwnedFd> {
        self.fd.try_clone()
    }
}

/// True when the kernel has ended the connection of the /dev/fuse
/// descriptor `fd` (it polls POLLERR): unmounted, or aborted.
pub fn has_ended(fd: &OwnedFd) -> bool {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready == 1 && poll.revents & libc::POLLERR != 0
}

/// True for fuser's record of a reply refused because a mount's connection
/// has ended (see the module docs): the end of a mount, not an error.
pub fn is_reply_after_end(record: &log::Record<'_>) -> bool {
    if record.target() != REPLY_TARGET || record.level() != log::Level::Error {
        return false;
    }
    if !record.args().to_string().starts_with(REFUSED_REPLY) {
        return false;
    }
    sync::lock(&CONNECTIONS)
        .iter()
        .filter_map(Weak::upgrade)
        .any(|fd| has_ended(&fd))
}
