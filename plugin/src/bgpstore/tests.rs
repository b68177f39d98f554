use super::*;
use brindle_ipam::store::{Op, Txn};
use brindle_ipam::{Allocation, MemoryStore};

fn keys() -> Keys {
    Keys::new("/t")
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

// `key_layout` moved to `brindle_ipam::state::keys` with the keys.

#[tokio::test]
async fn global_defaults_then_update() {
    let store = MemoryStore::new();
    let k = keys();
    let (g, rev) = get_global(&store, &k).await.unwrap();
    assert_eq!((g.as_num, g.node_mesh, rev), (64512, true, None));
    let g = update_global(&store, &k, |g| {
        g.as_num = 65001;
        g.node_mesh = false;
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!((g.as_num, g.node_mesh), (65001, false));
    let (stored, rev) = get_global(&store, &k).await.unwrap();
    assert_eq!(stored, g);
    assert!(rev.is_some());
    let err = update_global(&store, &k, |g| {
        g.restart_time = Some(0);
        Ok(())
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("restart_time"), "{err}");
    assert_eq!(get_global(&store, &k).await.unwrap().0, g, "unchanged");
}

#[tokio::test]
async fn nodes_create_update_and_refuse_shared_ip() {
    let store = MemoryStore::new();
    let k = keys();
    let err = set_node(&store, &k, "a", &NodeUpdate::default())
        .await
        .unwrap_err();
    assert!(matches!(err, BgpStoreError::NodeNeedsIp(_)), "{err}");
    let w = set_node(
        &store,
        &k,
        "a",
        &NodeUpdate {
            ip: Some(ip("10.0.0.1")),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(w.created && w.changed);
    let w = set_node(
        &store,
        &k,
        "a",
        &NodeUpdate {
            as_num: Some(Some(65001)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((w.node.ip, w.node.as_num), (ip("10.0.0.1"), Some(65001)));
    assert!(!w.created && w.changed);
    let same = set_node(
        &store,
        &k,
        "a",
        &NodeUpdate {
            ip: Some(ip("10.0.0.1")),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(!same.changed);
    let err = set_node(
        &store,
        &k,
        "b",
        &NodeUpdate {
            ip: Some(ip("10.0.0.1")),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "IP 10.0.0.1 is already the IP of node \"a\"; every node needs its own address"
    );
    let err = set_node(
        &store,
        &k,
        "b",
        &NodeUpdate {
            ip: Some(ip("0.0.0.0")),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("0.0.0.0"), "{err}");
    assert_eq!(list_nodes(&store, &k).await.unwrap().len(), 1);
    let removed = remove_node(&store, &k, "a").await.unwrap();
    assert_eq!(removed.node.map(|n| n.name).as_deref(), Some("a"));
    assert!(matches!(
        remove_node(&store, &k, "a").await,
        Err(BgpStoreError::NoSuchNode(_))
    ));
}

#[tokio::test]
async fn peers_add_list_remove() {
    let store = MemoryStore::new();
    let k = keys();
    let tor = BgpPeer {
        name: "tor".into(),
        peer_ip: ip("10.0.0.254"),
        as_num: 65000,
        node: None,
        password: Some("s3cret".into()),
        passive: false,
        allow_local_as: None,
    };
    add_peer(&store, &k, &tor).await.unwrap();
    assert!(matches!(
        add_peer(&store, &k, &tor).await,
        Err(BgpStoreError::PeerExists(_))
    ));
    let dup = BgpPeer {
        name: "tor2".into(),
        ..tor.clone()
    };
    let err = add_peer(&store, &k, &dup).await.unwrap_err();
    assert!(err.to_string().contains("used twice"), "{err}");
    let on_node = BgpPeer {
        name: "tor2".into(),
        node: Some("a".into()),
        password: None,
        ..tor.clone()
    };
    add_peer(&store, &k, &on_node).await.unwrap();
    let bad = BgpPeer {
        name: "bad name".into(),
        ..tor.clone()
    };
    assert!(add_peer(&store, &k, &bad).await.is_err());
    let peers = list_peers(&store, &k).await.unwrap();
    assert_eq!(peers, vec![tor.clone(), on_node]);
    assert_eq!(remove_peer(&store, &k, "tor").await.unwrap(), tor);
    assert!(matches!(
        remove_peer(&store, &k, "tor").await,
        Err(BgpStoreError::NoSuchPeer(_))
    ));
}

#[tokio::test]
async fn corrupt_record_is_named() {
    let store = MemoryStore::new();
    let k = keys();
    store
        .txn(Txn {
            compares: vec![],
            ops: vec![Op::Put {
                key: k.node("x"),
                value: b"{not json".to_vec(),
            }],
            read_on_conflict: vec![],
        })
        .await
        .unwrap();
    let err = list_nodes(&store, &k).await.unwrap_err();
    assert!(err.to_string().starts_with("stored record /t/v1/nodes/x"));
}

#[test]
fn view_from_blocks_marks_borrowed_addresses() {
    let alloc = |node: Option<&str>| Allocation {
        handle: "h".into(),
        attrs: node
            .map(|n| BTreeMap::from([("node".to_string(), n.to_string())]))
            .unwrap_or_default(),
    };
    let blocks = vec![
        Block {
            cidr: "10.1.0.0/26".parse().unwrap(),
            pool: "p".into(),
            affinity: Some("a".into()),
            allocations: BTreeMap::from([
                (ip("10.1.0.1"), alloc(Some("a"))),
                (ip("10.1.0.2"), alloc(Some("b"))),
                (ip("10.1.0.3"), alloc(None)),
            ]),
            cursor: 0,
        },
        Block {
            cidr: "10.1.0.64/26".parse().unwrap(),
            pool: "p".into(),
            affinity: None,
            allocations: BTreeMap::from([(ip("10.1.0.70"), alloc(Some("c")))]),
            cursor: 0,
        },
    ];
    let pools = vec![Pool {
        name: "p".into(),
        cidr: "10.1.0.0/16".parse().unwrap(),
        block_size: 26,
        disabled: true,
        reserved: Default::default(),
        deleting: false,
        deleting_since: None,
        nat_outgoing: false,
    }];
    let v = routing_view(&blocks, &pools);
    assert_eq!(v.blocks.len(), 2);
    assert_eq!(v.blocks[0].node.as_deref(), Some("a"));
    assert_eq!(v.blocks[1].node, None);
    let borrowed: Vec<(String, String)> = v
        .borrowed
        .iter()
        .map(|b| (b.ip.to_string(), b.node.clone()))
        .collect();
    assert_eq!(
        borrowed,
        [
            ("10.1.0.2".to_string(), "b".to_string()),
            ("10.1.0.70".to_string(), "c".to_string())
        ]
    );
    assert!(v.pools[0].disabled);
}
