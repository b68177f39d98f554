//! Session planning: who this node peers with, and how.
//!
//! Reads only the BGP model (global settings, nodes, peers), never IPAM, and
//! produces a [`SessionPlan`]: the settings every session shares
//! ([`SessionTemplate`]: AS, source address, graceful restart, timers, reflector
//! cluster) and one [`BgpSession`] per neighbor (mesh, route reflection, global and
//! per-node peers, with passwords and reflector roles), plus a note for every
//! session left out. The rules live here as data so they are tested on the plan;
//! `render` only prints it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::BirdInput;
use crate::model::{BgpGlobal, BgpNode, BgpPeer, BgpTimers};
use crate::text::{ip_symbol, one_line, safe};
use crate::validate;

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

/// One BGP session of a node, as rendered. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
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

impl std::fmt::Debug for BgpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            name,
            kind,
            neighbor,
            neighbor_as,
            description,
            password,
            passive,
            reflector,
            rr_client,
            allow_local_as,
        } = self;
        f.debug_struct("BgpSession")
            .field("name", name)
            .field("kind", kind)
            .field("neighbor", neighbor)
            .field("neighbor_as", neighbor_as)
            .field("description", description)
            .field("password", &crate::model::redacted(password))
            .field("passive", passive)
            .field("reflector", reflector)
            .field("rr_client", rr_client)
            .field("allow_local_as", allow_local_as)
            .finish()
    }
}

/// What every BGP session of a node shares: BIRD's `template bgp brindle_peer`, and
/// `brindle_reflector` on a route reflector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTemplate {
    /// `local as`: the node's own AS, else the global one.
    pub local_as: u32,
    /// `source address`, also the next hop of the node's routes: the node's IP.
    pub source_address: Ipv4Addr,
    /// Graceful restart (RFC 4724), on the sessions and in `protocol kernel`.
    pub graceful_restart: bool,
    /// `graceful restart time`; none when graceful restart is off.
    pub restart_time: Option<u32>,
    /// Session timers.
    pub timers: BgpTimers,
    /// `rr cluster id`: set when this node is a route reflector.
    pub rr_cluster_id: Option<Ipv4Addr>,
}

/// The sessions of a node, and what was left out and why (rendered as comments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPlan {
    /// Settings shared by every session.
    pub template: SessionTemplate,
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
///
/// A global setting BIRD would refuse (AS 0, timers or a restart time out of range)
/// is replaced by its default, with a note, like an invalid peer is left out: one bad
/// value written by another tool must not make the whole configuration unusable.
pub fn plan_sessions(input: &BirdInput) -> SessionPlan {
    let mut notes = Vec::new();
    let usable = usable_global(input.global, &mut notes);
    let global = &usable;
    let me = input.node;
    let my_as = match me.as_num {
        Some(0) => {
            notes.push("AS 0 of this node ignored: it is no AS number".into());
            global.as_num
        }
        _ => me.local_as(global),
    };
    let mut chosen: BTreeMap<Ipv4Addr, BgpSession> = BTreeMap::new();

    let template = SessionTemplate {
        local_as: my_as,
        source_address: me.ip,
        graceful_restart: global.graceful_restart,
        restart_time: global.restart_time.filter(|_| global.graceful_restart),
        timers: global.timers.clone(),
        rr_cluster_id: me.rr_cluster_id,
    };

    let nodes_by_ip = other_nodes(input, &mut notes);

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
    SessionPlan {
        template,
        sessions,
        notes,
    }
}

/// `global` with each setting BIRD would refuse replaced by its default, and a note
/// for each.
fn usable_global(global: &BgpGlobal, notes: &mut Vec<String>) -> BgpGlobal {
    let defaults = BgpGlobal::default();
    let mut usable = global.clone();
    if let Err(e) = validate::validate_as(global.as_num) {
        notes.push(format!(
            "global AS ignored ({e}): AS {} used",
            defaults.as_num
        ));
        usable.as_num = defaults.as_num;
    }
    if let Some(rt) = global.restart_time.filter(|rt| !(1..=4095).contains(rt)) {
        notes.push(format!(
            "graceful restart time {rt} ignored: BIRD's default used (valid: 1 to 4095 s)"
        ));
        usable.restart_time = None;
    }
    if let Err(e) = validate::validate_timers(&global.timers) {
        notes.push(format!("session timers ignored ({e}): the defaults used"));
        usable.timers = defaults.timers;
    }
    usable
}

/// The valid nodes other than `input.node`, by IP (first name wins on a duplicate
/// IP); a note for each one left out.
fn other_nodes<'a>(
    input: &BirdInput<'a>,
    notes: &mut Vec<String>,
) -> BTreeMap<Ipv4Addr, &'a BgpNode> {
    let me = input.node;
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
    nodes_by_ip
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{names, no_mesh, node, peer, plan};
    use super::*;
    use crate::model::BgpGlobal;

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
        assert!(plan(&no_mesh(), &nodes, 1, &[]).sessions.is_empty());
    }

    #[test]
    fn node_as_overrides_global_as() {
        let mut nodes = vec![node("a", "10.0.0.1"), node("b", "10.0.0.2")];
        nodes[1].as_num = Some(65002);
        let g = BgpGlobal::default();
        let a = plan(&g, &nodes, 0, &[]);
        assert_eq!(a.template.local_as, 64512);
        assert_eq!(a.sessions[0].neighbor_as, 65002);
        let b = plan(&g, &nodes, 1, &[]);
        assert_eq!(b.template.local_as, 65002);
        assert_eq!(b.sessions[0].neighbor_as, 64512);
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
        assert_eq!(rr.template.rr_cluster_id, nodes[0].rr_cluster_id);
        // A client meshes with the other client and peers with every reflector.
        let client = plan(&g, &nodes, 3, &[]);
        assert_eq!(
            names(&client),
            ["Mesh_10_0_0_5", "Rr_10_0_0_1", "Rr_10_0_0_2", "Rr_10_0_0_3"]
        );
        assert!(client.sessions.iter().all(|s| !s.reflector && !s.rr_client));
        assert_eq!(client.template.rr_cluster_id, None);
    }

    #[test]
    fn without_the_mesh_a_client_peers_only_with_reflectors() {
        let mut nodes = vec![
            node("c1", "10.0.0.1"),
            node("rr", "10.0.0.2"),
            node("c2", "10.0.0.3"),
            node("c3", "10.0.0.4"),
        ];
        nodes[1].rr_cluster_id = Some("1.1.1.1".parse().unwrap());
        let client = plan(&no_mesh(), &nodes, 0, &[]);
        let neighbors: Vec<(SessionKind, Ipv4Addr)> = client
            .sessions
            .iter()
            .map(|s| (s.kind, s.neighbor))
            .collect();
        assert_eq!(neighbors, [(SessionKind::RouteReflection, nodes[1].ip)]);
        assert!(client.notes.is_empty(), "{:?}", client.notes);
        // The reflector still serves every client, mesh or not.
        let rr = plan(&no_mesh(), &nodes, 1, &[]);
        assert_eq!(names(&rr), ["Rr_10_0_0_1", "Rr_10_0_0_3", "Rr_10_0_0_4"]);
        assert!(rr.sessions.iter().all(|s| s.reflector && s.rr_client));
    }

    #[test]
    fn route_reflection_stays_inside_one_as() {
        let mut nodes = vec![
            node("rr", "10.0.0.1"),
            node("same", "10.0.0.2"),
            node("other", "10.0.0.3"),
        ];
        nodes[0].rr_cluster_id = Some("1.1.1.1".parse().unwrap());
        nodes[2].as_num = Some(65001);
        let rr = plan(&no_mesh(), &nodes, 0, &[]);
        assert_eq!(names(&rr), ["Rr_10_0_0_2"]);
        assert_eq!(rr.notes.len(), 1, "{:?}", rr.notes);
        assert!(
            rr.notes[0].contains("serves AS 64512 only"),
            "{:?}",
            rr.notes
        );
        let other = plan(&no_mesh(), &nodes, 2, &[]);
        assert!(other.sessions.is_empty());
        assert!(
            other.notes[0].starts_with("route reflector node \"rr\"")
                && other.notes[0].ends_with("no session"),
            "{:?}",
            other.notes
        );
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
    fn mesh_password_goes_to_automatic_sessions_only() {
        let mut nodes = vec![
            node("a", "10.0.0.1"),
            node("b", "10.0.0.2"),
            node("rr", "10.0.0.3"),
        ];
        nodes[2].rr_cluster_id = Some("1.1.1.1".parse().unwrap());
        let mut tor = peer("tor", "192.0.2.1", 65000, None);
        tor.password = Some("tor-secret".into());
        let open = peer("open", "192.0.2.2", 65000, None);
        let g = BgpGlobal {
            mesh_password: Some("mesh-secret".into()),
            ..BgpGlobal::default()
        };
        let p = plan(&g, &nodes, 0, &[tor, open]);
        let pw: Vec<(&str, Option<&str>)> = p
            .sessions
            .iter()
            .map(|s| (s.name.as_str(), s.password.as_deref()))
            .collect();
        assert_eq!(
            pw,
            [
                ("Mesh_10_0_0_2", Some("mesh-secret")),
                ("Rr_10_0_0_3", Some("mesh-secret")),
                ("Global_192_0_2_1", Some("tor-secret")),
                ("Global_192_0_2_2", None),
            ]
        );

        let bad = BgpGlobal {
            mesh_password: Some("a\"b".into()),
            ..BgpGlobal::default()
        };
        let p = plan(&bad, &nodes, 0, &[]);
        assert!(p.sessions.iter().all(|s| s.password.is_none()));
        assert_eq!(
            p.notes,
            ["mesh password ignored: it is not a valid BIRD password"]
        );
    }

    #[test]
    fn graceful_restart_time_only_with_graceful_restart() {
        let nodes = [node("a", "10.0.0.1")];
        let on = BgpGlobal {
            restart_time: Some(300),
            ..BgpGlobal::default()
        };
        let t = plan(&on, &nodes, 0, &[]).template;
        assert!(t.graceful_restart);
        assert_eq!(t.restart_time, Some(300));
        assert_eq!(t.source_address, nodes[0].ip);
        assert_eq!(t.timers, on.timers);
        let off = BgpGlobal {
            graceful_restart: false,
            ..on
        };
        let t = plan(&off, &nodes, 0, &[]).template;
        assert!(!t.graceful_restart);
        assert_eq!(t.restart_time, None);
    }

    #[test]
    fn one_session_per_node_address() {
        let nodes = vec![
            node("a", "10.0.0.1"),
            node("twin", "10.0.0.1"),
            node("b2", "10.0.0.2"),
            node("b1", "10.0.0.2"),
        ];
        let p = plan(&BgpGlobal::default(), &nodes, 0, &[]);
        assert_eq!(names(&p), ["Mesh_10_0_0_2"]);
        assert_eq!(p.sessions[0].description, "mesh: node b1");
        assert_eq!(
            p.notes,
            [
                "node \"twin\" has this node's IP 10.0.0.1: no session",
                "node \"b2\" has the IP 10.0.0.2 of node \"b1\": no second session",
            ]
        );
    }
}
