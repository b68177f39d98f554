//! The agent's view of etcd: everything that decides this node's routes and BIRD
//! configuration, kept current from one etcd watch (see `watch.rs`) and handed to the
//! reconcile loop as an immutable [`Snapshot`].

use std::collections::BTreeMap;

use brindle_bgp::{BgpGlobal, BgpNode, BgpPeer, RoutingView};
use brindle_ipam::state::decode_value;
use brindle_ipam::{Block, Keys, Pool};
use tracing::warn;

use crate::bgpstore;
use crate::endpoints::EndpointRecord;

/// Where the watched records live (each taken from [`Keys`]; the layout is its own).
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
}

impl Prefixes {
    /// The prefixes under `keys`.
    pub fn new(keys: &Keys) -> Self {
        Self {
            root: keys.all(),
            nodes: keys.nodes(),
            global: keys.bgp_global(),
            peers: keys.bgp_peers(),
            pools: keys.pools(),
            blocks: keys.blocks(),
            endpoints: keys.endpoints(),
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

/// The records one node's agent acts on, as of one etcd revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// etcd revision this view is complete up to; 0 before the first load.
    pub revision: i64,
    /// Global BGP settings (defaults when never set).
    pub global: BgpGlobal,
    /// Nodes by name.
    pub nodes: BTreeMap<String, BgpNode>,
    /// Peers by name.
    pub peers: BTreeMap<String, BgpPeer>,
    /// IP pools by name.
    pub pools: BTreeMap<String, Pool>,
    /// Every block, by key.
    pub blocks: BTreeMap<String, Block>,
    /// Every node's endpoints, by key (`EndpointRecord::node` tells local ones).
    pub endpoints: BTreeMap<String, EndpointRecord>,
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
        fn set<T: serde::de::DeserializeOwned>(
            map: &mut BTreeMap<String, T>,
            key: &str,
            value: Option<&[u8]>,
        ) {
            match value.map(|v| decode_value::<T>(key, v)) {
                Some(Ok(v)) => {
                    map.insert(key.to_string(), v);
                }
                Some(Err(e)) => {
                    warn!(error = %e, "ignoring a record");
                    map.remove(key);
                }
                None => {
                    map.remove(key);
                }
            }
        }
        match kind {
            KeyKind::Global => {
                self.global = match value.map(|v| decode_value::<BgpGlobal>(key, v)) {
                    Some(Ok(g)) => g,
                    Some(Err(e)) => {
                        warn!(error = %e, "ignoring the global BGP settings; using defaults");
                        BgpGlobal::default()
                    }
                    None => BgpGlobal::default(),
                };
            }
            KeyKind::Node => {
                let name = &key[prefixes.nodes.len()..];
                let mut tmp = BTreeMap::new();
                set::<BgpNode>(&mut tmp, key, value);
                match tmp.remove(key) {
                    Some(n) if n.name == name => {
                        self.nodes.insert(name.to_string(), n);
                    }
                    Some(n) => {
                        warn!(key, stored = %n.name, "ignoring a node record whose name differs from its key");
                        self.nodes.remove(name);
                    }
                    None => {
                        self.nodes.remove(name);
                    }
                }
            }
            KeyKind::Peer => {
                let name = &key[prefixes.peers.len()..];
                let mut tmp = BTreeMap::new();
                set::<BgpPeer>(&mut tmp, key, value);
                match tmp.remove(key) {
                    Some(p) => {
                        self.peers.insert(name.to_string(), p);
                    }
                    None => {
                        self.peers.remove(name);
                    }
                }
            }
            KeyKind::Pool => set(&mut self.pools, key, value),
            KeyKind::Block => set(&mut self.blocks, key, value),
            KeyKind::Endpoint => set(&mut self.endpoints, key, value),
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
        bgpstore::routing_view(self.blocks.values(), self.pools.values())
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
