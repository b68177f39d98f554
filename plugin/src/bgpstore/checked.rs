//! The rules a stored BGP record keeps, checked as it is read: the validation every
//! write already passes (`brindle_bgp::validate_*`: names, unicast addresses, AS
//! numbers, timers, password lengths) and, for nodes and peers, the name agreeing with
//! the key. A record another tool wrote is an error naming its key, never a BIRD
//! configuration that fails to load or a node that peers under another node's name
//! (and could not be removed by it: `node rm` and `bgp peer rm` act on the key their
//! name gives).
//!
//! The record types live in `brindle-bgp`, whose serde code stays plain; [`Checked`]
//! wraps their deserialisation here, where they are read from the store.

use brindle_bgp::{validate_global, validate_node, validate_peer, BgpGlobal, BgpNode, BgpPeer};
use brindle_ipam::state::{self, with_decoding_key, StateError};
use brindle_ipam::store::Store;
use brindle_ipam::Versioned;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

use super::NodeMachine;

/// Longest machine-id, boot id or hostname kept in a node's identity record (a
/// hostname has at most 253 bytes, the ids 32 and 36).
pub const MAX_MACHINE_FIELD: usize = 256;

/// A record type of the BGP store, with the rules a stored one keeps.
pub trait StoredRecord: DeserializeOwned {
    /// The record's own rules.
    fn check(&self) -> Result<(), String>;
    /// The record agrees with the key it is stored at.
    fn check_key(&self, key: &str) -> Result<(), String>;
}

/// Deserialises a `T`, then checks it, and its key when read from the store.
struct Checked<T>(T);

impl<'de, T: StoredRecord> Deserialize<'de> for Checked<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let record = T::deserialize(deserializer)?;
        record.check().map_err(D::Error::custom)?;
        with_decoding_key(|key| key.map_or(Ok(()), |key| record.check_key(key)))
            .map_err(D::Error::custom)?;
        Ok(Checked(record))
    }
}

/// Decode and check the value stored at `key` (a watch event, say).
pub fn decode<T: StoredRecord>(key: &str, value: &[u8]) -> Result<T, StateError> {
    state::decode_value::<Checked<T>>(key, value).map(|c| c.0)
}

/// One checked record with its revision; `None` when absent.
pub(super) async fn read<T: StoredRecord>(
    store: &impl Store,
    key: &str,
) -> Result<Option<Versioned<T>>, StateError> {
    Ok(state::read::<Checked<T>>(store, key).await?.map(unchecked))
}

/// Every checked record under `prefix`, sorted by key.
pub(super) async fn read_all<T: StoredRecord>(
    store: &impl Store,
    prefix: &str,
) -> Result<Vec<Versioned<T>>, StateError> {
    let all = state::read_all::<Checked<T>>(store, prefix).await?;
    Ok(all.into_iter().map(unchecked).collect())
}

/// Every checked record under `prefix` with its key, sorted by key.
pub(super) async fn read_entries<T: StoredRecord>(
    store: &impl Store,
    prefix: &str,
) -> Result<Vec<(String, Versioned<T>)>, StateError> {
    let all = state::read_entries::<Checked<T>>(store, prefix).await?;
    Ok(all.into_iter().map(|(k, v)| (k, unchecked(v))).collect())
}

fn unchecked<T>(read: Versioned<Checked<T>>) -> Versioned<T> {
    Versioned {
        value: read.value.0,
        revision: read.revision,
    }
}

/// `name` is the last segment of `key`.
fn named_by_key(what: &str, name: &str, key: &str) -> Result<(), String> {
    if key.rsplit('/').next() == Some(name) {
        Ok(())
    } else {
        Err(format!(
            "{what} {name:?} is not stored at the key of its name"
        ))
    }
}

impl StoredRecord for BgpNode {
    fn check(&self) -> Result<(), String> {
        validate_node(self).map_err(|e| e.to_string())
    }
    fn check_key(&self, key: &str) -> Result<(), String> {
        named_by_key("node", &self.name, key)
    }
}

impl StoredRecord for BgpPeer {
    fn check(&self) -> Result<(), String> {
        validate_peer(self).map_err(|e| e.to_string())
    }
    fn check_key(&self, key: &str) -> Result<(), String> {
        named_by_key("BGP peer", &self.name, key)
    }
}

impl StoredRecord for BgpGlobal {
    fn check(&self) -> Result<(), String> {
        validate_global(self).map_err(|e| e.to_string())
    }
    /// One record at one key: nothing in it names the key.
    fn check_key(&self, _key: &str) -> Result<(), String> {
        Ok(())
    }
}

impl StoredRecord for NodeMachine {
    fn check(&self) -> Result<(), String> {
        for (field, value) in [
            ("machine_id", &self.machine_id),
            ("boot_id", &self.boot_id),
            ("hostname", &self.hostname),
        ] {
            if value.len() > MAX_MACHINE_FIELD {
                return Err(format!(
                    "{field} is {} bytes long, more than the {MAX_MACHINE_FIELD} it may have",
                    value.len()
                ));
            }
        }
        Ok(())
    }
    /// The node name is only in the key.
    fn check_key(&self, _key: &str) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use brindle_ipam::Keys;
    use serde_json::json;

    use super::*;

    /// The error decoding `value` as a `T` at `key` gives, checked to name the key.
    fn refused<T: StoredRecord + std::fmt::Debug>(key: &str, value: serde_json::Value) -> String {
        let bytes = serde_json::to_vec(&value).unwrap();
        let err = decode::<T>(key, &bytes).unwrap_err().to_string();
        assert!(err.starts_with(&format!("stored record {key} ")), "{err}");
        err
    }

    #[test]
    fn nodes_are_checked_against_their_key_and_rules() {
        let keys = Keys::new("/t");
        let node = json!({"name": "n1", "ip": "10.0.0.1", "as_num": 65001});
        let ok: BgpNode = decode(&keys.node("n1"), node.to_string().as_bytes()).unwrap();
        assert_eq!(ok.name, "n1");
        let err = refused::<BgpNode>(&keys.node("n2"), node);
        assert!(
            err.contains("node \"n1\" is not stored at the key of its name"),
            "{err}"
        );
        let err = refused::<BgpNode>(&keys.node("n1"), json!({"name": "n1", "ip": "0.0.0.0"}));
        assert!(err.contains("0.0.0.0"), "{err}");
        let err = refused::<BgpNode>(
            &keys.node("n1"),
            json!({"name": "n1", "ip": "10.0.0.1", "as_num": 0}),
        );
        assert!(err.contains("AS"), "{err}");
    }

    #[test]
    fn peers_are_checked_against_their_key_and_rules() {
        let keys = Keys::new("/t");
        let peer = json!({"name": "tor", "peer_ip": "10.0.0.254", "as_num": 65000});
        assert!(decode::<BgpPeer>(&keys.bgp_peer("tor"), peer.to_string().as_bytes()).is_ok());
        let err = refused::<BgpPeer>(&keys.bgp_peer("tor2"), peer);
        assert!(
            err.contains("BGP peer \"tor\" is not stored at the key of its name"),
            "{err}"
        );
        let long = "x".repeat(81);
        let err = refused::<BgpPeer>(
            &keys.bgp_peer("tor"),
            json!({"name": "tor", "peer_ip": "10.0.0.254", "as_num": 65000, "password": long}),
        );
        assert!(err.contains("password"), "{err}");
        let err = refused::<BgpPeer>(
            &keys.bgp_peer("tor"),
            json!({"name": "tor", "peer_ip": "255.255.255.255", "as_num": 65000}),
        );
        assert!(err.contains("broadcast"), "{err}");
    }

    #[test]
    fn the_global_record_keeps_the_rules_of_bgp_set() {
        let key = Keys::new("/t").bgp_global();
        let g: BgpGlobal = decode(&key, br#"{"as_num": 65010}"#).unwrap();
        assert_eq!((g.as_num, g.node_mesh), (65010, true));
        let err = refused::<BgpGlobal>(&key, json!({"restart_time": 0}));
        assert!(err.contains("restart_time"), "{err}");
        refused::<BgpGlobal>(&key, json!({"as_num": "many"}));
    }

    #[test]
    fn machine_records_are_bounded() {
        let key = Keys::new("/t").node_identity("n1");
        let me = json!({"machine_id": "m", "boot_id": "b", "hostname": "h", "since": 1});
        assert!(decode::<NodeMachine>(&key, me.to_string().as_bytes()).is_ok());
        let err = refused::<NodeMachine>(
            &key,
            json!({"machine_id": "m", "boot_id": "b", "hostname": "h".repeat(300)}),
        );
        assert!(err.contains("hostname is 300 bytes long"), "{err}");
    }
}
