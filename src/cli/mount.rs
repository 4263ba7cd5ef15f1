//! `tdfs mount STORE MOUNTPOINT`: mount a store's builds read-only, in the
//! foreground or as a daemon, and unmount cleanly on SIGINT, SIGTERM or
//! SIGHUP (or when unmounted from outside). The flags are `args` (and
//! `peer_args`), turning them into configuration is `config`'s job, the
//! setup failures are `error`'s `MountError`; forking, the startup pipe and
//! taking the signals are `daemon`'s job.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::daemon::{self, block_stop_signals, signal_name, wait_for_signals};
use super::logging::init_logging;
use super::readiness;
use crate::chunker::PeerSource;
use crate::fs::{self, MountpointError, TemplateFs, Unmounted};
use crate::metrics::MetricsEndpoint;
use crate::peer::{PeerClient, PeerClientConfig, PeerListen};
use crate::store::{self, Store, ThrottleStore};
use crate::template::Builds;
use config::{absolute_dir, absolute_store, cache_root};

/// How long a stop waits for serving to wind down.
const UNMOUNT_GRACE: Duration = Duration::from_secs(5);
/// Allocations from this size up get a mapping of their own, unmapped when
/// freed (see `return_big_buffers`).
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: libc::c_int = 256 << 10;

/// Run `tdfs mount`: returns once the mount is up (daemon) or after it has
/// been unmounted (foreground).
pub fn run(mut args: MountArgs) -> Result<(), MountError> {
    init_logging(args.debug, args.log_file.as_deref())?;
    let (peer_listen, peer_client) = args.peer.check()?;
    fs::check_fuse_device()?;
    let mountpoint = fs::prepare_mountpoint(&args.mountpoint)?;
    let store = absolute_store(&args.store);
    let cache_dir = cache_root(args.cache_dir.as_deref())?;
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
    if setup.args.foreground {
        serve(&setup, || {
            eprintln!(
                "tdfs: serving {} at {}; Ctrl-C or `umount {}` stops it",
                setup.store,
                setup.mountpoint.display(),
                setup.mountpoint.display()
            )
        })
    } else {
        daemon::daemonize(&setup.mountpoint, |ready| serve(&setup, ready))
    }
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

/// Mount and serve until a stop signal or an outside unmount; `ready` runs
/// once the mount is usable.
fn serve(setup: &Setup, ready: impl FnOnce()) -> Result<(), MountError> {
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
    let tree = Arc::new(TemplateFs::new(Arc::clone(&builds), args.fs_config()));
    let mounted = fs::mount(tree, &setup.mountpoint, &args.mount_config())?;
    // After `ready`: a daemon's terminal should not get log lines once it
    // is told the mount is up.
    ready();
    readiness::ready(build_count, &setup.store, &setup.mountpoint);
    log::info!(
        "mounted {} ({build_count} builds) on {} ({} threads, cache {})",
        setup.store,
        setup.mountpoint.display(),
        args.threads,
        cache_path.display()
    );
    let stop = wait_for_signals(signals)?;
    let ended = wait_for_end(setup, mounted, &stop);
    // Files the kernel never released (a detached mount) are recorded now.
    builds.finish_recordings();
    ended
}

/// Serve until a stop signal (then unmount) or an outside unmount; says
/// how the mount ended.
fn wait_for_end(
    setup: &Setup,
    mounted: fs::Mounted,
    stop: &crossbeam_channel::Receiver<libc::c_int>,
) -> Result<(), MountError> {
    let mountpoint = setup.mountpoint.display();
    // Exactly one line says how the mount ended (operators grep for it).
    crossbeam_channel::select! {
        recv(stop) -> signal => {
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
