//! The key-value store IPAM runs on: etcd v3 in production, an in-process map with the same
//! compare-and-swap semantics for fast unit tests.
//!
//! Every write goes through [`Store::txn`]: a list of revision compares, the writes to apply
//! when all compares hold, and the keys to read back in the same round trip when one does
//! not, so a conflicting writer costs no extra read.

mod etcd;
mod memory;

use std::future::Future;
use std::time::Duration;

pub use etcd::{EtcdConfig, EtcdStore, MemberClient};
pub use memory::MemoryStore;

/// How long any single store request may take before the store counts as unreachable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One stored key with the revision of its last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    /// etcd `mod_revision`: the store revision of the last write of this key.
    pub mod_revision: i64,
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
}

/// The operations IPAM needs from a key-value store.
pub trait Store: Send + Sync + 'static {
    /// The current value of one key.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Kv>, StoreError>> + Send;
    /// Every key under a prefix, with values, sorted by key.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<Kv>, StoreError>> + Send;
    /// Every key under a prefix, without values, sorted.
    fn list_keys(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// Apply a transaction atomically.
    fn txn(&self, txn: Txn) -> impl Future<Output = Result<TxnOutcome, StoreError>> + Send;
}
