//! What every brindled service shares.

use std::sync::Arc;

use brindle_ipam::{EtcdStore, Ipam};

use super::DaemonArgs;
use crate::dataplane::{Dataplane, Firewall};

/// The node's shared state: one warm etcd connection and IPAM cache, the dataplane.
pub struct NodeState {
    pub args: DaemonArgs,
    pub node: String,
    pub ipam: Ipam<EtcdStore>,
    pub dataplane: Arc<dyn Dataplane>,
    pub firewall: Arc<dyn Firewall>,
}

impl NodeState {
    pub fn new(
        args: DaemonArgs,
        ipam: Ipam<EtcdStore>,
        dataplane: Arc<dyn Dataplane>,
        firewall: Arc<dyn Firewall>,
    ) -> Self {
        Self {
            node: args.node_name(),
            args,
            ipam,
            dataplane,
            firewall,
        }
    }
}
