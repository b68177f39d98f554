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
//!
//! Three parts, split where their inputs and their questions differ:
//! - `sessions`: who this node peers with and how ([`SessionPlan`]), from the BGP
//!   model only (global settings, nodes, peers). Mesh, route reflection, explicit
//!   peers, passwords, graceful restart and timers are decided here, as data.
//! - `filters`: which prefixes are announced, accepted and installed, from the
//!   IPAM [`RoutingView`] only, and the filter text built on them.
//! - `render`: the text of the configuration, from the plan and the filters. It
//!   decides no policy, so a change of peering rules is a change in `sessions` with
//!   tests on the plan, and a change of BIRD syntax is a change here with golden files.

use crate::model::{BgpGlobal, BgpNode, BgpPeer, RoutingView};
use crate::validate;
use crate::BgpError;

/// `writeln!` into a `String`, which cannot fail (the user imports `std::fmt::Write`).
macro_rules! w {
    ($($arg:tt)*) => {{
        let _ = writeln!($($arg)*);
    }};
}

mod filters;
mod render;
mod sessions;

pub use render::render_bird;
pub use sessions::{
    plan_sessions, protocol_name, BgpSession, SessionKind, SessionPlan, SessionTemplate,
};

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

/// Builders shared by the tests of the submodules.
#[cfg(test)]
mod fixtures {
    use super::{plan_sessions, BirdInput, SessionPlan};
    use crate::model::{BgpGlobal, BgpNode, BgpPeer, RoutingView};

    pub fn node(name: &str, ip: &str) -> BgpNode {
        BgpNode {
            name: name.into(),
            ip: ip.parse().unwrap(),
            as_num: None,
            rr_cluster_id: None,
        }
    }

    pub fn peer(name: &str, ip: &str, as_num: u32, on: Option<&str>) -> BgpPeer {
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

    pub fn names(plan: &SessionPlan) -> Vec<&str> {
        plan.sessions.iter().map(|s| s.name.as_str()).collect()
    }

    pub fn plan(g: &BgpGlobal, nodes: &[BgpNode], me: usize, peers: &[BgpPeer]) -> SessionPlan {
        let view = RoutingView::default();
        plan_sessions(&BirdInput {
            global: g,
            node: &nodes[me],
            nodes,
            peers,
            view: &view,
        })
    }

    pub fn no_mesh() -> BgpGlobal {
        BgpGlobal {
            node_mesh: false,
            ..BgpGlobal::default()
        }
    }
}
