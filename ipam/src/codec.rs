//! JSON encoding of stored records, with the key named in decode errors.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::IpamError;
use crate::store::Kv;

/// A record together with the revision it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub revision: i64,
}

pub fn decode<T: DeserializeOwned>(kv: &Kv) -> Result<Versioned<T>, IpamError> {
    let value = serde_json::from_slice(&kv.value).map_err(|source| IpamError::Corrupt {
        key: kv.key.clone(),
        source,
    })?;
    Ok(Versioned {
        value,
        revision: kv.mod_revision,
    })
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Our record types are plain data with string-keyed maps; serialising cannot fail.
    serde_json::to_vec(value).expect("IPAM records serialise to JSON")
}
