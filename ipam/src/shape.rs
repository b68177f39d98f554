//! The shape rules of pools and blocks: how large a pool and its blocks may be. Kept
//! apart from the address arithmetic (`cidr`) so that the records' own checks
//! (`model::checked`) can use them without depending on it.

use ipnetwork::Ipv4Network;

use crate::error::IpamError;

/// Smallest block prefix (largest block) allowed: 4096 addresses.
pub const MIN_BLOCK_SIZE: u8 = 20;
/// Largest pool allowed.
pub const MIN_POOL_PREFIX: u8 = 8;

/// Check a pool's CIDR and block size together.
pub fn validate_pool_shape(cidr: Ipv4Network, block_size: u8) -> Result<(), IpamError> {
    if cidr.prefix() < MIN_POOL_PREFIX {
        return Err(IpamError::InvalidCidr {
            value: cidr.to_string(),
            reason: format!(
                "a pool may be at most a /{MIN_POOL_PREFIX}, this is a /{}",
                cidr.prefix()
            ),
        });
    }
    if !(MIN_BLOCK_SIZE..=32).contains(&block_size) || block_size < cidr.prefix() {
        return Err(IpamError::InvalidBlockSize {
            block_size,
            pool: cidr,
            min: MIN_BLOCK_SIZE.max(cidr.prefix()),
        });
    }
    Ok(())
}
