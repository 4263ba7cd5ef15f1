//! The serving process's side of whoever keeps its mount's /dev/fuse
//! descriptor across its death (issue 25): tdfs's own supervisor
//! (`supervisor`, talked to over a socket) or systemd's fd store
//! (`FDSTORE=1` notices, the descriptor given back in `LISTEN_FDS`). Either
//! way the process learns here whether it takes over a connection (and
//! which state directory holds its parameters) or mounts a new one, hands a
//! new connection to the keeper, and says when it serves.
//!
//! The link to the supervisor is a `SOCK_SEQPACKET` socket (one message a
//! datagram): `mounted` (with the descriptor, SCM_RIGHTS), `ready STATUS`,
//! `error WHY`. The supervisor passes the socket, the state directory, the
//! canonical mountpoint and, for a takeover, the descriptor in the
//! environment (`ENV_*`).

use std::env;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use super::mount::MountError;
use crate::fs::Handover;

/// The supervisor's socket (a descriptor number).
pub(super) const ENV_SOCKET: &str = "TDFS_SUPERVISOR_FD";
/// The connection to take over (a descriptor number), when there is one.
pub(super) const ENV_DEVICE: &str = "TDFS_FUSE_FD";
/// The mount's state directory.
pub(super) const ENV_STATE_DIR: &str = "TDFS_STATE_DIR";
/// The mountpoint, canonical (a process taking over must not stat it: the
/// mount answers nothing until it serves).
pub(super) const ENV_MOUNTPOINT: &str = "TDFS_MOUNTPOINT";
/// The name the descriptor is stored under in systemd's fd store.
const FD_NAME: &str = "fuse";
/// Longest message on the supervisor's socket.
pub(super) const MAX_MESSAGE: usize = 4096;

/// Who keeps this serving process's connection.
pub(super) enum Keeper {
    /// tdfs's supervisor, our parent.
    Supervisor {
        socket: OwnedFd,
        device: Option<OwnedFd>,
        state_dir: PathBuf,
        mountpoint: PathBuf,
    },
    /// systemd's fd store (`FileDescriptorStoreMax=` in the unit).
    FdStore {
        device: Option<OwnedFd>,
        state_dir: PathBuf,
    },
}

impl Keeper {
    /// The keeper the environment names: a supervisor that started us, or
    /// systemd with an fd store (`$NOTIFY_SOCKET` and a non-zero
    /// `$FDSTORE`, which systemd sets for units with
    /// FileDescriptorStoreMax=); None when neither (this process becomes the
    /// supervisor). `state_dir` is where an fd-store mount keeps its state.
    ///
    /// # Errors
    /// A variable that names no open descriptor.
    pub(super) fn from_env(
        state_dir: impl FnOnce() -> PathBuf,
    ) -> Result<Option<Keeper>, MountError> {
        if let Some(socket) = env_fd(ENV_SOCKET)? {
            let device = env_fd(ENV_DEVICE)?;
            let path = |name: &str| {
                env::var_os(name)
                    .map(PathBuf::from)
                    .ok_or_else(|| MountError::Process(format!("${name} is not set")))
            };
            return Ok(Some(Keeper::Supervisor {
                socket,
                device,
                state_dir: path(ENV_STATE_DIR)?,
                mountpoint: path(ENV_MOUNTPOINT)?,
            }));
        }
        let fd_store = env::var("FDSTORE").is_ok_and(|n| n.parse::<u32>().is_ok_and(|n| n > 0));
        if env::var_os("NOTIFY_SOCKET").is_none() || !fd_store {
            return Ok(None);
        }
        let stored = sd_notify::listen_fds_with_names()
            .map_err(|e| MountError::Process(format!("descriptors from systemd: {e}")))?;
        let mut device = None;
        for (fd, name) in stored {
            // SAFETY: systemd passed these descriptors to this process
            // (LISTEN_PID is ours), and nothing else owns them.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            if name == FD_NAME {
                device = Some(fd);
            }
        }
        Ok(Some(Keeper::FdStore {
            device,
            state_dir: state_dir(),
        }))
    }

    /// The connection to take over, if the keeper gave one back.
    pub(super) fn take_device(&mut self) -> Option<OwnedFd> {
        match self {
            Keeper::Supervisor { device, .. } | Keeper::FdStore { device, .. } => device.take(),
        }
    }

    /// Where the connection's parameters and inode table are kept.
    pub(super) fn state_dir(&self) -> &Path {
        match self {
            Keeper::Supervisor { state_dir, .. } | Keeper::FdStore { state_dir, .. } => state_dir,
        }
    }

    /// The mountpoint the supervisor prepared, canonical.
    pub(super) fn mountpoint(&self) -> Option<&Path> {
        match self {
            Keeper::Supervisor { mountpoint, .. } => Some(mountpoint),
            Keeper::FdStore { .. } => None,
        }
    }

    /// Give a new connection to the keeper.
    ///
    /// # Errors
    /// The supervisor's socket or systemd's notify socket refused it.
    pub(super) fn keep(&self, handover: &Handover) -> Result<(), MountError> {
        let failed =
            |e: io::Error| MountError::Process(format!("handing the connection over: {e}"));
        match self {
            Keeper::Supervisor { socket, .. } => {
                send(socket.as_fd(), b"mounted", Some(handover.device.as_fd())).map_err(failed)
            }
            Keeper::FdStore { .. } => store_fd(handover.device.as_fd()).map_err(failed),
        }
    }

    /// Tell the keeper the mount serves (`status` for a service manager).
    /// A supervisor passes it on; under systemd this process is the unit's
    /// main process and tells systemd itself (`readiness`), so nothing is
    /// sent here.
    pub(super) fn serving(&self, status: &str) {
        if let Keeper::Supervisor { socket, .. } = self
            && let Err(e) = send(socket.as_fd(), format!("ready {status}").as_bytes(), None)
        {
            log::warn!("telling the supervisor the mount serves: {e}");
        }
    }

    /// Tell a supervisor why this process could not serve, before it exits.
    pub(super) fn failed(&self, why: &str) {
        if let Keeper::Supervisor { socket, .. } = self {
            let mut message = format!("error {why}").into_bytes();
            message.truncate(MAX_MESSAGE);
            let _ = send(socket.as_fd(), &message, None);
        }
    }
}

/// `FDSTORE=1` with `fd` to systemd's notify socket (sd_pid_notify_with_fds;
/// sd-notify has it only behind a feature that needs another crate, and it
/// is one sendmsg).
fn store_fd(fd: BorrowedFd<'_>) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let path = env::var_os("NOTIFY_SOCKET").unwrap_or_default();
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(Path::new(&path))?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.connect_addr(&addr)?;
    let message = format!("FDSTORE=1\nFDNAME={FD_NAME}\n");
    send(socket.as_fd(), message.as_bytes(), Some(fd))
}

/// The descriptor number in variable `name`, made ours (close-on-exec, so
/// it goes to no further child by accident).
fn env_fd(name: &str) -> Result<Option<OwnedFd>, MountError> {
    let Some(value) = env::var_os(name) else {
        return Ok(None);
    };
    let bad = || MountError::Process(format!("${name}={value:?}: not an open descriptor"));
    let fd: RawFd = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .ok_or_else(bad)?;
    // SAFETY: fcntl on any number is sound; it fails on a closed one.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(bad());
    }
    // SAFETY: the supervisor passed this descriptor to this process for it
    // alone, and it is open (fcntl succeeded).
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Send one message on a SOCK_SEQPACKET socket, with a descriptor.
///
/// # Errors
/// The error of sendmsg(2).
pub(super) fn send(
    socket: BorrowedFd<'_>,
    message: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: message.as_ptr() as *mut libc::c_void,
        iov_len: message.len(),
    };
    // Room for one descriptor, aligned as cmsghdr wants.
    let mut space = [0u64; 4];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE of one int fits `space` (32 bytes); the header
        // and data are written inside it.
        unsafe {
            msg.msg_control = space.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
        }
    }
    // SAFETY: msg points at live buffers for the call.
    if unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receive one message from a SOCK_SEQPACKET socket into `buf`, and the
/// descriptor it carried. Ok(None) at the end (the other side closed).
///
/// # Errors
/// The error of recvmsg(2), or a message cut short (longer than `buf`).
pub(super) fn receive(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<Option<(usize, Option<OwnedFd>)>> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut space = [0u64; 4];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&space);
    // SAFETY: msg points at live buffers for the call; received descriptors
    // are made close-on-exec.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fd = None;
    // SAFETY: the kernel filled the control buffer; CMSG_* walk it within
    // msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
                fd = Some(OwnedFd::from_raw_fd(raw));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message too long",
        ));
    }
    if n == 0 && fd.is_none() {
        return Ok(None);
    }
    Ok(Some((n as usize, fd)))
}
