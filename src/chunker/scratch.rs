//! Decode buffers shared by the fetch workers: a frame is decoded into one
//! and then written into the cache file with `pwrite`, rather than decoded
//! through the mapping into fresh file pages, each of which would first be
//! faulted in and zeroed by the kernel (2–4× the cost of the decode itself).
//! Decoding is CPU-bound, so there are as many buffers as cores: a worker
//! waits for one only while the cores are busy decoding anyway.

use std::sync::{Condvar, Mutex};

use crate::sync;

/// A buffer (this module's, or a fetch worker's store buffer) grown past
/// this is freed after use rather than kept, so one unusually large frame
/// does not pin its size for the mount's lifetime.
pub(super) const KEEP_AT_MOST: usize = 8 << 20;

pub(super) struct ScratchBuffers {
    free: Mutex<Vec<Vec<u8>>>,
    returned: Condvar,
}

impl ScratchBuffers {
    /// `count` buffers (at least one), allocated on first use.
    pub(super) fn new(count: usize) -> ScratchBuffers {
        ScratchBuffers {
            free: Mutex::new((0..count.max(1)).map(|_| Vec::new()).collect()),
            returned: Condvar::new(),
        }
    }

    /// A buffer of exactly `len` bytes (contents unspecified), waiting for
    /// one to be free.
    pub(super) fn take(&self, len: usize) -> Scratch<'_> {
        let mut free = sync::lock(&self.free);
        let mut buf = loop {
            match free.pop() {
                Some(buf) => break buf,
                None => free = sync::wait(&self.returned, free),
            }
        };
        drop(free);
        // Only grows: once warm, a buffer's pages are never faulted again.
        if buf.len() < len {
            buf.resize(len, 0);
        }
        Scratch {
            owner: self,
            buf,
            len,
        }
    }
}

/// A buffer on loan; goes back to its `ScratchBuffers` when dropped.
pub(super) struct Scratch<'a> {
    owner: &'a ScratchBuffers,
    buf: Vec<u8>,
    len: usize,
}

impl std::ops::Deref for Scratch<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::ops::DerefMut for Scratch<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        if buf.len() > KEEP_AT_MOST {
            buf = Vec::new();
        }
        sync::lock(&self.owner.free).push(buf);
        self.owner.returned.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn lends_exact_lengths_and_bounds_concurrent_loans() {
        let pool = Arc::new(ScratchBuffers::new(2));
        assert_eq!(pool.take(10).len(), 10);
        assert_eq!(pool.take(3).len(), 3);
        // An oversized buffer is not kept.
        drop(pool.take(KEEP_AT_MOST + 1));
        assert!(
            pool.free
                .lock()
                .unwrap()
                .iter()
                .all(|b| b.len() <= KEEP_AT_MOST)
        );
        let out = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (pool, out, most) = (pool.clone(), out.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let mut s = pool.take(4096);
                        let now = out.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        s[0] = 1;
                        std::thread::yield_now();
                        out.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 2);
        assert_eq!(pool.free.lock().unwrap().len(), 2);
    }
}
