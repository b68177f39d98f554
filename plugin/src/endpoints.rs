//! Endpoint records: one per container interface wired by brindle (Docker or CNI), at
//! `PREFIX/v1/endpoints/NODE/ID` ([`Keys::endpoint`]), listed by `brindle endpoints` and
//! used by the agent to keep each local endpoint's /32 route. This file is the record's
//! one definition: its fields, its JSON (serde) and its reads and writes through the
//! state layer (`brindle_ipam::state`).
//!
//! A record read from etcd is checked as it is deserialised (`checked.rs`): its `node`
//! and `id` agree with its key, its names are bounded, its addresses valid. A record
//! another tool wrote is an error naming the key, never a wrong route or a panic.

use std::net::Ipv4Addr;

use brindle_ipam::state;
use brindle_ipam::store::{Op, Store};
use brindle_ipam::{IpamError, Keys};
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

mod checked;

pub use checked::{MAX_ENDPOINT_NAME, MAX_IFNAME};

/// One wired container interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct EndpointRecord {
    /// Docker endpoint id, or `<containerID>+<ifname>` for CNI (also the IPAM handle).
    pub id: String,
    pub node: String,
    /// `docker` or `cni`.
    pub orchestrator: String,
    pub container_id: Option<String>,
    /// Docker network id, or the CNI network name.
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: Option<String>,
    /// Host-side veth (`brl...`).
    pub host_ifname: String,
    /// The IPAM handle owning `ip`.
    pub handle: String,
    /// The network this endpoint belongs to on every host, for isolation between
    /// networks: `cni:NAME` (the conflist `name`) or `docker:POOLID` (Docker network ids
    /// are per host; networks created alike on two hosts share brindle's pool id).
    /// `None` in records written before isolation existed: [`EndpointRecord::segment`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    /// `brindle.allow-from`: the only sources outside every pool that may connect to
    /// this endpoint; empty allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<Ipv4Network>,
}

impl EndpointRecord {
    /// The isolation segment: the stored one, else the orchestrator's network.
    pub fn segment(&self) -> String {
        self.segment
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.orchestrator, self.network))
    }
}

/// Create or replace an endpoint record.
pub async fn put_endpoint<S: Store>(
    store: &S,
    keys: &Keys,
    record: &EndpointRecord,
) -> Result<(), IpamError> {
    Ok(state::put(store, &keys.endpoint(&record.node, &record.id), record).await?)
}

/// The write that stores `record`, for a transaction of the caller's (the allocation
/// of its address: [`brindle_ipam::Ipam::allocate_with`]).
pub fn put_endpoint_op(keys: &Keys, record: &EndpointRecord) -> Op {
    Op::Put {
        key: keys.endpoint(&record.node, &record.id),
        value: state::encode(record),
    }
}

/// The write that deletes a record, for a transaction of the caller's (the release of
/// its address: [`brindle_ipam::Ipam::release_handle_with`]).
pub fn delete_endpoint_op(keys: &Keys, node: &str, id: &str) -> Op {
    Op::Delete {
        key: keys.endpoint(node, id),
    }
}

/// Read one endpoint record.
pub async fn get_endpoint<S: Store>(
    store: &S,
    keys: &Keys,
    node: &str,
    id: &str,
) -> Result<Option<EndpointRecord>, IpamError> {
    let read = state::read(store, &keys.endpoint(node, id)).await?;
    Ok(read.map(|r| r.value))
}

/// Delete an endpoint record as read (one compare-and-swap); deleting a missing one
/// is fine. Returns whether it existed and was deleted.
pub async fn delete_endpoint<S: Store>(
    store: &S,
    keys: &Keys,
    node: &str,
    id: &str,
) -> Result<bool, IpamError> {
    let key = keys.endpoint(node, id);
    // Read raw, not decoded: a record that no longer decodes can still be deleted.
    let Some(kv) = store.get(&key).await? else {
        return Ok(false);
    };
    Ok(state::delete_if(store, &key, kv.mod_revision).await?)
}

/// Every endpoint, or one node's, sorted by node then id.
pub async fn list_endpoints<S: Store>(
    store: &S,
    keys: &Keys,
    node: Option<&str>,
) -> Result<Vec<EndpointRecord>, IpamError> {
    let prefix = match node {
        Some(n) => keys.node_endpoints(n),
        None => keys.endpoints(),
    };
    let all = state::read_all(store, &prefix).await?;
    Ok(all.into_iter().map(|r| r.value).collect())
}
