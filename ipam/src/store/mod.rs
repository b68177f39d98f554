//! The key-value store IPAM runs on: etcd v3 in production, an in-process map with the same
//! compare-and-swap semantics for fast unit tests.
//!
//! Every write goes through [`Store::txn`]: a list of revision compares, the writes to apply
//! when all compares hold, and the keys to read back in the same round trip when one does
//! not, so a conflicting writer costs no extra read.
//!
//! Reads of a whole prefix are paginated (at most [`DEFAULT_PAGE_SIZE`] keys per
//! request, all pages at the revision of the first), so a listing never exceeds etcd's response
//! limit and is still consistent. [`Store::list_at`] returns that revision, and
//! [`Store::watch`] follows changes from the next one: load-then-watch without a gap.

mod etcd;
mod memory;
mod watch;

use std::future::Future;
use std::time::Duration;

pub use etcd::{EtcdConfig, EtcdStore, MemberClient};
pub use memory::{MemoryStore, WritesHeld};
pub use watch::{Watch, WatchBatch, WatchEvent};

/// Largest value written or decoded: etcd's default request limit
/// (`--max-request-bytes`, 1.5 MiB), so every record brindle writes fits a default
/// etcd, and a value another tool stored beyond it is refused before any parsing.
pub const MAX_RECORD_BYTES: usize = 3 << 19;

/// How long any single store request may take before the store counts as unreachable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How many keys one listing request returns at most (`with_page_size` changes it).
/// The etcd store sizes its pages by the bytes of the records it reads, within this
/// bound: a page of the largest records stays far below etcd's 4 MiB response limit,
/// and 100,000 small records (handles) take about ten round trips.
pub const DEFAULT_PAGE_SIZE: usize = 10_000;

/// One stored key with the revision of its last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    /// etcd `mod_revision`: the store revision of the last write of this key.
    pub mod_revision: i64,
}

/// The keys under a prefix as of one store revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The store revision the listing reflects: every write up to it, none after.
    /// Watching from `revision + 1` continues it without a gap.
    pub revision: i64,
    /// The keys, sorted, each exactly once.
    pub kvs: Vec<Kv>,
}

/// A precondition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's last write happened at exactly this revision; `0` means "the key is absent".
    ModRevision { key: String, revision: i64 },
}

impl Compare {
    /// The key must still be as we read it (`None` = it must still be absent).
    pub fn unchanged(key: impl Into<String>, read: Option<i64>) -> Self {
        Compare::ModRevision {
            key: key.into(),
            revision: read.unwrap_or(0),
        }
    }
}

/// A write applied when every compare of a transaction holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

/// An atomic compare-and-swap over several keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
    /// Keys read back, in the same round trip, when a compare fails.
    pub read_on_conflict: Vec<String>,
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// All compares held and the writes were applied at this store revision.
    Committed { revision: i64 },
    /// A compare failed; nothing was written. Holds the current value of each
    /// `read_on_conflict` key (`None` = absent), in the order asked.
    Conflict { current: Vec<(String, Option<Kv>)> },
}

/// Errors of the store itself (not of IPAM logic).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot reach etcd at {endpoints} within {}s ({detail}); check --etcd-endpoints or BRINDLE_ETCD_ENDPOINTS", timeout.as_secs())]
    Unreachable {
        endpoints: String,
        timeout: Duration,
        detail: String,
    },
    #[error("etcd at {endpoints} refused the request: {source}")]
    Etcd {
        endpoints: String,
        #[source]
        source: Box<etcd_client::Error>,
    },
    #[error("cannot read etcd {what} file {path}: {source}")]
    TlsFile {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid etcd endpoint {0:?}: expected http://HOST:PORT or https://HOST:PORT")]
    BadEndpoint(String),
    /// A write of a value larger than any record may be ([`MAX_RECORD_BYTES`]):
    /// refused before it is sent, since etcd would refuse it with an opaque error (or,
    /// with a larger request limit, store a record no reader decodes).
    #[error("record {key} would be {size} bytes long, more than the {limit} bytes a record may have; nothing was written")]
    RecordTooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
    /// The history at `revision` was compacted away: read the state again at the
    /// current revision (and watch from there).
    #[error("store revision {revision} was compacted (history is kept from revision {compacted} on); load the state again")]
    Compacted {
        /// The revision asked for.
        revision: i64,
        /// The oldest revision still available (0 when the store did not say).
        compacted: i64,
    },
}

/// The operations IPAM needs from a key-value store.
pub trait Store: Send + Sync + 'static {
    /// The current value of one key.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Kv>, StoreError>> + Send;
    /// Every key under a prefix, with values, sorted by key: one consistent listing,
    /// read page by page (see [`Store::list_at`]).
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<Kv>, StoreError>> + Send;
    /// Every key under a prefix, without values, sorted; paginated and consistent as
    /// [`Store::list`].
    fn list_keys(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// Every key under a prefix as of one revision: `Some(r)` reads at revision `r`
    /// (several prefixes read at one revision form one consistent view), `None` at the
    /// current one, which the listing reports. Read in pages of the store's page size,
    /// each page at the revision of the first, so every key present at that revision
    /// is listed exactly once however many writes happen meanwhile.
    ///
    /// [`StoreError::Compacted`] when `r` is no longer available (with `None`, only
    /// if compaction overtook the listing several times in a row).
    fn list_at(
        &self,
        prefix: &str,
        revision: Option<i64>,
    ) -> impl Future<Output = Result<Listing, StoreError>> + Send;
    /// Follow every change under `prefix` from `start_revision` on (events of that
    /// revision included): batches in revision order, each revision's events whole in
    /// one batch. The store keeps the watch going across member failures and
    /// outages, resuming after the last revision delivered. The stream ends after an
    /// error item: [`StoreError::Compacted`] when the next revision to deliver is no
    /// longer in the history (the consumer loads again and watches from there).
    /// Call within a Tokio runtime; dropping the [`Watch`] stops it.
    fn watch(&self, prefix: &str, start_revision: i64) -> Watch;
    /// Apply a transaction atomically. A write of a value larger than
    /// [`MAX_RECORD_BYTES`] is refused ([`StoreError::RecordTooLarge`]), nothing sent.
    fn txn(&self, txn: Txn) -> impl Future<Output = Result<TxnOutcome, StoreError>> + Send;
}

/// Refuse a transaction writing a value larger than [`MAX_RECORD_BYTES`], before
/// anything of it is sent: both stores call this first.
pub(crate) fn refuse_oversized(txn: &Txn) -> Result<(), StoreError> {
    let too_large = txn.ops.iter().find_map(|op| match op {
        Op::Put { key, value } if value.len() > MAX_RECORD_BYTES => Some((key, value.len())),
        _ => None,
    });
    match too_large {
        Some((key, size)) => Err(StoreError::RecordTooLarge {
            key: key.clone(),
            size,
            limit: MAX_RECORD_BYTES,
        }),
        None => Ok(()),
    }
}

/// The first key after every key that starts with `prefix` (etcd's range end for a
/// prefix); `[0]` (no upper bound) when there is none.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
