//! Driver tests without root: the real HTTP stack on a unix socket, spoken exactly as
//! Docker 20.10 speaks it (empty `Host`, no `Content-Type`, empty bodies), over the
//! in-process store and the recording fake dataplane.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use brindle_dataplane::{Dataplane, FakeDataplane, FakeOp};
use brindle_ipam::pools::NewPool;
use brindle_ipam::{Ipam, MemoryStore};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::http::Caller;
use super::records::{self, DockerEndpoint, NetworkRecord};
use super::wire::*;
use super::{dockerd, driver_router, Driver, LocalBackend};
use crate::endpoints::list_endpoints;
use crate::socket::serve_unix;

const NODE: &str = "n1";
const NET: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const EP1: &str = "d7f55ee7720b813b3f8eb532956bdbeb1e7f0ce897e3f8882f9d5aae1ee114f0";
const EP2: &str = "63b6666909cf9c9deda38a730aff80aedc9626f9d4557f2f5b1914b58a1b15eb";
const SANDBOX: &str = "/var/run/docker/netns/206e0dcac87c";
const CONTAINER: &str = "3fc0f555de1e8d2a6a4e0c3a9d9b8f1e2c3b4a5968778695a4b3c2d1e0f1a2b3";
/// A dockerd that no longer runs (no such PID).
const DEAD: &str = "999999999:1";

/// The container ids the fake Docker API reports, by endpoint id.
type Containers = Arc<std::sync::Mutex<HashMap<String, String>>>;

struct Env {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    store: MemoryStore,
    driver: Arc<Driver<LocalBackend>>,
    dp: Arc<FakeDataplane>,
    /// What the fake dockerd API answers: endpoint id → container id.
    containers: Containers,
    servers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for s in &self.servers {
            s.abort();
        }
    }
}

fn driver(
    store: &MemoryStore,
    dp: &Arc<FakeDataplane>,
    docker_api: Option<PathBuf>,
) -> Arc<Driver<LocalBackend>> {
    driver_on(NODE, store, dp, docker_api)
}

/// The driver of node `node` (several share one store as nodes share etcd).
fn driver_on(
    node: &str,
    store: &MemoryStore,
    dp: &Arc<FakeDataplane>,
    docker_api: Option<PathBuf>,
) -> Arc<Driver<LocalBackend>> {
    Arc::new(Driver::new(Arc::new(LocalBackend {
        node: node.into(),
        ipam: Ipam::new(store.clone(), "/brindle"),
        dataplane: dp.clone(),
        reaper: brindle_dataplane::Reaper::tasks(dp.clone()),
        write_behind: Default::default(),
        address_locks: Default::default(),
        docker_api_socket: docker_api,
    })))
}

/// dockerd's `GET /networks/{id}`, listing every registered container.
fn fake_docker_api(containers: Containers) -> axum::Router {
    axum::Router::new().route(
        "/networks/{id}",
        axum::routing::get(move || {
            let containers = containers.clone();
            async move {
                let map: serde_json::Map<String, Value> = containers
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(ep, c)| (c.clone(), json!({"EndpointID": ep, "Name": "c"})))
                    .collect();
                axum::Json(json!({"Name": "n", "Containers": map}))
            }
        }),
    )
}

/// Wait for the releases `driver` queued after answering them.
async fn settled(driver: &Driver<LocalBackend>) {
    driver.backend.write_behind.settle_all().await;
}

async fn wait_for(path: &Path) {
    for _ in 0..200 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{} did not appear", path.display());
}

async fn env() -> Env {
    let store = MemoryStore::new();
    let dp = Arc::new(FakeDataplane::new());
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("brindle.sock");
    let docker_sock = dir.path().join("docker.sock");
    let containers = Containers::default();
    let driver = driver(&store, &dp, Some(docker_sock.clone()));
    let servers = vec![
        tokio::spawn(serve_unix(sock.clone(), driver_router(driver.clone()))),
        tokio::spawn(serve_unix(
            docker_sock.clone(),
            fake_docker_api(containers.clone()),
        )),
    ];
    wait_for(&sock).await;
    wait_for(&docker_sock).await;
    Env {
        _dir: dir,
        sock,
        store,
        driver,
        dp,
        containers,
        servers,
    }
}

impl Env {
    /// One request as Docker sends it; returns (status, JSON body) once what it
    /// committed after answering (a release) has committed too, as a reader of etcd a
    /// moment later sees it (`a_release_answers_before_its_write_and_holds_the_address_until_it_commits`
    /// looks in between).
    async fn raw(&self, path: &str, body: &str) -> (u16, Value) {
        let reply = post(&self.sock, path, body).await;
        self.settled().await;
        reply
    }

    /// Wait for the releases queued after their answer.
    async fn settled(&self) {
        settled(&self.driver).await;
    }

    /// A request that must succeed.
    async fn ok(&self, path: &str, body: Value) -> Value {
        let (status, reply) = self.raw(path, &body.to_string()).await;
        assert_eq!(status, 200, "{path} {body}: {reply}");
        reply
    }

    /// A request that must fail; returns the `Err` message.
    async fn err(&self, path: &str, body: Value) -> String {
        let (status, reply) = self.raw(path, &body.to_string()).await;
        assert_eq!(status, 500, "{path} {body} should fail: {reply}");
        reply["Err"].as_str().expect("Err message").to_string()
    }

    async fn add_pool(&self, name: &str, cidr: &str, block: u8) {
        self.driver
            .ipam()
            .add_pool(NewPool {
                name: name.into(),
                cidr: cidr.parse().unwrap(),
                block_size: block,
                disabled: false,
                reserved: Default::default(),
                nat_outgoing: false,
            })
            .await
            .unwrap();
    }

    async fn pool(&self, subnet: &str, range: &str, opts: Value) -> String {
        let r = self
            .ok(
                "/IpamDriver.RequestPool",
                json!({"AddressSpace":"brindle-local","Pool":subnet,"SubPool":range,"Options":opts,"V6":false}),
            )
            .await;
        r["PoolID"].as_str().unwrap().to_string()
    }

    async fn address(&self, pool_id: &str, ip: &str) -> String {
        let r = self
            .ok(
                "/IpamDriver.RequestAddress",
                json!({"PoolID":pool_id,"Address":ip,"Options":null}),
            )
            .await;
        r["Address"].as_str().unwrap().to_string()
    }

    async fn network(&self, id: &str, subnet: &str, generic: Value) {
        self.ok(
            "/NetworkDriver.CreateNetwork",
            json!({"NetworkID":id,"Options":{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":generic},
                   "IPv4Data":[{"AddressSpace":"brindle-local","Gateway":"169.254.1.1/32","Pool":subnet}],"IPv6Data":[]}),
        )
        .await;
    }

    async fn endpoint(&self, net: &str, ep: &str, cidr: &str) -> Value {
        self.ok(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID":net,"EndpointID":ep,"Interface":{"Address":cidr,"AddressIPv6":"","MacAddress":""},
                   "Options":{"com.docker.network.endpoint.exposedports":[],"com.docker.network.portmap":[]}}),
        )
        .await
    }

    /// `Join`, then what Docker does with the answer: route the next hop in the sandbox.
    async fn join(&self, net: &str, ep: &str, sandbox: &str) -> Value {
        let reply = self
            .ok(
                "/NetworkDriver.Join",
                json!({"NetworkID":net,"EndpointID":ep,"SandboxKey":sandbox,"Options":{}}),
            )
            .await;
        let hop = reply["Gateway"].as_str().unwrap().parse().unwrap();
        self.dp.route_next_hop_in_netns(Path::new(sandbox), hop);
        reply
    }

    /// Holder of an address in IPAM.
    async fn holder(&self, ip: &str) -> Option<String> {
        self.driver
            .ipam()
            .address(ip.parse().unwrap())
            .await
            .unwrap()
            .handle
    }

    async fn endpoint_record(&self, id: &str) -> Option<DockerEndpoint> {
        records::get(&self.store, self.driver.keys().endpoint(NODE, id))
            .await
            .unwrap()
    }
}

async fn post(sock: &Path, path: &str, body: &str) -> (u16, Value) {
    let mut s = UnixStream::connect(sock)
        .await
        .expect("connect plugin socket");
    // Exactly the four headers Docker 20.10 sends (protocols.md §F.0).
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: \r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: {}\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "connection closed early: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let head = &text[..end];
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .expect("replies carry Content-Length");
        if buf.len() < end + 4 + len {
            continue;
        }
        let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = &buf[end + 4..end + 4 + len];
        let value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("{path}: reply is not JSON ({e}): {body:?}"));
        return (status, value);
    }
}

/// Let background veth deletions finish.
async fn settle(dp: &FakeDataplane) {
    for _ in 0..100 {
        if dp
            .endpoints()
            .iter()
            .all(|e| dp.host_routes().iter().any(|(ip, _)| *ip == e.ip))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A `CreateEndpoint` as Docker sends it for `address` (`A.B.C.D/32`).
fn create_request(net: &str, ep: &str, address: impl Into<String>) -> CreateEndpointRequest {
    CreateEndpointRequest {
        network_id: net.into(),
        endpoint_id: ep.into(),
        interface: Some(EndpointInterface {
            address: address.into(),
            ..Default::default()
        }),
        options: None,
    }
}

fn me() -> Caller {
    Caller(dockerd::identity(std::process::id() as i32))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_and_capabilities_with_empty_bodies() {
    let env = env().await;
    let (status, r) = env.raw("/Plugin.Activate", "").await;
    assert_eq!(status, 200);
    assert_eq!(r, json!({"Implements":["NetworkDriver","IpamDriver"]}));
    let r = env.ok("/NetworkDriver.GetCapabilities", json!({})).await;
    assert_eq!(r["Scope"], "local");
    let (_, r) = env.raw("/IpamDriver.GetCapabilities", "").await;
    assert_eq!(r["RequiresMACAddress"], false);
    assert_eq!(r["RequiresRequestReplay"], false);
    let (_, r) = env.raw("/IpamDriver.GetDefaultAddressSpaces", "").await;
    assert_eq!(r["LocalDefaultAddressSpace"], "brindle-local");
    for path in [
        "/NetworkDriver.DiscoverNew",
        "/NetworkDriver.DiscoverDelete",
        "/NetworkDriver.ProgramExternalConnectivity",
        "/NetworkDriver.RevokeExternalConnectivity",
        "/NetworkDriver.FreeNetwork",
    ] {
        let (status, r) = env.raw(path, "").await;
        assert_eq!((status, r), (200, json!({})), "{path}");
    }
    let (status, r) = env
        .raw(
            "/NetworkDriver.AllocateNetwork",
            r#"{"NetworkID":"x","Options":{"k":"v"},"IPv4Data":[],"IPv6Data":null}"#,
        )
        .await;
    assert_eq!((status, r), (200, json!({"Options":{"k":"v"}})));
    // Unknown calls: 404 with an error body, so Docker treats them as unimplemented.
    let (status, r) = env.raw("/NetworkDriver.GwAllocCheck", "{}").await;
    assert_eq!(status, 404);
    assert!(r["Err"].as_str().unwrap().contains("GwAllocCheck"));
    // Undecodable bodies: one clear error.
    let (status, r) = env.raw("/IpamDriver.RequestPool", "{not json").await;
    assert_eq!(status, 500);
    assert!(r["Err"]
        .as_str()
        .unwrap()
        .starts_with("invalid JSON in the request to /IpamDriver.RequestPool"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_lifecycle_as_docker_drives_it() {
    let env = env().await;
    env.add_pool("office", "10.50.0.0/24", 26).await;

    // docker network create -d brindle --ipam-driver brindle --subnet 10.50.0.0/24 n
    let r = env
        .ok(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace":"brindle-local","Pool":"10.50.0.0/24","SubPool":"","Options":{},"V6":false}),
        )
        .await;
    assert_eq!(r["PoolID"], "brindle:office:10.50.0.0/24");
    assert_eq!(r["Pool"], "10.50.0.0/24");
    // The gateway comes with the pool, so Docker does not burn an address on it.
    assert_eq!(r["Data"]["com.docker.network.gateway"], "169.254.1.1/32");
    let pool_id = r["PoolID"].as_str().unwrap().to_string();
    // Should Docker still ask for a gateway, it gets the next hop, not a pool address.
    let r = env
        .ok(
            "/IpamDriver.RequestAddress",
            json!({"PoolID":pool_id,"Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}),
        )
        .await;
    assert_eq!(r["Address"], "169.254.1.1/32");
    env.network(NET, "10.50.0.0/24", json!({})).await;
    let net: NetworkRecord = records::get(&env.store, env.driver.keys().docker_network(NET))
        .await
        .unwrap()
        .expect("network persisted before the reply");
    assert_eq!(net.node, NODE);

    // docker run --net n --ip 10.50.0.7
    assert_eq!(env.address(&pool_id, "10.50.0.7").await, "10.50.0.7/32");
    let handle = env.holder("10.50.0.7").await.expect("allocated");
    assert!(handle.starts_with("docker-"), "{handle}");
    let r = env.endpoint(NET, EP1, "10.50.0.7/32").await;
    let mac = brindle_dataplane::container_mac_for("10.50.0.7".parse().unwrap()).to_string();
    assert_eq!(r, json!({"Interface":{"MacAddress":mac}}));
    let spec = &env.dp.endpoints()[0];
    assert_eq!(spec.host_ifname, "brld7f55ee7720");
    assert_eq!(spec.container_ifname, "tmpd7f55ee7720");
    assert_eq!(spec.ip, Ipv4Addr::new(10, 50, 0, 7));
    let rec = env.endpoint_record(EP1).await.expect("endpoint persisted");
    assert_eq!(rec.base.handle, handle);
    assert_eq!(rec.base.orchestrator, "docker");

    env.containers
        .lock()
        .unwrap()
        .insert(EP1.into(), CONTAINER.into());
    let r = env.join(NET, EP1, SANDBOX).await;
    assert_eq!(
        r,
        json!({"InterfaceName":{"SrcName":"tmpd7f55ee7720","DstPrefix":"eth"},"Gateway":"169.254.1.1",
               "StaticRoutes":[{"Destination":"169.254.1.1/32","RouteType":1,"NextHop":""}],
               "DisableGatewayService":true})
    );
    // The container id comes from dockerd's API, in the background.
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = list_endpoints(&env.store, env.driver.keys(), Some(NODE))
            .await
            .unwrap();
        if listed[0].container_id.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].container_id.as_deref(), Some(CONTAINER));
    let r = env
        .ok(
            "/NetworkDriver.EndpointOperInfo",
            json!({"NetworkID":NET,"EndpointID":EP1}),
        )
        .await;
    assert_eq!(r["Value"]["brindle.host_interface"], "brld7f55ee7720");

    // docker rm -f
    let ids = json!({"NetworkID":NET,"EndpointID":EP1});
    env.ok("/NetworkDriver.RevokeExternalConnectivity", ids.clone())
        .await;
    env.ok("/NetworkDriver.Leave", ids.clone()).await;
    env.ok("/NetworkDriver.DeleteEndpoint", ids.clone()).await;
    // Unrouted at once; the veth itself goes in the background.
    assert!(env.dp.host_routes().is_empty());
    settle(&env.dp).await;
    assert!(env.dp.endpoints().is_empty());
    // The address stays until Docker releases it (never earlier: a late release
    // could otherwise free a new owner's address), and the record with it: both go
    // in the release's one transaction.
    assert!(env.holder("10.50.0.7").await.is_some());
    assert!(env.endpoint_record(EP1).await.is_some());
    env.ok(
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID":pool_id,"Address":"10.50.0.7"}),
    )
    .await;
    assert!(env.holder("10.50.0.7").await.is_none());
    assert!(env.endpoint_record(EP1).await.is_none());
    // Repeats are harmless.
    env.ok("/NetworkDriver.DeleteEndpoint", ids).await;
    env.ok(
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID":pool_id,"Address":"10.50.0.7"}),
    )
    .await;

    // docker network rm: releases first, then DeleteNetwork.
    env.ok(
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID":pool_id,"Address":"169.254.1.1"}),
    )
    .await;
    env.ok("/IpamDriver.ReleasePool", json!({"PoolID":pool_id}))
        .await;
    env.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID":NET}))
        .await;
    env.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID":NET}))
        .await;
    assert!(
        records::get::<_, NetworkRecord>(&env.store, env.driver.keys().docker_network(NET))
            .await
            .unwrap()
            .is_none()
    );
    // A pool the admin created is never removed by the driver.
    assert_eq!(env.driver.ipam().list_pools().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_for_subnets_options_and_defaults() {
    let env = env().await;
    env.add_pool("big", "10.60.0.0/16", 26).await;

    // Inside an existing pool.
    assert_eq!(
        env.pool("10.60.5.0/24", "", json!({})).await,
        "brindle:big:10.60.5.0/24"
    );
    // Overlapping none: a new pool, removed again when the network goes.
    let id = env.pool("10.61.0.0/24", "10.61.0.128/25", json!({})).await;
    assert_eq!(
        id,
        "brindle:docker-10.61.0.0-24:10.61.0.0/24:10.61.0.128/25"
    );
    let pools = env.driver.ipam().list_pools().await.unwrap();
    let created = pools
        .iter()
        .find(|p| p.name == "docker-10.61.0.0-24")
        .unwrap();
    assert_eq!(created.cidr.to_string(), "10.61.0.0/24");
    // The same request again: the same id, the same pool.
    assert_eq!(
        env.pool("10.61.0.0/24", "10.61.0.128/25", json!({})).await,
        id
    );
    env.ok("/IpamDriver.ReleasePool", json!({"PoolID":id}))
        .await;
    assert!(!env
        .driver
        .ipam()
        .list_pools()
        .await
        .unwrap()
        .iter()
        .any(|p| p.name == "docker-10.61.0.0-24"));

    // Partly overlapping: refused, naming both.
    let e = env
        .err(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace":"brindle-local","Pool":"10.60.0.0/15","SubPool":"","Options":{},"V6":false}),
        )
        .await;
    assert!(
        e.contains("10.60.0.0/15 partly overlaps pool big (10.60.0.0/16)"),
        "{e}"
    );

    // No subnet: the pool named default, else the only pool; reported as 0.0.0.0/0.
    let r = env
        .ok(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace":"brindle-local","Pool":"","SubPool":"","Options":{},"V6":false}),
        )
        .await;
    assert_eq!(r["PoolID"], "brindle:big");
    assert_eq!(r["Pool"], "0.0.0.0/0");
    env.add_pool("default", "10.62.0.0/24", 26).await;
    assert_eq!(env.pool("", "", json!({})).await, "brindle:default");
    assert_eq!(env.pool("", "", json!({"pool":"big"})).await, "brindle:big");

    for (body, needle) in [
        (
            json!({"Pool":"","Options":{"color":"blue"}}),
            "unsupported IPAM option color=blue: brindle supports only --ipam-opt pool=NAME",
        ),
        (
            json!({"Pool":"","Options":{"pool":"nope"}}),
            "pool=nope: no such pool",
        ),
        (json!({"Pool":"fd00::/64","V6":true}), "IPv4 only"),
        (
            json!({"Pool":"10.63.0.5/24"}),
            "invalid --subnet 10.63.0.5/24: host bits are set",
        ),
        (
            json!({"Pool":"10.60.5.0/24","Options":{"pool":"default"}}),
            "--subnet 10.60.5.0/24 is not inside pool default (10.62.0.0/24)",
        ),
    ] {
        let e = env.err("/IpamDriver.RequestPool", body.clone()).await;
        assert!(e.contains(needle), "{body}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_fixed_dynamic_ranges_and_their_errors() {
    let env = env().await;
    env.add_pool("p", "10.70.0.0/24", 26).await;
    let whole = env.pool("10.70.0.0/24", "", json!({})).await;
    // Dynamic, from this node's block.
    let a = env.address(&whole, "").await;
    assert!(a.starts_with("10.70.0.") && a.ends_with("/32"), "{a}");

    // --ip-range: dynamic addresses only there, fixed ones anywhere in the subnet.
    let ranged = env.pool("10.70.0.0/24", "10.70.0.200/30", json!({})).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(env.address(&ranged, "").await);
    }
    got.sort();
    assert_eq!(
        got,
        [
            "10.70.0.200/32",
            "10.70.0.201/32",
            "10.70.0.202/32",
            "10.70.0.203/32"
        ]
    );
    let e = env
        .err(
            "/IpamDriver.RequestAddress",
            json!({"PoolID":ranged,"Address":"","Options":null}),
        )
        .await;
    assert!(e.contains("no free address left in 10.70.0.200/30"), "{e}");
    assert_eq!(env.address(&ranged, "10.70.0.9").await, "10.70.0.9/32");

    // --gateway G is reserved and returned with the subnet's prefix.
    let r = env
        .ok(
            "/IpamDriver.RequestAddress",
            json!({"PoolID":whole,"Address":"10.70.0.254","Options":{"RequestAddressType":"com.docker.network.gateway"}}),
        )
        .await;
    assert_eq!(r["Address"], "10.70.0.254/24");

    // Taken by a running container: the error names the address and the container.
    env.network(NET, "10.70.0.0/24", json!({})).await;
    env.address(&whole, "10.70.0.7").await;
    env.endpoint(NET, EP1, "10.70.0.7/32").await;
    env.containers
        .lock()
        .unwrap()
        .insert(EP1.into(), CONTAINER.into());
    env.join(NET, EP1, SANDBOX).await;
    for _ in 0..100 {
        if env
            .endpoint_record(EP1)
            .await
            .unwrap()
            .base
            .container_id
            .is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = env
        .err(
            "/IpamDriver.RequestAddress",
            json!({"PoolID":whole,"Address":"10.70.0.7","Options":null}),
        )
        .await;
    assert!(
        e.starts_with("address 10.70.0.7 is already in use by container 3fc0f555de1e"),
        "{e}"
    );
    // Outside the subnet; the network address of the pool; not an address.
    for (ip, needle) in [
        (
            "10.71.0.7",
            "address 10.71.0.7 is outside subnet 10.70.0.0/24",
        ),
        (
            "10.70.0.0",
            "address 10.70.0.0 is the network address of pool p",
        ),
        ("nope", "invalid address \"nope\""),
    ] {
        let e = env
            .err(
                "/IpamDriver.RequestAddress",
                json!({"PoolID":whole,"Address":ip,"Options":null}),
            )
            .await;
        assert!(e.contains(needle), "{ip}: {e}");
    }
    // A pool id brindle never issued.
    let e = env
        .err(
            "/IpamDriver.RequestAddress",
            json!({"PoolID":"LocalDefault/10.0.0.0/8","Address":"","Options":null}),
        )
        .await;
    assert!(e.starts_with("unknown pool id"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool_is_one_clear_error() {
    let env = env().await;
    let id = env.pool("10.72.0.0/30", "", json!({})).await;
    env.address(&id, "").await;
    env.address(&id, "").await;
    let e = env
        .err(
            "/IpamDriver.RequestAddress",
            json!({"PoolID":id,"Address":"","Options":null}),
        )
        .await;
    assert_eq!(
        e,
        "pool docker-10.72.0.0-30 (10.72.0.0/30) is exhausted: all 2 usable addresses are allocated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_options_are_checked() {
    let env = env().await;
    env.network(
        NET,
        "10.73.0.0/24",
        json!({"com.docker.network.driver.mtu":"1400"}),
    )
    .await;
    let id = env.pool("10.73.0.0/24", "", json!({})).await;
    env.address(&id, "10.73.0.5").await;
    env.endpoint(NET, EP1, "10.73.0.5/32").await;
    assert_eq!(env.dp.endpoints()[0].mtu, Some(1400));

    let bad = |generic: Value, extra: Value, space: &str| {
        let mut options =
            json!({"com.docker.network.enable_ipv6":false,"com.docker.network.generic":generic});
        for (k, v) in extra.as_object().unwrap() {
            options[k] = v.clone();
        }
        json!({"NetworkID":"n2","Options":options,
               "IPv4Data":[{"AddressSpace":space,"Gateway":"172.18.0.1/16","Pool":"172.18.0.0/16"}],"IPv6Data":[]})
    };
    for (body, needle) in [
        (
            bad(json!({"color":"blue"}), json!({}), "brindle-local"),
            "unsupported driver option color=blue: brindle supports -o com.docker.network.driver.mtu=N, -o brindle.allow-from=CIDR[,CIDR...] and -o brindle.nat-outgoing=true|false",
        ),
        (
            bad(json!({"com.docker.network.driver.mtu":"12"}), json!({}), "brindle-local"),
            "expected a number from 68 to 65535",
        ),
        (
            bad(json!({}), json!({"com.docker.network.internal":true}), "brindle-local"),
            "does not support --internal",
        ),
        (
            bad(json!({}), json!({}), "LocalDefault"),
            "needs the brindle IPAM driver",
        ),
    ] {
        let e = env.err("/NetworkDriver.CreateNetwork", body.clone()).await;
        assert!(e.contains(needle), "{body}: {e}");
    }
    // Nothing was persisted for the refused network.
    assert!(
        records::get::<_, NetworkRecord>(&env.store, env.driver.keys().docker_network("n2"))
            .await
            .unwrap()
            .is_none()
    );
    // --driver-opt on docker network connect.
    let e = env
        .err(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID":NET,"EndpointID":EP2,"Interface":{"Address":"10.73.0.6/32"},
                   "Options":{"com.docker.network.endpoint.exposedports":[],"dk":"dv"}}),
        )
        .await;
    assert_eq!(
        e,
        "unsupported endpoint option dk=dv: brindle takes no --driver-opt"
    );
    // An endpoint of a network brindle does not know.
    let e = env
        .err(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID":"feedbeef0000","EndpointID":EP2,"Interface":{"Address":"10.73.0.6/32"}}),
        )
        .await;
    assert!(
        e.starts_with("network feedbeef0000 is not known to brindle"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_networks_in_one_container_get_distinct_next_hops() {
    let env = env().await;
    let id = env.pool("10.74.0.0/24", "", json!({})).await;
    env.network(NET, "10.74.0.0/24", json!({})).await;
    env.network("net2", "10.74.0.0/24", json!({})).await;
    env.address(&id, "10.74.0.1").await;
    env.address(&id, "10.74.0.2").await;
    env.endpoint(NET, EP1, "10.74.0.1/32").await;
    env.endpoint("net2", EP2, "10.74.0.2/32").await;
    let r1 = env.join(NET, EP1, SANDBOX).await;
    let r2 = env.join("net2", EP2, SANDBOX).await;
    assert_eq!(r1["Gateway"], "169.254.1.1");
    assert_eq!(r2["Gateway"], "169.254.1.2");
    assert_eq!(r2["StaticRoutes"][0]["Destination"], "169.254.1.2/32");
    // Joining again (a retry) keeps the choice; leaving frees it.
    assert_eq!(
        env.join("net2", EP2, SANDBOX).await["Gateway"],
        "169.254.1.2"
    );
    env.ok(
        "/NetworkDriver.Leave",
        json!({"NetworkID":NET,"EndpointID":EP1}),
    )
    .await;
    env.ok(
        "/NetworkDriver.DeleteEndpoint",
        json!({"NetworkID":NET,"EndpointID":EP1}),
    )
    .await;
    // Another container's first network starts at .1 again.
    let other = "/var/run/docker/netns/aaaaaaaaaaaa";
    env.address(&id, "10.74.0.3").await;
    env.endpoint(NET, "e3", "10.74.0.3/32").await;
    assert_eq!(env.join(NET, "e3", other).await["Gateway"], "169.254.1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_leave_nothing_behind() {
    let env = env().await;
    let id = env.pool("10.75.0.0/24", "", json!({})).await;
    env.network(NET, "10.75.0.0/24", json!({})).await;
    env.address(&id, "10.75.0.5").await;
    env.dp.fail_once(FakeOp::CreateVethOnHost, libc::EEXIST);
    let e = env
        .err(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID":NET,"EndpointID":EP1,"Interface":{"Address":"10.75.0.5/32"}}),
        )
        .await;
    assert!(e.contains("file exists"), "{e}");
    assert!(env.endpoint_record(EP1).await.is_none());
    assert!(env.dp.endpoints().is_empty());
    // Docker then releases the address (T7 in protocols.md): all gone.
    env.ok(
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID":id,"Address":"10.75.0.5"}),
    )
    .await;
    assert!(env.holder("10.75.0.5").await.is_none());
    // An address brindle did not hand out cannot become an endpoint.
    let e = env
        .err(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID":NET,"EndpointID":EP1,"Interface":{"Address":"10.75.0.6/32"}}),
        )
        .await;
    assert!(e.starts_with("address 10.75.0.6 is not allocated"), "{e}");
}

/// Issue 12, a fixed `--ip` (allocated by `RequestAddress`, which cannot tell it from
/// an `--aux-address`): the allocation, the record, and the release carrying the
/// record's delete; `Join`, `Leave` and `DeleteEndpoint` write nothing, and at no
/// point does a record name an address that is not allocated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_costs_three_writes_and_no_record_outlives_its_address() {
    let env = env().await;
    let id = env.pool("10.77.0.0/24", "", json!({})).await;
    env.network(NET, "10.77.0.0/24", json!({})).await;
    // The node's block claimed already, as on a node running containers.
    env.address(&id, "10.77.0.2").await;
    let ids = json!({"NetworkID":NET,"EndpointID":EP1});
    let writes = |before: i64| env.store.revision() - before;

    let before = env.store.revision();
    env.address(&id, "10.77.0.7").await;
    assert_eq!(writes(before), 1, "RequestAddress");
    let before = env.store.revision();
    env.endpoint(NET, EP1, "10.77.0.7/32").await;
    assert_eq!(writes(before), 1, "CreateEndpoint");
    let before = env.store.revision();
    env.join(NET, EP1, SANDBOX).await;
    env.ok("/NetworkDriver.Leave", ids.clone()).await;
    env.ok("/NetworkDriver.DeleteEndpoint", ids.clone()).await;
    assert_eq!(writes(before), 0, "Join, Leave, DeleteEndpoint");
    assert!(env.endpoint_record(EP1).await.is_some());
    assert!(env.holder("10.77.0.7").await.is_some());
    let before = env.store.revision();
    env.ok(
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID":id,"Address":"10.77.0.7"}),
    )
    .await;
    assert_eq!(writes(before), 1, "ReleaseAddress");
    assert!(env.endpoint_record(EP1).await.is_none());
    assert!(env.holder("10.77.0.7").await.is_none());
}

/// `CreateEndpoint` writes the record while the kernel builds the veth: a late
/// `ReleaseAddress` of an earlier holder of the address that arrives then must not
/// take the record without its route for a deleted endpoint's and free the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_release_during_create_endpoint_waits_and_is_ignored() {
    let env = env().await;
    let id = env.pool("10.79.0.0/24", "", json!({})).await;
    env.network(NET, "10.79.0.0/24", json!({})).await;
    env.address(&id, "10.79.0.5").await;
    let slow_kernel = env.dp.hold_next(FakeOp::CreateVethOnHost);
    let create = tokio::spawn({
        let driver = env.driver.clone();
        async move {
            let req = create_request(NET, EP1, "10.79.0.5/32");
            driver.create_endpoint(req, &me()).await
        }
    });
    // The record is written; the veth and its route are not there yet.
    while env.endpoint_record(EP1).await.is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(env.dp.host_routes().is_empty());
    let release = tokio::spawn({
        let driver = env.driver.clone();
        let req = ReleaseAddressRequest {
            pool_id: id.clone(),
            address: "10.79.0.5".into(),
        };
        async move { driver.release_address(req, &me()).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    slow_kernel.send(()).unwrap();
    create.await.unwrap().unwrap();
    release.await.unwrap().unwrap();
    env.settled().await;
    assert!(
        env.holder("10.79.0.5").await.is_some(),
        "a live endpoint's address was released"
    );
    assert!(env.endpoint_record(EP1).await.is_some());
    assert_eq!(env.dp.host_routes().len(), 1);
}

/// brindled killed between `DeleteEndpoint` and `ReleaseAddress` while dockerd stays up:
/// dockerd gives up on the release, and the container comes back with the same `--ip`
/// (`--restart always`). The record without its route shows the endpoint is gone, so
/// the address is taken over at once instead of failing "in use" until the
/// reconcile's grace period ends; a live endpoint's address is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_address_whose_release_was_lost_is_taken_over_at_once() {
    let env = env().await;
    let id = env.pool("10.80.0.0/24", "", json!({})).await;
    env.network(NET, "10.80.0.0/24", json!({})).await;
    env.address(&id, "10.80.0.5").await;
    env.address(&id, "10.80.0.6").await;
    env.endpoint(NET, EP1, "10.80.0.5/32").await;
    env.endpoint(NET, EP2, "10.80.0.6/32").await;
    env.join(NET, EP1, SANDBOX).await;
    let ids = json!({"NetworkID":NET,"EndpointID":EP1});
    env.ok("/NetworkDriver.Leave", ids.clone()).await;
    env.ok("/NetworkDriver.DeleteEndpoint", ids).await;
    let old = env.holder("10.80.0.5").await.expect("still allocated");

    let fresh = driver(&env.store, &env.dp, None);
    let ask = |ip: &str| RequestAddressRequest {
        pool_id: id.clone(),
        address: ip.into(),
        options: None,
    };
    let again = fresh
        .request_address(ask("10.80.0.5"), &me())
        .await
        .unwrap();
    assert!(again.address.starts_with("10.80.0.5/"), "{}", again.address);
    let new = env.holder("10.80.0.5").await.expect("allocated again");
    assert_ne!(new, old, "a new allocation, not the lost one");
    assert!(env.endpoint_record(EP1).await.is_none());
    // EP2 is live: its address stays its own.
    let e = fresh
        .request_address(ask("10.80.0.6"), &me())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    assert!(env.endpoint_record(EP2).await.is_some());
}

/// brindled restarted between `DeleteEndpoint` and `ReleaseAddress`: the new process
/// never saw the delete, but the record's route is gone, so the release is the
/// endpoint's own and takes the record along; a live endpoint's address is still kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_after_a_restart_takes_the_deleted_endpoints_record_along() {
    let env = env().await;
    let id = env.pool("10.78.0.0/24", "", json!({})).await;
    env.network(NET, "10.78.0.0/24", json!({})).await;
    env.address(&id, "10.78.0.5").await;
    env.address(&id, "10.78.0.6").await;
    env.endpoint(NET, EP1, "10.78.0.5/32").await;
    env.endpoint(NET, EP2, "10.78.0.6/32").await;
    env.join(NET, EP1, SANDBOX).await;
    env.ok(
        "/NetworkDriver.DeleteEndpoint",
        json!({"NetworkID":NET,"EndpointID":EP1}),
    )
    .await;

    let fresh = driver(&env.store, &env.dp, None);
    let release = |ip: &str| ReleaseAddressRequest {
        pool_id: id.clone(),
        address: ip.into(),
    };
    // EP2 is live (routed to its veth): a release of its address is a late one.
    fresh
        .release_address(release("10.78.0.6"), &me())
        .await
        .unwrap();
    settled(&fresh).await;
    assert!(env.holder("10.78.0.6").await.is_some());
    assert!(env.endpoint_record(EP2).await.is_some());
    // EP1 was deleted: its release frees the address and its record together.
    fresh
        .release_address(release("10.78.0.5"), &me())
        .await
        .unwrap();
    settled(&fresh).await;
    assert!(env.holder("10.78.0.5").await.is_none());
    assert!(env.endpoint_record(EP1).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_of_brindled() {
    let env = env().await;
    let id = env.pool("10.76.0.0/24", "", json!({})).await;
    env.network(NET, "10.76.0.0/24", json!({})).await;
    env.address(&id, "10.76.0.5").await;
    env.endpoint(NET, EP1, "10.76.0.5/32").await;
    env.join(NET, EP1, SANDBOX).await;

    // A fresh driver over the same store and kernel: nothing cached.
    let fresh = driver(&env.store, &env.dp, None);
    let address = fresh
        .request_address(
            RequestAddressRequest {
                pool_id: id.clone(),
                address: String::new(),
                options: None,
            },
            &me(),
        )
        .await
        .unwrap()
        .address;
    let ep2 = fresh
        .create_endpoint(create_request(NET, EP2, address), &me())
        .await
        .unwrap();
    assert!(ep2.interface.is_some());
    // The second network of the same container still gets a next hop of its own.
    let j = fresh
        .join(JoinRequest {
            network_id: NET.into(),
            endpoint_id: EP2.into(),
            sandbox_key: SANDBOX.into(),
        })
        .await
        .unwrap();
    assert_eq!(j.gateway, "169.254.1.2");
    // And the old endpoint is torn down and released as usual.
    fresh
        .delete_endpoint(EndpointRequest {
            network_id: NET.into(),
            endpoint_id: EP1.into(),
        })
        .await
        .unwrap();
    fresh
        .release_address(
            ReleaseAddressRequest {
                pool_id: id,
                address: "10.76.0.5".into(),
            },
            &me(),
        )
        .await
        .unwrap();
    settled(&fresh).await;
    assert!(env.holder("10.76.0.5").await.is_none());
    settle(&env.dp).await;
    assert!(!env.dp.has_endpoint("brld7f55ee7720"));
}

/// calico#746: dockerd restarted while brindled was unreachable, so the container's
/// address was never released; the container comes back asking for the same `--ip`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_address_comes_back_after_a_dockerd_restart_that_skipped_the_release() {
    let env = env().await;
    let id = env.pool("10.77.0.0/24", "", json!({})).await;
    env.network(NET, "10.77.0.0/24", json!({})).await;
    let request = |ip: &str| RequestAddressRequest {
        pool_id: id.clone(),
        address: ip.into(),
        options: None,
    };
    let old = Caller(Some(DEAD.into()));
    env.driver
        .request_address(request("10.77.0.5"), &old)
        .await
        .unwrap();
    env.driver
        .create_endpoint(create_request(NET, EP1, "10.77.0.5/32"), &old)
        .await
        .unwrap();
    // The same daemon asking again: another container wants a live one's address.
    let e = env
        .driver
        .request_address(request("10.77.0.5"), &old)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("address 10.77.0.5 is already in use by endpoint d7f55ee7720b"),
        "{e}"
    );
    // A new daemon while the old container still runs (its veth routes the address,
    // as with --live-restore): still refused.
    let e = env
        .driver
        .request_address(request("10.77.0.5"), &me())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already in use"), "{e}");

    // The container dies with the daemon; no Leave, DeleteEndpoint or ReleaseAddress.
    env.dp.delete_endpoint("brld7f55ee7720").await.unwrap();
    // A caller whose identity is unknown never takes anything over.
    assert!(env
        .driver
        .request_address(request("10.77.0.5"), &Caller(None))
        .await
        .is_err());
    // The restarted daemon gets the address back.
    let r = env
        .driver
        .request_address(request("10.77.0.5"), &me())
        .await
        .unwrap();
    assert_eq!(r.address, "10.77.0.5/32");
    let handle = env.holder("10.77.0.5").await.unwrap();
    let report = env
        .driver
        .ipam()
        .address("10.77.0.5".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(report.attributes["dockerd"], me().0.unwrap());
    assert!(handle.starts_with("docker-"));
    // The stale endpoint record went with it.
    assert!(env.endpoint_record(EP1).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_frees_what_dead_daemons_left_but_keeps_reservations() {
    let env = env().await;
    let id = env.pool("10.78.0.0/24", "", json!({})).await;
    let old = Caller(Some(DEAD.into()));
    let ask = |ip: &str, gateway: bool| RequestAddressRequest {
        pool_id: id.clone(),
        address: ip.into(),
        options: gateway.then(|| {
            [(
                "RequestAddressType".to_string(),
                "com.docker.network.gateway".to_string(),
            )]
            .into()
        }),
    };
    // An --aux-address and a --gateway of a network that still exists, a dynamic
    // container address, a pending one, and a live container (--live-restore).
    env.driver
        .request_address(ask("10.78.0.10", false), &old)
        .await
        .unwrap();
    env.driver
        .request_address(ask("10.78.0.254", true), &old)
        .await
        .unwrap();
    env.ok(
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID":NET,"Options":{},"IPv4Data":[{"AddressSpace":"brindle-local","Pool":"10.78.0.0/24",
               "Gateway":"10.78.0.254/24","AuxAddresses":{"router":"10.78.0.10/32"}}]}),
    )
    .await;
    let dynamic = env
        .driver
        .request_address(ask("", false), &old)
        .await
        .unwrap();
    env.driver
        .request_address(ask("10.78.0.20", false), &old)
        .await
        .unwrap();
    env.driver
        .request_address(ask("10.78.0.30", false), &old)
        .await
        .unwrap();
    env.driver
        .create_endpoint(create_request(NET, EP1, "10.78.0.30/32"), &old)
        .await
        .unwrap();
    // One from the current daemon: never touched.
    env.driver
        .request_address(ask("10.78.0.40", false), &me())
        .await
        .unwrap();

    let (addresses, endpoints) = env.driver.sweep_orphans(&me().0.unwrap()).await.unwrap();
    // The dynamic address was only reserved (its CreateEndpoint never came): the
    // reservation goes, with no write; 10.78.0.20 is released.
    assert_eq!((addresses, endpoints), (2, 0));
    let dynamic_ip = dynamic.address.trim_end_matches("/32");
    assert!(env.holder(dynamic_ip).await.is_none());
    env.driver
        .request_address(ask(dynamic_ip, false), &me())
        .await
        .expect("the dead daemon's reservation is gone");
    assert!(env.holder("10.78.0.20").await.is_none());
    for kept in ["10.78.0.10", "10.78.0.254", "10.78.0.30", "10.78.0.40"] {
        assert!(env.holder(kept).await.is_some(), "{kept} must stay");
    }
    assert!(env.endpoint_record(EP1).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_address_is_reused_right_after_its_container_goes() {
    // `docker rm -f c && docker run --ip SAME`: the old veth may still be on its way
    // out in the background when the new endpoint is created.
    let env = env().await;
    let id = env.pool("10.79.0.0/24", "", json!({})).await;
    env.network(NET, "10.79.0.0/24", json!({})).await;
    for (i, ep) in [EP1, EP2, "e3", "e4"].iter().enumerate() {
        env.address(&id, "10.79.0.5").await;
        env.endpoint(NET, ep, "10.79.0.5/32").await;
        env.join(NET, ep, &format!("/var/run/docker/netns/s{i}"))
            .await;
        let ids = json!({"NetworkID":NET,"EndpointID":ep});
        env.ok("/NetworkDriver.Leave", ids.clone()).await;
        env.ok("/NetworkDriver.DeleteEndpoint", ids).await;
        env.ok(
            "/IpamDriver.ReleaseAddress",
            json!({"PoolID":id,"Address":"10.79.0.5"}),
        )
        .await;
    }
    settle(&env.dp).await;
    assert!(env.dp.endpoints().is_empty());
    assert!(env.dp.host_routes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_pool_goes_with_the_last_network_using_it() {
    let env = env().await;
    let wide = env.pool("10.80.0.0/16", "", json!({})).await;
    env.network("wide", "10.80.0.0/16", json!({})).await;
    let narrow = env.pool("10.80.1.0/24", "", json!({})).await;
    assert_eq!(narrow, "brindle:docker-10.80.0.0-16:10.80.1.0/24");
    env.network("narrow", "10.80.1.0/24", json!({})).await;
    let exists = || async {
        env.driver
            .ipam()
            .list_pools()
            .await
            .unwrap()
            .iter()
            .any(|p| p.name == "docker-10.80.0.0-16")
    };
    // docker network rm: ReleasePool, then DeleteNetwork.
    for (id, net) in [(&wide, "wide"), (&narrow, "narrow")] {
        assert!(exists().await, "still used before removing {net}");
        env.ok("/IpamDriver.ReleasePool", json!({"PoolID":id}))
            .await;
        env.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID":net}))
            .await;
    }
    assert!(!exists().await, "removed with the last network");
}

/// `docker network create` as one node's dockerd drives it, calling the driver directly:
/// `RequestPool`, then `CreateNetwork` with the subnet Docker was given.
async fn create_network_on(
    driver: &Driver<LocalBackend>,
    net: &str,
    subnet: &str,
    range: &str,
    ipam_opts: &[(&str, &str)],
    generic: Value,
) -> Result<String, super::DockerError> {
    let pool = driver
        .request_pool(RequestPoolRequest {
            address_space: "brindle-local".into(),
            pool: subnet.into(),
            sub_pool: range.into(),
            options: Some(
                ipam_opts
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            v6: false,
        })
        .await?;
    let options =
        json!({"com.docker.network.enable_ipv6":false,"com.docker.network.generic":generic});
    driver
        .create_network(CreateNetworkRequest {
            network_id: net.into(),
            options: options.as_object().cloned(),
            ipv4_data: Some(vec![IpamData {
                address_space: "brindle-local".into(),
                pool: pool.pool,
                gateway: Some("169.254.1.1/32".into()),
                aux_addresses: None,
            }]),
            ipv6_data: None,
        })
        .await?;
    Ok(pool.pool_id)
}

/// A container on `net`: an address from `pool_id`, then `CreateEndpoint`; returns the
/// stored endpoint record.
async fn endpoint_on(
    driver: &Driver<LocalBackend>,
    net: &str,
    ep: &str,
    pool_id: &str,
) -> DockerEndpoint {
    let address = driver
        .request_address(
            RequestAddressRequest {
                pool_id: pool_id.into(),
                address: String::new(),
                options: None,
            },
            &me(),
        )
        .await
        .unwrap()
        .address;
    driver
        .create_endpoint(create_request(net, ep, address), &me())
        .await
        .unwrap();
    let key = driver.keys().endpoint(driver.node(), ep);
    records::get(driver.store(), key).await.unwrap().unwrap()
}

async fn network_record(env: &Env, id: &str) -> Option<NetworkRecord> {
    records::get(&env.store, env.driver.keys().docker_network(id))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_from_is_stored_and_copied_to_every_endpoint() {
    let env = env().await;
    let id = env.pool("10.81.0.0/24", "", json!({})).await;
    env.network(
        NET,
        "10.81.0.0/24",
        json!({"brindle.allow-from":"192.0.2.0/24, 198.51.100.7/32"}),
    )
    .await;
    let allowed: Vec<ipnetwork::Ipv4Network> = vec![
        "192.0.2.0/24".parse().unwrap(),
        "198.51.100.7/32".parse().unwrap(),
    ];
    let net = network_record(&env, NET).await.unwrap();
    assert_eq!(net.allow_from, allowed);
    assert_eq!(
        net.segment.as_deref(),
        Some("docker:brindle:docker-10.81.0.0-24:10.81.0.0/24")
    );
    for (ep, ip) in [(EP1, "10.81.0.5"), (EP2, "10.81.0.6")] {
        env.address(&id, ip).await;
        env.endpoint(NET, ep, &format!("{ip}/32")).await;
        let rec = env.endpoint_record(ep).await.unwrap();
        assert_eq!(rec.base.allow_from, allowed);
        assert_eq!(rec.base.segment, net.segment);
        assert_eq!(Some(rec.base.segment()), net.segment);
    }
    // A network without the option restricts nothing; its endpoints say so.
    env.network("open", "10.81.0.0/24", json!({})).await;
    env.address(&id, "10.81.0.7").await;
    env.endpoint("open", "ep3", "10.81.0.7/32").await;
    assert!(env
        .endpoint_record("ep3")
        .await
        .unwrap()
        .base
        .allow_from
        .is_empty());
    // Records written before these fields existed still decode.
    let old = json!({"id":"old","node":NODE,"subnets":[{"subnet":"10.81.0.0/24"}]});
    let old: NetworkRecord = serde_json::from_value(old).unwrap();
    assert!(old.allow_from.is_empty() && old.segment.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_option_values_are_refused_and_nothing_is_persisted() {
    let env = env().await;
    env.add_pool("office", "10.82.0.0/24", 26).await;
    for (generic, needle) in [
        (
            json!({"brindle.allow-from":"192.0.2.0/24,192.0.2.1/24"}),
            "invalid -o brindle.allow-from entry \"192.0.2.1/24\": host bits are set; the network is 192.0.2.0/24; expected IPv4 CIDRs such as 192.0.2.0/24, separated by commas",
        ),
        (
            json!({"brindle.allow-from":"office-lan"}),
            "invalid -o brindle.allow-from entry \"office-lan\": expected an IPv4 CIDR such as 10.65.0.0/16; expected IPv4 CIDRs",
        ),
        (
            json!({"brindle.nat-outgoing":"maybe"}),
            "invalid -o brindle.nat-outgoing=maybe: expected true or false",
        ),
        (
            // Valid on its own, but the network's pool is shared and differs.
            json!({"brindle.nat-outgoing":"true"}),
            "-o brindle.nat-outgoing=true: the network uses the existing pool office (10.82.0.0/24), whose nat-outgoing is false; change it for every network of that pool with `brindle pool set office --nat-outgoing=true`, or leave the option out",
        ),
    ] {
        let e = env
            .err(
                "/NetworkDriver.CreateNetwork",
                json!({"NetworkID":"n2","Options":{"com.docker.network.generic":generic},
                       "IPv4Data":[{"AddressSpace":"brindle-local","Gateway":"169.254.1.1/32","Pool":"10.82.0.0/24"}],"IPv6Data":[]}),
            )
            .await;
        assert!(e.starts_with(needle), "{generic}: {e}");
        assert!(network_record(&env, "n2").await.is_none(), "{generic}");
        let pools = env.driver.ipam().list_pools().await.unwrap();
        assert!(pools.iter().all(|p| !p.nat_outgoing), "{generic}");
    }
    // The same value as the pool's is fine.
    env.network(
        "n3",
        "10.82.0.0/24",
        json!({"brindle.nat-outgoing":"false"}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_outgoing_goes_to_the_pool_created_for_the_subnet() {
    let store = MemoryStore::new();
    let (dp1, dp2) = (
        Arc::new(FakeDataplane::new()),
        Arc::new(FakeDataplane::new()),
    );
    let n1 = driver_on("n1", &store, &dp1, None);
    let n2 = driver_on("n2", &store, &dp2, None);
    let on = json!({"brindle.nat-outgoing":"true"});
    create_network_on(&n1, "a1", "10.83.0.0/24", "", &[], on.clone())
        .await
        .unwrap();
    let nat = |name: &'static str| {
        let ipam = n1.ipam();
        async move {
            ipam.list_pools()
                .await
                .unwrap()
                .into_iter()
                .find(|p| p.name == name)
                .unwrap()
                .nat_outgoing
        }
    };
    assert!(nat("docker-10.83.0.0-24").await);
    // The same network on another node agrees with the pool: fine, with or without it.
    create_network_on(&n2, "a2", "10.83.0.0/24", "", &[], on.clone())
        .await
        .unwrap();
    create_network_on(&n2, "a3", "10.83.0.0/24", "", &[], json!({}))
        .await
        .unwrap();
    // Contradicting it would change the other networks of the pool: refused.
    let e = create_network_on(
        &n2,
        "a4",
        "10.83.0.0/24",
        "",
        &[],
        json!({"brindle.nat-outgoing":"false"}),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("brindle pool set docker-10.83.0.0-24 --nat-outgoing=false"),
        "{e}"
    );
    assert!(nat("docker-10.83.0.0-24").await);
    // Without the option a created pool is routed only.
    create_network_on(&n1, "b1", "10.84.0.0/24", "", &[], json!({}))
        .await
        .unwrap();
    assert!(!nat("docker-10.84.0.0-24").await);
}

/// `--subnet`, `--ip-range`, `--ipam-opt`s.
type NetworkArgs = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_is_equal_for_networks_created_alike_on_two_nodes() {
    let store = MemoryStore::new();
    let (dp1, dp2) = (
        Arc::new(FakeDataplane::new()),
        Arc::new(FakeDataplane::new()),
    );
    let n1 = driver_on("n1", &store, &dp1, None);
    let n2 = driver_on("n2", &store, &dp2, None);
    n1.ipam()
        .add_pool(NewPool::new("default", "10.85.0.0/16".parse().unwrap()))
        .await
        .unwrap();
    n1.ipam()
        .add_pool(NewPool::new("big", "10.86.0.0/16".parse().unwrap()))
        .await
        .unwrap();
    // (subnet, ip-range, ipam-opts) of distinct networks; each created on both nodes
    // under Docker's per-node random ids.
    let variants: [NetworkArgs; 5] = [
        ("10.85.1.0/24", "", &[]),
        ("10.85.1.0/24", "10.85.1.128/25", &[]),
        ("10.87.0.0/24", "", &[]),
        ("", "", &[]),
        ("", "", &[("pool", "big")]),
    ];
    let mut segments = Vec::new();
    for (i, (subnet, range, opts)) in variants.iter().enumerate() {
        let mut seen = Vec::new();
        for (node, driver) in [("n1", &n1), ("n2", &n2)] {
            let net = format!("{node}-net{i}");
            let pool_id = create_network_on(driver, &net, subnet, range, opts, json!({}))
                .await
                .unwrap();
            let ep = endpoint_on(driver, &net, &format!("{node}-ep{i}"), &pool_id).await;
            let segment = ep
                .base
                .segment
                .clone()
                .expect("docker endpoints carry a segment");
            assert_eq!(segment, format!("docker:{pool_id}"));
            seen.push(segment);
        }
        assert_eq!(seen[0], seen[1], "{subnet} {range} {opts:?}");
        segments.push(seen[0].clone());
    }
    let mut distinct = segments.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), segments.len(), "{segments:?}");
    // A restarted brindled serves a further endpoint of an existing network with the
    // segment the network was created with.
    let fresh = driver_on("n1", &store, &dp1, None);
    let ep = endpoint_on(
        &fresh,
        "n1-net1",
        "n1-late",
        "brindle:default:10.85.1.0/24:10.85.1.128/25",
    )
    .await;
    assert_eq!(ep.base.segment.as_deref(), Some(segments[1].as_str()));
}

/// A `--ip` taken over from a dead dockerd (`reclaim.rs`) belongs to the new
/// container: Docker's late requests for the old endpoint — the new daemon cleaning up
/// its predecessor's endpoint (with `--live-restore` it even adopts the old containers),
/// or a retried `DeleteEndpoint` + `ReleaseAddress` — must not free it, or the next
/// container gets the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclaimed_address_survives_late_releases_of_its_previous_owner() {
    let env = env().await;
    let id = env.pool("10.91.0.0/24", "", json!({})).await;
    env.network(NET, "10.91.0.0/24", json!({})).await;
    let old = Caller(Some(DEAD.into()));
    let ask = RequestAddressRequest {
        pool_id: id.clone(),
        address: "10.91.0.5".into(),
        options: None,
    };
    env.driver.request_address(ask, &old).await.unwrap();
    env.driver
        .create_endpoint(create_request(NET, EP1, "10.91.0.5/32"), &old)
        .await
        .unwrap();
    // The old container died with its daemon; the new daemon (this process, on the
    // socket) starts a container with the same --ip: taken over.
    let old_host = brindle_dataplane::host_ifname_for(EP1);
    env.dp.delete_endpoint(&old_host).await.unwrap();
    env.address(&id, "10.91.0.5").await;
    let new = env.holder("10.91.0.5").await.expect("reclaimed");
    let old_ep = json!({"NetworkID":NET,"EndpointID":EP1});
    let release = json!({"PoolID":id,"Address":"10.91.0.5"});

    // A release the old daemon sent before it died, handled only now.
    env.driver
        .release_address(
            ReleaseAddressRequest {
                pool_id: id.clone(),
                address: "10.91.0.5".into(),
            },
            &old,
        )
        .await
        .unwrap();
    env.settled().await;
    assert_eq!(env.holder("10.91.0.5").await.as_deref(), Some(new.as_str()));

    // Before the new endpoint exists, the new daemon cleans up the old one.
    env.ok("/NetworkDriver.DeleteEndpoint", old_ep.clone())
        .await;
    env.ok("/IpamDriver.ReleaseAddress", release.clone()).await;
    assert_eq!(env.holder("10.91.0.5").await.as_deref(), Some(new.as_str()));

    env.endpoint(NET, EP2, "10.91.0.5/32").await;
    env.join(NET, EP2, SANDBOX).await;
    // Docker retries the old endpoint's deletion once more.
    env.ok("/NetworkDriver.DeleteEndpoint", old_ep).await;
    env.ok("/IpamDriver.ReleaseAddress", release.clone()).await;
    assert_eq!(env.holder("10.91.0.5").await.as_deref(), Some(new.as_str()));
    let new_host = brindle_dataplane::host_ifname_for(EP2);
    assert!(env.dp.has_endpoint(&new_host));
    assert!(env
        .dp
        .host_routes()
        .contains(&("10.91.0.5".parse().unwrap(), new_host)));
    assert!(env.endpoint_record(EP2).await.is_some());

    // The new container's own removal frees it.
    let ids = json!({"NetworkID":NET,"EndpointID":EP2});
    env.ok("/NetworkDriver.Leave", ids.clone()).await;
    env.ok("/NetworkDriver.DeleteEndpoint", ids).await;
    env.ok("/IpamDriver.ReleaseAddress", release).await;
    assert_eq!(env.holder("10.91.0.5").await, None);
}

/// `--live-restore`: a container started under a daemon that has since restarted is
/// stopped by the new daemon, which releases an address it never requested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_daemon_releases_what_an_adopted_container_held() {
    let env = env().await;
    let id = env.pool("10.92.0.0/24", "", json!({})).await;
    env.network(NET, "10.92.0.0/24", json!({})).await;
    let old = Caller(Some(DEAD.into()));
    let r = env
        .driver
        .request_address(
            RequestAddressRequest {
                pool_id: id.clone(),
                address: String::new(),
                options: None,
            },
            &old,
        )
        .await
        .unwrap();
    let ip = r.address.trim_end_matches("/32").to_string();
    env.driver
        .create_endpoint(create_request(NET, EP1, r.address.clone()), &old)
        .await
        .unwrap();
    let ids = json!({"NetworkID":NET,"EndpointID":EP1});
    env.ok("/NetworkDriver.Leave", ids.clone()).await;
    env.ok("/NetworkDriver.DeleteEndpoint", ids).await;
    env.ok(
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID":id,"Address":ip}),
    )
    .await;
    assert_eq!(env.holder(&ip).await, None);
}

/// Issue 12: a dynamic address is only reserved by `RequestAddress` (no write) and
/// allocated by `CreateEndpoint` in the transaction of the endpoint's record, with the
/// veth built meanwhile and routed after; with the release, a dynamic container costs
/// two writes. A reserved address is not handed out twice, and one never used is
/// released without a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamic_container_costs_two_writes_and_is_routed_after_its_allocation() {
    let env = env().await;
    let id = env.pool("10.74.0.0/24", "", json!({})).await;
    env.network(NET, "10.74.0.0/24", json!({})).await;
    // The node's block claimed already, as on a node running containers.
    env.address(&id, "10.74.0.2").await;
    let writes = |before: i64| env.store.revision() - before;

    let before = env.store.revision();
    let cidr = env.address(&id, "").await;
    let ip = cidr.trim_end_matches("/32").to_string();
    assert_eq!(writes(before), 0, "RequestAddress of a dynamic address");
    assert!(env.holder(&ip).await.is_none(), "reserved, not allocated");
    let unused = env.address(&id, "").await;
    assert_ne!(unused, cidr, "a reserved address is not handed out twice");
    let e = env
        .err(
            "/IpamDriver.RequestAddress",
            json!({"PoolID":id,"Address":ip,"Options":null}),
        )
        .await;
    assert!(
        e.contains(&format!("address {ip} is already in use")),
        "{e}"
    );

    let open = env.dp.hold_next(FakeOp::RouteEndpoint);
    let before = env.store.revision();
    let create = tokio::spawn({
        let driver = env.driver.clone();
        let cidr = cidr.clone();
        async move {
            driver
                .create_endpoint(create_request(NET, EP1, cidr), &me())
                .await
        }
    });
    while env.dp.calls_of(FakeOp::RouteEndpoint).is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        writes(before),
        1,
        "the allocation and the record, one write"
    );
    assert!(env.holder(&ip).await.is_some());
    assert_eq!(
        env.endpoint_record(EP1)
            .await
            .map(|r| r.base.ip.to_string()),
        Some(ip.clone())
    );
    let routed = |ip: &str| {
        env.dp
            .host_routes()
            .iter()
            .any(|(r, _)| r.to_string() == ip)
    };
    assert!(!routed(&ip), "no route before the allocation is stored");
    open.send(()).unwrap();
    create.await.unwrap().unwrap();
    assert!(routed(&ip));
    assert_eq!(writes(before), 1, "CreateEndpoint");

    let ids = json!({"NetworkID":NET,"EndpointID":EP1});
    let before = env.store.revision();
    env.join(NET, EP1, SANDBOX).await;
    env.ok("/NetworkDriver.Leave", ids.clone()).await;
    env.ok("/NetworkDriver.DeleteEndpoint", ids).await;
    env.ok(
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID":id,"Address":ip}),
    )
    .await;
    assert_eq!(writes(before), 1, "ReleaseAddress only");
    assert!(env.endpoint_record(EP1).await.is_none());
    assert!(env.holder(&ip).await.is_none());

    // The reservation never used: released without a write, and free again.
    let unused = unused.trim_end_matches("/32");
    let before = env.store.revision();
    env.ok(
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID":id,"Address":unused}),
    )
    .await;
    assert_eq!(writes(before), 0);
    env.address(&id, unused).await;
    assert!(env.holder(unused).await.is_some());
}

/// A node's first container (no block of the pool yet) is no different: its
/// `RequestAddress` reserves an address of the block the node would claim, without a
/// write, and its `CreateEndpoint` claims that block with the allocation and the
/// record, in one write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_nodes_first_container_claims_its_block_with_its_endpoint() {
    let env = env().await;
    let id = env.pool("10.69.0.0/24", "", json!({})).await;
    env.network(NET, "10.69.0.0/24", json!({})).await;
    let writes = |before: i64| env.store.revision() - before;
    let blocks = || async { env.driver.ipam().all_blocks().await.unwrap() };
    assert!(blocks().await.is_empty());

    let before = env.store.revision();
    let cidr = env.address(&id, "").await;
    let ip = cidr.trim_end_matches("/32").to_string();
    assert_eq!(writes(before), 0, "RequestAddress on an idle node");
    assert!(blocks().await.is_empty(), "no block claimed yet");
    let other = env.address(&id, "").await;
    assert_ne!(other, cidr, "a reserved address is not handed out twice");

    let before = env.store.revision();
    env.endpoint(NET, EP1, &cidr).await;
    assert_eq!(
        writes(before),
        1,
        "the block, the allocation and the record"
    );
    let claimed = blocks().await;
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert!(claimed[0].cidr.contains(ip.parse().unwrap()));
    assert_eq!(claimed[0].affinity.as_deref(), Some(NODE));
    assert!(env.holder(&ip).await.is_some());
    assert!(env.endpoint_record(EP1).await.is_some());
    let report = env.driver.ipam().check(false).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    // The second reservation lies in the block now claimed: its endpoint just allocates.
    let before = env.store.revision();
    env.endpoint(NET, EP2, &other).await;
    assert_eq!(writes(before), 1);
    assert_eq!(blocks().await.len(), 1);
}

/// `ReleaseAddress` answers before its write commits: Docker waits for one durable
/// write per container, not two. Until the commit the address stays allocated with its
/// record, a dynamic request passes it by, and a fixed request for it (`docker run
/// --ip` of the next container) waits for the commit instead of failing "in use".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_answers_before_its_write_and_holds_the_address_until_it_commits() {
    let env = env().await;
    let id = env.pool("10.72.0.0/24", "", json!({})).await;
    env.network(NET, "10.72.0.0/24", json!({})).await;
    env.address(&id, "10.72.0.2").await;
    let ip = env
        .address(&id, "")
        .await
        .trim_end_matches("/32")
        .to_string();
    env.endpoint(NET, EP1, &format!("{ip}/32")).await;
    let ids = json!({"NetworkID":NET,"EndpointID":EP1});
    env.ok("/NetworkDriver.DeleteEndpoint", ids).await;
    let holder = env.holder(&ip).await.expect("allocated");

    let etcd_slow = env.store.hold_writes().expect("writes not held yet");
    let before = env.store.revision();
    let release = json!({"PoolID":id,"Address":ip}).to_string();
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        post(&env.sock, "/IpamDriver.ReleaseAddress", &release),
    )
    .await
    .expect("ReleaseAddress answers while its write is held back");
    assert_eq!(answer.0, 200, "{answer:?}");
    assert_eq!(env.driver.backend.write_behind.pending(), 1);
    assert_eq!(env.store.revision(), before, "nothing committed yet");
    assert_eq!(env.holder(&ip).await.as_deref(), Some(holder.as_str()));
    assert!(env.endpoint_record(EP1).await.is_some());
    let other = post(
        &env.sock,
        "/IpamDriver.RequestAddress",
        &json!({"PoolID":id,"Address":"","Options":null}).to_string(),
    )
    .await;
    assert_eq!(other.0, 200, "{other:?}");
    assert_ne!(
        other.1["Address"],
        format!("{ip}/32"),
        "handed out before its release committed"
    );

    let fixed = tokio::spawn({
        let sock = env.sock.clone();
        let body = json!({"PoolID":id,"Address":ip,"Options":null}).to_string();
        async move { post(&sock, "/IpamDriver.RequestAddress", &body).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !fixed.is_finished(),
        "the fixed request waits for the release"
    );
    drop(etcd_slow);
    let (status, reply) = fixed.await.unwrap();
    assert_eq!(
        (status, reply["Address"].clone()),
        (200, json!(format!("{ip}/32"))),
        "{reply}"
    );
    assert_eq!(env.driver.backend.write_behind.pending(), 0);
    assert!(
        env.endpoint_record(EP1).await.is_none(),
        "the record went with the release"
    );
    let now = env
        .holder(&ip)
        .await
        .expect("the fixed request's allocation");
    assert_ne!(now, holder);
}

/// The CNI API on the in-process backend: for tests of requests from both runtimes to
/// one brindled, and for the API's own tests (`api/attachments.rs`).
impl crate::api::Backend for LocalBackend {
    type Store = MemoryStore;
    fn node(&self) -> &str {
        &self.node
    }
    fn prefix(&self) -> &str {
        "/brindle"
    }
    fn ipam(&self) -> &Ipam<MemoryStore> {
        &self.ipam
    }
    fn dataplane(&self) -> Arc<dyn Dataplane> {
        self.dataplane.clone()
    }
    fn reaper(&self) -> &brindle_dataplane::Reaper {
        &self.reaper
    }
    fn write_behind(&self) -> &crate::write_behind::WriteBehind {
        &self.write_behind
    }
    fn address_locks(&self) -> &brindle_ipam::locks::KeyedLocks<Ipv4Addr> {
        &self.address_locks
    }
}

/// Docker and CNI on one node share the per-address locks: a CNI ADD of an address
/// whose Docker `ReleaseAddress` has answered but not committed waits for the commit
/// and gets the address, instead of failing "in use".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cni_add_of_an_address_docker_is_releasing_waits_for_the_commit() {
    let env = env().await;
    let id = env.pool("10.71.0.0/24", "", json!({})).await;
    env.network(NET, "10.71.0.0/24", json!({})).await;
    env.address(&id, "10.71.0.2").await;
    env.address(&id, "10.71.0.5").await;
    env.endpoint(NET, EP1, "10.71.0.5/32").await;
    let ids = json!({"NetworkID":NET,"EndpointID":EP1});
    env.ok("/NetworkDriver.DeleteEndpoint", ids).await;
    let api_sock = env._dir.path().join("api.sock");
    let api = crate::api::router(
        env.driver.backend.clone(),
        crate::api::netns_path::NetnsDirs::new(&[]),
    );
    let server = tokio::spawn(serve_unix(api_sock.clone(), api));
    wait_for(&api_sock).await;

    let etcd_slow = env.store.hold_writes().expect("writes not held yet");
    let release = json!({"PoolID":id,"Address":"10.71.0.5"}).to_string();
    let (status, _) = post(&env.sock, "/IpamDriver.ReleaseAddress", &release).await;
    assert_eq!(status, 200);
    let add = tokio::spawn(async move {
        let body = json!({
            "target": {"node": NODE, "prefix": "/brindle"},
            "mode": "ipam",
            "network": "cni-net",
            "attachment": {"container_id": "cni1", "ifname": "eth0"},
            "netns": null,
            "ip": "10.71.0.5",
            "pool": null,
            "mtu": null,
        });
        post(&api_sock, "/v1/cni/add", &body.to_string()).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!add.is_finished(), "the CNI ADD waits for Docker's release");
    drop(etcd_slow);
    let (status, reply) = add.await.unwrap();
    assert_eq!(
        (status, reply["ip"].clone()),
        (200, json!("10.71.0.5")),
        "{reply}"
    );
    assert_eq!(env.holder("10.71.0.5").await.as_deref(), Some("cni1+eth0"));
    assert!(env.endpoint_record(EP1).await.is_none());
    server.abort();
}

/// Another host may take a reserved address as its fixed one (it is free in etcd):
/// then the `CreateEndpoint` fails naming it and leaves nothing, and Docker's
/// `ReleaseAddress` that follows leaves the other host's allocation alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserved_address_another_host_took_fails_its_endpoint_cleanly() {
    let env = env().await;
    let id = env.pool("10.73.0.0/24", "", json!({})).await;
    env.network(NET, "10.73.0.0/24", json!({})).await;
    env.address(&id, "10.73.0.2").await;
    let cidr = env.address(&id, "").await;
    let ip = cidr.trim_end_matches("/32").to_string();
    let other_host = driver_on("n2", &env.store, &Arc::new(FakeDataplane::new()), None);
    other_host
        .request_address(
            RequestAddressRequest {
                pool_id: id.clone(),
                address: ip.clone(),
                options: None,
            },
            &me(),
        )
        .await
        .unwrap();
    let theirs = env.holder(&ip).await.expect("allocated by the other host");

    let e = env
        .err(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID":NET,"EndpointID":EP1,"Interface":{"Address":cidr}}),
        )
        .await;
    assert!(e.contains(&ip), "{e}");
    assert!(env.dp.endpoints().is_empty(), "veth removed");
    assert!(env.endpoint_record(EP1).await.is_none());
    let before = env.store.revision();
    env.ok(
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID":id,"Address":ip}),
    )
    .await;
    assert_eq!(env.store.revision(), before, "nothing to release");
    assert_eq!(env.holder(&ip).await, Some(theirs));
}

/// A restart of brindled between `RequestAddress` and `CreateEndpoint` forgets the
/// reservation: the address, free in this node's block, is allocated then. An
/// address outside this node's blocks that brindle never handed out stays refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_a_restart_forgot_is_allocated_by_its_endpoint() {
    let env = env().await;
    let id = env.pool("10.72.0.0/24", "", json!({})).await;
    env.network(NET, "10.72.0.0/24", json!({})).await;
    env.address(&id, "10.72.0.2").await;
    let cidr = env.address(&id, "").await;
    let ip = cidr.trim_end_matches("/32");
    let restarted = driver(&env.store, &env.dp, None);
    restarted
        .create_endpoint(create_request(NET, EP1, cidr.clone()), &me())
        .await
        .unwrap();
    assert!(env.holder(ip).await.is_some());
    assert!(env.endpoint_record(EP1).await.is_some());
    assert!(env
        .dp
        .host_routes()
        .iter()
        .any(|(r, _)| r.to_string() == ip));
    let e = restarted
        .create_endpoint(create_request(NET, EP2, "10.72.0.200/32"), &me())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("address 10.72.0.200 is not allocated"),
        "{e}"
    );
}

/// A reserved address whose route cannot be made: the allocation and the record
/// written with it are released again and the veth is gone; the address is reserved
/// again, and Docker's `ReleaseAddress` frees it without a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserved_endpoint_that_cannot_be_routed_leaves_nothing() {
    let env = env().await;
    let id = env.pool("10.71.0.0/24", "", json!({})).await;
    env.network(NET, "10.71.0.0/24", json!({})).await;
    env.address(&id, "10.71.0.2").await;
    let cidr = env.address(&id, "").await;
    let ip = cidr.trim_end_matches("/32").to_string();
    env.dp.fail_once(FakeOp::RouteEndpoint, libc::EEXIST);
    env.err(
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID":NET,"EndpointID":EP1,"Interface":{"Address":cidr}}),
    )
    .await;
    assert!(env.holder(&ip).await.is_none(), "allocation released");
    assert!(env.endpoint_record(EP1).await.is_none(), "record deleted");
    assert!(env.dp.endpoints().is_empty(), "veth removed");
    let again = env.address(&id, "").await;
    assert_ne!(again, cidr, "still reserved until Docker releases it");
    let before = env.store.revision();
    env.ok(
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID":id,"Address":ip}),
    )
    .await;
    assert_eq!(env.store.revision(), before);
    env.address(&id, &ip).await;
    assert!(
        env.holder(&ip).await.is_some(),
        "free again, taken as a fixed one"
    );
}
