//! What `docker network create` sets beyond addresses: its `-o` options, the
//! isolation segment its endpoints carry, and the outgoing NAT of its pool.
//!
//! Docker sends `CreateNetwork` only the subnet each pool got, not the `PoolID`, so the
//! `PoolID`s are remembered from `RequestPool` (which directly precedes it) and taken
//! here; without one (brindled restarted in between) the id is rebuilt from the pools.

use ipnetwork::Ipv4Network;
use serde_json::Value;
use tracing::warn;

use brindle_ipam::pools::PoolUpdate;
use brindle_ipam::Pool;

use super::error::DockerError;
use super::records::{self, PoolMarker};
use super::wire::JsonMap;
use super::{Backend, Driver, PoolId, ALLOW_FROM_OPTION, MTU_OPTION, NAT_OUTGOING_OPTION};
use crate::allow_from;
use brindle_ipam::cidr::within;

/// Prefix of the segment of Docker endpoints.
const SEGMENT_PREFIX: &str = "docker:";

/// The `-o` options of a network (`com.docker.network.generic`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NetworkOptions {
    pub mtu: Option<u32>,
    pub allow_from: Vec<Ipv4Network>,
    /// `None` when not given: the pool keeps its setting.
    pub nat_outgoing: Option<bool>,
}

impl NetworkOptions {
    /// Check every option; any unknown key or bad value is refused.
    pub fn parse(generic: &JsonMap) -> Result<Self, DockerError> {
        let mut opts = Self::default();
        for (key, value) in generic {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            match key.as_str() {
                MTU_OPTION => opts.mtu = Some(parse_mtu(&text)?),
                ALLOW_FROM_OPTION => {
                    opts.allow_from = allow_from::parse_list(&text).map_err(|e| {
                        DockerError::BadOption(format!(
                            "invalid -o {ALLOW_FROM_OPTION} entry {:?}: {}; expected {}",
                            e.value,
                            e.reason,
                            allow_from::VALID_FORM
                        ))
                    })?
                }
                NAT_OUTGOING_OPTION => opts.nat_outgoing = Some(parse_bool(key, &text)?),
                _ => {
                    return Err(DockerError::BadOption(format!(
                        "unsupported driver option {key}={text}: brindle supports -o {MTU_OPTION}=N, -o {ALLOW_FROM_OPTION}=CIDR[,CIDR...] and -o {NAT_OUTGOING_OPTION}=true|false"
                    )))
                }
            }
        }
        Ok(opts)
    }
}

pub(super) fn parse_mtu(text: &str) -> Result<u32, DockerError> {
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|m| (68..=65535).contains(m))
        .ok_or_else(|| {
            DockerError::BadOption(format!(
                "invalid -o {MTU_OPTION}={text}: expected a number from 68 to 65535"
            ))
        })
}

fn parse_bool(key: &str, text: &str) -> Result<bool, DockerError> {
    match text {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(DockerError::BadOption(format!(
            "invalid -o {key}={text}: expected true or false"
        ))),
    }
}

/// `docker:` + the network's `PoolID`s, sorted: equal for networks created with the
/// same `--subnet`, `--ip-range` and `--ipam-opt pool=` on any host. A subnet whose
/// pool is unknown stands for itself.
pub fn segment_of(subnets: &[Ipv4Network], ids: &[Option<PoolId>]) -> String {
    let mut parts: Vec<String> = subnets
        .iter()
        .zip(ids)
        .map(|(s, id)| {
            id.as_ref()
                .map_or_else(|| s.to_string(), ToString::to_string)
        })
        .collect();
    parts.sort();
    parts.dedup();
    format!("{SEGMENT_PREFIX}{}", parts.join(","))
}

impl<B: Backend> Driver<B> {
    /// Remember a `RequestPool` answer for the `CreateNetwork` that follows it.
    pub(super) fn remember_requested(&self, id: &PoolId) {
        self.cache()
            .requested
            .insert(id.docker_subnet(), id.clone());
    }

    /// The `PoolID` behind each subnet of a network being created.
    pub(super) async fn take_pool_ids(&self, subnets: &[Ipv4Network]) -> Vec<Option<PoolId>> {
        let mut ids = Vec::with_capacity(subnets.len());
        for s in subnets {
            let requested = self.cache().requested.remove(s);
            let id = match requested {
                Some(id) => Some(id),
                None => self.rebuild_pool_id(*s).await,
            };
            ids.push(id);
        }
        ids
    }

    /// The segment of a network record written before segments existed.
    pub(super) async fn rebuilt_segment(&self, subnets: &[Ipv4Network]) -> String {
        let mut ids = Vec::with_capacity(subnets.len());
        for s in subnets {
            ids.push(self.rebuild_pool_id(*s).await);
        }
        segment_of(subnets, &ids)
    }

    /// A `PoolID` from the pools alone: the pool holding the subnet, or for a network
    /// spanning a pool the default one (`--ip-range` and `--ipam-opt pool=` are lost).
    async fn rebuild_pool_id(&self, subnet: Ipv4Network) -> Option<PoolId> {
        let spans_pool = subnet.prefix() == 0;
        let pool = if spans_pool {
            self.pool_for_network(None).await.ok()
        } else {
            match self.ipam().list_pools().await {
                Ok(pools) => pools.into_iter().find(|p| within(subnet, p.cidr)),
                Err(e) => {
                    warn!(%subnet, error = %e, "cannot list pools to name the network's pool");
                    None
                }
            }
        };
        if pool.is_none() {
            warn!(%subnet, "no brindle pool holds this network's subnet; its segment names the subnet only");
        }
        pool.map(|p| PoolId {
            pool: p.name,
            subnet: (!spans_pool).then_some(subnet),
            range: None,
        })
    }

    /// The pools whose `nat_outgoing` must change for `-o brindle.nat-outgoing=want`,
    /// checked before anything is written. Only a pool `RequestPool` created for this
    /// network may change: flipping a shared pool would silently change its other
    /// networks, so a differing existing pool is refused, naming the command that
    /// changes it on purpose.
    pub(super) async fn nat_outgoing_changes(
        &self,
        network: &str,
        subnets: &[Ipv4Network],
        ids: &[Option<PoolId>],
        want: bool,
    ) -> Result<Vec<String>, DockerError> {
        let pools = self.ipam().list_pools().await?;
        let mut changes: Vec<String> = Vec::new();
        for (subnet, id) in subnets.iter().zip(ids) {
            let pool = id
                .as_ref()
                .and_then(|id| pools.iter().find(|p| p.name == id.pool))
                .ok_or_else(|| {
                    DockerError::BadOption(format!(
                        "-o {NAT_OUTGOING_OPTION}={want}: no brindle pool holds subnet {subnet}"
                    ))
                })?;
            if pool.nat_outgoing == want || changes.contains(&pool.name) {
                continue;
            }
            if !self.created_for(network, pool).await? {
                return Err(DockerError::BadOption(format!(
                    "-o {NAT_OUTGOING_OPTION}={want}: the network uses the existing pool {} ({}), whose nat-outgoing is {}; change it for every network of that pool with `brindle pool set {} --nat-outgoing={want}`, or leave the option out",
                    pool.name, pool.cidr, pool.nat_outgoing, pool.name
                )));
            }
            changes.push(pool.name.clone());
        }
        Ok(changes)
    }

    /// Set `nat_outgoing` on the pools [`Self::nat_outgoing_changes`] chose.
    pub(super) async fn apply_nat_outgoing(
        &self,
        pools: &[String],
        want: bool,
    ) -> Result<(), DockerError> {
        let update = PoolUpdate {
            nat_outgoing: Some(want),
        };
        for name in pools {
            self.ipam().update_pool(name, &update).await?;
        }
        Ok(())
    }

    /// Whether `pool` was created by `RequestPool` for the network being created: it
    /// carries a marker and no other network (on any node) uses it yet.
    async fn created_for(&self, network: &str, pool: &Pool) -> Result<bool, DockerError> {
        let key = self.keys().docker_pool_marker(&pool.name);
        let Some(marker) = records::get::<_, PoolMarker>(self.store(), key).await? else {
            return Ok(false);
        };
        let networks = records::list_networks(self.store(), self.keys()).await?;
        Ok(!networks.iter().any(|n| {
            n.id != network
                && n.subnets
                    .iter()
                    .any(|s| s.subnet.prefix() > 0 && within(s.subnet, marker.cidr))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<NetworkOptions, DockerError> {
        NetworkOptions::parse(v.as_object().unwrap())
    }

    #[test]
    fn mtu_bounds() {
        assert_eq!(parse_mtu("1400").unwrap(), 1400);
        assert!(parse_mtu("9")
            .unwrap_err()
            .to_string()
            .contains("68 to 65535"));
        assert!(parse_mtu("big").is_err());
    }

    #[test]
    fn options_parse_strictly() {
        let o = parse(json!({"brindle.allow-from":"192.0.2.0/24,198.51.100.0/24",
                             "brindle.nat-outgoing":"true",
                             "com.docker.network.driver.mtu":"1400"}))
        .unwrap();
        assert_eq!(o.allow_from.len(), 2);
        assert_eq!(o.nat_outgoing, Some(true));
        assert_eq!(o.mtu, Some(1400));
        assert_eq!(parse(json!({})).unwrap(), NetworkOptions::default());
        let e = parse(json!({"brindle.nat-outgoing":"maybe"})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid -o brindle.nat-outgoing=maybe: expected true or false"
        );
        let e = parse(json!({"brindle.allow-from":"192.0.2.0/24,192.0.2.300/32"})).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "invalid -o brindle.allow-from entry \"192.0.2.300/32\": \"192.0.2.300\" is not an IPv4 address; expected IPv4 CIDRs"
            ),
            "{e}"
        );
    }

    #[test]
    fn segments_name_pool_ids_in_order() {
        let a: Ipv4Network = "10.1.0.0/24".parse().unwrap();
        let b: Ipv4Network = "10.2.0.0/24".parse().unwrap();
        let ida = PoolId::parse("brindle:p:10.1.0.0/24:10.1.0.128/25").unwrap();
        let idb = PoolId::parse("brindle:q:10.2.0.0/24").unwrap();
        let one = segment_of(&[a, b], &[Some(ida.clone()), Some(idb.clone())]);
        let two = segment_of(&[b, a], &[Some(idb), Some(ida)]);
        assert_eq!(one, two);
        assert_eq!(
            one,
            "docker:brindle:p:10.1.0.0/24:10.1.0.128/25,brindle:q:10.2.0.0/24"
        );
        assert_eq!(segment_of(&[a], &[None]), "docker:10.1.0.0/24");
    }
}
