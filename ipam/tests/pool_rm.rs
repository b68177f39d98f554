//! `pool rm` interrupted half-way (etcd failing, the CLI killed) must not leave a pool
//! that refuses every allocation for good: running `pool rm` again finishes the
//! removal, or gives the pool back when it still has addresses and `--force` is not
//! given, and the allocator's error says so.
//!
//! The failure is injected by a store wrapper that fails its Nth transaction.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use brindle_ipam::pools::NewPool;
use brindle_ipam::store::{Kv, Listing, Txn, TxnOutcome, Watch};
use brindle_ipam::{AllocRequest, Ipam, IpamError, MemoryStore, Store, StoreError};

const PREFIX: &str = "/brindle";

/// The in-process store, failing the Nth transaction counted from the last
/// [`Flaky::fail_txn`] (as an unreachable etcd would fail it).
#[derive(Clone, Default)]
struct Flaky {
    inner: MemoryStore,
    txns: Arc<AtomicUsize>,
    fail_at: Arc<AtomicUsize>,
}

impl Flaky {
    /// Fail the `n`th transaction from now (1-based); the others pass.
    fn fail_txn(&self, n: usize) {
        self.txns.store(0, Ordering::SeqCst);
        self.fail_at.store(n, Ordering::SeqCst);
    }
}

impl Store for Flaky {
    async fn get(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<Kv>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list_keys(prefix).await
    }
    async fn list_at(&self, prefix: &str, revision: Option<i64>) -> Result<Listing, StoreError> {
        self.inner.list_at(prefix, revision).await
    }
    fn watch(&self, prefix: &str, start_revision: i64) -> Watch {
        self.inner.watch(prefix, start_revision)
    }
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let n = self.txns.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.fail_at.load(Ordering::SeqCst) {
            return Err(StoreError::Unreachable {
                endpoints: "flaky".into(),
                timeout: Duration::from_secs(5),
                detail: format!("injected failure of transaction {n}"),
            });
        }
        self.inner.txn(txn).await
    }
}

async fn setup() -> (Flaky, Ipam<Flaky>) {
    let store = Flaky::default();
    let ipam = Ipam::new(store.clone(), PREFIX);
    ipam.add_pool(NewPool::new("p1", "10.93.0.0/24".parse().unwrap()))
        .await
        .unwrap();
    (store, ipam)
}

fn req(handle: &str, node: &str) -> AllocRequest {
    AllocRequest {
        handle: handle.into(),
        node: node.into(),
        pool: Some("p1".into()),
        ..AllocRequest::default()
    }
}

async fn deleting(ipam: &Ipam<Flaky>) -> bool {
    ipam.list_pools().await.unwrap()[0].deleting
}

#[tokio::test]
async fn a_refused_rm_that_fails_leaves_the_pool_usable() {
    let (store, ipam) = setup().await;
    ipam.allocate(&req("a", "n1")).await.unwrap();
    // `pool rm p1` without --force: the pool is in use. Any step of it may fail (here
    // the second write); the pool must not stay marked for removal.
    store.fail_txn(2);
    let err = ipam.remove_pool("p1", false).await.unwrap_err();
    assert!(
        matches!(err, IpamError::PoolInUse { count: 1, .. }),
        "{err}"
    );
    assert!(!deleting(&ipam).await);
    ipam.allocate(&req("b", "n1")).await.unwrap();
}

#[tokio::test]
async fn an_interrupted_rm_is_finished_by_the_next_one_and_explained_meanwhile() {
    let (store, ipam) = setup().await;
    for (h, n) in [("a", "n1"), ("b", "n1"), ("c", "n2")] {
        ipam.allocate(&req(h, n)).await.unwrap();
    }
    // `pool rm p1 --force` dies after the first block: mark, two handles, the block,
    // then the third handle's write fails.
    store.fail_txn(5);
    let err = ipam.remove_pool("p1", true).await.unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    let pool = ipam.list_pools().await.unwrap().remove(0);
    assert!(pool.deleting);
    assert!(pool.deleting_since.is_some(), "{pool:?}");
    // Allocating meanwhile names the way out.
    let err = ipam
        .allocate(&req("d", "n1"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pool p1 is being removed") && err.contains("`brindle pool rm p1`"),
        "{err}"
    );

    // Without --force a pool that still has addresses is given back...
    let err = ipam.remove_pool("p1", false).await.unwrap_err();
    assert!(
        matches!(err, IpamError::PoolInUse { count: 1, .. }),
        "{err}"
    );
    let pool = ipam.list_pools().await.unwrap().remove(0);
    assert!(!pool.deleting && pool.deleting_since.is_none(), "{pool:?}");
    ipam.allocate(&req("d", "n1")).await.unwrap();

    // ...and with --force, an interrupted removal is simply run again to its end.
    store.fail_txn(3);
    ipam.remove_pool("p1", true).await.unwrap_err();
    assert!(deleting(&ipam).await);
    // Both blocks were still whole (only a handle record had been updated).
    assert_eq!(ipam.remove_pool("p1", true).await.unwrap(), 2);
    assert!(ipam.list_pools().await.unwrap().is_empty());
    let left = store
        .list_keys(&format!("{PREFIX}/v1/ipam/"))
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert!(ipam.check(false).await.unwrap().clean);
}
