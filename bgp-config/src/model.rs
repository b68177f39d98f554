//! The BGP model other parts of brindle store as JSON (etcd `PREFIX/v1/bgp/...`,
//! `PREFIX/v1/nodes/NAME`) and the routing view the renderers read from IPAM.
//!
//! Field names are part of the stored format: rename only with a migration.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// AS number of every node that has none of its own, unless `BgpGlobal::as_num` says
/// otherwise (first private 2-byte AS, as in Calico).
pub const DEFAULT_AS: u32 = 64512;

/// Linux route protocol number brindled puts on every route it programs (the blackhole
/// of each affine block and the /32 of each local endpoint). BIRD's kernel protocol
/// learns these routes, and the BGP export filter only announces routes carrying it.
/// (contract: agent and renderer must agree)
pub const ROUTE_PROTOCOL: u8 = 98;

/// Cluster-wide BGP settings (`brindle bgp set`). `Debug` hides the mesh password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BgpGlobal {
    /// AS number of nodes without their own `as_num` (default 64512).
    pub as_num: u32,
    /// Full node-to-node BGP mesh between all nodes that are not route reflectors
    /// (default true). Turn off when nodes peer only with routers or reflectors.
    pub node_mesh: bool,
    /// TCP-MD5 password for the node-to-node mesh and route-reflector sessions
    /// (none by default). Same rules as a peer password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_password: Option<String>,
    /// Graceful restart (RFC 4724, default true): peers keep this node's routes while
    /// its BIRD restarts, and BIRD keeps kernel routes until it has resynchronised.
    pub graceful_restart: bool,
    /// Seconds peers keep our routes as stale during a restart, 1..=4095
    /// (none = BIRD's default, 120 s). Ignored when `graceful_restart` is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_time: Option<u32>,
    /// Session timers for every BGP session of every node.
    pub timers: BgpTimers,
}

/// How `Debug` shows a password: whether there is one, never what it is.
pub(crate) fn redacted(password: &Option<String>) -> Option<&'static str> {
    password.as_ref().map(|_| "<redacted>")
}

impl std::fmt::Debug for BgpGlobal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            as_num,
            node_mesh,
            mesh_password,
            graceful_restart,
            restart_time,
            timers,
        } = self;
        f.debug_struct("BgpGlobal")
            .field("as_num", as_num)
            .field("node_mesh", node_mesh)
            .field("mesh_password", &redacted(mesh_password))
            .field("graceful_restart", graceful_restart)
            .field("restart_time", restart_time)
            .field("timers", timers)
            .finish()
    }
}

impl Default for BgpGlobal {
    fn default() -> Self {
        Self {
            as_num: DEFAULT_AS,
            node_mesh: true,
            mesh_password: None,
            graceful_restart: true,
            restart_time: None,
            timers: BgpTimers::default(),
        }
    }
}

/// BGP session timers, in seconds. The defaults are Calico's (start-up converges in
/// about 2 s instead of BIRD's 5 s connect delay); tests may lower them further.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BgpTimers {
    /// Delay before the first outgoing connection (`connect delay time`, default 2).
    pub connect_delay: u32,
    /// Delay between connection attempts (`connect retry time`, default 5; BIRD's own
    /// default is 120).
    pub connect_retry: u32,
    /// First back-off after a session error (`error wait time`, default 5).
    pub error_wait_min: u32,
    /// Longest back-off after repeated session errors (default 30).
    pub error_wait_max: u32,
    /// Hold time: 0 (no keepalives) or 3..=65535 (none = BIRD's default, 240).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<u32>,
    /// Keepalive interval, 1..=65535 and below the hold time (none = hold / 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<u32>,
}

impl Default for BgpTimers {
    fn default() -> Self {
        Self {
            connect_delay: 2,
            connect_retry: 5,
            error_wait_min: 5,
            error_wait_max: 30,
            hold: None,
            keepalive: None,
        }
    }
}

/// One brindle node as BGP speaker (`brindle node set NAME --ip ADDR [--as N]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpNode {
    /// Node name (brindled's `--node`, default the hostname).
    pub name: String,
    /// Router id, source address of its BGP sessions and next hop of its routes
    /// (brindled's `--node-ip`).
    pub ip: Ipv4Addr,
    /// The node's own AS number (none = the global AS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_num: Option<u32>,
    /// Route-reflector cluster id: a node with one is a route reflector. It leaves
    /// the mesh, peers with every other node of its AS and reflects their routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rr_cluster_id: Option<Ipv4Addr>,
}

impl BgpNode {
    /// The AS this node speaks: its own, else the global one.
    pub fn local_as(&self, global: &BgpGlobal) -> u32 {
        self.as_num.unwrap_or(global.as_num)
    }

    /// Whether the node is a route reflector.
    pub fn is_route_reflector(&self) -> bool {
        self.rr_cluster_id.is_some()
    }
}

/// A BGP peer outside the mesh: a router, a route reflector, another cluster
/// (`brindle bgp peer add NAME --peer-ip ADDR --as N [--node NODE] [--password-file F]`).
/// `Debug` hides the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpPeer {
    /// Peer name: 1 to 64 characters from `A-Z a-z 0-9 _ -`.
    pub name: String,
    /// The peer's address.
    pub peer_ip: Ipv4Addr,
    /// The peer's AS number (equal to the node's AS = iBGP, else eBGP).
    pub as_num: u32,
    /// Only this node peers with it; none = a global peer, on every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// TCP-MD5 password (no `"`, no line break, at most 80 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Wait for the peer to connect instead of connecting to it.
    #[serde(default)]
    pub passive: bool,
    /// Accept routes whose AS path already holds our AS up to this many times
    /// (BIRD `allow local as N`). Needed when all nodes share one AS and learn each
    /// other's routes only through an eBGP router (mesh off): the path
    /// `ROUTER_AS NODE_AS` is otherwise dropped as a loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_local_as: Option<u32>,
}

impl std::fmt::Debug for BgpPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            name,
            peer_ip,
            as_num,
            node,
            password,
            passive,
            allow_local_as,
        } = self;
        f.debug_struct("BgpPeer")
            .field("name", name)
            .field("peer_ip", peer_ip)
            .field("as_num", as_num)
            .field("node", node)
            .field("password", &redacted(password))
            .field("passive", passive)
            .field("allow_local_as", allow_local_as)
            .finish()
    }
}

/// What the renderers need from IPAM: who owns which block, which addresses are
/// borrowed, and the pools.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoutingView {
    /// Every block, with its affine node.
    pub blocks: Vec<RoutedBlock>,
    /// Addresses used on a node other than the one their block is affine to.
    pub borrowed: Vec<BorrowedIp>,
    /// Every IP pool.
    pub pools: Vec<RoutedPool>,
}

/// A block and the node that advertises it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutedBlock {
    /// The block's CIDR.
    pub cidr: Ipv4Network,
    /// The affine node, set only once its affinity is confirmed: a pending claim or a
    /// block without affinity is `None` and is not advertised as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// An address allocated on one node from a block affine to another node (or to
/// none); it is routed as a /32 towards the node that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BorrowedIp {
    /// The address.
    pub ip: Ipv4Addr,
    /// The node that holds the endpoint using it.
    pub node: String,
}

/// An IP pool as the renderers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutedPool {
    /// Pool name.
    pub name: String,
    /// Pool CIDR: routes inside it are accepted from peers and installed.
    pub cidr: Ipv4Network,
    /// Disabled for dynamic allocation. Routing ignores it: a disabled pool still has
    /// live endpoints (existing ones and fixed addresses), so its routes are carried.
    #[serde(default)]
    pub disabled: bool,
}

/// `cidr` with its host bits cleared (`10.0.0.5/24` → `10.0.0.0/24`); BIRD and
/// routers reject prefixes with host bits set.
pub fn canonical(cidr: Ipv4Network) -> Ipv4Network {
    Ipv4Network::new(cidr.network(), cidr.prefix()).unwrap_or(cidr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn global_defaults_and_stored_form() {
        let g: BgpGlobal = serde_json::from_str("{}").unwrap();
        assert_eq!(g, BgpGlobal::default());
        assert_eq!(g.as_num, 64512);
        assert!(g.node_mesh && g.graceful_restart);
        assert_eq!(
            serde_json::to_value(&g).unwrap(),
            json!({
                "as_num": 64512,
                "node_mesh": true,
                "graceful_restart": true,
                "timers": {"connect_delay": 2, "connect_retry": 5, "error_wait_min": 5, "error_wait_max": 30}
            })
        );
        let g: BgpGlobal = serde_json::from_value(
            json!({"node_mesh": false, "restart_time": 90, "timers": {"hold": 9}}),
        )
        .unwrap();
        assert_eq!(g.as_num, 64512);
        assert_eq!(g.restart_time, Some(90));
        assert_eq!(g.timers.hold, Some(9));
        assert_eq!(g.timers.connect_retry, 5);
    }

    #[test]
    fn node_and_peer_minimal_json() {
        let n: BgpNode = serde_json::from_value(json!({"name": "a", "ip": "10.0.0.1"})).unwrap();
        assert_eq!(n.as_num, None);
        assert!(!n.is_route_reflector());
        assert_eq!(n.local_as(&BgpGlobal::default()), 64512);
        assert_eq!(
            serde_json::to_value(&n).unwrap(),
            json!({"name": "a", "ip": "10.0.0.1"})
        );
        let p: BgpPeer = serde_json::from_value(
            json!({"name": "tor1", "peer_ip": "10.0.0.254", "as_num": 65000}),
        )
        .unwrap();
        assert_eq!(
            (p.node.as_deref(), p.passive, p.password.as_deref()),
            (None, false, None)
        );
        let full = json!({
            "name": "tor1", "peer_ip": "10.0.0.254", "as_num": 65000, "node": "a",
            "password": "pw", "passive": true, "allow_local_as": 1
        });
        let p: BgpPeer = serde_json::from_value(full.clone()).unwrap();
        assert_eq!(serde_json::to_value(&p).unwrap(), full);
    }

    #[test]
    fn routing_view_json() {
        let v: RoutingView = serde_json::from_str("{}").unwrap();
        assert_eq!(v, RoutingView::default());
        let v: RoutingView = serde_json::from_value(json!({
            "blocks": [{"cidr": "10.244.0.0/26", "node": "a"}, {"cidr": "10.244.0.64/26"}],
            "borrowed": [{"ip": "10.244.0.70", "node": "a"}],
            "pools": [{"name": "default", "cidr": "10.244.0.0/16"}]
        }))
        .unwrap();
        assert_eq!(v.blocks[1].node, None);
        assert!(!v.pools[0].disabled);
        assert_eq!(
            canonical("10.244.0.70/26".parse().unwrap()).to_string(),
            "10.244.0.64/26"
        );
    }

    #[test]
    fn debug_hides_passwords() {
        let g = BgpGlobal {
            mesh_password: Some("m3sh-pw".into()),
            ..BgpGlobal::default()
        };
        let p = BgpPeer {
            name: "tor".into(),
            peer_ip: "10.0.0.1".parse().unwrap(),
            as_num: 65000,
            node: None,
            password: Some("t0r-pw".into()),
            passive: false,
            allow_local_as: None,
        };
        let s = crate::bird::BgpSession {
            name: "Global_10_0_0_1".into(),
            kind: crate::bird::SessionKind::Global,
            neighbor: p.peer_ip,
            neighbor_as: 65000,
            description: "tor".into(),
            password: Some("s3ss-pw".into()),
            passive: false,
            reflector: false,
            rr_client: false,
            allow_local_as: None,
        };
        let shown = format!("{g:?} {p:?} {s:#?}");
        for secret in ["m3sh-pw", "t0r-pw", "s3ss-pw"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert_eq!(shown.matches("<redacted>").count(), 3, "{shown}");
        assert!(shown.contains("tor") && shown.contains("65000"), "{shown}");
    }
}
