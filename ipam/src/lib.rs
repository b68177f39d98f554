//! brindle IPAM: IP pools split into per-node blocks, every address owned by a handle,
//! stored in etcd v3 and safe under many hosts allocating at once.
//!
//! Layout of the stored records: see [`keys`]. The allocator: [`Ipam`]. Pool
//! administration: [`pools`]. Reporting: [`report`]. Consistency check and repair:
//! [`check`].

mod allocator;
pub mod check;
pub mod cidr;
mod codec;
pub mod error;
pub mod keys;
pub mod model;
pub mod pools;
pub mod report;
pub mod retry;
pub mod store;

pub use allocator::{AllocRequest, Assigned, Ipam};
pub use codec::Versioned;
pub use error::IpamError;
pub use keys::Keys;
pub use model::{Allocation, Block, HandleRecord, Pool};
pub use store::{EtcdConfig, EtcdStore, MemoryStore, Store, StoreError};
