//! Pool administration: add, list, change, remove.
//!
//! Adding and removing a pool bumps one meta key, and both compare it, so two admins
//! adding overlapping pools at once cannot both succeed.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::cidr::{overlaps, validate_pool_shape};
use crate::error::{validate_pool_name, IpamError};
use crate::model::{Block, HandleRecord, Pool};
use crate::state::{cas_loop, read_all, Attempt};
use crate::state::{decode, encode, Versioned};
use crate::store::{Compare, Op, Store, Txn};
use crate::Ipam;

/// What `pool add` asks for.
#[derive(Debug, Clone)]
pub struct NewPool {
    pub name: String,
    pub cidr: Ipv4Network,
    pub block_size: u8,
    pub disabled: bool,
    pub reserved: BTreeSet<Ipv4Addr>,
    /// Masquerade traffic leaving every pool (see [`Pool::nat_outgoing`]).
    pub nat_outgoing: bool,
}

impl NewPool {
    /// An enabled pool of `cidr` in blocks of the default size, nothing reserved, no
    /// outgoing NAT: `pool add NAME --cidr CIDR` without options.
    pub fn new(name: impl Into<String>, cidr: Ipv4Network) -> Self {
        Self {
            name: name.into(),
            cidr,
            block_size: crate::cidr::DEFAULT_BLOCK_SIZE,
            disabled: false,
            reserved: BTreeSet::new(),
            nat_outgoing: false,
        }
    }
}

/// What `pool set` changes; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolUpdate {
    pub nat_outgoing: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PoolsMeta {
    generation: u64,
}

impl<S: Store> Ipam<S> {
    /// Create a pool, refusing a taken name and any overlap with an existing pool.
    pub async fn add_pool(&self, new: NewPool) -> Result<Pool, IpamError> {
        validate_pool_name(&new.name)?;
        validate_pool_shape(new.cidr, new.block_size)?;
        if let Some(ip) = new.reserved.iter().find(|ip| !new.cidr.contains(**ip)) {
            return Err(IpamError::NotInPool {
                ip: *ip,
                pool: new.name.clone(),
                cidr: new.cidr,
            });
        }
        let pool = Pool {
            name: new.name,
            cidr: new.cidr,
            block_size: new.block_size,
            disabled: new.disabled,
            reserved: new.reserved,
            deleting: false,
            deleting_since: None,
            nat_outgoing: new.nat_outgoing,
        };
        let new = &pool;
        cas_loop::<IpamError, _, _>(self.store(), move || async move {
            let pool = new;
            let (meta, meta_rev) = self.read_meta().await?;
            for existing in self.list_pools().await? {
                if existing.name == pool.name {
                    return Err(IpamError::PoolExists {
                        name: existing.name,
                        cidr: existing.cidr,
                    });
                }
                if overlaps(existing.cidr, pool.cidr) {
                    return Err(IpamError::PoolOverlap {
                        name: pool.name.clone(),
                        cidr: pool.cidr,
                        other: existing.name,
                        other_cidr: existing.cidr,
                    });
                }
            }
            let pool_key = self.keys().pool(&pool.name);
            let txn = Txn {
                compares: vec![
                    Compare::unchanged(self.keys().pools_meta(), meta_rev),
                    Compare::unchanged(&pool_key, None),
                ],
                ops: vec![
                    Op::Put {
                        key: pool_key,
                        value: encode(pool),
                    },
                    self.bump_meta(meta),
                ],
                read_on_conflict: Vec::new(),
            };
            Ok(Attempt::Commit(txn, ()))
        })
        .await?;
        info!(pool = %pool.name, cidr = %pool.cidr, "pool added");
        self.invalidate().await;
        Ok(pool)
    }

    /// Every pool, sorted by name.
    pub async fn list_pools(&self) -> Result<Vec<Pool>, IpamError> {
        Ok(self
            .read_pools()
            .await?
            .into_iter()
            .map(|p| p.value)
            .collect())
    }

    async fn read_pools(&self) -> Result<Vec<Versioned<Pool>>, IpamError> {
        Ok(read_all(self.store(), &self.keys().pools()).await?)
    }

    /// Remove a pool. Without `force` a pool with allocations is refused and left as it
    /// was; with `force` its allocations are released. Returns how many were released.
    ///
    /// The pool is marked `deleting` first, so no allocation lands in it while its
    /// blocks are taken apart. If a step fails (or the caller dies) the mark stays;
    /// running `remove_pool` again resumes: it finishes the removal, or, without
    /// `force`, clears the mark when the pool still has addresses. A pool visibly in
    /// use is refused before it is marked, so a plain refusal can never leave the mark.
    pub async fn remove_pool(&self, name: &str, force: bool) -> Result<u64, IpamError> {
        if !force {
            let pool = self.modify_pool(name, |_| false).await?;
            let count = allocated(&self.blocks_of(&pool.value).await?);
            if count > 0 && !pool.value.deleting {
                return Err(IpamError::PoolInUse {
                    name: name.to_string(),
                    count,
                });
            }
        }
        let pool = self.mark_deleting(name, true).await?;
        let blocks = self.blocks_of(&pool.value).await?;
        let count = allocated(&blocks);
        if count > 0 && !force {
            // In use after all (an allocation won the race with the check above, or an
            // interrupted removal left the mark): give the pool back.
            self.mark_deleting(name, false).await?;
            return Err(IpamError::PoolInUse {
                name: name.to_string(),
                count,
            });
        }
        // Allocations now fail against the pool's changed revision, so the blocks read
        // above only shrink (through releases) while we take them apart.
        for block in blocks {
            self.drop_block(block.value.cidr).await?;
        }
        cas_loop::<IpamError, _, _>(self.store(), move || async move {
            let (meta, meta_rev) = self.read_meta().await?;
            let pool_key = self.keys().pool(name);
            let current = self.store().get(&pool_key).await?;
            let txn = Txn {
                compares: vec![
                    Compare::unchanged(self.keys().pools_meta(), meta_rev),
                    Compare::unchanged(&pool_key, current.map(|kv| kv.mod_revision)),
                ],
                ops: vec![Op::Delete { key: pool_key }, self.bump_meta(meta)],
                read_on_conflict: Vec::new(),
            };
            Ok(Attempt::Commit(txn, ()))
        })
        .await?;
        info!(pool = %name, released = count, "pool removed");
        self.invalidate().await;
        Ok(count)
    }

    /// Change a pool's settings (compare-and-swap on the pool record, so a concurrent
    /// `pool rm` or allocation is never undone). Returns the pool as stored.
    pub async fn update_pool(&self, name: &str, update: &PoolUpdate) -> Result<Pool, IpamError> {
        let pool = self
            .modify_pool(name, |pool| {
                let before = pool.clone();
                if let Some(nat) = update.nat_outgoing {
                    pool.nat_outgoing = nat;
                }
                *pool != before
            })
            .await?;
        info!(pool = %name, nat_outgoing = pool.value.nat_outgoing, "pool updated");
        Ok(pool.value)
    }

    /// Set or clear the pool's `deleting` flag (compare-and-swap on the pool).
    async fn mark_deleting(
        &self,
        name: &str,
        deleting: bool,
    ) -> Result<Versioned<Pool>, IpamError> {
        // Always written: `remove_pool` relies on the pool's revision changing.
        let since = deleting.then(unix_now);
        self.modify_pool(name, |pool| {
            pool.deleting = deleting;
            pool.deleting_since = since;
            true
        })
        .await
    }

    /// Read-modify-write one pool record. `change` edits the pool and says whether
    /// there is anything to write; a missing pool is an error naming the existing ones.
    async fn modify_pool<F>(&self, name: &str, change: F) -> Result<Versioned<Pool>, IpamError>
    where
        F: Fn(&mut Pool) -> bool + Sync,
    {
        let key = &self.keys().pool(name);
        let change = &change;
        let (mut pool, revision) = cas_loop::<IpamError, _, _>(self.store(), move || async move {
            let Some(kv) = self.store().get(key).await? else {
                let existing: Vec<String> = self
                    .list_pools()
                    .await?
                    .into_iter()
                    .map(|p| p.name)
                    .collect();
                return Err(IpamError::PoolNotFound {
                    name: name.to_string(),
                    existing: if existing.is_empty() {
                        "none".into()
                    } else {
                        existing.join(", ")
                    },
                });
            };
            let mut pool: Versioned<Pool> = decode(&kv)?;
            if !change(&mut pool.value) {
                return Ok(Attempt::Done(pool));
            }
            let txn = Txn {
                compares: vec![Compare::unchanged(key, Some(pool.revision))],
                ops: vec![Op::Put {
                    key: key.clone(),
                    value: encode(&pool.value),
                }],
                read_on_conflict: Vec::new(),
            };
            Ok(Attempt::Commit(txn, pool))
        })
        .await?;
        if revision.is_some() {
            self.invalidate().await;
        }
        pool.revision = revision.unwrap_or(pool.revision);
        Ok(pool)
    }

    /// Every block inside a pool.
    pub(crate) async fn blocks_of(&self, pool: &Pool) -> Result<Vec<Versioned<Block>>, IpamError> {
        let blocks = read_all::<Block>(self.store(), &self.keys().blocks()).await?;
        Ok(blocks
            .into_iter()
            .filter(|b| pool.cidr.contains(b.value.cidr.network()))
            .collect())
    }

    /// Take a block apart: drop its addresses from their handles, then delete the block
    /// and its affinity. Each step compares what it read.
    async fn drop_block(&self, cidr: Ipv4Network) -> Result<(), IpamError> {
        let key = &self.keys().block(cidr);
        cas_loop::<IpamError, _, _>(self.store(), move || async move {
            let Some(kv) = self.store().get(key).await? else {
                return Ok(Attempt::Done(()));
            };
            let block: Versioned<Block> = decode(&kv)?;
            for (ip, allocation) in &block.value.allocations {
                self.forget_in_handle(&allocation.handle, *ip).await?;
            }
            let mut ops = vec![Op::Delete { key: key.clone() }];
            if let Some(node) = &block.value.affinity {
                ops.push(Op::Delete {
                    key: self.keys().affinity(node, cidr),
                });
            }
            let txn = Txn {
                compares: vec![Compare::unchanged(key, Some(block.revision))],
                ops,
                read_on_conflict: Vec::new(),
            };
            Ok(Attempt::Commit(txn, ()))
        })
        .await?;
        Ok(())
    }

    /// Remove one address from a handle record, deleting the record when it empties.
    pub(crate) async fn forget_in_handle(
        &self,
        handle: &str,
        ip: Ipv4Addr,
    ) -> Result<(), IpamError> {
        let key = &self.keys().handle(handle);
        cas_loop::<IpamError, _, _>(self.store(), move || async move {
            let Some(kv) = self.store().get(key).await? else {
                return Ok(Attempt::Done(()));
            };
            let mut record: Versioned<HandleRecord> = decode(&kv)?;
            if record.value.addresses.remove(&ip).is_none() {
                return Ok(Attempt::Done(()));
            }
            let op = if record.value.addresses.is_empty() {
                Op::Delete { key: key.clone() }
            } else {
                Op::Put {
                    key: key.clone(),
                    value: encode(&record.value),
                }
            };
            let txn = Txn {
                compares: vec![Compare::unchanged(key, Some(record.revision))],
                ops: vec![op],
                read_on_conflict: Vec::new(),
            };
            Ok(Attempt::Commit(txn, ()))
        })
        .await?;
        Ok(())
    }

    async fn read_meta(&self) -> Result<(PoolsMeta, Option<i64>), IpamError> {
        match self.store().get(&self.keys().pools_meta()).await? {
            Some(kv) => {
                let meta: Versioned<PoolsMeta> = decode(&kv)?;
                Ok((meta.value, Some(meta.revision)))
            }
            None => Ok((PoolsMeta::default(), None)),
        }
    }

    fn bump_meta(&self, meta: PoolsMeta) -> Op {
        Op::Put {
            key: self.keys().pools_meta(),
            value: encode(&PoolsMeta {
                generation: meta.generation + 1,
            }),
        }
    }
}

/// How many addresses the blocks hold.
fn allocated(blocks: &[Versioned<Block>]) -> u64 {
    blocks
        .iter()
        .map(|b| b.value.allocations.len() as u64)
        .sum()
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
