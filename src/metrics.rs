//! Counters shared by the read path and shown in `.stats` as Prometheus text.
//! Plain relaxed atomics: they are statistics, not synchronization.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the read-latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0, 10.0,
];

#[derive(Debug, Default)]
pub struct Stats {
    /// `read` calls served by template files.
    pub reads: AtomicU64,
    pub read_bytes: AtomicU64,
    pub read_errors: AtomicU64,
    /// Chunker lookups answered from the local cache.
    pub cache_hits: AtomicU64,
    /// Chunker lookups that had to wait for a fetch.
    pub cache_misses: AtomicU64,
    pub store_requests: AtomicU64,
    pub store_bytes: AtomicU64,
    pub fetch_errors: AtomicU64,
    /// Fetches started by read-ahead rather than a reader.
    pub readahead_fetches: AtomicU64,
    /// Uncompressed bytes placed in cache files.
    pub cached_bytes: AtomicU64,
    pub evictions: AtomicU64,
    /// Fetches started by prefetch (replaying a trace).
    pub prefetch_fetches: AtomicU64,
    /// Uncompressed bytes prefetch placed in cache files.
    pub prefetch_bytes: AtomicU64,
    /// Chunker lookups answered from a unit prefetch fetched.
    pub prefetch_hits: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Stats {
    pub fn record_read(&self, bytes: u64, latency: Duration, ok: bool) {
        self.reads.fetch_add(1, Relaxed);
        if ok {
            self.read_bytes.fetch_add(bytes, Relaxed);
        } else {
            self.read_errors.fetch_add(1, Relaxed);
        }
        let secs = latency.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| secs <= b) {
            self.latency_buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(latency.as_micros() as u64, Relaxed);
    }

    /// The counters in Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let counters: [(&str, &str, &AtomicU64); 14] = [
            (
                "tdfs_reads_total",
                "read calls on template files",
                &self.reads,
            ),
            (
                "tdfs_read_bytes_total",
                "bytes returned to readers",
                &self.read_bytes,
            ),
            (
                "tdfs_read_errors_total",
                "read calls that failed",
                &self.read_errors,
            ),
            (
                "tdfs_cache_hits_total",
                "block lookups served from the local cache",
                &self.cache_hits,
            ),
            (
                "tdfs_cache_misses_total",
                "block lookups that waited for a fetch",
                &self.cache_misses,
            ),
            (
                "tdfs_store_requests_total",
                "ranged reads sent to the store",
                &self.store_requests,
            ),
            (
                "tdfs_store_bytes_total",
                "bytes received from the store",
                &self.store_bytes,
            ),
            (
                "tdfs_fetch_errors_total",
                "fetches that failed",
                &self.fetch_errors,
            ),
            (
                "tdfs_readahead_fetches_total",
                "fetches started by read-ahead",
                &self.readahead_fetches,
            ),
            (
                "tdfs_cached_bytes_total",
                "uncompressed bytes written to cache files",
                &self.cached_bytes,
            ),
            (
                "tdfs_cache_evictions_total",
                "cached chunks or frames evicted",
                &self.evictions,
            ),
            (
                "tdfs_prefetch_fetches_total",
                "fetches started by prefetch",
                &self.prefetch_fetches,
            ),
            (
                "tdfs_prefetch_bytes_total",
                "uncompressed bytes prefetch placed in cache files",
                &self.prefetch_bytes,
            ),
            (
                "tdfs_prefetch_hits_total",
                "block lookups served from prefetched data",
                &self.prefetch_hits,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let name = "tdfs_read_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} latency of read calls\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            cumulative += count.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let total = self.latency_count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(
            out,
            "{name}_sum {}\n{name}_count {total}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let s = Stats::default();
        s.record_read(10, Duration::from_micros(50), true);
        s.record_read(10, Duration::from_millis(3), true);
        s.record_read(0, Duration::from_secs(100), false);
        let text = s.render_prometheus();
        assert!(text.contains("tdfs_reads_total 3"));
        assert!(text.contains("tdfs_read_bytes_total 20"));
        assert!(text.contains("tdfs_read_errors_total 1"));
        assert!(text.contains("tdfs_read_latency_seconds_bucket{le=\"0.0001\"} 1"));
        assert!(text.contains("tdfs_read_latency_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("tdfs_read_latency_seconds_bucket{le=\"10\"} 2"));
        assert!(text.contains("tdfs_read_latency_seconds_bucket{le=\"+Inf\"} 3"));
    }
}
