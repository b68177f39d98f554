//! Address arithmetic for pools and blocks: parsing, validation, block enumeration and the
//! free-address search. Pure functions, no I/O.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::error::IpamError;
use crate::model::{Block, Pool};
pub use crate::shape::{validate_pool_shape, MIN_BLOCK_SIZE, MIN_POOL_PREFIX};

/// Default block prefix length.
pub const DEFAULT_BLOCK_SIZE: u8 = 26;
/// Parse `A.B.C.D/N`, refusing host bits so `10.0.0.5/24` is not silently `10.0.0.0/24`.
pub fn parse_cidr(value: &str) -> Result<Ipv4Network, IpamError> {
    let bad = |reason: String| IpamError::InvalidCidr {
        value: value.to_string(),
        reason,
    };
    let (addr, len) = value
        .split_once('/')
        .ok_or_else(|| bad("expected an IPv4 CIDR such as 10.65.0.0/16".into()))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| bad(format!("{addr:?} is not an IPv4 address")))?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32).ok_or_else(|| {
        bad(format!(
            "prefix length {len:?} is not a number from 0 to 32"
        ))
    })?;
    let net = Ipv4Network::new(addr, len).map_err(|e| bad(e.to_string()))?;
    if net.network() != addr {
        return Err(bad(format!(
            "host bits are set; the network is {}/{len}",
            net.network()
        )));
    }
    Ok(net)
}

/// Number of addresses in a network.
pub fn size_of(net: Ipv4Network) -> u64 {
    1u64 << (32 - u32::from(net.prefix()))
}

/// Is this address the pool's network or broadcast address (never handed out)? Pools of
/// /31 and /32 have no such addresses (RFC 3021).
pub fn is_pool_edge(pool: Ipv4Network, ip: Ipv4Addr) -> bool {
    pool.prefix() <= 30 && (ip == pool.network() || ip == pool.broadcast())
}

/// Addresses of a pool that may be handed out.
pub fn usable_in_pool(pool: &Pool) -> u64 {
    let edges = if pool.cidr.prefix() <= 30 { 2 } else { 0 };
    let reserved = pool
        .reserved
        .iter()
        .filter(|ip| pool.cidr.contains(**ip) && !is_pool_edge(pool.cidr, **ip))
        .count() as u64;
    size_of(pool.cidr) - edges - reserved
}

/// The block of `pool` that holds `ip`.
pub fn block_of(pool: &Pool, ip: Ipv4Addr) -> Ipv4Network {
    let net = Ipv4Network::new(ip, pool.block_size).expect("block size validated");
    Ipv4Network::new(net.network(), pool.block_size).expect("block size validated")
}

/// Number of blocks a pool splits into.
pub fn block_count(pool: &Pool) -> u64 {
    1u64 << (pool.block_size - pool.cidr.prefix())
}

/// The `index`-th block of a pool.
pub fn nth_block(pool: &Pool, index: u64) -> Ipv4Network {
    let base = u32::from(pool.cidr.network()) as u64;
    let addr = base + index * size_of_prefix(pool.block_size);
    Ipv4Network::new(Ipv4Addr::from(addr as u32), pool.block_size).expect("block size validated")
}

fn size_of_prefix(prefix: u8) -> u64 {
    1u64 << (32 - u32::from(prefix))
}

/// Where a node starts looking for an unclaimed block: a stable hash of its name, so
/// nodes that claim at the same moment start far apart and rarely collide.
pub fn claim_start(pool: &Pool, node: &str) -> u64 {
    // FNV-1a: stable across builds and platforms (unlike std's SipHash keys).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % block_count(pool)
}

/// May this address of the block be handed out at all?
pub fn is_assignable(pool: &Pool, ip: Ipv4Addr) -> bool {
    !is_pool_edge(pool.cidr, ip) && !pool.reserved.contains(&ip)
}

/// Free, assignable addresses in a block.
pub fn free_in_block(pool: &Pool, block: &Block) -> u64 {
    let base = u32::from(block.cidr.network());
    (0..size_of(block.cidr) as u32)
        .map(|o| Ipv4Addr::from(base + o))
        .filter(|ip| is_assignable(pool, *ip) && !block.allocations.contains_key(ip))
        .count() as u64
}

/// The next free address of a block, searching from its cursor and wrapping, with the
/// cursor value to store after taking it.
pub fn next_free(pool: &Pool, block: &Block) -> Option<(Ipv4Addr, u32)> {
    next_free_in(pool, block, None, &BTreeSet::new())
}

/// [`next_free`] restricted to the addresses of `range` (all of `block` when `None`)
/// that are not in `exclude`.
pub fn next_free_in(
    pool: &Pool,
    block: &Block,
    range: Option<Ipv4Network>,
    exclude: &BTreeSet<Ipv4Addr>,
) -> Option<(Ipv4Addr, u32)> {
    if range.is_some_and(|r| !overlaps(r, block.cidr)) {
        return None;
    }
    let size = size_of(block.cidr) as u32;
    let base = u32::from(block.cidr.network());
    (0..size)
        .map(|step| (block.cursor.wrapping_add(step)) % size)
        .map(|ord| (Ipv4Addr::from(base + ord), ord))
        .find(|(ip, _)| {
            is_assignable(pool, *ip)
                && !block.allocations.contains_key(ip)
                && range.is_none_or(|r| r.contains(*ip))
                && !exclude.contains(ip)
        })
        .map(|(ip, ord)| (ip, (ord + 1) % size))
}

/// `a` lies entirely inside `b`.
pub fn within(a: Ipv4Network, b: Ipv4Network) -> bool {
    b.contains(a.network()) && a.prefix() >= b.prefix()
}

/// `a` and `b` share at least one address (CIDRs either nest or are disjoint).
pub fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// Indices (for [`nth_block`]) of the blocks of `pool` that `range` touches; empty when
/// `range` lies outside the pool.
pub fn blocks_touching(pool: &Pool, range: Ipv4Network) -> std::ops::Range<u64> {
    if within(pool.cidr, range) {
        return 0..block_count(pool);
    }
    if !within(range, pool.cidr) {
        return 0..0;
    }
    let offset = u64::from(u32::from(range.network()) - u32::from(pool.cidr.network()));
    let block = size_of_prefix(pool.block_size);
    let first = offset / block;
    let count = (size_of(range) / block).max(1);
    first..first + count
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pool(cidr: &str, block_size: u8) -> Pool {
        Pool {
            name: "p".into(),
            cidr: cidr.parse().unwrap(),
            block_size,
            disabled: false,
            reserved: Default::default(),
            deleting: false,
            deleting_since: None,
            nat_outgoing: false,
        }
    }

    fn empty_block(cidr: &str) -> Block {
        Block {
            cidr: cidr.parse().unwrap(),
            pool: "p".into(),
            affinity: None,
            allocations: BTreeMap::new(),
            cursor: 0,
        }
    }

    #[test]
    fn parse_cidr_names_the_problem() {
        struct Case {
            input: &'static str,
            needle: &'static str,
        }
        let cases = [
            Case {
                input: "10.0.0.0",
                needle: "expected an IPv4 CIDR",
            },
            Case {
                input: "10.0.0.300/24",
                needle: "is not an IPv4 address",
            },
            Case {
                input: "10.0.0.0/33",
                needle: "prefix length \"33\"",
            },
            Case {
                input: "10.0.0.0/x",
                needle: "prefix length",
            },
            Case {
                input: "10.0.0.5/24",
                needle: "the network is 10.0.0.0/24",
            },
        ];
        for case in cases {
            let err = parse_cidr(case.input).unwrap_err().to_string();
            assert!(err.contains(case.input), "{err}");
            assert!(err.contains(case.needle), "{}: {err}", case.input);
        }
        assert_eq!(parse_cidr("10.0.0.0/24").unwrap().prefix(), 24);
    }

    #[test]
    fn block_size_must_fit_the_pool() {
        let net = parse_cidr("10.0.0.0/24").unwrap();
        assert!(validate_pool_shape(net, 26).is_ok());
        assert!(validate_pool_shape(net, 24).is_ok());
        let err = validate_pool_shape(net, 22).unwrap_err().to_string();
        assert!(err.contains("/22") && err.contains("/24 to /32"), "{err}");
        assert!(validate_pool_shape(parse_cidr("10.0.0.0/8").unwrap(), 19).is_err());
        assert!(validate_pool_shape(parse_cidr("16.0.0.0/4").unwrap(), 26).is_err());
    }

    #[test]
    fn pool_edges_are_never_free() {
        let p = pool("10.0.0.0/24", 26);
        let first = empty_block("10.0.0.0/26");
        assert_eq!(
            next_free(&p, &first).unwrap().0,
            "10.0.0.1".parse::<Ipv4Addr>().unwrap()
        );
        let mut last = empty_block("10.0.0.192/26");
        last.cursor = 63;
        // Cursor on the broadcast address wraps to the block start.
        assert_eq!(
            next_free(&p, &last).unwrap().0,
            "10.0.0.192".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(usable_in_pool(&p), 254);
        assert_eq!(free_in_block(&p, &first), 63);
        assert_eq!(free_in_block(&p, &last), 63);
    }

    #[test]
    fn block_enumeration_covers_the_pool() {
        let p = pool("10.0.0.0/24", 26);
        assert_eq!(block_count(&p), 4);
        let blocks: Vec<_> = (0..4).map(|i| nth_block(&p, i).to_string()).collect();
        assert_eq!(
            blocks,
            [
                "10.0.0.0/26",
                "10.0.0.64/26",
                "10.0.0.128/26",
                "10.0.0.192/26"
            ]
        );
        assert_eq!(
            block_of(&p, "10.0.0.130".parse().unwrap()).to_string(),
            "10.0.0.128/26"
        );
        assert!(claim_start(&p, "node-a") < 4);
    }

    #[test]
    fn ranges_touch_their_blocks_and_restrict_the_search() {
        let p = pool("10.0.0.0/24", 26);
        let net = |s: &str| s.parse::<Ipv4Network>().unwrap();
        assert_eq!(blocks_touching(&p, net("10.0.0.200/30")), 3..4);
        assert_eq!(blocks_touching(&p, net("10.0.0.64/26")), 1..2);
        assert_eq!(blocks_touching(&p, net("10.0.0.128/25")), 2..4);
        assert_eq!(blocks_touching(&p, net("10.0.0.0/16")), 0..4);
        assert!(blocks_touching(&p, net("10.0.1.0/30")).is_empty());
        assert!(within(net("10.0.0.200/30"), p.cidr) && !within(p.cidr, net("10.0.0.0/25")));
        assert!(overlaps(net("10.0.0.0/16"), p.cidr) && !overlaps(net("10.0.1.0/24"), p.cidr));

        let mut last = empty_block("10.0.0.192/26");
        let range = Some(net("10.0.0.252/30"));
        let mut exclude = BTreeSet::new();
        let take = |b: &Block, ex: &BTreeSet<Ipv4Addr>| next_free_in(&p, b, range, ex).unwrap();
        assert_eq!(take(&last, &exclude), ("10.0.0.252".parse().unwrap(), 61));
        last.cursor = 61;
        exclude.insert("10.0.0.253".parse().unwrap());
        // .253 excluded, .255 is the pool's broadcast: .254, then the wrap to .252.
        assert_eq!(
            take(&last, &exclude).0,
            "10.0.0.254".parse::<Ipv4Addr>().unwrap()
        );
        assert!(next_free_in(&p, &empty_block("10.0.0.0/26"), range, &exclude).is_none());
    }
}
