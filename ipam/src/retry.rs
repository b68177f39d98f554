//! Bounded, jittered backoff for compare-and-swap conflicts.

use std::time::Duration;

use rand::Rng;

/// How many times one IPAM operation re-reads and retries after losing a race.
pub const MAX_ATTEMPTS: u32 = 100;

/// Sleep before retry `attempt` (1-based): full jitter over an exponential window
/// capped at 50 ms, so racing nodes spread out instead of colliding again in step.
pub async fn backoff(attempt: u32) {
    let cap_us = (500u64 << attempt.min(7)).min(50_000);
    let wait = rand::rng().random_range(0..=cap_us);
    tokio::time::sleep(Duration::from_micros(wait)).await;
}

/// What one attempt of a read-modify-write decided.
pub enum Attempt<T> {
    /// Nothing (more) to write: finish with this value.
    Done(T),
    /// Apply this transaction; on commit finish with the value, on conflict try again.
    Commit(crate::store::Txn, T),
}

/// Run read-modify-write attempts until one commits or decides it is done, with
/// backoff between conflicts and at most [`MAX_ATTEMPTS`] tries. Returns the value and,
/// when a transaction committed, its revision.
pub async fn cas_loop<S, T, F, Fut>(
    store: &S,
    mut attempt: F,
) -> Result<(T, Option<i64>), crate::IpamError>
where
    S: crate::store::Store,
    // A plain closure returning a future (rather than an async closure) keeps the
    // caller's future `Send`, which brindled's handlers need.
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Attempt<T>, crate::IpamError>>,
{
    for n in 1..=MAX_ATTEMPTS {
        match attempt().await? {
            Attempt::Done(value) => return Ok((value, None)),
            Attempt::Commit(txn, value) => {
                if let crate::store::TxnOutcome::Committed { revision } = store.txn(txn).await? {
                    return Ok((value, Some(revision)));
                }
            }
        }
        backoff(n).await;
    }
    Err(crate::IpamError::Contention {
        attempts: MAX_ATTEMPTS,
    })
}
