//! Planning an allocation from the cache: a fixed address, or a dynamic one from the
//! node's blocks, a new claim or a borrowed block; the plan becomes one transaction.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use rand::seq::SliceRandom;

use crate::cidr::{
    block_count, block_of, blocks_touching, claim_start, is_pool_edge, next_free_in, nth_block,
    overlaps,
};
use crate::error::IpamError;
use crate::model::{Allocation, Block, HandleRecord, Pool, ATTR_NODE};
use crate::state::Versioned;
use crate::store::Store;

use super::cache::{pool_cidrs, Cache};
use super::{AllocRequest, Assigned, Ipam};

/// One planned allocation, ready to become a transaction.
pub(super) struct Plan {
    pub(super) pool: Versioned<Pool>,
    pub(super) ip: Ipv4Addr,
    /// Revision the block was read at; `None` when the plan creates (claims) it.
    pub(super) block_revision: Option<i64>,
    pub(super) block: Block,
    /// What the plan writes for `ip`, kept to plan again in the same block.
    pub(super) allocation: Allocation,
    /// A fixed address was asked for (`ip` may not change).
    pub(super) fixed: bool,
}

pub(super) enum Planned {
    New(Box<Plan>),
    /// The handle already holds this address.
    Existing(Assigned),
}

impl<S: Store> Ipam<S> {
    pub(super) async fn plan(&self, req: &AllocRequest) -> Result<Planned, IpamError> {
        let mut attrs = req.attrs.clone();
        attrs.insert(ATTR_NODE.to_string(), req.node.clone());
        let allocation = Allocation {
            handle: req.handle.clone(),
            attrs,
        };
        match req.ip {
            Some(ip) => self.plan_fixed(req, ip, allocation).await,
            None => self.plan_dynamic(req, allocation).await,
        }
    }

    /// Reserve a free address of the node's own blocks for a dynamic request (its
    /// pool, range and exclusions), as this process last saw them, without writing
    /// anything: for a caller that allocates it later as a fixed address, in a
    /// transaction that carries more (Docker's `RequestAddress`, allocated with its
    /// endpoint's record). Until [`Ipam::unreserve`], this process's dynamic requests
    /// pass it by. `None` when the node's blocks have none free: allocate then, which
    /// claims a block. Another process may take the address meanwhile: the later
    /// allocation's compare says so.
    pub async fn reserve_in_own_blocks(
        &self,
        req: &AllocRequest,
    ) -> Result<Option<Ipv4Addr>, IpamError> {
        self.reserve_where(req, Where::OwnBlocks).await
    }

    /// [`Ipam::reserve_in_own_blocks`], or, when the node's blocks have none free, a
    /// free address of the block the node would claim next (as this process last saw
    /// which blocks exist), still without writing: the fixed allocation made later
    /// claims that block with the address, in its one transaction (or, should another
    /// node have claimed the block meanwhile, borrows the address from it). `None`
    /// when no block is left to claim: allocate then (it borrows).
    pub async fn reserve(&self, req: &AllocRequest) -> Result<Option<Ipv4Addr>, IpamError> {
        if let Some(ip) = self.reserve_where(req, Where::OwnBlocks).await? {
            return Ok(Some(ip));
        }
        self.load_claimed().await?;
        self.reserve_where(req, Where::NextClaim).await
    }

    /// A free address for `req` in the blocks `place` names, noted as reserved.
    async fn reserve_where(
        &self,
        req: &AllocRequest,
        place: Where,
    ) -> Result<Option<Ipv4Addr>, IpamError> {
        crate::error::validate_node_name(&req.node)?;
        let mut pools = self.candidate_pools(req.pool.as_deref()).await?;
        if let Some(range) = req.range {
            pools.retain(|p| overlaps(p.value.cidr, range));
        }
        self.load_node(&req.node).await?;
        let allocation = Allocation {
            handle: req.handle.clone(),
            attrs: BTreeMap::new(),
        };
        // Found and noted under one lock: two reservations never meet on one address.
        let mut cache = self.cache();
        let scope = Scope::of(req, &cache.reserved);
        let plan = match place {
            Where::OwnBlocks => Self::take_from_own(&cache, &req.node, &pools, &allocation, &scope),
            Where::NextClaim => pools
                .iter()
                .find_map(|pool| claim_new(&cache, pool, &req.node, &allocation, &scope)),
        };
        let found = plan.map(|plan| plan.ip);
        drop(scope);
        if let Some(ip) = found {
            cache.reserved.insert(ip);
        }
        Ok(found)
    }

    /// Let dynamic requests have a reserved address again (it was allocated, or its
    /// reservation is over).
    pub fn unreserve(&self, ip: Ipv4Addr) {
        self.cache().reserved.remove(&ip);
    }

    /// The answer to a repeated request: the address the handle holds, if it fits.
    pub(super) async fn existing_for(
        &self,
        req: &AllocRequest,
        record: &HandleRecord,
    ) -> Result<Option<Assigned>, IpamError> {
        let Some((&held, &block)) = record.addresses.iter().next() else {
            return Ok(None);
        };
        let pools = self.pools().await?;
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

    pub(super) async fn plan_fixed(
        &self,
        req: &AllocRequest,
        ip: Ipv4Addr,
        allocation: Allocation,
    ) -> Result<Planned, IpamError> {
        let pool = self.pool_containing(ip).await?;
        if let Some(name) = &req.pool {
            if *name != pool.value.name {
                let wanted = self.named_pool(name).await?;
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
        // that says it is taken could be stale, so that answer is read fresh. So is a
        // block this process last saw unclaimed: the compare (the block still absent)
        // checks that too, so it is not read first.
        let (cached, unclaimed) = {
            let cache = self.cache();
            let unclaimed = cache.claimed.as_ref().is_some_and(|c| !c.contains(&cidr));
            (cache.blocks.get(&cidr).cloned(), unclaimed)
        };
        let current = match cached {
            Some(b) if !b.value.allocations.contains_key(&ip) => Some(b),
            None if unclaimed => None,
            _ => {
                let fresh = self.read_block(cidr).await?;
                let mut cache = self.cache();
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
        block.allocations.insert(ip, allocation.clone());
        Ok(Planned::New(Box::new(Plan {
            pool,
            ip,
            block_revision: revision,
            block,
            allocation,
            fixed: true,
        })))
    }

    pub(super) async fn plan_dynamic(
        &self,
        req: &AllocRequest,
        allocation: Allocation,
    ) -> Result<Planned, IpamError> {
        // Independent reads, in flight together: a process with a cold cache (the
        // short-lived CNI plugin) pays one round trip for both.
        let (mut pools, ()) = futures::try_join!(
            self.candidate_pools(req.pool.as_deref()),
            self.load_node(&req.node)
        )?;
        let reserved = self.cache().reserved.clone();
        let scope = Scope::of(req, &reserved);
        if let Some(range) = req.range {
            let all = pool_cidrs(&pools);
            pools.retain(|p| overlaps(p.value.cidr, range));
            if pools.is_empty() {
                return Err(IpamError::RangeOutsidePools { range, pools: all });
            }
        }

        // 1. The node's own blocks (those the range touches).
        let own = Self::take_from_own(&self.cache(), &req.node, &pools, &allocation, &scope);
        if let Some(plan) = own {
            return Ok(Planned::New(Box::new(plan)));
        }

        // 2. Claim a block nobody has, in a node-specific order.
        self.load_claimed().await?;
        {
            let cache = self.cache();
            for pool in &pools {
                if let Some(plan) = claim_new(&cache, pool, &req.node, &allocation, &scope) {
                    return Ok(Planned::New(Box::new(plan)));
                }
            }
        }

        // 3. Borrow from another node's block; the listing also refreshes what is claimed.
        let all = self.read_all_blocks().await?;
        let mut cache = self.cache();
        cache.claimed = Some(all.iter().map(|b| b.value.cidr).collect());
        for b in all {
            cache.learn_block(b);
        }
        for pool in &pools {
            if let Some(plan) = claim_new(&cache, pool, &req.node, &allocation, &scope) {
                return Ok(Planned::New(Box::new(plan)));
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
                    return Ok(Planned::New(Box::new(plan)));
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
}

impl<S: Store> Ipam<S> {
    /// A plan from the first of the node's own blocks (those the scope touches) with a
    /// free address.
    fn take_from_own(
        cache: &Cache,
        node: &str,
        pools: &[Versioned<Pool>],
        allocation: &Allocation,
        scope: &Scope<'_>,
    ) -> Option<Plan> {
        let own = cache.affine.get(node)?;
        own.iter()
            .filter(|cidr| scope.touches(**cidr))
            .find_map(|cidr| {
                let pool = pools
                    .iter()
                    .find(|p| p.value.cidr.contains(cidr.network()))?;
                take_from(cache.blocks.get(cidr), pool, allocation, scope)
            })
    }

    /// Check a plan against the cache once its block's lock is held: every writer of
    /// the block in this process has updated the cache by then, so a plan made from an
    /// older copy is made again from the current one instead of losing a compare.
    pub(super) fn replan_in_block(&self, req: &AllocRequest, plan: Plan) -> Replanned {
        let cidr = plan.block.cidr;
        let cache = self.cache();
        let current = cache.blocks.get(&cidr);
        if current.map(|b| b.revision) == plan.block_revision {
            return Replanned::Ready(Box::new(plan));
        }
        let Some(current) = current else {
            // Deleted since (its last address released): plan a claim again.
            return Replanned::Stale;
        };
        if plan.block_revision.is_none() && current.value.affinity.as_deref() != Some(&req.node) {
            // Claimed for another node meanwhile: that is a borrow, decided elsewhere.
            return Replanned::Stale;
        }
        if !plan.fixed {
            let scope = Scope::of(req, &cache.reserved);
            return match take_from(Some(current), &plan.pool, &plan.allocation, &scope) {
                Some(next) => Replanned::Ready(Box::new(next)),
                None => Replanned::Stale,
            };
        }
        match current.value.allocations.get(&plan.ip) {
            Some(holder) if holder.handle == req.handle => Replanned::Existing(Assigned {
                ip: plan.ip,
                pool: plan.pool.value.name.clone(),
                pool_cidr: plan.pool.value.cidr,
                block: cidr,
                existing: true,
            }),
            // Taken since: planning again reads the block and names the holder.
            Some(_) => Replanned::Stale,
            None => {
                let mut block = current.value.clone();
                block.allocations.insert(plan.ip, plan.allocation.clone());
                Replanned::Ready(Box::new(Plan {
                    block_revision: Some(current.revision),
                    block,
                    ..plan
                }))
            }
        }
    }
}

/// A plan checked under its block's lock.
pub(super) enum Replanned {
    Ready(Box<Plan>),
    Existing(Assigned),
    /// The block changed so that the plan cannot stand: plan from the start.
    Stale,
}

/// Where a dynamic request may take its address: [`AllocRequest::range`], and not
/// [`AllocRequest::exclude`] nor an address this process reserved.
pub(super) struct Scope<'r> {
    range: Option<Ipv4Network>,
    exclude: Cow<'r, BTreeSet<Ipv4Addr>>,
}

impl<'r> Scope<'r> {
    pub(super) fn of(req: &'r AllocRequest, reserved: &BTreeSet<Ipv4Addr>) -> Self {
        let exclude = if reserved.is_empty() {
            Cow::Borrowed(&req.exclude)
        } else {
            Cow::Owned(req.exclude.union(reserved).copied().collect())
        };
        Scope {
            range: req.range,
            exclude,
        }
    }

    pub(super) fn touches(&self, block: Ipv4Network) -> bool {
        self.range.is_none_or(|r| overlaps(r, block))
    }
}

/// Take the next free address (within the scope) of a cached block.
pub(super) fn take_from(
    block: Option<&Versioned<Block>>,
    pool: &Versioned<Pool>,
    allocation: &Allocation,
    scope: &Scope<'_>,
) -> Option<Plan> {
    let block = block?;
    let (ip, cursor) = next_free_in(&pool.value, &block.value, scope.range, &scope.exclude)?;
    let mut next = block.value.clone();
    next.cursor = cursor;
    next.allocations.insert(ip, allocation.clone());
    Some(Plan {
        pool: pool.clone(),
        ip,
        block_revision: Some(block.revision),
        block: next,
        allocation: allocation.clone(),
        fixed: false,
    })
}

/// Where a reservation looks: the node's own blocks, or the block it would claim next.
#[derive(Clone, Copy)]
enum Where {
    OwnBlocks,
    NextClaim,
}

/// Plan the claim of the first unclaimed block of a pool (among those the scope
/// touches), starting at the node's offset.
pub(super) fn claim_new(
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

pub(super) fn exhausted(pools: &[Versioned<Pool>]) -> IpamError {
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
