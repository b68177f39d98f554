//! IPAM errors. Each message is one sentence that names the bad value and what is valid.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::locks::LockError;
use crate::state::{CorruptRecord, StateError};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("invalid CIDR {value:?}: {reason}")]
    InvalidCidr { value: String, reason: String },

    #[error(
        "invalid block size /{block_size} for pool {pool}: valid block sizes are /{min} to /32"
    )]
    InvalidBlockSize {
        block_size: u8,
        pool: Ipv4Network,
        min: u8,
    },

    #[error("invalid pool name {0:?}: use 1 to 63 letters, digits, '.', '_' or '-'")]
    InvalidPoolName(String),

    #[error("pool {name} already exists with CIDR {cidr}")]
    PoolExists { name: String, cidr: Ipv4Network },

    #[error("pool {name} ({cidr}) overlaps existing pool {other} ({other_cidr}); pools must not overlap")]
    PoolOverlap {
        name: String,
        cidr: Ipv4Network,
        other: String,
        other_cidr: Ipv4Network,
    },

    #[error("no pool named {name:?}; existing pools: {existing}")]
    PoolNotFound { name: String, existing: String },

    #[error("pool {0} is disabled, so it hands out no dynamic addresses; ask for a fixed address or enable it")]
    PoolDisabled(String),

    /// The pool is marked for removal. A `pool rm` still running finishes soon; one
    /// that failed or was interrupted left the mark, and running it again clears it.
    #[error("pool {0} is being removed; if no `brindle pool rm {0}` is running any more (it failed or was interrupted), run `brindle pool rm {0}` again: it finishes the removal or, without --force, gives the pool back while it still has addresses (`brindle pool list` shows since when it is marked)")]
    PoolDeleting(String),

    #[error(
        "pool {name} still has {count} allocated addresses; release them first or use --force"
    )]
    PoolInUse { name: String, count: u64 },

    #[error("pool {name} ({cidr}) is exhausted: all {size} usable addresses are allocated")]
    PoolExhausted {
        name: String,
        cidr: Ipv4Network,
        size: u64,
    },

    #[error("no addresses left: every enabled pool is full ({pools})")]
    AllPoolsExhausted { pools: String },

    #[error(
        "no free address left in {range} (pool {pools}): every usable address there is allocated"
    )]
    RangeExhausted { range: Ipv4Network, pools: String },

    #[error("range {range} lies outside every pool it may use: {pools}")]
    RangeOutsidePools { range: Ipv4Network, pools: String },

    #[error(
        "no enabled pool to allocate from; create one with `brindle pool add NAME --cidr CIDR`"
    )]
    NoPools,

    #[error("address {ip} is not inside any pool; pools: {pools}")]
    NotInAnyPool { ip: Ipv4Addr, pools: String },

    #[error("address {ip} is not inside pool {pool} ({cidr})")]
    NotInPool {
        ip: Ipv4Addr,
        pool: String,
        cidr: Ipv4Network,
    },

    #[error("address {ip} is the {what} address of pool {pool} and is never handed out")]
    PoolEdge {
        ip: Ipv4Addr,
        pool: String,
        what: &'static str,
    },

    #[error("address {ip} is reserved in pool {pool}")]
    Reserved { ip: Ipv4Addr, pool: String },

    #[error("address {ip} is already allocated to handle {handle}")]
    AddressTaken { ip: Ipv4Addr, handle: String },

    #[error("handle {handle} already holds {held}; release it before asking for {wanted}")]
    HandleHoldsOther {
        handle: String,
        held: Ipv4Addr,
        wanted: String,
    },

    #[error("invalid handle {0:?}: use 1 to 250 printable characters without spaces or '/'")]
    InvalidHandle(String),

    #[error("invalid attribute {0:?}: expected KEY=VALUE with a non-empty key")]
    InvalidAttribute(String),

    #[error(
        "gave up after {attempts} attempts: other writers kept changing the same IPAM records"
    )]
    Contention { attempts: u32 },

    /// A wait for another request of this process (on the same block) outlasted the
    /// operation's budget: etcd is slow or unreachable.
    #[error(transparent)]
    Busy(#[from] LockError),

    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),

    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<StateError> for IpamError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Store(e) => IpamError::Store(e),
            StateError::Corrupt(e) => IpamError::Corrupt(e),
            StateError::Contention { attempts } => IpamError::Contention { attempts },
        }
    }
}

/// Handles become etcd key segments: keep them printable and slash-free.
pub fn validate_handle(handle: &str) -> Result<(), IpamError> {
    let ok = !handle.is_empty()
        && handle.len() <= 250
        && handle.chars().all(|c| c.is_ascii_graphic() && c != '/');
    if ok {
        Ok(())
    } else {
        Err(IpamError::InvalidHandle(handle.to_string()))
    }
}

/// Pool names become etcd key segments.
pub fn validate_pool_name(name: &str) -> Result<(), IpamError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(IpamError::InvalidPoolName(name.to_string()))
    }
}

/// Node names become etcd key segments too.
pub fn validate_node_name(name: &str) -> Result<(), IpamError> {
    validate_handle(name)
}
