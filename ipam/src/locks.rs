//! Locks by key (one block, one handle, one address): requests on different keys never
//! wait for each other, and those on one key fail together when etcd does.
//!
//! A holder whose store call fails marks the key ([`KeyGuard::fail`]); every request
//! that was already waiting then fails at once with that cause instead of trying etcd
//! again after it, so a queue built up during an outage drains within the first
//! request's budget. A wait that outlasts its deadline also ends.

use std::collections::HashMap;
use std::fmt::Display;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;

/// Why a wait for a key's lock ended without it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LockError {
    #[error("etcd did not answer in time: waited {:.1}s behind another request on {key}", waited.as_secs_f32())]
    TimedOut { key: String, waited: Duration },
    /// The request ahead on the key failed in the store while this one waited.
    #[error("{cause} (the request ahead on {key} failed with it)")]
    AheadFailed { key: String, cause: String },
}

/// One key's lock and the last store failure of its holders.
#[derive(Default)]
struct Slot {
    mutex: Arc<tokio::sync::Mutex<()>>,
    failed: Mutex<Option<(Instant, String)>>,
}

type Map<K> = Mutex<HashMap<K, Arc<Slot>>>;

/// One async mutex per key, created on first use and dropped with its last user.
pub struct KeyedLocks<K> {
    map: Arc<Map<K>>,
}

/// A clone shares the locks: whoever holds the same map waits for the same keys.
impl<K> Clone for KeyedLocks<K> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
        }
    }
}

impl<K> Default for KeyedLocks<K> {
    fn default() -> Self {
        Self {
            map: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// Holds a key's lock; dropping it releases the lock.
pub struct KeyGuard<K: Eq + Hash> {
    key: K,
    map: Arc<Map<K>>,
    slot: Arc<Slot>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl<K: Eq + Hash + Clone + Display> KeyedLocks<K> {
    /// Wait for `key`'s lock until `deadline`.
    pub async fn lock(&self, key: K, deadline: Instant) -> Result<KeyGuard<K>, LockError> {
        let started = Instant::now();
        let slot = lock(&self.map).entry(key.clone()).or_default().clone();
        // Built before the wait so that a waiter that gives up also drops its entry.
        let mut held = KeyGuard {
            key,
            map: self.map.clone(),
            slot: slot.clone(),
            guard: None,
        };
        let wait = tokio::time::timeout_at(deadline.into(), slot.mutex.clone().lock_owned()).await;
        let Ok(guard) = wait else {
            return Err(LockError::TimedOut {
                key: held.key.to_string(),
                waited: started.elapsed(),
            });
        };
        held.guard = Some(guard);
        let failed = lock(&slot.failed).clone();
        match failed {
            Some((at, cause)) if at >= started => Err(LockError::AheadFailed {
                key: held.key.to_string(),
                cause,
            }),
            _ => Ok(held),
        }
    }

    /// How many keys have a lock in use (for tests: entries must not pile up).
    pub fn in_use(&self) -> usize {
        lock(&self.map).len()
    }
}

impl<K: Eq + Hash> KeyGuard<K> {
    /// The holder's store call failed with `cause`: those waiting now fail with it.
    pub fn fail(&self, cause: impl Display) {
        *lock(&self.slot.failed) = Some((Instant::now(), cause.to_string()));
    }
}

impl<K: Eq + Hash> Drop for KeyGuard<K> {
    fn drop(&mut self) {
        // Release first, then drop the entry if no one else holds or awaits it: every
        // clone of the slot is taken under the map's lock, so the count is exact there.
        self.guard.take();
        let mut map = lock(&self.map);
        // Ours and the map's.
        if map
            .get(&self.key)
            .is_some_and(|s| Arc::strong_count(s) == 2)
        {
            map.remove(&self.key);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is one map or field operation: a panic cannot leave it
    // half-done, so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn different_keys_do_not_wait_for_each_other() {
        let locks = KeyedLocks::<String>::default();
        let _a = locks.lock("a".into(), soon(1000)).await.unwrap();
        let b = tokio::time::timeout(
            Duration::from_millis(100),
            locks.lock("b".into(), soon(1000)),
        )
        .await;
        assert!(b.is_ok(), "key b waited for key a");
    }

    #[tokio::test]
    async fn the_same_key_waits_and_times_out_at_the_deadline() {
        let locks = KeyedLocks::<String>::default();
        let held = locks.lock("blk".into(), soon(1000)).await.unwrap();
        let err = locks.lock("blk".into(), soon(50)).await.err().unwrap();
        let LockError::TimedOut { key, waited } = &err else {
            panic!("{err}");
        };
        assert_eq!(key, "blk");
        assert!(*waited >= Duration::from_millis(40), "{err}");
        drop(held);
        let again = locks.lock("blk".into(), soon(50)).await;
        assert!(again.is_ok(), "released lock not available");
        drop(again);
        assert_eq!(locks.in_use(), 0, "entries left behind");
    }

    #[tokio::test]
    async fn waiters_fail_with_the_holders_store_failure_but_later_requests_try_again() {
        let locks = Arc::new(KeyedLocks::<u32>::default());
        let holder = locks.lock(7, soon(5000)).await.unwrap();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let locks = locks.clone();
                tokio::spawn(async move { locks.lock(7, soon(5000)).await.map(|_| ()) })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        holder.fail("cannot reach etcd");
        drop(holder);
        for w in waiters {
            let err = w.await.unwrap().unwrap_err();
            assert!(matches!(err, LockError::AheadFailed { .. }), "{err}");
            assert!(err.to_string().contains("cannot reach etcd"), "{err}");
        }
        // A request that starts after the failure gets its own chance.
        assert!(locks.lock(7, soon(100)).await.is_ok());
        assert_eq!(locks.in_use(), 0);
    }

    #[tokio::test]
    async fn entries_are_dropped_with_their_last_user_even_after_a_timeout() {
        let locks = Arc::new(KeyedLocks::<u32>::default());
        let first = locks.lock(7, soon(1000)).await.unwrap();
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.lock(7, soon(1000)).await.map(|_| ()) })
        };
        let _ = locks.lock(7, soon(10)).await.err().unwrap();
        assert_eq!(locks.in_use(), 1);
        drop(first);
        waiter.await.unwrap().unwrap();
        assert_eq!(locks.in_use(), 0);
    }
}
