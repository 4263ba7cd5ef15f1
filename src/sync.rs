//! The crate's one lock policy: a poisoned lock is recovered, never
//! propagated as a panic.
//!
//! Every lock in tdfs guards a map, a queue or a small record that is
//! consistent between statements: no invariant spans a point where the
//! holder could panic. What a panicking thread leaves behind is therefore
//! still valid, and recovering it keeps one bug in one request from turning
//! every later request of the mount into a panic (what `.lock().expect(..)`
//! would do). Code that cannot promise this must not use a plain lock.

use std::sync::{
    Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
    WaitTimeoutResult,
};
use std::time::Duration;

/// Lock `mutex`, recovering it if a holder panicked.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Take `lock` for reading, recovering it if a holder panicked.
pub fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Take `lock` for writing, recovering it if a holder panicked.
pub fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// `Condvar::wait` under the same policy.
pub fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

/// `Condvar::wait_timeout` under the same policy.
pub fn wait_timeout<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
) -> (MutexGuard<'a, T>, WaitTimeoutResult) {
    cv.wait_timeout(guard, timeout)
        .unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_recovered_with_its_data() {
        let m = Mutex::new(7);
        let _ = std::panic::catch_unwind(|| {
            let _g = m.lock().unwrap();
            panic!("holder panics");
        });
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 7);
        let rw = RwLock::new(3);
        let _ = std::panic::catch_unwind(|| {
            let _g = rw.write().unwrap();
            panic!("holder panics");
        });
        assert_eq!(*read(&rw), 3);
        *write(&rw) = 4;
        assert_eq!(*read(&rw), 4);
    }
}
