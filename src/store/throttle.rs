//! A throttling wrapper around any store, for benchmarks: every ranged read
//! waits a first-byte latency, then its stream delivers no faster than a
//! per-request bandwidth. It turns a local directory into a stand-in for a
//! remote store, so read-ahead and request concurrency can be measured
//! without a network (`tdfs mount --bench-throttle 20ms,100MB`). It ships in
//! the library, not behind the `testing` feature, because that hidden mount
//! flag is how contrib/bench makes its slow store.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::{Store, StoreError};
use crate::format::ObjectKey;

/// Most bytes a throttled stream hands out per `read`, so its pace is
/// smooth at the scale of a chunk rather than one burst per caller buffer.
const PACE_PIECE: usize = 64 << 10;

/// What a throttled store adds to each ranged read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// Wait before a request answers (its first byte).
    pub first_byte: Duration,
    /// Bytes per second one request's stream delivers at most; 0 = no cap.
    pub bytes_per_sec: u64,
}

impl Throttle {
    /// Parse `LATENCY,BANDWIDTH`, e.g. `20ms,100MB` or `1s,1.5GiB/s`.
    /// Latency takes `us`, `ms` or `s`; bandwidth (per second, `/s`
    /// optional) takes `B`, decimal `KB`/`MB`/`GB` or binary
    /// `KiB`/`MiB`/`GiB`; a bandwidth of 0 means no cap.
    pub fn parse(text: &str) -> Result<Throttle, String> {
        let bad = |why: &str| {
            format!("{text:?} is not a throttle ({why}); write LATENCY,BANDWIDTH, e.g. 20ms,100MB")
        };
        let (latency, bandwidth) = text
            .split_once(',')
            .ok_or_else(|| bad("no comma between latency and bandwidth"))?;
        let (value, unit) = split_number(latency).ok_or_else(|| bad("latency is not a number"))?;
        let seconds_per_unit = match unit {
            "us" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            _ => return Err(bad("latency unit must be us, ms or s")),
        };
        let first_byte = Duration::try_from_secs_f64(value * seconds_per_unit)
            .map_err(|_| bad("latency out of range"))?;
        let bandwidth = bandwidth.trim();
        let bandwidth = bandwidth.strip_suffix("/s").unwrap_or(bandwidth);
        let (value, unit) =
            split_number(bandwidth).ok_or_else(|| bad("bandwidth is not a number"))?;
        let bytes_per_unit = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "kb" => 1e3,
            "mb" => 1e6,
            "gb" => 1e9,
            "kib" => 1024.0,
            "mib" => 1024.0 * 1024.0,
            "gib" => 1024.0 * 1024.0 * 1024.0,
            _ => return Err(bad("bandwidth unit must be B, KB, MB, GB, KiB, MiB or GiB")),
        };
        let bytes_per_sec = value * bytes_per_unit;
        if bytes_per_sec >= u64::MAX as f64 {
            return Err(bad("bandwidth out of range"));
        }
        if bytes_per_sec > 0.0 && bytes_per_sec < 1.0 {
            return Err(bad("bandwidth under one byte per second"));
        }
        Ok(Throttle {
            first_byte,
            bytes_per_sec: bytes_per_sec as u64,
        })
    }
}

/// A non-negative decimal number and the unit after it (spaces trimmed).
fn split_number(text: &str) -> Option<(f64, &str)> {
    let text = text.trim();
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let value: f64 = text[..end].parse().ok()?;
    value.is_finite().then_some((value, text[end..].trim()))
}

/// A `Store` that forwards to another, with every ranged read (`read_range`,
/// and so `read_exact_range` and `read_all`) delayed and paced by a
/// `Throttle`. Other reads pass through unthrottled; it takes no writes.
#[derive(Debug)]
pub struct ThrottleStore {
    inner: Arc<dyn Store>,
    throttle: Throttle,
}

impl ThrottleStore {
    pub fn new(inner: Arc<dyn Store>, throttle: Throttle) -> ThrottleStore {
        ThrottleStore { inner, throttle }
    }
}

impl Store for ThrottleStore {
    fn location(&self) -> String {
        format!(
            "throttle({}, first byte {:?}, {} B/s per request)",
            self.inner.location(),
            self.throttle.first_byte,
            self.throttle.bytes_per_sec
        )
    }

    fn size(&self, key: &ObjectKey) -> Result<u64, StoreError> {
        self.inner.size(key)
    }

    fn uncompressed_size(&self, key: &ObjectKey) -> Result<Option<u64>, StoreError> {
        self.inner.uncompressed_size(key)
    }

    fn read_range(
        &self,
        key: &ObjectKey,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        std::thread::sleep(self.throttle.first_byte);
        let stream = self.inner.read_range(key, offset, len)?;
        if self.throttle.bytes_per_sec == 0 {
            return Ok(stream);
        }
        Ok(Box::new(Paced {
            stream,
            start: Instant::now(),
            delivered: 0,
            bytes_per_sec: self.throttle.bytes_per_sec,
        }))
    }

    fn list_builds(&self) -> Result<Vec<Uuid>, StoreError> {
        self.inner.list_builds()
    }
}

/// A stream that hands out its bytes no earlier than `bytes_per_sec`
/// allows, counted from its start.
struct Paced {
    stream: Box<dyn Read + Send>,
    start: Instant,
    delivered: u64,
    bytes_per_sec: u64,
}

impl Read for Paced {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let piece = buf.len().min(PACE_PIECE);
        let n = self.stream.read(&mut buf[..piece])?;
        self.delivered += n as u64;
        let due =
            self.start + Duration::from_secs_f64(self.delivered as f64 / self.bytes_per_sec as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Compression, FileKind};
    use crate::store::{LocalStore, WritableStore};

    #[test]
    fn parses_latency_and_bandwidth() {
        let t = |s| Throttle::parse(s).unwrap();
        assert_eq!(
            t("20ms,100MB"),
            Throttle {
                first_byte: Duration::from_millis(20),
                bytes_per_sec: 100_000_000
            }
        );
        assert_eq!(
            t(" 1.5s , 2MiB/s"),
            Throttle {
                first_byte: Duration::from_millis(1500),
                bytes_per_sec: 2 << 20
            }
        );
        assert_eq!(t("250us,0").first_byte, Duration::from_micros(250));
        assert_eq!(t("0ms,0").bytes_per_sec, 0);
        assert_eq!(t("1s,1gb").bytes_per_sec, 1_000_000_000);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for bad in [
            "",
            "20ms",
            "20,100MB",
            "20min,100MB",
            "-1ms,100MB",
            "ms,100MB",
            "20ms,100XB",
            "20ms,fast",
            "20ms,0.5B",
            "1e9s,1MB",
            "20ms,99999999999999999999GB",
        ] {
            let err = Throttle::parse(bad).unwrap_err();
            assert!(err.contains("LATENCY,BANDWIDTH"), "{bad:?}: {err}");
        }
    }

    fn store_with(
        data: &[u8],
        throttle: Throttle,
    ) -> (tempfile::TempDir, ThrottleStore, ObjectKey) {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalStore::create(dir.path()).unwrap();
        let key = ObjectKey::data(Uuid::new_v4(), FileKind::Memfile, Compression::None);
        local.put_bytes(&key, data).unwrap();
        (dir, ThrottleStore::new(Arc::new(local), throttle), key)
    }

    #[test]
    fn delays_the_first_byte_and_paces_the_rest() {
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        let throttle = Throttle {
            first_byte: Duration::from_millis(30),
            bytes_per_sec: 10 << 20,
        };
        let (_dir, store, key) = store_with(&data, throttle);
        // Sleeps only ever last at least as long as asked, so these lower
        // bounds hold however loaded the machine is.
        let start = Instant::now();
        assert_eq!(
            store.read_exact_range(&key, 4096, 100).unwrap(),
            data[4096..4196]
        );
        assert!(start.elapsed() >= Duration::from_millis(30));
        let start = Instant::now();
        assert_eq!(store.read_all(&key, 1 << 20).unwrap(), data);
        // 1 MiB at 10 MiB/s: 100 ms, after the 30 ms first byte.
        assert!(start.elapsed() >= Duration::from_millis(130));
    }

    #[test]
    fn unthrottled_calls_pass_through() {
        let (_dir, store, key) = store_with(
            &[7u8; 100],
            Throttle {
                first_byte: Duration::ZERO,
                bytes_per_sec: 0,
            },
        );
        assert_eq!(store.size(&key).unwrap(), 100);
        assert_eq!(store.read_all(&key, 100).unwrap(), vec![7u8; 100]);
        assert!(matches!(
            store.read_all(&key, 99),
            Err(StoreError::TooLarge { size: 100, .. })
        ));
        assert_eq!(store.list_builds().unwrap(), vec![key.build]);
        assert!(store.location().starts_with("throttle("));
    }
}
