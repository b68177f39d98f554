//! brindle IPAM: IP pools split into per-node blocks, every address owned by a handle,
//! stored in etcd v3 and safe under many hosts allocating at once.
//!
//! Every key, record codec and compare-and-swap loop: [`state`] (the key layout is
//! in [`state::keys`]). The allocator: [`Ipam`]. Pool
//! administration: [`pools`]. Reporting: [`report`]. Consistency check and repair:
//! [`check`].

mod allocator;
pub mod budget;
pub mod check;
pub mod cidr;
pub mod error;
pub mod locks;
pub mod model;
pub mod pools;
pub mod report;
mod shape;
pub mod state;
pub mod store;

pub use allocator::{AllocRequest, Alongside, AlsoWrite, Assigned, Ipam};
pub use error::IpamError;
pub use model::{Allocation, Block, HandleRecord, Pool};
pub use state::{keys, Keys, StateError, Versioned};
pub use store::{EtcdConfig, EtcdStore, MemoryStore, Store, StoreError};
