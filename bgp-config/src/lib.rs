//! brindle-bgp: the BGP model of brindle and its renderers.
//!
//! Pure: no etcd, no network, no kernel. The only I/O is [`validate_with_bird`],
//! which runs `bird -p -c` on a temporary file.
//!
//! - [`model`]: [`BgpGlobal`], [`BgpNode`], [`BgpPeer`] (stored as JSON) and the
//!   [`RoutingView`] the renderers read from IPAM.
//! - [`bird`]: the BIRD 2 configuration of one node: [`plan_sessions`] decides the
//!   sessions, [`render_bird`] prints them with the route filters.
//! - [`render_static_routes`]: `brindle routes` for routers without BGP.
//! - [`render_router_config`]: what a router needs to peer with every node.
//! - [`validate`]: the checks the CLI and the agent run before storing or rendering.

pub mod bird;
pub mod check;
pub mod error;
pub mod model;
pub mod router;
pub mod routes;
mod text;
pub mod validate;

pub use bird::{
    plan_sessions, protocol_name, render_bird, validate_bird_input, BgpSession, BirdInput,
    SessionKind, SessionPlan, SessionTemplate,
};
pub use check::{validate_with_bird, DEFAULT_BIRD_BIN};
pub use error::BgpError;
pub use model::{
    canonical, BgpGlobal, BgpNode, BgpPeer, BgpTimers, BorrowedIp, RoutedBlock, RoutedPool,
    RoutingView, DEFAULT_AS, ROUTE_PROTOCOL,
};
pub use router::{render_router_config, RouterFormat};
pub use routes::{
    format_static_routes, render_static_routes, static_routes, RouteFormat, RouteKind,
    RouteWarning, RoutesOutput, StaticRoute,
};
pub use validate::{
    parse_as, validate_as, validate_global, validate_node, validate_node_name, validate_nodes,
    validate_password, validate_peer, validate_peer_name, validate_peers, validate_timers,
    validate_unicast, MAX_PASSWORD_LEN,
};
