//! Node registration: brindled writes its own record (`PREFIX/v1/nodes/NAME`: IP and
//! AS) with a compare-and-swap on the revision it read. `--node-ip` and `--as` win
//! over what is stored; what they leave out (the AS, a route-reflector cluster id set
//! with `brindle node set`) is kept.

use std::net::Ipv4Addr;

use brindle_bgp::BgpNode;
use brindle_ipam::Store;

use brindle_ipam::Keys;

use crate::bgpstore::{self, BgpStoreError, NodeUpdate};

/// What registration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// The record is in etcd as shown.
    Node(BgpNode),
    /// No `--node-ip` and no stored record: the node takes part in routing only
    /// once someone gives it an IP (`brindle node set NAME --ip ADDR`).
    NoIp,
}

/// Registers node `name` with `ip`/`as_num` (each `None` = keep the stored value).
pub async fn register<S: Store>(
    store: &S,
    keys: &Keys,
    name: &str,
    ip: Option<Ipv4Addr>,
    as_num: Option<u32>,
) -> Result<Registered, BgpStoreError> {
    let update = NodeUpdate {
        ip,
        as_num: as_num.map(Some),
        rr_cluster_id: None,
    };
    match bgpstore::set_node(store, keys, name, &update).await {
        Ok(w) => Ok(Registered::Node(w.node)),
        Err(BgpStoreError::NodeNeedsIp(_)) => Ok(Registered::NoIp),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brindle_ipam::MemoryStore;

    #[tokio::test]
    async fn registers_keeps_unset_fields_and_refuses_a_taken_ip() {
        let store = MemoryStore::new();
        let keys = Keys::new("/b");
        assert_eq!(
            register(&store, &keys, "n1", None, None).await.unwrap(),
            Registered::NoIp
        );
        let ip: Ipv4Addr = "10.0.0.1".parse().unwrap();
        let Registered::Node(n) = register(&store, &keys, "n1", Some(ip), Some(65001))
            .await
            .unwrap()
        else {
            panic!("registered")
        };
        assert_eq!((n.ip, n.as_num), (ip, Some(65001)));
        // An operator makes it a route reflector; a restart without --as keeps both.
        bgpstore::set_node(
            &store,
            &keys,
            "n1",
            &NodeUpdate {
                rr_cluster_id: Some(Some("1.1.1.1".parse().unwrap())),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let Registered::Node(n) = register(&store, &keys, "n1", Some(ip), None).await.unwrap()
        else {
            panic!("registered")
        };
        assert_eq!(n.as_num, Some(65001));
        assert!(n.rr_cluster_id.is_some());
        let err = register(&store, &keys, "n2", Some(ip), None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("already the IP of node \"n1\""));
    }
}
