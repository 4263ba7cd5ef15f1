//! `tdfs mount STORE MOUNTPOINT`: mount a store's builds read-only, in the
//! foreground or as a daemon, and unmount cleanly on SIGINT, SIGTERM or
//! SIGHUP (or when unmounted from outside). The flags are `args` (and
//! `peer_args`), turning them into configuration is `config`'s job, the
//! setup failures are `error`'s `MountError`; forking, the startup pipe and
//! taking the signals are `daemon`'s job.

use std::env;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::daemon::{
    self, LEAVE_SIGNAL, UPGRADE_SIGNAL, block_stop_signals, signal_name, wait_for_signals,
};
use super::keeper::Keeper;
use super::logging::init_logging;
use super::readiness;
use super::supervisor::{self, Supervision};
use crate::chunker::PeerSource;
use crate::fs::{self, Handover, MountpointError, StateDir, TemplateFs, Unmounted, chain};
use crate::metrics::MetricsEndpoint;
use crate::peer::{PeerClient, PeerClientConfig, PeerListen};
use crate::store::{self, Store, ThrottleStore};
use crate::template::Builds;
use config::{absolute_dir, absolute_store, cache_root};

/// Exit code of a serving process under systemd that leaves its connection
/// to the next start (SIGUSR2): EX_TEMPFAIL, which tdfs@.service restarts
/// on (RestartForceExitStatus=75).
const EXIT_UPGRADE: i32 = 75;
/// How long a stop waits for serving to wind down.
const UNMOUNT_GRACE: Duration = Duration::from_secs(5);
/// Allocations from this size up get a mapping of their own, unmapped when
/// freed (see `return_big_buffers`).
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: libc::c_int = 256 << 10;

/// Run `tdfs mount`: returns once the mount is up (daemon) or after it has
/// been unmounted (foreground).
pub fn run(args: MountArgs) -> Result<(), MountError> {
    run_as(args, env::args_os().skip(1).collect())
}

/// `run`, where `argv` (without the program name) is what starts a serving
/// process of this mount (`supervisor`): `tdfs mount`'s own arguments, or
/// for a caller without them (`tdfs demo`) a `mount` command line that
/// means the same.
pub fn run_as(mut args: MountArgs, argv: Vec<OsString>) -> Result<(), MountError> {
    init_logging(args.debug, args.log_file.as_deref())?;
    let (peer_listen, peer_client) = args.peer.check()?;
    fs::check_fuse_device()?;
    let cache_dir = cache_root(args.cache_dir.as_deref())?;
    let mut keeper = Keeper::from_env(|| fd_store_state_dir(&cache_dir, &args.mountpoint))?;
    let device = keeper.as_mut().and_then(Keeper::take_device);
    let mountpoint = match (keeper.as_ref().and_then(Keeper::mountpoint), &device) {
        (Some(prepared), _) => prepared.to_path_buf(),
        // A mount waiting to be taken over answers nothing, so its path is
        // not looked at (prepare_mountpoint would stat it and wait).
        (None, Some(_)) => {
            std::path::absolute(&args.mountpoint).map_err(|source| MountError::File {
                what: "mountpoint",
                path: args.mountpoint.clone(),
                source,
            })?
        }
        (None, None) => fs::prepare_mountpoint(&args.mountpoint)?,
    };
    let store = absolute_store(&args.store);
    // Absolute: the daemon changes directory to `/`.
    args.prefetch_dir = absolute_dir(args.prefetch_dir.as_deref(), "prefetch directory")?;
    args.record_prefetch = absolute_dir(args.record_prefetch.as_deref(), "recording directory")?;
    // Made now, so a path that cannot be a directory fails the mount, not
    // every recording later.
    if let Some(dir) = &args.record_prefetch {
        std::fs::create_dir_all(dir).map_err(|source| MountError::File {
            what: "recording directory (--record-prefetch: give a directory tdfs may create and write)",
            path: dir.clone(),
            source,
        })?;
    }
    let setup = Setup {
        store,
        mountpoint,
        cache_dir,
        peer_listen,
        peer_client,
        args,
    };
    match keeper {
        Some(keeper) => serve_kept(&setup, &keeper, device).inspect_err(|e| {
            keeper.failed(&chain(e));
        }),
        None => supervise(&setup, argv),
    }
}

/// Become the supervisor of the mount (`supervisor`): in the foreground,
/// or as the daemon.
fn supervise(setup: &Setup, argv: Vec<OsString>) -> Result<(), MountError> {
    let process = |what: &str, e: std::io::Error| MountError::Process(format!("{what}: {e}"));
    let exe = env::current_exe().map_err(|e| process("finding the tdfs binary", e))?;
    let cwd = env::current_dir().map_err(|e| process("the working directory", e))?;
    let state_path = state_dir_for(&setup.cache_dir, &setup.mountpoint);
    let run = |ready: &mut dyn FnMut()| {
        // Before any thread exists, so every thread inherits the mask.
        let signals = wait_for_signals(block_stop_signals()?)?;
        // The serving processes inherit the raised limit; the supervisor
        // shows it too, where operators look (/proc/PID/limits of the mount).
        raise_open_file_limit();
        let state = StateDir::open(&state_path).map_err(|source| MountError::File {
            what: "state directory (in the cache directory: it must be writable)",
            path: state_path.clone(),
            source,
        })?;
        let supervision = Supervision {
            exe: &exe,
            args: &argv,
            cwd: &cwd,
            mountpoint: &setup.mountpoint,
            state,
        };
        supervisor::supervise(&supervision, signals, ready)
    };
    if setup.args.foreground {
        run(&mut || {
            eprintln!(
                "tdfs: serving {} at {}; Ctrl-C or `umount {}` stops it",
                setup.store,
                setup.mountpoint.display(),
                setup.mountpoint.display()
            )
        })
    } else {
        daemon::daemonize(&setup.mountpoint, run)
    }
}

/// The state directory of an fd-store mount (`keeper`): the unit's
/// RuntimeDirectory= when it has one, else one per mountpoint in the cache
/// root.
fn fd_store_state_dir(cache_root: &Path, mountpoint: &Path) -> PathBuf {
    match env::var_os("RUNTIME_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd separates several directories with colons; the first is
        // the unit's own.
        Some(dirs) => {
            let dirs = dirs.to_string_lossy().into_owned();
            PathBuf::from(dirs.split(':').next().unwrap_or_default()).join("connection")
        }
        None => state_dir_for(
            cache_root,
            &std::path::absolute(mountpoint).unwrap_or_default(),
        ),
    }
}

/// `CACHE_ROOT/takeover-<hash of the mountpoint>`: one state directory per
/// mountpoint (only one mount can be on a path at a time).
fn state_dir_for(cache_root: &Path, mountpoint: &Path) -> PathBuf {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(mountpoint.as_os_str().as_encoded_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    cache_root.join(format!("takeover-{hex}"))
}

/// What `serve` needs, resolved before any fork so errors reach the terminal.
struct Setup {
    store: String,
    mountpoint: PathBuf,
    cache_dir: PathBuf,
    /// `--peer-listen` and its TLS, checked.
    peer_listen: Option<PeerListen>,
    /// `--peer`, `--peers-file`, `--peer-registry` and their companions, checked; the client
    /// itself is made after the fork (its runtime has threads).
    peer_client: PeerClientConfig,
    args: MountArgs,
}

/// The one place a STORE argument becomes a `Store`. Listing its builds
/// shows now, not at the first read, that the store answers (remote stores
/// connect lazily, and only a listing tells a missing bucket from a missing
/// object); returns the store and how many builds it has.
fn connect_store(args: &MountArgs, location: &str) -> Result<(Arc<dyn Store>, usize), MountError> {
    let mut store: Arc<dyn Store> =
        store::open(location, &args.store_config()).map_err(MountError::open)?;
    if let Some(throttle) = args.bench_throttle {
        store = Arc::new(ThrottleStore::new(store, throttle));
    }
    let builds = store.list_builds().map_err(MountError::open)?;
    Ok((store, builds.len()))
}

/// Give big buffers (compressed frames, read replies) back to the system
/// when freed. glibc otherwise raises its mmap threshold as such buffers
/// come and go and keeps them in per-thread arenas: with tens of FUSE and
/// fetch threads, that doubled the daemon's peak anonymous memory in
/// contrib/bench.
#[cfg(target_env = "gnu")]
fn return_big_buffers() {
    // SAFETY: mallopt only changes allocator settings; a fixed threshold
    // also turns off glibc's dynamic adjustment of it.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

#[cfg(not(target_env = "gnu"))]
fn return_big_buffers() {}

/// Descriptors kept free of idle Chunkers: FUSE and fetch threads, store
/// connections, the log, and the Chunkers of open files.
const RESERVED_FDS: u64 = 256;

/// Most idle Chunkers kept open whatever the descriptor limit: each also
/// holds a mapping, and `vm.max_map_count` is 65530 by default.
const MAX_IDLE_DIFFS: u64 = 1024;

/// Raise the soft limit on open files to the hard limit, so a mount with
/// many open templates does not run out of descriptors (an idle Chunker
/// holds one: its cache file). Returns the limit now in force.
fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            log::debug!(
                "open file limit unknown: {}",
                std::io::Error::last_os_error()
            );
            return RESERVED_FDS;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            } else {
                log::debug!(
                    "raising the open file limit to {}: {}",
                    limit.rlim_max,
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    log::debug!("open file limit: {}", limit.rlim_cur);
    limit.rlim_cur
}

/// Idle Chunkers kept open under an open file limit of `nofile`: half of
/// what `RESERVED_FDS` leaves (the other half is for the Chunkers of open
/// files), at least 8, at most `MAX_IDLE_DIFFS`.
fn idle_diff_limit(nofile: u64) -> usize {
    let limit = (nofile.saturating_sub(RESERVED_FDS) / 2).clamp(8, MAX_IDLE_DIFFS);
    log::debug!("keeping up to {limit} idle Chunkers open");
    usize::try_from(limit).unwrap_or(8)
}

/// A serving process: mount (or take over the connection `device`) and
/// serve until a stop signal or an outside unmount, the connection kept by
/// `keeper` all along.
fn serve_kept(setup: &Setup, keeper: &Keeper, device: Option<OwnedFd>) -> Result<(), MountError> {
    // Before any thread exists, so every thread inherits the mask and the
    // signals are only ever taken by `sigwait` below.
    let signals = block_stop_signals()?;
    return_big_buffers();
    let args = &setup.args;
    let (store, build_count) = connect_store(args, &setup.store)?;
    let client = PeerClient::from_config(&setup.peer_client)?.map(Arc::new);
    let peers = client.clone().map(|c| c as Arc<dyn PeerSource>);
    let max_idle_diffs = idle_diff_limit(raise_open_file_limit());
    let config = args.template_config(setup.cache_dir.clone(), peers, max_idle_diffs);
    let builds = Builds::new(store, config);
    if let Some(client) = client {
        client.count_into(Arc::clone(builds.stats()));
    }
    // Made now, so a cache directory that cannot be made fails the mount.
    let cache_path = builds.cache_dir().map_err(MountError::open)?.to_path_buf();
    let _metrics = MetricsEndpoint::start_if_asked(args.metrics_listen, builds.stats())
        .map_err(MountError::Process)?;
    // Before the mount, so an address it cannot bind fails the mount; kept
    // until serving ends.
    let _peer_server = match &setup.peer_listen {
        Some(listen) => Some(listen.start(builds.clone())?),
        None => None,
    };
    let state_failed = |source| MountError::File {
        what: "state directory of the connection",
        path: keeper.state_dir().to_path_buf(),
        source,
    };
    let state = StateDir::open(keeper.state_dir()).map_err(state_failed)?;
    let mut options = args.mount_config();
    options.takeover = true;
    let mountpoint = &setup.mountpoint;
    let (mounted, generation) = match device {
        Some(device) => {
            let (negotiated, continuity) = state.resume().map_err(state_failed)?;
            let generation = continuity.generation;
            let tree = Arc::new(TemplateFs::continuing(
                Arc::clone(&builds),
                args.fs_config(),
                continuity,
            ));
            let handover = Handover { device, negotiated };
            (
                fs::resume(tree, mountpoint, &options, handover)?,
                generation,
            )
        }
        None => {
            let continuity = state.start().map_err(state_failed)?;
            let tree = Arc::new(TemplateFs::continuing(
                Arc::clone(&builds),
                args.fs_config(),
                continuity,
            ));
            let mounted = fs::mount(tree, mountpoint, &options)?;
            let handover = mounted
                .handover()
                .map_err(|e| MountError::Process(format!("keeping the connection: {e}")))?;
            state.save(&handover.negotiated, 0).map_err(state_failed)?;
            keeper.keep(&handover)?;
            (mounted, 0)
        }
    };
    let status = readiness::serving_status(build_count, &setup.store, mountpoint);
    match keeper {
        Keeper::Supervisor { .. } => {
            keeper.serving(&status);
            // A daemon's serving process outlives the terminal too.
            if !args.foreground {
                daemon::detach_stdio();
            }
        }
        Keeper::FdStore { .. } => readiness::ready(&status),
    }
    log::info!(
        "{} {} ({build_count} builds) on {} ({} threads, cache {}, generation {generation})",
        if generation == 0 {
            "mounted"
        } else {
            "took over"
        },
        setup.store,
        mountpoint.display(),
        args.threads,
        cache_path.display()
    );
    let stop = wait_for_signals(signals)?;
    // The signal on which this process leaves the connection to the next
    // one (an upgrade in place), and its exit code: the supervisor's
    // SIGUSR1; under systemd, SIGUSR2 (the unit's ExecReload=), exiting
    // with the code the unit restarts on (RestartForceExitStatus=).
    let leave = match keeper {
        Keeper::Supervisor { .. } => (LEAVE_SIGNAL, 0),
        Keeper::FdStore { .. } => (UPGRADE_SIGNAL, EXIT_UPGRADE),
    };
    let ended = wait_for_end(setup, mounted, &stop, &builds, leave);
    // Files the kernel never released (a detached mount) are recorded now.
    builds.finish_recordings();
    if ended.is_ok() {
        state.remove();
    }
    ended
}

/// Serve until a stop signal (then unmount) or an outside unmount; says
/// how the mount ended.
fn wait_for_end(
    setup: &Setup,
    mounted: fs::Mounted,
    stop: &crossbeam_channel::Receiver<libc::c_int>,
    builds: &Builds,
    (leave, code): (libc::c_int, i32),
) -> Result<(), MountError> {
    let mountpoint = setup.mountpoint.display();
    // Exactly one line says how the mount ended (operators grep for it).
    crossbeam_channel::select! {
        recv(stop) -> signal => {
            if signal == Ok(leave) {
                // Leave the connection to the next serving process (an
                // upgrade in place): no unmount, no teardown; what this
                // process had in flight is resent to the next one.
                log::info!(
                    "{}: leaving {mountpoint} to the next serving process",
                    signal_name(leave)
                );
                builds.finish_recordings();
                std::process::exit(code);
            }
            readiness::stopping(&setup.mountpoint);
            let signal = signal_name(signal.unwrap_or(0));
            log::info!("{signal}: unmounting {mountpoint}");
            match mounted.unmount(UNMOUNT_GRACE)? {
                Unmounted::Done => log::info!("stopped serving {mountpoint} ({signal})"),
                Unmounted::DetachedThenDone => log::info!(
                    "stopped serving {mountpoint} ({signal}; it was in use, so it was detached \
                     and served until its files were closed)"
                ),
                Unmounted::StillInUse => log::warn!(
                    "stopped serving {mountpoint} ({signal}) with files still open after \
                     {UNMOUNT_GRACE:?}: their reads now fail (close them before stopping tdfs)"
                ),
            }
            Ok(())
        }
        recv(mounted.ended()) -> result => {
            readiness::stopping(&setup.mountpoint);
            result
                .unwrap_or(Ok(()))
                .map_err(|source| MountpointError::Mount { path: setup.mountpoint.clone(), source })?;
            log::info!("stopped serving {mountpoint}: it was unmounted");
            Ok(())
        }
    }
}

mod args;
mod config;
mod error;
mod peer_args;

pub use args::MountArgs;
pub use error::MountError;
pub use peer_args::PeerArgs;

#[cfg(test)]
mod tests;
