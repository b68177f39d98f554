//! Keeps a [`Snapshot`] current with the etcd watch API: one consistent load (every
//! range read at the revision of the first), then one prefix watch on `PREFIX/v1/`
//! from the next revision, so no change is missed between load and watch. After a
//! broken stream or a compacted revision it loads again.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::metrics::METRICS;
use super::snapshot::{Prefixes, Snapshot};

/// Pause between attempts while etcd is unreachable.
const RETRY: Duration = Duration::from_secs(1);

/// Per-request deadline of the initial load.
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Why following the watch stopped.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {}s", LOAD_TIMEOUT.as_secs())]
    Timeout,
    #[error("the watch was cancelled by etcd: {0}")]
    Cancelled(String),
    #[error("etcd closed the watch stream")]
    Closed,
}

/// Loads every watched record at one revision.
pub async fn load(client: &Client, prefixes: &Prefixes) -> Result<Snapshot, WatchError> {
    let mut kv = client.kv_client();
    let mut snap = Snapshot::default();
    let mut revision = 0;
    for (key, is_prefix) in prefixes.reads() {
        let mut opts = GetOptions::new();
        if is_prefix {
            opts = opts.with_prefix();
        }
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = tokio::time::timeout(LOAD_TIMEOUT, kv.get(key, Some(opts)))
            .await
            .map_err(|_| WatchError::Timeout)??;
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or(0).max(1);
        }
        for item in resp.kvs() {
            let k = String::from_utf8_lossy(item.key());
            snap.apply(prefixes, &k, Some(item.value()));
        }
    }
    snap.revision = revision;
    Ok(snap)
}

/// Follows the watch from `snap.revision + 1`, publishing a new snapshot after each
/// batch of events that matters. Returns when the stream breaks.
async fn follow(
    client: &Client,
    prefixes: &Prefixes,
    mut snap: Snapshot,
    tx: &watch::Sender<Arc<Snapshot>>,
) -> Result<(), WatchError> {
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(snap.revision + 1);
    let mut stream = client
        .watch_client()
        .watch(prefixes.root.as_str(), Some(opts))
        .await?;
    loop {
        let Some(resp) = stream.message().await? else {
            return Err(WatchError::Closed);
        };
        if resp.canceled() {
            let reason = if resp.compact_revision() > 0 {
                format!("revision {} was compacted", snap.revision + 1)
            } else {
                resp.cancel_reason().to_string()
            };
            return Err(WatchError::Cancelled(reason));
        }
        let mut relevant = false;
        for ev in resp.events() {
            let Some(item) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(item.key());
            let value = match ev.event_type() {
                EventType::Put => Some(item.value()),
                EventType::Delete => None,
            };
            relevant |= snap.apply(prefixes, &key, value);
            snap.revision = snap.revision.max(item.mod_revision());
        }
        if let Some(h) = resp.header() {
            snap.revision = snap.revision.max(h.revision());
        }
        if relevant {
            METRICS.watch_events.inc();
            debug!(revision = snap.revision, "etcd change");
            tx.send_replace(Arc::new(snap.clone()));
        }
    }
}

/// Runs forever: load, publish, follow; on any failure wait and start over.
pub async fn run(client: Client, prefixes: Prefixes, tx: watch::Sender<Arc<Snapshot>>) {
    let mut failures = 0u32;
    loop {
        match load(&client, &prefixes).await {
            Ok(snap) => {
                if failures > 0 {
                    info!(revision = snap.revision, "etcd watch resumed");
                }
                failures = 0;
                tx.send_replace(Arc::new(snap.clone()));
                METRICS.snapshot_loads.inc();
                let err = follow(&client, &prefixes, snap, &tx).await;
                if let Err(e) = err {
                    METRICS.watch_restarts.inc();
                    warn!(error = %e, "etcd watch interrupted; reloading");
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(30) {
                    warn!(error = %e, attempts = failures, "cannot load state from etcd; retrying");
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}
