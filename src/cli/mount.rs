//! `tdfs mount STORE MOUNTPOINT`: mount a store's builds read-only, in the
//! foreground or as a daemon, and unmount cleanly on SIGINT, SIGTERM or
//! SIGHUP (or when unmounted from outside). Forking, the startup pipe and
//! taking the signals are `daemon`'s job.

use std::env;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::daemon::{self, block_stop_signals, signal_name, wait_for_signals};
use super::logging::init_logging;
use super::parse::{parse_fetch_timeout, parse_on_off, parse_size};
use super::readiness;
use crate::chunker::PeerSource;
use crate::fs::{self, FsOptions, MountOptions, MountpointError, TemplateFs, Unmounted};
use crate::metrics::MetricsEndpoint;
use crate::peer::{PeerClient, PeerClientConfig, PeerListen};
use crate::store::{self, Store, StoreLocation, StoreOptions, Throttle, ThrottleStore};
use crate::template::{Builds, PrefetchConfig, TemplateConfig};

/// How long the root listing is trusted (new builds show up within it).
const LISTING_TTL: Duration = Duration::from_secs(5);
/// How long a stop waits for serving to wind down.
const UNMOUNT_GRACE: Duration = Duration::from_secs(5);
/// Chunks or frames fetched ahead of a sequential reader at first, by
/// default: the start of each open file's read-ahead window, which doubles
/// while the reader stays sequential and uses what was fetched ahead (up to
/// 64 units and 128 MiB) and falls back to this on a jump (see
/// `template::ReadAhead`).
/// Each store request pays the store's first-byte latency, so only many
/// requests in flight reach its bandwidth: with 20 ms to first byte and
/// 100 MB/s per request, a cold sequential read of a 2 GiB zstd memfile ran
/// 3.9 times as fast as without read-ahead (contrib/bench), against 2.3
/// times with a fixed window of 4. A short start window keeps lazy readers
/// lazy: a VM booting from a 64 MiB rootfs pulls 14 MiB with 4, as with a
/// fixed window of 4, where a fixed 16 pulled 38 MiB
/// (contrib/vm/boot-from-tdfs.sh), and lazy fetching is the point of tdfs.
const READAHEAD_CHUNKS: usize = 4;
/// Concurrent store requests.
const FETCH_WORKERS: usize = 16;
/// Allocations from this size up get a mapping of their own, unmapped when
/// freed (see `return_big_buffers`).
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: libc::c_int = 256 << 10;

#[derive(Debug, Clone, clap::Args)]
pub struct MountArgs {
    /// The store: a directory holding build folders, or a URL
    /// (s3://bucket/prefix, gs://bucket/prefix).
    pub store: String,

    /// An empty directory to mount on.
    pub mountpoint: PathBuf,

    /// Where cache files go; each mount uses its own subdirectory.
    /// [default: $XDG_CACHE_HOME/tdfs, /var/cache/tdfs for root, else
    /// ~/.cache/tdfs]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Bound on the bytes kept in cache files, e.g. 20GiB; 0 = no bound.
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = parse_size)]
    pub max_cache_size: u64,

    /// FUSE worker threads. Each blocks while its read waits for a fetch,
    /// so keep enough that cache hits never queue behind misses.
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,

    /// Let users other than the mounting one read the mount (for a
    /// non-root mounter this needs user_allow_other in /etc/fuse.conf).
    #[arg(long)]
    pub allow_other: bool,

    /// Owner shown for every file [default: the mounting user].
    #[arg(long, value_name = "UID")]
    pub uid: Option<u32>,

    /// Group shown for every file [default: the mounting user's group].
    #[arg(long, value_name = "GID")]
    pub gid: Option<u32>,

    /// How long a read waits for the store before it fails with EIO (the
    /// fetch goes on; a later read retries): a number with a unit, ms, s or
    /// m (e.g. 30s, 300ms, 2m; bare seconds too), at most 1 hour.
    #[arg(long, value_name = "DURATION", default_value = "30s",
          value_parser = parse_fetch_timeout)]
    pub fetch_timeout: Duration,

    /// Check each diff against the SHA-256 in its header (V4/V5) once it
    /// is wholly cached; a mismatch is logged and fails reads with EIO.
    #[arg(long)]
    pub verify_checksums: bool,

    /// Stay in the foreground instead of running as a daemon.
    #[arg(short = 'f', long)]
    pub foreground: bool,

    /// Append logs to FILE (a daemon has no terminal to log to).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// Log at debug level (RUST_LOG is respected otherwise).
    #[arg(short = 'd', long)]
    pub debug: bool,

    /// S3-compatible server to use instead of AWS (s3:// stores).
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,

    /// S3 region (s3:// stores).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// Chunks (4 MiB) or compressed frames fetched ahead of a sequential
    /// reader at first (each open file has its own window); the window
    /// doubles while the reader stays sequential (up to 64 of them and
    /// 128 MiB) and starts over after a jump. 0 turns read-ahead off.
    #[arg(long, value_name = "N", default_value_t = READAHEAD_CHUNKS)]
    pub readahead: usize,

    /// Serve the figures of .stats for Prometheus at
    /// http://ADDR:PORT/metrics (e.g. 127.0.0.1:9110; port 0 picks one).
    /// Off unless given; any address given is served, so keep it loopback
    /// unless the network is trusted.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub peer: PeerArgs,

    /// Replay each build's recorded working set (metadata.json's
    /// `prefetch`) into the cache when its memfile or rootfs.ext4 is first
    /// opened, below every read and read-ahead.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off,
          action = clap::ArgAction::Set)]
    pub prefetch: bool,

    /// Once a memfile or rootfs.ext4 is wholly cached, copy it into one
    /// flat file in the cache directory (counted against
    /// --max-cache-size) and let the kernel serve its reads and page faults
    /// from that file without asking tdfs (FUSE passthrough: Linux 6.9+,
    /// mounted as root). Falls back to normal reads, logged once, where the
    /// kernel cannot. Off by default: a cache disk that fails after the
    /// copy is read by the kernel without tdfs's damage checks, and
    /// tests/reliability_cache_damage.rs then sees wrong bytes.
    #[arg(long, value_name = "on|off", default_value = "off", value_parser = parse_on_off,
          action = clap::ArgAction::Set)]
    pub passthrough: bool,

    /// Most bytes one build may prefetch, e.g. 2GiB; 0 = no bound.
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = parse_size)]
    pub prefetch_max: u64,

    /// Also replay recordings DIR/<build>/<file>.prefetch.json (as
    /// `--record-prefetch` writes them) for builds whose metadata lists
    /// none.
    #[arg(long, value_name = "DIR")]
    pub prefetch_dir: Option<PathBuf>,

    /// Record the first-touch order of the blocks of each memfile and
    /// rootfs.ext4 read on the mount to DIR/<build>/<file>.prefetch.json
    /// (written when the file's last handle closes and at unmount), for
    /// --prefetch-dir or `tdfs pack --prefetch-*`.
    #[arg(long, value_name = "DIR")]
    pub record_prefetch: Option<PathBuf>,

    /// Benchmarks only (contrib/bench): slow every store read down by a
    /// first-byte latency and a per-request bandwidth, e.g. 20ms,100MB.
    #[arg(long, hide = true, value_name = "LATENCY,BANDWIDTH", value_parser = Throttle::parse)]
    pub bench_throttle: Option<Throttle>,
}

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
    /// `--peer`, `--peers-file` and their companions, checked; the client
    /// itself is made after the fork (its runtime has threads).
    peer_client: PeerClientConfig,
    args: MountArgs,
}

/// The one place a STORE argument becomes a `Store`. Listing its builds
/// shows now, not at the first read, that the store answers (remote stores
/// connect lazily, and only a listing tells a missing bucket from a missing
/// object); returns the store and how many builds it has.
fn connect_store(args: &MountArgs, location: &str) -> Result<(Arc<dyn Store>, usize), MountError> {
    let options = StoreOptions {
        endpoint_url: args.endpoint_url.clone(),
        region: args.region.clone(),
        ..StoreOptions::default()
    };
    let mut store = store::open(location, &options).map_err(MountError::open)?;
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

/// `dir` made absolute (the daemon changes directory to `/`), when given.
fn absolute_dir(dir: Option<&Path>, what: &'static str) -> Result<Option<PathBuf>, MountError> {
    dir.map(|d| {
        std::path::absolute(d).map_err(|source| MountError::File {
            what,
            path: d.to_path_buf(),
            source,
        })
    })
    .transpose()
}

/// A local store path made absolute: the daemon changes directory to `/`.
fn absolute_store(location: &str) -> String {
    match StoreLocation::parse(location) {
        Ok(StoreLocation::Local(dir)) => std::path::absolute(&dir)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| location.to_string()),
        _ => location.to_string(),
    }
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
    let peers =
        PeerClient::from_config(&setup.peer_client)?.map(|c| Arc::new(c) as Arc<dyn PeerSource>);
    let config = TemplateConfig {
        cache_dir: setup.cache_dir.clone(),
        max_cache_size: args.max_cache_size,
        fetch_timeout: args.fetch_timeout,
        readahead: args.readahead,
        fetch_workers: FETCH_WORKERS,
        verify_checksums: args.verify_checksums,
        listing_ttl: LISTING_TTL,
        max_idle_diffs: idle_diff_limit(raise_open_file_limit()),
        prefetch: PrefetchConfig {
            enabled: args.prefetch,
            max_bytes: args.prefetch_max,
            dir: args.prefetch_dir.clone(),
            record_dir: args.record_prefetch.clone(),
        },
        peers,
        passthrough: args.passthrough,
    };
    let builds = Builds::new(store, config);
    // Made now, so a cache directory that cannot be made fails the mount.
    let cache_path = builds.cache_dir().map_err(MountError::open)?.to_path_buf();
    let _metrics = MetricsEndpoint::start_if_asked(args.metrics_listen, builds.stats())
        .map_err(MountError::Process)?;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let options = FsOptions {
        uid: args.uid.unwrap_or(uid),
        gid: args.gid.unwrap_or(gid),
    };
    // Before the mount, so an address it cannot bind fails the mount; kept
    // until serving ends.
    let _peer_server = match &setup.peer_listen {
        Some(listen) => Some(listen.start(builds.clone())?),
        None => None,
    };
    let tree = Arc::new(TemplateFs::new(Arc::clone(&builds), options));
    let mount_options = MountOptions {
        allow_other: args.allow_other,
        threads: usize::from(args.threads),
    };
    let mounted = fs::mount(tree, &setup.mountpoint, &mount_options)?;
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

/// The parent of this mount's cache directory (`--cache-dir` or the
/// default), absolute: the daemon changes directory to `/`. The read path
/// makes the mount's cache directory (`mount-<uuid>`) there, so mounts never
/// share files.
fn cache_root(root: Option<&Path>) -> Result<PathBuf, MountError> {
    match root {
        Some(r) => std::path::absolute(r).map_err(|source| MountError::File {
            what: "cache directory",
            path: r.to_path_buf(),
            source,
        }),
        None => Ok(default_cache_root()),
    }
}

fn default_cache_root() -> PathBuf {
    if let Some(xdg) = env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("tdfs");
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/cache/tdfs");
    }
    match env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache/tdfs"),
        None => env::temp_dir().join("tdfs-cache"),
    }
}

mod error;
mod peer_args;

pub use error::MountError;
pub use peer_args::PeerArgs;

#[cfg(test)]
mod tests;
