use super::*;

#[test]
fn addresses_from_docker_cidrs() {
    assert_eq!(cidr_ip("10.1.0.5/32").unwrap(), Ipv4Addr::new(10, 1, 0, 5));
    assert_eq!(cidr_ip("10.1.0.5/24").unwrap(), Ipv4Addr::new(10, 1, 0, 5));
    assert_eq!(cidr_ip("10.1.0.5").unwrap(), Ipv4Addr::new(10, 1, 0, 5));
    assert!(cidr_ip("fd00::1/64").is_err());
}

/// brindled killed inside `CreateEndpoint`, after the veth and then after the
/// record: dockerd retries the call against the next brindled, which replaces the
/// veth (the name derives from the endpoint id) or answers from the record, instead
/// of failing on the name taken.
#[tokio::test]
async fn a_retried_create_endpoint_finishes_what_a_killed_one_began() {
    use super::super::ipam_driver::ATTR_ORCHESTRATOR;
    use super::super::LocalBackend;
    use brindle_dataplane::{Dataplane, FakeDataplane, Reaper};
    use brindle_ipam::pools::NewPool;
    use brindle_ipam::{AllocRequest, Ipam, MemoryStore};

    let store = MemoryStore::new();
    let dp = Arc::new(FakeDataplane::new());
    // A fresh brindled on the same etcd and kernel: nothing cached.
    let restarted = || {
        Driver::new(Arc::new(LocalBackend {
            node: "n1".into(),
            ipam: Ipam::new(store.clone(), "/brindle"),
            dataplane: dp.clone(),
            reaper: Reaper::tasks(dp.clone()),
            write_behind: Default::default(),
            address_locks: Default::default(),
            docker_api_socket: None,
        }))
    };
    let ipam = Ipam::new(store.clone(), "/brindle");
    let cidr: Ipv4Network = "10.8.0.0/24".parse().unwrap();
    ipam.add_pool(NewPool::new("p", cidr)).await.unwrap();
    let net = NetworkRecord {
        id: "net".into(),
        node: "n1".into(),
        subnets: vec![NetworkSubnet {
            subnet: cidr,
            gateway: None,
            aux: BTreeMap::new(),
        }],
        mtu: None,
        allow_from: Vec::new(),
        segment: Some("docker:p".into()),
    };
    records::put(&store, ipam.keys().docker_network("net"), &net)
        .await
        .unwrap();
    let ip = ipam
        .allocate(&AllocRequest {
            handle: "docker-1".into(),
            node: "n1".into(),
            pool: Some("p".into()),
            attrs: BTreeMap::from([(ATTR_ORCHESTRATOR.into(), ORCHESTRATOR.into())]),
            ..Default::default()
        })
        .await
        .unwrap()
        .ip;
    let eid = "e1".repeat(32);
    let req = || CreateEndpointRequest {
        network_id: "net".into(),
        endpoint_id: eid.clone(),
        interface: Some(EndpointInterface {
            address: format!("{ip}/32"),
            ..Default::default()
        }),
        options: None,
    };
    // Killed after the veth, before the record.
    let spec = EndpointSpec::for_docker(&eid, ip, None);
    dp.create_veth_on_host(&spec).await.unwrap();
    let leftover = dp.link_of(&spec.host_ifname).unwrap();
    let reply = restarted()
        .create_endpoint(req(), &Caller::default())
        .await
        .unwrap();
    let mac = reply.interface.unwrap().mac_address;
    let link = dp.link_of(&spec.host_ifname).unwrap();
    assert_ne!(link, leftover, "the leftover veth was replaced");
    let key = ipam.keys().endpoint("n1", &eid);
    let stored: DockerEndpoint = records::get(&store, key).await.unwrap().unwrap();
    assert_eq!(
        (stored.base.ip, stored.base.handle.as_str()),
        (ip, "docker-1")
    );
    // Killed after both, before the answer: done again, with the same answer.
    let again = restarted()
        .create_endpoint(req(), &Caller::default())
        .await
        .unwrap();
    assert_eq!(again.interface.unwrap().mac_address, mac);
    assert_eq!(mac, container_mac_for(ip).to_string());
    let relinked = dp.link_of(&spec.host_ifname).expect("a veth");
    assert_ne!(relinked, link, "the unacknowledged veth was replaced");
    assert_eq!(dp.host_routes(), [(ip, spec.host_ifname.clone())]);
    let stored: DockerEndpoint = records::get(&store, ipam.keys().endpoint("n1", &eid))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.base.mac.as_deref(), Some(mac.as_str()));
}
