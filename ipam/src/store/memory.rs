//! An in-process store with etcd's revision and compare-and-swap semantics.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{Compare, Kv, Op, Store, StoreError, Txn, TxnOutcome};

/// A cheaply cloneable in-memory store; clones share the same data, as clients of one
/// etcd cluster do.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    revision: i64,
    data: BTreeMap<String, (Vec<u8>, i64)>,
}

impl Inner {
    fn kv(&self, key: &str) -> Option<Kv> {
        self.data.get(key).map(|(value, rev)| Kv {
            key: key.to_string(),
            value: value.clone(),
            mod_revision: *rev,
        })
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-written (every
        // mutation is a single insert/remove), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        Ok(self.lock().kv(key))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Kv>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .data
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, rev))| Kv {
                key: k.clone(),
                value: v.clone(),
                mod_revision: *rev,
            })
            .collect())
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .list(prefix)
            .await?
            .into_iter()
            .map(|kv| kv.key)
            .collect())
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
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
        inner.revision += 1;
        let revision = inner.revision;
        for op in txn.ops {
            match op {
                Op::Put { key, value } => {
                    inner.data.insert(key, (value, revision));
                }
                Op::Delete { key } => {
                    inner.data.remove(&key);
                }
            }
        }
        Ok(TxnOutcome::Committed { revision })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Op {
        Op::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn create_if_absent_succeeds_once() {
        let store = MemoryStore::new();
        let claim = Txn {
            compares: vec![Compare::unchanged("/k", None)],
            ops: vec![put("/k", "a")],
            read_on_conflict: vec!["/k".into()],
        };
        assert!(matches!(
            store.txn(claim.clone()).await.unwrap(),
            TxnOutcome::Committed { revision: 1 }
        ));
        match store.txn(claim).await.unwrap() {
            TxnOutcome::Conflict { current } => {
                assert_eq!(current[0].1.as_ref().unwrap().value, b"a");
                assert_eq!(current[0].1.as_ref().unwrap().mod_revision, 1);
            }
            other => panic!("second claim must conflict, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn stale_revision_conflicts_and_writes_nothing() {
        let store = MemoryStore::new();
        store
            .txn(Txn {
                ops: vec![put("/a", "1"), put("/b", "1")],
                ..Txn::default()
            })
            .await
            .unwrap();
        let stale = Txn {
            compares: vec![Compare::unchanged("/a", Some(0))],
            ops: vec![put("/b", "2")],
            read_on_conflict: vec![],
        };
        assert!(matches!(
            store.txn(stale).await.unwrap(),
            TxnOutcome::Conflict { .. }
        ));
        assert_eq!(store.get("/b").await.unwrap().unwrap().value, b"1");
        assert_eq!(store.list("/").await.unwrap().len(), 2);
        assert_eq!(store.list_keys("/b").await.unwrap(), vec!["/b".to_string()]);
    }
}
