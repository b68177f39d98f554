//! JSON encoding of stored records, with the key named in decode errors and the
//! revision each record was read at.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::StateError;
use crate::store::Kv;

/// A record together with the revision it was read at (etcd `mod_revision`): what a
/// compare-and-swap compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub revision: i64,
}

/// A stored value that is not valid JSON for its record type.
#[derive(Debug, thiserror::Error)]
#[error(
    "stored record {key} is not valid JSON for its type ({source}); fix or delete it with etcdctl"
)]
pub struct CorruptRecord {
    /// The key.
    pub key: String,
    /// What serde said.
    #[source]
    pub source: serde_json::Error,
}

/// Decode one stored record with its revision.
pub fn decode<T: DeserializeOwned>(kv: &Kv) -> Result<Versioned<T>, StateError> {
    Ok(Versioned {
        value: decode_value(&kv.key, &kv.value)?,
        revision: kv.mod_revision,
    })
}

/// Decode every record of a listing, in order.
pub fn decode_all<T: DeserializeOwned>(kvs: &[Kv]) -> Result<Vec<Versioned<T>>, StateError> {
    kvs.iter().map(decode).collect()
}

/// Decode the value stored at `key` (a watch event, for instance).
pub fn decode_value<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, StateError> {
    serde_json::from_slice(value).map_err(|source| {
        StateError::Corrupt(CorruptRecord {
            key: key.to_string(),
            source,
        })
    })
}

/// Encode a record for storing.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Our record types are plain data with string-keyed maps; serialising cannot fail.
    serde_json::to_vec(value).expect("stored records serialise to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_names_the_key_and_keeps_the_revision() {
        let kv = Kv {
            key: "/b/v1/pools/p".into(),
            value: br#"{"generation": 3}"#.to_vec(),
            mod_revision: 7,
        };
        let v: Versioned<serde_json::Value> = decode(&kv).unwrap();
        assert_eq!((v.value["generation"].as_u64(), v.revision), (Some(3), 7));
        let err = decode_value::<u32>("/b/v1/x", b"{").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("stored record /b/v1/x is not valid JSON"),
            "{err}"
        );
    }
}
