//! `ipam check [--gc]`: find inconsistencies between pools, blocks, affinities and
//! handles, and repair the ones that are safe to repair.
//!
//! Everything is read at one store revision (pools, blocks, affinities and handles in
//! listings of their own, all at the revision of the first), so the findings come from
//! a single consistent state; every repair compares the revisions of that snapshot, so
//! a record that changed since is left alone and reported as not repaired.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::Serialize;
use tracing::info;

use crate::error::IpamError;
use crate::model::{Affinity, Block, HandleRecord, Pool};
use crate::state::Keys;
use crate::state::{decode, encode, Versioned};
use crate::store::{Compare, Op, Store, StoreError, Txn, TxnOutcome};
use crate::Ipam;

/// How many times the check starts reading over when etcd compacts the revision it
/// reads at.
const SNAPSHOT_ATTEMPTS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A handle lists an address its block does not give to it.
    HandleWithoutAllocation,
    /// A block gives an address to a handle whose record does not list it.
    AllocationWithoutHandle,
    /// An affinity key for a block that is missing or belongs to another node.
    AffinityWithoutBlock,
    /// A block names a node but that node's affinity key is missing.
    BlockWithoutAffinity,
    /// A block that lies in no pool.
    BlockOutsidePools,
    /// An address listed by more than one handle.
    DoubleOwned,
    /// A block with no allocations left behind (releases normally delete them).
    EmptyBlock,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The record concerned.
    pub key: String,
    pub detail: String,
    /// Whether `--gc` repaired it (always false without `--gc`).
    pub repaired: bool,
    /// What `--gc` did, or why it left the problem alone.
    pub action: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Checked {
    pub pools: usize,
    pub blocks: usize,
    pub affinities: usize,
    pub handles: usize,
    pub allocations: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub checked: Checked,
    pub problems: Vec<Problem>,
    /// True when nothing is wrong, or everything wrong was repaired.
    pub clean: bool,
}

/// A repair: one compare-and-swap transaction.
struct Repair {
    compares: Vec<Compare>,
    ops: Vec<Op>,
    action: String,
}

struct Finding {
    problem: Problem,
    repair: Option<Repair>,
}

struct Snapshot {
    pools: Vec<Pool>,
    blocks: BTreeMap<Ipv4Network, Versioned<Block>>,
    affinities: Vec<(String, Ipv4Network, i64)>,
    handles: BTreeMap<String, Versioned<HandleRecord>>,
}

impl<S: Store> Ipam<S> {
    /// Check IPAM consistency; with `gc`, repair what is safe and say what was done.
    pub async fn check(&self, gc: bool) -> Result<CheckReport, IpamError> {
        let snap = self.snapshot().await?;
        let findings = find_problems(self.keys(), &snap);
        let mut problems = Vec::new();
        for Finding {
            mut problem,
            repair,
        } in findings
        {
            match repair {
                Some(repair) if gc => {
                    let txn = Txn {
                        compares: repair.compares,
                        ops: repair.ops,
                        read_on_conflict: Vec::new(),
                    };
                    match self.store().txn(txn).await? {
                        TxnOutcome::Committed { .. } => {
                            info!(key = %problem.key, action = %repair.action, "ipam gc repaired");
                            problem.repaired = true;
                            problem.action = repair.action;
                        }
                        TxnOutcome::Conflict { .. } => {
                            problem.action =
                                "not repaired: the record changed during the check; run it again"
                                    .into();
                        }
                    }
                }
                Some(repair) => problem.action = format!("--gc would {}", repair.action),
                None => {}
            }
            problems.push(problem);
        }
        if gc && problems.iter().any(|p| p.repaired) {
            self.invalidate().await;
        }
        let checked = Checked {
            pools: snap.pools.len(),
            blocks: snap.blocks.len(),
            affinities: snap.affinities.len(),
            handles: snap.handles.len(),
            allocations: snap
                .blocks
                .values()
                .map(|b| b.value.allocations.len())
                .sum(),
        };
        let clean = problems.iter().all(|p| p.repaired);
        Ok(CheckReport {
            checked,
            problems,
            clean,
        })
    }

    /// All IPAM records at one revision, read again from the start (a few times at
    /// most) when etcd compacts that revision away meanwhile.
    async fn snapshot(&self) -> Result<Snapshot, IpamError> {
        let mut attempt = 1;
        loop {
            match self.snapshot_at_one_revision().await {
                Err(IpamError::Store(StoreError::Compacted { revision, .. }))
                    if attempt < SNAPSHOT_ATTEMPTS =>
                {
                    info!(revision, "etcd compacted during ipam check; reading again");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The pools first, a small read that fixes the revision; then blocks,
    /// affinities and handles at that revision, side by side, each a listing of its
    /// own so that the many small handles are read in large pages.
    async fn snapshot_at_one_revision(&self) -> Result<Snapshot, IpamError> {
        let (keys, store) = (self.keys(), self.store());
        let pools = store.list_at(&keys.pools(), None).await?;
        let at = Some(pools.revision);
        let prefixes = [keys.blocks(), keys.affinities(), keys.handles()];
        let (blocks, affinities, handles) = futures::try_join!(
            store.list_at(&prefixes[0], at),
            store.list_at(&prefixes[1], at),
            store.list_at(&prefixes[2], at),
        )?;
        let mut snap = Snapshot {
            pools: Vec::with_capacity(pools.kvs.len()),
            blocks: BTreeMap::new(),
            affinities: Vec::with_capacity(affinities.kvs.len()),
            handles: BTreeMap::new(),
        };
        for kv in &pools.kvs {
            snap.pools.push(decode::<Pool>(kv)?.value);
        }
        for kv in &blocks.kvs {
            let block: Versioned<Block> = decode(kv)?;
            snap.blocks.insert(block.value.cidr, block);
        }
        for kv in &affinities.kvs {
            if let Some((node, cidr)) = keys.parse_affinity(&kv.key) {
                snap.affinities.push((node, cidr, kv.mod_revision));
            }
        }
        for kv in &handles.kvs {
            if let Some(id) = kv.key.strip_prefix(&prefixes[2]) {
                snap.handles.insert(id.to_string(), decode(kv)?);
            }
        }
        Ok(snap)
    }
}

fn find_problems(keys: &Keys, snap: &Snapshot) -> Vec<Finding> {
    let mut out = Vec::new();
    block_findings(keys, snap, &mut out);
    affinity_findings(keys, snap, &mut out);
    handle_findings(keys, snap, &mut out);
    out
}

fn block_findings(keys: &Keys, snap: &Snapshot, out: &mut Vec<Finding>) {
    let affinity_keys: BTreeSet<(String, Ipv4Network)> = snap
        .affinities
        .iter()
        .map(|(n, c, _)| (n.clone(), *c))
        .collect();
    for (cidr, block) in &snap.blocks {
        let key = keys.block(*cidr);
        let in_pool = snap
            .pools
            .iter()
            .any(|p| p.cidr.contains(cidr.network()) && p.cidr.prefix() <= cidr.prefix());
        let delete_block = || {
            let mut ops = vec![Op::Delete { key: key.clone() }];
            if let Some(node) = &block.value.affinity {
                ops.push(Op::Delete {
                    key: keys.affinity(node, *cidr),
                });
            }
            ops
        };
        if !in_pool {
            let n = block.value.allocations.len();
            let (repair, action) = if n == 0 {
                (
                    Some(Repair {
                        compares: vec![Compare::unchanged(&key, Some(block.revision))],
                        ops: delete_block(),
                        action: "delete the empty block and its affinity".into(),
                    }),
                    String::new(),
                )
            } else {
                (
                    None,
                    format!(
                        "left alone: it still holds {n} addresses; release them with `brindle ipam release --ip`"
                    ),
                )
            };
            out.push(Finding {
                problem: problem(
                    ProblemKind::BlockOutsidePools,
                    &key,
                    format!("block {cidr} lies in no pool"),
                    action,
                ),
                repair,
            });
            continue;
        }
        if block.value.allocations.is_empty() {
            out.push(Finding {
                problem: problem(
                    ProblemKind::EmptyBlock,
                    &key,
                    format!(
                        "block {cidr} (node {}) has no allocations",
                        block.value.affinity.as_deref().unwrap_or("none")
                    ),
                    String::new(),
                ),
                repair: Some(Repair {
                    compares: vec![Compare::unchanged(&key, Some(block.revision))],
                    ops: delete_block(),
                    action: "delete the empty block and its affinity".into(),
                }),
            });
            continue;
        }
        if let Some(node) = &block.value.affinity {
            if !affinity_keys.contains(&(node.clone(), *cidr)) {
                let aff = keys.affinity(node, *cidr);
                out.push(Finding {
                    problem: problem(
                        ProblemKind::BlockWithoutAffinity,
                        &key,
                        format!("block {cidr} names node {node} but {aff} is missing"),
                        String::new(),
                    ),
                    repair: Some(Repair {
                        compares: vec![
                            Compare::unchanged(&key, Some(block.revision)),
                            Compare::unchanged(&aff, None),
                        ],
                        ops: vec![Op::Put {
                            key: aff,
                            value: encode(&Affinity::confirmed()),
                        }],
                        action: "recreate the affinity".into(),
                    }),
                });
            }
        }
    }
}

fn affinity_findings(keys: &Keys, snap: &Snapshot, out: &mut Vec<Finding>) {
    for (node, cidr, rev) in &snap.affinities {
        let block = snap.blocks.get(cidr);
        let owner = block.and_then(|b| b.value.affinity.as_deref());
        if owner == Some(node.as_str()) {
            continue;
        }
        let key = keys.affinity(node, *cidr);
        let detail = match owner {
            None if block.is_none() => {
                format!("node {node} claims block {cidr}, which does not exist")
            }
            None => format!("node {node} claims block {cidr}, which has no affinity"),
            Some(other) => {
                format!("node {node} claims block {cidr}, which belongs to node {other}")
            }
        };
        let block_key = keys.block(*cidr);
        out.push(Finding {
            problem: problem(
                ProblemKind::AffinityWithoutBlock,
                &key,
                detail,
                String::new(),
            ),
            repair: Some(Repair {
                compares: vec![
                    Compare::unchanged(&key, Some(*rev)),
                    Compare::unchanged(&block_key, block.map(|b| b.revision)),
                ],
                ops: vec![Op::Delete { key: key.clone() }],
                action: "delete the affinity".into(),
            }),
        });
    }
}

fn handle_findings(keys: &Keys, snap: &Snapshot, out: &mut Vec<Finding>) {
    // Who the blocks say holds each address, and who the handles say.
    let allocations = snap
        .blocks
        .values()
        .map(|b| b.value.allocations.len())
        .sum();
    let mut owner_by_block: HashMap<Ipv4Addr, (&str, Ipv4Network)> =
        HashMap::with_capacity(allocations);
    for (cidr, block) in &snap.blocks {
        for (ip, a) in &block.value.allocations {
            owner_by_block.insert(*ip, (a.handle.as_str(), *cidr));
        }
    }
    // How many handles list each address (only whether more than one does matters).
    let mut listed_by: HashMap<Ipv4Addr, usize> = HashMap::with_capacity(owner_by_block.len());
    for record in snap.handles.values() {
        for ip in record.value.addresses.keys() {
            *listed_by.entry(*ip).or_default() += 1;
        }
    }

    // Handle entries the blocks do not back: drop them from the handle.
    for (id, record) in &snap.handles {
        let key = keys.handle(id);
        let stale: Vec<Ipv4Addr> = record
            .value
            .addresses
            .keys()
            .filter(|ip| owner_by_block.get(*ip).map(|(h, _)| *h) != Some(id.as_str()))
            .copied()
            .collect();
        if stale.is_empty() {
            continue;
        }
        let double = stale
            .iter()
            .any(|ip| owner_by_block.contains_key(ip) && listed_by.get(ip).is_some_and(|n| *n > 1));
        let kind = if double {
            ProblemKind::DoubleOwned
        } else {
            ProblemKind::HandleWithoutAllocation
        };
        let reasons: Vec<String> = stale
            .iter()
            .map(|ip| match owner_by_block.get(ip) {
                Some((holder, _)) => format!("{ip} is allocated to handle {holder}"),
                None => format!("{ip} is not allocated"),
            })
            .collect();
        let detail = format!(
            "handle {id} lists addresses it does not hold: {}",
            reasons.join("; ")
        );
        let mut rest = record.value.clone();
        rest.addresses.retain(|a, _| !stale.contains(a));
        let op = if rest.addresses.is_empty() {
            Op::Delete { key: key.clone() }
        } else {
            Op::Put {
                key: key.clone(),
                value: encode(&rest),
            }
        };
        let mut compares = vec![Compare::unchanged(&key, Some(record.revision))];
        let cidrs: BTreeSet<Ipv4Network> =
            stale.iter().map(|ip| record.value.addresses[ip]).collect();
        for cidr in cidrs {
            compares.push(Compare::unchanged(
                keys.block(cidr),
                snap.blocks.get(&cidr).map(|b| b.revision),
            ));
        }
        out.push(Finding {
            problem: problem(kind, &key, detail, String::new()),
            repair: Some(Repair {
                compares,
                ops: vec![op],
                action: format!("remove {} from handle {id}", join(&stale)),
            }),
        });
    }

    // Allocations whose handle record does not list them: (re)write the record.
    let mut missing: BTreeMap<&str, Vec<(Ipv4Addr, Ipv4Network)>> = BTreeMap::new();
    for (ip, (holder, cidr)) in &owner_by_block {
        let listed = snap
            .handles
            .get(*holder)
            .is_some_and(|r| r.value.addresses.contains_key(ip));
        if !listed {
            missing.entry(holder).or_default().push((*ip, *cidr));
        }
    }
    for (holder, addrs) in missing {
        let key = keys.handle(holder);
        let current = snap.handles.get(holder);
        let mut record = current.map(|r| r.value.clone()).unwrap_or_default();
        record.addresses.extend(addrs.iter().copied());
        let ips: Vec<Ipv4Addr> = addrs.iter().map(|(ip, _)| *ip).collect();
        let mut compares = vec![Compare::unchanged(&key, current.map(|r| r.revision))];
        for (_, cidr) in &addrs {
            compares.push(Compare::unchanged(
                keys.block(*cidr),
                snap.blocks.get(cidr).map(|b| b.revision),
            ));
        }
        compares.dedup();
        out.push(Finding {
            problem: problem(
                ProblemKind::AllocationWithoutHandle,
                &key,
                format!(
                    "{} allocated to handle {holder}, whose record does not list it",
                    join(&ips)
                ),
                String::new(),
            ),
            repair: Some(Repair {
                compares,
                ops: vec![Op::Put {
                    key,
                    value: encode(&record),
                }],
                action: format!("record {} under handle {holder}", join(&ips)),
            }),
        });
    }
}

fn problem(kind: ProblemKind, key: &str, detail: String, action: String) -> Problem {
    Problem {
        kind,
        key: key.to_string(),
        detail,
        repaired: false,
        action,
    }
}

fn join(ips: &[Ipv4Addr]) -> String {
    ips.iter()
        .map(|ip| ip.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
