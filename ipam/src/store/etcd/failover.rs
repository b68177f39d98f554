//! One request against the cluster within a deadline: on the current member, moving to
//! the next one when a member is down, silent or without a leader, with short backoff
//! for transient refusals.

use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::Client;
use rand::Rng;
use tracing::debug;

use super::faults::{classify, describe, Fault};
use super::members::{ConnectError, MemberClient, Members};
use crate::store::{StoreError, REQUEST_TIMEOUT};

/// How long connecting to one member (and its first answer) may take: a dead or
/// stopped member must cost little of the request's budget.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long one attempt on a connected member may take before the member counts as
/// silent (stopped, partitioned, or a proposal lost with its leader).
pub(super) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a request may be sent again after a failure that may have applied it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replay {
    /// Reads, and writes whose repetition is harmless.
    Safe,
    /// Compare-and-swap transactions: after an unknown outcome, stop and re-read.
    Unsafe,
}

/// Why a request did not complete.
#[derive(Debug)]
pub(super) enum Failed {
    Store(StoreError),
    /// A [`Replay::Unsafe`] request failed in a way that may have applied it.
    Ambiguous {
        detail: String,
    },
}

/// The last error seen from each member, for the `Unreachable` message.
#[derive(Default)]
struct Seen(Vec<(String, String)>);

impl Seen {
    fn note(&mut self, endpoint: &str, detail: String) {
        debug!(%endpoint, %detail, "etcd request failed");
        match self.0.iter_mut().find(|(e, _)| e == endpoint) {
            Some(entry) => entry.1 = detail,
            None => self.0.push((endpoint.to_string(), detail)),
        }
    }

    fn summary(&self) -> String {
        if self.0.is_empty() {
            // Only when the operation's deadline had passed before this call began
            // (spent waiting behind other requests, or on earlier calls).
            return "the operation's time budget was spent before etcd was asked".into();
        }
        let parts: Vec<String> = self.0.iter().map(|(e, d)| format!("{e}: {d}")).collect();
        parts.join("; ")
    }
}

pub(super) fn unreachable(endpoints: &str, detail: String) -> StoreError {
    StoreError::Unreachable {
        endpoints: endpoints.to_string(),
        timeout: REQUEST_TIMEOUT,
        detail,
    }
}

/// Jittered pause before retrying after a transient refusal.
fn backoff(attempt: u32) -> Duration {
    let cap_ms = (25u64 << attempt.min(4)).min(250);
    Duration::from_millis(rand::rng().random_range(cap_ms / 2..=cap_ms))
}

/// A healthy member's client (one that has answered), within `deadline`.
pub(super) async fn member(
    members: &Members,
    endpoints: &str,
    deadline: Instant,
) -> Result<MemberClient, StoreError> {
    let mut seen = Seen::default();
    loop {
        match pick(members, endpoints, deadline, &mut seen, true).await? {
            Some((m, _)) => return Ok(m),
            None => continue,
        }
    }
}

/// Choose and connect one member, with how long a first request to it may take
/// while it has not answered yet; `None` when that member failed (try again). With
/// `probe`, a member that has not answered yet is proven first by a cheap call.
async fn pick(
    members: &Members,
    endpoints: &str,
    deadline: Instant,
    seen: &mut Seen,
    probe: bool,
) -> Result<Option<(MemberClient, Duration)>, StoreError> {
    let now = Instant::now();
    let left = deadline.saturating_duration_since(now);
    if left.is_zero() {
        return Err(unreachable(endpoints, seen.summary()));
    }
    let (index, wait) = members.choose(now);
    if !wait.is_zero() {
        // Every member failed a moment ago: pause briefly rather than spin, but do
        // try again (an outage ends by itself).
        tokio::time::sleep(wait.min(Duration::from_millis(200)).min(left)).await;
        if Instant::now() >= deadline {
            return Err(unreachable(endpoints, seen.summary()));
        }
    }
    let left = deadline.saturating_duration_since(Instant::now());
    // A short connect limit only pays while another member may answer faster: a lone
    // member, or the last resort after every member failed once, gets the rest of the
    // budget (a loaded etcd checking a password with bcrypt can take over a second).
    let limit = match members.len() == 1 || seen.0.len() >= members.len() {
        true => left,
        false => CONNECT_TIMEOUT.min(left),
    };
    let connect = members.client(index, limit, probe);
    let result = match tokio::time::timeout(left, connect).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout(left)),
    };
    match result {
        Ok(m) => Ok(Some((m, limit))),
        Err(ConnectError::Timeout(t)) => {
            seen.note(members.url(index), no_answer(t));
            Ok(None)
        }
        Err(ConnectError::Etcd(e)) => {
            if classify(&e).fault == Fault::Fatal {
                return Err(refused(endpoints, e));
            }
            seen.note(members.url(index), describe(&e));
            Ok(None)
        }
    }
}

fn no_answer(t: Duration) -> String {
    format!("no answer within {:.1}s", t.as_secs_f32())
}

fn refused(endpoints: &str, e: etcd_client::Error) -> StoreError {
    StoreError::Etcd {
        endpoints: endpoints.to_string(),
        source: Box::new(e),
    }
}

/// Run `call` on a healthy member until it succeeds, fails for real, or `deadline`
/// passes; see [`Replay`] for what happens after an ambiguous failure.
pub(super) async fn run<T, F, Fut>(
    members: &Members,
    endpoints: &str,
    deadline: Instant,
    replay: Replay,
    mut call: F,
) -> Result<T, Failed>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let mut seen = Seen::default();
    let mut transient = 0u32;
    loop {
        // A request that may be replayed proves a new connection itself, within the
        // connect limit: one round trip less for a short-lived process (the CNI
        // plugin's direct path), and a silent member costs as little as a probe
        // would. A transaction is never the first request to a member that has not
        // answered: a timeout would leave its outcome unknown.
        // Boxed: every store call's future nests this one, and unboxed it took the
        // deepest callers (bench-scale's) past the compiler's query depth limit.
        let Some((m, first_limit)) = Box::pin(pick(
            members,
            endpoints,
            deadline,
            &mut seen,
            replay == Replay::Unsafe,
        ))
        .await
        .map_err(Failed::Store)?
        else {
            continue;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let limit = match m.proven() {
            true => ATTEMPT_TIMEOUT.min(left),
            false => first_limit.min(ATTEMPT_TIMEOUT).min(left),
        };
        let (fault, maybe_applied, detail) =
            match tokio::time::timeout(limit, call(m.client().clone())).await {
                Ok(Ok(v)) => {
                    members.succeeded(&m);
                    return Ok(v);
                }
                Ok(Err(e)) => {
                    let f = classify(&e);
                    if f.fault == Fault::Fatal {
                        return Err(Failed::Store(refused(endpoints, e)));
                    }
                    (f.fault, f.maybe_applied, describe(&e))
                }
                // A stopped or partitioned member: the request may sit in its queue.
                Err(_) => (Fault::Down, true, no_answer(limit)),
            };
        seen.note(m.endpoint(), detail.clone());
        members.failed(&m, fault);
        if replay == Replay::Unsafe && maybe_applied {
            return Err(Failed::Ambiguous {
                detail: format!("{}: {detail}", m.endpoint()),
            });
        }
        if fault == Fault::Transient {
            transient += 1;
            let pause = backoff(transient).min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
    }
}
