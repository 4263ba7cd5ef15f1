//! The figures of a mount: counters, latency histograms and cache gauges,
//! held in one Prometheus registry (prometheus-client) that `.stats` in the
//! mount root and the `--metrics-listen` endpoint both render with the
//! library's OpenMetrics text encoder, so the two always agree.
//!
//! Counters are plain relaxed atomics (statistics, not synchronization),
//! shared with the registry, which reads them at each render. Histogram
//! buckets and timing live in `latency`, the HTTP endpoint in `endpoint`.

mod endpoint;
mod latency;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::format::{FileKind, ObjectName};

pub use endpoint::MetricsEndpoint;
pub use latency::{LATENCY_BUCKETS, Timer};

/// The label set of the per-file read latency: `file="memfile"` and so on.
type FileLabel = [(&'static str, String); 1];

/// The label set of peer fallbacks: `reason="timeout"` and so on.
type ReasonLabel = [(&'static str, &'static str); 1];

/// Prefix of every metric name.
const PREFIX: &str = "tdfs";

/// A mount's figures. Create one per mount (`Stats::new`) and share it;
/// `render_prometheus` gives the text of all of them.
#[derive(Debug)]
pub struct Stats {
    /// `read` calls served by template files.
    pub reads: Arc<AtomicU64>,
    /// Bytes returned by those calls.
    pub read_bytes: Arc<AtomicU64>,
    pub read_errors: Arc<AtomicU64>,
    /// Chunker lookups answered from the local cache.
    pub cache_hits: Arc<AtomicU64>,
    /// Chunker lookups that had to wait for a fetch.
    pub cache_misses: Arc<AtomicU64>,
    /// Ranged reads the Chunkers sent to the store.
    pub store_requests: Arc<AtomicU64>,
    /// Bytes the Chunkers received from the store.
    pub store_bytes: Arc<AtomicU64>,
    pub fetch_errors: Arc<AtomicU64>,
    /// Fetches started by read-ahead rather than a reader.
    pub readahead_fetches: Arc<AtomicU64>,
    /// Uncompressed bytes ever written to cache files, evicted or not
    /// (what is held now is `cache_size`).
    pub cache_written_bytes: Arc<AtomicU64>,
    /// Units (chunks or frames) evicted under the cache budget.
    pub evictions: Arc<AtomicU64>,
    /// Units whose cached bytes could not be read from the cache file
    /// (truncated or failing), dropped to be fetched again.
    pub cache_damaged_units: Arc<AtomicU64>,
    /// Streams started for peers (`ReadAtBuildSeekable`, `GetBuildBlob`).
    pub peer_served_requests: Arc<AtomicU64>,
    /// Data bytes sent to peers.
    pub peer_served_bytes: Arc<AtomicU64>,
    /// Units asked of peers (`--peer`), answered or not.
    pub peer_requests: Arc<AtomicU64>,
    /// Bytes received from peers and placed in cache files.
    pub peer_bytes: Arc<AtomicU64>,
    /// Polls of the fleet's registry (`--peer-registry`) that failed.
    pub peer_registry_errors: Arc<AtomicU64>,
    /// Members of the fleet's ring now (this host included when listed).
    pub peer_members: Gauge<u64, AtomicU64>,
    /// Builds read from their E2B origin peer (`--peer-registry`) that
    /// moved to the store: the origin said `use_storage`, or the store got
    /// the build.
    pub origin_switches: Arc<AtomicU64>,
    /// Units read from the store instead of their owner peer, by reason (a
    /// label given by the caller); see `record_peer_fallback`.
    peer_fallbacks: Family<ReasonLabel, Counter>,
    /// Fetches started by prefetch (replaying a trace).
    pub prefetch_fetches: Arc<AtomicU64>,
    /// Uncompressed bytes prefetch placed in cache files.
    pub prefetch_bytes: Arc<AtomicU64>,
    /// Chunker lookups answered from a unit prefetch fetched.
    pub prefetch_hits: Arc<AtomicU64>,
    /// Bytes held in cache files now: placed minus evicted.
    pub cache_size: Gauge<u64, AtomicU64>,
    /// The cache budget (`--max-cache-size`) in bytes; 0 = no bound.
    pub cache_budget: Gauge<u64, AtomicU64>,
    read_latency: Family<FileLabel, Histogram, fn() -> Histogram>,
    /// `read_latency` of the two template files, looked up once.
    template_read_latency: [Histogram; 2],
    store_request_latency: Histogram,
    store_first_byte: Histogram,
    fetch_wait: Histogram,
    registry: Registry,
}

impl Default for Stats {
    /// Figures with no peer fallback reason shown before it is recorded
    /// (tools and tests; a mount uses `Stats::new`).
    fn default() -> Self {
        Stats::new(&[])
    }
}

impl Stats {
    /// A mount's figures, with a `tdfs_peer_fallbacks_total` series at 0 for
    /// each of `peer_fallback_reasons` (the label values the caller will
    /// record, e.g. the name of every peer fallback the chunker counts) from the
    /// start, so a dashboard sees every reason before it happens; a reason
    /// not listed appears when first recorded.
    pub fn new(peer_fallback_reasons: &[&'static str]) -> Stats {
        let counter = || Arc::new(AtomicU64::new(0));
        let read_latency: Family<FileLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency::histogram);
        let template_read_latency =
            FileKind::ALL.map(|kind| read_latency.get_or_create(&file_label(kind.name())).clone());
        let mut stats = Stats {
            reads: counter(),
            read_bytes: counter(),
            read_errors: counter(),
            cache_hits: counter(),
            cache_misses: counter(),
            store_requests: counter(),
            store_bytes: counter(),
            fetch_errors: counter(),
            readahead_fetches: counter(),
            cache_written_bytes: counter(),
            evictions: counter(),
            cache_damaged_units: counter(),
            peer_served_requests: counter(),
            peer_served_bytes: counter(),
            peer_requests: counter(),
            peer_bytes: counter(),
            peer_registry_errors: counter(),
            peer_members: Gauge::default(),
            origin_switches: counter(),
            peer_fallbacks: Family::default(),
            prefetch_fetches: counter(),
            prefetch_bytes: counter(),
            prefetch_hits: counter(),
            cache_size: Gauge::default(),
            cache_budget: Gauge::default(),
            read_latency,
            template_read_latency,
            store_request_latency: latency::histogram(),
            store_first_byte: latency::histogram(),
            fetch_wait: latency::histogram(),
            registry: Registry::with_prefix(PREFIX),
        };
        stats.register(peer_fallback_reasons);
        stats
    }

    /// Put every figure in the registry; the metrics are handles sharing
    /// their values with the fields.
    fn register(&mut self, peer_fallback_reasons: &[&'static str]) {
        // Names gain `_total` (counters) and the unit from the encoder.
        let counters = Counters(vec![
            ("reads", "read calls on template files", self.reads.clone()),
            (
                "read_bytes",
                "bytes returned to readers",
                self.read_bytes.clone(),
            ),
            (
                "read_errors",
                "read calls that failed",
                self.read_errors.clone(),
            ),
            (
                "cache_hits",
                "block lookups served from the local cache",
                self.cache_hits.clone(),
            ),
            (
                "cache_misses",
                "block lookups that waited for a fetch",
                self.cache_misses.clone(),
            ),
            (
                "store_requests",
                "ranged reads sent to the store",
                self.store_requests.clone(),
            ),
            (
                "store_bytes",
                "bytes received from the store",
                self.store_bytes.clone(),
            ),
            (
                "fetch_errors",
                "fetches that failed",
                self.fetch_errors.clone(),
            ),
            (
                "readahead_fetches",
                "fetches started by read-ahead",
                self.readahead_fetches.clone(),
            ),
            (
                "cache_written_bytes",
                "uncompressed bytes ever written to cache files (held now: cache_size)",
                self.cache_written_bytes.clone(),
            ),
            (
                "cache_evictions",
                "cached chunks or frames evicted",
                self.evictions.clone(),
            ),
            (
                "cache_damaged_units",
                "cached chunks or frames found unreadable in their cache file and dropped",
                self.cache_damaged_units.clone(),
            ),
            (
                "peer_served_requests",
                "streams served to peers",
                self.peer_served_requests.clone(),
            ),
            (
                "peer_served_bytes",
                "bytes sent to peers",
                self.peer_served_bytes.clone(),
            ),
            (
                "peer_requests",
                "chunks or frames asked of their owner peer",
                self.peer_requests.clone(),
            ),
            (
                "peer_bytes",
                "bytes received from peers",
                self.peer_bytes.clone(),
            ),
            (
                "peer_registry_errors",
                "polls of the peer registry that failed (its last members kept)",
                self.peer_registry_errors.clone(),
            ),
            (
                "origin_switches",
                "builds switched from their origin peer to the store",
                self.origin_switches.clone(),
            ),
            (
                "prefetch_fetches",
                "fetches started by prefetch",
                self.prefetch_fetches.clone(),
            ),
            (
                "prefetch_bytes",
                "uncompressed bytes prefetch placed in cache files",
                self.prefetch_bytes.clone(),
            ),
            (
                "prefetch_hits",
                "block lookups served from prefetched data",
                self.prefetch_hits.clone(),
            ),
        ]);
        // Every reason given shows, 0 until it happens.
        for &reason in peer_fallback_reasons {
            drop(self.peer_fallbacks.get_or_create(&[("reason", reason)]));
        }
        let r = &mut self.registry;
        r.register_collector(Box::new(counters));
        r.register(
            "peer_fallbacks",
            "chunks or frames read from the store instead of their owner peer, by reason",
            self.peer_fallbacks.clone(),
        );
        r.register(
            "peer_members",
            "members of the fleet's ring now, this host included when listed",
            self.peer_members.clone(),
        );
        r.register_with_unit(
            "cache_size",
            "bytes held in cache files now",
            Unit::Bytes,
            self.cache_size.clone(),
        );
        r.register_with_unit(
            "cache_budget",
            "bound on the bytes in cache files (--max-cache-size; 0 = none)",
            Unit::Bytes,
            self.cache_budget.clone(),
        );
        r.register_with_unit(
            "read_latency",
            "latency of read calls, per file",
            Unit::Seconds,
            self.read_latency.clone(),
        );
        r.register_with_unit(
            "store_request",
            "reads of the store (ranged or whole object), from request to last byte",
            Unit::Seconds,
            self.store_request_latency.clone(),
        );
        r.register_with_unit(
            "store_first_byte",
            "ranged reads of the store, from request to first byte",
            Unit::Seconds,
            self.store_first_byte.clone(),
        );
        r.register_with_unit(
            "fetch_wait",
            "time a reader waited for a missing chunk or frame",
            Unit::Seconds,
            self.fetch_wait.clone(),
        );
    }

    /// Count a `read` of template file `file` that returned `bytes` (0 when
    /// it failed) after `latency`.
    pub fn record_read(&self, file: FileKind, bytes: u64, latency: Duration, ok: bool) {
        self.reads.fetch_add(1, Relaxed);
        if ok {
            self.read_bytes.fetch_add(bytes, Relaxed);
        } else {
            self.read_errors.fetch_add(1, Relaxed);
        }
        let histogram = match file {
            FileKind::Memfile => &self.template_read_latency[0],
            FileKind::Rootfs => &self.template_read_latency[1],
        };
        histogram.observe(latency.as_secs_f64());
    }

    /// Count a unit read from the store instead of its owner peer, for
    /// `reason` (the `reason` label's value).
    pub fn record_peer_fallback(&self, reason: &'static str) {
        self.peer_fallbacks
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Time a `read` of a plain object (snapfile, metadata.json) took; such
    /// reads are not template-file reads, so only the latency is recorded.
    pub fn record_object_read(&self, name: ObjectName, latency: Duration) {
        self.read_latency
            .get_or_create(&file_label(&name.as_string()))
            .observe(latency.as_secs_f64());
    }

    /// Record one store request that took `latency` from request to last
    /// byte (or to its failure).
    pub fn record_store_request(&self, latency: Duration) {
        self.store_request_latency.observe(latency.as_secs_f64());
    }

    /// Record the time from a store request to its first byte.
    pub fn record_store_first_byte(&self, latency: Duration) {
        self.store_first_byte.observe(latency.as_secs_f64());
    }

    /// Times a reader's wait for a fetch until the returned guard drops.
    pub fn time_fetch_wait(&self) -> Timer<'_> {
        Timer::start(&self.fetch_wait)
    }

    /// Every figure in the OpenMetrics text format (Prometheus reads it;
    /// `latency`'s buckets, `# EOF` at the end).
    pub fn render_prometheus(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            // Only a metric's own encoder fails, never the String.
            log::error!("encoding the metrics failed; the text is cut short");
        }
        text
    }
}

fn file_label(name: &str) -> FileLabel {
    [("file", name.to_string())]
}

/// The counters, read at each render: they are atomics of the read path,
/// not prometheus-client metrics, so its hot loops stay plain `fetch_add`s.
#[derive(Debug)]
struct Counters(Vec<(&'static str, &'static str, Arc<AtomicU64>)>);

impl Collector for Counters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for (name, help, value) in &self.0 {
            let counter = ConstCounter::new(value.load(Relaxed));
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Blob;

    fn value(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn counters_keep_their_names() {
        let s = Stats::default();
        s.record_read(FileKind::Memfile, 10, Duration::from_micros(50), true);
        s.record_read(FileKind::Memfile, 10, Duration::from_millis(3), true);
        s.record_read(FileKind::Rootfs, 0, Duration::from_secs(100), false);
        s.evictions.fetch_add(2, Relaxed);
        let text = s.render_prometheus();
        assert_eq!(value(&text, "tdfs_reads_total"), Some(3), "{text}");
        assert_eq!(value(&text, "tdfs_read_bytes_total"), Some(20), "{text}");
        assert_eq!(value(&text, "tdfs_read_errors_total"), Some(1), "{text}");
        assert_eq!(
            value(&text, "tdfs_cache_evictions_total"),
            Some(2),
            "{text}"
        );
        for name in [
            "cache_hits",
            "cache_misses",
            "store_requests",
            "store_bytes",
            "fetch_errors",
            "readahead_fetches",
            "cache_written_bytes",
        ] {
            assert_eq!(
                value(&text, &format!("tdfs_{name}_total")),
                Some(0),
                "{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn peer_fallbacks_render_by_reason() {
        let s = Stats::new(&["timeout", "short"]);
        s.record_peer_fallback("timeout");
        s.record_peer_fallback("timeout");
        s.record_peer_fallback("long");
        let text = s.render_prometheus();
        let series = |r: &str| format!("tdfs_peer_fallbacks_total{{reason=\"{r}\"}}");
        assert_eq!(value(&text, &series("timeout")), Some(2), "{text}");
        assert_eq!(
            value(&text, &series("short")),
            Some(0),
            "given, not yet seen"
        );
        assert_eq!(value(&text, &series("long")), Some(1), "not given, seen");
        assert_eq!(value(&text, &series("error")), None, "neither: {text}");
        assert_eq!(value(&text, "tdfs_peer_requests_total"), Some(0), "{text}");
    }

    #[test]
    fn read_latency_is_cumulative_per_file() {
        let s = Stats::default();
        s.record_read(FileKind::Memfile, 10, Duration::from_micros(50), true);
        s.record_read(FileKind::Memfile, 10, Duration::from_millis(3), true);
        s.record_read(FileKind::Memfile, 0, Duration::from_secs(100), false);
        s.record_object_read(ObjectName::Blob(Blob::Snapfile), Duration::from_micros(5));
        let text = s.render_prometheus();
        let bucket = |file: &str, le: &str| {
            value(
                &text,
                &format!("tdfs_read_latency_seconds_bucket{{le=\"{le}\",file=\"{file}\"}}"),
            )
        };
        assert_eq!(bucket("memfile", "0.00001"), Some(0), "{text}");
        assert_eq!(bucket("memfile", "0.0001"), Some(1), "{text}");
        assert_eq!(bucket("memfile", "0.005"), Some(2), "{text}");
        assert_eq!(bucket("memfile", "60.0"), Some(2), "{text}");
        assert_eq!(bucket("memfile", "+Inf"), Some(3), "{text}");
        assert_eq!(bucket("rootfs.ext4", "+Inf"), Some(0), "{text}");
        assert_eq!(bucket("snapfile", "0.00001"), Some(1), "{text}");
    }

    #[test]
    fn store_fetch_and_cache_figures_render() {
        let s = Stats::default();
        s.record_store_request(Duration::from_millis(30));
        s.record_store_first_byte(Duration::from_millis(20));
        drop(s.time_fetch_wait());
        s.cache_size.set(4096);
        s.cache_budget.set(1 << 20);
        let text = s.render_prometheus();
        for series in [
            "tdfs_store_request_seconds_count",
            "tdfs_store_first_byte_seconds_count",
            "tdfs_fetch_wait_seconds_count",
        ] {
            assert_eq!(value(&text, series), Some(1), "{series}:\n{text}");
        }
        assert_eq!(value(&text, "tdfs_cache_size_bytes"), Some(4096), "{text}");
        assert_eq!(
            value(&text, "tdfs_cache_budget_bytes"),
            Some(1 << 20),
            "{text}"
        );
    }
}
