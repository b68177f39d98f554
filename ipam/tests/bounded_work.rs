//! Bounded work: no lock over the whole allocator is held across a store round trip.
//! Requests on different blocks run side by side, requests on one block take turns
//! without losing compares to each other, and during an outage every queued request
//! fails within its own budget instead of after the ones before it.
//!
//! The store is the in-process one behind a wrapper that makes each transaction slow,
//! or makes every call hang until the operation's deadline and then fail, as etcd's
//! client does when no member answers.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brindle_ipam::locks::LockError;
use brindle_ipam::pools::NewPool;
use brindle_ipam::store::{Kv, Listing, Txn, TxnOutcome, Watch};
use brindle_ipam::{budget, AllocRequest, Ipam, IpamError, MemoryStore, Store, StoreError};

const PREFIX: &str = "/brindle";

#[derive(Clone, Default)]
struct Slow {
    inner: MemoryStore,
    /// Added to every transaction, in milliseconds.
    txn_delay_ms: Arc<AtomicU64>,
    /// Every call hangs until the operation's deadline, then fails.
    down: Arc<AtomicBool>,
    conflicts: Arc<AtomicUsize>,
}

impl Slow {
    async fn outage(&self) -> Result<(), StoreError> {
        if !self.down.load(Ordering::SeqCst) {
            return Ok(());
        }
        let deadline = budget::deadline_after(Duration::from_secs(4));
        tokio::time::sleep_until(deadline.into()).await;
        Err(StoreError::Unreachable {
            endpoints: "slow".into(),
            timeout: Duration::from_secs(5),
            detail: "injected outage".into(),
        })
    }
}

impl Store for Slow {
    async fn get(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        self.outage().await?;
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<Kv>, StoreError> {
        self.outage().await?;
        self.inner.list(prefix).await
    }
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.outage().await?;
        self.inner.list_keys(prefix).await
    }
    async fn list_at(&self, prefix: &str, revision: Option<i64>) -> Result<Listing, StoreError> {
        self.outage().await?;
        self.inner.list_at(prefix, revision).await
    }
    fn watch(&self, prefix: &str, start_revision: i64) -> Watch {
        self.inner.watch(prefix, start_revision)
    }
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        self.outage().await?;
        let delay = self.txn_delay_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let outcome = self.inner.txn(txn).await?;
        if matches!(outcome, TxnOutcome::Conflict { .. }) {
            self.conflicts.fetch_add(1, Ordering::SeqCst);
        }
        Ok(outcome)
    }
}

async fn setup() -> (Slow, Arc<Ipam<Slow>>) {
    let store = Slow::default();
    let ipam = Ipam::new(store.clone(), PREFIX);
    ipam.add_pool(NewPool::new("p1", "10.93.0.0/24".parse().unwrap()))
        .await
        .unwrap();
    (store, Arc::new(ipam))
}

fn dynamic(handle: &str, node: &str) -> AllocRequest {
    AllocRequest {
        handle: handle.into(),
        node: node.into(),
        ..AllocRequest::default()
    }
}

fn fixed(handle: &str, node: &str, ip: &str) -> AllocRequest {
    AllocRequest {
        ip: Some(ip.parse().unwrap()),
        ..dynamic(handle, node)
    }
}

/// Run the requests at once; each result with how long it took.
async fn at_once(
    ipam: &Arc<Ipam<Slow>>,
    reqs: Vec<AllocRequest>,
) -> Vec<(Result<Ipv4Addr, IpamError>, Duration)> {
    let tasks: Vec<_> = reqs
        .into_iter()
        .map(|req| {
            let ipam = ipam.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let r = ipam.allocate(&req).await.map(|a| a.ip);
                (r, started.elapsed())
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_different_blocks_do_not_wait_for_each_other() {
    let (store, ipam) = setup().await;
    // Warm the cache (the pool list), as a running brindled has it.
    ipam.allocate(&fixed("warm", "n1", "10.93.0.200"))
        .await
        .unwrap();
    store.txn_delay_ms.store(500, Ordering::SeqCst);
    let started = Instant::now();
    let results = at_once(
        &ipam,
        vec![
            fixed("a", "n1", "10.93.0.5"),
            fixed("b", "n1", "10.93.0.70"),
        ],
    )
    .await;
    let took = started.elapsed();
    for (r, _) in &results {
        r.as_ref().unwrap();
    }
    // One after the other would take two transactions' delay (1 s) or more.
    assert!(
        took < Duration::from_millis(900),
        "two allocations in different blocks took {took:?}: they waited for each other"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_one_block_takes_turns_without_losing_compares() {
    let (store, ipam) = setup().await;
    let reqs = (0..50).map(|i| dynamic(&format!("c{i}"), "n1")).collect();
    let results = at_once(&ipam, reqs).await;
    let ips: HashSet<Ipv4Addr> = results.into_iter().map(|(r, _)| r.unwrap()).collect();
    assert_eq!(ips.len(), 50, "duplicate addresses handed out");
    assert_eq!(
        store.conflicts.load(Ordering::SeqCst),
        0,
        "requests of one process lost compares to each other"
    );
    // And all released at once, again without conflicts.
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let ipam = ipam.clone();
            tokio::spawn(async move { ipam.release_handle(&format!("c{i}")).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().len(), 1);
    }
    assert_eq!(store.conflicts.load(Ordering::SeqCst), 0);
    let report = ipam.check(false).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(ipam.all_blocks().await.unwrap().is_empty(), "blocks left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_behind_a_slow_but_healthy_store_outlasts_one_budget_and_succeeds() {
    let (store, ipam) = setup().await;
    ipam.allocate(&dynamic("warm", "n1")).await.unwrap();
    // 45 transactions of 100 ms in turn: the last waits longer than one operation's
    // budget, but every request ahead of it made progress.
    store.txn_delay_ms.store(100, Ordering::SeqCst);
    let reqs = (0..45).map(|i| dynamic(&format!("s{i}"), "n1")).collect();
    let results = at_once(&ipam, reqs).await;
    let slowest = results.iter().map(|(_, t)| *t).max().unwrap();
    assert!(
        slowest > budget::OPERATION,
        "the queue was shorter than meant: {slowest:?}"
    );
    for (r, took) in results {
        r.unwrap_or_else(|e| panic!("failed after {took:?}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_an_outage_each_queued_request_fails_within_its_own_budget() {
    let (store, ipam) = setup().await;
    // A node with its block and the pool list cached: the requests below need no
    // read, so they all queue on the one block's lock.
    ipam.allocate(&dynamic("warm", "n1")).await.unwrap();
    store.down.store(true, Ordering::SeqCst);
    let reqs = (0..10).map(|i| dynamic(&format!("q{i}"), "n1")).collect();
    let results = at_once(&ipam, reqs).await;
    let mut shared = 0;
    for (r, took) in &results {
        let err = r.as_ref().unwrap_err();
        assert!(
            *took <= budget::OPERATION + Duration::from_millis(400),
            "a request failed only after {took:?}: {err}"
        );
        match err {
            IpamError::Store(StoreError::Unreachable { .. }) => {}
            IpamError::Busy(LockError::AheadFailed { key, cause }) => {
                shared += 1;
                assert!(key.starts_with("block 10.93.0."), "{err}");
                assert!(cause.contains("injected outage"), "{err}");
            }
            other => panic!("unexpected error: {other}"),
        }
    }
    // One request tried etcd; the nine queued behind it failed with its error.
    assert_eq!(shared, 9, "queued requests did not share the failure");
    // Service resumes by itself.
    store.down.store(false, Ordering::SeqCst);
    ipam.allocate(&dynamic("after", "n1")).await.unwrap();
}
