//! Writes that commit after the request that made them has been answered.
//!
//! A release is the one write a caller need not wait for: until it commits, the address
//! stays allocated in etcd (nobody else can take it, and this process hands it out to
//! no one), so answering first loses no guarantee. Whoever queues one keeps what
//! orders it against later requests (the address's claim lock) inside the task. If the
//! process dies before the commit, the allocation and its endpoint record are still
//! there together, and the reconcile frees them after its grace period
//! (`agent/reconcile.rs`), as for a kill between `DeleteEndpoint` and `ReleaseAddress`.
//! A graceful stop waits for every queued write ([`WriteBehind::settle_all`]).

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::warn;

/// How long a write answered already is retried while the store fails (etcd
/// unreachable), and the pause between tries.
pub const RETRY_FOR: Duration = Duration::from_secs(30);
pub const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Run `write` until it succeeds or [`RETRY_FOR`] has passed since `answered`; the last
/// error when it gives up.
pub async fn until_committed<T, E: Display, F: Future<Output = Result<T, E>>>(
    answered: Instant,
    what: &str,
    mut write: impl FnMut() -> F,
) -> Result<T, E> {
    loop {
        match write().await {
            Ok(v) => return Ok(v),
            Err(e) if answered.elapsed() >= RETRY_FOR => return Err(e),
            Err(e) => {
                warn!(error = %e, "{what}: not committed yet; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// The writes queued in this process and not finished yet.
#[derive(Clone)]
pub struct WriteBehind {
    pending: Arc<watch::Sender<usize>>,
}

impl Default for WriteBehind {
    fn default() -> Self {
        Self {
            pending: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl WriteBehind {
    /// Run `write` on the current runtime; it counts as pending until it returns.
    pub fn spawn(&self, write: impl Future<Output = ()> + Send + 'static) {
        self.pending.send_modify(|n| *n += 1);
        let done = Finished(self.pending.clone());
        tokio::spawn(async move {
            let _done = done;
            write.await;
        });
    }

    /// How many queued writes have not finished.
    pub fn pending(&self) -> usize {
        *self.pending.borrow()
    }

    /// Wait until no queued write is pending (including those queued meanwhile).
    pub async fn settle_all(&self) {
        let mut rx = self.pending.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// Counts a write as finished when dropped: also when its task panics or is cancelled
/// by the runtime's shutdown, so [`WriteBehind::settle_all`] never waits for a write
/// that can no longer finish.
struct Finished(Arc<watch::Sender<usize>>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn settle_all_waits_for_every_write_queued_and_only_those() {
        let writes = WriteBehind::default();
        writes.settle_all().await; // nothing queued: returns at once
        let (open, gate) = tokio::sync::oneshot::channel::<()>();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        writes.spawn(async move {
            let _ = gate.await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        assert_eq!(writes.pending(), 1);
        let settled = tokio::time::timeout(Duration::from_millis(50), writes.settle_all()).await;
        assert!(settled.is_err(), "settled while a write was held back");
        open.send(()).unwrap();
        writes.settle_all().await;
        assert!(done.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(writes.pending(), 0);
    }

    #[tokio::test]
    async fn a_write_that_panics_is_not_waited_for() {
        let writes = WriteBehind::default();
        writes.spawn(async { panic!("the write failed hard") });
        tokio::time::timeout(Duration::from_secs(5), writes.settle_all())
            .await
            .expect("a panicked write still counts as finished");
        assert_eq!(writes.pending(), 0);
    }
}
