//! Node registration: brindled writes its own record (`PREFIX/v1/nodes/NAME`: IP and
//! AS) with a compare-and-swap on the revision it read. `--node-ip` and `--as` win
//! over what is stored; what they leave out (the AS, a route-reflector cluster id set
//! with `brindle node set`) is kept.
//!
//! Before anything else, at start, brindled claims the node name for its machine
//! ([`claim_name`]: `PREFIX/v1/node-identity/NAME`, machine-id and boot id, one
//! compare-and-swap). Two hosts acting as one node would each release, sweep and
//! reconcile away the other's addresses, so a name another machine owns (a cloned
//! VM with the same hostname) stops brindled with an error naming that machine; the
//! same machine-id may take its name back (a restart, or a reboot: new boot id); a
//! dead machine's claim goes with `brindle node rm NAME`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use brindle_bgp::BgpNode;
use brindle_ipam::Store;
use tracing::{info, warn};

use brindle_ipam::Keys;

use crate::bgpstore::{self, BgpStoreError, Claim, NodeMachine, NodeUpdate};

/// This machine's identity: the machine-id and boot id files (brindled's
/// `--machine-id-file` and `--boot-id-file`) and the hostname.
pub fn machine_identity(
    machine_id_file: &Path,
    boot_id_file: &Path,
    hostname: String,
) -> std::io::Result<NodeMachine> {
    let read = |path: &Path, what: &str| {
        let text = std::fs::read_to_string(path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot read the {what} {} ({e}): brindled tells hosts sharing a node name apart by it",
                    path.display()
                ),
            )
        })?;
        let id = text.trim().to_string();
        if id.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the {what} {} is empty", path.display()),
            ));
        }
        Ok(id)
    };
    Ok(NodeMachine {
        machine_id: read(machine_id_file, "machine id")?,
        boot_id: read(boot_id_file, "boot id")?,
        hostname,
        since: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    })
}

/// Claims node `name` for machine `me`, retrying while etcd is unreachable; fails only
/// when another machine owns the name ([`BgpStoreError::NodeNameTaken`]) or the
/// name is invalid.
pub async fn claim_name<S: Store>(
    store: &S,
    keys: &Keys,
    name: &str,
    me: &NodeMachine,
) -> Result<Claim, BgpStoreError> {
    let mut failures = 0u32;
    loop {
        match bgpstore::claim_node(store, keys, name, me).await {
            Ok(claim) => {
                match &claim {
                    Claim::Rebooted(before) => {
                        info!(node = %name, machine_id = %me.machine_id, boot_id = %me.boot_id, previous_boot_id = %before, "node name claimed again after a reboot of this machine")
                    }
                    _ => {
                        info!(node = %name, machine_id = %me.machine_id, boot_id = %me.boot_id, "node name claimed for this machine")
                    }
                }
                return Ok(claim);
            }
            Err(e @ (BgpStoreError::Store(_) | BgpStoreError::Contention { .. })) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(60) {
                    warn!(error = %e, attempts = failures, "cannot claim the node name yet; retrying every second");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

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

    fn machine(id: &str, boot: &str, host: &str) -> NodeMachine {
        NodeMachine {
            machine_id: id.into(),
            boot_id: boot.into(),
            hostname: host.into(),
            since: 1,
        }
    }

    /// Cloned VMs: one node name, two machines. Registration is a compare-and-swap on
    /// the claim, so of two machines starting at once exactly one gets the name.
    #[tokio::test]
    async fn one_node_name_belongs_to_one_machine() {
        let store = MemoryStore::new();
        let keys = Keys::new("/b");
        let a = machine("aaaa", "boot-1", "vm-a");
        let b = machine("bbbb", "boot-2", "vm-a");
        let (ra, rb) = tokio::join!(
            claim_name(&store, &keys, "n1", &a),
            claim_name(&store, &keys, "n1", &b)
        );
        assert!(ra.is_ok() != rb.is_ok(), "{ra:?} {rb:?}");
        let (winner, loser) = if ra.is_ok() { (&a, &b) } else { (&b, &a) };
        // The loser again, once the winner registered its IP: refused, naming the
        // other host and the way out; the record is untouched.
        let ip: Ipv4Addr = "10.0.0.1".parse().unwrap();
        register(&store, &keys, "n1", Some(ip), None).await.unwrap();
        let err = claim_name(&store, &keys, "n1", loser).await.unwrap_err();
        let msg = err.to_string();
        for needle in [
            "node name \"n1\" is already used by another machine",
            "host vm-a",
            &format!("machine-id {}", winner.machine_id),
            "node IP 10.0.0.1",
            &format!("this host's machine-id is {}", loser.machine_id),
            "`brindle node rm n1`",
        ] {
            assert!(msg.contains(needle), "{needle:?} not in: {msg}");
        }
        let owner = bgpstore::node_machine(&store, &keys, "n1").await.unwrap();
        assert_eq!(owner.as_ref(), Some(winner));

        // The winner restarts (same boot) and after a reboot (new boot id).
        assert_eq!(
            claim_name(&store, &keys, "n1", winner).await.unwrap(),
            Claim::Restarted
        );
        let rebooted = NodeMachine {
            boot_id: "boot-3".into(),
            ..winner.clone()
        };
        assert_eq!(
            claim_name(&store, &keys, "n1", &rebooted).await.unwrap(),
            Claim::Rebooted(winner.boot_id.clone())
        );
        assert_eq!(
            bgpstore::node_machine(&store, &keys, "n1")
                .await
                .unwrap()
                .unwrap()
                .boot_id,
            "boot-3"
        );

        // The winner is retired: `brindle node rm n1` frees the name.
        let removed = bgpstore::remove_node(&store, &keys, "n1").await.unwrap();
        assert_eq!(removed.node.map(|n| n.ip), Some(ip));
        assert_eq!(
            removed.machine.map(|m| m.boot_id).as_deref(),
            Some("boot-3")
        );
        assert_eq!(
            claim_name(&store, &keys, "n1", loser).await.unwrap(),
            Claim::New
        );
        // A node registered without an IP has only its claim; rm removes that too.
        bgpstore::remove_node(&store, &keys, "n1").await.unwrap();
        assert!(matches!(
            bgpstore::remove_node(&store, &keys, "n1").await,
            Err(BgpStoreError::NoSuchNode(_))
        ));
    }

    #[test]
    fn machine_identity_comes_from_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let (m, b) = (dir.path().join("machine-id"), dir.path().join("boot_id"));
        std::fs::write(&m, "0123abcd\n").unwrap();
        std::fs::write(&b, "6f1c-boot\n").unwrap();
        let id = machine_identity(&m, &b, "h".into()).unwrap();
        assert_eq!(
            (id.machine_id.as_str(), id.boot_id.as_str()),
            ("0123abcd", "6f1c-boot")
        );
        std::fs::write(&m, "\n").unwrap();
        assert!(machine_identity(&m, &b, "h".into()).is_err());
        let e = machine_identity(&dir.path().join("none"), &b, "h".into()).unwrap_err();
        assert!(e.to_string().contains("cannot read the machine id"), "{e}");
    }

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
