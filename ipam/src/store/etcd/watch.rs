//! [`Store::watch`](crate::store::Store::watch) on etcd: one prefix watch on one member
//! at a time, fed into a channel by a background task.
//!
//! The watch runs on a healthy member (see [`super::failover::member`]) whose client
//! has `require_leader` set, so a member cut off from its leader cancels it. A member
//! that goes silent (SIGSTOP, a partition the kernel does not report) is noticed by
//! asking for a progress report when the stream is quiet. Either way the member is
//! reported failed and the watch resumes on another one from the revision after the
//! last event delivered; only a compacted revision ends it, with
//! [`StoreError::Compacted`], so the consumer loads again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions, WatchResponse};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::faults::describe;
use super::members::MemberClient;
use super::EtcdStore;
use crate::store::{StoreError, Watch, WatchBatch, WatchEvent};

/// Pause before trying again after consecutive failures.
const RETRY: Duration = Duration::from_secs(1);

/// Pause before resuming on another member after one failure.
const RESUME: Duration = Duration::from_millis(200);

/// Deadline of opening the watch: a healthy member answers in milliseconds, a
/// stopped one never.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);

/// Ask for a progress report after this long without any message.
const QUIET: Duration = Duration::from_secs(2);

/// Count the member as silent after this long without any message (progress asked).
const SILENT: Duration = Duration::from_secs(4);

/// The largest watch response accepted.
const WATCH_MESSAGE_LIMIT: usize = 64 << 20;

/// Batches delivered ahead of the consumer; etcd holds the rest.
const BUFFER: usize = 16;

type Sender = mpsc::Sender<Result<WatchBatch, StoreError>>;

/// Start watching `prefix` from `start` in a background task.
pub(super) fn spawn(store: EtcdStore, prefix: String, start: i64) -> Watch {
    let (tx, rx) = mpsc::channel(BUFFER);
    let restarts = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(run(store, prefix, start, tx, restarts.clone()));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Watch::new(Box::pin(stream), restarts, Some(task))
}

/// How following on one member ended.
enum End {
    /// The consumer dropped the watch.
    Gone,
    /// The next revision to deliver was compacted; etcd keeps history from this one.
    Compacted(i64),
    /// The member failed; resume elsewhere.
    Failed(String),
}

/// Runs until the consumer goes away or the history is compacted: follow on a healthy
/// member; when it fails, follow on another from the next revision.
async fn run(
    store: EtcdStore,
    prefix: String,
    mut next: i64,
    tx: Sender,
    restarts: Arc<AtomicU64>,
) {
    let mut failures = 0u32;
    loop {
        let Some(member) = healthy_member(&store, &mut failures, &tx).await else {
            return;
        };
        if failures > 0 {
            info!(endpoint = %member.endpoint(), revision = next - 1, "etcd watch resumed");
        } else {
            debug!(endpoint = %member.endpoint(), revision = next - 1, "etcd watch started");
        }
        let started = Instant::now();
        let end = follow(&member, &prefix, &mut next, &tx).await;
        // A watch that ran for a while counts as a success: resume quickly.
        failures = if started.elapsed() > SILENT * 2 {
            1
        } else {
            failures + 1
        };
        match end {
            End::Gone => return,
            End::Compacted(compacted) => {
                warn!(
                    revision = next,
                    compacted, "etcd watch fell behind compaction; the state must be loaded again"
                );
                let _ = tx
                    .send(Err(StoreError::Compacted {
                        revision: next,
                        compacted,
                    }))
                    .await;
                return;
            }
            End::Failed(error) => {
                warn!(endpoint = %member.endpoint(), %error, "etcd watch interrupted; resuming on a healthy member");
                store.member_failed(&member);
                restarts.fetch_add(1, Ordering::Relaxed);
            }
        }
        let pause = if failures > 3 { RETRY } else { RESUME };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = tx.closed() => return,
        }
    }
}

/// A member to watch on, waiting while the whole cluster is unreachable; `None` when
/// the consumer went away meanwhile.
async fn healthy_member(
    store: &EtcdStore,
    failures: &mut u32,
    tx: &Sender,
) -> Option<MemberClient> {
    loop {
        let error = tokio::select! {
            m = store.member() => match m {
                Ok(m) => return Some(m),
                Err(e) => e,
            },
            _ = tx.closed() => return None,
        };
        *failures += 1;
        if *failures == 1 || failures.is_multiple_of(30) {
            warn!(%error, attempts = *failures, "cannot reach etcd for the watch; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = tx.closed() => return None,
        }
    }
}

/// The events of one watch response.
fn batch(resp: &WatchResponse) -> WatchBatch {
    let events = resp
        .events()
        .iter()
        .filter_map(|ev| {
            let kv = ev.kv()?;
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            Some(match ev.event_type() {
                EventType::Put => WatchEvent::Put(super::to_kv(kv)),
                EventType::Delete => WatchEvent::Delete {
                    key,
                    mod_revision: kv.mod_revision(),
                },
            })
        })
        .collect();
    WatchBatch { events }
}

/// Follows the watch on `member` from `*next`, delivering each batch of events and
/// moving `*next` past it. Returns when the stream breaks or goes silent.
async fn follow(member: &MemberClient, prefix: &str, next: &mut i64, tx: &Sender) -> End {
    let opts = WatchOptions::new().with_prefix().with_start_revision(*next);
    // A catch-up batch after a long interruption holds up to 1,000 revisions; let it
    // exceed the 4 MiB default rather than fail the same way on every member.
    let mut watch_client = member
        .client()
        .watch_client()
        .max_decoding_message_size(WATCH_MESSAGE_LIMIT);
    let stream =
        match tokio::time::timeout(OPEN_TIMEOUT, watch_client.watch(prefix, Some(opts))).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return End::Failed(describe(&e)),
            Err(_) => {
                return End::Failed(format!(
                    "no answer within {}s to opening the watch",
                    OPEN_TIMEOUT.as_secs()
                ))
            }
        };
    let (mut requests, mut responses) = stream.split();
    let mut last_message = Instant::now();
    let mut asked = false;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = responses.next() => {
                let resp = match msg {
                    None => return End::Failed("etcd closed the watch stream".into()),
                    Some(Err(e)) => return End::Failed(describe(&e)),
                    Some(Ok(resp)) => resp,
                };
                if resp.canceled() {
                    if resp.compact_revision() > 0 {
                        return End::Compacted(resp.compact_revision());
                    }
                    return End::Failed(format!(
                        "the watch was cancelled by etcd: {}",
                        resp.cancel_reason()
                    ));
                }
                let batch = batch(&resp);
                // Only events move the revision: the header of a progress report can
                // run ahead of events still queued (etcd before 3.4.24), and the header
                // of a catch-up batch ahead of events in the next batch.
                let last = batch.last_revision();
                if !batch.events.is_empty() {
                    if tx.send(Ok(batch)).await.is_err() {
                        return End::Gone;
                    }
                    *next = (*next).max(last + 1);
                }
                // Counted after the hand-over: a slow consumer is not a silent member.
                last_message = Instant::now();
                asked = false;
            }
            _ = tick.tick() => {
                let quiet = last_message.elapsed();
                if quiet >= SILENT {
                    return End::Failed(format!(
                        "the member sent nothing for {}s, not even a requested progress report",
                        quiet.as_secs()
                    ));
                }
                if quiet >= QUIET && !asked {
                    if let Err(e) = requests.request_progress().await {
                        return End::Failed(describe(&e));
                    }
                    asked = true;
                }
            }
            _ = tx.closed() => return End::Gone,
        }
    }
}
