//! The one compare-and-swap loop: read, decide, write with compares on what was read;
//! on a conflict back off (bounded, jittered) and try again.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use super::StateError;
use crate::store::{Store, Txn, TxnOutcome};

/// How many times one operation re-reads and retries after losing a race.
pub const MAX_ATTEMPTS: u32 = 100;

/// Sleep before retry `attempt` (1-based): full jitter over an exponential window
/// capped at 250 ms, so racing writers spread out instead of colliding again in step.
/// The cap is what a burst needs: 200 CNI plugins of one node, each with its own etcd
/// client, writing the node's one block lost 100 attempts in a row with a 50 ms cap.
pub async fn backoff(attempt: u32) {
    let cap_us = (500u64 << attempt.min(9)).min(250_000);
    let wait = rand::rng().random_range(0..=cap_us);
    tokio::time::sleep(Duration::from_micros(wait)).await;
}

/// What one attempt of a read-modify-write decided.
pub enum Attempt<T> {
    /// Nothing (more) to write: finish with this value.
    Done(T),
    /// Apply this transaction; on commit finish with the value, on conflict try again.
    Commit(Txn, T),
}

/// Run read-modify-write attempts until one commits or decides it is done, with
/// [`backoff`] between conflicts and at most [`MAX_ATTEMPTS`] tries (then
/// [`StateError::Contention`], converted into the caller's error). Returns the value
/// and, when a transaction committed, its revision.
///
/// `E` is the caller's error type (`IpamError`, the BGP store's, ...): the attempt
/// returns it, and store failures and contention convert into it. Name it when the
/// attempt does not: `cas_loop::<IpamError, _, _>(store, ...)`.
pub async fn cas_loop<E, T, Fut>(
    store: &impl Store,
    // A plain closure returning a future (rather than an async closure) keeps the
    // caller's future `Send`, which brindled's handlers need.
    mut attempt: impl FnMut() -> Fut,
) -> Result<(T, Option<i64>), E>
where
    E: From<StateError>,
    Fut: Future<Output = Result<Attempt<T>, E>>,
{
    for n in 1..=MAX_ATTEMPTS {
        match attempt().await? {
            Attempt::Done(value) => return Ok((value, None)),
            Attempt::Commit(txn, value) => {
                let outcome = store.txn(txn).await.map_err(StateError::from)?;
                if let TxnOutcome::Committed { revision } = outcome {
                    return Ok((value, Some(revision)));
                }
            }
        }
        backoff(n).await;
    }
    Err(StateError::Contention {
        attempts: MAX_ATTEMPTS,
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{cas_put, read};
    use crate::MemoryStore;

    #[derive(Debug, thiserror::Error)]
    enum MyError {
        #[error(transparent)]
        State(#[from] StateError),
        #[error("odd")]
        Odd,
    }

    #[tokio::test]
    async fn retries_a_lost_race_and_passes_the_callers_error() {
        let store = MemoryStore::new();
        let key = "/t/v1/counter";
        let mut raced = false;
        let (n, rev) = cas_loop::<MyError, _, _>(&store, || {
            let first = !std::mem::replace(&mut raced, true);
            let store = &store;
            async move {
                let current = read::<u32>(store, key).await?;
                let read_rev = current.as_ref().map(|c| c.revision);
                if first {
                    // Another writer sneaks in between our read and our write.
                    store.txn(cas_put(key, None, &10u32)).await.unwrap();
                }
                let next = current.map_or(0, |c| c.value) + 1;
                Ok(Attempt::Commit(cas_put(key, read_rev, &next), next))
            }
        })
        .await
        .unwrap();
        assert_eq!(n, 11);
        assert!(rev.is_some());
        let err = cas_loop::<MyError, (), _>(&store, || async { Err(MyError::Odd) })
            .await
            .unwrap_err();
        assert!(matches!(err, MyError::Odd));
    }
}
