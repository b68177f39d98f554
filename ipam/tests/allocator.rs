//! Allocator behaviour on the in-process store (same compare-and-swap semantics as etcd).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use brindle_ipam::check::ProblemKind;
use brindle_ipam::pools::NewPool;
use brindle_ipam::{AllocRequest, Ipam, IpamError, MemoryStore, Store};

const PREFIX: &str = "/brindle";

async fn ipam_with_pool(cidr: &str, block_size: u8) -> Ipam<MemoryStore> {
    let ipam = Ipam::new(MemoryStore::new(), PREFIX);
    add_pool(&ipam, "p1", cidr, block_size).await;
    ipam
}

async fn add_pool<S: Store>(ipam: &Ipam<S>, name: &str, cidr: &str, block_size: u8) {
    ipam.add_pool(NewPool {
        name: name.into(),
        cidr: cidr.parse().unwrap(),
        block_size,
        disabled: false,
        reserved: BTreeSet::new(),
        nat_outgoing: false,
    })
    .await
    .unwrap();
}

fn req(handle: &str, node: &str) -> AllocRequest {
    AllocRequest {
        handle: handle.into(),
        node: node.into(),
        ..AllocRequest::default()
    }
}

fn fixed(handle: &str, node: &str, ip: &str) -> AllocRequest {
    AllocRequest {
        ip: Some(ip.parse().unwrap()),
        ..req(handle, node)
    }
}

async fn ipam_keys(store: &MemoryStore) -> Vec<String> {
    store
        .list_keys("/brindle/v1/ipam/")
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test]
async fn same_handle_gets_same_address_and_release_is_idempotent() {
    let ipam = ipam_with_pool("10.70.0.0/24", 26).await;
    let a = ipam.allocate(&req("ctr-1", "n1")).await.unwrap();
    assert!(!a.existing);
    assert_eq!(a.pool, "p1");
    let again = ipam.allocate(&req("ctr-1", "n1")).await.unwrap();
    assert_eq!(again.ip, a.ip);
    assert!(again.existing);
    // A second process (fresh cache) asking with the same handle gets it too.
    let other = Ipam::new(ipam.store().clone(), PREFIX);
    assert_eq!(other.allocate(&req("ctr-1", "n1")).await.unwrap().ip, a.ip);

    assert_eq!(ipam.release_handle("ctr-1").await.unwrap(), vec![a.ip]);
    assert!(ipam.release_handle("ctr-1").await.unwrap().is_empty());
    assert!(other.release_handle("ctr-1").await.unwrap().is_empty());
    assert!(
        ipam_keys(ipam.store()).await.is_empty(),
        "release left records behind"
    );
}

#[tokio::test]
async fn fixed_address_taken_names_the_address_and_holder() {
    let ipam = ipam_with_pool("10.70.0.0/24", 26).await;
    let a = ipam
        .allocate(&fixed("web", "n1", "10.70.0.200"))
        .await
        .unwrap();
    assert_eq!(a.ip.to_string(), "10.70.0.200");
    assert_eq!(a.block.to_string(), "10.70.0.192/26");
    let err = ipam
        .allocate(&fixed("db", "n2", "10.70.0.200"))
        .await
        .unwrap_err();
    assert!(matches!(err, IpamError::AddressTaken { .. }));
    let msg = err.to_string();
    assert!(msg.contains("10.70.0.200") && msg.contains("web"), "{msg}");
    // The failed request wrote nothing for its handle.
    assert!(ipam.addresses_of("db").await.unwrap().is_empty());
    // The same handle asking again is answered with its address.
    assert!(
        ipam.allocate(&fixed("web", "n1", "10.70.0.200"))
            .await
            .unwrap()
            .existing
    );
    // The same handle asking for a different address is refused clearly.
    let err = ipam
        .allocate(&fixed("web", "n1", "10.70.0.201"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("10.70.0.200") && err.contains("10.70.0.201"),
        "{err}"
    );
}

#[tokio::test]
async fn fixed_address_errors_name_the_value() {
    let ipam = ipam_with_pool("10.70.0.0/24", 26).await;
    let cases = [
        ("10.99.0.1", "not inside any pool"),
        ("10.70.0.0", "network address of pool p1"),
        ("10.70.0.255", "broadcast address of pool p1"),
    ];
    for (ip, needle) in cases {
        let err = ipam
            .allocate(&fixed("h", "n1", ip))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(ip) && err.contains(needle), "{ip}: {err}");
    }
    assert!(ipam_keys(ipam.store()).await.is_empty());
}

#[tokio::test]
async fn exhausted_pool_names_pool_and_size_and_never_hands_out_edges() {
    let ipam = ipam_with_pool("10.71.0.0/28", 29).await;
    let mut got = HashSet::new();
    for i in 0..14 {
        let a = ipam.allocate(&req(&format!("h{i}"), "n1")).await.unwrap();
        assert!(got.insert(a.ip), "duplicate {}", a.ip);
    }
    assert!(!got.contains(&"10.71.0.0".parse::<Ipv4Addr>().unwrap()));
    assert!(!got.contains(&"10.71.0.15".parse::<Ipv4Addr>().unwrap()));
    let err = ipam.allocate(&req("h-extra", "n1")).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, IpamError::PoolExhausted { .. }), "{msg}");
    assert!(msg.contains("p1") && msg.contains("14 usable"), "{msg}");
}

#[tokio::test]
async fn own_blocks_first_then_claim_then_borrow() {
    // Two /29 blocks: .1-.7 and .8-.14 usable.
    let ipam = ipam_with_pool("10.72.0.0/28", 29).await;
    let a1 = ipam.allocate(&req("a1", "node-a")).await.unwrap();
    let b1 = ipam.allocate(&req("b1", "node-b")).await.unwrap();
    assert_ne!(a1.block, b1.block, "each node claims its own block");
    // node-a keeps using its own block while it has room.
    for i in 2..=7 {
        let a = ipam
            .allocate(&req(&format!("a{i}"), "node-a"))
            .await
            .unwrap();
        assert_eq!(a.block, a1.block);
    }
    // Own block full, nothing left to claim: borrow from node-b's block.
    let borrowed = ipam.allocate(&req("a8", "node-a")).await.unwrap();
    assert_eq!(borrowed.block, b1.block);
    let report = ipam.address(borrowed.ip).await.unwrap();
    assert_eq!(report.node.as_deref(), Some("node-a"));
    let usage = ipam.usage().await.unwrap();
    let b_block = usage.pools[0]
        .blocks
        .iter()
        .find(|b| b.cidr == b1.block)
        .unwrap();
    assert_eq!(b_block.node.as_deref(), Some("node-b"));
    assert_eq!(b_block.borrowed, 1);
}

#[tokio::test]
async fn release_by_address_and_reuse() {
    let ipam = ipam_with_pool("10.73.0.0/24", 26).await;
    let a = ipam.allocate(&req("x", "n1")).await.unwrap();
    assert_eq!(ipam.release_ip(a.ip).await.unwrap().as_deref(), Some("x"));
    assert_eq!(ipam.release_ip(a.ip).await.unwrap(), None);
    assert!(ipam.addresses_of("x").await.unwrap().is_empty());
    assert!(ipam_keys(ipam.store()).await.is_empty());
    let again = ipam
        .allocate(&fixed("y", "n2", &a.ip.to_string()))
        .await
        .unwrap();
    assert_eq!(again.ip, a.ip);
}

#[tokio::test]
async fn pool_rules() {
    let ipam = ipam_with_pool("10.74.0.0/16", 26).await;
    let overlap = ipam
        .add_pool(NewPool::new("p2", "10.74.8.0/24".parse().unwrap()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        overlap.contains("10.74.8.0/24") && overlap.contains("p1"),
        "{overlap}"
    );
    let big_block = ipam
        .add_pool(NewPool {
            name: "p3".into(),
            cidr: "10.75.0.0/24".parse().unwrap(),
            block_size: 22,
            disabled: false,
            reserved: BTreeSet::new(),
            nat_outgoing: false,
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(big_block.contains("/22"), "{big_block}");
    assert_eq!(ipam.list_pools().await.unwrap().len(), 1);

    // rm refuses a pool in use and leaves it as it was.
    let a = ipam.allocate(&req("k", "n1")).await.unwrap();
    let err = ipam.remove_pool("p1", false).await.unwrap_err().to_string();
    assert!(
        err.contains("p1") && err.contains("1 allocated") && err.contains("--force"),
        "{err}"
    );
    let pools = ipam.list_pools().await.unwrap();
    assert!(!pools[0].deleting);
    assert_eq!(ipam.addresses_of("k").await.unwrap(), vec![a.ip]);
    // A new allocation still works after the refused rm.
    ipam.allocate(&req("k2", "n1")).await.unwrap();
    assert_eq!(ipam.remove_pool("p1", true).await.unwrap(), 2);
    assert!(ipam.list_pools().await.unwrap().is_empty());
    assert!(ipam_keys(ipam.store()).await.is_empty());
}

#[tokio::test]
async fn disabled_pool_gives_only_fixed_addresses() {
    let ipam = Ipam::new(MemoryStore::new(), PREFIX);
    ipam.add_pool(NewPool {
        name: "off".into(),
        cidr: "10.76.0.0/24".parse().unwrap(),
        block_size: 26,
        disabled: true,
        reserved: BTreeSet::from(["10.76.0.9".parse().unwrap()]),
        nat_outgoing: false,
    })
    .await
    .unwrap();
    assert!(matches!(
        ipam.allocate(&req("d", "n1")).await,
        Err(IpamError::NoPools)
    ));
    assert!(ipam.allocate(&fixed("f", "n1", "10.76.0.8")).await.is_ok());
    let err = ipam
        .allocate(&fixed("g", "n1", "10.76.0.9"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("10.76.0.9") && err.contains("reserved"),
        "{err}"
    );
}

#[tokio::test]
async fn check_finds_and_repairs_damage() {
    let ipam = ipam_with_pool("10.77.0.0/24", 26).await;
    let a = ipam.allocate(&req("alpha", "n1")).await.unwrap();
    let b = ipam.allocate(&req("beta", "n1")).await.unwrap();
    assert!(ipam.check(false).await.unwrap().clean);

    // Damage: lose beta's handle record; add a handle for an unallocated address; add a
    // dangling affinity.
    let store = ipam.store();
    let write = |key: String, value: &str| brindle_ipam::store::Txn {
        ops: vec![brindle_ipam::store::Op::Put {
            key,
            value: value.as_bytes().to_vec(),
        }],
        ..Default::default()
    };
    store
        .txn(brindle_ipam::store::Txn {
            ops: vec![brindle_ipam::store::Op::Delete {
                key: ipam.keys().handle("beta"),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    store
        .txn(write(
            ipam.keys().handle("ghost"),
            r#"{"addresses":{"10.77.0.250":"10.77.0.192/26"}}"#,
        ))
        .await
        .unwrap();
    store
        .txn(write(
            ipam.keys()
                .affinity("n9", "10.77.0.128/26".parse().unwrap()),
            r#"{"state":"confirmed"}"#,
        ))
        .await
        .unwrap();

    let report = ipam.check(false).await.unwrap();
    assert!(!report.clean);
    let kinds: BTreeSet<_> = report
        .problems
        .iter()
        .map(|p| format!("{:?}", p.kind))
        .collect();
    for k in [
        ProblemKind::AllocationWithoutHandle,
        ProblemKind::HandleWithoutAllocation,
        ProblemKind::AffinityWithoutBlock,
    ] {
        assert!(
            kinds.contains(&format!("{k:?}")),
            "missing {k:?} in {kinds:?}"
        );
    }
    assert!(report.problems.iter().all(|p| !p.repaired));

    let repaired = ipam.check(true).await.unwrap();
    assert!(repaired.clean, "{:?}", repaired.problems);
    assert!(ipam.check(false).await.unwrap().problems.is_empty());
    // Repair restored beta's ownership, so release by handle works again.
    assert_eq!(ipam.release_handle("beta").await.unwrap(), vec![b.ip]);
    assert_eq!(ipam.release_handle("alpha").await.unwrap(), vec![a.ip]);
    assert!(ipam_keys(ipam.store()).await.is_empty());
}

#[tokio::test]
async fn concurrent_nodes_never_share_an_address() {
    let store = MemoryStore::new();
    let admin = Ipam::new(store.clone(), PREFIX);
    add_pool(&admin, "small", "10.78.0.0/24", 28).await;
    let mut tasks = Vec::new();
    for n in 0..8 {
        let ipam = Arc::new(Ipam::new(store.clone(), PREFIX));
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..30 {
                let a = ipam
                    .allocate(&req(&format!("n{n}-h{i}"), &format!("node-{n}")))
                    .await
                    .unwrap();
                mine.push(a.ip);
            }
            mine
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        for ip in t.await.unwrap() {
            assert!(all.insert(ip), "duplicate {ip}");
        }
    }
    assert_eq!(all.len(), 240);
    assert!(admin.check(false).await.unwrap().clean);
}

#[tokio::test]
async fn attributes_added_after_allocation_are_stored() {
    let ipam = ipam_with_pool("10.82.0.0/24", 26).await;
    let a = ipam.allocate(&req("ep-1", "n1")).await.unwrap();
    let attrs = BTreeMap::from([("container".to_string(), "c0ffee".to_string())]);
    ipam.set_attributes("ep-1", &attrs).await.unwrap();
    let report = ipam.address(a.ip).await.unwrap();
    assert_eq!(report.attributes["container"], "c0ffee");
    assert_eq!(report.attributes["node"], "n1");
    // Unknown handles are a no-op, and the allocator still works from its cache.
    ipam.set_attributes("nobody", &attrs).await.unwrap();
    assert_eq!(ipam.release_handle("ep-1").await.unwrap(), vec![a.ip]);
}

#[tokio::test]
async fn long_lived_allocator_sees_pools_added_elsewhere() {
    let agent = ipam_with_pool("10.80.0.0/30", 30).await;
    agent.allocate(&req("a", "n1")).await.unwrap();
    agent.allocate(&req("b", "n1")).await.unwrap();
    // The agent's pool is full; an admin (another process) adds a second pool.
    let admin = Ipam::new(agent.store().clone(), PREFIX);
    add_pool(&admin, "p2", "10.81.0.0/24", 26).await;
    let c = agent.allocate(&req("c", "n1")).await.unwrap();
    assert_eq!(c.pool, "p2");
    // And an admin removing a pool is noticed through the pool's changed revision.
    assert_eq!(admin.remove_pool("p2", true).await.unwrap(), 1);
    let err = agent.allocate(&req("d", "n1")).await.unwrap_err();
    assert!(matches!(err, IpamError::PoolExhausted { .. }), "{err}");
}

mod property {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Alloc { node: u8, handle: u8 },
        Fixed { node: u8, handle: u8, host: u8 },
        Release { handle: u8 },
        ReleaseIp { host: u8 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..3, 0u8..40).prop_map(|(node, handle)| Step::Alloc { node, handle }),
            (0u8..3, 0u8..40, any::<u8>()).prop_map(|(node, handle, host)| Step::Fixed {
                node,
                handle,
                host
            }),
            (0u8..40).prop_map(|handle| Step::Release { handle }),
            any::<u8>().prop_map(|host| Step::ReleaseIp { host }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn any_sequence_keeps_addresses_unique_and_release_restores(steps in prop::collection::vec(step(), 1..60)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let ipam = ipam_with_pool("10.79.0.0/25", 28).await;
                // handle -> address, as the model expects it.
                let mut model: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
                for s in steps {
                    match s {
                        Step::Alloc { node, handle } => {
                            let h = format!("h{handle}");
                            match ipam.allocate(&req(&h, &format!("n{node}"))).await {
                                Ok(a) => {
                                    if let Some(prev) = model.get(&h) { assert_eq!(*prev, a.ip); }
                                    model.insert(h, a.ip);
                                }
                                Err(IpamError::PoolExhausted { .. }) => assert_eq!(model.len(), 126),
                                Err(e) => panic!("{e}"),
                            }
                        }
                        Step::Fixed { node, handle, host } => {
                            let ip = Ipv4Addr::new(10, 79, 0, host % 128);
                            let h = format!("h{handle}");
                            match ipam.allocate(&fixed(&h, &format!("n{node}"), &ip.to_string())).await {
                                Ok(a) => { assert_eq!(a.ip, ip); model.insert(h, ip); }
                                Err(IpamError::AddressTaken { handle: holder, .. }) => {
                                    assert_eq!(model.get(&holder), Some(&ip));
                                }
                                Err(IpamError::HandleHoldsOther { .. }) => assert!(model.contains_key(&h)),
                                Err(IpamError::PoolEdge { .. }) => assert!(ip.octets()[3] == 0 || ip.octets()[3] == 127),
                                Err(e) => panic!("{e}"),
                            }
                        }
                        Step::Release { handle } => {
                            let h = format!("h{handle}");
                            let released = ipam.release_handle(&h).await.unwrap();
                            assert_eq!(released, model.remove(&h).into_iter().collect::<Vec<_>>());
                        }
                        Step::ReleaseIp { host } => {
                            let ip = Ipv4Addr::new(10, 79, 0, host % 128);
                            let holder = ipam.release_ip(ip).await.unwrap();
                            let expected = model.iter().find(|(_, v)| **v == ip).map(|(k, _)| k.clone());
                            assert_eq!(holder, expected);
                            if let Some(h) = expected { model.remove(&h); }
                        }
                    }
                    let live: BTreeSet<Ipv4Addr> = model.values().copied().collect();
                    assert_eq!(live.len(), model.len(), "two handles share an address");
                    let usage = ipam.usage().await.unwrap();
                    assert_eq!(usage.pools[0].allocated as usize, model.len());
                }
                assert!(ipam.check(false).await.unwrap().problems.is_empty());
                for h in model.keys().cloned().collect::<Vec<_>>() {
                    ipam.release_handle(&h).await.unwrap();
                }
                assert!(ipam_keys(ipam.store()).await.is_empty());
            });
        }
    }
}

/// The check reads pools, blocks, affinities and handles in listings of their own,
/// page by page; another node allocating and releasing between those pages must not
/// make it see half of a change (a block's allocation without its handle record, say):
/// every listing is at the revision of the first.
#[tokio::test]
async fn check_sees_one_revision_while_another_node_writes() {
    let store = MemoryStore::new().with_page_size(2);
    let ipam = Ipam::new(store.clone(), PREFIX);
    add_pool(&ipam, "p1", "10.81.0.0/24", 29).await;
    for i in 0..6 {
        ipam.allocate(&req(&format!("seed{i}"), "n1"))
            .await
            .unwrap();
    }
    let writer = {
        let other = Ipam::new(store.clone(), PREFIX);
        tokio::spawn(async move {
            for i in 0..200 {
                let handle = format!("w{i}");
                other.allocate(&req(&handle, "n2")).await.unwrap();
                if i % 3 != 0 {
                    other.release_handle(&handle).await.unwrap();
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut checks = 0;
    while !writer.is_finished() {
        let before = store.revision();
        let report = ipam.check(false).await.unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        checks += usize::from(store.revision() > before);
    }
    writer.await.unwrap();
    assert!(checks > 0, "no check ran while the other node wrote");
}

/// brindled's axum handlers and spawned tasks need every IPAM future to be `Send`.
#[test]
fn ipam_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let ipam = Ipam::new(MemoryStore::new(), PREFIX);
    let new_pool = NewPool::new("p", "10.83.0.0/24".parse().unwrap());
    assert_send(&ipam.add_pool(new_pool));
    assert_send(&ipam.remove_pool("p", true));
    assert_send(&ipam.update_pool("p", &brindle_ipam::pools::PoolUpdate::default()));
    assert_send(&ipam.allocate(&req("h", "n")));
    assert_send(&ipam.release_handle("h"));
    assert_send(&ipam.release_ip(Ipv4Addr::new(10, 83, 0, 1)));
    assert_send(&ipam.set_attributes("h", &BTreeMap::new()));
    assert_send(&ipam.check(true));
    assert_send(&ipam.usage());
}

/// `allocate_alongside` runs its work with the address its first transaction assigns,
/// and not again when a second process (same node, stale cache here) took that address
/// meanwhile: contended attempts do not each pay for the work. A repeated request
/// learns it holds an address from its failed compare, so its work ran for an address
/// it does not get (the caller undoes it).
#[tokio::test]
async fn work_alongside_an_allocation_runs_with_its_first_transaction_only() {
    use std::sync::Mutex;
    let ipam = ipam_with_pool("10.70.0.0/24", 26).await;
    let first = ipam.allocate(&req("ctr-1", "n1")).await.unwrap();
    // Another process of the same node takes the next free address; `ipam` does not
    // know, so its next plan picks that address and loses the compare.
    let other = Ipam::new(ipam.store().clone(), PREFIX);
    let taken = other.allocate(&req("ctr-2", "n1")).await.unwrap();
    let seen: Mutex<Vec<Ipv4Addr>> = Mutex::new(Vec::new());
    let work = |a: brindle_ipam::Assigned| -> futures::future::BoxFuture<'_, ()> {
        let seen = &seen;
        Box::pin(async move { seen.lock().unwrap().push(a.ip) })
    };
    let got = ipam
        .allocate_alongside(&req("ctr-3", "n1"), &|_| Vec::new(), &work)
        .await
        .unwrap();
    assert!(!got.existing);
    assert_ne!(got.ip, taken.ip);
    assert_ne!(got.ip, first.ip);
    // The first transaction lost its compare: the retry went without the work, which
    // the caller does after for the address it got.
    assert_eq!(*seen.lock().unwrap(), vec![taken.ip]);

    seen.lock().unwrap().clear();
    let again = ipam
        .allocate_alongside(&req("ctr-3", "n1"), &|_| Vec::new(), &work)
        .await
        .unwrap();
    assert!(again.existing);
    assert_eq!(again.ip, got.ip);
    let tried = seen.lock().unwrap().clone();
    assert_eq!(tried.len(), 1, "{tried:?}");
    assert_ne!(tried[0], got.ip);
    // Nothing was allocated for the address tried.
    assert_eq!(ipam.release_ip(tried[0]).await.unwrap(), None);
}

/// A reservation takes a free address of the node's own blocks without writing: none
/// before the node has a block (a claim is a write), then the next free one. Until it
/// is lifted, neither another reservation nor a dynamic allocation of this process
/// gets that address, while the fixed allocation the reserver makes later does; a
/// cache invalidation keeps it.
#[tokio::test]
async fn a_reserved_address_is_passed_by_until_allocated_or_unreserved() {
    let ipam = ipam_with_pool("10.70.0.0/24", 29).await;
    let before = ipam.store().revision();
    assert_eq!(
        ipam.reserve_in_own_blocks(&req("r1", "n1")).await.unwrap(),
        None
    );
    assert_eq!(ipam.store().revision(), before, "wrote nothing");

    let first = ipam.allocate(&req("ctr-1", "n1")).await.unwrap();
    let before = ipam.store().revision();
    let reserved = ipam
        .reserve_in_own_blocks(&req("r1", "n1"))
        .await
        .unwrap()
        .expect("the node's block has room");
    assert!(first.block.contains(reserved) && reserved != first.ip);
    let again = ipam.reserve_in_own_blocks(&req("r2", "n1")).await.unwrap();
    assert!(again.is_some_and(|ip| ip != reserved), "{again:?}");
    assert_eq!(ipam.store().revision(), before, "wrote nothing");
    ipam.invalidate().await;
    let dynamic = ipam.allocate(&req("ctr-2", "n1")).await.unwrap();
    assert!(
        dynamic.ip != reserved && Some(dynamic.ip) != again,
        "a dynamic allocation passes reservations by"
    );
    // The reserver allocates its address as a fixed one, then lifts the reservation.
    let fixed_later = ipam
        .allocate(&fixed("r1", "n1", &reserved.to_string()))
        .await
        .unwrap();
    assert_eq!(fixed_later.ip, reserved);
    ipam.unreserve(reserved);
    // A reservation lifted without an allocation frees its address for anyone.
    let again = again.unwrap();
    ipam.unreserve(again);
    let mut handed_out = Vec::new();
    for n in 3..10 {
        match ipam.allocate(&req(&format!("ctr-{n}"), "n1")).await {
            Ok(a) => handed_out.push(a.ip),
            Err(_) => break,
        }
    }
    assert!(handed_out.contains(&again), "{handed_out:?}");
}

/// `reserve` on a node without a block: an address of the block the node would claim
/// next, without a write. The fixed allocation made with it later claims the block for
/// the node; should another node claim that block first, the allocation borrows the
/// address from it instead of failing.
#[tokio::test]
async fn a_reservation_on_an_idle_node_lies_in_the_block_it_would_claim() {
    let ipam = ipam_with_pool("10.71.0.0/24", 29).await;
    let before = ipam.store().revision();
    let reserved = ipam
        .reserve(&req("r1", "n1"))
        .await
        .unwrap()
        .expect("a block is left to claim");
    assert_eq!(ipam.store().revision(), before, "wrote nothing");
    assert!(ipam.all_blocks().await.unwrap().is_empty());
    let dynamic = ipam.allocate(&req("ctr-1", "n1")).await.unwrap();
    assert_ne!(dynamic.ip, reserved, "a dynamic allocation passes it by");
    let fixed_later = ipam
        .allocate(&fixed("r1", "n1", &reserved.to_string()))
        .await
        .unwrap();
    assert_eq!(fixed_later.ip, reserved);
    let blocks = ipam.all_blocks().await.unwrap();
    let home = blocks
        .iter()
        .find(|b| b.cidr.contains(reserved))
        .expect("the reserved address's block");
    assert_eq!(home.affinity.as_deref(), Some("n1"));
    assert!(ipam.check(false).await.unwrap().problems.is_empty());

    // Node n3 reserves in the block it would claim; n2 claims that block first.
    let n3 = Ipam::new(ipam.store().clone(), PREFIX);
    let n2 = Ipam::new(ipam.store().clone(), PREFIX);
    let planned = n3.reserve(&req("r3", "n3")).await.unwrap().unwrap();
    let base = u32::from(planned) & !7;
    let neighbour = Ipv4Addr::from(if base + 1 == u32::from(planned) {
        base + 2
    } else {
        base + 1
    });
    let taken = n2
        .allocate(&fixed("taker", "n2", &neighbour.to_string()))
        .await
        .unwrap();
    assert!(
        taken.block.contains(planned),
        "n2 claimed the block n3 planned"
    );
    let late = n3
        .allocate(&fixed("r3", "n3", &planned.to_string()))
        .await
        .expect("the address is free: borrowed from n2's block");
    assert_eq!(late.ip, planned);
    let blocks = ipam.all_blocks().await.unwrap();
    let theirs = blocks.iter().find(|b| b.cidr.contains(planned)).unwrap();
    assert_eq!(theirs.affinity.as_deref(), Some("n2"));
    assert!(ipam.check(false).await.unwrap().problems.is_empty());
}
