//! Simulated nodes, each a task with its own etcd client, of two kinds:
//! - agents: the agent's own load-and-watch loop (`brindle_plugin::agent::watch::run`),
//!   which publishes the [`Snapshot`] the agent's passes (routes, BIRD, firewall) act
//!   on: its route view;
//! - bare watchers: the store's watch alone, noting each block's node as its event
//!   arrives: what etcd's fan-out to that many clients costs by itself.
//!
//! They run on a runtime of their own, so their work competes with the rest of the
//! benchmark (the allocation that claims a block, on the caller's runtime) for the
//! machine's cores, as separate hosts' agents would not, but never holds up its tasks
//! the way tasks on one runtime can.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brindle_ipam::state::decode_value;
use brindle_ipam::{Block, EtcdConfig, EtcdStore, Keys, Store};
use brindle_plugin::agent::{watch, Prefixes, Snapshot};
use tokio::runtime::Runtime;
use tokio::sync::watch as channel;
use tokio::task::JoinSet;

/// What a simulated node knows: whether a block of `node` reached it.
pub trait View: Send + Sync + 'static {
    fn has_block_of(&self, node: &str) -> bool;
    fn is_loaded(&self) -> bool;
}

impl View for Arc<Snapshot> {
    fn has_block_of(&self, node: &str) -> bool {
        self.blocks
            .values()
            .any(|b| b.affinity.as_deref() == Some(node))
    }
    fn is_loaded(&self) -> bool {
        Snapshot::is_loaded(self)
    }
}

/// A bare watcher's view: the nodes of the blocks it saw written since it started
/// (`None` until its watch is open).
pub type Seen = Option<BTreeSet<String>>;

impl View for Seen {
    fn has_block_of(&self, node: &str) -> bool {
        self.as_ref().is_some_and(|s| s.contains(node))
    }
    fn is_loaded(&self) -> bool {
        self.is_some()
    }
}

/// Simulated nodes; their runtime is shut down on drop.
pub struct Views<T> {
    runtime: Option<Runtime>,
    views: Vec<channel::Receiver<T>>,
}

impl<T: View + Clone + Default> Views<T> {
    /// None yet; their runtime has `threads` workers.
    pub fn new(threads: usize) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("simulated-node")
            .enable_all()
            .build()?;
        Ok(Views {
            runtime: Some(runtime),
            views: Vec::new(),
        })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.as_ref().expect("running").handle()
    }

    /// Connects `n` more etcd clients, each from the simulated nodes' runtime (the
    /// client's I/O runs there), and starts `run` on each.
    async fn add<F, Fut>(&mut self, endpoint: &str, n: usize, run: F) -> anyhow::Result<()>
    where
        F: Fn(EtcdStore, channel::Sender<T>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut connecting = JoinSet::new();
        for _ in 0..n {
            let config = EtcdConfig {
                endpoints: vec![endpoint.to_string()],
                ..EtcdConfig::default()
            };
            connecting.spawn_on(
                async move { EtcdStore::connect(&config).await },
                self.handle(),
            );
        }
        while let Some(store) = connecting.join_next().await {
            let (tx, rx) = channel::channel(T::default());
            self.handle().spawn(run(store??, tx));
            self.views.push(rx);
        }
        Ok(())
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.views.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    /// The current view of the first one.
    pub fn first(&self) -> Option<T> {
        self.views.first().map(|rx| rx.borrow().clone())
    }

    /// Waits until every one has loaded (agents) or opened its watch (watchers).
    pub async fn wait_loaded(&self, timeout: Duration) -> anyhow::Result<()> {
        self.expect(Instant::now(), |v: &T| v.is_loaded())
            .all(timeout)
            .await
            .map(|_| ())
    }

    /// Starts waiting, in every view, for a block of `node`; start it before the
    /// claim so no view can see it before its wait began.
    pub fn expect_block_of(&self, node: &str, since: Instant) -> Pending {
        let node = node.to_string();
        self.expect(since, move |v: &T| v.has_block_of(&node))
    }

    fn expect<F>(&self, since: Instant, cond: F) -> Pending
    where
        F: Fn(&T) -> bool + Clone + Send + Sync + 'static,
    {
        let mut waiting = JoinSet::new();
        for rx in &self.views {
            let mut rx = rx.clone();
            let cond = cond.clone();
            let wait = async move {
                let seen = rx.wait_for(|v| cond(v)).await.map(|_| since.elapsed());
                seen.map_err(|_| anyhow::anyhow!("a simulated node's watch stopped"))
            };
            waiting.spawn_on(wait, self.handle());
        }
        Pending(waiting)
    }
}

impl Views<Arc<Snapshot>> {
    /// `n` more agents, started at once; the k-th agent is node `nKKK` (the
    /// benchmark's node names), so it keeps its own allocations as brindled does.
    pub async fn add_agents(
        &mut self,
        endpoint: &str,
        prefix: &str,
        n: usize,
    ) -> anyhow::Result<()> {
        let keys = Keys::new(prefix);
        let next = AtomicUsize::new(self.len());
        self.add(endpoint, n, |store, tx| {
            let node = format!("n{:03}", next.fetch_add(1, Ordering::Relaxed));
            watch::run(store, Prefixes::for_node(&keys, &node), tx)
        })
        .await
    }
}

impl Views<Seen> {
    /// `n` more bare watchers, started at once.
    pub async fn add_watchers(
        &mut self,
        endpoint: &str,
        prefix: &str,
        n: usize,
    ) -> anyhow::Result<()> {
        let keys = Keys::new(prefix);
        self.add(endpoint, n, |store, tx| {
            watch_blocks(store, keys.clone(), tx)
        })
        .await
    }
}

/// Follows every change under the prefix from now on, noting the node of each block
/// written.
async fn watch_blocks(store: EtcdStore, keys: Keys, tx: channel::Sender<Seen>) {
    let Ok(now) = store.list_at(&keys.bgp_global(), None).await else {
        return;
    };
    let mut stream = store.watch(&keys.all(), now.revision + 1);
    tx.send_replace(Some(BTreeSet::new()));
    let blocks = keys.blocks();
    while let Some(Ok(batch)) = stream.next().await {
        for ev in &batch.events {
            if !ev.key().starts_with(&blocks) {
                continue;
            }
            let node = ev
                .value()
                .and_then(|v| decode_value::<Block>(ev.key(), v).ok())
                .and_then(|b| b.affinity);
            if let Some(node) = node {
                tx.send_modify(|seen| {
                    seen.get_or_insert_with(BTreeSet::new).insert(node);
                });
            }
        }
    }
}

/// Waits started by [`Views`]; dropping it stops them.
pub struct Pending(JoinSet<anyhow::Result<Duration>>);

impl Pending {
    /// For each view, the time from the start given until the condition held.
    pub async fn all(mut self, timeout: Duration) -> anyhow::Result<Vec<Duration>> {
        let all = async {
            let mut times = Vec::new();
            while let Some(done) = self.0.join_next().await {
                times.push(done??);
            }
            Ok::<_, anyhow::Error>(times)
        };
        tokio::time::timeout(timeout, all)
            .await
            .map_err(|_| anyhow::anyhow!("not every simulated node saw it within {timeout:?}"))?
    }
}

impl<T> Drop for Views<T> {
    fn drop(&mut self) {
        // Allowed inside the caller's runtime, unlike dropping a runtime.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
