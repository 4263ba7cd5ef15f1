//! Ordered parallel map: items are produced on every core and consumed in
//! index order by the calling thread, with a bounded number in flight so the
//! memory held stays proportional to the thread count, not the input size.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use crate::sync;

/// Worker threads to use: all cores.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Run `work(i)` for `i in 0..count` on `threads` threads and hand each result
/// to `sink(i, result)` in increasing `i`. At most `2 * threads` results are
/// produced ahead of the sink. The first error (from either side) stops the
/// run and is returned.
pub fn ordered_map<T, E, W, S>(count: usize, threads: usize, work: W, mut sink: S) -> Result<(), E>
where
    T: Send,
    E: Send,
    W: Fn(usize) -> Result<T, E> + Sync,
    S: FnMut(usize, T) -> Result<(), E>,
{
    if count == 0 {
        return Ok(());
    }
    let threads = threads.clamp(1, count);
    let window = 2 * threads;
    let next = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    // Index of the next result the sink will take; workers wait on it so they
    // never run more than `window` items ahead.
    let consumed = Mutex::new(0usize);
    let advanced = Condvar::new();
    let (tx, rx) = crossbeam_channel::bounded::<(usize, Result<T, E>)>(window);

    std::thread::scope(|scope| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (next, abort, consumed, advanced, work) =
                (&next, &abort, &consumed, &advanced, &work);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    {
                        let mut c = sync::lock(consumed);
                        while i >= *c + window && !abort.load(Ordering::Relaxed) {
                            c = sync::wait(advanced, c);
                        }
                    }
                    if abort.load(Ordering::Relaxed) {
                        return;
                    }
                    let result = work(i);
                    let failed = result.is_err();
                    if tx.send((i, result)).is_err() || failed {
                        return;
                    }
                }
            });
        }
        drop(tx);

        let mut pending = BTreeMap::new();
        let mut expect = 0usize;
        let outcome = (|| {
            while expect < count {
                let Ok((i, result)) = rx.recv() else {
                    // Every worker has stopped: only possible after an abort.
                    break;
                };
                pending.insert(i, result?);
                while let Some(item) = pending.remove(&expect) {
                    sink(expect, item)?;
                    expect += 1;
                    *sync::lock(&consumed) = expect;
                    advanced.notify_all();
                }
            }
            Ok(())
        })();
        if outcome.is_err() {
            abort.store(true, Ordering::Relaxed);
            // Wake waiting workers so they see the abort and exit.
            let _guard = sync::lock(&consumed);
            advanced.notify_all();
        }
        drop(rx);
        outcome
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_arrive_in_order() {
        let mut seen = Vec::new();
        ordered_map::<_, (), _, _>(
            100,
            4,
            |i| Ok(i * 3),
            |i, v| {
                assert_eq!(v, i * 3);
                seen.push(i);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn first_error_stops_the_run() {
        let err = ordered_map(
            1000,
            3,
            |i| {
                if i == 17 {
                    Err(format!("bad {i}"))
                } else {
                    Ok(i)
                }
            },
            |_, _| Ok(()),
        );
        assert_eq!(err, Err("bad 17".to_string()));
        let err = ordered_map(
            1000,
            3,
            Ok,
            |i, _| if i == 5 { Err("sink") } else { Ok(()) },
        );
        assert_eq!(err, Err("sink"));
    }
}
