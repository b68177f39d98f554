//! The allocator: dynamic and fixed addresses owned by handles, and their release.
//!
//! Every write is one store transaction that compares the revisions it read (the pool,
//! the block, the handle) and reads them back in the same round trip when a compare
//! fails. With the node's blocks cached, a steady-state allocation or release costs one
//! round trip. Correctness between processes and hosts rests on the compares alone.
//! Within one process, a transaction holds the lock of the block it writes (never a
//! lock over the whole allocator), so requests on different blocks run side by side,
//! requests on one block take turns instead of losing compares to each other, and
//! when etcd fails the request holding a block's lock, those queued behind it fail
//! with it at once ([`crate::locks`]) rather than each waiting out its own timeout.
//!
//! - `cache.rs`: what this process has read (pools, claimed blocks, a node's
//!   affinities, handles), how it is filled and refreshed after a conflict;
//! - `plan.rs`: choosing the address from the cache (fixed, or the node's blocks, a
//!   new claim, a borrowed block);
//! - `txn.rs`: the transactions (allocate, release, attributes) and their retry loops.

mod cache;
mod plan;
mod txn;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use futures::future::BoxFuture;
use ipnetwork::Ipv4Network;
use std::sync::Mutex;

use crate::locks::KeyedLocks;
use crate::state::Keys;
use crate::store::{Op, Store};

use cache::Cache;

/// What a caller asks for.
#[derive(Debug, Clone, Default)]
pub struct AllocRequest {
    /// The owner; asking again with the same handle returns the same address.
    pub handle: String,
    /// The node that will hold the address.
    pub node: String,
    /// A fixed address, or `None` for a dynamic one.
    pub ip: Option<Ipv4Addr>,
    /// Restrict to one pool (dynamic) or check the fixed address is inside it.
    pub pool: Option<String>,
    /// Dynamic requests only: take the address from this CIDR (Docker's `--ip-range`,
    /// or a `--subnet` narrower than its pool), through the same steps as without it
    /// (the node's blocks, a new claim, a borrow) limited to the blocks it touches.
    /// Every address of it may be handed out but the pool's own network/broadcast and
    /// reserved ones; a fixed `ip` outside it is still allowed.
    pub range: Option<Ipv4Network>,
    /// Dynamic requests only: addresses never to hand out (the network and broadcast
    /// addresses of a Docker subnet narrower than its pool).
    pub exclude: BTreeSet<Ipv4Addr>,
    /// Owner attributes stored with the allocation (`node` is added).
    pub attrs: BTreeMap<String, String>,
}

/// An address handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub ip: Ipv4Addr,
    pub pool: String,
    pub pool_cidr: Ipv4Network,
    pub block: Ipv4Network,
    /// True when the handle already held this address (a repeated request).
    pub existing: bool,
}

/// Writes that commit with an allocation, given the address it assigns; see
/// [`Ipam::allocate_with`].
pub type AlsoWrite<'a> = dyn Fn(&Assigned) -> Vec<Op> + Send + Sync + 'a;

/// Work that runs while an allocation's transaction is in flight, given the address
/// the transaction assigns; see [`Ipam::allocate_alongside`].
pub type Alongside<'a> = dyn Fn(Assigned) -> BoxFuture<'a, ()> + Send + Sync + 'a;

/// The IPAM service over a store.
pub struct Ipam<S: Store> {
    store: S,
    keys: Keys,
    cache: Mutex<Cache>,
    blocks: KeyedLocks<BlockLock>,
}

/// The key of a block's lock (shown in a timeout as "block CIDR").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct BlockLock(Ipv4Network);

impl std::fmt::Display for BlockLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "block {}", self.0)
    }
}

impl<S: Store> Ipam<S> {
    pub fn new(store: S, prefix: &str) -> Self {
        Self {
            store,
            keys: Keys::new(prefix),
            cache: Mutex::new(Cache::default()),
            blocks: KeyedLocks::default(),
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Drop everything cached (after a watch reports outside changes, for instance);
    /// reservations stay, being this process's own decisions.
    pub async fn invalidate(&self) {
        let mut cache = self.cache();
        let reserved = std::mem::take(&mut cache.reserved);
        *cache = Cache {
            reserved,
            ..Cache::default()
        };
    }
}

#[cfg(test)]
mod range_tests;
