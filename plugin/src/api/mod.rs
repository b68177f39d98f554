//! brindled's local API for brindle-cni (the fast path: warm etcd connection, cached
//! blocks).

use std::sync::Arc;

use axum::Router;

use crate::daemon::NodeState;

/// The routes served on `--api-socket`.
pub fn router(_state: Arc<NodeState>) -> Router {
    Router::new()
}
