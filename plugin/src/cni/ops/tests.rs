//! The CNI operations on the in-process store and the dataplane fake.

use super::*;
use std::sync::Arc;

use brindle_dataplane::{FakeCall, FakeDataplane, FakeOp};
use brindle_ipam::pools::NewPool;
use brindle_ipam::{AllocRequest, MemoryStore};

fn target() -> Target {
    Target {
        node: "n1".into(),
        prefix: "/brindle".into(),
    }
}

async fn setup(cidr: &str) -> Ipam<MemoryStore> {
    let ipam = Ipam::new(MemoryStore::new(), "/brindle");
    ipam.add_pool(NewPool {
        name: "p".into(),
        cidr: cidr.parse().unwrap(),
        block_size: 28,
        disabled: false,
        reserved: Default::default(),
        nat_outgoing: false,
    })
    .await
    .unwrap();
    ipam
}

fn att(cid: &str) -> Attachment {
    Attachment {
        container_id: cid.into(),
        ifname: "eth0".into(),
    }
}

fn add_req(cid: &str, mode: Mode, ip: Option<Ipv4Addr>) -> AddRequest {
    AddRequest {
        target: target(),
        mode,
        network: "net".into(),
        attachment: att(cid),
        netns: Some("/run/netns/test-does-not-matter".into()),
        ip,
        pool: None,
        mtu: None,
        allow_from: Vec::new(),
    }
}

/// The endpoint record of node `n1` named `id`, if stored.
async fn record_of(ipam: &Ipam<MemoryStore>, id: &str) -> Option<crate::endpoints::EndpointRecord> {
    crate::endpoints::get_endpoint(ipam.store(), ipam.keys(), "n1", id)
        .await
        .unwrap()
}

/// `ipam check` finds nothing: no record without its address, no address without its
/// handle, no empty block.
async fn assert_consistent(ipam: &Ipam<MemoryStore>) {
    let report = ipam.check(false).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// Node `n1` on `dp`, deleting veths before DEL returns.
fn ctx_on<'a>(ipam: &'a Ipam<MemoryStore>, dp: &'a FakeDataplane) -> Ctx<'a, MemoryStore> {
    Ctx {
        ipam,
        dataplane: Some(dp),
        node: "n1",
        reaper: None,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn add_is_idempotent_and_del_releases() {
    let ipam = setup("10.9.0.0/24").await;
    let dp = FakeDataplane::new();
    let ctx = ctx_on(&ipam, &dp);
    let a = add(&ctx, &add_req("c1", Mode::Ipam, None)).await.unwrap();
    let b = add(&ctx, &add_req("c1", Mode::Ipam, None)).await.unwrap();
    assert_eq!(a.ip, b.ip);
    assert!(
        dp.calls().is_empty(),
        "ipam mode never touches the dataplane"
    );
    let main = add(&ctx, &add_req("c2", Mode::Main, None)).await.unwrap();
    assert_eq!(main.host_ifname, Some(att("c2").host_ifname()));
    assert!(dp.has_endpoint(&att("c2").host_ifname()));
    let rec = crate::endpoints::get_endpoint(ipam.store(), ipam.keys(), "n1", "c2+eth0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.ip, main.ip);
    assert_eq!(rec.orchestrator, "cni");
    // A repeated main ADD finds the interface: an error, and the address stays.
    let again = add(&ctx, &add_req("c2", Mode::Main, None))
        .await
        .unwrap_err();
    assert_eq!(again.code, code::INTERFACE_EXISTS, "{again}");
    assert_eq!(ipam.addresses_of("c2+eth0").await.unwrap(), vec![main.ip]);
    let del_req = DelRequest {
        target: target(),
        mode: Mode::Main,
        attachment: att("c2"),
    };
    del(&ctx, &del_req).await.unwrap();
    del(&ctx, &del_req).await.unwrap();
    assert!(!dp.has_endpoint(&att("c2").host_ifname()));
    assert!(ipam.addresses_of("c2+eth0").await.unwrap().is_empty());
}

/// brindled's fast path decodes the request the plugin sent; both then run `add`,
/// so the record depends only on the request: check the request survives the wire.
#[tokio::test(flavor = "current_thread")]
async fn endpoint_record_carries_segment_and_allow_from() {
    let ipam = setup("10.9.5.0/24").await;
    let dp = FakeDataplane::new();
    let ctx = ctx_on(&ipam, &dp);
    let allow: Vec<Ipv4Network> = vec!["192.0.2.0/24".parse().unwrap()];
    let direct = AddRequest {
        allow_from: allow.clone(),
        ..add_req("c1", Mode::Main, None)
    };
    let wire = serde_json::to_vec(&AddRequest {
        attachment: att("c2"),
        ..direct.clone()
    })
    .unwrap();
    let fast: AddRequest = serde_json::from_slice(&wire).unwrap();
    for req in [&direct, &fast] {
        add(&ctx, req).await.unwrap();
        let rec = crate::endpoints::get_endpoint(
            ipam.store(),
            ipam.keys(),
            "n1",
            &req.attachment.handle(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(rec.segment.as_deref(), Some("cni:net"));
        assert_eq!(rec.segment(), "cni:net");
        assert_eq!(rec.allow_from, allow);
    }
    // Without the key nothing is restricted, and old brindleds' requests decode.
    let plain = serde_json::to_value(add_req("c3", Mode::Main, None)).unwrap();
    assert!(plain.get("allow_from").is_none(), "{plain}");
    let decoded: AddRequest = serde_json::from_value(plain).unwrap();
    assert!(decoded.allow_from.is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn failed_wiring_releases_a_new_address_only() {
    let ipam = setup("10.9.1.0/24").await;
    let dp = FakeDataplane::new();
    let ctx = ctx_on(&ipam, &dp);
    dp.fail_once(FakeOp::CreateUnroutedVethIntoNetns, libc::EPERM);
    let e = add(&ctx, &add_req("c1", Mode::Main, None))
        .await
        .unwrap_err();
    assert_eq!(e.code, code::DATAPLANE);
    assert!(ipam.addresses_of("c1+eth0").await.unwrap().is_empty());
    // Retry after the partial failure succeeds and leaks nothing.
    let ok = add(&ctx, &add_req("c1", Mode::Main, None)).await.unwrap();
    assert_eq!(ipam.addresses_of("c1+eth0").await.unwrap(), vec![ok.ip]);
}

#[tokio::test(flavor = "current_thread")]
async fn check_and_gc() {
    let ipam = setup("10.9.2.0/24").await;
    let dp = FakeDataplane::new();
    let ctx = ctx_on(&ipam, &dp);
    let keep = add(&ctx, &add_req("keep", Mode::Main, None)).await.unwrap();
    let _gone = add(&ctx, &add_req("gone", Mode::Main, None)).await.unwrap();
    // Another network and a non-CNI allocation must survive GC.
    let mut other = add_req("othernet", Mode::Ipam, None);
    other.network = "other".into();
    add(&ctx, &other).await.unwrap();
    ipam.allocate(&AllocRequest {
        handle: "dockerep".into(),
        node: "n1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let chk = CheckRequest {
        target: target(),
        mode: Mode::Main,
        attachment: att("keep"),
        netns: Some("/run/netns/x".into()),
        ip: Some(keep.ip),
        mtu: None,
    };
    check(&ctx, &chk).await.unwrap();
    let wrong = CheckRequest {
        ip: Some("10.9.2.200".parse().unwrap()),
        ..chk.clone()
    };
    assert_eq!(
        check(&ctx, &wrong).await.unwrap_err().code,
        code::CHECK_FAILED
    );
    let reply = gc(
        &ctx,
        &GcRequest {
            target: target(),
            mode: Mode::Main,
            network: "net".into(),
            valid: vec![att("keep")],
        },
    )
    .await
    .unwrap();
    assert_eq!(reply.released, vec!["gone+eth0".to_string()]);
    assert!(!dp.has_endpoint(&att("gone").host_ifname()));
    assert!(dp.has_endpoint(&att("keep").host_ifname()));
    assert_eq!(ipam.addresses_of("othernet+eth0").await.unwrap().len(), 1);
    assert_eq!(ipam.addresses_of("dockerep").await.unwrap().len(), 1);
    let missing = CheckRequest {
        attachment: att("gone"),
        ip: None,
        ..chk
    };
    assert_eq!(
        check(&ctx, &missing).await.unwrap_err().code,
        code::CHECK_FAILED
    );
}

#[tokio::test(flavor = "current_thread")]
async fn reaper_defers_veth_deletion_and_add_waits_for_it() {
    let ipam = setup("10.9.4.0/24").await;
    let dp = Arc::new(FakeDataplane::new());
    let reaper = Reaper::tasks(dp.clone());
    let ctx = Ctx {
        ipam: &ipam,
        dataplane: Some(dp.as_ref()),
        node: "n1",
        reaper: Some(&reaper),
    };
    let first = add(&ctx, &add_req("c1", Mode::Main, None)).await.unwrap();
    let host = att("c1").host_ifname();
    assert!(dp
        .host_routes()
        .iter()
        .any(|(ip, dev)| *ip == first.ip && *dev == host));
    let del_req = DelRequest {
        target: target(),
        mode: Mode::Main,
        attachment: att("c1"),
    };
    del(&ctx, &del_req).await.unwrap();
    // Off the network at once, address released; the link goes in the background.
    assert!(!dp.host_routes().iter().any(|(ip, _)| *ip == first.ip));
    assert!(ipam.addresses_of("c1+eth0").await.unwrap().is_empty());
    // ADD of the same attachment right away waits for the deletion and succeeds.
    add(&ctx, &add_req("c1", Mode::Main, None)).await.unwrap();
    assert!(dp.has_endpoint(&host));
    // A leftover veth of an attachment without an address is replaced.
    ipam.release_handle("c1+eth0").await.unwrap();
    let again = add(&ctx, &add_req("c1", Mode::Main, None)).await.unwrap();
    assert!(dp.has_endpoint(&host));
    assert_eq!(ipam.addresses_of("c1+eth0").await.unwrap(), vec![again.ip]);
    del(&ctx, &del_req).await.unwrap();
    for _ in 0..100 {
        if reaper.pending() == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(reaper.pending(), 0);
    assert!(!dp.has_endpoint(&host));
}

/// `podman restart` on the direct path: the DEL's reaper (a detached process there,
/// which nothing settles) runs only after the next ADD of the same attachment, in
/// another process, has replaced the veth; it must leave the new one alone.
#[tokio::test(flavor = "current_thread")]
async fn late_reaper_of_a_del_spares_the_veth_of_the_next_add() {
    let ipam = setup("10.9.5.0/24").await;
    let dp = Arc::new(FakeDataplane::new());
    let reaper = Reaper::tasks(dp.clone());
    let del_ctx = Ctx {
        ipam: &ipam,
        dataplane: Some(dp.as_ref()),
        node: "n1",
        reaper: Some(&reaper),
    };
    // The next ADD runs elsewhere: it knows nothing of this reaper.
    let add_ctx = Ctx {
        reaper: None,
        ..del_ctx
    };
    let host = att("c1").host_ifname();
    add(&add_ctx, &add_req("c1", Mode::Main, None))
        .await
        .unwrap();
    let del_req = DelRequest {
        target: target(),
        mode: Mode::Main,
        attachment: att("c1"),
    };
    del(&del_ctx, &del_req).await.unwrap();
    assert_eq!(reaper.pending(), 1, "the deletion has not run yet");
    // The restarted container's ADD finds the old veth and replaces it.
    let second = add(&add_ctx, &add_req("c1", Mode::Main, None))
        .await
        .unwrap();
    assert!(dp.has_endpoint(&host));
    // Only now does the DEL's reaper run.
    reaper.settle(&host).await;
    assert!(
        dp.has_endpoint(&host),
        "the late reaper deleted the veth of the following ADD"
    );
    assert!(dp
        .host_routes()
        .iter()
        .any(|(ip, dev)| *ip == second.ip && *dev == host));
    let rec = crate::endpoints::get_endpoint(ipam.store(), ipam.keys(), "n1", "c1+eth0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.ip, second.ip);
}

#[tokio::test(flavor = "current_thread")]
async fn status_needs_a_usable_pool() {
    let ipam = setup("10.9.3.0/24").await;
    let ctx = Ctx {
        ipam: &ipam,
        dataplane: None,
        node: "n1",
        reaper: None,
    };
    let mut req = StatusRequest {
        target: target(),
        pool: Some("p".into()),
    };
    status(&ctx, &req).await.unwrap();
    req.pool = Some("nope".into());
    assert_eq!(
        status(&ctx, &req).await.unwrap_err().code,
        code::NOT_AVAILABLE
    );
}

/// One durable write per operation: ADD stores the address and the endpoint record in
/// one transaction and DEL removes both in one, so neither exists without the other;
/// wiring that fails after the write takes both back in one write.
#[tokio::test(flavor = "current_thread")]
async fn add_and_del_are_one_write_each_and_a_record_never_outlives_its_address() {
    let ipam = setup("10.9.5.0/24").await;
    let dp = FakeDataplane::new();
    let ctx = ctx_on(&ipam, &dp);
    let record = |id: &'static str| record_of(&ipam, id);
    // The node's block claimed already, as on a node running containers.
    add(&ctx, &add_req("warm", Mode::Main, None)).await.unwrap();

    let before = ipam.store().revision();
    let added = add(&ctx, &add_req("c1", Mode::Main, None)).await.unwrap();
    assert_eq!(
        ipam.store().revision() - before,
        1,
        "ADD wrote more than once"
    );
    let rec = record("c1+eth0")
        .await
        .expect("record stored with the address");
    assert_eq!(rec.ip, added.ip);
    assert_eq!(rec.mac, added.mac, "the record's MAC is the interface's");

    let before = ipam.store().revision();
    let del_c1 = DelRequest {
        target: target(),
        mode: Mode::Main,
        attachment: att("c1"),
    };
    del(&ctx, &del_c1).await.unwrap();
    assert_eq!(
        ipam.store().revision() - before,
        1,
        "DEL wrote more than once"
    );
    assert!(record("c1+eth0").await.is_none());
    assert!(ipam.addresses_of("c1+eth0").await.unwrap().is_empty());

    dp.fail_once(FakeOp::CreateUnroutedVethIntoNetns, libc::EPERM);
    let before = ipam.store().revision();
    add(&ctx, &add_req("c2", Mode::Main, None))
        .await
        .unwrap_err();
    assert_eq!(
        ipam.store().revision() - before,
        2,
        "the allocation with its record, then their release in one write"
    );
    assert!(
        record("c2+eth0").await.is_none(),
        "record left without its address"
    );
    assert!(ipam.addresses_of("c2+eth0").await.unwrap().is_empty());
    assert_consistent(&ipam).await;
}

/// The veth is built while the allocation's transaction is in flight, but its route
/// (what makes the address reachable) comes only once the allocation and its record
/// are stored; a route that cannot be made takes the veth, the address and the
/// record with it.
#[tokio::test(flavor = "current_thread")]
async fn the_route_comes_after_the_allocation_and_a_failed_route_leaves_nothing() {
    let ipam = setup("10.9.6.0/24").await;
    let dp = FakeDataplane::new();
    let ctx = ctx_on(&ipam, &dp);
    let record = |id: &'static str| record_of(&ipam, id);
    let open = dp.hold_next(FakeOp::RouteEndpoint);
    let req = add_req("c1", Mode::Main, None);
    let host = att("c1").host_ifname();
    let watch = async {
        while dp.calls_of(FakeOp::RouteEndpoint).is_empty() {
            tokio::task::yield_now().await;
        }
        // The ADD now waits for its route.
        let held = ipam.addresses_of("c1+eth0").await.unwrap();
        assert_eq!(held.len(), 1, "the allocation is stored before the route");
        assert!(record("c1+eth0").await.is_some(), "and so is the record");
        assert!(dp.has_endpoint(&host), "the veth was built alongside");
        assert!(dp.host_routes().is_empty(), "nothing routes to it yet");
        open.send(()).unwrap();
        held[0]
    };
    let (added, held) = tokio::join!(add(&ctx, &req), watch);
    let added = added.unwrap();
    assert_eq!(added.ip, held);
    assert_eq!(dp.host_routes(), vec![(held, host.clone())]);
    let built: Vec<FakeCall> = dp
        .calls()
        .into_iter()
        .filter(|c| !matches!(c.op(), FakeOp::HostVeth))
        .collect();
    assert!(
        matches!(&built[..], [FakeCall::CreateUnroutedVethIntoNetns(s), FakeCall::RouteEndpoint(r)] if s.ip == held && r.ip == held),
        "{built:?}"
    );

    dp.fail_once(FakeOp::RouteEndpoint, libc::EEXIST);
    add(&ctx, &add_req("c2", Mode::Main, None))
        .await
        .unwrap_err();
    assert!(!dp.has_endpoint(&att("c2").host_ifname()));
    assert!(ipam.addresses_of("c2+eth0").await.unwrap().is_empty());
    assert!(record("c2+eth0").await.is_none());
    assert_consistent(&ipam).await;
}

/// When the allocation's first transaction loses its compare (another process of this
/// node took the address it planned), the veth built alongside is for an address this
/// ADD does not get: it goes, and the veth is built again for the address kept, after
/// the allocation; the retries themselves build nothing.
#[tokio::test(flavor = "current_thread")]
async fn a_lost_compare_rebuilds_the_veth_for_the_address_kept() {
    let ipam = setup("10.9.7.0/24").await;
    let dp = FakeDataplane::new();
    let ctx = ctx_on(&ipam, &dp);
    add(&ctx, &add_req("warm", Mode::Main, None)).await.unwrap();
    // Another process of the node (its own cache) takes the next free address; `ipam`
    // does not know, so it plans that address and loses the compare.
    let other = Ipam::new(ipam.store().clone(), "/brindle");
    let taken = other
        .allocate(&AllocRequest {
            handle: "elsewhere".into(),
            node: "n1".into(),
            ..AllocRequest::default()
        })
        .await
        .unwrap();
    let added = add(&ctx, &add_req("c1", Mode::Main, None)).await.unwrap();
    assert_ne!(added.ip, taken.ip);
    let host = att("c1").host_ifname();
    let calls: Vec<FakeCall> = dp
        .calls()
        .into_iter()
        .skip_while(
            |c| !matches!(c, FakeCall::CreateUnroutedVethIntoNetns(s) if s.host_ifname == host),
        )
        .filter(|c| !matches!(c.op(), FakeOp::HostVeth))
        .collect();
    assert!(
        matches!(&calls[..], [
            FakeCall::CreateUnroutedVethIntoNetns(first),
            FakeCall::DeleteEndpoint(gone),
            FakeCall::CreateVethIntoNetns(kept),
        ] if first.ip == taken.ip && *gone == host && kept.ip == added.ip),
        "{calls:?}"
    );
    assert!(dp.host_routes().contains(&(added.ip, host.clone())));
    assert!(!dp.host_routes().iter().any(|(ip, _)| *ip == taken.ip));
    assert_consistent(&ipam).await;
}

/// The direct path's DEL runs in a process that has cached nothing: it reads the
/// handle once (for the routes it deletes and for the release) and the block once,
/// then commits.
#[tokio::test(flavor = "current_thread")]
async fn a_fresh_process_del_reads_the_handle_once() {
    let ipam = setup("10.9.6.0/24").await;
    let dp = Arc::new(FakeDataplane::new());
    let added = add(&ctx_on(&ipam, &dp), &add_req("c1", Mode::Main, None))
        .await
        .unwrap();
    let fresh = Ipam::new(ipam.store().clone(), "/brindle");
    let reaper = Reaper::tasks(dp.clone());
    let ctx = Ctx {
        ipam: &fresh,
        dataplane: Some(dp.as_ref()),
        node: "n1",
        reaper: Some(&reaper),
    };
    let before = ipam.store().gets();
    let req = DelRequest {
        target: target(),
        mode: Mode::Main,
        attachment: att("c1"),
    };
    del(&ctx, &req).await.unwrap();
    assert_eq!(
        ipam.store().gets() - before,
        2,
        "one read of the handle and one of its block"
    );
    assert!(!dp.host_routes().iter().any(|(ip, _)| *ip == added.ip));
    assert!(ipam.addresses_of("c1+eth0").await.unwrap().is_empty());
    assert!(record_of(&ipam, "c1+eth0").await.is_none());
    assert_consistent(&ipam).await;
}
