//! [`DockerError`]: every way a Docker call fails, by kind.
//!
//! Docker shows the message to the user as `<Subsystem>.<Method>: message`, so every
//! variant renders one sentence naming the bad value and what would be valid; lower
//! errors (IPAM, the store, the dataplane) are kept whole as the source, with their
//! errno and context, rather than flattened into text.

use std::net::Ipv4Addr;

use brindle_dataplane::DataplaneError;
use brindle_ipam::{IpamError, StateError, StoreError};
use ipnetwork::Ipv4Network;

use super::net_driver::short;

/// An error for Docker: HTTP 500 with `{"Err": message}` (see `http.rs`), which both
/// the network driver and the IPAM client treat as a failure.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The request itself is malformed: its body, or a field Docker always fills.
    #[error("{0}")]
    BadRequest(String),

    /// The request body is not the JSON of its call.
    #[error("invalid JSON in the request to {path}: {source}")]
    BadJson {
        path: String,
        #[source]
        source: serde_json::Error,
    },

    /// A value or option the user gave that brindle does not accept (`--subnet`,
    /// `--ip-range`, `--ip`, `--ipam-opt`, `-o`, `--driver-opt`, `--ipv6`, `--internal`).
    #[error("{0}")]
    BadOption(String),

    /// A `NetworkID` brindle has no record of.
    #[error("network {} is not known to brindle (its record is missing from etcd); recreate the network", short(.id))]
    UnknownNetwork { id: String },

    /// An `EndpointID` brindle has no record of.
    #[error("endpoint {} is not known to brindle (it was never created, or its record is gone)", short(.id))]
    UnknownEndpoint { id: String },

    /// A `PoolID` brindle's IPAM driver did not issue.
    #[error("unknown pool id {id:?}: it was not issued by brindle's IPAM driver")]
    UnknownPoolId { id: String },

    /// The brindle pool a request names or a network uses does not exist (any more),
    /// or there is none to choose; the message lists the pools there are.
    #[error("{0}")]
    UnknownPool(String),

    /// `--subnet` needed a pool of its own and it could not be created.
    #[error("cannot create a pool for --subnet {subnet}: {source}")]
    CreatePool {
        subnet: Ipv4Network,
        #[source]
        source: IpamError,
    },

    /// `--subnet` needed a pool of its own and other writers kept changing the pools.
    #[error("cannot create a pool for --subnet {subnet}: other writers keep changing the pools")]
    PoolContention { subnet: Ipv4Network },

    /// A fixed address (`--ip`, `--gateway`, `--aux-address`) that someone still uses.
    #[error("address {ip} is already in use by {user}")]
    AddressInUse { ip: Ipv4Addr, user: String },

    /// A fixed address held by another allocation after a reclaim attempt.
    #[error("address {ip} is already in use (handle {handle})")]
    AddressTaken { ip: Ipv4Addr, handle: String },

    /// An endpoint's address that no allocation holds.
    #[error("address {ip} is not allocated: endpoints of brindle networks get their address from --ipam-driver brindle")]
    AddressNotAllocated { ip: Ipv4Addr },

    /// An endpoint's address held by someone other than this node's Docker.
    #[error("address {ip} belongs to handle {handle} (node {node}), not to this node's Docker")]
    AddressNotOurs {
        ip: Ipv4Addr,
        handle: String,
        node: String,
    },

    /// A sandbox has no 169.254.1.x next hop left.
    #[error("a container can join at most 254 brindle networks")]
    TooManyNetworks,

    /// The endpoint's veth is gone but its record stayed.
    #[error("endpoint {} was removed from the host, but its record could not be deleted: {source}", short(.endpoint))]
    RecordNotDeleted {
        endpoint: String,
        #[source]
        source: IpamError,
    },

    /// The store (etcd) failed or cannot be reached.
    #[error(transparent)]
    Store(#[from] StoreError),

    /// brindle's IPAM refused or failed (pool exhausted or disabled, address taken,
    /// reserved or outside the pool, contention, a corrupt record).
    #[error(transparent)]
    Ipam(IpamError),

    /// The kernel refused a change (errno in [`DockerError::errno`]).
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

impl DockerError {
    /// The variant's name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad-request",
            Self::BadJson { .. } => "bad-json",
            Self::BadOption(_) => "bad-option",
            Self::UnknownNetwork { .. } => "unknown-network",
            Self::UnknownEndpoint { .. } => "unknown-endpoint",
            Self::UnknownPoolId { .. } => "unknown-pool-id",
            Self::UnknownPool(_) => "unknown-pool",
            Self::CreatePool { .. } => "create-pool",
            Self::PoolContention { .. } => "pool-contention",
            Self::AddressInUse { .. } => "address-in-use",
            Self::AddressTaken { .. } => "address-taken",
            Self::AddressNotAllocated { .. } => "address-not-allocated",
            Self::AddressNotOurs { .. } => "address-not-ours",
            Self::TooManyNetworks => "too-many-networks",
            Self::RecordNotDeleted { .. } => "record-not-deleted",
            Self::Store(_) => "store",
            Self::Ipam(_) => "ipam",
            Self::Dataplane(_) => "dataplane",
        }
    }

    /// The errno of the kernel or netlink failure behind this error, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Dataplane(e) => e.errno(),
            _ => None,
        }
    }

    /// Whether the store failed (not the request): asking again later may succeed.
    pub fn is_store_failure(&self) -> bool {
        matches!(
            self,
            Self::Store(_)
                | Self::Ipam(
                    IpamError::Store(_) | IpamError::Contention { .. } | IpamError::Busy(_)
                )
        )
    }
}

impl From<IpamError> for DockerError {
    fn from(e: IpamError) -> Self {
        match e {
            IpamError::Store(e) => Self::Store(e),
            e => Self::Ipam(e),
        }
    }
}

impl From<StateError> for DockerError {
    fn from(e: StateError) -> Self {
        IpamError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_errors_keep_their_kind_errno_and_message() {
        let dp = DataplaneError::from_errno("create veth brl1", libc::EEXIST);
        let text = dp.to_string();
        let e = DockerError::from(dp);
        assert_eq!(e.errno(), Some(libc::EEXIST));
        assert_eq!(e.to_string(), text);

        let store = StoreError::BadEndpoint("x".into());
        let text = store.to_string();
        let e = DockerError::from(IpamError::Store(store));
        assert!(matches!(e, DockerError::Store(_)) && e.is_store_failure());
        assert_eq!(e.to_string(), text);

        let taken = IpamError::AddressTaken {
            ip: Ipv4Addr::new(10, 0, 0, 5),
            handle: "h".into(),
        };
        let e = DockerError::from(taken);
        assert!(matches!(
            e,
            DockerError::Ipam(IpamError::AddressTaken { .. })
        ));
        assert!(!e.is_store_failure() && e.errno().is_none());
    }

    #[test]
    fn messages_are_the_sentences_docker_shows() {
        let id = "0123456789abcdef0123";
        assert_eq!(
            DockerError::UnknownNetwork { id: id.into() }.to_string(),
            "network 0123456789ab is not known to brindle (its record is missing from etcd); recreate the network"
        );
        assert_eq!(
            DockerError::UnknownPoolId { id: "x".into() }.to_string(),
            "unknown pool id \"x\": it was not issued by brindle's IPAM driver"
        );
        let source = IpamError::PoolExists {
            name: "p".into(),
            cidr: "10.0.0.0/24".parse().unwrap(),
        };
        let e = DockerError::CreatePool {
            subnet: "10.0.0.0/24".parse().unwrap(),
            source,
        };
        assert_eq!(
            e.to_string(),
            "cannot create a pool for --subnet 10.0.0.0/24: pool p already exists with CIDR 10.0.0.0/24"
        );
        assert!(std::error::Error::source(&e).is_some());
    }
}
