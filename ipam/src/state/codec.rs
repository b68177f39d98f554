//! JSON encoding of stored records, with the key named in decode errors and the
//! revision each record was read at.

use std::cell::RefCell;

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

/// Largest stored value decoded (and written: the store's own limit).
pub use crate::store::MAX_RECORD_BYTES;

/// A stored value that is not a valid record of its type.
#[derive(Debug, thiserror::Error)]
#[error("stored record {key} {problem}; fix or delete it with etcdctl")]
pub struct CorruptRecord {
    /// The key.
    pub key: String,
    /// What is wrong with the value.
    #[source]
    pub problem: RecordProblem,
}

/// Why a stored value was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordProblem {
    /// Larger than [`MAX_RECORD_BYTES`].
    #[error("is {size} bytes long, more than the {limit} bytes a record may have")]
    TooLarge { size: usize, limit: usize },
    /// Not JSON, or JSON that is not (or breaks a rule of) the record type.
    #[error("is not a valid record of its type ({0})")]
    Invalid(#[from] serde_json::Error),
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

thread_local! {
    /// The key [`decode_value`] is decoding on this thread.
    static DECODING: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Calls `f` with the key of the stored record being deserialised on this thread, when
/// that happens inside [`decode_value`] (`None` otherwise). Records whose key repeats
/// one of their fields (a pool's name, a block's CIDR) check that the two agree: the
/// allocator reads and compares a record at the key its field gives, so a record at
/// another key would make every compare-and-swap on it fail until the retries run out.
pub fn with_decoding_key<R>(f: impl FnOnce(Option<&str>) -> R) -> R {
    DECODING.with(|key| f(key.borrow().as_deref()))
}

/// Sets the key [`with_decoding_key`] sees until dropped.
struct Decoding(Option<String>);

impl Decoding {
    fn of(key: &str) -> Self {
        Decoding(DECODING.with(|k| k.replace(Some(key.to_string()))))
    }
}

impl Drop for Decoding {
    fn drop(&mut self) {
        DECODING.with(|k| *k.borrow_mut() = self.0.take());
    }
}

/// Decode the value stored at `key` (a watch event, for instance). Record types check
/// their own rules while deserialising (see `brindle_ipam::model`), so a value another
/// tool wrote is an error naming `key`, never a panic later.
pub fn decode_value<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, StateError> {
    let corrupt = |problem| {
        StateError::Corrupt(CorruptRecord {
            key: key.to_string(),
            problem,
        })
    };
    if value.len() > MAX_RECORD_BYTES {
        return Err(corrupt(RecordProblem::TooLarge {
            size: value.len(),
            limit: MAX_RECORD_BYTES,
        }));
    }
    let _decoding = Decoding::of(key);
    serde_json::from_slice(value).map_err(|e| corrupt(RecordProblem::Invalid(e)))
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
                .starts_with("stored record /b/v1/x is not a valid record of its type"),
            "{err}"
        );
    }
    #[test]
    fn an_oversized_value_is_refused_before_parsing() {
        let big = vec![b' '; MAX_RECORD_BYTES + 1];
        let err = decode_value::<serde_json::Value>("/b/v1/ipam/blocks/x", &big).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("stored record /b/v1/ipam/blocks/x is 1572865 bytes long"),
            "{text}"
        );
        assert!(text.contains("1572864"), "{text}");
        // Just within the limit still decodes.
        let mut fits = vec![b' '; MAX_RECORD_BYTES - 2];
        fits.extend_from_slice(b"{}");
        assert!(decode_value::<serde_json::Value>("/k", &fits).is_ok());
    }
}
