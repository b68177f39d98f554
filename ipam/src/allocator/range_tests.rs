//! Range-restricted dynamic allocation ([`AllocRequest::range`]) on the in-process store.

use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::pools::NewPool;
use crate::{AllocRequest, Ipam, IpamError, MemoryStore};

async fn ipam_with_pool(cidr: &str, block_size: u8) -> Ipam<MemoryStore> {
    let ipam = Ipam::new(MemoryStore::new(), "/brindle");
    ipam.add_pool(NewPool {
        name: "p".into(),
        cidr: cidr.parse().unwrap(),
        block_size,
        disabled: false,
        reserved: BTreeSet::new(),
        nat_outgoing: false,
    })
    .await
    .unwrap();
    ipam
}

fn net(s: &str) -> Ipv4Network {
    s.parse().unwrap()
}

fn ranged(handle: &str, node: &str, range: &str) -> AllocRequest {
    AllocRequest {
        handle: handle.into(),
        node: node.into(),
        pool: Some("p".into()),
        range: Some(net(range)),
        ..AllocRequest::default()
    }
}

#[tokio::test]
async fn range_inside_one_block_hands_out_all_of_it_then_names_the_range() {
    let ipam = ipam_with_pool("10.70.0.0/24", 26).await;
    // Another node's ordinary allocation first: the range must not care.
    let other = AllocRequest {
        handle: "plain".into(),
        node: "n2".into(),
        ..AllocRequest::default()
    };
    ipam.allocate(&other).await.unwrap();
    let mut got = BTreeSet::new();
    for i in 0..4 {
        let a = ipam
            .allocate(&ranged(&format!("h{i}"), "n1", "10.70.0.200/30"))
            .await
            .unwrap();
        assert_eq!(a.block, net("10.70.0.192/26"));
        got.insert(a.ip);
    }
    let want: BTreeSet<Ipv4Addr> = (200..=203).map(|o| Ipv4Addr::new(10, 70, 0, o)).collect();
    assert_eq!(got, want, "every address of the range, its edges included");

    let err = ipam
        .allocate(&ranged("h4", "n1", "10.70.0.200/30"))
        .await
        .unwrap_err();
    assert!(matches!(err, IpamError::RangeExhausted { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "no free address left in 10.70.0.200/30 (pool p): every usable address there is allocated"
    );
    // Release one: the next ranged request gets exactly that one back.
    let freed = Ipv4Addr::new(10, 70, 0, 201);
    ipam.release_ip(freed).await.unwrap();
    let a = ipam
        .allocate(&ranged("h5", "n1", "10.70.0.200/30"))
        .await
        .unwrap();
    assert_eq!(a.ip, freed);
}

#[tokio::test]
async fn range_spanning_blocks_claims_only_blocks_it_touches_and_borrows_last() {
    let ipam = ipam_with_pool("10.71.0.0/24", 28).await;
    let range = "10.71.0.64/27"; // blocks .64/28 and .80/28
    let mut seen = HashSet::new();
    let mut blocks = BTreeSet::new();
    for i in 0..20 {
        let a = ipam
            .allocate(&ranged(&format!("a{i}"), "n1", range))
            .await
            .unwrap();
        assert!(net(range).contains(a.ip), "{} outside {range}", a.ip);
        assert!(seen.insert(a.ip), "{} handed out twice", a.ip);
        blocks.insert(a.block);
    }
    assert_eq!(
        blocks,
        BTreeSet::from([net("10.71.0.64/28"), net("10.71.0.80/28")])
    );
    let n1_blocks = ipam.blocks_of_node("n1").await;
    assert_eq!(
        n1_blocks, blocks,
        "claims stay inside the range and are n1's"
    );

    // n2 finds both blocks claimed by n1: it borrows the rest of the range.
    for i in 0..12 {
        let a = ipam
            .allocate(&ranged(&format!("b{i}"), "n2", range))
            .await
            .unwrap();
        assert!(net(range).contains(a.ip) && seen.insert(a.ip), "{}", a.ip);
    }
    assert!(
        ipam.blocks_of_node("n2").await.is_empty(),
        "n2 claimed none"
    );
    let err = ipam
        .allocate(&ranged("b12", "n2", range))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("no free address left in 10.71.0.64/27 (pool p)"),
        "{err}"
    );
    // Outside the range the pool still has room, for requests without a range.
    let plain = AllocRequest {
        handle: "plain".into(),
        node: "n2".into(),
        ..AllocRequest::default()
    };
    assert!(!net(range).contains(ipam.allocate(&plain).await.unwrap().ip));
}

#[tokio::test]
async fn excluded_addresses_and_pool_edges_are_skipped() {
    let ipam = ipam_with_pool("10.72.0.0/24", 26).await;
    // A Docker `--subnet 10.72.0.0/30` narrower than the pool: its network and
    // broadcast addresses are excluded; .0 is also the pool's own network address.
    let req = |h: &str| AllocRequest {
        exclude: BTreeSet::from([Ipv4Addr::new(10, 72, 0, 0), Ipv4Addr::new(10, 72, 0, 3)]),
        ..ranged(h, "n1", "10.72.0.0/30")
    };
    let a = ipam.allocate(&req("x1")).await.unwrap().ip;
    let b = ipam.allocate(&req("x2")).await.unwrap().ip;
    assert_eq!(
        BTreeSet::from([a, b]),
        BTreeSet::from([Ipv4Addr::new(10, 72, 0, 1), Ipv4Addr::new(10, 72, 0, 2)])
    );
    assert!(matches!(
        ipam.allocate(&req("x3")).await.unwrap_err(),
        IpamError::RangeExhausted { .. }
    ));
}

#[tokio::test]
async fn fixed_address_outside_the_range_is_still_allowed() {
    let ipam = ipam_with_pool("10.73.0.0/24", 26).await;
    let fixed = AllocRequest {
        ip: Some(Ipv4Addr::new(10, 73, 0, 9)),
        ..ranged("f", "n1", "10.73.0.200/30")
    };
    let a = ipam.allocate(&fixed).await.unwrap();
    assert_eq!(a.ip, Ipv4Addr::new(10, 73, 0, 9));
    // A repeated dynamic request of a handle holding an address outside the range
    // is refused, naming both.
    let again = ranged("f", "n1", "10.73.0.200/30");
    let err = ipam.allocate(&again).await.unwrap_err().to_string();
    assert!(
        err.contains("10.73.0.9") && err.contains("an address in 10.73.0.200/30"),
        "{err}"
    );
}

#[tokio::test]
async fn range_outside_the_pool_names_the_pool() {
    let ipam = ipam_with_pool("10.74.0.0/24", 26).await;
    let err = ipam
        .allocate(&ranged("o", "n1", "10.99.0.0/30"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "range 10.99.0.0/30 lies outside every pool it may use: p (10.74.0.0/24)"
    );
}

impl Ipam<MemoryStore> {
    /// The blocks affine to `node`, read from the store.
    async fn blocks_of_node(&self, node: &str) -> BTreeSet<Ipv4Network> {
        use crate::Store;
        self.store()
            .list_keys(&self.keys().node_affinities(node))
            .await
            .unwrap()
            .iter()
            .filter_map(|k| self.keys().parse_affinity(k).map(|(_, c)| c))
            .collect()
    }
}
