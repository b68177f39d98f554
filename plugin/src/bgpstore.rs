//! The BGP model in etcd, next to IPAM's records (keys: `brindle_ipam::Keys::node`,
//! `bgp_global`, `bgp_peer`; the layout table is in `brindle_ipam::state::keys`):
//!
//! ```text
//! PREFIX/v1/nodes/NAME        BgpNode   (name, ip, as_num?, rr_cluster_id?)
//! PREFIX/v1/node-identity/NAME NodeMachine (machine-id, boot id, hostname of its owner)
//! PREFIX/v1/bgp/global        BgpGlobal (absent = defaults: AS 64512, mesh on)
//! PREFIX/v1/bgp/peers/NAME    BgpPeer   (node = none: a global peer)
//! ```
//!
//! Every write is one transaction that compares the revision it read (absent = must
//! still be absent), retried by the state layer's `cas_loop` like IPAM's.
//! [`routing_view`] turns IPAM's blocks and pools into what the renderers read.
//!
//! Every record read is checked against its key and the rules its writers keep
//! (`checked.rs`); [`decode_record`] does the same for a value from a watch.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use brindle_bgp::{
    validate_global, validate_node, validate_nodes, validate_peer, validate_peers, BgpError,
    BgpGlobal, BgpNode, BgpPeer, BorrowedIp, RoutedBlock, RoutedPool, RoutingView,
};
use brindle_ipam::state::{
    self, cas_delete, cas_loop, cas_put, Attempt, CorruptRecord, StateError,
};
use brindle_ipam::store::{Store, StoreError};
use brindle_ipam::{Block, Keys, Pool, Versioned};

mod checked;

pub use checked::{decode as decode_record, StoredRecord, MAX_MACHINE_FIELD};

/// Errors of the BGP store. Each is one sentence naming the value and the way out.
#[derive(Debug, thiserror::Error)]
pub enum BgpStoreError {
    /// etcd itself failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The value is not valid BGP configuration.
    #[error(transparent)]
    Invalid(#[from] BgpError),
    /// A stored record is not what brindle writes.
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
    /// `node set` on a new node without `--ip`.
    #[error("node {0:?} is not registered yet, so it needs an address: add --ip ADDR")]
    NodeNeedsIp(String),
    /// The node does not exist.
    #[error("node {0:?} does not exist; `brindle node list` shows the registered nodes")]
    NoSuchNode(String),
    /// The node IP belongs to another node.
    #[error("IP {ip} is already the IP of node {other:?}; every node needs its own address")]
    NodeIpTaken {
        /// The address.
        ip: Ipv4Addr,
        /// The node using it.
        other: String,
    },
    /// Another machine owns the node name (a cloned VM, a reinstalled host).
    #[error(
        "node name {name:?} is already used by another machine: host {} (machine-id {}, {}) registered it, and this host's machine-id is {mine}; if this host is a copy of it, give it a name of its own (--node or BRINDLE_NODE) and a machine-id of its own (systemd-machine-id-setup); if that machine is gone for good, run `brindle node rm {name}` and start brindled again",
        other.hostname,
        other.machine_id,
        ip.map(|ip| format!("node IP {ip}")).unwrap_or_else(|| "no node IP".into())
    )]
    NodeNameTaken {
        /// The node name.
        name: String,
        /// The machine owning it.
        other: Box<NodeMachine>,
        /// Its node IP, when it has a BGP record.
        ip: Option<Ipv4Addr>,
        /// This machine's machine-id.
        mine: String,
    },
    /// The peer does not exist.
    #[error("BGP peer {0:?} does not exist; `brindle bgp peer list` shows the peers")]
    NoSuchPeer(String),
    /// A peer with this name exists.
    #[error("BGP peer {0:?} already exists; remove it first with `brindle bgp peer rm {0}`")]
    PeerExists(String),
    /// Too many concurrent writers.
    #[error(
        "the BGP records kept changing while brindle tried to update them ({attempts} attempts); try again"
    )]
    Contention {
        /// Attempts made.
        attempts: u32,
    },
}

impl From<StateError> for BgpStoreError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Store(e) => BgpStoreError::Store(e),
            StateError::Corrupt(e) => BgpStoreError::Corrupt(e),
            StateError::Contention { attempts } => BgpStoreError::Contention { attempts },
        }
    }
}

async fn list<S: Store, T: StoredRecord>(store: &S, prefix: &str) -> Result<Vec<T>, BgpStoreError> {
    let all = checked::read_all(store, prefix).await?;
    Ok(all.into_iter().map(|r| r.value).collect())
}

/// Delete a record as read (compare and swap, retried); `missing` when it is absent.
async fn remove<S: Store, T: StoredRecord>(
    store: &S,
    key: &str,
    missing: impl Fn() -> BgpStoreError,
) -> Result<T, BgpStoreError> {
    let missing = &missing;
    let (value, _) = cas_loop::<BgpStoreError, _, _>(store, || async move {
        let Some(current) = checked::read::<T>(store, key).await? else {
            return Err(missing());
        };
        Ok(Attempt::Commit(
            cas_delete(key, current.revision),
            current.value,
        ))
    })
    .await?;
    Ok(value)
}

// ------------------------------------------------------------------ global

/// The global settings (defaults when never set), with the revision read
/// (`None` = absent).
pub async fn get_global<S: Store>(
    store: &S,
    keys: &Keys,
) -> Result<(BgpGlobal, Option<i64>), BgpStoreError> {
    Ok(
        match checked::read::<BgpGlobal>(store, &keys.bgp_global()).await? {
            Some(r) => (r.value, Some(r.revision)),
            None => (BgpGlobal::default(), None),
        },
    )
}

/// Read, change with `edit`, validate and write the global settings (compare and
/// swap, retried). Returns the stored value.
pub async fn update_global<S: Store>(
    store: &S,
    keys: &Keys,
    edit: impl Fn(&mut BgpGlobal) -> Result<(), BgpStoreError>,
) -> Result<BgpGlobal, BgpStoreError> {
    let key = &keys.bgp_global();
    let edit = &edit;
    let (global, _) = cas_loop::<BgpStoreError, _, _>(store, || async move {
        let (mut global, revision) = get_global(store, keys).await?;
        edit(&mut global)?;
        validate_global(&global)?;
        Ok(Attempt::Commit(cas_put(key, revision, &global), global))
    })
    .await?;
    Ok(global)
}

// ------------------------------------------------------------------ nodes

/// Every node, sorted by name.
pub async fn list_nodes<S: Store>(store: &S, keys: &Keys) -> Result<Vec<BgpNode>, BgpStoreError> {
    list(store, &keys.nodes()).await
}

/// One node.
pub async fn get_node<S: Store>(
    store: &S,
    keys: &Keys,
    name: &str,
) -> Result<Option<Versioned<BgpNode>>, BgpStoreError> {
    brindle_bgp::validate_node_name(name)?;
    Ok(checked::read(store, &keys.node(name)).await?)
}

/// A change to a node record: `None` fields keep what is stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeUpdate {
    /// New IP.
    pub ip: Option<Ipv4Addr>,
    /// New AS: `Some(None)` clears it (the node then speaks the global AS).
    pub as_num: Option<Option<u32>>,
    /// New route-reflector cluster id: `Some(None)` makes it a plain node.
    pub rr_cluster_id: Option<Option<Ipv4Addr>>,
}

/// What [`set_node`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeWritten {
    /// The stored node.
    pub node: BgpNode,
    /// It did not exist before.
    pub created: bool,
    /// The stored record changed (false when it already said the same).
    pub changed: bool,
}

/// Creates or updates node `name` (compare and swap, retried). A new node needs an
/// IP; an IP used by another node is refused.
pub async fn set_node<S: Store>(
    store: &S,
    keys: &Keys,
    name: &str,
    update: &NodeUpdate,
) -> Result<NodeWritten, BgpStoreError> {
    brindle_bgp::validate_node_name(name)?;
    let key = &keys.node(name);
    let (written, _) = cas_loop::<BgpStoreError, _, _>(store, || async move {
        let current = checked::read::<BgpNode>(store, key).await?;
        let node = match &current {
            Some(r) => BgpNode {
                name: name.to_string(),
                ip: update.ip.unwrap_or(r.value.ip),
                as_num: update.as_num.unwrap_or(r.value.as_num),
                rr_cluster_id: update.rr_cluster_id.unwrap_or(r.value.rr_cluster_id),
            },
            None => BgpNode {
                name: name.to_string(),
                ip: update
                    .ip
                    .ok_or_else(|| BgpStoreError::NodeNeedsIp(name.to_string()))?,
                as_num: update.as_num.flatten(),
                rr_cluster_id: update.rr_cluster_id.flatten(),
            },
        };
        validate_node(&node)?;
        if current.as_ref().map(|r| &r.value) == Some(&node) {
            return Ok(Attempt::Done(NodeWritten {
                node,
                created: false,
                changed: false,
            }));
        }
        if let Some(other) = list_nodes(store, keys)
            .await?
            .into_iter()
            .find(|n| n.name != name && n.ip == node.ip)
        {
            return Err(BgpStoreError::NodeIpTaken {
                ip: node.ip,
                other: other.name,
            });
        }
        let txn = cas_put(key, current.as_ref().map(|r| r.revision), &node);
        Ok(Attempt::Commit(
            txn,
            NodeWritten {
                node,
                created: current.is_none(),
                changed: true,
            },
        ))
    })
    .await?;
    Ok(written)
}

/// What [`remove_node`] removed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RemovedNode {
    /// The BGP record (none for a node registered without an IP).
    pub node: Option<BgpNode>,
    /// The machine that owned the name.
    pub machine: Option<NodeMachine>,
}

/// Removes node `name`: its BGP record and the claim of its machine, so another
/// machine may use the name. Returns what was removed.
pub async fn remove_node<S: Store>(
    store: &S,
    keys: &Keys,
    name: &str,
) -> Result<RemovedNode, BgpStoreError> {
    brindle_bgp::validate_node_name(name)?;
    let missing = || BgpStoreError::NoSuchNode(name.to_string());
    let node = match remove(store, &keys.node(name), missing).await {
        Ok(n) => Some(n),
        Err(BgpStoreError::NoSuchNode(_)) => None,
        Err(e) => return Err(e),
    };
    let machine = match remove(store, &keys.node_identity(name), missing).await {
        Ok(m) => Some(m),
        Err(BgpStoreError::NoSuchNode(_)) => None,
        Err(e) => return Err(e),
    };
    if node.is_none() && machine.is_none() {
        return Err(missing());
    }
    Ok(RemovedNode { node, machine })
}

// ------------------------------------------------------------------ node identity

/// The machine behind a node name: two hosts must never act as one node (each
/// would release and sweep the other's addresses), and a cloned VM keeps its
/// original's hostname, so brindled claims its node name for its machine at start.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeMachine {
    /// `/etc/machine-id`: stable across reboots, unique per installation.
    pub machine_id: String,
    /// `/proc/sys/kernel/random/boot_id`: new at every boot.
    pub boot_id: String,
    /// The hostname, for messages.
    pub hostname: String,
    /// When this boot claimed the name (seconds since the Unix epoch).
    #[serde(default)]
    pub since: u64,
}

/// What [`claim_node`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The name was free (or its record predates machine identities).
    New,
    /// This machine, this boot: brindled restarted.
    Restarted,
    /// This machine after a reboot (the boot id it had before).
    Rebooted(String),
}

/// Every node name's machine, by node name.
pub async fn node_machines<S: Store>(
    store: &S,
    keys: &Keys,
) -> Result<BTreeMap<String, NodeMachine>, BgpStoreError> {
    let prefix = keys.node_identities();
    Ok(checked::read_entries::<NodeMachine>(store, &prefix)
        .await?
        .into_iter()
        .filter_map(|(key, m)| Some((Keys::name_in(&prefix, &key)?.to_string(), m.value)))
        .collect())
}

/// The machine owning node `name`, if any.
pub async fn node_machine<S: Store>(
    store: &S,
    keys: &Keys,
    name: &str,
) -> Result<Option<NodeMachine>, BgpStoreError> {
    brindle_bgp::validate_node_name(name)?;
    Ok(checked::read(store, &keys.node_identity(name))
        .await?
        .map(|r| r.value))
}

/// Claims node `name` for machine `me` (compare and swap on the identity record,
/// retried): free names are taken, the same machine-id takes its own name back (a
/// restart, or a reboot with a new boot id), and a name owned by another machine is
/// refused with [`BgpStoreError::NodeNameTaken`]. A dead machine's claim goes only
/// with `brindle node rm NAME` ([`remove_node`]).
pub async fn claim_node<S: Store>(
    store: &S,
    keys: &Keys,
    name: &str,
    me: &NodeMachine,
) -> Result<Claim, BgpStoreError> {
    brindle_bgp::validate_node_name(name)?;
    let key = &keys.node_identity(name);
    let (claim, _) = cas_loop::<BgpStoreError, _, _>(store, || async move {
        let current = checked::read::<NodeMachine>(store, key).await?;
        let claim = match &current {
            None => Claim::New,
            Some(r) if r.value.machine_id != me.machine_id => {
                let ip = checked::read::<BgpNode>(store, &keys.node(name))
                    .await?
                    .map(|n| n.value.ip);
                return Err(BgpStoreError::NodeNameTaken {
                    name: name.to_string(),
                    other: Box::new(r.value.clone()),
                    ip,
                    mine: me.machine_id.clone(),
                });
            }
            Some(r) if r.value.boot_id == me.boot_id => {
                if r.value.hostname == me.hostname {
                    return Ok(Attempt::Done(Claim::Restarted));
                }
                Claim::Restarted
            }
            Some(r) => Claim::Rebooted(r.value.boot_id.clone()),
        };
        let mut record = me.clone();
        if claim == Claim::Restarted {
            record.since = current.as_ref().map_or(me.since, |r| r.value.since);
        }
        Ok(Attempt::Commit(
            cas_put(key, current.map(|r| r.revision), &record),
            claim,
        ))
    })
    .await?;
    Ok(claim)
}

// ------------------------------------------------------------------ peers

/// Every peer, sorted by name.
pub async fn list_peers<S: Store>(store: &S, keys: &Keys) -> Result<Vec<BgpPeer>, BgpStoreError> {
    list(store, &keys.bgp_peers()).await
}

/// Adds a peer (create-if-absent). Refuses a name in use and a second peer with the
/// same address in the same scope (global, or the same node).
pub async fn add_peer<S: Store>(
    store: &S,
    keys: &Keys,
    peer: &BgpPeer,
) -> Result<(), BgpStoreError> {
    validate_peer(peer)?;
    let key = keys.bgp_peer(&peer.name);
    let mut all = list_peers(store, keys).await?;
    if all.iter().any(|p| p.name == peer.name) {
        return Err(BgpStoreError::PeerExists(peer.name.clone()));
    }
    all.push(peer.clone());
    validate_peers(&all)?;
    if state::put_if(store, &key, None, peer).await? {
        Ok(())
    } else {
        Err(BgpStoreError::PeerExists(peer.name.clone()))
    }
}

/// Removes a peer. Returns the removed record.
pub async fn remove_peer<S: Store>(
    store: &S,
    keys: &Keys,
    name: &str,
) -> Result<BgpPeer, BgpStoreError> {
    brindle_bgp::validate_peer_name(name)?;
    remove(store, &keys.bgp_peer(name), || {
        BgpStoreError::NoSuchPeer(name.to_string())
    })
    .await
}

// ------------------------------------------------------------------ routing view

/// What the renderers need from IPAM: every block with its affine node, every
/// borrowed address (an allocation whose `node` attribute differs from its block's
/// affinity) with the node holding it, and every pool.
pub fn routing_view<'a>(
    blocks: impl IntoIterator<Item = &'a Block>,
    pools: impl IntoIterator<Item = &'a Pool>,
) -> RoutingView {
    let mut view = RoutingView::default();
    let mut borrowed: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for b in blocks {
        view.blocks.push(RoutedBlock {
            cidr: b.cidr,
            node: b.affinity.clone(),
        });
        for (ip, a) in &b.allocations {
            if let Some(holder) = a.node() {
                if Some(holder) != b.affinity.as_deref() {
                    borrowed.insert(*ip, holder.to_string());
                }
            }
        }
    }
    view.borrowed = borrowed
        .into_iter()
        .map(|(ip, node)| BorrowedIp { ip, node })
        .collect();
    view.pools = pools
        .into_iter()
        .map(|p| RoutedPool {
            name: p.name.clone(),
            cidr: p.cidr,
            disabled: p.disabled,
        })
        .collect();
    view
}

/// Validates a node list as a whole (unique names and IPs), for warnings.
pub fn check_nodes(nodes: &[BgpNode]) -> Result<(), BgpError> {
    validate_nodes(nodes)
}

#[cfg(test)]
mod tests;
