//! The allocator's cache: what this process has read (pools, claimed blocks, a node's
//! affinities, handles), how it is filled from the store and refreshed after conflicts.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::MutexGuard;

use ipnetwork::Ipv4Network;

use crate::error::IpamError;
use crate::model::{Block, HandleRecord, Pool};
use crate::state::Keys;
use crate::state::{decode, read, read_all, Versioned};
use crate::store::{Kv, Store};

use super::Ipam;

/// What this process has read, each with the revision it was read at. Any entry may be
/// stale: the transactions' compares catch that, and conflicts refresh it.
#[derive(Default)]
pub(super) struct Cache {
    pub(super) pools: Option<Vec<Versioned<Pool>>>,
    pub(super) blocks: HashMap<Ipv4Network, Versioned<Block>>,
    /// Blocks known to exist (claimed by anyone), from one keys-only listing.
    pub(super) claimed: Option<HashSet<Ipv4Network>>,
    /// Nodes whose affinities have been listed, and their blocks.
    pub(super) affine: HashMap<String, BTreeSet<Ipv4Network>>,
    pub(super) handles: HashMap<String, Versioned<HandleRecord>>,
    /// Addresses handed out but not allocated yet ([`Ipam::reserve_in_own_blocks`]):
    /// dynamic plans pass them by.
    pub(super) reserved: BTreeSet<Ipv4Addr>,
    /// Blocks the caller expects this process to need ([`Ipam::expect_blocks`]), read
    /// beside its first read.
    pub(super) expected: Vec<Ipv4Network>,
}

impl Cache {
    pub(super) fn forget_block(&mut self, cidr: Ipv4Network) {
        self.blocks.remove(&cidr);
        if let Some(claimed) = self.claimed.as_mut() {
            claimed.remove(&cidr);
        }
        for set in self.affine.values_mut() {
            set.remove(&cidr);
        }
    }

    /// Note a block as read at its revision; a copy read earlier than the one cached
    /// (a slow read racing this process's own commit) is ignored.
    pub(super) fn learn_block(&mut self, block: Versioned<Block>) {
        let cidr = block.value.cidr;
        if self
            .blocks
            .get(&cidr)
            .is_some_and(|b| b.revision > block.revision)
        {
            return;
        }
        if let Some(claimed) = self.claimed.as_mut() {
            claimed.insert(cidr);
        }
        for (node, set) in self.affine.iter_mut() {
            if block.value.affinity.as_deref() == Some(node.as_str()) {
                set.insert(cidr);
            } else {
                set.remove(&cidr);
            }
        }
        self.blocks.insert(cidr, block);
    }

    /// Bound the handle cache of a long-lived agent.
    pub(super) fn remember_handle(&mut self, id: &str, record: Versioned<HandleRecord>) {
        if self.handles.len() >= 65_536 {
            self.handles.clear();
        }
        self.handles.insert(id.to_string(), record);
    }
}

impl<S: Store> Ipam<S> {
    /// The cache, for a few map operations at a time: never held across a store call,
    /// so one slow request does not hold up the others.
    pub(super) fn cache(&self) -> MutexGuard<'_, Cache> {
        // Every critical section is a few map operations: a panic cannot leave it
        // half-done, so a poisoned lock is still consistent.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pools a dynamic request may use.
    pub(super) async fn candidate_pools(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<Versioned<Pool>>, IpamError> {
        if let Some(name) = name {
            let pool = self.named_pool(name).await?;
            if pool.value.deleting {
                return Err(IpamError::PoolDeleting(pool.value.name));
            }
            if pool.value.disabled {
                return Err(IpamError::PoolDisabled(pool.value.name));
            }
            return Ok(vec![pool]);
        }
        let mut enabled = self.enabled().await?;
        if enabled.is_empty() {
            // A pool may have been added since we cached the list.
            self.forget_pools();
            enabled = self.enabled().await?;
        }
        if enabled.is_empty() {
            return Err(IpamError::NoPools);
        }
        Ok(enabled)
    }

    pub(super) async fn enabled(&self) -> Result<Vec<Versioned<Pool>>, IpamError> {
        let mut pools = self.pools().await?;
        pools.retain(|p| !p.value.disabled && !p.value.deleting);
        Ok(pools)
    }

    /// Every pool, from the cache or listed once.
    pub(super) async fn pools(&self) -> Result<Vec<Versioned<Pool>>, IpamError> {
        let cached = self.cache().pools.clone();
        if let Some(pools) = cached {
            return Ok(pools);
        }
        let listed = self.store.list(&self.keys.pools()).await?;
        let pools = listed.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        self.cache().pools = Some(pools.clone());
        Ok(pools)
    }

    pub(super) fn forget_pools(&self) {
        self.cache().pools = None;
    }

    pub(super) async fn named_pool(&self, name: &str) -> Result<Versioned<Pool>, IpamError> {
        for refresh in [false, true] {
            if refresh {
                self.forget_pools();
            }
            if let Some(p) = self
                .pools()
                .await?
                .into_iter()
                .find(|p| p.value.name == name)
            {
                return Ok(p);
            }
        }
        let existing = pool_names(&self.pools().await?);
        Err(IpamError::PoolNotFound {
            name: name.to_string(),
            existing,
        })
    }

    pub(super) async fn pool_containing(&self, ip: Ipv4Addr) -> Result<Versioned<Pool>, IpamError> {
        for refresh in [false, true] {
            if refresh {
                self.forget_pools();
            }
            if let Some(p) = self
                .pools()
                .await?
                .into_iter()
                .find(|p| p.value.cidr.contains(ip))
            {
                return Ok(p);
            }
        }
        let pools = pool_cidrs(&self.pools().await?);
        Err(IpamError::NotInAnyPool { ip, pools })
    }

    /// List a node's affinities once and read the blocks behind them (those expected
    /// already read beside the listing).
    pub(super) async fn load_node(&self, node: &str) -> Result<(), IpamError> {
        if self.cache().affine.contains_key(node) {
            return Ok(());
        }
        let keys = self
            .beside_expected(self.store.list_keys(&self.keys.node_affinities(node)))
            .await?;
        let cidrs: Vec<_> = keys
            .iter()
            .filter_map(|key| self.keys.parse_affinity(key).map(|(_, cidr)| cidr))
            .collect();
        // The blocks not cached yet, their reads in flight together.
        let missing: Vec<_> = {
            let cache = self.cache();
            cidrs
                .iter()
                .copied()
                .filter(|cidr| !cache.blocks.contains_key(cidr))
                .collect()
        };
        let read =
            futures::future::try_join_all(missing.iter().map(|c| self.read_block(*c))).await?;
        let mut cache = self.cache();
        for b in read.into_iter().flatten() {
            cache.learn_block(b);
        }
        let set: BTreeSet<_> = cidrs
            .into_iter()
            .filter(|cidr| {
                cache
                    .blocks
                    .get(cidr)
                    .is_some_and(|b| b.value.affinity.as_deref() == Some(node))
            })
            .collect();
        cache.affine.insert(node.to_string(), set);
        Ok(())
    }

    /// List which blocks exist, once.
    pub(super) async fn load_claimed(&self) -> Result<(), IpamError> {
        if self.cache().claimed.is_some() {
            return Ok(());
        }
        let keys = self.store.list_keys(&self.keys.blocks()).await?;
        let mut claimed: HashSet<Ipv4Network> =
            keys.iter().filter_map(|k| Keys::cidr_of(k)).collect();
        let mut cache = self.cache();
        claimed.extend(cache.blocks.keys().copied());
        cache.claimed = Some(claimed);
        Ok(())
    }

    /// The blocks a short-lived process expects to need (the CNI plugin's direct path
    /// remembers its node's blocks between runs): the next read that needs a round
    /// trip anyway (a node's affinities, a handle) reads them beside it, so a cold
    /// process does not wait for a second round trip to learn them. A wrong guess costs
    /// one read and changes nothing: the blocks read are as fresh as any read.
    pub fn expect_blocks(&self, cidrs: impl IntoIterator<Item = Ipv4Network>) {
        self.cache().expected = cidrs.into_iter().collect();
    }

    /// The blocks of `node` as this process last listed and wrote them, without a round
    /// trip; `None` when it has not listed the node's affinities.
    pub fn cached_node_blocks(&self, node: &str) -> Option<Vec<Ipv4Network>> {
        self.cache()
            .affine
            .get(node)
            .map(|set| set.iter().copied().collect())
    }

    /// `first`, with the expected blocks not cached yet read beside it. A failed read
    /// of an expected block is left to whoever needs that block.
    pub(super) async fn beside_expected<T, E>(
        &self,
        first: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let expected: Vec<Ipv4Network> = {
            let mut cache = self.cache();
            let expected = std::mem::take(&mut cache.expected);
            expected
                .into_iter()
                .filter(|cidr| !cache.blocks.contains_key(cidr))
                .collect()
        };
        if expected.is_empty() {
            return first.await;
        }
        let (result, blocks) = futures::join!(
            first,
            futures::future::join_all(expected.iter().map(|cidr| self.read_block(*cidr)))
        );
        let mut cache = self.cache();
        for block in blocks.into_iter().flatten().flatten() {
            cache.learn_block(block);
        }
        result
    }

    pub(super) async fn read_block(
        &self,
        cidr: Ipv4Network,
    ) -> Result<Option<Versioned<Block>>, IpamError> {
        Ok(read(&self.store, &self.keys.block(cidr)).await?)
    }

    pub(super) async fn read_all_blocks(&self) -> Result<Vec<Versioned<Block>>, IpamError> {
        Ok(read_all(&self.store, &self.keys.blocks()).await?)
    }

    /// Refresh the cache from the values a failed transaction read back.
    pub(super) fn absorb(
        &self,
        handle: &str,
        current: Vec<(String, Option<Kv>)>,
    ) -> Result<(), IpamError> {
        let handle_key = self.keys.handle(handle);
        let mut decoded = Vec::new();
        for (key, kv) in current {
            if key == handle_key {
                decoded.push(Fresh::Handle(kv.as_ref().map(decode).transpose()?));
            } else if let Some(cidr) = Keys::cidr_of(&key) {
                decoded.push(Fresh::Block(cidr, kv.as_ref().map(decode).transpose()?));
            }
        }
        let mut cache = self.cache();
        for fresh in decoded {
            match fresh {
                Fresh::Handle(Some(record)) => cache.remember_handle(handle, record),
                Fresh::Handle(None) => {
                    cache.handles.remove(handle);
                }
                Fresh::Block(_, Some(block)) => cache.learn_block(block),
                Fresh::Block(cidr, None) => cache.forget_block(cidr),
            }
        }
        Ok(())
    }

    pub(super) async fn read_handle(
        &self,
        id: &str,
    ) -> Result<Option<Versioned<HandleRecord>>, IpamError> {
        Ok(read(&self.store, &self.keys.handle(id)).await?)
    }
}

/// A record read back by a failed transaction.
enum Fresh {
    Handle(Option<Versioned<HandleRecord>>),
    Block(Ipv4Network, Option<Versioned<Block>>),
}

/// `p1 (10.0.0.0/24), p2 (10.1.0.0/24)`, or `none`.
pub(super) fn pool_cidrs(pools: &[Versioned<Pool>]) -> String {
    if pools.is_empty() {
        return "none".into();
    }
    pools
        .iter()
        .map(|p| format!("{} ({})", p.value.name, p.value.cidr))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn pool_names(pools: &[Versioned<Pool>]) -> String {
    if pools.is_empty() {
        return "none".into();
    }
    pools
        .iter()
        .map(|p| p.value.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
