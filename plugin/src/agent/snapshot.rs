//! The agent's view of etcd: everything that decides this node's routes, BIRD
//! configuration and firewall, kept current from one etcd watch (see `watch.rs`) and
//! handed to the passes as an immutable [`Snapshot`].
//!
//! The view is compact and shared: of blocks and endpoints it keeps only what the
//! passes read (below), and each section sits behind an `Arc` (`cow.rs`), so cloning
//! a snapshot to publish it copies pointers, and a change copies only its section
//! (for endpoints, only its node's group).

use std::sync::Arc;

use brindle_bgp::{BgpGlobal, BgpNode, BgpPeer, RoutingView};
use brindle_ipam::model::ATTR_NODE;
use brindle_ipam::state::decode_value;
use brindle_ipam::{Allocation, Block, Keys, Pool};
use serde::de::DeserializeOwned;
use tracing::warn;

use super::cow::CowMap;
pub use super::endpoint_view::{EndpointView, Endpoints, Entry};
use crate::bgpstore;
use crate::endpoints::EndpointRecord;

/// Where the watched records live (each taken from [`Keys`]; the layout is its own),
/// and whose view it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefixes {
    /// `PREFIX/v1/`: the one watch covers everything below.
    pub root: String,
    /// `PREFIX/v1/nodes/`.
    pub nodes: String,
    /// `PREFIX/v1/bgp/global`.
    pub global: String,
    /// `PREFIX/v1/bgp/peers/`.
    pub peers: String,
    /// `PREFIX/v1/pools/`.
    pub pools: String,
    /// `PREFIX/v1/ipam/blocks/`.
    pub blocks: String,
    /// `PREFIX/v1/endpoints/`: every node's endpoints (the firewall's network sets
    /// need the remote ones; routes take the local ones).
    pub endpoints: String,
    /// The node whose view this is: its allocations are kept whole (the crash repair
    /// reads their owners); `None` keeps no one's.
    pub node: Option<String>,
}

impl Prefixes {
    /// The prefixes under `keys`, for a view of no particular node.
    pub fn new(keys: &Keys) -> Self {
        Self {
            root: keys.all(),
            nodes: keys.nodes(),
            global: keys.bgp_global(),
            peers: keys.bgp_peers(),
            pools: keys.pools(),
            blocks: keys.blocks(),
            endpoints: keys.endpoints(),
            node: None,
        }
    }

    /// The prefixes under `keys`, for `node`'s agent.
    pub fn for_node(keys: &Keys, node: &str) -> Self {
        Self {
            node: Some(node.to_string()),
            ..Self::new(keys)
        }
    }

    /// The range reads that make up a full load: `(key, is_prefix)`.
    pub fn reads(&self) -> [(&str, bool); 6] {
        [
            (&self.nodes, true),
            (&self.global, false),
            (&self.peers, true),
            (&self.pools, true),
            (&self.blocks, true),
            (&self.endpoints, true),
        ]
    }
}

/// The records one node's agent acts on, as of one etcd revision. Cloning is cheap:
/// the sections are shared until written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// etcd revision this view is complete up to; 0 before the first load.
    pub revision: i64,
    /// Global BGP settings (defaults when never set).
    pub global: BgpGlobal,
    /// Nodes by name.
    pub nodes: CowMap<String, BgpNode>,
    /// Peers by name.
    pub peers: CowMap<String, BgpPeer>,
    /// IP pools by name.
    pub pools: CowMap<String, Pool>,
    /// Every block, by key, compacted by [`compact_block`].
    pub blocks: CowMap<String, Arc<Block>>,
    /// Every node's endpoints, as [`EndpointView`]s.
    pub endpoints: Endpoints,
}

/// Which part of the snapshot a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Node,
    Global,
    Peer,
    Pool,
    Block,
    Endpoint,
}

/// What the passes read of `block`: its CIDR, pool and node, and of its allocations
/// those of `local` (whole: the crash repair judges them by their owner attributes)
/// and those another node holds (that node alone: BIRD announces them as /32s).
/// Every other allocation, the bulk of a cluster's state, is dropped.
pub fn compact_block(mut block: Block, local: Option<&str>) -> Block {
    let affinity = block.affinity.as_deref();
    block.allocations = std::mem::take(&mut block.allocations)
        .into_iter()
        .filter_map(|(ip, mut a)| {
            let node = a.node()?;
            if Some(node) == local {
                return Some((ip, a));
            }
            if Some(node) == affinity {
                return None;
            }
            let node = a.attrs.remove(ATTR_NODE)?;
            let borrowed = Allocation {
                handle: String::new(),
                attrs: [(ATTR_NODE.to_string(), node)].into(),
            };
            Some((ip, borrowed))
        })
        .collect();
    block
}

/// `value` decoded, or `None` (logged) when it does not decode.
fn decoded<T: DeserializeOwned>(key: &str, value: &[u8], what: &str) -> Option<T> {
    decode_value::<T>(key, value)
        .map_err(|e| warn!(error = %e, "ignoring {what}"))
        .ok()
}

/// A BGP record decoded and checked as `bgpstore` reads it (its name agrees with its
/// key, its values are valid), or `None` (logged).
fn decoded_bgp<T: bgpstore::StoredRecord>(key: &str, value: &[u8], what: &str) -> Option<T> {
    bgpstore::decode_record::<T>(key, value)
        .map_err(|e| warn!(error = %e, "ignoring {what}"))
        .ok()
}

impl Snapshot {
    /// Whether the first full load has happened.
    pub fn is_loaded(&self) -> bool {
        self.revision > 0
    }

    /// What `key` is to this node's agent, if anything.
    pub fn classify(prefixes: &Prefixes, key: &str) -> Option<KeyKind> {
        let under = |p: &str| key.len() > p.len() && key.starts_with(p);
        if key == prefixes.global {
            Some(KeyKind::Global)
        } else if under(&prefixes.nodes) {
            Some(KeyKind::Node)
        } else if under(&prefixes.peers) {
            Some(KeyKind::Peer)
        } else if under(&prefixes.pools) {
            Some(KeyKind::Pool)
        } else if under(&prefixes.blocks) {
            Some(KeyKind::Block)
        } else if under(&prefixes.endpoints) {
            Some(KeyKind::Endpoint)
        } else {
            None
        }
    }

    /// Applies one put (`Some(value)`) or delete (`None`). Returns whether the key
    /// matters to this node. A value that does not decode is logged and treated as
    /// absent, so one bad record cannot stop the agent.
    pub fn apply(&mut self, prefixes: &Prefixes, key: &str, value: Option<&[u8]>) -> bool {
        let Some(kind) = Self::classify(prefixes, key) else {
            return false;
        };
        match kind {
            KeyKind::Global => {
                self.global = value
                    .and_then(|v| decoded_bgp(key, v, "the global BGP settings; using defaults"))
                    .unwrap_or_default();
            }
            KeyKind::Node => {
                let name = &key[prefixes.nodes.len()..];
                match value.and_then(|v| decoded_bgp::<BgpNode>(key, v, "a record")) {
                    Some(n) if n.name == name => {
                        self.nodes.insert(name.to_string(), n);
                    }
                    Some(n) => {
                        warn!(key, stored = %n.name, "ignoring a node record whose name differs from its key");
                        remove(&mut self.nodes, name);
                    }
                    None => remove(&mut self.nodes, name),
                }
            }
            KeyKind::Peer => {
                let name = &key[prefixes.peers.len()..];
                match value.and_then(|v| decoded_bgp::<BgpPeer>(key, v, "a record")) {
                    Some(p) => {
                        self.peers.insert(name.to_string(), p);
                    }
                    None => remove(&mut self.peers, name),
                }
            }
            KeyKind::Pool => match value.and_then(|v| decoded::<Pool>(key, v, "a record")) {
                Some(p) => {
                    self.pools.insert(key.to_string(), p);
                }
                None => remove(&mut self.pools, key),
            },
            KeyKind::Block => match value.and_then(|v| decoded::<Block>(key, v, "a record")) {
                Some(b) => {
                    let b = compact_block(b, prefixes.node.as_deref());
                    self.blocks.insert(key.to_string(), Arc::new(b));
                }
                None => remove(&mut self.blocks, key),
            },
            KeyKind::Endpoint => {
                let rest = &key[prefixes.endpoints.len()..];
                let (node, id) = rest.split_once('/').unwrap_or((rest, ""));
                match value.and_then(|v| decoded::<EndpointRecord>(key, v, "a record")) {
                    Some(e) if e.node == node => {
                        self.endpoints.put(node, id, e);
                    }
                    Some(e) => {
                        warn!(key, stored = %e.node, "ignoring an endpoint record whose node differs from its key");
                        self.endpoints.remove(node, id);
                    }
                    None => self.endpoints.remove(node, id),
                }
            }
        }
        true
    }

    /// Nodes, in name order.
    pub fn node_list(&self) -> Vec<BgpNode> {
        self.nodes.values().cloned().collect()
    }

    /// Peers, in name order.
    pub fn peer_list(&self) -> Vec<BgpPeer> {
        self.peers.values().cloned().collect()
    }

    /// Blocks, borrowed addresses and pools for the renderers.
    pub fn routing_view(&self) -> RoutingView {
        bgpstore::routing_view(self.blocks.values().map(|b| &**b), self.pools.values())
    }
}

/// Removes `key` from a shared map, copying the map only when the key is there.
fn remove<V: Clone>(map: &mut CowMap<String, V>, key: &str) {
    if map.contains_key(key) {
        map.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn prefixes() -> Prefixes {
        Prefixes::new(&Keys::new("/b"))
    }

    fn bytes(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn keys_are_classified_by_prefix() {
        let p = prefixes();
        let c = |k: &str| Snapshot::classify(&p, k);
        assert_eq!(c("/b/v1/nodes/n2"), Some(KeyKind::Node));
        assert_eq!(c("/b/v1/bgp/global"), Some(KeyKind::Global));
        assert_eq!(c("/b/v1/bgp/peers/tor"), Some(KeyKind::Peer));
        assert_eq!(c("/b/v1/pools/default"), Some(KeyKind::Pool));
        assert_eq!(c("/b/v1/ipam/blocks/10.0.0.0-26"), Some(KeyKind::Block));
        assert_eq!(c("/b/v1/endpoints/n1/abc"), Some(KeyKind::Endpoint));
        assert_eq!(c("/b/v1/endpoints/n2/abc"), Some(KeyKind::Endpoint));
        assert_eq!(c("/b/v1/endpoints/"), None);
        assert_eq!(c("/b/v1/ipam/handles/h"), None);
        assert_eq!(c("/b/v1/ipam/affinity/n1/10.0.0.0-26"), None);
        assert_eq!(c("/b/v1/meta/pools"), None);
        assert_eq!(c("/b/v1/nodes/"), None);
    }

    #[test]
    fn puts_and_deletes_update_the_view() {
        let p = prefixes();
        let mut s = Snapshot::default();
        assert!(s.apply(
            &p,
            "/b/v1/nodes/n2",
            Some(&bytes(json!({"name": "n2", "ip": "10.0.0.2"})))
        ));
        assert!(s.apply(
            &p,
            "/b/v1/bgp/global",
            Some(&bytes(json!({"as_num": 65001})))
        ));
        assert!(s.apply(
            &p,
            "/b/v1/ipam/blocks/10.9.0.0-26",
            Some(&bytes(json!({
                "cidr": "10.9.0.0/26", "pool": "p", "affinity": "n1",
                "allocations": {"10.9.0.1": {"handle": "h", "attrs": {"node": "n2"}}}
            })))
        ));
        assert!(!s.apply(&p, "/b/v1/ipam/handles/h", Some(b"{}")));
        assert_eq!(s.nodes["n2"].ip.to_string(), "10.0.0.2");
        assert_eq!(s.global.as_num, 65001);
        let view = s.routing_view();
        assert_eq!(view.blocks.len(), 1);
        assert_eq!(view.borrowed[0].node, "n2");

        assert!(s.apply(&p, "/b/v1/bgp/global", None));
        assert_eq!(s.global, BgpGlobal::default());
        assert!(s.apply(&p, "/b/v1/nodes/n2", None));
        assert!(s.nodes.is_empty());
        assert!(s.apply(&p, "/b/v1/ipam/blocks/10.9.0.0-26", None));
        assert!(s.blocks.is_empty());
    }

    #[test]
    fn blocks_keep_what_the_passes_read() {
        let p = Prefixes::for_node(&Keys::new("/b"), "me");
        let mut s = Snapshot::default();
        let cni = json!({"node": "me", "orchestrator": "cni", "container": "c", "ifname": "eth0"});
        s.apply(
            &p,
            "/b/v1/ipam/blocks/10.9.0.0-26",
            Some(&bytes(json!({
                "cidr": "10.9.0.0/26", "pool": "p", "affinity": "n2",
                "allocations": {
                    "10.9.0.1": {"handle": "mine", "attrs": cni},
                    "10.9.0.2": {"handle": "theirs", "attrs": {"node": "n2", "container": "x"}},
                    "10.9.0.3": {"handle": "borrowed", "attrs": {"node": "n3", "container": "y"}},
                    "10.9.0.4": {"handle": "nobody's", "attrs": {}}
                }
            }))),
        );
        let b = &s.blocks["/b/v1/ipam/blocks/10.9.0.0-26"];
        assert_eq!(b.affinity.as_deref(), Some("n2"));
        let kept: Vec<String> = b.allocations.keys().map(ToString::to_string).collect();
        assert_eq!(kept, ["10.9.0.1", "10.9.0.3"]);
        let mine = &b.allocations[&"10.9.0.1".parse().unwrap()];
        assert_eq!(mine.handle, "mine");
        assert_eq!(mine.attrs.len(), 4, "this node's allocations stay whole");
        let borrowed = &b.allocations[&"10.9.0.3".parse().unwrap()];
        assert_eq!(borrowed.node(), Some("n3"));
        assert_eq!(borrowed.attrs.len(), 1);
        let view = s.routing_view();
        let holders: Vec<&str> = view.borrowed.iter().map(|b| b.node.as_str()).collect();
        assert_eq!(holders, ["me", "n3"]);

        // A view of no node keeps the borrowed ones only.
        let plain = Prefixes::new(&Keys::new("/b"));
        let mut s2 = Snapshot::default();
        let raw = json!({
            "cidr": "10.9.0.0/26", "pool": "p", "affinity": "n2",
            "allocations": {"10.9.0.1": {"handle": "mine", "attrs": cni}}
        });
        s2.apply(&plain, "/b/v1/ipam/blocks/10.9.0.0-26", Some(&bytes(raw)));
        let b = &s2.blocks["/b/v1/ipam/blocks/10.9.0.0-26"];
        assert_eq!(b.allocations[&"10.9.0.1".parse().unwrap()].attrs.len(), 1);
    }

    #[test]
    fn endpoints_are_kept_by_node_and_follow_deletes() {
        let p = prefixes();
        let mut s = Snapshot::default();
        let ep = |node: &str, id: &str, ip: &str| {
            bytes(json!({
                "id": id, "node": node, "orchestrator": "cni", "container_id": "c1",
                "network": "net", "ip": ip, "host_ifname": "brlx", "handle": id,
                "segment": "cni:net", "allow_from": ["192.0.2.0/24"]
            }))
        };
        assert!(s.apply(
            &p,
            "/b/v1/endpoints/n1/c1+eth0",
            Some(&ep("n1", "c1+eth0", "10.0.0.1"))
        ));
        s.apply(
            &p,
            "/b/v1/endpoints/n2/e2",
            Some(&ep("n2", "e2", "10.0.0.2")),
        );
        // A record filed under another node's key is not trusted.
        s.apply(
            &p,
            "/b/v1/endpoints/n3/e3",
            Some(&ep("n1", "e3", "10.0.0.3")),
        );
        assert_eq!(s.endpoints.len(), 2);
        let e = s.endpoints.on("n1").next().unwrap();
        assert_eq!((e.owner(), &*e.view.segment), ("c1", "cni:net"));
        assert_eq!(e.view.allow_from.len(), 1);

        let published = s.clone();
        s.apply(&p, "/b/v1/endpoints/n2/e2", None);
        assert_eq!(s.endpoints.len(), 1);
        assert_eq!(
            published.endpoints.len(),
            2,
            "a published view never changes"
        );
        assert!(s.endpoints.shares_node(&published.endpoints, "n1"));
        assert!(s.pools.shares(&published.pools));
    }

    #[test]
    fn bad_records_are_dropped_not_fatal() {
        let p = prefixes();
        let mut s = Snapshot::default();
        s.apply(
            &p,
            "/b/v1/nodes/n2",
            Some(&bytes(json!({"name": "n2", "ip": "10.0.0.2"}))),
        );
        assert!(s.apply(&p, "/b/v1/nodes/n2", Some(b"garbage")));
        assert!(s.nodes.is_empty());
        // A record whose name differs from its key is not trusted.
        s.apply(
            &p,
            "/b/v1/nodes/n3",
            Some(&bytes(json!({"name": "evil", "ip": "10.0.0.3"}))),
        );
        assert!(s.nodes.is_empty());
        s.apply(&p, "/b/v1/bgp/global", Some(b"[1,2]"));
        assert_eq!(s.global, BgpGlobal::default());
    }
}
