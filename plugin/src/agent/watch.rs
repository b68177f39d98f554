//! Keeps a [`Snapshot`] current with the etcd watch API: one consistent load (every
//! range read at the revision of the first), then one prefix watch on `PREFIX/v1/`
//! from the next revision, so no change is missed between load and watch.
//!
//! The watch runs on one member, with `require_leader` (the store's clients set it), so
//! a member cut off from its leader cancels it. A member that goes silent (SIGSTOP, a
//! partition the kernel does not report) is noticed by asking for progress when the
//! stream is quiet. Either way the watch moves to another member and resumes after the
//! last revision it saw; only a compacted revision makes it load again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use brindle_ipam::store::MemberClient;
use brindle_ipam::EtcdStore;
use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchResponse};
use futures::StreamExt;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::metrics::METRICS;
use super::snapshot::{Prefixes, Snapshot};

/// Pause before trying again after consecutive failures.
const RETRY: Duration = Duration::from_secs(1);

/// Pause before resuming on another member after one failure.
const RESUME: Duration = Duration::from_millis(200);

/// Deadline of each read of the load and of opening the watch: a healthy member
/// answers in milliseconds, a stopped one never.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Ask for a progress report after this long without any message.
const QUIET: Duration = Duration::from_secs(2);

/// Count the member as silent after this long without any message (progress asked).
const SILENT: Duration = Duration::from_secs(4);

/// Why following the watch stopped.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
    #[error("revision {0} was compacted")]
    Compacted(i64),
    #[error("the watch was cancelled by etcd: {0}")]
    Cancelled(String),
    #[error("etcd closed the watch stream")]
    Closed,
    #[error("the member sent nothing for {}s, not even a requested progress report", .0.as_secs())]
    Silent(Duration),
}

async fn timed<T>(
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, WatchError> {
    Ok(tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| WatchError::Timeout)??)
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
        let resp = timed(kv.get(key, Some(opts))).await?;
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

/// Applies one watch response; returns whether the snapshot changed in a way that
/// matters.
fn apply(prefixes: &Prefixes, snap: &mut Snapshot, resp: &WatchResponse) -> bool {
    let mut relevant = false;
    for ev in resp.events() {
        let Some(item) = ev.kv() else { continue };
        let key = String::from_utf8_lossy(item.key());
        let value = match ev.event_type() {
            EventType::Put => Some(item.value()),
            EventType::Delete => None,
        };
        relevant |= snap.apply(prefixes, &key, value);
        // Only events move the revision: the header of a progress report can run
        // ahead of events still queued (etcd before 3.4.24), and the header of a
        // catch-up batch ahead of events in the next batch.
        snap.revision = snap.revision.max(item.mod_revision());
    }
    relevant
}

/// Follows the watch from `snap.revision + 1`, publishing a new snapshot after each
/// batch of events that matters. Returns when the stream breaks or goes silent.
async fn follow(
    client: &Client,
    prefixes: &Prefixes,
    snap: &mut Snapshot,
    tx: &watch::Sender<Arc<Snapshot>>,
) -> WatchError {
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(snap.revision + 1);
    let mut watch_client = client.watch_client();
    let stream = match timed(watch_client.watch(prefixes.root.as_str(), Some(opts))).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    let (mut requests, mut responses) = stream.split();
    let mut last_message = Instant::now();
    let mut asked = false;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = responses.next() => {
                last_message = Instant::now();
                asked = false;
                let resp = match msg {
                    None => return WatchError::Closed,
                    Some(Err(e)) => return WatchError::Etcd(e),
                    Some(Ok(resp)) => resp,
                };
                if resp.canceled() {
                    if resp.compact_revision() > 0 {
                        return WatchError::Compacted(snap.revision + 1);
                    }
                    return WatchError::Cancelled(resp.cancel_reason().to_string());
                }
                if apply(prefixes, snap, &resp) {
                    METRICS.watch_events.inc();
                    debug!(revision = snap.revision, "etcd change");
                    tx.send_replace(Arc::new(snap.clone()));
                }
            }
            _ = tick.tick() => {
                let quiet = last_message.elapsed();
                if quiet >= SILENT {
                    return WatchError::Silent(quiet);
                }
                if quiet >= QUIET && !asked {
                    if let Err(e) = requests.request_progress().await {
                        return WatchError::Etcd(e);
                    }
                    asked = true;
                }
            }
        }
    }
}

/// A member to watch on, waiting while the whole cluster is unreachable.
async fn healthy_member(store: &EtcdStore, failures: &mut u32) -> MemberClient {
    loop {
        match store.member().await {
            Ok(m) => return m,
            Err(e) => {
                *failures += 1;
                if *failures == 1 || failures.is_multiple_of(30) {
                    warn!(error = %e, attempts = *failures, "cannot reach etcd for the watch; retrying");
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Runs forever: load, publish, follow; when the member fails, follow on another from
/// the last revision seen; load again only when that revision was compacted.
pub async fn run(store: EtcdStore, prefixes: Prefixes, tx: watch::Sender<Arc<Snapshot>>) {
    let mut snap: Option<Snapshot> = None;
    let mut failures = 0u32;
    loop {
        let member = healthy_member(&store, &mut failures).await;
        let current = match snap.as_mut() {
            Some(s) => s,
            None => match load(member.client(), &prefixes).await {
                Ok(s) => {
                    tx.send_replace(Arc::new(s.clone()));
                    METRICS.snapshot_loads.inc();
                    snap.insert(s)
                }
                Err(e) => {
                    failures += 1;
                    warn!(endpoint = %member.endpoint(), error = %e, "cannot load state from etcd; trying another member");
                    store.member_failed(&member);
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        if failures > 0 {
            info!(endpoint = %member.endpoint(), revision = current.revision, "etcd watch resumed");
        } else {
            debug!(endpoint = %member.endpoint(), revision = current.revision, "etcd watch started");
        }
        let started = Instant::now();
        let err = follow(member.client(), &prefixes, current, &tx).await;
        METRICS.watch_restarts.inc();
        // A watch that ran for a while counts as a success: resume quickly.
        failures = if started.elapsed() > SILENT * 2 {
            1
        } else {
            failures + 1
        };
        match err {
            WatchError::Compacted(rev) => {
                warn!(
                    revision = rev,
                    "etcd watch fell behind compaction; reloading"
                );
                snap = None;
            }
            e => {
                warn!(endpoint = %member.endpoint(), error = %e, "etcd watch interrupted; resuming on a healthy member");
                store.member_failed(&member);
            }
        }
        let pause = if failures > 3 { RETRY } else { RESUME };
        tokio::time::sleep(pause).await;
    }
}
