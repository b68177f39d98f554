//! Pool settings on the in-process store (same compare-and-swap semantics as etcd).

use std::collections::BTreeSet;

use brindle_ipam::pools::{NewPool, PoolUpdate};
use brindle_ipam::{AllocRequest, Ipam, IpamError, MemoryStore, Pool};

fn new_pool(name: &str, cidr: &str, nat_outgoing: bool) -> NewPool {
    NewPool {
        name: name.into(),
        cidr: cidr.parse().unwrap(),
        block_size: 26,
        disabled: false,
        reserved: BTreeSet::new(),
        nat_outgoing,
    }
}

fn nat(value: bool) -> PoolUpdate {
    PoolUpdate {
        nat_outgoing: Some(value),
    }
}

async fn stored(ipam: &Ipam<MemoryStore>, name: &str) -> Pool {
    let pools = ipam.list_pools().await.unwrap();
    pools.into_iter().find(|p| p.name == name).unwrap()
}

#[tokio::test]
async fn nat_outgoing_is_set_at_add_and_changed_by_update() {
    let ipam = Ipam::new(MemoryStore::new(), "/brindle");
    let added = ipam
        .add_pool(new_pool("out", "10.90.0.0/24", true))
        .await
        .unwrap();
    assert!(added.nat_outgoing);
    assert!(stored(&ipam, "out").await.nat_outgoing);
    ipam.add_pool(new_pool("routed", "10.91.0.0/24", false))
        .await
        .unwrap();

    let a = ipam
        .allocate(&AllocRequest {
            handle: "h1".into(),
            node: "n1".into(),
            pool: Some("routed".into()),
            ..AllocRequest::default()
        })
        .await
        .unwrap();

    let set = ipam.update_pool("routed", &nat(true)).await.unwrap();
    assert!(set.nat_outgoing);
    assert!(stored(&ipam, "routed").await.nat_outgoing);
    // Setting the same value again is a no-op, not an error.
    assert!(
        ipam.update_pool("routed", &nat(true))
            .await
            .unwrap()
            .nat_outgoing
    );
    let unset = ipam.update_pool("routed", &nat(false)).await.unwrap();
    assert!(!unset.nat_outgoing);
    assert!(!stored(&ipam, "routed").await.nat_outgoing);
    // An empty update changes nothing.
    let same = ipam
        .update_pool("out", &PoolUpdate::default())
        .await
        .unwrap();
    assert_eq!(same, stored(&ipam, "out").await);

    // Only the flag changed: allocations and the other settings are as they were.
    let pool = stored(&ipam, "routed").await;
    assert_eq!(pool.cidr, "10.91.0.0/24".parse().unwrap());
    assert_eq!(pool.block_size, 26);
    assert_eq!(ipam.addresses_of("h1").await.unwrap(), vec![a.ip]);
    let b = ipam
        .allocate(&AllocRequest {
            handle: "h2".into(),
            node: "n1".into(),
            pool: Some("routed".into()),
            ..AllocRequest::default()
        })
        .await
        .unwrap();
    assert_ne!(a.ip, b.ip);
}

#[test]
fn old_records_without_the_flag_read_as_off() {
    let pool: Pool = serde_json::from_str(
        r#"{"name":"p","cidr":"10.92.0.0/24","block_size":26,"disabled":false,"reserved":[]}"#,
    )
    .unwrap();
    assert!(!pool.nat_outgoing);
    // And the flag is left out when off, so such records stay as they were.
    assert!(!serde_json::to_string(&pool)
        .unwrap()
        .contains("nat_outgoing"));
}

#[tokio::test]
async fn updating_a_missing_pool_names_it_and_the_existing_ones() {
    let ipam = Ipam::new(MemoryStore::new(), "/brindle");
    let e = ipam.update_pool("nope", &nat(true)).await.unwrap_err();
    assert!(matches!(e, IpamError::PoolNotFound { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "no pool named \"nope\"; existing pools: none"
    );
    ipam.add_pool(new_pool("a", "10.93.0.0/24", false))
        .await
        .unwrap();
    let e = ipam.update_pool("b", &nat(true)).await.unwrap_err();
    assert_eq!(e.to_string(), "no pool named \"b\"; existing pools: a");
    // Nothing was created for the missing name.
    assert_eq!(ipam.list_pools().await.unwrap().len(), 1);
}
