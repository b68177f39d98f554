//! The allocator: dynamic and fixed addresses owned by handles, and their release.
//!
//! Every write is one store transaction that compares the revisions it read (the pool,
//! the block, the handle) and reads them back in the same round trip when a compare
//! fails. With the node's blocks cached, a steady-state allocation or release costs one
//! round trip. Operations of one `Ipam` are serialised by an in-process lock only to
//! avoid racing ourselves; correctness between processes and hosts rests on the
//! compares alone.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use rand::seq::SliceRandom;
use tokio::sync::Mutex;
use tracing::debug;

use crate::cidr::{
    block_count, block_of, blocks_touching, claim_start, is_pool_edge, next_free_in, nth_block,
    overlaps,
};
use crate::error::{validate_handle, validate_node_name, IpamError};
use crate::model::{Affinity, Allocation, Block, HandleRecord, Pool, ATTR_NODE};
use crate::state::Keys;
use crate::state::{backoff, cas_loop, read, read_all, Attempt, MAX_ATTEMPTS};
use crate::state::{decode, encode, Versioned};
use crate::store::{Compare, Kv, Op, Store, Txn, TxnOutcome};

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

/// The IPAM service over a store.
pub struct Ipam<S: Store> {
    store: S,
    keys: Keys,
    cache: Mutex<Cache>,
}

/// What this process has read, each with the revision it was read at. Any entry may be
/// stale: the transactions' compares catch that, and conflicts refresh it.
#[derive(Default)]
struct Cache {
    pools: Option<Vec<Versioned<Pool>>>,
    blocks: HashMap<Ipv4Network, Versioned<Block>>,
    /// Blocks known to exist (claimed by anyone), from one keys-only listing.
    claimed: Option<HashSet<Ipv4Network>>,
    /// Nodes whose affinities have been listed, and their blocks.
    affine: HashMap<String, BTreeSet<Ipv4Network>>,
    handles: HashMap<String, Versioned<HandleRecord>>,
}

impl Cache {
    fn forget_block(&mut self, cidr: Ipv4Network) {
        self.blocks.remove(&cidr);
        if let Some(claimed) = self.claimed.as_mut() {
            claimed.remove(&cidr);
        }
        for set in self.affine.values_mut() {
            set.remove(&cidr);
        }
    }

    fn learn_block(&mut self, block: Versioned<Block>) {
        let cidr = block.value.cidr;
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
    fn remember_handle(&mut self, id: &str, record: Versioned<HandleRecord>) {
        if self.handles.len() >= 65_536 {
            self.handles.clear();
        }
        self.handles.insert(id.to_string(), record);
    }
}

/// One planned allocation, ready to become a transaction.
struct Plan {
    pool: Versioned<Pool>,
    ip: Ipv4Addr,
    /// Revision the block was read at; `None` when the plan creates (claims) it.
    block_revision: Option<i64>,
    block: Block,
}

enum Planned {
    New(Plan),
    /// The handle already holds this address.
    Existing(Assigned),
}

impl<S: Store> Ipam<S> {
    pub fn new(store: S, prefix: &str) -> Self {
        Self {
            store,
            keys: Keys::new(prefix),
            cache: Mutex::new(Cache::default()),
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Drop everything cached (after a watch reports outside changes, for instance).
    pub async fn invalidate(&self) {
        *self.cache.lock().await = Cache::default();
    }

    /// Allocate an address for `req.handle`, or return the one it already holds.
    pub async fn allocate(&self, req: &AllocRequest) -> Result<Assigned, IpamError> {
        validate_handle(&req.handle)?;
        validate_node_name(&req.node)?;
        let mut cache = self.cache.lock().await;
        let mut refreshed = false;
        for attempt in 1..=MAX_ATTEMPTS {
            let plan = match self.plan(&mut cache, req).await {
                Ok(Planned::Existing(assigned)) => return Ok(assigned),
                Ok(Planned::New(plan)) => plan,
                // A long-lived cache may miss pools added since: look once more.
                Err(
                    IpamError::PoolExhausted { .. }
                    | IpamError::AllPoolsExhausted { .. }
                    | IpamError::RangeExhausted { .. },
                ) if !refreshed => {
                    refreshed = true;
                    cache.pools = None;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let handle_key = self.keys.handle(&req.handle);
            let block_key = self.keys.block(plan.block.cidr);
            let pool_key = self.keys.pool(&plan.pool.value.name);
            let mut ops = vec![
                Op::Put {
                    key: block_key.clone(),
                    value: encode(&plan.block),
                },
                Op::Put {
                    key: handle_key.clone(),
                    value: encode(&HandleRecord {
                        addresses: BTreeMap::from([(plan.ip, plan.block.cidr)]),
                    }),
                },
            ];
            if plan.block_revision.is_none() {
                ops.push(Op::Put {
                    key: self.keys.affinity(&req.node, plan.block.cidr),
                    value: encode(&Affinity::confirmed()),
                });
            }
            let txn = Txn {
                compares: vec![
                    Compare::unchanged(&pool_key, Some(plan.pool.revision)),
                    Compare::unchanged(&block_key, plan.block_revision),
                    Compare::unchanged(&handle_key, None),
                ],
                ops,
                read_on_conflict: vec![handle_key, block_key, pool_key],
            };
            match self.store.txn(txn).await? {
                TxnOutcome::Committed { revision } => {
                    let assigned = Assigned {
                        ip: plan.ip,
                        pool: plan.pool.value.name.clone(),
                        pool_cidr: plan.pool.value.cidr,
                        block: plan.block.cidr,
                        existing: false,
                    };
                    if plan.block_revision.is_none() {
                        cache
                            .affine
                            .entry(req.node.clone())
                            .or_default()
                            .insert(plan.block.cidr);
                    }
                    let handle = HandleRecord {
                        addresses: BTreeMap::from([(plan.ip, plan.block.cidr)]),
                    };
                    cache.learn_block(Versioned {
                        value: plan.block,
                        revision,
                    });
                    cache.remember_handle(
                        &req.handle,
                        Versioned {
                            value: handle,
                            revision,
                        },
                    );
                    debug!(ip = %assigned.ip, handle = %req.handle, node = %req.node, "allocated");
                    return Ok(assigned);
                }
                TxnOutcome::Conflict { current } => {
                    let mut current = current.into_iter().map(|(_, kv)| kv);
                    let (handle, block, pool) = (
                        current.next().flatten(),
                        current.next().flatten(),
                        current.next().flatten(),
                    );
                    if let Some(handle) = handle {
                        // The handle exists: a repeated request, answered from the
                        // record just read (never from a possibly stale cache).
                        let record: Versioned<HandleRecord> = decode(&handle)?;
                        let existing = self.existing_for(&mut cache, req, &record.value).await?;
                        cache.remember_handle(&req.handle, record);
                        if let Some(existing) = existing {
                            return Ok(existing);
                        }
                    }
                    // Our view of who claimed what was stale if a claim lost: list again
                    // once, rather than discovering other claims one round trip at a time.
                    if plan.block_revision.is_none() && block.is_some() {
                        cache.claimed = None;
                        cache.affine.remove(&req.node);
                    }
                    match block {
                        Some(kv) => cache.learn_block(decode(&kv)?),
                        None => cache.forget_block(plan.block.cidr),
                    }
                    if pool.map(|kv| kv.mod_revision) != Some(plan.pool.revision) {
                        cache.pools = None;
                    }
                    backoff(attempt).await;
                }
            }
        }
        Err(IpamError::Contention {
            attempts: MAX_ATTEMPTS,
        })
    }

    async fn plan(&self, cache: &mut Cache, req: &AllocRequest) -> Result<Planned, IpamError> {
        let mut attrs = req.attrs.clone();
        attrs.insert(ATTR_NODE.to_string(), req.node.clone());
        let allocation = Allocation {
            handle: req.handle.clone(),
            attrs,
        };
        match req.ip {
            Some(ip) => self.plan_fixed(cache, req, ip, allocation).await,
            None => self.plan_dynamic(cache, req, allocation).await,
        }
    }

    /// The answer to a repeated request: the address the handle holds, if it fits.
    async fn existing_for(
        &self,
        cache: &mut Cache,
        req: &AllocRequest,
        record: &HandleRecord,
    ) -> Result<Option<Assigned>, IpamError> {
        let Some((&held, &block)) = record.addresses.iter().next() else {
            return Ok(None);
        };
        let pools = self.pools(cache).await?;
        let pool = pools.iter().find(|p| p.value.cidr.contains(held));
        let wanted_other = match (req.ip, &req.pool, pool, req.range) {
            (Some(ip), _, _, _) if ip != held => Some(ip.to_string()),
            (_, Some(name), Some(p), _) if *name != p.value.name => {
                Some(format!("an address in pool {name}"))
            }
            (None, _, _, Some(range)) if !range.contains(held) => {
                Some(format!("an address in {range}"))
            }
            _ => None,
        };
        if let Some(wanted) = wanted_other {
            return Err(IpamError::HandleHoldsOther {
                handle: req.handle.clone(),
                held,
                wanted,
            });
        }
        Ok(pool.map(|p| Assigned {
            ip: held,
            pool: p.value.name.clone(),
            pool_cidr: p.value.cidr,
            block,
            existing: true,
        }))
    }

    async fn plan_fixed(
        &self,
        cache: &mut Cache,
        req: &AllocRequest,
        ip: Ipv4Addr,
        allocation: Allocation,
    ) -> Result<Planned, IpamError> {
        let pool = self.pool_containing(cache, ip).await?;
        if let Some(name) = &req.pool {
            if *name != pool.value.name {
                let wanted = self.named_pool(cache, name).await?;
                return Err(IpamError::NotInPool {
                    ip,
                    pool: name.clone(),
                    cidr: wanted.value.cidr,
                });
            }
        }
        if pool.value.deleting {
            return Err(IpamError::PoolDeleting(pool.value.name));
        }
        if is_pool_edge(pool.value.cidr, ip) {
            let what = if ip == pool.value.cidr.network() {
                "network"
            } else {
                "broadcast"
            };
            return Err(IpamError::PoolEdge {
                ip,
                pool: pool.value.name,
                what,
            });
        }
        if pool.value.reserved.contains(&ip) {
            return Err(IpamError::Reserved {
                ip,
                pool: pool.value.name,
            });
        }
        let cidr = block_of(&pool.value, ip);
        // A cached block that says the address is free is checked by the compare; one
        // that says it is taken could be stale, so that answer is read fresh.
        let current = match cache.blocks.get(&cidr) {
            Some(b) if !b.value.allocations.contains_key(&ip) => Some(b.clone()),
            _ => {
                let fresh = self.read_block(cidr).await?;
                match &fresh {
                    Some(b) => cache.learn_block(b.clone()),
                    None => cache.forget_block(cidr),
                }
                fresh
            }
        };
        let (mut block, revision) = match current {
            Some(b) => (b.value, Some(b.revision)),
            None => (
                Block {
                    cidr,
                    pool: pool.value.name.clone(),
                    affinity: Some(req.node.clone()),
                    allocations: BTreeMap::new(),
                    cursor: 0,
                },
                None,
            ),
        };
        if let Some(holder) = block.allocations.get(&ip) {
            if holder.handle == req.handle {
                return Ok(Planned::Existing(Assigned {
                    ip,
                    pool: pool.value.name.clone(),
                    pool_cidr: pool.value.cidr,
                    block: cidr,
                    existing: true,
                }));
            }
            return Err(IpamError::AddressTaken {
                ip,
                handle: holder.handle.clone(),
            });
        }
        block.allocations.insert(ip, allocation);
        Ok(Planned::New(Plan {
            pool,
            ip,
            block_revision: revision,
            block,
        }))
    }

    async fn plan_dynamic(
        &self,
        cache: &mut Cache,
        req: &AllocRequest,
        allocation: Allocation,
    ) -> Result<Planned, IpamError> {
        let mut pools = self.candidate_pools(cache, req.pool.as_deref()).await?;
        let scope = Scope {
            range: req.range,
            exclude: &req.exclude,
        };
        if let Some(range) = req.range {
            let all = pool_cidrs(&pools);
            pools.retain(|p| overlaps(p.value.cidr, range));
            if pools.is_empty() {
                return Err(IpamError::RangeOutsidePools { range, pools: all });
            }
        }
        self.load_node(cache, &req.node).await?;

        // 1. The node's own blocks (those the range touches).
        let own: Vec<Ipv4Network> = cache.affine[&req.node]
            .iter()
            .copied()
            .filter(|cidr| scope.touches(*cidr))
            .collect();
        for cidr in own {
            let Some(pool) = pools.iter().find(|p| p.value.cidr.contains(cidr.network())) else {
                continue;
            };
            if let Some(plan) = take_from(cache.blocks.get(&cidr), pool, &allocation, &scope) {
                return Ok(Planned::New(plan));
            }
        }

        // 2. Claim a block nobody has, in a node-specific order.
        self.load_claimed(cache).await?;
        for pool in &pools {
            if let Some(plan) = claim_new(cache, pool, &req.node, &allocation, &scope) {
                return Ok(Planned::New(plan));
            }
        }

        // 3. Borrow from another node's block; the listing also refreshes what is claimed.
        let all = self.read_all_blocks().await?;
        cache.claimed = Some(all.iter().map(|b| b.value.cidr).collect());
        for b in all {
            cache.learn_block(b);
        }
        for pool in &pools {
            if let Some(plan) = claim_new(cache, pool, &req.node, &allocation, &scope) {
                return Ok(Planned::New(plan));
            }
            let mut others: Vec<&Versioned<Block>> = cache
                .blocks
                .values()
                .filter(|b| pool.value.cidr.contains(b.value.cidr.network()))
                .filter(|b| b.value.affinity.as_deref() != Some(req.node.as_str()))
                .filter(|b| scope.touches(b.value.cidr))
                .collect();
            others.shuffle(&mut rand::rng());
            for block in others {
                if let Some(plan) = take_from(Some(block), pool, &allocation, &scope) {
                    return Ok(Planned::New(plan));
                }
            }
        }
        Err(match req.range {
            Some(range) => IpamError::RangeExhausted {
                range,
                pools: pools
                    .iter()
                    .map(|p| p.value.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
            None => exhausted(&pools),
        })
    }

    /// Pools a dynamic request may use.
    async fn candidate_pools(
        &self,
        cache: &mut Cache,
        name: Option<&str>,
    ) -> Result<Vec<Versioned<Pool>>, IpamError> {
        if let Some(name) = name {
            let pool = self.named_pool(cache, name).await?;
            if pool.value.deleting {
                return Err(IpamError::PoolDeleting(pool.value.name));
            }
            if pool.value.disabled {
                return Err(IpamError::PoolDisabled(pool.value.name));
            }
            return Ok(vec![pool]);
        }
        let mut enabled = self.enabled(cache).await?;
        if enabled.is_empty() {
            // A pool may have been added since we cached the list.
            cache.pools = None;
            enabled = self.enabled(cache).await?;
        }
        if enabled.is_empty() {
            return Err(IpamError::NoPools);
        }
        Ok(enabled)
    }

    async fn enabled(&self, cache: &mut Cache) -> Result<Vec<Versioned<Pool>>, IpamError> {
        Ok(self
            .pools(cache)
            .await?
            .iter()
            .filter(|p| !p.value.disabled && !p.value.deleting)
            .cloned()
            .collect())
    }

    async fn pools<'c>(&self, cache: &'c mut Cache) -> Result<&'c [Versioned<Pool>], IpamError> {
        if cache.pools.is_none() {
            let listed = self.store.list(&self.keys.pools()).await?;
            let pools = listed.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
            cache.pools = Some(pools);
        }
        Ok(cache.pools.as_deref().unwrap_or_default())
    }

    async fn named_pool(
        &self,
        cache: &mut Cache,
        name: &str,
    ) -> Result<Versioned<Pool>, IpamError> {
        for refresh in [false, true] {
            if refresh {
                cache.pools = None;
            }
            if let Some(p) = self
                .pools(cache)
                .await?
                .iter()
                .find(|p| p.value.name == name)
            {
                return Ok(p.clone());
            }
        }
        let existing = pool_names(self.pools(cache).await?);
        Err(IpamError::PoolNotFound {
            name: name.to_string(),
            existing,
        })
    }

    async fn pool_containing(
        &self,
        cache: &mut Cache,
        ip: Ipv4Addr,
    ) -> Result<Versioned<Pool>, IpamError> {
        for refresh in [false, true] {
            if refresh {
                cache.pools = None;
            }
            if let Some(p) = self
                .pools(cache)
                .await?
                .iter()
                .find(|p| p.value.cidr.contains(ip))
            {
                return Ok(p.clone());
            }
        }
        let pools = pool_cidrs(self.pools(cache).await?);
        Err(IpamError::NotInAnyPool { ip, pools })
    }

    /// List a node's affinities once and read the blocks behind them.
    async fn load_node(&self, cache: &mut Cache, node: &str) -> Result<(), IpamError> {
        if cache.affine.contains_key(node) {
            return Ok(());
        }
        let keys = self
            .store
            .list_keys(&self.keys.node_affinities(node))
            .await?;
        let mut set = BTreeSet::new();
        for key in keys {
            let Some((_, cidr)) = self.keys.parse_affinity(&key) else {
                continue;
            };
            if !cache.blocks.contains_key(&cidr) {
                match self.read_block(cidr).await? {
                    Some(b) => cache.learn_block(b),
                    None => continue,
                }
            }
            if cache.blocks[&cidr].value.affinity.as_deref() == Some(node) {
                set.insert(cidr);
            }
        }
        cache.affine.insert(node.to_string(), set);
        Ok(())
    }

    async fn load_claimed(&self, cache: &mut Cache) -> Result<(), IpamError> {
        if cache.claimed.is_none() {
            let keys = self.store.list_keys(&self.keys.blocks()).await?;
            let mut claimed: HashSet<Ipv4Network> =
                keys.iter().filter_map(|k| Keys::cidr_of(k)).collect();
            claimed.extend(cache.blocks.keys().copied());
            cache.claimed = Some(claimed);
        }
        Ok(())
    }

    async fn read_block(&self, cidr: Ipv4Network) -> Result<Option<Versioned<Block>>, IpamError> {
        Ok(read(&self.store, &self.keys.block(cidr)).await?)
    }

    async fn read_all_blocks(&self) -> Result<Vec<Versioned<Block>>, IpamError> {
        Ok(read_all(&self.store, &self.keys.blocks()).await?)
    }

    /// Release every address a handle holds. Releasing an unknown handle is not an
    /// error (idempotent): the result is then empty.
    pub async fn release_handle(&self, handle: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
        validate_handle(handle)?;
        let mut cache = self.cache.lock().await;
        for attempt in 1..=MAX_ATTEMPTS {
            let record = match cache.handles.get(handle) {
                Some(r) => Some(r.clone()),
                None => self.read_handle(handle).await?,
            };
            let Some(record) = record else {
                return Ok(Vec::new());
            };
            let ips: BTreeSet<Ipv4Addr> = record.value.addresses.keys().copied().collect();
            let blocks: BTreeSet<Ipv4Network> = record.value.addresses.values().copied().collect();
            if self
                .release_txn(&mut cache, handle, Some(&record), &ips, &blocks)
                .await?
            {
                return Ok(ips.into_iter().collect());
            }
            backoff(attempt).await;
        }
        Err(IpamError::Contention {
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Release one address, whoever holds it. Returns the handle that held it, or `None`
    /// when it was not allocated.
    pub async fn release_ip(&self, ip: Ipv4Addr) -> Result<Option<String>, IpamError> {
        let mut cache = self.cache.lock().await;
        for attempt in 1..=MAX_ATTEMPTS {
            let pool = self.pool_containing(&mut cache, ip).await?;
            let cidr = block_of(&pool.value, ip);
            let Some(block) = self.read_block(cidr).await? else {
                return Ok(None);
            };
            let Some(holder) = block.value.allocations.get(&ip).map(|a| a.handle.clone()) else {
                return Ok(None);
            };
            cache.learn_block(block);
            let record = self.read_handle(&holder).await?;
            let ips = BTreeSet::from([ip]);
            let blocks = BTreeSet::from([cidr]);
            if self
                .release_txn(&mut cache, &holder, record.as_ref(), &ips, &blocks)
                .await?
            {
                return Ok(Some(holder));
            }
            backoff(attempt).await;
        }
        Err(IpamError::Contention {
            attempts: MAX_ATTEMPTS,
        })
    }

    /// One release attempt: remove `ips` (held by `handle`) from their blocks and from
    /// the handle record, deleting blocks that become empty along with their affinity.
    /// Returns false after a conflict (caches refreshed; the caller retries).
    async fn release_txn(
        &self,
        cache: &mut Cache,
        handle: &str,
        record: Option<&Versioned<HandleRecord>>,
        ips: &BTreeSet<Ipv4Addr>,
        blocks: &BTreeSet<Ipv4Network>,
    ) -> Result<bool, IpamError> {
        let handle_key = self.keys.handle(handle);
        let mut compares = vec![Compare::unchanged(&handle_key, record.map(|r| r.revision))];
        let mut ops = Vec::new();
        let mut after: Vec<(Ipv4Network, Option<Block>)> = Vec::new();
        for &cidr in blocks {
            let current = match cache.blocks.get(&cidr) {
                Some(b) => Some(b.clone()),
                None => self.read_block(cidr).await?,
            };
            let block_key = self.keys.block(cidr);
            compares.push(Compare::unchanged(
                &block_key,
                current.as_ref().map(|b| b.revision),
            ));
            let Some(mut block) = current.map(|b| b.value) else {
                continue;
            };
            block
                .allocations
                .retain(|ip, a| !(ips.contains(ip) && a.handle == handle));
            if block.allocations.is_empty() {
                ops.push(Op::Delete { key: block_key });
                if let Some(node) = &block.affinity {
                    ops.push(Op::Delete {
                        key: self.keys.affinity(node, cidr),
                    });
                }
                after.push((cidr, None));
            } else {
                ops.push(Op::Put {
                    key: block_key,
                    value: encode(&block),
                });
                after.push((cidr, Some(block)));
            }
        }
        let remaining = record.map(|r| {
            let mut rest = r.value.clone();
            rest.addresses.retain(|ip, _| !ips.contains(ip));
            rest
        });
        match &remaining {
            Some(rest) if !rest.addresses.is_empty() => ops.push(Op::Put {
                key: handle_key.clone(),
                value: encode(rest),
            }),
            Some(_) => ops.push(Op::Delete {
                key: handle_key.clone(),
            }),
            None => {}
        }
        let mut read_on_conflict = vec![handle_key];
        read_on_conflict.extend(blocks.iter().map(|c| self.keys.block(*c)));
        let txn = Txn {
            compares,
            ops,
            read_on_conflict,
        };
        match self.store.txn(txn).await? {
            TxnOutcome::Committed { revision } => {
                for (cidr, block) in after {
                    match block {
                        Some(value) => cache.learn_block(Versioned { value, revision }),
                        None => cache.forget_block(cidr),
                    }
                }
                match remaining {
                    Some(rest) if !rest.addresses.is_empty() => cache.remember_handle(
                        handle,
                        Versioned {
                            value: rest,
                            revision,
                        },
                    ),
                    _ => {
                        cache.handles.remove(handle);
                    }
                }
                debug!(?ips, %handle, "released");
                Ok(true)
            }
            TxnOutcome::Conflict { current } => {
                self.absorb(cache, handle, current)?;
                Ok(false)
            }
        }
    }

    /// Refresh the cache from the values a failed transaction read back.
    fn absorb(
        &self,
        cache: &mut Cache,
        handle: &str,
        current: Vec<(String, Option<Kv>)>,
    ) -> Result<(), IpamError> {
        for (key, kv) in current {
            if key == self.keys.handle(handle) {
                match kv {
                    Some(kv) => cache.remember_handle(handle, decode(&kv)?),
                    None => {
                        cache.handles.remove(handle);
                    }
                }
            } else if let Some(cidr) = Keys::cidr_of(&key) {
                match kv {
                    Some(kv) => cache.learn_block(decode(&kv)?),
                    None => cache.forget_block(cidr),
                }
            }
        }
        Ok(())
    }

    async fn read_handle(&self, id: &str) -> Result<Option<Versioned<HandleRecord>>, IpamError> {
        Ok(read(&self.store, &self.keys.handle(id)).await?)
    }

    /// The addresses a handle holds (read from the store, not the cache).
    pub async fn addresses_of(&self, handle: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
        validate_handle(handle)?;
        Ok(self
            .read_handle(handle)
            .await?
            .map(|r| r.value.addresses.keys().copied().collect())
            .unwrap_or_default())
    }

    /// Merge owner attributes into every allocation of a handle (e.g. the container id,
    /// known only after the address was requested).
    pub async fn set_attributes(
        &self,
        handle: &str,
        attrs: &BTreeMap<String, String>,
    ) -> Result<(), IpamError> {
        validate_handle(handle)?;
        let mut cache = self.cache.lock().await;
        let ((), committed) = cas_loop::<IpamError, _, _>(&self.store, move || async move {
            let Some(record) = self.read_handle(handle).await? else {
                return Ok(Attempt::Done(()));
            };
            let blocks: BTreeSet<Ipv4Network> = record.value.addresses.values().copied().collect();
            let mut compares = Vec::new();
            let mut ops = Vec::new();
            for cidr in blocks {
                let key = self.keys.block(cidr);
                let Some(mut block) = self.read_block(cidr).await? else {
                    continue;
                };
                compares.push(Compare::unchanged(&key, Some(block.revision)));
                for (ip, a) in block.value.allocations.iter_mut() {
                    if a.handle == handle && record.value.addresses.contains_key(ip) {
                        a.attrs.extend(attrs.clone());
                    }
                }
                ops.push(Op::Put {
                    key,
                    value: encode(&block.value),
                });
            }
            let txn = Txn {
                compares,
                ops,
                read_on_conflict: Vec::new(),
            };
            Ok(Attempt::Commit(txn, ()))
        })
        .await?;
        if committed.is_some() {
            // Revisions changed under the cache; re-read blocks when next needed.
            cache.blocks.clear();
            cache.affine.clear();
        }
        Ok(())
    }
}

/// Where a dynamic request may take its address: [`AllocRequest::range`] and
/// [`AllocRequest::exclude`].
struct Scope<'r> {
    range: Option<Ipv4Network>,
    exclude: &'r BTreeSet<Ipv4Addr>,
}

impl Scope<'_> {
    fn touches(&self, block: Ipv4Network) -> bool {
        self.range.is_none_or(|r| overlaps(r, block))
    }
}

/// Take the next free address (within the scope) of a cached block.
fn take_from(
    block: Option<&Versioned<Block>>,
    pool: &Versioned<Pool>,
    allocation: &Allocation,
    scope: &Scope<'_>,
) -> Option<Plan> {
    let block = block?;
    let (ip, cursor) = next_free_in(&pool.value, &block.value, scope.range, scope.exclude)?;
    let mut next = block.value.clone();
    next.cursor = cursor;
    next.allocations.insert(ip, allocation.clone());
    Some(Plan {
        pool: pool.clone(),
        ip,
        block_revision: Some(block.revision),
        block: next,
    })
}

/// Plan the claim of the first unclaimed block of a pool (among those the scope
/// touches), starting at the node's offset.
fn claim_new(
    cache: &Cache,
    pool: &Versioned<Pool>,
    node: &str,
    allocation: &Allocation,
    scope: &Scope<'_>,
) -> Option<Plan> {
    let claimed = cache.claimed.as_ref()?;
    let span = match scope.range {
        Some(range) => blocks_touching(&pool.value, range),
        None => 0..block_count(&pool.value),
    };
    let count = span.end - span.start;
    if count == 0 {
        return None;
    }
    let start = claim_start(&pool.value, node) % count;
    (0..count)
        .map(|i| nth_block(&pool.value, span.start + (start + i) % count))
        .filter(|cidr| !claimed.contains(cidr))
        .find_map(|cidr| {
            let fresh = Versioned {
                value: Block {
                    cidr,
                    pool: pool.value.name.clone(),
                    affinity: Some(node.to_string()),
                    allocations: BTreeMap::new(),
                    cursor: 0,
                },
                revision: 0,
            };
            let mut plan = take_from(Some(&fresh), pool, allocation, scope)?;
            plan.block_revision = None;
            Some(plan)
        })
}

fn exhausted(pools: &[Versioned<Pool>]) -> IpamError {
    if let [only] = pools {
        return IpamError::PoolExhausted {
            name: only.value.name.clone(),
            cidr: only.value.cidr,
            size: crate::cidr::usable_in_pool(&only.value),
        };
    }
    IpamError::AllPoolsExhausted {
        pools: pools
            .iter()
            .map(|p| {
                format!(
                    "{} {} with {} usable addresses",
                    p.value.name,
                    p.value.cidr,
                    crate::cidr::usable_in_pool(&p.value)
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// `p1 (10.0.0.0/24), p2 (10.1.0.0/24)`, or `none`.
fn pool_cidrs(pools: &[Versioned<Pool>]) -> String {
    if pools.is_empty() {
        return "none".into();
    }
    pools
        .iter()
        .map(|p| format!("{} ({})", p.value.name, p.value.cidr))
        .collect::<Vec<_>>()
        .join(", ")
}

fn pool_names(pools: &[Versioned<Pool>]) -> String {
    if pools.is_empty() {
        return "none".into();
    }
    pools
        .iter()
        .map(|p| p.value.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod range_tests;
