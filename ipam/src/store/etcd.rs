//! The etcd v3 store (etcd-client), with TLS, username/password, endpoint failover and a
//! hard per-request deadline so an unreachable cluster gives a clear error, not a hang.
//!
//! Each request runs on one member at a time (see [`members`]); when that member is
//! down, silent or without a leader, the same request moves to the next member, all
//! within [`REQUEST_TIMEOUT`]. A compare-and-swap transaction whose outcome is unknown
//! (the member went away after it was sent) is never repeated blindly: the store reads
//! the keys back and reports a conflict, so the caller's CAS loop decides on fresh
//! data and finds its own write if it landed.
//!
//! Listings are paginated, pages sized by the bytes of the records read (`paging.rs`,
//! at most [`EtcdStore::with_page_size`] keys), every page at the revision of the
//! first; watches run in `watch.rs`.

mod failover;
mod faults;
mod members;
mod paging;
mod watch;

use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare as EtcdCompare, CompareOp, ConnectOptions, GetOptions, Identity,
    KeyValue, TlsOptions, Txn as EtcdTxn, TxnOp, TxnOpResponse, TxnResponse,
};
use tracing::info;

pub use members::MemberClient;

use self::failover::{Failed, Replay};
use self::members::Members;
use super::{
    prefix_end, refuse_oversized, Compare, Kv, Listing, Op, Store, StoreError, Txn, TxnOutcome,
    Watch, DEFAULT_PAGE_SIZE, REQUEST_TIMEOUT,
};

/// How long one store call moves between members and retries before it reports the
/// cluster unreachable: a second under [`REQUEST_TIMEOUT`], so that a Docker or CNI
/// request around it (its own work, its rollback) still fails within the 5 s promised.
const FAILOVER_BUDGET: Duration = Duration::from_secs(4);

/// How many times a listing at the current revision starts over when compaction
/// overtakes it between two pages.
const LIST_ATTEMPTS: usize = 3;

/// How to reach etcd. Its `Debug` shows `<redacted>` for the password.
#[derive(Clone, Default)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`, one or more.
    pub endpoints: Vec<String>,
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            endpoints,
            ca_file,
            cert_file,
            key_file,
            username,
            password,
        } = self;
        f.debug_struct("EtcdConfig")
            .field("endpoints", endpoints)
            .field("ca_file", ca_file)
            .field("cert_file", cert_file)
            .field("key_file", key_file)
            .field("username", username)
            .field("password", &password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A store on an etcd v3 cluster. Cloning shares the members and their connections.
#[derive(Clone)]
pub struct EtcdStore {
    members: std::sync::Arc<Members>,
    endpoints: String,
    page_size: usize,
}

impl EtcdStore {
    /// Prepare the store. Nothing is connected yet: the first request connects to the
    /// first member that answers, within [`REQUEST_TIMEOUT`], so a daemon can start
    /// while etcd is down.
    pub async fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::BadEndpoint(String::new()));
        }
        for e in &config.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() < 10 {
                return Err(StoreError::BadEndpoint(e.clone()));
            }
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(failover::CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), REQUEST_TIMEOUT)
            // A member cut off from the leader refuses at once ("no leader") instead
            // of hanging, and cancels our watches after a few election timeouts.
            .with_require_leader(true)
            // etcd-client logs in again and repeats the call once on "invalid auth
            // token" (an expired simple token, or a restarted member).
            .with_auto_token_refresh(true);
        if let Some(tls) = tls_options(config)? {
            options = options.with_tls(tls);
        }
        let logs_in = match (&config.username, &config.password) {
            (Some(user), Some(pass)) => {
                options = options.with_user(user.clone(), pass.clone());
                true
            }
            _ => false,
        };
        Ok(Self {
            members: std::sync::Arc::new(Members::new(&config.endpoints, options, logs_in)),
            endpoints: config.endpoints.join(","),
            page_size: DEFAULT_PAGE_SIZE,
        })
    }

    /// The same store listing at most `keys` keys per request (at least 1); the
    /// default is [`DEFAULT_PAGE_SIZE`]. Tests use a small size to cross page borders.
    pub fn with_page_size(mut self, keys: usize) -> Self {
        self.page_size = keys.max(1);
        self
    }

    /// A connected client on a healthy member (the current one while it answers), for
    /// callers that need the raw API (benchmarks, test tools; brindle itself goes
    /// through [`Store`]). Report a member that later stops answering with
    /// [`EtcdStore::member_failed`].
    pub async fn member(&self) -> Result<MemberClient, StoreError> {
        let deadline = crate::budget::deadline_after(FAILOVER_BUDGET);
        failover::member(&self.members, &self.endpoints, deadline).await
    }

    /// The raw client of a healthy member; see [`EtcdStore::member`].
    pub async fn client(&self) -> Result<Client, StoreError> {
        Ok(self.member().await?.client().clone())
    }

    /// `member` stopped answering (a silent watch, say): drop its connection and let
    /// the next request use another member.
    pub fn member_failed(&self, member: &MemberClient) {
        info!(endpoint = %member.endpoint(), "etcd member reported silent");
        self.members.failed(member, faults::Fault::Down);
    }

    /// The endpoints, as given, comma-separated (for messages).
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// Run one request with failover; `replay` says whether it may be repeated after
    /// an ambiguous failure.
    async fn run<T, F, Fut>(&self, deadline: Instant, replay: Replay, call: F) -> Result<T, Failed>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        failover::run(&self.members, &self.endpoints, deadline, replay, call).await
    }

    /// A read: always safe to repeat.
    async fn read<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = crate::budget::deadline_after(FAILOVER_BUDGET);
        match self.run(deadline, Replay::Safe, call).await {
            Ok(v) => Ok(v),
            Err(Failed::Store(e)) => Err(e),
            // Not produced for safe requests; kept total rather than panicking.
            Err(Failed::Ambiguous { detail }) => {
                Err(failover::unreachable(&self.endpoints, detail))
            }
        }
    }

    /// One consistent listing of `prefix`: pages of at most `page_size` keys, sized
    /// by the bytes of the records read (see [`paging`]), each starting after the last
    /// key of the one before, all at `revision` (or at the revision of the first page).
    async fn pages(
        &self,
        prefix: &str,
        revision: Option<i64>,
        keys_only: bool,
    ) -> Result<Listing, StoreError> {
        let end = prefix_end(prefix.as_bytes());
        let mut from = if prefix.is_empty() {
            vec![0]
        } else {
            prefix.as_bytes().to_vec()
        };
        let mut pinned = revision;
        let mut kvs = Vec::new();
        let mut sizer = paging::PageSizer::new(self.page_size);
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(i64::try_from(sizer.limit()).unwrap_or(i64::MAX));
            if keys_only {
                opts = opts.with_keys_only();
            }
            if let Some(r) = pinned {
                opts = opts.with_revision(r);
            }
            let read = self
                .read(|mut c| {
                    let (key, opts) = (from.clone(), opts.clone());
                    async move { c.get(key, Some(opts)).await }
                })
                .await;
            let mut resp = match read {
                Ok(resp) => resp,
                // Records larger than the ones before: ask for the share that fits.
                Err(StoreError::Etcd { source, .. })
                    if faults::is_too_large(&source)
                        && sizer.refused(faults::too_large_size(&source)) =>
                {
                    info!(
                        prefix,
                        keys = sizer.limit(),
                        "etcd page larger than the message limit; reading fewer keys per page"
                    );
                    continue;
                }
                Err(StoreError::Etcd { source, .. }) if faults::is_compacted(&source) => {
                    return Err(StoreError::Compacted {
                        revision: pinned.unwrap_or_default(),
                        compacted: 0,
                    })
                }
                Err(e) => return Err(e),
            };
            let at = *pinned
                .get_or_insert_with(|| resp.header().map(|h| h.revision()).unwrap_or_default());
            let more = resp.more();
            let page = resp.take_kvs();
            let bytes: usize = page
                .iter()
                .map(|kv| kv.key().len() + kv.value().len())
                .sum();
            let next_from = page.last().map(|last| {
                let mut next = last.key().to_vec();
                next.push(0);
                next
            });
            sizer.read(page.len(), bytes);
            kvs.reserve(page.len());
            kvs.extend(page.into_iter().map(into_kv));
            match next_from {
                Some(next) if more => from = next,
                _ => return Ok(Listing { revision: at, kvs }),
            }
        }
    }

    /// [`EtcdStore::pages`] at `revision`, or at the current revision, starting over
    /// when compaction overtakes it.
    async fn listing(
        &self,
        prefix: &str,
        revision: Option<i64>,
        keys_only: bool,
    ) -> Result<Listing, StoreError> {
        let mut attempt = 1;
        loop {
            match self.pages(prefix, revision, keys_only).await {
                Err(StoreError::Compacted { revision: at, .. })
                    if revision.is_none() && attempt < LIST_ATTEMPTS =>
                {
                    info!(
                        prefix,
                        revision = at,
                        "etcd compacted during a listing; listing again"
                    );
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The current value of `keys`, read in one round trip before `deadline`.
    async fn read_back(
        &self,
        keys: &[String],
        deadline: Instant,
    ) -> Result<Vec<(String, Option<Kv>)>, Failed> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let gets: Vec<TxnOp> = keys.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
        let request = EtcdTxn::new().and_then(gets);
        let resp = self
            .run(deadline, Replay::Safe, |mut c| {
                let r = request.clone();
                async move { c.txn(r).await }
            })
            .await?;
        Ok(pair_reads(keys.to_vec(), &resp))
    }
}

fn tls_options(config: &EtcdConfig) -> Result<Option<TlsOptions>, StoreError> {
    let read = |what: &'static str, path: &String| {
        std::fs::read(path).map_err(|source| StoreError::TlsFile {
            what,
            path: path.clone(),
            source,
        })
    };
    let uses_tls = config.endpoints.iter().any(|e| e.starts_with("https://"));
    if !uses_tls && config.ca_file.is_none() && config.cert_file.is_none() {
        return Ok(None);
    }
    let mut tls = TlsOptions::new();
    if let Some(ca) = &config.ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read("CA", ca)?));
    }
    if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
        tls = tls.identity(Identity::from_pem(read("cert", cert)?, read("key", key)?));
    }
    Ok(Some(tls))
}

fn to_kv(kv: &KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
    }
}

/// [`to_kv`] without copying: a listing moves each page's buffers into its records.
fn into_kv(kv: KeyValue) -> Kv {
    let mod_revision = kv.mod_revision();
    let (key, value) = kv.into_key_value();
    let key = String::from_utf8(key)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    Kv {
        key,
        value,
        mod_revision,
    }
}

/// Pair each key with the result of the get op at the same position.
fn pair_reads(keys: Vec<String>, resp: &TxnResponse) -> Vec<(String, Option<Kv>)> {
    keys.into_iter()
        .zip(resp.op_responses())
        .map(|(key, r)| {
            let kv = match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(to_kv),
                _ => None,
            };
            (key, kv)
        })
        .collect()
}

fn to_etcd_txn(txn: &Txn) -> EtcdTxn {
    let compares: Vec<EtcdCompare> = txn
        .compares
        .iter()
        .map(|c| match c {
            // A missing key has mod_revision 0, so `== 0` is "still absent".
            Compare::ModRevision { key, revision } => {
                EtcdCompare::mod_revision(key.as_str(), CompareOp::Equal, *revision)
            }
        })
        .collect();
    let ops: Vec<TxnOp> = txn
        .ops
        .iter()
        .map(|op| match op {
            Op::Put { key, value } => TxnOp::put(key.as_str(), value.clone(), None),
            Op::Delete { key } => TxnOp::delete(key.as_str(), None),
        })
        .collect();
    let reads: Vec<TxnOp> = txn
        .read_on_conflict
        .iter()
        .map(|k| TxnOp::get(k.as_str(), None))
        .collect();
    EtcdTxn::new().when(compares).and_then(ops).or_else(reads)
}

impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        let resp = self
            .read(|mut c| {
                let key = key.to_string();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(resp.kvs().first().map(to_kv))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Kv>, StoreError> {
        Ok(self.listing(prefix, None, false).await?.kvs)
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let listing = self.listing(prefix, None, true).await?;
        Ok(listing.kvs.into_iter().map(|kv| kv.key).collect())
    }

    async fn list_at(&self, prefix: &str, revision: Option<i64>) -> Result<Listing, StoreError> {
        self.listing(prefix, revision, false).await
    }

    fn watch(&self, prefix: &str, start_revision: i64) -> Watch {
        watch::spawn(self.clone(), prefix.to_string(), start_revision)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        refuse_oversized(&txn)?;
        let request = to_etcd_txn(&txn);
        // Without compares a transaction is a plain write: repeating it writes the same
        // values again. With compares, a repeat after an unknown outcome could apply
        // twice or be misreported, so that case re-reads instead.
        let replay = if txn.compares.is_empty() {
            Replay::Safe
        } else {
            Replay::Unsafe
        };
        let deadline = crate::budget::deadline_after(FAILOVER_BUDGET);
        let sent = self
            .run(deadline, replay, |mut c| {
                let r = request.clone();
                async move { c.txn(r).await }
            })
            .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(Failed::Store(e)) => return Err(e),
            Err(Failed::Ambiguous { detail }) => {
                info!(%detail, "etcd transaction outcome unknown; re-reading");
                let unknown = |why: String| {
                    failover::unreachable(
                        &self.endpoints,
                        format!("transaction outcome unknown after {detail}; {why}"),
                    )
                };
                return match self.read_back(&txn.read_on_conflict, deadline).await {
                    // Reported as a conflict: the caller re-reads and retries, and an
                    // allocation that did land is found under its handle.
                    Ok(current) => Ok(TxnOutcome::Conflict { current }),
                    Err(Failed::Store(StoreError::Unreachable { detail, .. })) => {
                        Err(unknown(detail))
                    }
                    Err(Failed::Store(e)) => Err(e),
                    Err(Failed::Ambiguous { detail }) => Err(unknown(detail)),
                };
            }
        };
        if resp.succeeded() {
            let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            return Ok(TxnOutcome::Committed { revision });
        }
        Ok(TxnOutcome::Conflict {
            current: pair_reads(txn.read_on_conflict, &resp),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_debug_redacts_the_password() {
        let c = EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            username: Some("root".into()),
            password: Some("hunter2".into()),
            ..Default::default()
        };
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("<redacted>") && shown.contains("root"),
            "{shown}"
        );
        let none = format!("{:?}", EtcdConfig::default());
        assert!(none.contains("password: None"), "{none}");
    }

    /// The size is checked before any connection: with nothing listening, an oversized
    /// write is still refused at once for its size, not reported as unreachable.
    #[tokio::test]
    async fn an_oversized_record_is_never_sent() {
        let store = EtcdStore::connect(&EtcdConfig {
            endpoints: vec!["http://127.0.0.1:9".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        let txn = Txn {
            ops: vec![Op::Put {
                key: "/b/v1/endpoints/n1/e1".into(),
                value: vec![b'x'; crate::store::MAX_RECORD_BYTES + 10],
            }],
            ..Txn::default()
        };
        let started = Instant::now();
        let err = store.txn(txn).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::RecordTooLarge { key, .. } if key == "/b/v1/endpoints/n1/e1"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
