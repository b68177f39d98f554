//! The allocator's transactions: allocate and release, each one compare-and-swap
//! transaction retried on conflict, and the handle attribute update.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnetwork::Ipv4Network;
use tracing::debug;

use crate::budget;
use crate::cidr::block_of;
use crate::error::{validate_handle, validate_node_name, IpamError};
use crate::locks::KeyGuard;
use crate::model::{Affinity, Block, HandleRecord};
use crate::state::{backoff, cas_loop, Attempt, MAX_ATTEMPTS};
use crate::state::{decode, encode, Versioned};
use crate::store::{Compare, Op, Store, Txn, TxnOutcome};

use super::plan::{Plan, Planned, Replanned};
use super::{AllocRequest, Alongside, AlsoWrite, Assigned, BlockLock, Ipam};

/// What a release's transaction carries besides the release: further compares it
/// must hold, and further writes.
#[derive(Default, Clone, Copy)]
struct Extra<'a> {
    guards: &'a [Compare],
    also: &'a [Op],
}

/// Longest a request waits for a block's lock behind others that make progress (in
/// an outage the wait ends sooner: see [`crate::locks`]).
const LOCK_WAIT: Duration = Duration::from_secs(8);

impl<S: Store> Ipam<S> {
    /// Allocate an address for `req.handle`, or return the one it already holds.
    pub async fn allocate(&self, req: &AllocRequest) -> Result<Assigned, IpamError> {
        self.allocate_with(req, &|_| Vec::new()).await
    }

    /// [`Ipam::allocate`], with the writes `also` makes for the address chosen (an
    /// endpoint record, say) in the allocation's own transaction: both or neither are
    /// stored. A repeated request (the handle already holds an address) writes nothing,
    /// `also` included: the caller sees `existing` and writes what it needs itself.
    pub async fn allocate_with(
        &self,
        req: &AllocRequest,
        also: &AlsoWrite<'_>,
    ) -> Result<Assigned, IpamError> {
        self.allocate_inner(req, also, None).await
    }

    /// [`Ipam::allocate_with`], running `alongside` with the address chosen while the
    /// transaction that assigns it is in flight, so work that needs the address (a
    /// veth, say) costs no time of its own. It runs with the first transaction sent
    /// only: after a failed compare (another process took the address or changed the
    /// block) the allocation goes on without it, so a contended request does not pay
    /// for the work once per attempt and make its next attempts later still. A
    /// repeated request (the handle already holds an address) learns so from its
    /// transaction's failed compare. So the work may have run for an address the
    /// request does not get, or not at all: whatever it made is the caller's to keep
    /// (when its address is the one assigned and not `existing`) or undo.
    pub async fn allocate_alongside(
        &self,
        req: &AllocRequest,
        also: &AlsoWrite<'_>,
        alongside: &Alongside<'_>,
    ) -> Result<Assigned, IpamError> {
        self.allocate_inner(req, also, Some(alongside)).await
    }

    async fn allocate_inner(
        &self,
        req: &AllocRequest,
        also: &AlsoWrite<'_>,
        alongside: Option<&Alongside<'_>>,
    ) -> Result<Assigned, IpamError> {
        validate_handle(&req.handle)?;
        validate_node_name(&req.node)?;
        let mut refreshed = false;
        let mut conflicts = 0;
        let mut replans = 0;
        loop {
            let plan = match self.plan(req).await {
                Ok(Planned::Existing(assigned)) => return Ok(assigned),
                Ok(Planned::New(plan)) => plan,
                // A long-lived cache may miss pools added since: look once more.
                Err(
                    IpamError::PoolExhausted { .. }
                    | IpamError::AllPoolsExhausted { .. }
                    | IpamError::RangeExhausted { .. },
                ) if !refreshed => {
                    refreshed = true;
                    self.forget_pools();
                    continue;
                }
                Err(e) => return Err(e),
            };
            let held = self.lock_block(plan.block.cidr).await?;
            let plan = match self.replan_in_block(req, *plan) {
                Replanned::Ready(plan) => plan,
                Replanned::Existing(assigned) => return Ok(assigned),
                Replanned::Stale => {
                    // Another request of this process changed the block meanwhile
                    // (no round trip was lost): plan again at once.
                    replans += 1;
                    if replans > MAX_ATTEMPTS {
                        return Err(IpamError::Contention {
                            attempts: MAX_ATTEMPTS,
                        });
                    }
                    continue;
                }
            };
            let alongside = alongside.filter(|_| conflicts == 0);
            match self.commit_plan(req, *plan, also, alongside).await {
                Ok(Some(done)) => return Ok(done),
                Ok(None) => {}
                Err(e) => {
                    if let IpamError::Store(store) = &e {
                        held.fail(store);
                    }
                    return Err(e);
                }
            }
            drop(held);
            conflicts += 1;
            if conflicts >= MAX_ATTEMPTS {
                return Err(IpamError::Contention {
                    attempts: MAX_ATTEMPTS,
                });
            }
            backoff(conflicts).await;
        }
    }

    /// One allocation transaction, with the block's lock held. `None` after a conflict
    /// with another process (the cache refreshed from what it read back).
    async fn commit_plan(
        &self,
        req: &AllocRequest,
        plan: Plan,
        also: &AlsoWrite<'_>,
        alongside: Option<&Alongside<'_>>,
    ) -> Result<Option<Assigned>, IpamError> {
        let assigned = Assigned {
            ip: plan.ip,
            pool: plan.pool.value.name.clone(),
            pool_cidr: plan.pool.value.cidr,
            block: plan.block.cidr,
            existing: false,
        };
        let handle_key = self.keys.handle(&req.handle);
        let block_key = self.keys.block(plan.block.cidr);
        let pool_key = self.keys.pool(&plan.pool.value.name);
        let handle = HandleRecord {
            addresses: BTreeMap::from([(plan.ip, plan.block.cidr)]),
        };
        let mut ops = vec![
            Op::Put {
                key: block_key.clone(),
                value: encode(&plan.block),
            },
            Op::Put {
                key: handle_key.clone(),
                value: encode(&handle),
            },
        ];
        if plan.block_revision.is_none() {
            ops.push(Op::Put {
                key: self.keys.affinity(&req.node, plan.block.cidr),
                value: encode(&Affinity::confirmed()),
            });
        }
        ops.extend(also(&assigned));
        let txn = Txn {
            compares: vec![
                Compare::unchanged(&pool_key, Some(plan.pool.revision)),
                Compare::unchanged(&block_key, plan.block_revision),
                Compare::unchanged(&handle_key, None),
            ],
            ops,
            read_on_conflict: vec![handle_key, block_key, pool_key],
        };
        let outcome = match alongside {
            Some(work) => futures::join!(self.store.txn(txn), work(assigned.clone())).0,
            None => self.store.txn(txn).await,
        };
        let current = match outcome? {
            TxnOutcome::Committed { revision } => {
                let mut cache = self.cache();
                if plan.block_revision.is_none() {
                    cache
                        .affine
                        .entry(req.node.clone())
                        .or_default()
                        .insert(plan.block.cidr);
                }
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
                return Ok(Some(assigned));
            }
            TxnOutcome::Conflict { current } => current,
        };
        let mut current = current.into_iter().map(|(_, kv)| kv);
        let (handle, block, pool) = (
            current.next().flatten(),
            current.next().flatten(),
            current.next().flatten(),
        );
        if let Some(handle) = handle {
            // The handle exists: a repeated request, answered from the record just
            // read (never from a possibly stale cache).
            let record: Versioned<HandleRecord> = decode(&handle)?;
            let existing = self.existing_for(req, &record.value).await?;
            self.cache().remember_handle(&req.handle, record);
            if let Some(existing) = existing {
                return Ok(Some(existing));
            }
        }
        let block = block.as_ref().map(decode).transpose()?;
        let mut cache = self.cache();
        // Our view of who claimed what was stale if a claim lost: list again once,
        // rather than discovering other claims one round trip at a time.
        if plan.block_revision.is_none() && block.is_some() {
            cache.claimed = None;
            cache.affine.remove(&req.node);
        }
        match block {
            Some(block) => cache.learn_block(block),
            None => cache.forget_block(plan.block.cidr),
        }
        if pool.map(|kv| kv.mod_revision) != Some(plan.pool.revision) {
            cache.pools = None;
        }
        Ok(None)
    }

    /// Release every address a handle holds. Releasing an unknown handle is not an
    /// error (idempotent): the result is then empty.
    pub async fn release_handle(&self, handle: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
        self.release_handle_with(handle, &[]).await
    }

    /// [`Ipam::release_handle`], with `also` (deleting an endpoint record, say) in the
    /// release's own transaction; when the handle holds nothing, `also` is still
    /// written, alone.
    pub async fn release_handle_with(
        &self,
        handle: &str,
        also: &[Op],
    ) -> Result<Vec<Ipv4Addr>, IpamError> {
        validate_handle(handle)?;
        for attempt in 1..=MAX_ATTEMPTS {
            let cached = self.cache().handles.get(handle).cloned();
            let record = match cached {
                Some(r) => Some(r),
                None => self.beside_expected(self.read_handle(handle)).await?,
            };
            let Some(record) = record else {
                if !also.is_empty() {
                    self.store
                        .txn(Txn {
                            ops: also.to_vec(),
                            ..Txn::default()
                        })
                        .await?;
                }
                return Ok(Vec::new());
            };
            let ips: BTreeSet<Ipv4Addr> = record.value.addresses.keys().copied().collect();
            let blocks: BTreeSet<Ipv4Network> = record.value.addresses.values().copied().collect();
            if self
                .release_txn(
                    handle,
                    Some(&record),
                    &ips,
                    &blocks,
                    Extra { guards: &[], also },
                )
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

    /// Release what `handle` holds only while its record is still at `revision` (as
    /// read when the caller decided its owner is gone) and every compare of `guards`
    /// holds (e.g. "the owner's record is still absent"), all in the release's own
    /// transaction: an allocation or record written since the decision is never
    /// undone. Returns the addresses released, or `None` when the handle (gone or
    /// written since) or a guard no longer matches.
    pub async fn release_handle_if(
        &self,
        handle: &str,
        revision: i64,
        guards: &[Compare],
    ) -> Result<Option<Vec<Ipv4Addr>>, IpamError> {
        validate_handle(handle)?;
        for attempt in 1..=MAX_ATTEMPTS {
            let Some(record) = self.read_handle(handle).await? else {
                return Ok(None);
            };
            if record.revision != revision {
                return Ok(None);
            }
            for Compare::ModRevision {
                key,
                revision: expected,
            } in guards
            {
                let now = self.store.get(key).await?.map_or(0, |kv| kv.mod_revision);
                if now != *expected {
                    return Ok(None);
                }
            }
            let ips: BTreeSet<Ipv4Addr> = record.value.addresses.keys().copied().collect();
            let blocks: BTreeSet<Ipv4Network> = record.value.addresses.values().copied().collect();
            if self
                .release_txn(
                    handle,
                    Some(&record),
                    &ips,
                    &blocks,
                    Extra { guards, also: &[] },
                )
                .await?
            {
                return Ok(Some(ips.into_iter().collect()));
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
        for attempt in 1..=MAX_ATTEMPTS {
            let pool = self.pool_containing(ip).await?;
            let cidr = block_of(&pool.value, ip);
            let Some(block) = self.read_block(cidr).await? else {
                return Ok(None);
            };
            let Some(holder) = block.value.allocations.get(&ip).map(|a| a.handle.clone()) else {
                return Ok(None);
            };
            self.cache().learn_block(block);
            let record = self.read_handle(&holder).await?;
            let ips = BTreeSet::from([ip]);
            let blocks = BTreeSet::from([cidr]);
            if self
                .release_txn(&holder, record.as_ref(), &ips, &blocks, Extra::default())
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
    /// `extra` adds compares the transaction must hold and writes. The blocks' locks are
    /// held throughout (taken in address order, so two releases never deadlock).
    /// Returns false after a conflict (caches refreshed; the caller retries).
    async fn release_txn(
        &self,
        handle: &str,
        record: Option<&Versioned<HandleRecord>>,
        ips: &BTreeSet<Ipv4Addr>,
        blocks: &BTreeSet<Ipv4Network>,
        extra: Extra<'_>,
    ) -> Result<bool, IpamError> {
        let Extra { guards, also } = extra;
        let mut held = Vec::with_capacity(blocks.len());
        for &cidr in blocks {
            held.push(self.lock_block(cidr).await?);
        }
        let handle_key = self.keys.handle(handle);
        let mut compares = vec![Compare::unchanged(&handle_key, record.map(|r| r.revision))];
        compares.extend_from_slice(guards);
        let mut ops = Vec::new();
        let mut after: Vec<(Ipv4Network, Option<Block>)> = Vec::new();
        for &cidr in blocks {
            let cached = self.cache().blocks.get(&cidr).cloned();
            let current = match cached {
                Some(b) => Some(b),
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
        ops.extend_from_slice(also);
        let mut read_on_conflict = vec![handle_key];
        read_on_conflict.extend(blocks.iter().map(|c| self.keys.block(*c)));
        let txn = Txn {
            compares,
            ops,
            read_on_conflict,
        };
        let outcome = self.store.txn(txn).await.inspect_err(|e| {
            for guard in &held {
                guard.fail(e);
            }
        })?;
        match outcome {
            TxnOutcome::Committed { revision } => {
                let mut cache = self.cache();
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
                self.absorb(handle, current)?;
                Ok(false)
            }
        }
    }

    /// Wait for a block's lock: while the requests ahead make progress (a queue during
    /// a burst), or until one fails in the store, a failure this request then shares.
    async fn lock_block(&self, cidr: Ipv4Network) -> Result<KeyGuard<BlockLock>, IpamError> {
        let deadline = budget::deadline_after(LOCK_WAIT);
        Ok(self.blocks.lock(BlockLock(cidr), deadline).await?)
    }

    /// The addresses a handle holds as this process last wrote or read them, without a
    /// round trip; `None` when it has not seen the handle. Another process may have
    /// changed the handle since: a release compares the record's revision all the same.
    pub fn cached_addresses_of(&self, handle: &str) -> Option<Vec<Ipv4Addr>> {
        self.cache()
            .handles
            .get(handle)
            .map(|r| r.value.addresses.keys().copied().collect())
    }

    /// The addresses a handle holds (read from the store, not the cache). The record
    /// read is remembered, so a release of the handle right after (a DEL) needs no
    /// second read of it; that release still compares the record's revision. Expected
    /// blocks ([`Ipam::expect_blocks`]) are read beside it.
    pub async fn addresses_of(&self, handle: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
        validate_handle(handle)?;
        let Some(record) = self.beside_expected(self.read_handle(handle)).await? else {
            return Ok(Vec::new());
        };
        let ips = record.value.addresses.keys().copied().collect();
        self.cache().remember_handle(handle, record);
        Ok(ips)
    }

    /// Merge owner attributes into every allocation of a handle (e.g. the container id,
    /// known only after the address was requested).
    pub async fn set_attributes(
        &self,
        handle: &str,
        attrs: &BTreeMap<String, String>,
    ) -> Result<(), IpamError> {
        validate_handle(handle)?;
        let (written, committed) = cas_loop::<IpamError, _, _>(&self.store, move || async move {
            let Some(record) = self.read_handle(handle).await? else {
                return Ok(Attempt::Done(Vec::new()));
            };
            let blocks: BTreeSet<Ipv4Network> = record.value.addresses.values().copied().collect();
            let mut compares = Vec::new();
            let mut ops = Vec::new();
            let mut written = Vec::new();
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
                written.push(block.value);
            }
            let txn = Txn {
                compares,
                ops,
                read_on_conflict: Vec::new(),
            };
            Ok(Attempt::Commit(txn, written))
        })
        .await?;
        if let Some(revision) = committed {
            let mut cache = self.cache();
            for value in written {
                cache.learn_block(Versioned { value, revision });
            }
        }
        Ok(())
    }
}
