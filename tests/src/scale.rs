//! Large brindle states written fast, for `bench-scale`.
//!
//! Pools go through the IPAM API; nodes, blocks, affinities, handles and endpoint
//! records are written as brindle's own types under [`Keys`], in transactions of at
//! most [`OPS_PER_TXN`] writes (etcd refuses more than 128 by default), several in
//! flight. Blocks are claimed and filled with the allocator's own arithmetic
//! (`brindle_ipam::cidr`): each node's claims start at its claim offset and skip taken
//! blocks, addresses are taken in the block's order. The result is what as many
//! `Ipam::allocate` calls would leave, written in seconds instead of minutes.
//!
//! - [`netns_agent`]: one real brindled in a network namespace of its own;
//! - [`views`]: many simulated agents, each following etcd with the agent's own
//!   load-and-watch code.

pub mod netns_agent;
pub mod views;

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use anyhow::{bail, Context};
use brindle_bgp::BgpNode;
use brindle_ipam::cidr::{block_count, claim_start, next_free, nth_block};
use brindle_ipam::model::{Affinity, Allocation, ATTR_NODE};
use brindle_ipam::state::encode;
use brindle_ipam::store::{Compare, Op, Txn, TxnOutcome};
use brindle_ipam::{Block, EtcdStore, HandleRecord, Keys, Pool, Store};
use brindle_plugin::cni::ops::{
    handle_for, ATTR_CNI_MODE, ATTR_CONTAINER, ATTR_IFNAME, ATTR_NETWORK, ATTR_ORCHESTRATOR,
    ORCHESTRATOR_CNI,
};
use brindle_plugin::endpoints::{put_endpoint_op, EndpointRecord};
use ipnetwork::Ipv4Network;
use tokio::task::JoinSet;

use crate::cni::host_ifname;

/// Writes per transaction: below etcd's default limit of 128 operations.
pub const OPS_PER_TXN: usize = 100;

/// Transactions in flight at once while populating (etcd batches their fsyncs).
const IN_FLIGHT: usize = 8;

/// The CNI network every simulated container is attached to.
pub const NETWORK: &str = "scale";

/// One address to hand out: its owner and the attributes stored with it.
#[derive(Debug, Clone)]
pub struct Owner {
    pub handle: String,
    pub attrs: BTreeMap<String, String>,
}

/// An address handed out by [`BulkPool::allocate`].
#[derive(Debug, Clone)]
pub struct Placed {
    pub ip: Ipv4Addr,
    pub handle: String,
    pub block: Ipv4Network,
}

/// Hands out the addresses of one pool as the allocator would, as transactions.
pub struct BulkPool {
    keys: Keys,
    pool: Pool,
    claimed: HashSet<Ipv4Network>,
}

impl BulkPool {
    /// A writer for `pool`, knowing the blocks already in `store`.
    pub async fn new(store: &EtcdStore, keys: Keys, pool: Pool) -> anyhow::Result<Self> {
        let mut bulk = Self {
            keys,
            pool,
            claimed: HashSet::new(),
        };
        bulk.refresh(store).await?;
        Ok(bulk)
    }

    /// Learns the blocks others claimed since (through the allocator).
    pub async fn refresh(&mut self, store: &EtcdStore) -> anyhow::Result<()> {
        let existing = store.list_keys(&self.keys.blocks()).await?;
        self.claimed
            .extend(existing.iter().filter_map(|k| Keys::cidr_of(k)));
        Ok(())
    }

    /// Blocks known to be taken (existing or handed out here).
    pub fn claimed(&self) -> usize {
        self.claimed.len()
    }

    /// Gives each owner an address on `node`, in new blocks claimed for it; one
    /// transaction per block (block, affinity, handles; the block must not exist yet).
    pub fn allocate(
        &mut self,
        node: &str,
        owners: Vec<Owner>,
    ) -> anyhow::Result<(Vec<Txn>, Vec<Placed>)> {
        let mut txns = Vec::new();
        let mut placed = Vec::new();
        let mut rest = owners.into_iter().peekable();
        while rest.peek().is_some() {
            let cidr = self.claim(node).context("the pool is full")?;
            let mut block = Block {
                cidr,
                pool: self.pool.name.clone(),
                affinity: Some(node.to_string()),
                allocations: BTreeMap::new(),
                cursor: 0,
            };
            let mut handles = Vec::new();
            while let Some((ip, cursor)) = next_free(&self.pool, &block) {
                let Some(owner) = rest.next() else { break };
                let mut attrs = owner.attrs;
                attrs.insert(ATTR_NODE.to_string(), node.to_string());
                block.allocations.insert(
                    ip,
                    Allocation {
                        handle: owner.handle.clone(),
                        attrs,
                    },
                );
                block.cursor = cursor;
                placed.push(Placed {
                    ip,
                    handle: owner.handle.clone(),
                    block: cidr,
                });
                handles.push((owner.handle, ip));
            }
            txns.push(self.claim_txn(node, &block, handles));
        }
        Ok((txns, placed))
    }

    /// The next free block at `node`'s claim offset, as the allocator picks it.
    fn claim(&mut self, node: &str) -> Option<Ipv4Network> {
        let count = block_count(&self.pool);
        let start = claim_start(&self.pool, node);
        let cidr = (0..count)
            .map(|i| nth_block(&self.pool, (start + i) % count))
            .find(|c| !self.claimed.contains(c))?;
        self.claimed.insert(cidr);
        Some(cidr)
    }

    fn claim_txn(&self, node: &str, block: &Block, handles: Vec<(String, Ipv4Addr)>) -> Txn {
        let block_key = self.keys.block(block.cidr);
        let mut ops = vec![
            Op::Put {
                key: block_key.clone(),
                value: encode(block),
            },
            Op::Put {
                key: self.keys.affinity(node, block.cidr),
                value: encode(&Affinity::confirmed()),
            },
        ];
        for (handle, ip) in handles {
            let record = HandleRecord {
                addresses: BTreeMap::from([(ip, block.cidr)]),
            };
            ops.push(Op::Put {
                key: self.keys.handle(&handle),
                value: encode(&record),
            });
        }
        Txn {
            compares: vec![Compare::unchanged(block_key, None)],
            ops,
            read_on_conflict: Vec::new(),
        }
    }
}

/// Plain writes grouped into transactions of [`OPS_PER_TXN`].
pub fn batches(ops: Vec<Op>) -> Vec<Txn> {
    ops.chunks(OPS_PER_TXN)
        .map(|chunk| Txn {
            ops: chunk.to_vec(),
            ..Txn::default()
        })
        .collect()
}

/// Commits every transaction, [`IN_FLIGHT`] at a time.
pub async fn commit_all(store: &EtcdStore, txns: Vec<Txn>) -> anyhow::Result<()> {
    let mut running = JoinSet::new();
    for txn in txns {
        if running.len() >= IN_FLIGHT {
            if let Some(done) = running.join_next().await {
                done??;
            }
        }
        let store = store.clone();
        running.spawn(async move { commit(&store, txn).await });
    }
    while let Some(done) = running.join_next().await {
        done??;
    }
    Ok(())
}

/// Commits one transaction. A conflict is either an outcome etcd could not confirm
/// (the store re-reads and reports a conflict): done when the first write's key holds
/// its value, sent again when it is absent; or a key someone else took: an error (the
/// writers above only create what does not exist yet).
async fn commit(store: &EtcdStore, txn: Txn) -> anyhow::Result<()> {
    let Some(Op::Put { key, value }) = txn.ops.first().cloned() else {
        bail!("a populating transaction must start with a write");
    };
    for _ in 0..3 {
        if let TxnOutcome::Committed { .. } = store.txn(txn.clone()).await? {
            return Ok(());
        }
        match store.get(&key).await? {
            Some(kv) if kv.value == value => return Ok(()),
            Some(_) => bail!("a populating transaction found {key} taken"),
            None => continue,
        }
    }
    bail!("the transaction writing {key} did not commit in 3 tries")
}

/// The record of node `name` at `ip`.
pub fn node_op(keys: &Keys, name: &str, ip: Ipv4Addr) -> Op {
    let node = BgpNode {
        name: name.to_string(),
        ip,
        as_num: None,
        rr_cluster_id: None,
    };
    Op::Put {
        key: keys.node(name),
        value: encode(&node),
    }
}

/// A container id shaped like Docker's and containerd's (64 hex digits), stable for
/// (`node`, `n`).
pub fn container_id(node: &str, n: usize) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain(n.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let parts = [h, h.rotate_left(16), h.rotate_left(32), h.rotate_left(48)];
    parts.iter().map(|p| format!("{p:016x}")).collect()
}

/// The owner brindle-cni gives a container's `eth0` (handle and attributes).
pub fn cni_owner(container: &str) -> Owner {
    let attrs = BTreeMap::from([
        (ATTR_ORCHESTRATOR.to_string(), ORCHESTRATOR_CNI.to_string()),
        (ATTR_NETWORK.to_string(), NETWORK.to_string()),
        (ATTR_CONTAINER.to_string(), container.to_string()),
        (ATTR_IFNAME.to_string(), "eth0".to_string()),
        (ATTR_CNI_MODE.to_string(), "main".to_string()),
    ]);
    Owner {
        handle: handle_for(container, "eth0"),
        attrs,
    }
}

/// The endpoint record brindle-cni writes for a container's `eth0` at `ip`.
pub fn cni_endpoint(node: &str, container: &str, ip: Ipv4Addr) -> EndpointRecord {
    let id = handle_for(container, "eth0");
    EndpointRecord {
        id: id.clone(),
        node: node.to_string(),
        orchestrator: ORCHESTRATOR_CNI.to_string(),
        container_id: Some(container.to_string()),
        network: NETWORK.to_string(),
        ip,
        mac: None,
        host_ifname: host_ifname(container, "eth0"),
        handle: id,
        segment: Some(format!("cni:{NETWORK}")),
        allow_from: Vec::new(),
    }
}

/// The write of an endpoint record.
pub fn endpoint_op(keys: &Keys, record: &EndpointRecord) -> Op {
    put_endpoint_op(keys, record)
}
