//! The supervisor of a mount without systemd (issue 25): a small process
//! that `tdfs mount` becomes (in the foreground, or as the daemon) and that
//! only keeps the mount's kernel connection while serving processes come
//! and go. It serves nothing itself, so the store, the cache and the FUSE
//! requests cannot crash it.
//!
//! - It starts the serving process: this binary again, same arguments and
//!   working directory, told through the environment (`keeper::ENV_*`) the
//!   socket to talk back on, the state directory and the canonical
//!   mountpoint. The first one mounts and hands the /dev/fuse descriptor
//!   back (`mounted`, SCM_RIGHTS); the supervisor holds it from then on.
//!   Each serving process dies with the supervisor (PR_SET_PDEATHSIG), so
//!   killing the supervisor still ends the mount as a crash did before.
//! - When a serving process ends abnormally (a signal, a non-zero exit)
//!   while the connection lives, it starts another with the descriptor
//!   (inherited, `ENV_DEVICE`), which takes the connection over
//!   (`fs::resume`: no INIT, FUSE_NOTIFY_RESEND for what was in flight).
//!   Readers see a pause. A process that dies before it serves counts as a
//!   failed start; `MAX_FAILED_STARTS` of them within `FAILED_START_WINDOW`
//!   end the mount with a message saying so.
//! - SIGUSR2 is an upgrade in place: the serving process is told to leave
//!   (SIGUSR1: it exits at once without unmounting) and a new one, from the
//!   binary now on disk, takes over. (SIGHUP already means stop.)
//! - A stop signal (SIGINT, SIGTERM, SIGHUP) is passed to the serving
//!   process, which unmounts as it always did; a serving process that
//!   exits 0 means the mount ended (stopped or unmounted from outside), and
//!   so does a connection the kernel has ended. Then the supervisor exits 0.
//! - Readiness is the supervisor's: the first `ready` runs the daemon's
//!   startup pipe and sd_notify READY=1 (the serving processes get no
//!   `$NOTIFY_SOCKET`); a start that fails before mounting is the mount's
//!   failure, with the serving process's reason.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::daemon::{LEAVE_SIGNAL, UPGRADE_SIGNAL, signal_name};
use super::keeper::{self, ENV_DEVICE, ENV_MOUNTPOINT, ENV_SOCKET, ENV_STATE_DIR, MAX_MESSAGE};
use super::mount::MountError;
use super::readiness;
use crate::fs::{self, StateDir};

/// Failed starts (a serving process that died before it served) that end
/// the mount when they come within `FAILED_START_WINDOW`.
const MAX_FAILED_STARTS: usize = 5;
const FAILED_START_WINDOW: Duration = Duration::from_secs(60);

/// What the supervisor starts serving processes with.
pub(super) struct Supervision<'a> {
    /// This binary, as found when `tdfs mount` started (a path, so an
    /// upgrade that replaced the file starts the new one).
    pub exe: &'a Path,
    /// `tdfs mount`'s arguments, as given.
    pub args: &'a [OsString],
    /// The working directory they were given in.
    pub cwd: &'a Path,
    pub mountpoint: &'a Path,
    pub state: StateDir,
}

/// What the supervisor hears.
enum Event {
    Signal(libc::c_int),
    /// A message from serving process `n`, and the descriptor it carried.
    Message(u64, String, Option<OwnedFd>),
    Exited(u64, ExitStatus),
}

/// The serving process now running.
struct Serving {
    n: u64,
    pid: libc::pid_t,
    ready: bool,
}

/// Supervise the mount until it ends; `ready` runs once it first serves.
///
/// # Errors
/// The first serving process failed before it mounted (its reason), the
/// serving processes kept failing to start (`MAX_FAILED_STARTS`), or a
/// process could not be started at all.
pub(super) fn supervise(
    supervision: &Supervision<'_>,
    signals: crossbeam_channel::Receiver<libc::c_int>,
    ready: impl FnOnce(),
) -> Result<(), MountError> {
    let (tx, events) = crossbeam_channel::unbounded();
    let forward = tx.clone();
    std::thread::Builder::new()
        .name("signals-fwd".into())
        .spawn(move || {
            for signal in signals {
                if forward.send(Event::Signal(signal)).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| MountError::Process(format!("starting a thread: {e}")))?;
    let mountpoint = supervision.mountpoint.display().to_string();
    let mut ready = Some(ready);
    let mut device: Option<OwnedFd> = None;
    let mut failed_starts: VecDeque<Instant> = VecDeque::new();
    let mut last_error: Option<String> = None;
    let mut ended_at: Option<Instant> = None;
    let (mut stopping, mut upgrading) = (false, false);
    let mut serving = start(supervision, 0, device.as_ref(), &tx)?;
    for event in events {
        match event {
            Event::Signal(signal) if signal == UPGRADE_SIGNAL => {
                if device.is_none() || !serving.ready || upgrading {
                    log::warn!("{}: not serving yet; ignored", signal_name(signal));
                    continue;
                }
                log::info!(
                    "{}: upgrade in place of {mountpoint}: serving process {} leaves, one from \
                     {} takes over",
                    signal_name(signal),
                    serving.pid,
                    supervision.exe.display()
                );
                upgrading = true;
                kill(serving.pid, LEAVE_SIGNAL);
            }
            Event::Signal(signal) => {
                stopping = true;
                readiness::stopping(supervision.mountpoint);
                kill(serving.pid, signal);
            }
            Event::Message(n, text, fd) if n == serving.n => {
                let (word, rest) = text.split_once(' ').unwrap_or((&text, ""));
                match (word, fd) {
                    ("mounted", Some(fd)) => device = Some(fd),
                    ("ready", _) => {
                        serving.ready = true;
                        failed_starts.clear();
                        if let Some(ready) = ready.take() {
                            ready();
                            readiness::ready(rest);
                        } else if let Some(at) = ended_at.take() {
                            log::info!(
                                "serving process {} took over {mountpoint}, {} ms after the last \
                                 one ended",
                                serving.pid,
                                at.elapsed().as_millis()
                            );
                        }
                    }
                    ("error", _) => last_error = Some(rest.to_string()),
                    _ => log::warn!("supervisor: unexpected message {text:?}; ignored"),
                }
            }
            Event::Message(..) => {}
            Event::Exited(n, status) if n == serving.n => {
                let how = describe(status);
                let Some(fd) = &device else {
                    return Err(MountError::Process(last_error.unwrap_or_else(|| {
                        format!("the tdfs serving process ended while starting ({how})")
                    })));
                };
                if stopping || (status.success() && !upgrading) || fs::has_ended(fd) {
                    log::debug!(
                        "serving process {} ended ({how}); the mount has ended",
                        serving.pid
                    );
                    supervision.state.remove();
                    return Ok(());
                }
                if upgrading {
                    upgrading = false;
                } else {
                    log::warn!(
                        "the serving process of {mountpoint} ({}) ended: {how}; starting another \
                         to take the connection over",
                        serving.pid
                    );
                    if !serving.ready {
                        let now = Instant::now();
                        failed_starts.push_back(now);
                        failed_starts.retain(|t| now.duration_since(*t) < FAILED_START_WINDOW);
                        if failed_starts.len() >= MAX_FAILED_STARTS {
                            return Err(give_up(&mountpoint, &how, last_error.as_deref()));
                        }
                    }
                }
                ended_at.get_or_insert_with(Instant::now);
                serving = start(supervision, n + 1, device.as_ref(), &tx)?;
            }
            Event::Exited(..) => {}
        }
    }
    Err(MountError::Process(
        "supervisor: its event channel closed".into(),
    ))
}

/// The mount ends: the serving processes keep failing. Dropping the
/// descriptor (on return) ends the connection, as a crash did before.
fn give_up(mountpoint: &str, how: &str, why: Option<&str>) -> MountError {
    let why = why.map(|w| format!(": {w}")).unwrap_or_default();
    let message = format!(
        "the serving process of {mountpoint} failed {MAX_FAILED_STARTS} times within {}s of \
         starting (last: {how}{why}); giving up, the mount ends (`umount -l {mountpoint}` or \
         the next `tdfs mount` clears it)",
        FAILED_START_WINDOW.as_secs()
    );
    log::error!("{message}");
    MountError::Process(message)
}

/// Start serving process `n`, handing it `device` when there is a
/// connection to take over; its messages and its end become events.
fn start(
    supervision: &Supervision<'_>,
    n: u64,
    device: Option<&OwnedFd>,
    events: &Sender<Event>,
) -> Result<Serving, MountError> {
    let failed = |what: &str, e: std::io::Error| MountError::Process(format!("{what}: {e}"));
    let mut pair = [0; 2];
    // SAFETY: pair has room for the two descriptors socketpair writes.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    } != 0
    {
        return Err(failed(
            "creating a socket pair",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: both descriptors were just created and are owned here only.
    let (ours, theirs) = unsafe {
        use std::os::fd::FromRawFd;
        (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1]))
    };
    let inherited: Vec<i32> = [Some(theirs.as_raw_fd()), device.map(AsRawFd::as_raw_fd)]
        .into_iter()
        .flatten()
        .collect();
    let supervisor = std::process::id() as libc::pid_t;
    let mut command = Command::new(supervision.exe);
    command
        .args(supervision.args)
        .current_dir(supervision.cwd)
        .env(ENV_SOCKET, theirs.as_raw_fd().to_string())
        .env(ENV_STATE_DIR, supervision.state.path())
        .env(ENV_MOUNTPOINT, supervision.mountpoint)
        .env_remove(ENV_DEVICE)
        // Readiness is the supervisor's to tell (see the module docs).
        .env_remove("NOTIFY_SOCKET");
    if let Some(device) = device {
        command.env(ENV_DEVICE, device.as_raw_fd().to_string());
    }
    // SAFETY: the closure makes only async-signal-safe calls (prctl,
    // getppid, fcntl, _exit) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // The serving process dies with the supervisor, so the mount
            // ends with it as before (nothing else would keep it).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != supervisor {
                libc::_exit(1);
            }
            for fd in &inherited {
                if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| failed(&format!("starting {}", supervision.exe.display()), e))?;
    drop(theirs);
    let pid = child.id() as libc::pid_t;
    log::debug!("serving process {pid} started (generation {n})");
    let messages = events.clone();
    std::thread::Builder::new()
        .name("supervised-msg".into())
        .spawn(move || {
            let mut buf = vec![0; MAX_MESSAGE];
            while let Ok(Some((len, fd))) = keeper::receive(ours.as_fd(), &mut buf) {
                let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                if messages.send(Event::Message(n, text, fd)).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| failed("starting a thread", e))?;
    let exits = events.clone();
    std::thread::Builder::new()
        .name("supervised-wait".into())
        .spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = exits.send(Event::Exited(n, status));
            }
        })
        .map_err(|e| failed("starting a thread", e))?;
    Ok(Serving {
        n,
        pid,
        ready: false,
    })
}

fn kill(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: a signal to our own child, which has not been waited for
    // (its waiter reports the end, after which no signal is sent).
    unsafe {
        libc::kill(pid, signal);
    }
}

/// "exit code 3", "killed by SIGKILL".
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by {}", signal_name(signal)),
        _ => format!("{status}"),
    }
}
