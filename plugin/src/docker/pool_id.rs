//! The `PoolID` the IPAM driver gives Docker: self-describing, so every later call
//! (`RequestAddress`, `ReleaseAddress`, `ReleasePool`, also after restarts of brindled or
//! dockerd) knows the brindle pool, the network's subnet and its `--ip-range` without a
//! lookup, and identical `RequestPool`s get identical IDs.
//!
//! ```text
//! brindle:POOL                      no --subnet: any address of pool POOL
//! brindle:POOL:SUBNET               --subnet SUBNET, inside (or equal to) pool POOL
//! brindle:POOL:SUBNET:RANGE         ... with --ip-range RANGE
//! ```

use std::fmt;
use std::net::Ipv4Addr;

use brindle_ipam::error::validate_pool_name;
use ipnetwork::Ipv4Network;

use super::error::DockerError;

const TAG: &str = "brindle";

/// A parsed `PoolID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolId {
    /// The brindle pool.
    pub pool: String,
    /// `--subnet`; `None` when the network uses the whole pool.
    pub subnet: Option<Ipv4Network>,
    /// `--ip-range`: dynamic addresses come from here only.
    pub range: Option<Ipv4Network>,
}

impl PoolId {
    pub fn parse(id: &str) -> Result<Self, DockerError> {
        let bad = || DockerError::UnknownPoolId { id: id.to_string() };
        let mut parts = id.split(':');
        if parts.next() != Some(TAG) {
            return Err(bad());
        }
        // A forged id names no pool that could exist (and no other etcd key).
        let pool = parts
            .next()
            .filter(|p| validate_pool_name(p).is_ok())
            .ok_or_else(bad)?;
        let mut cidr = || -> Result<Option<Ipv4Network>, DockerError> {
            parts
                .next()
                .map(|c| c.parse::<Ipv4Network>().map_err(|_| bad()))
                .transpose()
        };
        let subnet = cidr()?;
        let range = cidr()?;
        if parts.next().is_some() || (subnet.is_none() && range.is_some()) {
            return Err(bad());
        }
        Ok(Self {
            pool: pool.to_string(),
            subnet,
            range,
        })
    }

    /// The subnet Docker shows: `--subnet`, or `0.0.0.0/0` for a network spanning the
    /// pool (Docker exempts `0.0.0.0/0` from its check against host routes, which a
    /// routed pool always overlaps).
    pub fn docker_subnet(&self) -> Ipv4Network {
        self.subnet
            .unwrap_or_else(|| Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("0/0"))
    }
}

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TAG}:{}", self.pool)?;
        if let Some(s) = self.subnet {
            write!(f, ":{s}")?;
        }
        if let Some(r) = self.range {
            write!(f, ":{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for id in [
            "brindle:default",
            "brindle:office:10.1.0.0/24",
            "brindle:docker-10.2.0.0-16:10.2.0.0/16:10.2.128.0/17",
        ] {
            assert_eq!(PoolId::parse(id).unwrap().to_string(), id);
        }
        let p = PoolId::parse("brindle:office:10.1.0.0/24").unwrap();
        assert_eq!(p.pool, "office");
        assert_eq!(p.subnet, Some("10.1.0.0/24".parse().unwrap()));
        assert_eq!(p.docker_subnet().to_string(), "10.1.0.0/24");
        assert_eq!(
            PoolId::parse("brindle:x")
                .unwrap()
                .docker_subnet()
                .to_string(),
            "0.0.0.0/0"
        );
    }

    #[test]
    fn refuses_foreign_ids() {
        for id in [
            "",
            "probe-local/10.250.0.0/24",
            "brindle:",
            "brindle:x:nope",
            "brindle:x:10.0.0.0/8:10.1.0.0/16:extra",
            "brindle:../pools/x",
            "brindle:a b",
        ] {
            let e = PoolId::parse(id).unwrap_err();
            assert!(matches!(e, DockerError::UnknownPoolId { .. }), "{id}: {e}");
            assert!(e.to_string().starts_with("unknown pool id"), "{id}: {e}");
        }
    }
}
