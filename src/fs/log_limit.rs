//! The rate limit of the error log: a broken object read in a loop must not
//! write a line per read. The first failure of an object (a build's file or
//! blob, the listing) is logged in full; its repeats within `INTERVAL` are
//! counted, and the first failure after the interval logs them as one line
//! ("failed N more times in the last 60 s: <last cause>") and starts the
//! next interval. At most `MAX_OBJECTS` objects are tracked (the least
//! recently failed is forgotten first), so memory stays bounded too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync;

/// How long repeats of one object's failure are only counted.
pub const INTERVAL: Duration = Duration::from_secs(60);
/// Objects whose failures are tracked at once.
pub const MAX_OBJECTS: usize = 1024;

/// What to log for one failure.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The first failure of the object (or the first after a quiet
    /// interval): log it in full.
    Full,
    /// A repeat within the interval: log nothing.
    Counted,
    /// The first failure after an interval with repeats: log one line
    /// summing up `count` failures (this one included), with this cause.
    Summary { count: u64 },
}

struct Object {
    /// Start of the current interval.
    since: Instant,
    /// Failures counted (not logged) in the current interval.
    repeats: u64,
    /// When it last failed, for forgetting the least recent first.
    last_failed: Instant,
}

/// Failures by object; see the module docs.
pub struct LogLimiter {
    objects: Mutex<HashMap<String, Object>>,
    interval: Duration,
    max_objects: usize,
}

impl LogLimiter {
    pub fn new(interval: Duration, max_objects: usize) -> Self {
        LogLimiter {
            objects: Mutex::new(HashMap::new()),
            interval,
            max_objects,
        }
    }

    /// Record a failure of `object` at `now` and say what to log.
    pub fn failure(&self, object: &str, now: Instant) -> Verdict {
        let mut objects = sync::lock(&self.objects);
        if let Some(o) = objects.get_mut(object) {
            o.last_failed = now;
            if now.saturating_duration_since(o.since) < self.interval {
                o.repeats += 1;
                return Verdict::Counted;
            }
            o.since = now;
            let repeats = std::mem::take(&mut o.repeats);
            if repeats == 0 {
                return Verdict::Full;
            }
            return Verdict::Summary { count: repeats + 1 };
        }
        if objects.len() >= self.max_objects
            && let Some(oldest) = objects
                .iter()
                .min_by_key(|(_, o)| o.last_failed)
                .map(|(k, _)| k.clone())
        {
            objects.remove(&oldest);
        }
        objects.insert(
            object.to_string(),
            Object {
                since: now,
                repeats: 0,
                last_failed: now,
            },
        );
        Verdict::Full
    }

    /// The interval repeats are counted over.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        sync::lock(&self.objects).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_failure_in_full_repeats_once_per_interval() {
        let limiter = LogLimiter::new(Duration::from_secs(60), 8);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(limiter.failure("b/memfile", t0), Verdict::Full);
        for i in 1..1000 {
            let now = t0 + Duration::from_millis(i * 50);
            assert_eq!(limiter.failure("b/memfile", now), Verdict::Counted);
        }
        // Another object is not held back by the first.
        assert_eq!(limiter.failure("c/memfile", at(1)), Verdict::Full);
        assert_eq!(
            limiter.failure("b/memfile", at(61)),
            Verdict::Summary { count: 1000 }
        );
        assert_eq!(limiter.failure("b/memfile", at(62)), Verdict::Counted);
        // After an interval without repeats, a failure is new again.
        assert_eq!(limiter.failure("c/memfile", at(200)), Verdict::Full);
    }

    #[test]
    fn tracked_objects_are_bounded() {
        let limiter = LogLimiter::new(Duration::from_secs(60), 4);
        let t0 = Instant::now();
        for i in 0..100u64 {
            let now = t0 + Duration::from_millis(i);
            let verdict = limiter.failure(&format!("obj{i}"), now);
            assert_eq!(verdict, Verdict::Full);
            assert!(limiter.tracked() <= 4);
        }
        // The least recently failed went first; the newest stay tracked.
        let now = t0 + Duration::from_millis(100);
        assert_eq!(limiter.failure("obj99", now), Verdict::Counted);
        assert_eq!(limiter.failure("obj0", now), Verdict::Full);
    }
}
