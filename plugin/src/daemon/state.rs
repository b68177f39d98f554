//! What every brindled service shares.

use std::sync::Arc;

use brindle_dataplane::{Dataplane, Firewall, Reaper};
use brindle_ipam::{EtcdStore, Ipam};

use super::DaemonArgs;

/// The node's shared state: one warm etcd connection and IPAM cache, the dataplane,
/// and the one veth reaper of Docker's and CNI's deletions.
pub struct NodeState {
    pub args: DaemonArgs,
    pub node: String,
    pub ipam: Ipam<EtcdStore>,
    pub dataplane: Arc<dyn Dataplane>,
    pub firewall: Arc<dyn Firewall>,
    pub reaper: Reaper,
}

impl NodeState {
    pub fn new(
        args: DaemonArgs,
        ipam: Ipam<EtcdStore>,
        dataplane: Arc<dyn Dataplane>,
        firewall: Arc<dyn Firewall>,
    ) -> Self {
        // A thread and netlink socket of its own: a veth teardown blocks its socket for
        // ~20 ms, and no request should queue behind it.
        let reaper = Reaper::dedicated().unwrap_or_else(|e| {
            tracing::warn!(%e, "no reaper thread; deleting veths on the runtime");
            Reaper::tasks(dataplane.clone())
        });
        Self {
            node: args.node_name(),
            args,
            ipam,
            dataplane,
            firewall,
            reaper,
        }
    }
}
