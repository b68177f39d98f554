//! An in-process store with etcd's revision, compare-and-swap, listing and watch
//! semantics.
//!
//! Every committed write gets the next revision (a transaction that changes nothing
//! does not, as in etcd) and is kept in a bounded history with the values it replaced.
//! The history lets a listing read each page at the revision of its first, as etcd
//! does, and lets a watch start from a past revision; a revision that fell out of the
//! history gives [`StoreError::Compacted`], as a compacted etcd does.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{
    refuse_oversized, Compare, Kv, Listing, Op, Store, StoreError, Txn, TxnOutcome, Watch,
    WatchBatch, WatchEvent, DEFAULT_PAGE_SIZE,
};

/// How many revisions the history keeps unless told otherwise.
pub const DEFAULT_HISTORY: usize = 1000;

/// At most this many revisions go into one watch batch.
const BATCH_REVISIONS: usize = 1000;

/// A cheaply cloneable in-memory store; clones share the same data, as clients of one
/// etcd cluster do.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    /// The current revision, for watches waiting for the next write.
    revision: Arc<tokio::sync::watch::Sender<i64>>,
    page_size: usize,
    /// Every transaction waits for a read lock of it: [`MemoryStore::hold_writes`]
    /// takes the write lock, to look at a request while its write is in flight.
    writes_open: Arc<tokio::sync::RwLock<()>>,
    /// How many single-key reads were served, for tests that count round trips.
    gets: Arc<AtomicU64>,
}

/// Transactions wait while this lives (see [`MemoryStore::hold_writes`]).
pub struct WritesHeld {
    _guard: tokio::sync::OwnedRwLockWriteGuard<()>,
}

#[derive(Debug)]
struct Inner {
    revision: i64,
    data: BTreeMap<String, (Vec<u8>, i64)>,
    /// Every revision after `compacted`, oldest first.
    history: VecDeque<Revision>,
    /// History up to and including this revision is gone: reads at an older revision
    /// and watches from this one or before fail with [`StoreError::Compacted`].
    compacted: i64,
    history_limit: usize,
}

/// The changes one transaction made.
#[derive(Debug)]
struct Revision {
    revision: i64,
    changes: Vec<Change>,
}

#[derive(Debug)]
struct Change {
    key: String,
    /// The new value; `None` for a delete.
    value: Option<Vec<u8>>,
    /// The value and mod revision before the change; `None` when the key was absent.
    prev: Option<(Vec<u8>, i64)>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        // As etcd: a fresh store is at revision 1, the first write makes revision 2.
        let (revision, _) = tokio::sync::watch::channel(1);
        Self {
            inner: Arc::new(Mutex::new(Inner {
                revision: 1,
                data: BTreeMap::new(),
                history: VecDeque::new(),
                compacted: 0,
                history_limit: DEFAULT_HISTORY,
            })),
            revision: Arc::new(revision),
            page_size: DEFAULT_PAGE_SIZE,
            writes_open: Arc::default(),
            gets: Arc::default(),
        }
    }
}

/// etcd's answer to a read at a revision it has not reached.
fn future_revision() -> StoreError {
    StoreError::Etcd {
        endpoints: "memory".into(),
        source: Box::new(etcd_client::Error::GRpcStatus(tonic::Status::out_of_range(
            "etcdserver: mvcc: required revision is a future revision",
        ))),
    }
}

impl Inner {
    fn kv(&self, key: &str) -> Option<Kv> {
        self.data.get(key).map(|(value, rev)| Kv {
            key: key.to_string(),
            value: value.clone(),
            mod_revision: *rev,
        })
    }

    /// Drop the history up to and including `revision`.
    fn compact(&mut self, revision: i64) {
        let revision = revision.min(self.revision);
        while self.history.front().is_some_and(|r| r.revision <= revision) {
            self.history.pop_front();
        }
        self.compacted = self.compacted.max(revision);
    }

    /// Compact what exceeds the history limit.
    fn trim(&mut self) {
        let excess = self.history.len().saturating_sub(self.history_limit);
        if excess > 0 {
            let last_dropped = self.history[excess - 1].revision;
            self.compact(last_dropped);
        }
    }

    /// One page of `prefix` from key `from` on, as of `revision`: at most `limit`
    /// keys, and whether more follow.
    fn page(
        &self,
        prefix: &str,
        from: &str,
        revision: i64,
        limit: usize,
    ) -> Result<(Vec<Kv>, bool), StoreError> {
        if revision < self.compacted {
            return Err(StoreError::Compacted {
                revision,
                compacted: self.compacted,
            });
        }
        if revision > self.revision {
            return Err(future_revision());
        }
        let in_range = |k: &str| k >= from && k.starts_with(prefix);
        // What every key changed after `revision` was at `revision`: the value before
        // its first later change.
        let mut then: BTreeMap<&str, Option<(&[u8], i64)>> = BTreeMap::new();
        let later = self.history.partition_point(|r| r.revision <= revision);
        for change in self.history.range(later..).flat_map(|r| &r.changes) {
            if in_range(&change.key) {
                then.entry(change.key.as_str())
                    .or_insert_with(|| change.prev.as_ref().map(|(v, r)| (v.as_slice(), *r)));
            }
        }
        // Current keys from `from` on; each changed key can remove at most one of them,
        // so this many are enough to know the first `limit + 1` keys at `revision`.
        let take = limit + 1 + then.len();
        let mut view: BTreeMap<&str, (&[u8], i64)> = self
            .data
            .range::<str, _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(take)
            .map(|(k, (v, r))| (k.as_str(), (v.as_slice(), *r)))
            .collect();
        let bound = (view.len() == take)
            .then(|| view.keys().next_back().map(|k| k.to_string()))
            .flatten();
        for (key, value) in then {
            if bound.as_deref().is_some_and(|b| key > b) {
                continue;
            }
            match value {
                Some(v) => view.insert(key, v),
                None => view.remove(key),
            };
        }
        let more = view.len() > limit;
        let kvs = view
            .into_iter()
            .take(limit)
            .map(|(k, (v, r))| Kv {
                key: k.to_string(),
                value: v.to_vec(),
                mod_revision: r,
            })
            .collect();
        Ok((kvs, more))
    }

    /// The events under `prefix` from revision `next` on (whole revisions, at most
    /// [`BATCH_REVISIONS`]), and the revision to continue from.
    fn events_since(&self, prefix: &str, next: i64) -> Result<(WatchBatch, i64), StoreError> {
        if next <= self.compacted {
            return Err(StoreError::Compacted {
                revision: next,
                compacted: self.compacted,
            });
        }
        let first = self.history.partition_point(|r| r.revision < next);
        let mut batch = WatchBatch::default();
        let mut resume = next;
        for r in self.history.range(first..).take(BATCH_REVISIONS) {
            for c in r.changes.iter().filter(|c| c.key.starts_with(prefix)) {
                batch.events.push(match &c.value {
                    Some(value) => WatchEvent::Put(Kv {
                        key: c.key.clone(),
                        value: value.clone(),
                        mod_revision: r.revision,
                    }),
                    None => WatchEvent::Delete {
                        key: c.key.clone(),
                        mod_revision: r.revision,
                    },
                });
            }
            resume = r.revision + 1;
        }
        Ok((batch, resume))
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The same store listing at most `keys` keys per page (at least 1); the default
    /// is [`DEFAULT_PAGE_SIZE`].
    pub fn with_page_size(mut self, keys: usize) -> Self {
        self.page_size = keys.max(1);
        self
    }

    /// Keep the last `revisions` revisions (at least 1) for listings at a past
    /// revision and watches from one; older ones are compacted as they fall out.
    pub fn with_history(self, revisions: usize) -> Self {
        {
            let mut inner = self.lock();
            inner.history_limit = revisions.max(1);
            inner.trim();
        }
        self
    }

    /// Hold every transaction back (as a slow etcd would) until the guard is dropped;
    /// reads go on. `None` when writes are held already.
    pub fn hold_writes(&self) -> Option<WritesHeld> {
        self.writes_open
            .clone()
            .try_write_owned()
            .ok()
            .map(|g| WritesHeld { _guard: g })
    }

    /// How many single-key reads (`get`) this store and its clones have served: each
    /// is one round trip to etcd.
    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::Relaxed)
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.lock().revision
    }

    /// Drop the history up to and including `revision` (at most the current one),
    /// as `etcdctl compaction` does.
    pub fn compact(&self, revision: i64) {
        self.lock().compact(revision);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-written (every
        // transaction is checked before its first mutation), so a poisoned lock is
        // still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One page; `revision` `None` = the current one, returned with the page.
    fn page(
        &self,
        prefix: &str,
        from: &str,
        revision: Option<i64>,
    ) -> Result<(Vec<Kv>, bool, i64), StoreError> {
        let inner = self.lock();
        let at = revision.filter(|r| *r > 0).unwrap_or(inner.revision);
        let (kvs, more) = inner.page(prefix, from, at, self.page_size)?;
        Ok((kvs, more, at))
    }

    /// Every page of `prefix` at `revision` (or at the current one when the first
    /// page is read), the lock released between pages.
    async fn pages(&self, prefix: &str, revision: Option<i64>) -> Result<Listing, StoreError> {
        let (mut kvs, mut more, at) = self.page(prefix, prefix, revision)?;
        while more {
            // Let other tasks write between pages, as they can between etcd requests.
            tokio::task::yield_now().await;
            let mut from = kvs.last().map(|kv| kv.key.clone()).unwrap_or_default();
            from.push('\0');
            let (page, next_more, _) = self.page(prefix, &from, Some(at))?;
            kvs.extend(page);
            more = next_more;
        }
        Ok(Listing { revision: at, kvs })
    }

    fn events_since(&self, prefix: &str, next: i64) -> Result<(WatchBatch, i64), StoreError> {
        self.lock().events_since(prefix, next)
    }
}

impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        Ok(self.lock().kv(key))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Kv>, StoreError> {
        Ok(self.list_at(prefix, None).await?.kvs)
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let listing = self.list_at(prefix, None).await?;
        Ok(listing.kvs.into_iter().map(|kv| kv.key).collect())
    }

    async fn list_at(&self, prefix: &str, revision: Option<i64>) -> Result<Listing, StoreError> {
        let mut attempt = 1;
        loop {
            match self.pages(prefix, revision).await {
                Err(StoreError::Compacted { .. }) if revision.is_none() && attempt < 3 => {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn watch(&self, prefix: &str, start_revision: i64) -> Watch {
        let changed = self.revision.subscribe();
        let next = if start_revision > 0 {
            start_revision
        } else {
            self.revision() + 1
        };
        let state = (self.clone(), prefix.to_string(), next, changed, false);
        let stream = futures::stream::unfold(state, |state| async move {
            let (store, prefix, mut next, mut changed, ended) = state;
            if ended {
                return None;
            }
            loop {
                // Marked seen before reading, so a write after the read wakes us.
                changed.borrow_and_update();
                match store.events_since(&prefix, next) {
                    Err(e) => return Some((Err(e), (store, prefix, next, changed, true))),
                    Ok((batch, resume)) => {
                        next = resume;
                        if !batch.events.is_empty() {
                            return Some((Ok(batch), (store, prefix, next, changed, false)));
                        }
                    }
                }
                if changed.changed().await.is_err() {
                    return None;
                }
            }
        });
        Watch::new(Box::pin(stream), Arc::new(AtomicU64::new(0)), None)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        refuse_oversized(&txn)?;
        let _open = self.writes_open.read().await;
        let mut inner = self.lock();
        let holds = txn.compares.iter().all(|c| match c {
            Compare::ModRevision { key, revision } => {
                inner.data.get(key).map(|(_, r)| *r).unwrap_or(0) == *revision
            }
        });
        if !holds {
            let current = txn
                .read_on_conflict
                .iter()
                .map(|k| (k.clone(), inner.kv(k)))
                .collect();
            return Ok(TxnOutcome::Conflict { current });
        }
        let revision = inner.revision + 1;
        let mut changes = Vec::new();
        for op in txn.ops {
            match op {
                Op::Put { key, value } => {
                    let prev = inner.data.insert(key.clone(), (value.clone(), revision));
                    changes.push(Change {
                        key,
                        value: Some(value),
                        prev,
                    });
                }
                Op::Delete { key } => {
                    if let Some(prev) = inner.data.remove(&key) {
                        changes.push(Change {
                            key,
                            value: None,
                            prev: Some(prev),
                        });
                    }
                }
            }
        }
        if changes.is_empty() {
            // Nothing changed: etcd keeps the revision.
            return Ok(TxnOutcome::Committed {
                revision: inner.revision,
            });
        }
        inner.revision = revision;
        inner.history.push_back(Revision { revision, changes });
        inner.trim();
        // Under the lock, so watches never see the revision go backwards.
        self.revision.send_replace(revision);
        Ok(TxnOutcome::Committed { revision })
    }
}

#[cfg(test)]
mod tests;
