//! The listed etcd members, each with its own lazily connected client.
//!
//! etcd-client's balanced channel fails a request when any listed endpoint refuses
//! connections (etcdv3/etcd-client issues 12 and 39), so brindle keeps one single-endpoint
//! client per member and chooses itself: the current member while it works, else the
//! next one in order that is not being avoided after a recent failure.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use tracing::info;

use super::faults::Fault;

/// How long a member that failed is skipped while others may answer.
const AVOID_DOWN: Duration = Duration::from_secs(2);
/// How long a member that answered "no leader" and the like is skipped.
const AVOID_TRANSIENT: Duration = Duration::from_millis(500);

/// One member's connection state.
#[derive(Default)]
struct Slot {
    client: Option<Client>,
    /// Bumped whenever the client is dropped, so a late failure report about an old
    /// client does not drop its replacement.
    generation: u64,
    avoid_until: Option<Instant>,
    /// The client has answered (a probe, a request, or the login that connected it).
    proven: bool,
}

struct Member {
    url: String,
    // Held only for short, synchronous updates; never across an await.
    slot: Mutex<Slot>,
    // Serialises (re)connecting, so concurrent requests log in once.
    connecting: tokio::sync::Mutex<()>,
}

/// A connected client of one member, as handed out; failure reports name it.
#[derive(Clone)]
pub struct MemberClient {
    index: usize,
    generation: u64,
    endpoint: String,
    client: Client,
    proven: bool,
}

impl MemberClient {
    /// Whether the member has answered on this client (a stopped process still
    /// completes TCP handshakes, so a connection alone proves nothing).
    pub fn proven(&self) -> bool {
        self.proven
    }

    /// The member's endpoint URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Its client (with `require_leader` set, so a member cut off from its leader
    /// refuses at once rather than serving stale data or hanging).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Every listed member and which one is current.
pub(super) struct Members {
    list: Vec<Member>,
    current: AtomicUsize,
    options: ConnectOptions,
    /// With a username, connecting logs in, which is a round trip already.
    logs_in: bool,
}

impl Members {
    pub fn new(urls: &[String], options: ConnectOptions, logs_in: bool) -> Self {
        let list = urls
            .iter()
            .map(|url| Member {
                url: url.clone(),
                slot: Mutex::new(Slot::default()),
                connecting: tokio::sync::Mutex::new(()),
            })
            .collect();
        Self {
            list,
            current: AtomicUsize::new(0),
            options,
            logs_in,
        }
    }

    /// How many members are listed.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn url(&self, index: usize) -> &str {
        &self.list[index].url
    }

    fn slot(&self, index: usize) -> std::sync::MutexGuard<'_, Slot> {
        // A panic while holding this lock cannot leave the slot inconsistent.
        self.list[index]
            .slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The member to try next: the current one unless avoided, else the next one in
    /// order that is not. When every member is avoided, the one whose avoidance ends
    /// first, with how long is left of it.
    pub fn choose(&self, now: Instant) -> (usize, Duration) {
        let n = self.list.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut earliest = (start, Duration::MAX);
        for k in 0..n {
            let i = (start + k) % n;
            let wait = self
                .slot(i)
                .avoid_until
                .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
            if wait.is_zero() {
                return (i, Duration::ZERO);
            }
            if wait < earliest.1 {
                earliest = (i, wait);
            }
        }
        earliest
    }

    /// A connected client of member `index`, connecting when it has none. With
    /// `probe`, a client that has not answered yet is proven first with one cheap call
    /// (within `connect_timeout`); without, the caller's own request proves it, within
    /// a limit as short. Errors come from connecting or the probe.
    pub async fn client(
        &self,
        index: usize,
        connect_timeout: Duration,
        probe: bool,
    ) -> Result<MemberClient, ConnectError> {
        let client = self.connected(index, connect_timeout).await?;
        if !probe || client.proven {
            return Ok(client);
        }
        match tokio::time::timeout(connect_timeout, client.client.clone().status()).await {
            Ok(Ok(_)) => {
                self.succeeded(&client);
                Ok(MemberClient {
                    proven: true,
                    ..client
                })
            }
            Ok(Err(e)) => {
                self.failed(&client, Fault::Down);
                Err(ConnectError::Etcd(e))
            }
            Err(_) => {
                self.failed(&client, Fault::Down);
                Err(ConnectError::Timeout(connect_timeout))
            }
        }
    }

    /// Member `index`'s client, connecting when it has none.
    async fn connected(
        &self,
        index: usize,
        connect_timeout: Duration,
    ) -> Result<MemberClient, ConnectError> {
        if let Some(c) = self.cached(index) {
            return Ok(c);
        }
        let member = &self.list[index];
        let _guard = member.connecting.lock().await;
        // Someone else may have connected while we waited.
        if let Some(c) = self.cached(index) {
            return Ok(c);
        }
        let client = match tokio::time::timeout(connect_timeout, self.connect(&member.url)).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                self.avoid(index, AVOID_DOWN);
                return Err(ConnectError::Etcd(e));
            }
            Err(_) => {
                self.avoid(index, AVOID_DOWN);
                return Err(ConnectError::Timeout(connect_timeout));
            }
        };
        let mut slot = self.slot(index);
        slot.client = Some(client.clone());
        // Logging in was a round trip the member answered.
        slot.proven = self.logs_in;
        Ok(MemberClient {
            index,
            generation: slot.generation,
            endpoint: member.url.clone(),
            client,
            proven: slot.proven,
        })
    }

    fn cached(&self, index: usize) -> Option<MemberClient> {
        let slot = self.slot(index);
        slot.client.as_ref().map(|client| MemberClient {
            index,
            generation: slot.generation,
            endpoint: self.list[index].url.clone(),
            client: client.clone(),
            proven: slot.proven,
        })
    }

    /// A client of `url`. Its channel connects lazily: without a login, nothing has
    /// crossed the network yet.
    async fn connect(&self, url: &str) -> Result<Client, etcd_client::Error> {
        Client::connect([url], Some(self.options.clone())).await
    }

    fn avoid(&self, index: usize, period: Duration) {
        self.slot(index).avoid_until = Some(Instant::now() + period);
        self.move_off(index);
    }

    /// The next request starts past `index` when `index` is current.
    fn move_off(&self, index: usize) {
        let next = (index + 1) % self.list.len();
        if self
            .current
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            && next != index
        {
            info!(from = %self.list[index].url, to = %self.list[next].url, "etcd: switching member");
        }
    }

    /// The member answered: keep using it.
    pub fn succeeded(&self, m: &MemberClient) {
        self.current.store(m.index, Ordering::Relaxed);
        if !m.proven {
            let mut slot = self.slot(m.index);
            if slot.generation == m.generation {
                slot.proven = true;
            }
        }
    }

    /// The member failed a request in this way.
    pub fn failed(&self, m: &MemberClient, fault: Fault) {
        let mut slot = self.slot(m.index);
        if slot.generation != m.generation {
            return; // already replaced
        }
        match fault {
            Fault::Down | Fault::Auth => {
                // A fresh client re-resolves the connection and logs in again; the
                // balanced channel of a dead one may never recover by itself.
                slot.client = None;
                slot.generation += 1;
                slot.proven = false;
            }
            Fault::Transient | Fault::Fatal => {}
        }
        let avoid = match fault {
            Fault::Down => Some(AVOID_DOWN),
            Fault::Transient => Some(AVOID_TRANSIENT),
            Fault::Auth | Fault::Fatal => None,
        };
        if let Some(period) = avoid {
            slot.avoid_until = Some(Instant::now() + period);
            drop(slot);
            self.move_off(m.index);
        }
    }
}

/// Why a member could not be connected.
#[derive(Debug)]
pub(super) enum ConnectError {
    Etcd(etcd_client::Error),
    Timeout(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Members {
        let urls: Vec<String> = (1..=3).map(|i| format!("http://10.0.0.{i}:2379")).collect();
        Members::new(&urls, ConnectOptions::new(), false)
    }

    #[test]
    fn the_current_member_is_kept_until_it_fails_then_the_next_is_used() {
        let m = three();
        let now = Instant::now();
        assert_eq!(m.choose(now), (0, Duration::ZERO));
        m.avoid(0, AVOID_DOWN);
        assert_eq!(m.choose(Instant::now()), (1, Duration::ZERO));
        // A failure of a member that is not current does not move the current one.
        m.avoid(2, AVOID_DOWN);
        assert_eq!(m.choose(Instant::now()), (1, Duration::ZERO));
    }

    #[test]
    fn with_every_member_avoided_the_first_to_recover_is_tried_after_a_wait() {
        let m = three();
        m.avoid(0, AVOID_DOWN);
        m.avoid(1, AVOID_TRANSIENT);
        m.avoid(2, AVOID_DOWN);
        let (index, wait) = m.choose(Instant::now());
        assert_eq!(index, 1);
        assert!(!wait.is_zero() && wait <= AVOID_TRANSIENT, "{wait:?}");
        // Once the avoidance has passed the member is chosen without a wait.
        let (index, wait) = m.choose(Instant::now() + AVOID_DOWN);
        assert_eq!(wait, Duration::ZERO);
        assert!(index < 3);
    }
}
