//! What the fuzz targets in `fuzz_targets/` share: how one input is cut into several
//! requests, the runtime they run on, and the in-process IPAM they start from.
//!
//! Every target is deterministic: a fresh in-process store and fake dataplane per
//! input, no network, no netlink, no root.

use brindle_ipam::pools::NewPool;
use brindle_ipam::{Ipam, MemoryStore};

/// Separates the parts of one input (a request body, an environment value). Never
/// part of UTF-8 text, so JSON seeds stay readable.
pub const SEPARATOR: u8 = 0xFF;

/// The key prefix of every target's store.
pub const PREFIX: &str = "/brindle";

/// The node every target acts as.
pub const NODE: &str = "n1";

/// The first `max` parts of `data`, split at [`SEPARATOR`].
pub fn parts(data: &[u8], max: usize) -> impl Iterator<Item = &[u8]> {
    data.split(|b| *b == SEPARATOR).take(max)
}

/// A single-threaded runtime with timers (the operations' deadlines need them).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime starts")
}

/// A pool to create before the input runs.
pub struct SeedPool {
    pub name: &'static str,
    pub cidr: &'static str,
    pub block_size: u8,
}

/// IPAM on a fresh in-process store holding `pools`.
pub async fn ipam_with(pools: &[SeedPool]) -> Ipam<MemoryStore> {
    let ipam = Ipam::new(MemoryStore::new(), PREFIX);
    for pool in pools {
        ipam.add_pool(NewPool {
            name: pool.name.into(),
            cidr: pool.cidr.parse().expect("seed CIDR"),
            block_size: pool.block_size,
            disabled: false,
            reserved: Default::default(),
            nat_outgoing: false,
        })
        .await
        .expect("seed pool");
    }
    ipam
}
