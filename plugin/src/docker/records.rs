//! What the driver persists in etcd, written before Docker gets its answer (Docker
//! never replays `CreateNetwork` or `CreateEndpoint`); keys from `brindle_ipam::Keys`
//! (`docker_network`, `docker_pool_marker`, `endpoint`), JSON through its state layer:
//!
//! ```text
//! PREFIX/v1/docker/networks/NETWORK_ID     NetworkRecord
//! PREFIX/v1/docker/pools/POOL              PoolMarker: the pool was created for a --subnet
//! PREFIX/v1/endpoints/NODE/ENDPOINT_ID     DockerEndpoint: the shared EndpointRecord
//!                                          plus Docker-only fields
//! ```
//!
//! The Docker endpoint is stored at the shared endpoint key as a superset of
//! [`EndpointRecord`] (extra fields are ignored by readers of the base record), so one
//! write serves `brindle endpoints`, the agent's /32 routes and the driver.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use brindle_ipam::state;
use brindle_ipam::store::Store;
use brindle_ipam::{IpamError, Keys};
use ipnetwork::Ipv4Network;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::endpoints::EndpointRecord;

/// `orchestrator` of endpoint records and allocation attributes written by the driver.
pub const ORCHESTRATOR: &str = "docker";

/// A Docker network (Docker sends only its id, never its name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    /// The node whose dockerd created it (networks are node-local in Docker).
    pub node: String,
    pub subnets: Vec<NetworkSubnet>,
    /// `-o com.docker.network.driver.mtu=N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// `-o brindle.allow-from=CIDR[,CIDR...]`, copied into every endpoint record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<Ipv4Network>,
    /// The isolation segment of its endpoints: `docker:` + the network's `PoolID`s
    /// (comma-separated), equal on every host for networks created alike. `None` in
    /// records written before isolation existed (rebuilt from `subnets` then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
}

/// One `IPv4Data` entry of a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSubnet {
    /// The subnet Docker shows (`0.0.0.0/0` for a network spanning a pool).
    pub subnet: Ipv4Network,
    /// A `--gateway` address reserved in IPAM (not the containers' 169.254.1.x next hop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// `--aux-address name=A`, reserved in IPAM.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aux: BTreeMap<String, Ipv4Addr>,
}

impl NetworkRecord {
    /// The name under which this network reserves `ip` (`gateway`, `aux address NAME`).
    pub fn reserves(&self, ip: Ipv4Addr) -> Option<String> {
        self.subnets.iter().find_map(|s| {
            if s.gateway == Some(ip) {
                return Some("gateway".to_string());
            }
            s.aux
                .iter()
                .find(|(_, a)| **a == ip)
                .map(|(name, _)| format!("aux address {name}"))
        })
    }
}

/// A pool the driver created for a `--subnet` that matched none; it is removed again
/// when no network uses it and it holds no addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolMarker {
    pub cidr: Ipv4Network,
    pub created_by: String,
}

/// A Docker endpoint as stored at its shared endpoint key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerEndpoint {
    #[serde(flatten)]
    pub base: EndpointRecord,
    /// Join's `SandboxKey` (the container's netns), while joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// The container's next hop for this endpoint: 169.254.1.N, N unique per sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The dockerd instance that created it (see `dockerd.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerd: Option<String>,
}

/// Every pool the driver created, by name.
pub async fn list_pool_markers<S: Store>(
    store: &S,
    keys: &Keys,
) -> Result<Vec<(String, PoolMarker)>, IpamError> {
    let prefix = keys.docker_pool_markers();
    let all = state::read_entries::<PoolMarker>(store, &prefix).await?;
    Ok(all
        .into_iter()
        .map(|(key, m)| {
            let name = Keys::name_in(&prefix, &key).unwrap_or(&key).to_string();
            (name, m.value)
        })
        .collect())
}

/// Write (create or replace) one record.
pub async fn put<S: Store, T: Serialize>(
    store: &S,
    key: String,
    value: &T,
) -> Result<(), IpamError> {
    Ok(state::put(store, &key, value).await?)
}

/// Delete one record; a missing one is fine.
pub async fn delete<S: Store>(store: &S, key: String) -> Result<(), IpamError> {
    Ok(state::delete(store, &key).await?)
}

/// Read one record.
pub async fn get<S: Store, T: DeserializeOwned>(
    store: &S,
    key: String,
) -> Result<Option<T>, IpamError> {
    Ok(state::read(store, &key).await?.map(|r| r.value))
}

/// Every network record (all nodes).
pub async fn list_networks<S: Store>(
    store: &S,
    keys: &Keys,
) -> Result<Vec<NetworkRecord>, IpamError> {
    let all = state::read_all(store, &keys.docker_networks()).await?;
    Ok(all.into_iter().map(|r| r.value).collect())
}

/// The Docker endpoints of one node (records of other orchestrators are skipped).
pub async fn list_docker_endpoints<S: Store>(
    store: &S,
    keys: &Keys,
    node: &str,
) -> Result<Vec<DockerEndpoint>, IpamError> {
    let all = state::read_all::<DockerEndpoint>(store, &keys.node_endpoints(node)).await?;
    Ok(all
        .into_iter()
        .map(|r| r.value)
        .filter(|ep| ep.base.orchestrator == ORCHESTRATOR)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_endpoint_is_a_superset_of_the_shared_record() {
        let ep = DockerEndpoint {
            base: EndpointRecord {
                id: "e1".into(),
                node: "n1".into(),
                orchestrator: ORCHESTRATOR.into(),
                container_id: Some("3fc0f555de1e".into()),
                network: "net1".into(),
                ip: "10.1.0.5".parse().unwrap(),
                mac: Some("02:42:0a:01:00:05".into()),
                host_ifname: "brle1".into(),
                handle: "docker-abc".into(),
                segment: Some("docker:brindle:p:10.1.0.0/24".into()),
                allow_from: vec!["192.0.2.0/24".parse().unwrap()],
            },
            sandbox: Some("/var/run/docker/netns/3fc0f555de1e".into()),
            gateway: Some("169.254.1.1".parse().unwrap()),
            dockerd: Some("42:1000".into()),
        };
        let json = serde_json::to_vec(&ep).unwrap();
        let base: EndpointRecord = serde_json::from_slice(&json).unwrap();
        assert_eq!(base, ep.base);
        let back: DockerEndpoint = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, ep);
        // A plain record (e.g. written before these fields existed) reads back too.
        let plain = serde_json::to_vec(&ep.base).unwrap();
        let back: DockerEndpoint = serde_json::from_slice(&plain).unwrap();
        assert_eq!(back.sandbox, None);
    }

    #[test]
    fn network_names_its_reservations() {
        let net = NetworkRecord {
            id: "n".into(),
            node: "n1".into(),
            subnets: vec![NetworkSubnet {
                subnet: "10.1.0.0/24".parse().unwrap(),
                gateway: Some("10.1.0.254".parse().unwrap()),
                aux: BTreeMap::from([("router".into(), "10.1.0.10".parse().unwrap())]),
            }],
            mtu: None,
            allow_from: Vec::new(),
            segment: None,
        };
        assert_eq!(
            net.reserves("10.1.0.254".parse().unwrap()).as_deref(),
            Some("gateway")
        );
        assert_eq!(
            net.reserves("10.1.0.10".parse().unwrap()).as_deref(),
            Some("aux address router")
        );
        assert_eq!(net.reserves("10.1.0.11".parse().unwrap()), None);
    }
}
