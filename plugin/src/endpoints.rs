//! Endpoint records: one per container interface wired by brindle (Docker or CNI), at
//! `PREFIX/v1/endpoints/NODE/ID`, listed by `brindle endpoints` and used by the agent to
//! keep each local endpoint's /32 route.

use std::net::Ipv4Addr;

use brindle_ipam::store::{Compare, Op, Store, Txn, TxnOutcome};
use brindle_ipam::{IpamError, Keys};
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// One wired container interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// `PREFIX/v1/endpoints/`: every endpoint record lives under it.
pub fn endpoints_prefix(keys: &Keys) -> String {
    format!("{}/endpoints/", keys.root())
}

/// The key of one endpoint record, for callers that write it inside their own transaction.
pub fn endpoint_key(keys: &Keys, node: &str, id: &str) -> String {
    format!("{}/endpoints/{node}/{id}", keys.root())
}

/// Create or replace an endpoint record.
pub async fn put_endpoint<S: Store>(
    store: &S,
    keys: &Keys,
    record: &EndpointRecord,
) -> Result<(), IpamError> {
    let value = serde_json::to_vec(record).expect("endpoint record serialises");
    let txn = Txn {
        compares: Vec::new(),
        ops: vec![Op::Put {
            key: endpoint_key(keys, &record.node, &record.id),
            value,
        }],
        read_on_conflict: Vec::new(),
    };
    store.txn(txn).await?;
    Ok(())
}

/// Read one endpoint record.
pub async fn get_endpoint<S: Store>(
    store: &S,
    keys: &Keys,
    node: &str,
    id: &str,
) -> Result<Option<EndpointRecord>, IpamError> {
    get_json(store, endpoint_key(keys, node, id)).await
}

/// Read one JSON record, naming the key when it does not decode.
pub async fn get_json<S: Store, T: serde::de::DeserializeOwned>(
    store: &S,
    key: String,
) -> Result<Option<T>, IpamError> {
    match store.get(&key).await? {
        Some(kv) => serde_json::from_slice(&kv.value)
            .map(Some)
            .map_err(|source| IpamError::Corrupt { key, source }),
        None => Ok(None),
    }
}

/// Delete an endpoint record; deleting a missing one is fine. Returns whether it existed.
pub async fn delete_endpoint<S: Store>(
    store: &S,
    keys: &Keys,
    node: &str,
    id: &str,
) -> Result<bool, IpamError> {
    let key = endpoint_key(keys, node, id);
    let Some(kv) = store.get(&key).await? else {
        return Ok(false);
    };
    let txn = Txn {
        compares: vec![Compare::unchanged(&key, Some(kv.mod_revision))],
        ops: vec![Op::Delete { key }],
        read_on_conflict: Vec::new(),
    };
    Ok(matches!(
        store.txn(txn).await?,
        TxnOutcome::Committed { .. }
    ))
}

/// Every endpoint, or one node's, sorted by node then id.
pub async fn list_endpoints<S: Store>(
    store: &S,
    keys: &Keys,
    node: Option<&str>,
) -> Result<Vec<EndpointRecord>, IpamError> {
    let prefix = match node {
        Some(n) => format!("{}{n}/", endpoints_prefix(keys)),
        None => endpoints_prefix(keys),
    };
    store
        .list(&prefix)
        .await?
        .into_iter()
        .map(|kv| {
            serde_json::from_slice(&kv.value).map_err(|source| IpamError::Corrupt {
                key: kv.key,
                source,
            })
        })
        .collect()
}
