//! Process plumbing of `tdfs mount`: running the mount as a daemon (fork,
//! a pipe that carries the startup outcome to the parent, setsid, stdio on
//! /dev/null) and taking the stop signals (SIGINT, SIGTERM, SIGHUP) on a
//! thread of their own. What is mounted and served is `mount`'s business.

use std::env;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use crossbeam_channel::Receiver;

use super::mount::MountError;
use crate::fs::chain;

/// Fork; the child sets up and serves the mount and tells the parent,
/// through a pipe, "ok" once the mount is up or why it failed. The parent
/// returns that outcome, so `tdfs mount` exits 0 only with a working mount.
///
/// The child does the setup, not the parent: opening a store and building
/// the read path start threads, and threads do not survive a fork. So the
/// child runs `serve`, which calls the `ready` it is given once the mount is
/// usable and returns when the mount ends.
pub(super) fn daemonize(
    mountpoint: &Path,
    serve: impl FnOnce(&mut dyn FnMut()) -> Result<(), MountError>,
) -> Result<(), MountError> {
    let daemon_error = |what: &str, e: io::Error| MountError::Process(format!("{what}: {e}"));
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(daemon_error("creating a pipe", io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just created and are owned here only.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the process is single-threaded here (nothing has spawned a
    // thread yet), so the child is a complete copy.
    match unsafe { libc::fork() } {
        -1 => Err(daemon_error("fork", io::Error::last_os_error())),
        0 => {
            drop(read_end);
            run_daemon(serve, File::from(write_end))
        }
        child => {
            drop(write_end);
            let mut message = String::new();
            let read = File::from(read_end).read_to_string(&mut message);
            match (read, message.as_str()) {
                (Ok(_), "ok") => {
                    log::debug!("daemon {child} serves {}", mountpoint.display());
                    Ok(())
                }
                (Ok(_), "") | (Err(_), _) => Err(MountError::Process(format!(
                    "the tdfs daemon exited while starting ({}); run with --foreground to see why",
                    child_status(child)
                ))),
                (Ok(_), why) => Err(MountError::Process(why.to_string())),
            }
        }
    }
}

/// The daemon child: never returns.
fn run_daemon(serve: impl FnOnce(&mut dyn FnMut()) -> Result<(), MountError>, pipe: File) -> ! {
    // SAFETY: plain syscalls without pointers.
    unsafe {
        libc::setsid();
    }
    let _ = env::set_current_dir("/");
    let mut pipe = Some(pipe);
    let result = serve(&mut || {
        if let Some(mut p) = pipe.take() {
            let _ = p.write_all(b"ok");
        }
        detach_stdio();
    });
    match (result, pipe) {
        (Err(e), Some(mut p)) => {
            let _ = p.write_all(chain(&e).as_bytes());
            std::process::exit(1);
        }
        (Err(e), None) => {
            log::error!("{}", chain(&e));
            std::process::exit(1);
        }
        (Ok(()), _) => std::process::exit(0),
    }
}

/// Point stdin, stdout and stderr at /dev/null: the daemon outlives the
/// terminal that started it.
pub(super) fn detach_stdio() {
    let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") else {
        return;
    };
    use std::os::fd::AsRawFd;
    for fd in [0, 1, 2] {
        // SAFETY: dup2 onto the standard descriptors, which we own.
        unsafe {
            libc::dup2(null.as_raw_fd(), fd);
        }
    }
}

fn child_status(pid: libc::pid_t) -> String {
    let mut status = 0;
    // SAFETY: waits for our own child; status is a valid out pointer.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return "status unknown".into();
    }
    if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by {}", signal_name(libc::WTERMSIG(status)))
    } else {
        format!("status {status}")
    }
}

/// Tells a supervised serving process to leave: exit at once without
/// unmounting, for the next one to take the connection over (`supervisor`).
pub(super) const LEAVE_SIGNAL: libc::c_int = libc::SIGUSR1;
/// Tells the supervisor to upgrade in place (`supervisor`).
pub(super) const UPGRADE_SIGNAL: libc::c_int = libc::SIGUSR2;

/// The signals `wait_for_signals` takes: the stop signals, and the two of
/// a takeover.
const SIGNALS: [libc::c_int; 5] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    LEAVE_SIGNAL,
    UPGRADE_SIGNAL,
];

pub(super) fn block_stop_signals() -> Result<libc::sigset_t, MountError> {
    // SAFETY: sigset_t is plain data, initialized by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(MountError::Process(format!(
                "blocking signals: {}",
                io::Error::from_raw_os_error(rc)
            )));
        }
        Ok(set)
    }
}

/// A thread that takes the (blocked) stop signals with sigwait and sends
/// them on the returned channel.
pub(super) fn wait_for_signals(set: libc::sigset_t) -> Result<Receiver<libc::c_int>, MountError> {
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let mut signal = 0;
                // SAFETY: set is a valid, initialized signal set.
                if unsafe { libc::sigwait(&set, &mut signal) } == 0 && tx.send(signal).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| MountError::Process(format!("starting the signal thread: {e}")))?;
    Ok(rx)
}

pub(super) fn signal_name(signal: libc::c_int) -> String {
    match signal {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGUSR1 => "SIGUSR1".into(),
        libc::SIGUSR2 => "SIGUSR2".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        other => format!("signal {other}"),
    }
}
