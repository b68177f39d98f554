//! What every brindled service shares, and what each is handed from it: the Docker
//! driver's and the local API's backends, the agent's configuration and stores.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use brindle_dataplane::{Dataplane, Firewall, Reaper};
use brindle_ipam::locks::KeyedLocks;
use brindle_ipam::{EtcdStore, Ipam};

use crate::agent::bird::BirdPaths;
use crate::agent::{reconcile, AgentConfig};
use crate::write_behind::WriteBehind;

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
    /// Releases committed after their request was answered (Docker's and CNI's).
    pub write_behind: WriteBehind,
    /// One lock per address, for Docker's claims and releases and CNI's.
    pub address_locks: KeyedLocks<Ipv4Addr>,
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
            write_behind: WriteBehind::default(),
            address_locks: KeyedLocks::default(),
        }
    }
}

/// What the Docker driver needs.
impl crate::docker::Backend for NodeState {
    type Store = EtcdStore;
    fn node(&self) -> &str {
        &self.node
    }
    fn ipam(&self) -> &Ipam<EtcdStore> {
        &self.ipam
    }
    fn dataplane(&self) -> &dyn Dataplane {
        self.dataplane.as_ref()
    }
    fn reaper(&self) -> &Reaper {
        &self.reaper
    }
    fn write_behind(&self) -> &WriteBehind {
        &self.write_behind
    }
    fn address_locks(&self) -> &KeyedLocks<Ipv4Addr> {
        &self.address_locks
    }
    fn docker_api_socket(&self) -> Option<&Path> {
        Some(&self.args.docker_api_socket)
    }
}

/// What the local API for brindle-cni needs.
impl crate::api::Backend for NodeState {
    type Store = EtcdStore;
    fn node(&self) -> &str {
        &self.node
    }
    fn prefix(&self) -> &str {
        &self.args.etcd.etcd_prefix
    }
    fn ipam(&self) -> &Ipam<EtcdStore> {
        &self.ipam
    }
    fn dataplane(&self) -> Arc<dyn Dataplane> {
        self.dataplane.clone()
    }
    fn reaper(&self) -> &Reaper {
        &self.reaper
    }
    fn write_behind(&self) -> &WriteBehind {
        &self.write_behind
    }
    fn address_locks(&self) -> &KeyedLocks<Ipv4Addr> {
        &self.address_locks
    }
}

impl NodeState {
    /// What the agent needs to know about its node, from brindled's flags.
    pub fn agent_config(&self) -> AgentConfig {
        let a = &self.args;
        AgentConfig {
            node: self.node.clone(),
            node_ip: a.node_ip,
            as_num: a.as_num,
            bird: a.bird_config.as_ref().map(|config| BirdPaths {
                config: config.clone(),
                socket: a.birdc_socket.clone(),
                bird_bin: a.bird_bin.clone(),
                birdc_bin: a.birdc_bin.clone(),
            }),
            firewall: a.firewall,
        }
    }
}

/// Run the agent (and the crash repair) until an unrecoverable error.
pub async fn run_agent(state: Arc<NodeState>) -> anyhow::Result<()> {
    let cfg = state.agent_config();
    let store = state.ipam.store().clone();
    let keys = state.ipam.keys().clone();
    let a = &state.args;
    let repair = reconcile::Task {
        ipam: Ipam::new(store.clone(), &a.etcd.etcd_prefix),
        settings: reconcile::Settings {
            period: a.reconcile_period,
            grace: a.reconcile_grace,
        },
        dockerd: Some(Arc::new(reconcile::DockerApi(a.docker_api_socket.clone()))),
    };
    crate::agent::run_with(
        store,
        keys,
        cfg,
        state.dataplane.clone(),
        state.firewall.clone(),
        Some(repair),
    )
    .await
}
