//! Round trips to the store of a process that has cached nothing (the CNI plugin's
//! direct path starts cold on every call), counted by a store that answers after a
//! delay: requests in flight together count as one round trip.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use brindle_ipam::pools::NewPool;
use brindle_ipam::store::{Kv, Listing, Txn, TxnOutcome, Watch};
use brindle_ipam::{AllocRequest, Ipam, MemoryStore, Store, StoreError};
use ipnetwork::Ipv4Network;

const PREFIX: &str = "/brindle";

/// The in-process store behind a network: every request waits `DELAY` before it is
/// served. A request that starts while none is in flight starts a new round trip.
#[derive(Clone)]
struct Distant {
    inner: MemoryStore,
    in_flight: Arc<AtomicUsize>,
    trips: Arc<AtomicUsize>,
}

const DELAY: Duration = Duration::from_millis(20);

impl Distant {
    fn new(inner: MemoryStore) -> Self {
        Self {
            inner,
            in_flight: Arc::default(),
            trips: Arc::default(),
        }
    }

    fn trips(&self) -> usize {
        self.trips.load(Ordering::SeqCst)
    }

    async fn trip<T>(&self, request: impl std::future::Future<Output = T>) -> T {
        if self.in_flight.fetch_add(1, Ordering::SeqCst) == 0 {
            self.trips.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(DELAY).await;
        let answer = request.await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        answer
    }
}

impl Store for Distant {
    async fn get(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        self.trip(self.inner.get(key)).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<Kv>, StoreError> {
        self.trip(self.inner.list(prefix)).await
    }
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.trip(self.inner.list_keys(prefix)).await
    }
    async fn list_at(&self, prefix: &str, revision: Option<i64>) -> Result<Listing, StoreError> {
        self.trip(self.inner.list_at(prefix, revision)).await
    }
    fn watch(&self, prefix: &str, start_revision: i64) -> Watch {
        self.inner.watch(prefix, start_revision)
    }
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        self.trip(self.inner.txn(txn)).await
    }
}

fn req(handle: &str) -> AllocRequest {
    AllocRequest {
        handle: handle.into(),
        node: "n1".into(),
        ..AllocRequest::default()
    }
}

/// A pool and node `n1` with one address in its block, as a node running containers
/// has; returns the store and the block.
async fn node_with_a_block() -> (MemoryStore, Ipv4Network) {
    let store = MemoryStore::new();
    let ipam = Ipam::new(store.clone(), PREFIX);
    let pool = NewPool {
        block_size: 26,
        ..NewPool::new("p", "10.77.0.0/24".parse().unwrap())
    };
    ipam.add_pool(pool).await.unwrap();
    let warm = ipam.allocate(&req("warm")).await.unwrap();
    (store, warm.block)
}

/// A cold allocation from the node's block: the pools and the node's affinities in
/// one round trip, the block in a second, the transaction in a third; with the block
/// expected, the block comes with the first.
#[tokio::test]
async fn an_expected_block_is_read_in_the_first_round_trip_of_an_allocation() {
    let (store, block) = node_with_a_block().await;

    let cold = Distant::new(store.clone());
    let got = Ipam::new(cold.clone(), PREFIX)
        .allocate(&req("a"))
        .await
        .unwrap();
    assert_eq!(got.block, block);
    assert_eq!(cold.trips(), 3, "pools with affinities, block, transaction");

    let hinted = Distant::new(store.clone());
    let ipam = Ipam::new(hinted.clone(), PREFIX);
    ipam.expect_blocks([block]);
    let got = ipam.allocate(&req("b")).await.unwrap();
    assert_eq!(got.block, block);
    assert_eq!(
        hinted.trips(),
        2,
        "pools with affinities and block, transaction"
    );
    assert_eq!(ipam.cached_node_blocks("n1"), Some(vec![block]));

    // A wrong guess (a block that does not exist) costs no round trip of its own and
    // changes nothing: the node's own block is found as without a guess.
    let wrong = Distant::new(store.clone());
    let ipam = Ipam::new(wrong.clone(), PREFIX);
    ipam.expect_blocks(["10.77.0.192/26".parse().unwrap()]);
    let got = ipam.allocate(&req("c")).await.unwrap();
    assert_eq!(got.block, block);
    assert_eq!(wrong.trips(), 3);

    let report = Ipam::new(store, PREFIX).check(false).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// A cold release by handle (a DEL): the handle, then its block, then the
/// transaction; with the block expected, the handle and the block together.
#[tokio::test]
async fn an_expected_block_is_read_with_the_handle_of_a_release() {
    let (store, block) = node_with_a_block().await;
    let ipam = Ipam::new(store.clone(), PREFIX);
    let a = ipam.allocate(&req("a")).await.unwrap();
    let b = ipam.allocate(&req("b")).await.unwrap();

    let cold = Distant::new(store.clone());
    let ipam = Ipam::new(cold.clone(), PREFIX);
    assert_eq!(ipam.addresses_of("a").await.unwrap(), vec![a.ip]);
    assert_eq!(ipam.release_handle("a").await.unwrap(), vec![a.ip]);
    assert_eq!(cold.trips(), 3, "handle, block, transaction");

    let hinted = Distant::new(store.clone());
    let ipam = Ipam::new(hinted.clone(), PREFIX);
    ipam.expect_blocks([block]);
    assert_eq!(ipam.addresses_of("b").await.unwrap(), vec![b.ip]);
    assert_eq!(ipam.release_handle("b").await.unwrap(), vec![b.ip]);
    assert_eq!(hinted.trips(), 2, "handle with block, transaction");

    let check = Ipam::new(store, PREFIX);
    assert!(check.addresses_of("a").await.unwrap().is_empty());
    assert!(check.addresses_of("b").await.unwrap().is_empty());
    let report = check.check(false).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
