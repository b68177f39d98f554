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
