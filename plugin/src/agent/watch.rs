//! Keeps a [`Snapshot`] current from any [`Store`]: one consistent load (every watched
//! prefix listed page by page at the revision of the first listing), then one prefix
//! watch on `PREFIX/v1/` from the next revision, so no change is missed between load
//! and watch.
//!
//! The store keeps its watch alive by itself: on etcd it moves off a member that fails,
//! loses its leader or goes silent, and resumes after the last revision it delivered.
//! This loop loads again only when the store reports that revision compacted, and
//! re-opens the watch from the snapshot's revision if it ever ends otherwise.

use std::sync::Arc;
use std::time::Duration;

use brindle_ipam::store::{Store, StoreError, WatchBatch};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::memory;
use super::metrics::METRICS;
use super::snapshot::{Prefixes, Snapshot};

/// Pause before trying again after a failed load or an ended watch.
const RETRY: Duration = Duration::from_secs(1);

/// Loads every watched record at one revision. Each listing's records are compacted
/// into the view and freed one by one, so at most one listing is held in full.
pub async fn load<S: Store>(store: &S, prefixes: &Prefixes) -> Result<Snapshot, StoreError> {
    let mut snap = Snapshot::default();
    let mut revision = None;
    for (key, is_prefix) in prefixes.reads() {
        let listing = store.list_at(key, revision).await?;
        revision = Some(listing.revision);
        for kv in listing.kvs {
            if is_prefix || kv.key == key {
                snap.apply(prefixes, &kv.key, Some(&kv.value));
            }
        }
    }
    snap.revision = revision.unwrap_or_default();
    snap.endpoints.shrink();
    Ok(snap)
}

/// Applies one batch of events; returns whether the snapshot changed in a way that
/// matters.
fn apply(prefixes: &Prefixes, snap: &mut Snapshot, batch: &WatchBatch) -> bool {
    let mut relevant = false;
    for ev in &batch.events {
        relevant |= snap.apply(prefixes, ev.key(), ev.value());
        snap.revision = snap.revision.max(ev.revision());
    }
    relevant
}

/// Follows the store's watch from `snap.revision + 1`, publishing a new snapshot after
/// each batch of events that matters. Returns why the watch ended.
async fn follow<S: Store>(
    store: &S,
    prefixes: &Prefixes,
    snap: &mut Snapshot,
    tx: &watch::Sender<Arc<Snapshot>>,
) -> Option<StoreError> {
    let mut stream = store.watch(&prefixes.root, snap.revision + 1);
    let mut restarts = 0;
    loop {
        let item = stream.next().await;
        // The store's own resumes (another etcd member) count as restarts too.
        while restarts < stream.restarts() {
            METRICS.watch_restarts.inc();
            restarts += 1;
        }
        match item? {
            Err(e) => return Some(e),
            Ok(batch) => {
                if apply(prefixes, snap, &batch) {
                    METRICS.watch_events.inc();
                    debug!(revision = snap.revision, "store change");
                    // Copies pointers: the sections stay shared until written (cow.rs).
                    tx.send_replace(Arc::new(snap.clone()));
                }
            }
        }
    }
}

/// Runs forever: load, publish, follow; load again only when the store has compacted
/// the revision the snapshot needs next.
pub async fn run<S: Store>(store: S, prefixes: Prefixes, tx: watch::Sender<Arc<Snapshot>>) {
    let mut snap: Option<Snapshot> = None;
    loop {
        let current = match snap.as_mut() {
            Some(s) => s,
            None => match load(&store, &prefixes).await {
                Ok(s) => {
                    tx.send_replace(Arc::new(s.clone()));
                    METRICS.snapshot_loads.inc();
                    // The listings and the records before compaction are gone now.
                    memory::trim();
                    snap.insert(s)
                }
                Err(StoreError::Compacted { revision, .. }) => {
                    debug!(revision, "compaction overtook the load; loading again");
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "cannot load state from the store; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        debug!(revision = current.revision, "watch started");
        let ended = follow(&store, &prefixes, current, &tx).await;
        METRICS.watch_restarts.inc();
        match ended {
            Some(StoreError::Compacted { revision, .. }) => {
                warn!(revision, "the watch fell behind compaction; reloading");
                snap = None;
            }
            Some(e) => {
                warn!(error = %e, revision = current.revision, "the watch ended; resuming");
                tokio::time::sleep(RETRY).await;
            }
            None => {
                warn!(
                    revision = current.revision,
                    "the watch ended without an error; resuming"
                );
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brindle_ipam::store::{Op, Txn};
    use brindle_ipam::{Keys, MemoryStore};
    use serde_json::json;

    async fn write(store: &MemoryStore, ops: Vec<Op>) {
        store
            .txn(Txn {
                ops,
                ..Txn::default()
            })
            .await
            .unwrap();
    }

    fn node(prefixes: &Prefixes, name: &str, ip: &str) -> Op {
        Op::Put {
            key: format!("{}{name}", prefixes.nodes),
            value: serde_json::to_vec(&json!({"name": name, "ip": ip})).unwrap(),
        }
    }

    /// Waits (at most 5 s) for a published snapshot that satisfies `cond`.
    async fn wait_for(
        rx: &mut watch::Receiver<Arc<Snapshot>>,
        what: &str,
        cond: impl Fn(&Snapshot) -> bool,
    ) -> Arc<Snapshot> {
        let wait = rx.wait_for(|s| cond(s));
        let seen = match tokio::time::timeout(Duration::from_secs(5), wait).await {
            Ok(Ok(s)) => Some(s.clone()),
            _ => None,
        };
        seen.unwrap_or_else(|| panic!("{what}: not seen; last snapshot {:?}", rx.borrow()))
    }

    struct Abort(tokio::task::JoinHandle<()>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    #[tokio::test]
    async fn the_snapshot_follows_the_in_process_store_and_reloads_after_compaction() {
        // Pages of two keys, so the load crosses page borders.
        let store = MemoryStore::new().with_page_size(2);
        let prefixes = Prefixes::new(&Keys::new("/b"));
        let nodes = (1..=5).map(|i| node(&prefixes, &format!("n{i}"), &format!("10.0.0.{i}")));
        write(&store, nodes.collect()).await;
        let unrelated = Op::Put {
            key: "/b/v1/ipam/handles/h".into(),
            value: b"{}".to_vec(),
        };
        write(&store, vec![unrelated]).await;

        let (tx, mut rx) = watch::channel(Arc::new(Snapshot::default()));
        let _task = Abort(tokio::spawn(run(store.clone(), prefixes.clone(), tx)));
        let snap = wait_for(&mut rx, "the first load", Snapshot::is_loaded).await;
        assert_eq!(snap.nodes.len(), 5, "{snap:?}");
        assert_eq!(snap.revision, store.revision());

        // Records written and deleted: the snapshot follows.
        write(
            &store,
            vec![
                node(&prefixes, "n6", "10.0.0.6"),
                Op::Delete {
                    key: format!("{}n1", prefixes.nodes),
                },
            ],
        )
        .await;
        write(
            &store,
            vec![Op::Put {
                key: prefixes.global.clone(),
                value: serde_json::to_vec(&json!({"as_num": 65001})).unwrap(),
            }],
        )
        .await;
        let snap = wait_for(&mut rx, "n6, no n1, AS 65001", |s| {
            s.nodes.contains_key("n6") && !s.nodes.contains_key("n1") && s.global.as_num == 65001
        })
        .await;
        assert_eq!(snap.revision, store.revision());
        assert_eq!(snap.nodes.len(), 5);

        // The watch falls behind compaction (this runtime runs the watch task only
        // when the test awaits something slow): the agent loads again.
        let loads = METRICS.snapshot_loads.get();
        write(&store, vec![node(&prefixes, "n7", "10.0.0.7")]).await;
        write(
            &store,
            vec![Op::Delete {
                key: format!("{}n2", prefixes.nodes),
            }],
        )
        .await;
        store.compact(store.revision());
        let snap = wait_for(&mut rx, "n7, no n2 after the reload", |s| {
            s.nodes.contains_key("n7") && !s.nodes.contains_key("n2")
        })
        .await;
        assert!(
            METRICS.snapshot_loads.get() > loads,
            "a compacted revision makes the agent load again"
        );
        assert_eq!(snap.revision, store.revision());

        // And it keeps following after the reload.
        write(&store, vec![node(&prefixes, "n8", "10.0.0.8")]).await;
        wait_for(&mut rx, "n8 after the reload", |s| {
            s.nodes.contains_key("n8")
        })
        .await;
    }
}
