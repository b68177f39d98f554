//! The BIRD 2 configuration of one node.
//!
//! Routing design (see docs/bgp-notes.md):
//! - brindled programs `blackhole BLOCK proto 98` for each block affine to the node and
//!   `ADDR/32 dev brl... proto 98` for each local endpoint; `protocol kernel` learns
//!   them (`learn`, verified on BIRD 2.0.12), at preference 200 so they outrank
//!   anything a peer says about the same prefix.
//! - Peers get each affine block as ONE prefix and the /32 of each borrowed address
//!   held here, and only routes brindled programmed (no host or fabric routes).
//! - From peers, only prefixes inside the pools are accepted; they go to the kernel
//!   with the announcing node as next hop, except this node's own blocks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::model::{canonical, BgpGlobal, BgpNode, BgpPeer, RoutingView, ROUTE_PROTOCOL};
use crate::text::{ip_symbol, one_line, safe};
use crate::validate;
use crate::BgpError;

/// `writeln!` into a `String`, which cannot fail.
macro_rules! w {
    ($($arg:tt)*) => {{
        let _ = writeln!($($arg)*);
    }};
}

/// Everything `render_bird` needs for one node.
#[derive(Debug, Clone, Copy)]
pub struct BirdInput<'a> {
    /// Cluster-wide settings.
    pub global: &'a BgpGlobal,
    /// The node the configuration is for.
    pub node: &'a BgpNode,
    /// All nodes (this one may be included; it is recognised by name or IP).
    pub nodes: &'a [BgpNode],
    /// All peers, global and per node; peers of other nodes are ignored.
    pub peers: &'a [BgpPeer],
    /// Blocks, borrowed addresses and pools from IPAM.
    pub view: &'a RoutingView,
}

impl BirdInput<'_> {
    /// Validates the node, all nodes and all peers ([`validate_bird_input`]).
    pub fn validate(&self) -> Result<(), BgpError> {
        validate_bird_input(self)
    }
}

/// Validates what `render_bird` would use: global settings, this node, all nodes
/// (unique names and IPs) and all peers (unique names; one address per scope).
/// The renderer itself never fails: it skips invalid entries with a comment.
pub fn validate_bird_input(input: &BirdInput) -> Result<(), BgpError> {
    validate::validate_global(input.global)?;
    validate::validate_node(input.node)?;
    validate::validate_nodes(input.nodes)?;
    validate::validate_peers(input.peers)
}

/// Why a BGP session exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SessionKind {
    /// Node-to-node mesh (`Mesh_<ip>`).
    Mesh,
    /// Route reflection between a reflector node and another node of its AS
    /// (`Rr_<ip>`), on both sides.
    RouteReflection,
    /// A global peer (`Global_<ip>`).
    Global,
    /// A peer of this node only (`Node_<ip>`).
    Node,
}

impl SessionKind {
    /// The protocol name prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            SessionKind::Mesh => "Mesh",
            SessionKind::RouteReflection => "Rr",
            SessionKind::Global => "Global",
            SessionKind::Node => "Node",
        }
    }
}

/// The BIRD protocol name of a session: `Mesh_10_0_0_2`, `Rr_..`, `Global_..`, `Node_..`.
pub fn protocol_name(kind: SessionKind, neighbor: Ipv4Addr) -> String {
    format!("{}_{}", kind.prefix(), ip_symbol(neighbor))
}

/// One BGP session of a node, as rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpSession {
    /// BIRD protocol name (the name `birdc show protocols` prints).
    pub name: String,
    /// Why the session exists.
    pub kind: SessionKind,
    /// The neighbor's address.
    pub neighbor: Ipv4Addr,
    /// The neighbor's AS.
    pub neighbor_as: u32,
    /// `description` shown by `birdc show protocols all`.
    pub description: String,
    /// TCP-MD5 password.
    pub password: Option<String>,
    /// Wait for the neighbor to connect.
    pub passive: bool,
    /// This node is a route reflector and the session is iBGP: routes learned from
    /// other nodes are passed on (BIRD applies the reflection rules).
    pub reflector: bool,
    /// The neighbor is a route-reflector client of this node.
    pub rr_client: bool,
    /// `allow local as N`.
    pub allow_local_as: Option<u32>,
}

/// The sessions of a node, and what was left out and why (rendered as comments).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionPlan {
    /// Sessions, grouped by kind (mesh, route reflection, global, node) and sorted
    /// by neighbor address.
    pub sessions: Vec<BgpSession>,
    /// One line per skipped or replaced session.
    pub notes: Vec<String>,
}

/// Works out the BGP sessions of `input.node`:
/// - mesh: every other node, when `node_mesh` is on and neither side is a route
///   reflector;
/// - route reflection: a reflector peers with every other node of its AS (clients:
///   those without its cluster id); every other node peers with every reflector of
///   its AS, mesh or not;
/// - global peers and this node's own peers.
///
/// One session per neighbor address: a peer of this node beats a global peer,
/// which beats an automatic (mesh / reflection) session. A peer or node with this
/// node's own address gets no session.
pub fn plan_sessions(input: &BirdInput) -> SessionPlan {
    let global = input.global;
    let me = input.node;
    let my_as = me.local_as(global);
    let mut notes = Vec::new();
    let mut chosen: BTreeMap<Ipv4Addr, BgpSession> = BTreeMap::new();

    // Nodes by IP (first name wins on a duplicate IP), without this node.
    let mut nodes_by_ip: BTreeMap<Ipv4Addr, &BgpNode> = BTreeMap::new();
    let mut sorted: Vec<&BgpNode> = input.nodes.iter().collect();
    sorted.sort_by(|a, b| (a.ip, &a.name).cmp(&(b.ip, &b.name)));
    for n in sorted {
        if n.name == me.name {
            continue;
        }
        if let Err(e) = validate::validate_node(n) {
            notes.push(format!("node skipped: {e}"));
            continue;
        }
        if n.ip == me.ip {
            notes.push(format!(
                "node \"{}\" has this node's IP {}: no session",
                safe(&n.name),
                n.ip
            ));
            continue;
        }
        if let Some(first) = nodes_by_ip.get(&n.ip) {
            notes.push(format!(
                "node \"{}\" has the IP {} of node \"{}\": no second session",
                safe(&n.name),
                n.ip,
                safe(&first.name)
            ));
            continue;
        }
        nodes_by_ip.insert(n.ip, n);
    }

    let mesh_password = global
        .mesh_password
        .as_ref()
        .filter(|pw| validate::validate_password("the node mesh", pw).is_ok())
        .cloned();
    if global.mesh_password.is_some() && mesh_password.is_none() {
        notes.push("mesh password ignored: it is not a valid BIRD password".into());
    }

    // Explicit peers: this node's own first, then global ones.
    let mut explicit: Vec<&BgpPeer> = input
        .peers
        .iter()
        .filter(|p| p.node.is_none() || p.node.as_deref() == Some(me.name.as_str()))
        .collect();
    explicit.sort_by(|a, b| {
        (a.node.is_none(), a.peer_ip, &a.name).cmp(&(b.node.is_none(), b.peer_ip, &b.name))
    });
    for p in explicit {
        let kind = if p.node.is_some() {
            SessionKind::Node
        } else {
            SessionKind::Global
        };
        let (label, description) = match kind {
            SessionKind::Node => (
                format!("peer \"{}\" of this node", safe(&p.name)),
                format!("peer {} of node {}", safe(&p.name), safe(&me.name)),
            ),
            _ => (
                format!("global peer \"{}\"", safe(&p.name)),
                format!("global peer {}", safe(&p.name)),
            ),
        };
        if let Err(e) = validate::validate_peer(p) {
            notes.push(format!("{label} skipped: {e}"));
            continue;
        }
        if p.peer_ip == me.ip {
            notes.push(format!("{label} is this node ({}): no session", p.peer_ip));
            continue;
        }
        let name = protocol_name(kind, p.peer_ip);
        if let Some(existing) = chosen.get(&p.peer_ip) {
            notes.push(format!(
                "{label} ({}) not used: {} already peers with {}",
                p.peer_ip, existing.name, p.peer_ip
            ));
            continue;
        }
        let ibgp = p.as_num == my_as;
        let reflector = ibgp && me.is_route_reflector();
        let rr_client = reflector
            && nodes_by_ip
                .get(&p.peer_ip)
                .is_none_or(|n| n.rr_cluster_id != me.rr_cluster_id);
        chosen.insert(
            p.peer_ip,
            BgpSession {
                name,
                kind,
                neighbor: p.peer_ip,
                neighbor_as: p.as_num,
                description,
                password: p.password.clone(),
                passive: p.passive,
                reflector,
                rr_client,
                allow_local_as: p.allow_local_as,
            },
        );
    }

    // Automatic sessions with the other nodes.
    for (&ip, n) in &nodes_by_ip {
        let n_as = n.local_as(global);
        let node_label = format!("node \"{}\"", safe(&n.name));
        let node_desc = format!("node {}", safe(&n.name));
        let (kind, description, reflector, rr_client) = if me.is_route_reflector() {
            if n_as != my_as {
                notes.push(format!(
                    "{node_label} ({ip}) is in AS {n_as}: this route reflector serves AS {my_as} only"
                ));
                continue;
            }
            let client = n.rr_cluster_id != me.rr_cluster_id;
            let role = if client {
                "route-reflector client"
            } else {
                "route reflector of the same cluster"
            };
            (
                SessionKind::RouteReflection,
                format!("{role}: {node_desc}"),
                true,
                client,
            )
        } else if n.is_route_reflector() {
            if n_as != my_as {
                notes.push(format!(
                    "route reflector {node_label} ({ip}) is in AS {n_as}, this node in AS {my_as}: no session"
                ));
                continue;
            }
            (
                SessionKind::RouteReflection,
                format!("route reflector: {node_desc}"),
                false,
                false,
            )
        } else if global.node_mesh {
            (
                SessionKind::Mesh,
                format!("mesh: {node_desc}"),
                false,
                false,
            )
        } else {
            continue;
        };
        let name = protocol_name(kind, ip);
        if let Some(existing) = chosen.get(&ip) {
            notes.push(format!(
                "{name} ({node_label}) replaced by {}, the explicit peer with that address",
                existing.name
            ));
            continue;
        }
        chosen.insert(
            ip,
            BgpSession {
                name,
                kind,
                neighbor: ip,
                neighbor_as: n_as,
                description,
                password: mesh_password.clone(),
                passive: false,
                reflector,
                rr_client,
                allow_local_as: None,
            },
        );
    }

    let mut sessions: Vec<BgpSession> = chosen.into_values().collect();
    sessions.sort_by_key(|s| (s.kind, s.neighbor));
    let notes = notes.iter().map(|n| one_line(n)).collect();
    SessionPlan { sessions, notes }
}

fn net_key(n: &Ipv4Network) -> (u32, u8) {
    (u32::from(n.network()), n.prefix())
}

/// A borrowed /32 this node announces, with where it comes from (for a comment).
struct HeldBorrowed {
    ip: Ipv4Addr,
    origin: String,
}

fn own_blocks(view: &RoutingView, me: &BgpNode) -> Vec<Ipv4Network> {
    let set: BTreeSet<(u32, u8)> = view
        .blocks
        .iter()
        .filter(|b| b.node.as_deref() == Some(me.name.as_str()))
        .map(|b| net_key(&canonical(b.cidr)))
        .collect();
    set.into_iter()
        .filter_map(|(a, p)| Ipv4Network::new(Ipv4Addr::from(a), p).ok())
        .collect()
}

fn held_borrowed(view: &RoutingView, me: &BgpNode) -> Vec<HeldBorrowed> {
    let mut out: BTreeMap<Ipv4Addr, HeldBorrowed> = BTreeMap::new();
    for b in view.borrowed.iter().filter(|b| b.node == me.name) {
        let block = view
            .blocks
            .iter()
            .filter(|blk| canonical(blk.cidr).contains(b.ip))
            .max_by_key(|blk| blk.cidr.prefix());
        let origin = match block {
            Some(blk) if blk.node.as_deref() == Some(me.name.as_str()) => continue,
            Some(blk) => match &blk.node {
                Some(owner) => format!("block {} of node \"{}\"", canonical(blk.cidr), safe(owner)),
                None => format!("block {} without affinity", canonical(blk.cidr)),
            },
            None => "no known block".to_string(),
        };
        out.entry(b.ip).or_insert(HeldBorrowed { ip: b.ip, origin });
    }
    out.into_values().collect()
}

fn pools(view: &RoutingView) -> Vec<(Ipv4Network, String)> {
    let mut by_net: BTreeMap<(u32, u8), String> = BTreeMap::new();
    for p in &view.pools {
        let label = if p.disabled {
            format!("pool \"{}\" (disabled)", safe(&p.name))
        } else {
            format!("pool \"{}\"", safe(&p.name))
        };
        by_net
            .entry(net_key(&canonical(p.cidr)))
            .and_modify(|l| {
                l.push_str(", ");
                l.push_str(&label);
            })
            .or_insert(label);
    }
    by_net
        .into_iter()
        .filter_map(|((a, p), l)| Ipv4Network::new(Ipv4Addr::from(a), p).ok().map(|n| (n, l)))
        .collect()
}

/// Renders the BIRD 2 configuration of `input.node`. Deterministic: the same input
/// gives the same bytes. Check the result with [`crate::validate_with_bird`] before
/// installing it; validate the input with [`validate_bird_input`] first, since
/// invalid peers or nodes are skipped here (with a comment), not reported.
pub fn render_bird(input: &BirdInput) -> String {
    let mut o = String::new();
    let out = &mut o;
    let g = input.global;
    let me = input.node;
    let my_as = me.local_as(g);
    let plan = plan_sessions(input);
    let blocks = own_blocks(input.view, me);
    let borrowed = held_borrowed(input.view, me);
    let pools = pools(input.view);

    w!(
        out,
        "# BIRD 2 configuration of brindle node \"{}\" ({}, AS {my_as}).",
        safe(&me.name),
        me.ip
    );
    w!(
        out,
        "# Generated by brindle; do not edit: brindled rewrites it when BGP settings,\n\
         # nodes, peers or IP blocks change."
    );
    w!(out);
    w!(out, "router id {};", me.ip);

    // ---- filters
    w!(out);
    w!(
        out,
        "# Prefixes inside brindle's IP pools: the only routes accepted from peers and\n\
         # installed in the kernel. Disabled pools count: they still have endpoints."
    );
    w!(out, "function brindle_in_pools()\n{{");
    if pools.is_empty() {
        w!(out, "  # no pools");
    }
    for (net, label) in &pools {
        w!(out, "  if net ~ {net} then return true;   # {label}");
    }
    w!(out, "  return false;\n}}");

    w!(out);
    w!(
        out,
        "# Routes brindled put in the kernel (route protocol {ROUTE_PROTOCOL}), learned by protocol\n\
         # kernel: the blackhole of each affine block and the /32 of each local endpoint."
    );
    w!(
        out,
        "function brindle_programmed()\n{{\n  return source = RTS_INHERIT && krt_source = {ROUTE_PROTOCOL};\n}}"
    );

    w!(out);
    w!(
        out,
        "# Announced to peers: each block affine to this node as ONE prefix, and the /32\n\
         # of each borrowed address held here; never the endpoints inside own blocks,\n\
         # never host or fabric routes. reflect: on a route reflector's iBGP sessions,\n\
         # routes learned from other nodes are passed on too."
    );
    w!(out, "function brindle_export(bool reflect)\n{{");
    w!(
        out,
        "  if reflect && source = RTS_BGP then {{\n    if brindle_in_pools() then accept;\n    reject;\n  }}"
    );
    w!(out, "  if !brindle_programmed() then reject;");
    if blocks.is_empty() {
        w!(out, "  # blocks affine to this node: none");
    } else {
        w!(out, "  # blocks affine to this node");
    }
    for b in &blocks {
        w!(out, "  if net = {b} then accept;");
        if b.prefix() < 32 {
            w!(out, "  if net ~ {b} then reject;   # its endpoints' /32s");
        }
    }
    if borrowed.is_empty() {
        w!(out, "  # borrowed addresses held on this node: none");
    } else {
        w!(out, "  # borrowed addresses held on this node");
    }
    for b in &borrowed {
        w!(out, "  if net = {}/32 then accept;   # {}", b.ip, b.origin);
    }
    w!(out, "  reject;\n}}");

    w!(out);
    w!(
        out,
        "# Accepted from peers: other nodes' blocks and borrowed /32s, i.e. prefixes\n\
         # inside the pools; nothing else (no default or fabric routes)."
    );
    w!(
        out,
        "filter brindle_import\n{{\n  if brindle_in_pools() then accept;\n  reject;\n}}"
    );

    w!(out);
    w!(
        out,
        "# Installed in the kernel: routes learned from peers, with the announcing node\n\
         # as next hop. Never this node's own blocks: their blackhole stays."
    );
    w!(out, "filter brindle_kernel_export\n{{");
    w!(out, "  if source != RTS_BGP then reject;");
    for b in &blocks {
        w!(out, "  if net = {b} then reject;   # own block");
    }
    w!(out, "  if brindle_in_pools() then accept;\n  reject;\n}}");

    // ---- device, direct, kernel
    w!(out);
    w!(out, "protocol device {{\n  scan time 2;\n}}");
    w!(out);
    w!(
        out,
        "# Connected networks, so that next hops resolve. Endpoint interfaces are left\n\
         # out: their /32s come from the kernel."
    );
    w!(
        out,
        "protocol direct {{\n  ipv4;\n  interface -\"brl*\", \"*\";\n}}"
    );
    w!(out);
    w!(out, "protocol kernel {{");
    w!(out, "  ipv4 {{");
    w!(
        out,
        "    preference 200;   # what brindled programmed beats what peers say about it"
    );
    w!(
        out,
        "    import all;       # learned kernel routes; only brindled's are announced"
    );
    w!(out, "    export filter brindle_kernel_export;");
    w!(out, "  }};");
    w!(
        out,
        "  learn;             # import routes others put in the kernel (brindled: proto {ROUTE_PROTOCOL})"
    );
    w!(
        out,
        "  persist;           # keep installed routes while BIRD is down"
    );
    w!(out, "  scan time 2;");
    if g.graceful_restart {
        w!(out, "  graceful restart;");
    }
    w!(
        out,
        "  merge paths on;    # ECMP when several nodes announce a prefix"
    );
    w!(out, "}}");

    // ---- BGP
    w!(out);
    w!(out, "# Shared by every BGP session of this node.");
    w!(out, "template bgp brindle_peer {{");
    w!(out, "  local as {my_as};");
    w!(
        out,
        "  source address {};   # also the next hop of our routes",
        me.ip
    );
    w!(
        out,
        "  multihop;   # peers need not share a subnet; next hops resolve recursively"
    );
    if g.graceful_restart {
        w!(out, "  graceful restart on;");
        if let Some(t) = g.restart_time {
            w!(out, "  graceful restart time {t};");
        }
    } else {
        w!(out, "  graceful restart off;");
    }
    let t = &g.timers;
    w!(out, "  connect delay time {};", t.connect_delay);
    w!(out, "  connect retry time {};", t.connect_retry);
    w!(
        out,
        "  error wait time {}, {};",
        t.error_wait_min,
        t.error_wait_max
    );
    if let Some(h) = t.hold {
        w!(out, "  hold time {h};");
    }
    if let Some(k) = t.keepalive {
        w!(out, "  keepalive time {k};");
    }
    w!(out, "  ipv4 {{");
    w!(out, "    gateway recursive;");
    w!(out, "    add paths on;");
    w!(out, "    import filter brindle_import;");
    w!(out, "    export filter {{ brindle_export(false); }};");
    w!(out, "  }};");
    w!(out, "}}");

    if let Some(cluster) = me.rr_cluster_id {
        w!(out);
        w!(
            out,
            "# This node is a route reflector: its iBGP sessions pass on other nodes' routes."
        );
        w!(out, "template bgp brindle_reflector from brindle_peer {{");
        w!(out, "  rr cluster id {cluster};");
        w!(out, "  ipv4 {{");
        w!(out, "    export filter {{ brindle_export(true); }};");
        w!(out, "  }};");
        w!(out, "}}");
    }

    if !plan.notes.is_empty() {
        w!(out);
        w!(out, "# Sessions left out:");
        for n in &plan.notes {
            w!(out, "# - {n}");
        }
    }

    if plan.sessions.is_empty() {
        w!(out);
        w!(out, "# No BGP sessions.");
    }
    let mut last_kind = None;
    for s in &plan.sessions {
        w!(out);
        if last_kind != Some(s.kind) {
            let heading = match s.kind {
                SessionKind::Mesh => "# Node-to-node mesh.",
                SessionKind::RouteReflection => "# Route reflection.",
                SessionKind::Global => "# Global peers.",
                SessionKind::Node => "# Peers of this node.",
            };
            w!(out, "{heading}");
            last_kind = Some(s.kind);
        }
        let template = if s.reflector {
            "brindle_reflector"
        } else {
            "brindle_peer"
        };
        w!(out, "protocol bgp {} from {template} {{", s.name);
        w!(out, "  description \"{}\";", s.description);
        w!(out, "  neighbor {} as {};", s.neighbor, s.neighbor_as);
        if s.rr_client {
            w!(out, "  rr client;");
        }
        if let Some(pw) = &s.password {
            w!(out, "  password \"{pw}\";");
        }
        if s.passive {
            w!(out, "  passive on;");
        }
        if let Some(n) = s.allow_local_as {
            w!(out, "  allow local as {n};");
        }
        w!(out, "}}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BorrowedIp, RoutedBlock};

    fn node(name: &str, ip: &str) -> BgpNode {
        BgpNode {
            name: name.into(),
            ip: ip.parse().unwrap(),
            as_num: None,
            rr_cluster_id: None,
        }
    }

    fn peer(name: &str, ip: &str, as_num: u32, on: Option<&str>) -> BgpPeer {
        BgpPeer {
            name: name.into(),
            peer_ip: ip.parse().unwrap(),
            as_num,
            node: on.map(Into::into),
            password: None,
            passive: false,
            allow_local_as: None,
        }
    }

    fn names(plan: &SessionPlan) -> Vec<&str> {
        plan.sessions.iter().map(|s| s.name.as_str()).collect()
    }

    fn plan(g: &BgpGlobal, nodes: &[BgpNode], me: usize, peers: &[BgpPeer]) -> SessionPlan {
        let view = RoutingView::default();
        plan_sessions(&BirdInput {
            global: g,
            node: &nodes[me],
            nodes,
            peers,
            view: &view,
        })
    }

    #[test]
    fn protocol_names_are_bird_symbols() {
        let ip = "10.0.0.2".parse().unwrap();
        assert_eq!(protocol_name(SessionKind::Mesh, ip), "Mesh_10_0_0_2");
        assert_eq!(protocol_name(SessionKind::Global, ip), "Global_10_0_0_2");
        assert_eq!(protocol_name(SessionKind::Node, ip), "Node_10_0_0_2");
        assert_eq!(
            protocol_name(SessionKind::RouteReflection, ip),
            "Rr_10_0_0_2"
        );
    }

    #[test]
    fn mesh_is_every_other_node_and_off_when_disabled() {
        let nodes = [
            node("c", "10.0.0.3"),
            node("a", "10.0.0.1"),
            node("b", "10.0.0.2"),
        ];
        let g = BgpGlobal::default();
        let p = plan(&g, &nodes, 1, &[]);
        assert_eq!(names(&p), ["Mesh_10_0_0_2", "Mesh_10_0_0_3"]);
        assert!(p.notes.is_empty());
        let off = BgpGlobal {
            node_mesh: false,
            ..BgpGlobal::default()
        };
        assert!(plan(&off, &nodes, 1, &[]).sessions.is_empty());
    }

    #[test]
    fn node_as_overrides_global_as() {
        let mut nodes = vec![node("a", "10.0.0.1"), node("b", "10.0.0.2")];
        nodes[1].as_num = Some(65002);
        let p = plan(&BgpGlobal::default(), &nodes, 0, &[]);
        assert_eq!(p.sessions[0].neighbor_as, 65002);
        let text = render_bird(&BirdInput {
            global: &BgpGlobal::default(),
            node: &nodes[1],
            nodes: &nodes,
            peers: &[],
            view: &RoutingView::default(),
        });
        assert!(text.contains("  local as 65002;\n"), "{text}");
        assert!(text.contains("  neighbor 10.0.0.1 as 64512;\n"), "{text}");
    }

    #[test]
    fn route_reflectors_leave_the_mesh_and_serve_their_as() {
        let mut nodes = vec![
            node("rr1", "10.0.0.1"),
            node("rr2", "10.0.0.2"),
            node("rr3", "10.0.0.3"),
            node("c1", "10.0.0.4"),
            node("c2", "10.0.0.5"),
        ];
        nodes[0].rr_cluster_id = Some("1.1.1.1".parse().unwrap());
        nodes[1].rr_cluster_id = Some("1.1.1.1".parse().unwrap());
        nodes[2].rr_cluster_id = Some("2.2.2.2".parse().unwrap());
        let g = BgpGlobal::default(); // mesh on
        let rr = plan(&g, &nodes, 0, &[]);
        let summary: Vec<(&str, bool, bool)> = rr
            .sessions
            .iter()
            .map(|s| (s.name.as_str(), s.reflector, s.rr_client))
            .collect();
        assert_eq!(
            summary,
            [
                ("Rr_10_0_0_2", true, false), // same cluster: not a client
                ("Rr_10_0_0_3", true, true),  // other cluster: client
                ("Rr_10_0_0_4", true, true),
                ("Rr_10_0_0_5", true, true),
            ]
        );
        // A client meshes with the other client and peers with every reflector.
        let client = plan(&g, &nodes, 3, &[]);
        assert_eq!(
            names(&client),
            ["Mesh_10_0_0_5", "Rr_10_0_0_1", "Rr_10_0_0_2", "Rr_10_0_0_3"]
        );
        assert!(client.sessions.iter().all(|s| !s.reflector && !s.rr_client));
    }

    #[test]
    fn explicit_peers_rules() {
        let mut nodes = vec![
            node("a", "10.0.0.1"),
            node("b", "10.0.0.2"),
            node("c", "10.0.0.3"),
        ];
        let peers = vec![
            peer("self", "10.0.0.1", 64512, None), // this node: skipped
            peer("other", "10.0.0.99", 65000, Some("b")), // b's peer: absent on a
            peer("mine", "10.0.0.50", 65000, Some("a")), // a's peer
            peer("glob", "10.0.0.50", 65000, None), // loses to a's peer
            peer("to-c", "10.0.0.3", 64512, None), // replaces the mesh to c
            peer("ibgp", "192.0.2.1", 64512, None), // iBGP, not a node
        ];
        let g = BgpGlobal::default();
        let p = plan(&g, &nodes, 0, &peers);
        assert_eq!(
            names(&p),
            [
                "Mesh_10_0_0_2",
                "Global_10_0_0_3",
                "Global_192_0_2_1",
                "Node_10_0_0_50"
            ]
        );
        assert_eq!(p.notes.len(), 3, "{:?}", p.notes);
        assert!(p.notes.iter().any(|n| n.contains("\"self\" is this node")));
        assert!(p
            .notes
            .iter()
            .any(|n| n.contains("\"glob\"") && n.contains("Node_10_0_0_50")));
        assert!(p
            .notes
            .iter()
            .any(|n| n.contains("Mesh_10_0_0_3") && n.contains("Global_10_0_0_3")));

        // On a reflector, iBGP explicit peers are clients unless they share the cluster.
        nodes[0].rr_cluster_id = Some("9.9.9.9".parse().unwrap());
        nodes[2].rr_cluster_id = Some("9.9.9.9".parse().unwrap());
        let p = plan(&g, &nodes, 0, &peers);
        let get = |n: &str| p.sessions.iter().find(|s| s.name == n).unwrap().clone();
        assert!(get("Global_192_0_2_1").reflector && get("Global_192_0_2_1").rr_client);
        assert!(get("Global_10_0_0_3").reflector && !get("Global_10_0_0_3").rr_client);
        assert!(
            !get("Node_10_0_0_50").reflector,
            "eBGP is never reflected to"
        );
    }

    #[test]
    fn invalid_entries_are_skipped_without_injecting_text() {
        let nodes = vec![
            node("a\"; protocol x {", "10.0.0.1"),
            node("b", "10.0.0.2"),
            node("zero", "0.0.0.0"),
        ];
        let mut bad_pw = peer("tor1", "10.0.0.9", 65000, None);
        bad_pw.password = Some("x\";\nprotocol static evil { ipv4; }".into());
        let bad_name = peer("bad name", "10.0.0.8", 65000, None);
        let g = BgpGlobal {
            mesh_password: Some("m\"x".into()),
            ..BgpGlobal::default()
        };
        let view = RoutingView {
            blocks: vec![RoutedBlock {
                cidr: "10.244.0.0/26".parse().unwrap(),
                node: Some("b".into()),
            }],
            borrowed: vec![BorrowedIp {
                ip: "10.244.0.3".parse().unwrap(),
                node: "a\"; protocol x {".into(),
            }],
            pools: vec![],
        };
        let peers = [bad_pw, bad_name];
        let input = BirdInput {
            global: &g,
            node: &nodes[0],
            nodes: &nodes,
            peers: &peers,
            view: &view,
        };
        assert!(validate_bird_input(&input).is_err());
        let text = render_bird(&input);
        assert!(!text.contains("evil"), "{text}");
        assert!(!text.contains("protocol x"), "{text}");
        assert!(!text.contains("password \""), "{text}");
        assert!(text.contains("# - mesh password ignored"), "{text}");
        assert!(text.contains("global peer \"tor1\" skipped"), "{text}");
        assert!(
            text.contains("node skipped: invalid IP of node \"zero\" 0.0.0.0"),
            "{text}"
        );
        assert!(
            text.contains("protocol bgp Mesh_10_0_0_2 from brindle_peer {"),
            "{text}"
        );
        // Every line outside comments is free of stray quotes from names.
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let code = line.split('#').next().unwrap();
            assert_eq!(code.matches('"').count() % 2, 0, "{line}");
        }
    }

    #[test]
    fn export_filter_aggregates_own_blocks_and_announces_borrowed() {
        let nodes = vec![node("a", "10.0.0.1"), node("b", "10.0.0.2")];
        let view = RoutingView {
            blocks: vec![
                RoutedBlock {
                    cidr: "10.244.0.0/26".parse().unwrap(),
                    node: Some("a".into()),
                },
                RoutedBlock {
                    cidr: "10.244.0.64/26".parse().unwrap(),
                    node: Some("b".into()),
                },
                RoutedBlock {
                    cidr: "10.244.0.200/32".parse().unwrap(),
                    node: Some("a".into()),
                },
            ],
            borrowed: vec![
                BorrowedIp {
                    ip: "10.244.0.70".parse().unwrap(),
                    node: "a".into(),
                },
                // in a's own block: not borrowed, not a /32 of its own
                BorrowedIp {
                    ip: "10.244.0.5".parse().unwrap(),
                    node: "a".into(),
                },
                // held by b: b's business
                BorrowedIp {
                    ip: "10.244.0.6".parse().unwrap(),
                    node: "b".into(),
                },
            ],
            pools: vec![],
        };
        let text = render_bird(&BirdInput {
            global: &BgpGlobal::default(),
            node: &nodes[0],
            nodes: &nodes,
            peers: &[],
            view: &view,
        });
        let export: String = text
            .split("function brindle_export(bool reflect)")
            .nth(1)
            .unwrap()
            .split("\n}\n")
            .next()
            .unwrap()
            .to_string();
        assert!(export.contains(
            "  if net = 10.244.0.0/26 then accept;\n  if net ~ 10.244.0.0/26 then reject;"
        ));
        assert!(
            export.contains("  if net = 10.244.0.200/32 then accept;\n"),
            "{export}"
        );
        assert!(!export.contains("net ~ 10.244.0.200/32"), "{export}");
        assert!(export.contains(
            "  if net = 10.244.0.70/32 then accept;   # block 10.244.0.64/26 of node \"b\""
        ));
        assert!(
            !export.contains("10.244.0.5/32") && !export.contains("10.244.0.6/32"),
            "{export}"
        );
        assert!(!export.contains("10.244.0.64/26 then"), "{export}");
        let kernel = text.split("filter brindle_kernel_export").nth(1).unwrap();
        assert!(kernel.contains("if net = 10.244.0.0/26 then reject;"));
    }
}
