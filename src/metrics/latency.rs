//! Latency histograms: one bucket list for every latency tdfs records, and
//! a guard that times a stretch of code.

use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;

/// Upper bounds (seconds) of every latency histogram: 10 µs (a read served
/// from the page cache of a cache file) to 60 s (past the default 30 s
/// fetch timeout), about 2.5 steps per decade so a tail shows in its own
/// bucket; slower observations land in `+Inf`.
pub const LATENCY_BUCKETS: [f64; 21] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// An empty histogram with `LATENCY_BUCKETS`.
pub(super) fn histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Observes, when dropped, the time since it was made: one line at the top
/// of a wait times every way out of it.
#[must_use = "the time is recorded when the timer drops"]
pub struct Timer<'a> {
    histogram: &'a Histogram,
    start: Instant,
}

impl<'a> Timer<'a> {
    pub(super) fn start(histogram: &'a Histogram) -> Self {
        Timer {
            histogram,
            start: Instant::now(),
        }
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_span_10us_to_60s_in_order() {
        assert_eq!(LATENCY_BUCKETS.first(), Some(&0.000_01));
        assert_eq!(LATENCY_BUCKETS.last(), Some(&60.0));
        for pair in LATENCY_BUCKETS.windows(2) {
            let step = pair[1] / pair[0];
            assert!((1.9..=3.1).contains(&step), "{pair:?}: step {step}");
        }
    }
}
