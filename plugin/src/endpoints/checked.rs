//! The rules a stored [`EndpointRecord`] keeps, checked as it is deserialised (also
//! as the base of the Docker driver's record, which flattens it). [`EndpointRecord`]
//! derives its field-by-field serde code under `#[serde(remote = "Self")]`; the trait
//! impls here call that code, then [`EndpointRecord::check`] and, for a record read
//! from the store, [`EndpointRecord::check_key`].
//!
//! Why each rule: the agent routes `ip` through `host_ifname` (a kernel interface name
//! of at most 15 bytes) and deletes records at the key their `node` and `id` give, so
//! a record at another key could never be deleted by its owner.

use std::net::Ipv4Addr;

use brindle_ipam::state::with_decoding_key;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::EndpointRecord;

/// Longest id, node, handle, container id, network or segment: as long as an IPAM
/// handle may be (250), with room for the `docker:`/`cni:` segment prefixes and a
/// Docker network's several pool ids.
pub const MAX_ENDPOINT_NAME: usize = 1024;

/// Longest host interface name: the kernel's `IFNAMSIZ` less its terminating zero.
pub const MAX_IFNAME: usize = 15;

impl EndpointRecord {
    /// The record's own rules: names bounded, addresses usable.
    pub fn check(&self) -> Result<(), String> {
        for (field, value) in [
            ("id", Some(&self.id)),
            ("node", Some(&self.node)),
            ("handle", Some(&self.handle)),
        ] {
            key_segment(field, value.map(String::as_str))?;
        }
        for (field, value) in [
            ("orchestrator", Some(&self.orchestrator)),
            ("network", Some(&self.network)),
            ("container_id", self.container_id.as_ref()),
            ("segment", self.segment.as_ref()),
        ] {
            bounded(field, value.map(String::as_str))?;
        }
        if self.host_ifname.len() > MAX_IFNAME
            || !self
                .host_ifname
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/')
        {
            return Err(format!(
                "host_ifname {:?} is no interface name (at most {MAX_IFNAME} printable bytes, no '/')",
                self.host_ifname
            ));
        }
        container_address(self.ip)?;
        if let Some(mac) = &self.mac {
            if !is_mac(mac) {
                return Err(format!(
                    "mac {mac:?} is no MAC address (expected six hex pairs such as ee:ee:ee:ee:ee:ee)"
                ));
            }
        }
        Ok(())
    }

    /// A record is stored at `PREFIX/v1/endpoints/NODE/ID` of its own `node` and `id`.
    pub fn check_key(&self, key: &str) -> Result<(), String> {
        let mut segments = key.rsplit('/');
        let (id, node) = (segments.next(), segments.next());
        if id == Some(self.id.as_str()) && node == Some(self.node.as_str()) {
            Ok(())
        } else {
            Err(format!(
                "endpoint {:?} of node {:?} is not stored at the key of its node and id",
                self.id, self.node
            ))
        }
    }
}

/// A name that is also a key segment: 1 to [`MAX_ENDPOINT_NAME`] printable bytes
/// without '/'.
fn key_segment(field: &str, value: Option<&str>) -> Result<(), String> {
    bounded(field, value)?;
    match value {
        Some(v) if v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic() && b != b'/') => {
            Err(format!(
                "{field} {v:?} is not a key segment (printable characters without spaces or '/')"
            ))
        }
        _ => Ok(()),
    }
}

fn bounded(field: &str, value: Option<&str>) -> Result<(), String> {
    match value {
        Some(v) if v.len() > MAX_ENDPOINT_NAME => Err(format!(
            "{field} is {} bytes long, more than the {MAX_ENDPOINT_NAME} an endpoint field may have",
            v.len()
        )),
        _ => Ok(()),
    }
}

/// An address a container can hold: unicast, not loopback.
fn container_address(ip: Ipv4Addr) -> Result<(), String> {
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        Err(format!("ip {ip} is no container address"))
    } else {
        Ok(())
    }
}

/// Six hex pairs separated by ':' (as Docker and brindle write them) or '-'.
fn is_mac(text: &str) -> bool {
    let pairs: Vec<&str> = text.split([':', '-']).collect();
    pairs.len() == 6
        && pairs
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Serialize for EndpointRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        EndpointRecord::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for EndpointRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let record = EndpointRecord::deserialize(deserializer)?;
        record.check().map_err(D::Error::custom)?;
        with_decoding_key(|key| key.map_or(Ok(()), |key| record.check_key(key)))
            .map_err(D::Error::custom)?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use brindle_ipam::state::{decode_value, encode};
    use brindle_ipam::Keys;

    use super::*;

    fn record() -> EndpointRecord {
        EndpointRecord {
            id: "c0ffee+eth0".into(),
            node: "n1".into(),
            orchestrator: "cni".into(),
            container_id: Some("c0ffee".into()),
            network: "net".into(),
            ip: "10.0.0.5".parse().unwrap(),
            mac: Some("ee:ee:ee:ee:ee:ee".into()),
            host_ifname: "brlc0ffee".into(),
            handle: "c0ffee+eth0".into(),
            segment: Some("cni:net".into()),
            allow_from: Vec::new(),
        }
    }

    /// The error decoding `value` at the record's own key gives.
    fn refused(value: &serde_json::Value) -> String {
        let key = Keys::new("/t").endpoint("n1", "c0ffee+eth0");
        let bytes = serde_json::to_vec(value).unwrap();
        let err = decode_value::<EndpointRecord>(&key, &bytes).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with(&format!("stored record {key} ")), "{text}");
        text
    }

    #[test]
    fn records_the_writers_produce_decode() {
        let keys = Keys::new("/t");
        let r = record();
        let key = keys.endpoint(&r.node, &r.id);
        let back: EndpointRecord = decode_value(&key, &encode(&r)).unwrap();
        assert_eq!(back, r);
        // Written before isolation and MACs existed.
        let old = EndpointRecord {
            mac: None,
            segment: None,
            container_id: None,
            ..r
        };
        assert!(decode_value::<EndpointRecord>(&key, &encode(&old)).is_ok());
    }

    #[test]
    fn a_record_at_the_key_of_another_endpoint_is_corrupt() {
        let keys = Keys::new("/t");
        let bytes = encode(&record());
        for key in [
            keys.endpoint("n2", "c0ffee+eth0"),
            keys.endpoint("n1", "other"),
        ] {
            let err = decode_value::<EndpointRecord>(&key, &bytes).unwrap_err();
            assert!(
                err.to_string()
                    .contains("is not stored at the key of its node and id"),
                "{err}"
            );
        }
    }

    #[test]
    fn records_breaking_a_rule_are_corrupt() {
        let base = serde_json::to_value(record()).unwrap();
        let with = |field: &str, value: serde_json::Value| {
            let mut v = base.clone();
            v[field] = value;
            v
        };
        let cases = [
            (
                with("host_ifname", "brl0123456789abcdef".into()),
                "no interface name",
            ),
            (
                with("ip", "0.0.0.0".into()),
                "ip 0.0.0.0 is no container address",
            ),
            (with("ip", "224.0.0.1".into()), "is no container address"),
            (with("mac", "ee:ee:ee".into()), "is no MAC address"),
            (
                with("handle", "a/b".into()),
                "handle \"a/b\" is not a key segment",
            ),
            (
                with("network", "n".repeat(MAX_ENDPOINT_NAME + 1).into()),
                "network is 1025 bytes long",
            ),
            (with("ip", "10.0.0.300".into()), "not a valid record"),
        ];
        for (value, want) in cases {
            let err = refused(&value);
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    /// The write side: a record too large for any reader is refused before it is
    /// sent, naming its key and the limit (here: an endpoint allowing 150,000 sources).
    #[tokio::test]
    async fn a_record_too_large_to_read_back_is_never_written() {
        use brindle_ipam::store::Store;
        use brindle_ipam::MemoryStore;
        let (store, keys) = (MemoryStore::new(), Keys::new("/t"));
        let mut huge = record();
        huge.allow_from = (1..=150_000u32)
            .map(|i| ipnetwork::Ipv4Network::new(Ipv4Addr::from(i << 8), 24).unwrap())
            .collect();
        let key = keys.endpoint(&huge.node, &huge.id);
        let err = super::super::put_endpoint(&store, &keys, &huge)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("record {key} would be "))
                && err.contains("more than the 1572864 bytes"),
            "{err}"
        );
        assert_eq!(store.get(&key).await.unwrap(), None);
    }
}
