//! Typed access to one record or one prefix of records, and the single-key
//! compare-and-swap transactions the [`super::cas_loop`] attempts commit.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{decode, decode_all, encode, Versioned};
use super::StateError;
use crate::store::{Compare, Op, Store, Txn, TxnOutcome};

/// One record with the revision it was read at; `None` when absent.
pub async fn read<T: DeserializeOwned>(
    store: &impl Store,
    key: &str,
) -> Result<Option<Versioned<T>>, StateError> {
    match store.get(key).await? {
        Some(kv) => decode(&kv).map(Some),
        None => Ok(None),
    }
}

/// Every record under `prefix`, sorted by key.
pub async fn read_all<T: DeserializeOwned>(
    store: &impl Store,
    prefix: &str,
) -> Result<Vec<Versioned<T>>, StateError> {
    decode_all(&store.list(prefix).await?)
}

/// Every record under `prefix` with its key, sorted by key.
pub async fn read_entries<T: DeserializeOwned>(
    store: &impl Store,
    prefix: &str,
) -> Result<Vec<(String, Versioned<T>)>, StateError> {
    store
        .list(prefix)
        .await?
        .into_iter()
        .map(|kv| Ok((kv.key.clone(), decode(&kv)?)))
        .collect()
}

/// Create or replace one record, whatever is stored.
pub async fn put<T: Serialize>(store: &impl Store, key: &str, value: &T) -> Result<(), StateError> {
    store
        .txn(Txn {
            ops: vec![Op::Put {
                key: key.to_string(),
                value: encode(value),
            }],
            ..Txn::default()
        })
        .await?;
    Ok(())
}

/// Delete one record, whatever is stored; a missing one is fine.
pub async fn delete(store: &impl Store, key: &str) -> Result<(), StateError> {
    store
        .txn(Txn {
            ops: vec![Op::Delete {
                key: key.to_string(),
            }],
            ..Txn::default()
        })
        .await?;
    Ok(())
}

/// Put `value` at `key` if the key is still at revision `read` (`None`: still absent).
pub fn cas_put<T: Serialize>(key: &str, read: Option<i64>, value: &T) -> Txn {
    Txn {
        compares: vec![Compare::unchanged(key, read)],
        ops: vec![Op::Put {
            key: key.to_string(),
            value: encode(value),
        }],
        read_on_conflict: Vec::new(),
    }
}

/// Delete `key` if it is still at revision `read`.
pub fn cas_delete(key: &str, read: i64) -> Txn {
    Txn {
        compares: vec![Compare::unchanged(key, Some(read))],
        ops: vec![Op::Delete {
            key: key.to_string(),
        }],
        read_on_conflict: Vec::new(),
    }
}

/// One attempt of [`cas_put`]: whether it committed (false: the key changed).
pub async fn put_if<T: Serialize>(
    store: &impl Store,
    key: &str,
    read: Option<i64>,
    value: &T,
) -> Result<bool, StateError> {
    committed(store, cas_put(key, read, value)).await
}

/// One attempt of [`cas_delete`]: whether it committed (false: the key changed).
pub async fn delete_if(store: &impl Store, key: &str, read: i64) -> Result<bool, StateError> {
    committed(store, cas_delete(key, read)).await
}

async fn committed(store: &impl Store, txn: Txn) -> Result<bool, StateError> {
    Ok(matches!(
        store.txn(txn).await?,
        TxnOutcome::Committed { .. }
    ))
}
