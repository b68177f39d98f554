//! The state layer over the [`Store`](crate::store::Store): every key of the etcd
//! schema ([`Keys`]), one typed JSON codec that keeps the revision each record was read
//! at ([`Versioned`]), typed reads and writes of records, and the one compare-and-swap
//! loop ([`cas_loop`]) with one retry bound and backoff.
//!
//! Every component that stores records (IPAM here; BGP, endpoints and Docker in
//! `brindle-plugin`; the agent's view; the test harness) goes through this module.
//! Errors come out as [`StateError`], which each component's error type converts from.
//!
//! | module | what |
//! |---|---|
//! | [`keys`] | the key layout, with the table of every record |
//! | [`codec`] | [`Versioned`], [`decode`], [`encode`], [`CorruptRecord`], [`MAX_RECORD_BYTES`] |
//! | [`records`] | [`read`], [`read_all`], [`put`], [`delete`], single-key CAS transactions |
//! | [`cas`] | [`cas_loop`], [`Attempt`], [`MAX_ATTEMPTS`], [`backoff`] |

pub mod cas;
pub mod codec;
pub mod keys;
pub mod records;

pub use cas::{backoff, cas_loop, Attempt, MAX_ATTEMPTS};
pub use codec::{
    decode, decode_all, decode_value, encode, with_decoding_key, CorruptRecord, RecordProblem,
    Versioned, MAX_RECORD_BYTES,
};
pub use keys::Keys;
pub use records::{
    cas_delete, cas_put, delete, delete_if, put, put_if, read, read_all, read_entries,
};

use crate::store::StoreError;

/// What the state layer can fail with. Each component's error converts from it
/// (`impl From<StateError>`), keeping its own wording for contention.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored value does not decode as its record type.
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
    /// [`cas_loop`] lost the race [`MAX_ATTEMPTS`] times.
    #[error("gave up after {attempts} attempts: other writers kept changing the same records")]
    Contention { attempts: u32 },
}
