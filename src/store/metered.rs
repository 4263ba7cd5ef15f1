//! A wrapper that times every read of the store into `Stats`: ranged reads
//! from request to first byte and to last byte, whole-object reads from
//! request to end. A mount wraps its store in one, whatever the backend.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Instant;

use uuid::Uuid;

use super::{Store, StoreError};
use crate::format::ObjectKey;
use crate::metrics::Stats;

/// A store whose reads are timed; `location`, `size`, `uncompressed_size` and
/// `list_builds` pass through untimed.
/// It takes no writes: the read path never writes.
#[derive(Debug)]
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    stats: Arc<Stats>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>, stats: Arc<Stats>) -> MeteredStore {
        MeteredStore { inner, stats }
    }
}

impl Store for MeteredStore {
    fn location(&self) -> String {
        self.inner.location()
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
        let start = Instant::now();
        match self.inner.read_range(key, offset, len) {
            Ok(stream) => Ok(Box::new(Timed {
                stream,
                stats: self.stats.clone(),
                start,
                first_byte_seen: false,
                ended: false,
            })),
            Err(e) => {
                self.stats.record_store_request(start.elapsed());
                Err(e)
            }
        }
    }

    fn read_all(&self, key: &ObjectKey, max_len: u64) -> Result<Vec<u8>, StoreError> {
        let start = Instant::now();
        let result = self.inner.read_all(key, max_len);
        self.stats.record_store_request(start.elapsed());
        result
    }

    fn list_builds(&self) -> Result<Vec<Uuid>, StoreError> {
        self.inner.list_builds()
    }
}

/// A ranged read's stream: records its first byte, and its end at the last
/// byte, an error, or when the reader drops it early.
struct Timed {
    stream: Box<dyn Read + Send>,
    stats: Arc<Stats>,
    start: Instant,
    first_byte_seen: bool,
    ended: bool,
}

impl Timed {
    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.stats.record_store_request(self.start.elapsed());
        }
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = self.stream.read(buf);
        match result {
            Ok(0) => self.end(),
            Ok(_) if !self.first_byte_seen => {
                self.first_byte_seen = true;
                self.stats.record_store_first_byte(self.start.elapsed());
            }
            Ok(_) => {}
            Err(ref e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => self.end(),
        }
        result
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::format::{Blob, ObjectName};
    use crate::store::{LocalStore, WritableStore};

    fn count(text: &str, series: &str) -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    }

    #[test]
    fn ranged_and_whole_reads_are_timed_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalStore::open(dir.path()).unwrap();
        let key = ObjectKey::new(Uuid::new_v4(), ObjectName::Blob(Blob::Snapfile));
        local.put_bytes(&key, &[7u8; 10_000]).unwrap();
        let stats = Arc::new(Stats::default());
        let store = MeteredStore::new(Arc::new(local), stats.clone());

        assert_eq!(store.read_exact_range(&key, 100, 5000).unwrap().len(), 5000);
        // Dropped before its end: still one request, and its first byte.
        let mut early = store.read_range(&key, 0, 10_000).unwrap();
        early.read_exact(&mut [0u8; 10]).unwrap();
        drop(early);
        assert_eq!(store.read_all(&key, 1 << 20).unwrap().len(), 10_000);
        assert!(
            store
                .read_range(
                    &ObjectKey::new(Uuid::new_v4(), ObjectName::Blob(Blob::Snapfile)),
                    0,
                    1
                )
                .and_then(|mut s| s.read(&mut [0u8; 1]).map_err(|e| StoreError::io(&key, e)))
                .is_err()
        );

        let text = stats.render_prometheus();
        assert_eq!(
            count(&text, "tdfs_store_request_seconds_count"),
            4,
            "{text}"
        );
        assert_eq!(
            count(&text, "tdfs_store_first_byte_seconds_count"),
            2,
            "{text}"
        );
    }
}
