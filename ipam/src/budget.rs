//! One deadline for everything an operation does: its lock waits and its store calls.
//!
//! An allocation that waits for another one on the same block must not then spend a
//! fresh store budget of its own, or a queue of requests during an etcd outage fails
//! one budget after another. The deadline travels with the task (a task-local), so the
//! store reads it without every signature carrying it.

use std::future::Future;
use std::time::{Duration, Instant};

/// What one IPAM operation (an allocation, a release) may take in all, lock waits
/// included: the budget of one store call, so that a request queued behind others
/// fails as soon as a lone request would, under the 5 s a Docker or CNI request
/// promises.
pub const OPERATION: Duration = Duration::from_secs(4);

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Run `fut` with `deadline`, or with the enclosing one when that is earlier.
pub async fn within<F: Future>(deadline: Instant, fut: F) -> F::Output {
    let deadline = current().map_or(deadline, |outer| outer.min(deadline));
    DEADLINE.scope(deadline, fut).await
}

/// The deadline of the operation this task is running, if one was set.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// `now + budget`, or the operation's deadline when that comes first.
pub fn deadline_after(budget: Duration) -> Instant {
    let own = Instant::now() + budget;
    current().map_or(own, |outer| outer.min(own))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_inner_scope_never_extends_the_outer_deadline() {
        let outer = Instant::now() + Duration::from_millis(100);
        let later = outer + Duration::from_secs(10);
        let seen = within(outer, async { within(later, async { current() }).await }).await;
        assert_eq!(seen, Some(outer));
        let earlier = outer - Duration::from_millis(50);
        let seen = within(outer, async { within(earlier, async { current() }).await }).await;
        assert_eq!(seen, Some(earlier));
    }

    #[tokio::test]
    async fn without_a_scope_the_budget_starts_now() {
        assert_eq!(current(), None);
        let d = deadline_after(Duration::from_secs(4));
        assert!(d > Instant::now() + Duration::from_secs(3));
        let outer = Instant::now() + Duration::from_millis(10);
        let d = within(outer, async { deadline_after(Duration::from_secs(4)) }).await;
        assert_eq!(d, outer);
    }
}
