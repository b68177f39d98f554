//! Stored records as another tool or an older version might have written them: the
//! bytes go through every record decoder of the state layer, then into a store that
//! holds a small working installation, where IPAM, the CLI's listings, the BGP store
//! and the agent's view read them.
//!
//! One input is up to [`MAX_RECORDS`] records separated by 0xFF; the first byte of each
//! picks the key it is stored at ([`SLOTS`]), the rest is the value. A decode error
//! must name its key; nothing may panic.

#![no_main]

use std::net::Ipv4Addr;
use std::sync::Arc;

use brindle_bgp::{BgpGlobal, BgpNode, BgpPeer};
use brindle_dataplane::FakeDataplane;
use brindle_fuzz::{ipam_with, parts, runtime, SeedPool, NODE};
use brindle_ipam::model::Affinity;
use brindle_ipam::state::decode_value;
use brindle_ipam::store::{Op, StoreError, Txn};
use brindle_ipam::{AllocRequest, Block, HandleRecord, Ipam, Keys, MemoryStore, Pool, Store};
use brindle_plugin::agent::routes::Desired;
use brindle_plugin::agent::{firewall, Agent, AgentConfig, Prefixes, Snapshot};
use brindle_plugin::bgpstore::{self, NodeMachine};
use brindle_plugin::docker::records::{self, DockerEndpoint, NetworkRecord, PoolMarker};
use brindle_plugin::endpoints::{self, EndpointRecord};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;

const MAX_RECORDS: usize = 4;

const POOLS: [SeedPool; 1] = [SeedPool {
    name: "p",
    cidr: "10.20.0.0/24",
    block_size: 28,
}];

/// Where a record goes: the keys of the seeded installation, and two new ones.
const SLOTS: usize = 14;

fn slot_key(keys: &Keys, slot: u8) -> String {
    let block = "10.20.0.0/28".parse().expect("CIDR");
    match slot as usize % SLOTS {
        0 => keys.pool("p"),
        1 => keys.block(block),
        2 => keys.handle("h1"),
        3 => keys.affinity(NODE, block),
        4 => keys.pools_meta(),
        5 => keys.endpoint(NODE, "e1"),
        6 => keys.docker_network("net1"),
        7 => keys.docker_pool_marker("p"),
        8 => keys.node(NODE),
        9 => keys.bgp_peer("tor"),
        10 => keys.bgp_global(),
        11 => keys.node_identity(NODE),
        12 => keys.block("10.20.0.16/28".parse().expect("CIDR")),
        _ => keys.pool("z"),
    }
}

fuzz_target!(|data: &[u8]| {
    let keys = Keys::new(brindle_fuzz::PREFIX);
    let mut written = Vec::new();
    for record in parts(data, MAX_RECORDS) {
        let Some((&slot, value)) = record.split_first() else {
            continue;
        };
        let key = slot_key(&keys, slot);
        decode_every_type(&key, value);
        written.push((key, value.to_vec()));
    }
    runtime().block_on(read_installation(&written));
});

/// Every record type's decoder on `value`: an error names `key`.
fn decode_every_type(key: &str, value: &[u8]) {
    fn one<T: DeserializeOwned>(key: &str, value: &[u8]) {
        if let Err(e) = decode_value::<T>(key, value) {
            assert!(e.to_string().contains(key), "{e} does not name {key}");
        }
    }
    one::<Pool>(key, value);
    one::<Block>(key, value);
    one::<HandleRecord>(key, value);
    one::<Affinity>(key, value);
    one::<EndpointRecord>(key, value);
    one::<DockerEndpoint>(key, value);
    one::<NetworkRecord>(key, value);
    one::<PoolMarker>(key, value);
    one::<BgpNode>(key, value);
    one::<BgpPeer>(key, value);
    one::<BgpGlobal>(key, value);
    one::<NodeMachine>(key, value);
    // The BGP store's checked decoders (key and validation) as well.
    fn checked<T: bgpstore::StoredRecord>(key: &str, value: &[u8]) {
        if let Err(e) = bgpstore::decode_record::<T>(key, value) {
            assert!(e.to_string().contains(key), "{e} does not name {key}");
        }
    }
    checked::<BgpNode>(key, value);
    checked::<BgpPeer>(key, value);
    checked::<BgpGlobal>(key, value);
    checked::<NodeMachine>(key, value);
}

/// Seed an installation, overwrite `written`, and read it every way brindle does.
async fn read_installation(written: &[(String, Vec<u8>)]) {
    let ipam = seeded().await;
    let store = ipam.store();
    let keys = ipam.keys();
    let ops = written
        .iter()
        .map(|(key, value)| Op::Put {
            key: key.clone(),
            value: value.clone(),
        })
        .collect();
    let stored = store
        .txn(Txn {
            ops,
            ..Txn::default()
        })
        .await;
    match stored {
        Ok(_) => {}
        // The one write a store refuses: a value larger than any record may be.
        Err(StoreError::RecordTooLarge { .. }) => return,
        Err(e) => panic!("the in-process store refused a write: {e}"),
    }
    let named = |what: &str, result: Result<(), String>| {
        if let Err(e) = result {
            if e.contains("stored record") {
                assert!(
                    written.iter().any(|(key, _)| e.contains(key.as_str())),
                    "{what}: {e} names none of the keys written"
                );
            }
        }
    };
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let ip = |s: &str| s.parse::<Ipv4Addr>().expect("address");

    // The CLI's reports and the consistency check.
    named(
        "pools",
        ipam.list_pools().await.map(drop).map_err(|e| text(&e)),
    );
    named("usage", ipam.usage().await.map(drop).map_err(|e| text(&e)));
    named(
        "address",
        ipam.address(ip("10.20.0.1"))
            .await
            .map(drop)
            .map_err(|e| text(&e)),
    );
    named(
        "check",
        ipam.check(false).await.map(drop).map_err(|e| text(&e)),
    );
    // Allocation and release over what was read.
    let request = |handle: &str, fixed: Option<Ipv4Addr>| AllocRequest {
        handle: handle.into(),
        node: NODE.into(),
        ip: fixed,
        ..AllocRequest::default()
    };
    named(
        "allocate",
        ipam.allocate(&request("h2", None))
            .await
            .map(drop)
            .map_err(|e| text(&e)),
    );
    named(
        "allocate fixed",
        ipam.allocate(&request("h3", Some(ip("10.20.0.20"))))
            .await
            .map(drop)
            .map_err(|e| text(&e)),
    );
    named(
        "addresses",
        ipam.addresses_of("h1")
            .await
            .map(drop)
            .map_err(|e| text(&e)),
    );
    named(
        "release",
        ipam.release_handle("h1")
            .await
            .map(drop)
            .map_err(|e| text(&e)),
    );
    named(
        "release ip",
        ipam.release_ip(ip("10.20.0.2"))
            .await
            .map(drop)
            .map_err(|e| text(&e)),
    );
    named("gc", ipam.check(true).await.map(drop).map_err(|e| text(&e)));
    // The listings of endpoints, Docker records and BGP records.
    named(
        "endpoints",
        endpoints::list_endpoints(store, keys, None)
            .await
            .map(drop)
            .map_err(|e| text(&e)),
    );
    named(
        "networks",
        records::list_networks(store, keys)
            .await
            .map(drop)
            .map_err(|e| text(&e)),
    );
    named(
        "markers",
        records::list_pool_markers(store, keys)
            .await
            .map(drop)
            .map_err(|e| text(&e)),
    );
    named(
        "docker endpoints",
        records::list_docker_endpoints(store, keys, NODE)
            .await
            .map(drop)
            .map_err(|e| text(&e)),
    );
    named(
        "nodes",
        bgpstore::list_nodes(store, keys)
            .await
            .map(drop)
            .map_err(|e| text(&e)),
    );
    named(
        "peers",
        bgpstore::list_peers(store, keys)
            .await
            .map(drop)
            .map_err(|e| text(&e)),
    );
    named(
        "global",
        bgpstore::get_global(store, keys)
            .await
            .map(drop)
            .map_err(|e| text(&e)),
    );
    named(
        "machines",
        bgpstore::node_machines(store, keys)
            .await
            .map(drop)
            .map_err(|e| text(&e)),
    );
    agent_view(store, keys).await;
}

/// The agent's snapshot of everything, and what it derives: routes, firewall, BIRD.
async fn agent_view(store: &MemoryStore, keys: &Keys) {
    let prefixes = Prefixes::new(keys);
    let mut snap = Snapshot::default();
    let all = store.list(&keys.all()).await.expect("in-process listing");
    for kv in &all {
        snap.apply(&prefixes, &kv.key, Some(&kv.value));
    }
    let _ = Desired::from_snapshot(&snap, NODE);
    let _ = firewall::desired(&snap, NODE);
    let config = AgentConfig {
        node: NODE.into(),
        node_ip: Some(Ipv4Addr::new(192, 0, 2, 11)),
        as_num: None,
        bird: None,
        firewall: false,
    };
    let _ = Agent::new(config, Arc::new(FakeDataplane::new())).render(&snap);
}

/// Pool `p` with one allocation (block, affinity, handle), an endpoint, a Docker
/// network and pool marker, a BGP node, peer and global settings, a node identity.
async fn seeded() -> Ipam<MemoryStore> {
    let ipam = ipam_with(&POOLS).await;
    let keys = ipam.keys().clone();
    ipam.allocate(&AllocRequest {
        handle: "h1".into(),
        node: NODE.into(),
        ..AllocRequest::default()
    })
    .await
    .expect("seed allocation");
    let json = |v: serde_json::Value| v.to_string().into_bytes();
    let seed = [
        (
            keys.endpoint(NODE, "e1"),
            json(
                serde_json::json!({"id":"e1","node":NODE,"orchestrator":"docker","container_id":null,
                "network":"net1","ip":"10.20.0.1","mac":null,"host_ifname":"brle1","handle":"h1"}),
            ),
        ),
        (
            keys.docker_network("net1"),
            json(
                serde_json::json!({"id":"net1","node":NODE,"subnets":[{"subnet":"10.20.0.0/24"}]}),
            ),
        ),
        (
            keys.docker_pool_marker("p"),
            json(serde_json::json!({"cidr":"10.20.0.0/24","created_by":"net1"})),
        ),
        (
            keys.node(NODE),
            json(serde_json::json!({"name":NODE,"ip":"192.0.2.11"})),
        ),
        (
            keys.bgp_peer("tor"),
            json(serde_json::json!({"name":"tor","peer_ip":"192.0.2.1","as_num":65000})),
        ),
        (keys.bgp_global(), json(serde_json::json!({"as_num":64512}))),
        (
            keys.node_identity(NODE),
            json(serde_json::json!({"machine_id":"m","boot_id":"b","hostname":"h"})),
        ),
    ];
    let ops = seed
        .into_iter()
        .map(|(key, value)| Op::Put { key, value })
        .collect();
    ipam.store()
        .txn(Txn {
            ops,
            ..Txn::default()
        })
        .await
        .expect("seed records");
    ipam
}
