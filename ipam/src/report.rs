//! Read-only views: pool usage (`ipam show`) and one address (`ipam show --ip`).
//! The JSON shapes here are the documented `-o json` output of the CLI.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::Serialize;

use crate::cidr::{block_of, free_in_block, usable_in_pool};
use crate::error::IpamError;
use crate::model::{Block, Pool};
use crate::state::{decode, read_all};
use crate::store::Store;
use crate::Ipam;

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub pools: Vec<PoolUsage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolUsage {
    pub name: String,
    pub cidr: Ipv4Network,
    pub block_size: u8,
    pub disabled: bool,
    /// Addresses that may be handed out (network, broadcast and reserved excluded).
    pub size: u64,
    pub allocated: u64,
    pub blocks: Vec<BlockUsage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BlockUsage {
    pub cidr: Ipv4Network,
    /// The node the block is affine to.
    pub node: Option<String>,
    pub size: u64,
    pub allocated: u64,
    /// Allocations held by nodes other than the block's own (routed as /32s).
    pub borrowed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AddressReport {
    pub ip: Ipv4Addr,
    pub allocated: bool,
    pub handle: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub block: Option<Ipv4Network>,
    /// The node holding the address (or, when free, the node its block is affine to).
    pub node: Option<String>,
    pub pool: Option<String>,
}

impl<S: Store> Ipam<S> {
    /// Every block in the store.
    pub async fn all_blocks(&self) -> Result<Vec<Block>, IpamError> {
        let blocks = read_all::<Block>(self.store(), &self.keys().blocks()).await?;
        Ok(blocks.into_iter().map(|v| v.value).collect())
    }

    /// Usage of every pool.
    pub async fn usage(&self) -> Result<Usage, IpamError> {
        let pools = self.list_pools().await?;
        let blocks = self.all_blocks().await?;
        Ok(Usage {
            pools: pools.iter().map(|p| pool_usage(p, &blocks)).collect(),
        })
    }

    /// Everything known about one address.
    pub async fn address(&self, ip: Ipv4Addr) -> Result<AddressReport, IpamError> {
        let pools = self.list_pools().await?;
        let pool = pools.iter().find(|p| p.cidr.contains(ip));
        let mut report = AddressReport {
            ip,
            allocated: false,
            handle: None,
            attributes: BTreeMap::new(),
            block: None,
            node: None,
            pool: pool.map(|p| p.name.clone()),
        };
        let Some(pool) = pool else {
            return Ok(report);
        };
        let cidr = block_of(pool, ip);
        let Some(kv) = self.store().get(&self.keys().block(cidr)).await? else {
            return Ok(report);
        };
        let block: Block = decode(&kv)?.value;
        report.block = Some(cidr);
        report.node = block.affinity.clone();
        if let Some(a) = block.allocations.get(&ip) {
            report.allocated = true;
            report.handle = Some(a.handle.clone());
            report.node = a.node().map(str::to_string).or(report.node);
            report.attributes = a.attrs.clone();
        }
        Ok(report)
    }
}

fn pool_usage(pool: &Pool, blocks: &[Block]) -> PoolUsage {
    let mine: Vec<&Block> = blocks
        .iter()
        .filter(|b| pool.cidr.contains(b.cidr.network()))
        .collect();
    let blocks: Vec<BlockUsage> = mine
        .iter()
        .map(|b| {
            let allocated = b.allocations.len() as u64;
            BlockUsage {
                cidr: b.cidr,
                node: b.affinity.clone(),
                size: free_in_block(pool, b) + allocated,
                allocated,
                borrowed: b
                    .allocations
                    .values()
                    .filter(|a| a.node().is_some() && a.node() != b.affinity.as_deref())
                    .count() as u64,
            }
        })
        .collect();
    PoolUsage {
        name: pool.name.clone(),
        cidr: pool.cidr,
        block_size: pool.block_size,
        disabled: pool.disabled,
        size: usable_in_pool(pool),
        allocated: blocks.iter().map(|b| b.allocated).sum(),
        blocks,
    }
}
