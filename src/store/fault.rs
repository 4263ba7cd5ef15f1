//! A fault-injecting wrapper around any store, for tests only (compiled for
//! this crate's tests and with feature `testing`, never in the shipped
//! binary): it counts ranged reads (in total and per key) and, as told at run
//! time, adds latency, fails requests, ends objects early, flips bytes, or
//! holds requests (or the rest of a stream) unanswered until healed.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::{Store, StoreError};
use crate::format::ObjectKey;
use crate::sync;

/// Longest a `Fault::Hang` request waits for `FaultStore::heal`.
const HANG_LIMIT: Duration = Duration::from_secs(3600);

/// What happens to a ranged read that a fault rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request fails with a transient remote error.
    Error,
    /// The object ends at this offset: streams stop there (a short read).
    EndAt(u64),
    /// The byte at this object offset arrives with all its bits flipped.
    FlipByte(u64),
    /// The request does not answer until `heal` (or an hour passes), then
    /// proceeds normally.
    Hang,
    /// The stream delivers the object up to this offset, then stalls until
    /// `heal` (or an hour passes) before delivering the rest.
    StallAt(u64),
}

#[derive(Debug)]
struct Rule {
    key: Option<ObjectKey>,
    fault: Fault,
    /// Requests left to affect; `None` = until healed.
    remaining: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<Rule>,
    latency: Duration,
    /// Bumped by `heal` to release hanging requests.
    heals: u64,
    hanging: usize,
}

/// The fault settings, shared with the streams a fault wraps.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    healed: Condvar,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        sync::lock(&self.state)
    }

    /// Block until the next `heal` (or `HANG_LIMIT`).
    fn hang(&self) {
        let deadline = Instant::now() + HANG_LIMIT;
        let mut state = self.state();
        let heals = state.heals;
        state.hanging += 1;
        while state.heals == heals {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = sync::wait_timeout(&self.healed, state, deadline - now).0;
        }
        state.hanging -= 1;
    }
}

/// A `Store` that forwards to another, with faults injected into ranged reads
/// (`read_range`, and so `read_exact_range` and `read_all`). Other reads pass
/// through. It takes no writes: a test writes to the store it wraps.
#[derive(Debug)]
pub struct FaultStore {
    inner: Arc<dyn Store>,
    shared: Arc<Shared>,
    requests: AtomicU64,
    per_key: Mutex<HashMap<ObjectKey, u64>>,
}

impl FaultStore {
    pub fn new(inner: Arc<dyn Store>) -> FaultStore {
        FaultStore {
            inner,
            shared: Arc::default(),
            requests: AtomicU64::new(0),
            per_key: Mutex::new(HashMap::new()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state()
    }

    /// Apply `fault` to the next `times` ranged reads of `key` (any key when
    /// `None`; every read until `heal` when `times` is `None`). Rules are
    /// tried in the order given; the first that matches a request applies.
    pub fn inject(&self, key: Option<ObjectKey>, fault: Fault, times: Option<u64>) {
        self.state().rules.push(Rule {
            key,
            fault,
            remaining: times,
        });
    }

    /// Fail the next `n` ranged reads, of any key.
    pub fn fail_next(&self, n: u64) {
        self.inject(None, Fault::Error, Some(n));
    }

    /// Delay every ranged read by `latency` before it answers.
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    /// Drop every fault rule and release hanging requests (latency stays).
    pub fn heal(&self) {
        let mut state = self.state();
        state.rules.clear();
        state.heals += 1;
        drop(state);
        self.shared.healed.notify_all();
    }

    /// Ranged reads received, in total.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Ranged reads received for `key`.
    pub fn requests_for(&self, key: &ObjectKey) -> u64 {
        let per_key = sync::lock(&self.per_key);
        per_key.get(key).copied().unwrap_or(0)
    }

    /// Requests (or streams) currently held by `Fault::Hang` / `StallAt`.
    pub fn hanging(&self) -> usize {
        self.state().hanging
    }

    /// The fault for one request to `key`, consuming one use of its rule.
    fn take_fault(&self, key: &ObjectKey) -> (Option<Fault>, Duration) {
        let mut state = self.state();
        let latency = state.latency;
        let Some(i) = state
            .rules
            .iter()
            .position(|r| r.key.is_none_or(|k| k == *key))
        else {
            return (None, latency);
        };
        let rule = &mut state.rules[i];
        let fault = rule.fault;
        if let Some(n) = &mut rule.remaining {
            *n -= 1;
            if *n == 0 {
                state.rules.remove(i);
            }
        }
        (Some(fault), latency)
    }
}

impl Store for FaultStore {
    fn location(&self) -> String {
        format!("fault({})", self.inner.location())
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
        self.requests.fetch_add(1, Ordering::SeqCst);
        *sync::lock(&self.per_key).entry(*key).or_default() += 1;
        let (fault, latency) = self.take_fault(key);
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        match fault {
            None => self.inner.read_range(key, offset, len),
            Some(Fault::Error) => Err(StoreError::Remote {
                location: self.location(),
                key: key.to_string(),
                status: Some(503),
                message: "injected fault".to_string(),
                transient: true,
            }),
            Some(Fault::EndAt(end)) => {
                let stream = self.inner.read_range(key, offset, len)?;
                Ok(Box::new(stream.take(end.saturating_sub(offset))))
            }
            Some(Fault::FlipByte(at)) => {
                let stream = self.inner.read_range(key, offset, len)?;
                Ok(Box::new(FlipByte {
                    stream,
                    pos: offset,
                    at,
                }))
            }
            Some(Fault::Hang) => {
                self.shared.hang();
                self.inner.read_range(key, offset, len)
            }
            Some(Fault::StallAt(at)) => {
                let stream = self.inner.read_range(key, offset, len)?;
                Ok(Box::new(Stall {
                    stream,
                    pos: offset,
                    at,
                    shared: Arc::clone(&self.shared),
                }))
            }
        }
    }

    fn list_builds(&self) -> Result<Vec<Uuid>, StoreError> {
        self.inner.list_builds()
    }
}

/// A stream that flips the byte at object offset `at`.
struct FlipByte {
    stream: Box<dyn Read + Send>,
    /// Object offset of the next byte.
    pos: u64,
    at: u64,
}

impl Read for FlipByte {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
        if (self.pos..self.pos + n as u64).contains(&self.at) {
            buf[(self.at - self.pos) as usize] ^= 0xff;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// A stream that stalls at object offset `at` until the store is healed.
struct Stall {
    stream: Box<dyn Read + Send>,
    /// Object offset of the next byte.
    pos: u64,
    at: u64,
    shared: Arc<Shared>,
}

impl Read for Stall {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.at {
            self.shared.hang();
            self.at = u64::MAX;
        }
        let limit = if self.pos < self.at {
            buf.len().min((self.at - self.pos) as usize)
        } else {
            buf.len()
        };
        let n = self.stream.read(&mut buf[..limit])?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Compression, FileKind};
    use crate::store::{LocalStore, WritableStore};

    fn setup() -> (tempfile::TempDir, FaultStore, ObjectKey, ObjectKey) {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalStore::create(dir.path()).unwrap();
        let a = ObjectKey::data(Uuid::new_v4(), FileKind::Memfile, Compression::None);
        let b = ObjectKey::data(Uuid::new_v4(), FileKind::Rootfs, Compression::None);
        local.put_bytes(&a, &[1u8; 100]).unwrap();
        local.put_bytes(&b, &[2u8; 100]).unwrap();
        (dir, FaultStore::new(Arc::new(local)), a, b)
    }

    #[test]
    fn counts_and_keyed_faults_then_heals() {
        let (_dir, s, a, b) = setup();
        s.inject(Some(a), Fault::Error, None);
        assert!(s.read_exact_range(&a, 0, 10).is_err());
        assert!(s.read_exact_range(&a, 0, 10).is_err());
        assert_eq!(s.read_exact_range(&b, 0, 10).unwrap(), vec![2u8; 10]);
        assert_eq!(
            (s.requests(), s.requests_for(&a), s.requests_for(&b)),
            (3, 2, 1)
        );
        s.heal();
        assert_eq!(s.read_all(&a, 1000).unwrap(), vec![1u8; 100]);
        assert_eq!(s.requests(), 4);
    }

    #[test]
    fn fail_next_short_reads_and_flips() {
        let (_dir, s, a, _) = setup();
        s.fail_next(1);
        assert!(matches!(
            s.read_exact_range(&a, 0, 10),
            Err(StoreError::Remote {
                transient: true,
                ..
            })
        ));
        assert!(s.read_exact_range(&a, 0, 10).is_ok());
        s.inject(None, Fault::EndAt(50), Some(1));
        assert!(matches!(
            s.read_exact_range(&a, 40, 20),
            Err(StoreError::ShortRead { got: 10, .. })
        ));
        s.inject(None, Fault::FlipByte(45), Some(1));
        let got = s.read_exact_range(&a, 40, 20).unwrap();
        assert_eq!(got[5], !1u8);
        assert_eq!(got.iter().filter(|&&x| x == 1).count(), 19);
        assert_eq!(s.read_exact_range(&a, 40, 20).unwrap(), vec![1u8; 20]);
    }

    #[test]
    fn hang_until_healed() {
        let (_dir, s, a, _) = setup();
        let s = Arc::new(s);
        s.inject(None, Fault::Hang, Some(1));
        let t = {
            let s = Arc::clone(&s);
            std::thread::spawn(move || s.read_exact_range(&a, 0, 5))
        };
        while s.hanging() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!t.is_finished());
        s.heal();
        assert_eq!(t.join().unwrap().unwrap(), vec![1u8; 5]);
        assert_eq!(s.hanging(), 0);
    }

    #[test]
    fn stall_mid_stream_until_healed() {
        let (_dir, s, a, _) = setup();
        let s = Arc::new(s);
        s.inject(None, Fault::StallAt(30), Some(1));
        let mut stream = s.read_range(&a, 10, 50).unwrap();
        let mut first = [0u8; 20];
        stream.read_exact(&mut first).unwrap();
        let t = std::thread::spawn(move || {
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).map(|_| rest)
        });
        while s.hanging() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!t.is_finished());
        s.heal();
        assert_eq!(t.join().unwrap().unwrap(), vec![1u8; 30]);
    }
}
