use super::*;
use std::sync::Mutex;

use brindle_dataplane::{EndpointSpec, FakeDataplane};
use brindle_ipam::pools::NewPool;
use brindle_ipam::{AllocRequest, MemoryStore};

use crate::agent::snapshot::compact_block;
use crate::cni::ops::{self, AddRequest, Attachment, Ctx, Mode, Target};
use crate::endpoints::{get_endpoint, EndpointRecord};

const NODE: &str = "n1";
const GRACE: Duration = Duration::from_secs(60);
const NET: &str = "net1";

/// What the fake dockerd answers; `None`: it does not answer.
#[derive(Default)]
struct FakeDockerd(Mutex<Option<HashMap<String, NetworkView>>>);

impl FakeDockerd {
    fn answering() -> Self {
        Self(Mutex::new(Some(HashMap::new())))
    }
    fn set(&self, net: &str, endpoints: &[&str], addresses: &[Ipv4Addr]) {
        self.0.lock().unwrap().as_mut().unwrap().insert(
            net.to_string(),
            NetworkView {
                endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
                addresses: addresses.iter().copied().collect(),
            },
        );
    }
    fn silent(&self) {
        *self.0.lock().unwrap() = None;
    }
}

impl Dockerd for FakeDockerd {
    fn network<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<NetworkView>, String>> {
        let answer = match &*self.0.lock().unwrap() {
            Some(nets) => Ok(nets.get(id).cloned()),
            None => Err("connect: no such file".to_string()),
        };
        Box::pin(async move { answer })
    }
}

struct World {
    ipam: Ipam<MemoryStore>,
    dp: Arc<FakeDataplane>,
    docker: FakeDockerd,
    r: Reconciler,
    t0: Instant,
}

impl World {
    async fn new() -> Self {
        let ipam = Ipam::new(MemoryStore::new(), "/brindle");
        ipam.add_pool(NewPool::new("p", "10.7.0.0/24".parse().unwrap()))
            .await
            .unwrap();
        Self {
            ipam,
            dp: Arc::new(FakeDataplane::new()),
            docker: FakeDockerd::answering(),
            r: Reconciler::new(NODE, GRACE),
            t0: Instant::now(),
        }
    }

    /// The agent's view: pools and blocks as stored now, compacted as the agent's.
    async fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot {
            revision: 1,
            ..Default::default()
        };
        for p in self.ipam.list_pools().await.unwrap() {
            snap.pools.insert(p.name.clone(), p);
        }
        for b in self.ipam.all_blocks().await.unwrap() {
            let b = compact_block(b, Some(NODE));
            snap.blocks.insert(b.cidr.to_string(), Arc::new(b));
        }
        snap
    }

    /// A pass `secs` seconds after the start.
    async fn pass_at(&mut self, secs: u64) -> Report {
        let snap = self.snapshot().await;
        let now = self.t0 + Duration::from_secs(secs);
        self.r
            .pass(&self.ipam, self.dp.as_ref(), Some(&self.docker), &snap, now)
            .await
            .unwrap()
    }

    /// `RequestAddress` + `CreateEndpoint` as the driver does them (dockerd then
    /// lists the endpoint unless the test says otherwise).
    async fn docker_endpoint(&self, eid: &str, record: bool) -> (Ipv4Addr, String) {
        let handle = format!("docker-{eid}");
        let ip = self.docker_address(&handle).await;
        let spec = EndpointSpec::for_docker(eid, ip, None);
        self.dp.create_veth_on_host(&spec).await.unwrap();
        if record {
            self.put_docker_record(eid, ip, &handle).await;
        }
        (ip, handle)
    }

    async fn docker_address(&self, handle: &str) -> Ipv4Addr {
        self.ipam
            .allocate(&AllocRequest {
                handle: handle.into(),
                node: NODE.into(),
                pool: Some("p".into()),
                attrs: BTreeMap::from([(ATTR_ORCHESTRATOR.into(), ORCHESTRATOR.into())]),
                ..Default::default()
            })
            .await
            .unwrap()
            .ip
    }

    async fn put_docker_record(&self, eid: &str, ip: Ipv4Addr, handle: &str) {
        let ep = DockerEndpoint {
            base: EndpointRecord {
                id: eid.into(),
                node: NODE.into(),
                orchestrator: ORCHESTRATOR.into(),
                container_id: None,
                network: NET.into(),
                ip,
                mac: None,
                host_ifname: brindle_dataplane::host_ifname_for(eid),
                handle: handle.into(),
                segment: None,
                allow_from: Vec::new(),
            },
            sandbox: None,
            gateway: None,
            dockerd: None,
        };
        let key = self.ipam.keys().endpoint(NODE, eid);
        state::put(self.ipam.store(), &key, &ep).await.unwrap();
    }

    async fn record_exists(&self, id: &str) -> bool {
        get_endpoint(self.ipam.store(), self.ipam.keys(), NODE, id)
            .await
            .unwrap()
            .is_some()
    }

    async fn held(&self, handle: &str) -> Vec<Ipv4Addr> {
        self.ipam.addresses_of(handle).await.unwrap()
    }

    /// A CNI ADD (main mode) of container `cid`.
    async fn cni_add(&self, cid: &str) -> Ipv4Addr {
        let ctx = Ctx {
            ipam: &self.ipam,
            dataplane: Some(self.dp.as_ref()),
            node: NODE,
            reaper: None,
        };
        ops::add(&ctx, &cni_req(cid, Mode::Main)).await.unwrap().ip
    }
}

impl World {
    /// A CNI allocation alone, as the first step of an ADD makes it (`main`: of
    /// brindle's own plugin; else of `brindle-ipam` under another plugin).
    async fn cni_allocation(&self, cid: &str, main: bool) {
        let ctx = Ctx {
            ipam: &self.ipam,
            dataplane: Some(self.dp.as_ref()),
            node: NODE,
            reaper: None,
        };
        ops::add(&ctx, &cni_req(cid, Mode::Ipam)).await.unwrap();
        if main {
            let handle = format!("{cid}+eth0");
            let attrs = BTreeMap::from([(ATTR_CNI_MODE.to_string(), "main".to_string())]);
            self.ipam.set_attributes(&handle, &attrs).await.unwrap();
        }
    }
}

fn cni_req(cid: &str, mode: Mode) -> AddRequest {
    AddRequest {
        target: Target {
            node: NODE.into(),
            prefix: "/brindle".into(),
        },
        mode,
        network: "cninet".into(),
        attachment: Attachment {
            container_id: cid.into(),
            ifname: "eth0".into(),
        },
        netns: Some("/run/netns/fake".into()),
        ip: None,
        pool: None,
        mtu: None,
        allow_from: Vec::new(),
    }
}

#[test]
fn durations_parse_as_flags_give_them() {
    assert_eq!(parse_duration("60").unwrap(), Duration::from_secs(60));
    assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert!(parse_duration("soon").is_err());
    assert!(parse_duration("-1").is_err());
}

#[tokio::test]
async fn a_veth_without_a_record_goes_after_the_grace_period_and_one_with_a_record_stays() {
    let mut w = World::new().await;
    w.docker.set(NET, &["kept"], &[]);
    let (kept_ip, _) = w.docker_endpoint("kept", true).await;
    // CreateEndpoint killed between the veth and the record.
    let (_, orphan_handle) = w.docker_endpoint("orphan", false).await;
    let orphan = brindle_dataplane::host_ifname_for("orphan");
    let first = w.pass_at(0).await;
    assert_eq!(
        first.veths_deleted, 0,
        "a create makes the veth before the record"
    );
    assert!(first.waiting >= 1);
    assert!(w.dp.has_endpoint(&orphan));
    let later = w.pass_at(30).await;
    assert_eq!(later.veths_deleted, 0);
    let after = w.pass_at(60).await;
    assert_eq!(after.veths_deleted, 1, "{after:?}");
    assert!(!w.dp.has_endpoint(&orphan));
    assert!(w
        .dp
        .has_endpoint(&brindle_dataplane::host_ifname_for("kept")));
    assert!(w.dp.host_routes().iter().any(|(ip, _)| *ip == kept_ip));
    // Its address is now unrouted and nobody's: released after its own grace.
    assert_eq!(w.held(&orphan_handle).await.len(), 1);
    w.pass_at(61).await;
    let done = w.pass_at(121).await;
    assert_eq!(done.addresses_released, 1, "{done:?}");
    assert!(w.held(&orphan_handle).await.is_empty());
    assert_eq!(w.held("docker-kept").await, vec![kept_ip]);
}

#[tokio::test]
async fn a_veth_being_created_right_now_is_kept_once_its_record_arrives() {
    let mut w = World::new().await;
    w.docker.set(NET, &["slow"], &[]);
    let (ip, handle) = w.docker_endpoint("slow", false).await;
    w.pass_at(0).await;
    w.put_docker_record("slow", ip, &handle).await;
    let r = w.pass_at(90).await;
    assert_eq!(
        r,
        Report {
            docker_answered: true,
            ..Default::default()
        }
    );
    assert!(w
        .dp
        .has_endpoint(&brindle_dataplane::host_ifname_for("slow")));
    assert!(w.record_exists("slow").await);
}

#[tokio::test]
async fn veths_of_another_installation_are_left_alone_and_a_new_link_restarts_the_clock() {
    let mut w = World::new().await;
    // Routed outside every pool of ours: someone else's endpoint.
    let other = EndpointSpec::for_docker("foreign", "192.0.2.7".parse().unwrap(), None);
    w.dp.create_veth_on_host(&other).await.unwrap();
    // Without a route (its deletion was decided): ours to finish.
    let routeless = EndpointSpec::for_docker("gone", "10.7.0.9".parse().unwrap(), None);
    w.dp.create_veth_on_host(&routeless).await.unwrap();
    w.dp.del_host_route(routeless.ip).await.unwrap();
    w.pass_at(0).await;
    // The link is replaced by a new one of the same name: judged anew.
    w.dp.delete_endpoint(&routeless.host_ifname).await.unwrap();
    w.dp.create_veth_on_host(&routeless).await.unwrap();
    w.dp.del_host_route(routeless.ip).await.unwrap();
    assert_eq!(w.pass_at(60).await.veths_deleted, 0);
    assert_eq!(w.pass_at(120).await.veths_deleted, 1);
    assert!(!w.dp.has_endpoint(&routeless.host_ifname));
    assert!(w.dp.has_endpoint(&other.host_ifname));
}

#[tokio::test]
async fn a_veth_another_node_records_on_the_same_kernel_is_left_alone() {
    let mut w = World::new().await;
    let ip: Ipv4Addr = "10.7.0.20".parse().unwrap();
    let spec = EndpointSpec::for_docker("othernode", ip, None);
    w.dp.create_veth_on_host(&spec).await.unwrap();
    let record = EndpointRecord {
        id: "othernode".into(),
        node: "n2".into(),
        orchestrator: ORCHESTRATOR.into(),
        container_id: None,
        network: NET.into(),
        ip,
        mac: None,
        host_ifname: spec.host_ifname.clone(),
        handle: "docker-othernode".into(),
        segment: None,
        allow_from: Vec::new(),
    };
    let key = w.ipam.keys().endpoint("n2", "othernode");
    state::put(w.ipam.store(), &key, &record).await.unwrap();
    for secs in [0, 60, 120] {
        let mut snap = w.snapshot().await;
        snap.endpoints.insert(key.clone(), record.clone());
        let now = w.t0 + Duration::from_secs(secs);
        let r =
            w.r.pass(&w.ipam, w.dp.as_ref(), Some(&w.docker), &snap, now)
                .await
                .unwrap();
        assert_eq!(r.veths_deleted, 0);
    }
    assert!(w.dp.has_endpoint(&spec.host_ifname));
}

#[tokio::test]
async fn a_docker_record_dockerd_forgot_goes_with_its_veth_and_address() {
    let mut w = World::new().await;
    let (ip, handle) = w.docker_endpoint("e1", true).await;
    let (ip2, handle2) = w.docker_endpoint("e2", true).await;
    // dockerd lists e2 only.
    w.docker.set(NET, &["e2"], &[ip2]);
    assert_eq!(w.pass_at(0).await.records_removed, 0);
    // While dockerd does not answer, nothing is judged, and a finding must be seen
    // again for a whole grace period once it answers.
    w.docker.silent();
    let r = w.pass_at(60).await;
    assert!(!r.docker_answered);
    assert_eq!(r.records_removed, 0);
    assert!(w.record_exists("e1").await);
    w.docker = FakeDockerd::answering();
    w.docker.set(NET, &["e2"], &[ip2]);
    assert_eq!(w.pass_at(61).await.records_removed, 0);
    let r = w.pass_at(121).await;
    assert_eq!((r.records_removed, r.addresses_released), (1, 1), "{r:?}");
    assert!(!w.record_exists("e1").await);
    assert!(!w.dp.has_endpoint(&brindle_dataplane::host_ifname_for("e1")));
    assert!(w.held(&handle).await.is_empty());
    assert!(!w.dp.host_routes().iter().any(|(a, _)| *a == ip));
    assert!(w.record_exists("e2").await);
    assert_eq!(w.held(&handle2).await, vec![ip2]);
    // A network dockerd no longer has at all: its endpoints go too.
    w.docker = FakeDockerd::answering();
    w.pass_at(122).await;
    assert_eq!(w.pass_at(182).await.records_removed, 1);
    assert!(!w.record_exists("e2").await);
}

#[tokio::test]
async fn a_record_written_meanwhile_is_judged_anew() {
    let mut w = World::new().await;
    w.docker.set(NET, &[], &[]);
    let (ip, handle) = w.docker_endpoint("e1", true).await;
    w.pass_at(0).await;
    // Join updates the record at 59 s: its clock restarts.
    w.put_docker_record("e1", ip, &handle).await;
    assert_eq!(w.pass_at(59).await.records_removed, 0);
    assert_eq!(w.pass_at(60).await.records_removed, 0);
    assert!(w.record_exists("e1").await);
    assert_eq!(w.pass_at(119).await.records_removed, 1);
}

#[tokio::test]
async fn orphaned_docker_addresses_are_released_after_the_grace_period_only() {
    let mut w = World::new().await;
    let net = NetworkRecord {
        id: NET.into(),
        node: NODE.into(),
        subnets: vec![records::NetworkSubnet {
            subnet: "10.7.0.0/24".parse().unwrap(),
            gateway: Some("10.7.0.254".parse().unwrap()),
            aux: Default::default(),
        }],
        mtu: None,
        allow_from: Vec::new(),
        segment: None,
    };
    let key = w.ipam.keys().docker_network(NET);
    state::put(w.ipam.store(), &key, &net).await.unwrap();
    // RequestAddress answered, CreateEndpoint never came (killed, Docker gave up).
    let lost = w.docker_address("docker-lost").await;
    // One dockerd still lists (a container mid-start on another path).
    let listed = w.docker_address("docker-listed").await;
    // The network's --gateway.
    w.ipam
        .allocate(&AllocRequest {
            handle: "docker-gw".into(),
            node: NODE.into(),
            ip: Some("10.7.0.254".parse().unwrap()),
            attrs: BTreeMap::from([(ATTR_ORCHESTRATOR.into(), ORCHESTRATOR.into())]),
            ..Default::default()
        })
        .await
        .unwrap();
    // Another node's, and one without an orchestrator (the CLI's).
    w.ipam
        .allocate(&AllocRequest {
            handle: "docker-other-node".into(),
            node: "n2".into(),
            attrs: BTreeMap::from([(ATTR_ORCHESTRATOR.into(), ORCHESTRATOR.into())]),
            ..Default::default()
        })
        .await
        .unwrap();
    w.ipam
        .allocate(&AllocRequest {
            handle: "cli".into(),
            node: NODE.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    w.docker.set(NET, &[], &[listed]);
    let r = w.pass_at(0).await;
    assert_eq!(r.addresses_released, 0, "within its grace period");
    assert_eq!(r.waiting, 1);
    assert_eq!(w.pass_at(59).await.addresses_released, 0);
    let r = w.pass_at(60).await;
    assert_eq!(r.addresses_released, 1, "{r:?}");
    assert!(w.held("docker-lost").await.is_empty());
    let _ = lost;
    for kept in ["docker-listed", "docker-gw", "docker-other-node", "cli"] {
        assert_eq!(w.held(kept).await.len(), 1, "{kept}");
    }
    // Without an answer from dockerd, no Docker address is judged.
    let orphan = w.docker_address("docker-lost2").await;
    w.docker.silent();
    w.pass_at(61).await;
    assert_eq!(w.pass_at(200).await.addresses_released, 0);
    assert_eq!(w.held("docker-lost2").await, vec![orphan]);
}

#[tokio::test]
async fn a_cni_record_whose_netns_is_gone_goes_with_its_address() {
    let mut w = World::new().await;
    let ip = w.cni_add("c1").await;
    let kept = w.cni_add("c2").await;
    let att = Attachment {
        container_id: "c1".into(),
        ifname: "eth0".into(),
    };
    // The container's netns went away without a DEL: the kernel took the veth.
    w.dp.delete_endpoint(&att.host_ifname()).await.unwrap();
    assert_eq!(w.pass_at(0).await.records_removed, 0);
    let r = w.pass_at(60).await;
    assert_eq!((r.records_removed, r.addresses_released), (1, 1), "{r:?}");
    assert!(!w.record_exists("c1+eth0").await);
    assert!(w.held("c1+eth0").await.is_empty());
    assert!(w.record_exists("c2+eth0").await);
    assert_eq!(w.held("c2+eth0").await, vec![kept]);
    let _ = ip;
}

#[tokio::test]
async fn cni_addresses_without_a_record_are_released_after_the_grace_period_only() {
    let mut w = World::new().await;
    // ADD killed after the allocation, before the veth.
    w.cni_allocation("killed", true).await;
    // Another plugin's interface (brindle-ipam under ptp): never judged here.
    w.cni_allocation("ptp", false).await;
    assert_eq!(w.pass_at(0).await.addresses_released, 0);
    assert_eq!(w.pass_at(30).await.addresses_released, 0, "within grace");
    // Released and taken again by a new ADD of the same attachment meanwhile: the
    // handle's revision changed, so its clock restarts.
    w.ipam.release_handle("killed+eth0").await.unwrap();
    w.cni_allocation("killed", true).await;
    assert_eq!(w.pass_at(60).await.addresses_released, 0);
    assert_eq!(w.held("killed+eth0").await.len(), 1);
    let r = w.pass_at(120).await;
    assert_eq!(r.addresses_released, 1, "{r:?}");
    assert!(w.held("killed+eth0").await.is_empty());
    assert_eq!(w.held("ptp+eth0").await.len(), 1);
}

#[tokio::test]
async fn a_cni_address_whose_record_appears_meanwhile_is_kept() {
    let w = World::new().await;
    let ip = w.cni_add("c1").await;
    let keys = w.ipam.keys();
    let handle = state::read::<HandleRecord>(w.ipam.store(), &keys.handle("c1+eth0"))
        .await
        .unwrap()
        .unwrap();
    // The reconcile judged the handle orphaned; the ADD's record is there by the
    // time it releases: the guard keeps the address.
    let r = Reconciler::new(NODE, GRACE);
    let guards = r.release_guards(keys, "c1+eth0");
    let out = w
        .ipam
        .release_handle_if("c1+eth0", handle.revision, &guards)
        .await
        .unwrap();
    assert_eq!(out, None);
    assert_eq!(w.held("c1+eth0").await, vec![ip]);
    // Without the record, at the revision judged: released.
    state::delete(w.ipam.store(), &keys.endpoint(NODE, "c1+eth0"))
        .await
        .unwrap();
    let stale = w
        .ipam
        .release_handle_if("c1+eth0", handle.revision - 1, &guards)
        .await
        .unwrap();
    assert_eq!(stale, None, "a handle written since it was judged stays");
    let out = w
        .ipam
        .release_handle_if("c1+eth0", handle.revision, &guards)
        .await
        .unwrap();
    assert_eq!(out, Some(vec![ip]));
}

#[tokio::test]
async fn an_address_is_released_only_once_no_interface_routes_it() {
    let mut w = World::new().await;
    w.docker.set(NET, &[], &[]);
    let handle = "docker-routed";
    let ip = w.docker_address(handle).await;
    // A record-less veth still routes it (CreateEndpoint killed before the record).
    let spec = EndpointSpec::for_docker("x", ip, None);
    w.dp.create_veth_on_host(&spec).await.unwrap();
    w.pass_at(0).await;
    let r = w.pass_at(120).await;
    assert_eq!((r.veths_deleted, r.addresses_released), (1, 0), "{r:?}");
    assert_eq!(w.held(handle).await, vec![ip]);
    // Unrouted from now on: its own grace period starts.
    assert_eq!(w.pass_at(121).await.addresses_released, 0);
    assert_eq!(w.pass_at(181).await.addresses_released, 1);
    assert!(w.held(handle).await.is_empty());
}
