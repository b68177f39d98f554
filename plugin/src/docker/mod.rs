//! Docker's remote NetworkDriver + IpamDriver protocol (libnetwork), translated into
//! IPAM and dataplane calls.

use std::sync::Arc;

use axum::Router;

use crate::daemon::NodeState;

/// The routes Docker calls on `/run/docker/plugins/brindle.sock`.
pub fn router(_state: Arc<NodeState>) -> Router {
    Router::new()
}
