//! The records IPAM stores, as JSON.
//!
//! [`Pool`], [`Block`] and [`HandleRecord`] check their rules while deserialising
//! (`checked.rs`): the address arithmetic relies on them, and a record written by
//! another tool or an older version must become an error naming its key, never a panic
//! or an unbounded loop.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// Attribute key naming the node that holds an allocation.
pub const ATTR_NODE: &str = "node";

mod checked;

/// An IP pool: a CIDR split into blocks of `block_size`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Pool {
    pub name: String,
    pub cidr: Ipv4Network,
    /// Prefix length of the pool's blocks (default 26).
    pub block_size: u8,
    /// A disabled pool hands out no dynamic addresses; fixed requests still work.
    #[serde(default)]
    pub disabled: bool,
    /// Addresses never handed out (beside the pool's network and broadcast addresses).
    #[serde(default)]
    pub reserved: BTreeSet<Ipv4Addr>,
    /// Set while `pool rm` runs: allocations are refused so the removal sees a stable pool.
    /// A removal that failed or was interrupted leaves it set; the next `pool rm`
    /// finishes the removal, or clears it when the pool still has addresses and
    /// `--force` is not given.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleting: bool,
    /// When `deleting` was set (seconds since the Unix epoch, the remover's clock), so
    /// `pool list` can tell a removal in progress from one left behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleting_since: Option<u64>,
    /// Masquerade traffic from this pool to destinations outside every pool (Calico's
    /// natOutgoing). Off by default: a routed pool needs no NAT.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nat_outgoing: bool,
}

/// One allocated address inside a block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub handle: String,
    /// `node` plus free-form owner attributes (container, network, endpoint, ...).
    #[serde(default)]
    pub attrs: BTreeMap<String, String>,
}

impl Allocation {
    pub fn node(&self) -> Option<&str> {
        self.attrs.get(ATTR_NODE).map(String::as_str)
    }
}

/// A block of addresses, usually affine to one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Block {
    pub cidr: Ipv4Network,
    pub pool: String,
    /// The node this block belongs to; its routes are advertised by that node.
    pub affinity: Option<String>,
    #[serde(default)]
    pub allocations: BTreeMap<Ipv4Addr, Allocation>,
    /// Offset where the next free-address search starts, so a just-released address is
    /// the last to be reused (stale conntrack and ARP entries age out first).
    #[serde(default)]
    pub cursor: u32,
}

/// Marks a block as claimed by a node; its value is informational.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affinity {
    pub state: String,
}

impl Affinity {
    pub fn confirmed() -> Self {
        Self {
            state: "confirmed".into(),
        }
    }
}

/// The secondary index from an owner handle to its addresses, so release by handle
/// touches only the blocks involved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct HandleRecord {
    /// address → the block holding it.
    pub addresses: BTreeMap<Ipv4Addr, Ipv4Network>,
}
