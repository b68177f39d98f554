//! The rules a stored [`Pool`], [`Block`] or [`HandleRecord`] must keep, checked as it
//! is deserialised. Each type derives its field-by-field serde code under
//! `#[serde(remote = "Self")]` (inherent `serialize`/`deserialize`); the trait impls
//! here call that code and then the type's check.
//!
//! The rules are the ones the writers already keep, chosen for what the arithmetic in
//! `cidr.rs` relies on: a block size from /20 to /32 inside its pool (no shift
//! overflows, at most 4096 addresses searched per block), and addresses inside the
//! block that holds them; and for what the compare-and-swaps rely on: a pool stored
//! at the key of its name, a block at the key of its CIDR.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Block, HandleRecord, Pool};
use crate::shape::{validate_pool_shape, MIN_BLOCK_SIZE};
use crate::state::{with_decoding_key, Keys};

impl Pool {
    /// The pool's CIDR and block size keep the rules of `pool add`.
    pub fn check(&self) -> Result<(), String> {
        validate_pool_shape(self.cidr, self.block_size).map_err(|e| e.to_string())
    }

    /// A pool is stored at the key of its name (`PREFIX/v1/pools/NAME`).
    pub fn check_key(&self, key: &str) -> Result<(), String> {
        match key.rsplit('/').next() {
            Some(last) if last == self.name => Ok(()),
            _ => Err(format!(
                "pool {:?} is not stored at the key of its name",
                self.name
            )),
        }
    }
}

impl Block {
    /// A block is a /20 to /32 and holds only its own addresses.
    pub fn check(&self) -> Result<(), String> {
        if !(MIN_BLOCK_SIZE..=32).contains(&self.cidr.prefix()) {
            return Err(format!(
                "block {} is not a /{MIN_BLOCK_SIZE} to /32",
                self.cidr
            ));
        }
        match self.allocations.keys().find(|ip| !self.cidr.contains(**ip)) {
            Some(ip) => Err(format!("block {} holds {ip}, outside it", self.cidr)),
            None => Ok(()),
        }
    }

    /// A block is stored at the key of its CIDR (`PREFIX/v1/ipam/blocks/A.B.C.D-N`).
    pub fn check_key(&self, key: &str) -> Result<(), String> {
        if Keys::cidr_of(key) == Some(self.cidr) {
            Ok(())
        } else {
            Err(format!(
                "block {} is not stored at the key of its CIDR",
                self.cidr
            ))
        }
    }
}

impl HandleRecord {
    /// Every address lies in the block it names, and that block is a valid one.
    pub fn check(&self) -> Result<(), String> {
        let bad = self
            .addresses
            .iter()
            .find(|(ip, block)| !block.contains(**ip) || block.prefix() < MIN_BLOCK_SIZE);
        match bad {
            Some((ip, block)) => Err(format!("address {ip} is not in a valid block {block}")),
            None => Ok(()),
        }
    }

    /// A handle record holds nothing its key names.
    pub fn check_key(&self, _key: &str) -> Result<(), String> {
        Ok(())
    }
}

/// Serialise with the derived code; deserialise with it, then `check`, and when the
/// record comes from the store (`state::decode_value`), `check_key` against its key.
macro_rules! checked_serde {
    ($($ty:ident),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                $ty::serialize(self, serializer)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = $ty::deserialize(deserializer)?;
                value.check().map_err(D::Error::custom)?;
                with_decoding_key(|key| key.map_or(Ok(()), |key| value.check_key(key)))
                    .map_err(D::Error::custom)?;
                Ok(value)
            }
        }
    )*};
}

checked_serde!(Pool, Block, HandleRecord);

/// Records another tool could have written. Before these checks each one made an
/// operation panic, search millions of addresses, or act on an address in the wrong
/// block; now it is an error naming the key.
#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use crate::store::{Op, Store, Txn};
    use crate::{AllocRequest, Ipam, MemoryStore};

    /// IPAM over a store holding exactly `records` (key below `/t/v1/`, raw value).
    async fn ipam_holding(records: &[(&str, &str)]) -> Ipam<MemoryStore> {
        let ipam = Ipam::new(MemoryStore::new(), "/t");
        let ops = records
            .iter()
            .map(|(key, value)| Op::Put {
                key: format!("/t/v1/{key}"),
                value: value.as_bytes().to_vec(),
            })
            .collect();
        ipam.store()
            .txn(Txn {
                ops,
                ..Txn::default()
            })
            .await
            .unwrap();
        ipam
    }

    fn request(ip: Option<&str>) -> AllocRequest {
        AllocRequest {
            handle: "h".into(),
            node: "n1".into(),
            ip: ip.map(|s| s.parse::<Ipv4Addr>().unwrap()),
            ..AllocRequest::default()
        }
    }

    /// The error of `allocate` over `records`, checked to name `key`.
    async fn allocation_error(records: &[(&str, &str)], key: &str, ip: Option<&str>) -> String {
        let ipam = ipam_holding(records).await;
        let err = ipam.allocate(&request(ip)).await.unwrap_err().to_string();
        assert!(
            err.contains(&format!("stored record /t/v1/{key} ")),
            "{err}"
        );
        err
    }

    const POOL: (&str, &str) = (
        "pools/p",
        r#"{"name":"p","cidr":"10.0.0.0/24","block_size":26}"#,
    );

    #[tokio::test]
    async fn a_pool_with_a_block_size_above_32_is_corrupt() {
        // Was: `block_of` panicked on "block size validated".
        let pool = r#"{"name":"p","cidr":"10.0.0.0/24","block_size":40}"#;
        let err = allocation_error(&[("pools/p", pool)], "pools/p", Some("10.0.0.5")).await;
        assert!(err.contains("block size /40"), "{err}");
    }

    #[tokio::test]
    async fn a_pool_with_blocks_larger_than_itself_is_corrupt() {
        // Was: `block_count` subtracted 24 from 22 (overflow panic).
        let pool = r#"{"name":"p","cidr":"10.0.0.0/24","block_size":22}"#;
        allocation_error(&[("pools/p", pool)], "pools/p", None).await;
    }

    #[tokio::test]
    async fn a_pool_of_huge_blocks_is_corrupt() {
        // Was: a dynamic allocation searched a block of 16 million addresses.
        let pool = r#"{"name":"p","cidr":"10.0.0.0/8","block_size":8}"#;
        allocation_error(&[("pools/p", pool)], "pools/p", None).await;
    }

    #[tokio::test]
    async fn a_block_larger_than_a_slash_20_is_corrupt() {
        // Was: taken as a block of 16 million addresses.
        let block = r#"{"cidr":"10.0.0.0/8","pool":"p","affinity":"n1"}"#;
        let records = [POOL, ("ipam/blocks/10.0.0.0-26", block)];
        let err = allocation_error(&records, "ipam/blocks/10.0.0.0-26", Some("10.0.0.5")).await;
        assert!(
            err.contains("block 10.0.0.0/8 is not a /20 to /32"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_block_holding_an_address_outside_it_is_corrupt() {
        // Was: accepted, so the address counted as held in a block it is not in.
        let block = r#"{"cidr":"10.0.0.0/26","pool":"p","affinity":"n1",
            "allocations":{"10.9.9.9":{"handle":"x"}}}"#;
        let records = [POOL, ("ipam/blocks/10.0.0.0-26", block)];
        let err = allocation_error(&records, "ipam/blocks/10.0.0.0-26", Some("10.0.0.5")).await;
        assert!(err.contains("holds 10.9.9.9, outside it"), "{err}");
    }

    #[tokio::test]
    async fn a_handle_naming_the_wrong_block_is_corrupt() {
        // Was: the release looked for the address in the wrong block.
        let handle = r#"{"addresses":{"10.0.0.5":"10.0.0.64/26"}}"#;
        let ipam = ipam_holding(&[POOL, ("ipam/handles/h", handle)]).await;
        let err = ipam.release_handle("h").await.unwrap_err().to_string();
        assert!(err.contains("stored record /t/v1/ipam/handles/h "), "{err}");
        assert!(err.contains("10.0.0.5 is not in a valid block"), "{err}");
    }

    #[tokio::test]
    async fn records_the_writers_produce_still_decode() {
        let ipam = ipam_holding(&[POOL]).await;
        let got = ipam.allocate(&request(None)).await.unwrap();
        assert_eq!(ipam.addresses_of("h").await.unwrap(), vec![got.ip]);
        assert_eq!(ipam.all_blocks().await.unwrap().len(), 1);
        ipam.release_handle("h").await.unwrap();
    }
    /// Found by the `records` fuzz target (an input taking 20 s): a pool stored at
    /// another pool's key made every allocation lose its compare-and-swap 100 times
    /// (about 11 s) and then blame contention.
    #[tokio::test]
    async fn a_pool_at_the_key_of_another_name_is_corrupt() {
        let pool = r#"{"name":"p0","cidr":"10.0.0.0/24","block_size":26}"#;
        for ip in [None, Some("10.0.0.9")] {
            let err = allocation_error(&[("pools/p", pool)], "pools/p", ip).await;
            assert!(
                err.contains("pool \"p0\" is not stored at the key of its name"),
                "{err}"
            );
        }
    }

    /// The same for a block stored at another block's key: a fixed address in the
    /// block of the key spun until the retries ran out.
    #[tokio::test]
    async fn a_block_at_the_key_of_another_cidr_is_corrupt() {
        let block = r#"{"cidr":"10.0.0.64/26","pool":"p","affinity":"n1",
            "allocations":{"10.0.0.65":{"handle":"x","attrs":{"node":"n1"}}}}"#;
        let records = [POOL, ("ipam/blocks/10.0.0.0-26", block)];
        let err = allocation_error(&records, "ipam/blocks/10.0.0.0-26", Some("10.0.0.5")).await;
        assert!(
            err.contains("block 10.0.0.64/26 is not stored at the key of its CIDR"),
            "{err}"
        );
    }
}
