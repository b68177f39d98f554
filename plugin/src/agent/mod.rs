//! The node agent loops: node registration, route programming, BIRD rendering.

use std::sync::Arc;

use crate::daemon::NodeState;

/// Run the agent until an unrecoverable error.
pub async fn run(_state: Arc<NodeState>) -> anyhow::Result<()> {
    std::future::pending::<()>().await;
    Ok(())
}
