//! The flags of `tdfs mount` as clap sees them, and `MountArgs::new`, the
//! same flags with every default, for a caller that mounts without a
//! command line (`tdfs demo`).

use std::path::PathBuf;
use std::time::Duration;

use super::PeerArgs;
use crate::cli::parse::{parse_fetch_timeout, parse_on_off, parse_prefetch_sources, parse_size};
use crate::fs::MountConfig;
use crate::store::Throttle;
use crate::template::{PrefetchConfig, PrefetchSources, READAHEAD_CHUNKS, TemplateConfig};

/// The flags of `tdfs mount`; `config` turns them into configuration.
#[derive(Debug, Clone, PartialEq, clap::Args)]
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
    /// copy is read by the kernel without tdfs's damage checks, so a
    /// damaged cache can then return wrong bytes.
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

    /// Where the working set to replay comes from, tried in the order
    /// given until one lists blocks: `trace` (metadata.json's, else
    /// --prefetch-dir's recording) and `last-cycle` (E2B's name: a layered
    /// build's own diff blocks in offset order, as a resumed VM first
    /// touches what it dirtied last), e.g. trace,last-cycle.
    #[arg(long, value_name = "SOURCES", default_value = "trace",
          value_parser = parse_prefetch_sources)]
    pub prefetch_source: PrefetchSources,

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

impl MountArgs {
    /// `tdfs mount STORE MOUNTPOINT` with no other flag: every default is
    /// the configuration's own (`TemplateConfig`, `PrefetchConfig`,
    /// `MountConfig`), and a unit test checks clap's defaults agree.
    pub fn new(store: String, mountpoint: PathBuf) -> MountArgs {
        let template = TemplateConfig::default();
        let prefetch = PrefetchConfig::default();
        let mount = MountConfig::default();
        MountArgs {
            store,
            mountpoint,
            cache_dir: None,
            max_cache_size: template.max_cache_size,
            threads: u16::try_from(mount.threads).unwrap_or(u16::MAX),
            allow_other: mount.allow_other,
            uid: None,
            gid: None,
            fetch_timeout: template.fetch_timeout,
            verify_checksums: template.verify_checksums,
            foreground: false,
            log_file: None,
            debug: false,
            endpoint_url: None,
            region: None,
            readahead: template.readahead,
            metrics_listen: None,
            peer: PeerArgs::default(),
            prefetch: prefetch.enabled,
            passthrough: template.passthrough,
            prefetch_max: prefetch.max_bytes,
            prefetch_dir: prefetch.dir,
            record_prefetch: prefetch.record_dir,
            prefetch_source: prefetch.sources,
            bench_throttle: None,
        }
    }
}
