//! The IpamDriver half: Docker's pools and addresses on top of brindle's IPAM.
//!
//! - `RequestPool` maps `--subnet S` to a brindle pool: the pool whose CIDR is S, the pool
//!   S lies inside, or a new pool `docker-<S>` when S overlaps none; a subnet partly
//!   overlapping a pool is refused. Without `--subnet` the network spans the pool named
//!   by `--ipam-opt pool=NAME`, else the pool named `default` (else the only pool).
//! - Every address Docker gets is an IPAM allocation with its own handle
//!   (`docker-<random>`), tagged `orchestrator=docker`, `node`, `dockerd` (the caller's
//!   identity) and, for a `--gateway`, `role=gateway`. Container addresses are returned
//!   as `/32`: the container reaches everything through its 169.254.1.x next hop.
//! - Docker's gateway request is answered with 169.254.1.1 without burning a pool
//!   address (`RequestPool` already returns it as the pool's gateway, so Docker only
//!   asks when `--gateway G` was given; G is then reserved).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use brindle_dataplane::GATEWAY_IP;
use brindle_ipam::cidr::{overlaps, parse_cidr, within, DEFAULT_BLOCK_SIZE};
use brindle_ipam::locks::KeyGuard;
use brindle_ipam::pools::NewPool;
use brindle_ipam::store::Op;
use brindle_ipam::{AllocRequest, IpamError, Pool};
use ipnetwork::Ipv4Network;
use rand::Rng;
use tracing::{info, warn};

use super::error::DockerError;
use super::http::Caller;
use super::net_driver::short;
use super::pool_id::PoolId;
use super::records::{self, PoolMarker, ORCHESTRATOR};
use super::wire::{
    ReleaseAddressRequest, ReleasePoolRequest, RequestAddressRequest, RequestAddressResponse,
    RequestPoolRequest, RequestPoolResponse,
};
use super::{Backend, Driver, Held, DEFAULT_POOL, POOL_OPTION};
use crate::endpoints::delete_endpoint_op;
use crate::write_behind::until_committed;

/// Allocation attribute keys.
pub const ATTR_ORCHESTRATOR: &str = "orchestrator";
pub const ATTR_DOCKERD: &str = "dockerd";
pub const ATTR_ROLE: &str = "role";

/// `RequestAddress` options marking the network's gateway request.
const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
const GATEWAY_TYPE: &str = "com.docker.network.gateway";
/// `RequestPool` data key telling Docker the gateway (so it does not request one).
const GATEWAY_DATA: &str = "com.docker.network.gateway";

impl<B: Backend> Driver<B> {
    pub async fn request_pool(
        &self,
        req: RequestPoolRequest,
    ) -> Result<RequestPoolResponse, DockerError> {
        if req.v6 {
            return Err(DockerError::BadOption(
                "brindle networks are IPv4 only: remove --ipv6 and any IPv6 --subnet".into(),
            ));
        }
        let mut pool_opt = None;
        for (k, v) in req.options.unwrap_or_default() {
            if k == POOL_OPTION {
                pool_opt = Some(v);
            } else {
                return Err(DockerError::BadOption(format!(
                    "unsupported IPAM option {k}={v}: brindle supports only --ipam-opt {POOL_OPTION}=NAME"
                )));
            }
        }
        let subnet = match req.pool.as_str() {
            "" => None,
            s => Some(parse_cidr(s).map_err(|e| {
                DockerError::BadOption(format!("invalid --subnet {s}: {}", reason(&e)))
            })?),
        };
        let range = match req.sub_pool.as_str() {
            "" => None,
            r => Some(parse_cidr(r).map_err(|e| {
                DockerError::BadOption(format!("invalid --ip-range {r}: {}", reason(&e)))
            })?),
        };
        let id = match subnet {
            None => {
                if let Some(r) = range {
                    return Err(DockerError::BadOption(format!(
                        "--ip-range {r} needs a --subnet that contains it"
                    )));
                }
                let pool = self.pool_for_network(pool_opt.clone()).await?;
                PoolId {
                    pool: pool.name,
                    subnet: None,
                    range: None,
                }
            }
            Some(s) => {
                if let Some(r) = range {
                    if !within(r, s) {
                        return Err(DockerError::BadOption(format!(
                            "--ip-range {r} is not inside --subnet {s}"
                        )));
                    }
                }
                let pool = self.pool_for_subnet(s, pool_opt.clone()).await?;
                PoolId {
                    pool: pool.name,
                    subnet: Some(s),
                    range,
                }
            }
        };
        info!(pool_id = %id, "pool requested");
        self.remember_requested(&id);
        Ok(RequestPoolResponse {
            pool_id: id.to_string(),
            pool: id.docker_subnet().to_string(),
            data: BTreeMap::from([(GATEWAY_DATA.to_string(), format!("{GATEWAY_IP}/32"))]),
        })
    }

    /// The pool of a network without `--subnet`.
    pub(super) async fn pool_for_network(
        &self,
        named: Option<String>,
    ) -> Result<Pool, DockerError> {
        let pools = self.ipam().list_pools().await?;
        let names = || pool_list(&pools);
        if let Some(name) = named {
            return pools
                .iter()
                .find(|p| p.name == name)
                .cloned()
                .ok_or_else(|| {
                    DockerError::UnknownPool(format!(
                        "--ipam-opt {POOL_OPTION}={name}: no such pool; pools: {}",
                        names()
                    ))
                });
        }
        if let Some(p) = pools.iter().find(|p| p.name == DEFAULT_POOL) {
            return Ok(p.clone());
        }
        match pools.as_slice() {
            [only] => Ok(only.clone()),
            _ => Err(DockerError::UnknownPool(format!(
                "no --subnet and no pool named {DEFAULT_POOL}: give --subnet, --ipam-opt {POOL_OPTION}=NAME or create pool {DEFAULT_POOL} (pools: {})",
                names()
            ))),
        }
    }

    /// The pool holding `--subnet s`, created when `s` overlaps no pool.
    async fn pool_for_subnet(
        &self,
        s: Ipv4Network,
        named: Option<String>,
    ) -> Result<Pool, DockerError> {
        for attempt in 0..2 {
            let pools = self.ipam().list_pools().await?;
            let containing = pools.iter().find(|p| within(s, p.cidr));
            if let Some(name) = named {
                return match (containing, pools.iter().find(|p| p.name == name)) {
                    (Some(p), _) if p.name == name => Ok(p.clone()),
                    (_, Some(p)) => Err(DockerError::BadOption(format!(
                        "--subnet {s} is not inside pool {name} ({})",
                        p.cidr
                    ))),
                    (_, None) => Err(DockerError::UnknownPool(format!(
                        "--ipam-opt {POOL_OPTION}={name}: no such pool; pools: {}",
                        pool_list(&pools)
                    ))),
                };
            }
            if let Some(p) = containing {
                return Ok(p.clone());
            }
            if let Some(p) = pools.iter().find(|p| overlaps(p.cidr, s)) {
                return Err(DockerError::BadOption(format!(
                    "--subnet {s} partly overlaps pool {} ({}); use a subnet equal to or inside one pool, or one that overlaps none",
                    p.name, p.cidr
                )));
            }
            let name = created_pool_name(s);
            let new = NewPool {
                name: name.clone(),
                cidr: s,
                block_size: DEFAULT_BLOCK_SIZE.max(s.prefix()),
                disabled: false,
                reserved: Default::default(),
                nat_outgoing: false,
            };
            match self.add_pool(new).await {
                Ok(pool) => {
                    info!(pool = %name, cidr = %s, "pool created for docker --subnet");
                    let marker = PoolMarker {
                        cidr: s,
                        created_by: self.node().to_string(),
                    };
                    records::put(self.store(), self.keys().docker_pool_marker(&name), &marker)
                        .await?;
                    return Ok(pool);
                }
                // Someone created an overlapping pool at the same moment: look again.
                Err(IpamError::PoolExists { .. } | IpamError::PoolOverlap { .. })
                    if attempt == 0 => {}
                Err(source) => {
                    return Err(DockerError::CreatePool { subnet: s, source });
                }
            }
        }
        Err(DockerError::PoolContention { subnet: s })
    }

    pub async fn release_pool(&self, req: ReleasePoolRequest) -> Result<(), DockerError> {
        let id = PoolId::parse(&req.pool_id)?;
        info!(pool_id = %id, "pool released");
        self.remove_created_pool(id.pool.clone()).await;
        Ok(())
    }

    /// Remove a pool the driver created once no network uses it and it is empty.
    /// Best effort: a pool left behind is harmless and reused by the next network.
    pub(super) async fn remove_created_pool(&self, pool: String) {
        // Its last containers' releases may have answered without committing yet
        // (`docker rm -f c && docker network rm n`): the pool is empty once they have.
        self.backend.write_behind().settle_all().await;
        let pool = pool.as_str();
        let result: Result<(), IpamError> = async {
            let key = self.keys().docker_pool_marker(pool);
            let Some(marker) = records::get::<_, PoolMarker>(self.store(), key.clone()).await?
            else {
                return Ok(());
            };
            let networks = records::list_networks(self.store(), self.keys()).await?;
            if networks.iter().any(|n| {
                n.subnets
                    .iter()
                    .any(|s| s.subnet.prefix() > 0 && within(s.subnet, marker.cidr))
            }) {
                return Ok(());
            }
            match self.remove_pool(pool.to_string()).await {
                Ok(_) => {
                    info!(%pool, "removed the pool created for a docker --subnet");
                    self.cache().pools.remove(pool);
                    records::delete(self.store(), key).await
                }
                Err(IpamError::PoolInUse { .. }) => Ok(()),
                Err(IpamError::PoolNotFound { .. }) => records::delete(self.store(), key).await,
                Err(e) => Err(e),
            }
        }
        .await;
        if let Err(e) = result {
            warn!(%pool, error = %e, "cannot remove the pool created for a docker --subnet");
        }
    }

    pub async fn request_address(
        &self,
        req: RequestAddressRequest,
        caller: &Caller,
    ) -> Result<RequestAddressResponse, DockerError> {
        let id = PoolId::parse(&req.pool_id)?;
        let gateway = req
            .options
            .as_ref()
            .and_then(|o| o.get(REQUEST_ADDRESS_TYPE))
            .is_some_and(|t| t == GATEWAY_TYPE);
        let wanted = match req.address.as_str() {
            "" => None,
            a => Some(a.parse::<Ipv4Addr>().map_err(|_| {
                DockerError::BadOption(format!("invalid address {a:?}: expected an IPv4 address"))
            })?),
        };
        let ip = match (wanted, gateway) {
            // The containers' next hop needs no pool address.
            (None, true) => {
                return Ok(RequestAddressResponse {
                    address: format!("{GATEWAY_IP}/32"),
                    data: BTreeMap::new(),
                })
            }
            (Some(ip), _) => {
                if let Some(s) = id.subnet {
                    if !s.contains(ip) {
                        return Err(DockerError::BadOption(format!(
                            "address {ip} is outside subnet {s} of this network"
                        )));
                    }
                }
                self.claim_fixed(&id, ip, gateway, caller).await?
            }
            (None, false) => self.claim_dynamic(&id, caller).await?,
        };
        let prefix = match (gateway, id.subnet) {
            (true, Some(s)) => s.prefix(),
            _ => 32,
        };
        Ok(RequestAddressResponse {
            address: format!("{ip}/{prefix}"),
            data: BTreeMap::new(),
        })
    }

    fn alloc_request(
        &self,
        id: &PoolId,
        ip: Option<Ipv4Addr>,
        gateway: bool,
        caller: &Caller,
    ) -> AllocRequest {
        let mut attrs = allocation_attrs(caller.0.as_deref());
        if gateway {
            attrs.insert(ATTR_ROLE.to_string(), "gateway".to_string());
        }
        AllocRequest {
            handle: new_handle(),
            node: self.node().to_string(),
            ip,
            pool: Some(id.pool.clone()),
            attrs,
            ..AllocRequest::default()
        }
    }

    /// `--ip A`, `--gateway G`, `--aux-address n=A`: exactly that address or an error
    /// naming it. An address held by a Docker allocation whose dockerd no longer runs
    /// and that no live container uses is taken over (see `reclaim.rs`).
    async fn claim_fixed(
        &self,
        id: &PoolId,
        ip: Ipv4Addr,
        gateway: bool,
        caller: &Caller,
    ) -> Result<Ipv4Addr, DockerError> {
        let _claim = self.lock_address(ip).await?;
        let reservation = self
            .cache()
            .held
            .get(&ip)
            .filter(|h| h.reserving())
            .cloned();
        if let Some(r) = reservation {
            return Err(DockerError::AddressInUse {
                ip,
                user: format!(
                    "a container being started on this node (handed out to it dynamically, handle {})",
                    r.handle
                ),
            });
        }
        for attempt in 0..2 {
            let req = self.alloc_request(id, Some(ip), gateway, caller);
            match self.ipam().allocate(&req).await {
                Ok(a) => {
                    info!(%ip, pool = %a.pool, handle = %req.handle, "fixed address allocated");
                    self.cache().held.insert(a.ip, held_by(&req));
                    return Ok(a.ip);
                }
                Err(IpamError::AddressTaken { handle, .. }) if attempt == 0 => {
                    if let Some(user) = self.try_reclaim(ip, &handle, caller).await? {
                        return Err(DockerError::AddressInUse { ip, user });
                    }
                }
                Err(IpamError::AddressTaken { handle, .. }) => {
                    return Err(DockerError::AddressTaken { ip, handle })
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// A dynamic address: from this node's blocks of the pool, or, for a network with
    /// a narrower `--subnet` or an `--ip-range`, from that range (whose subnet's own
    /// network and broadcast addresses are never handed out).
    ///
    /// A free address of this node's blocks, or of the block the node would claim
    /// next, is only reserved here, in memory, and allocated by `CreateEndpoint` in the
    /// transaction of the endpoint's record (claiming that block with it): one write
    /// for all. With no block left to claim, the address is allocated now (borrowed
    /// from another node's block).
    async fn claim_dynamic(&self, id: &PoolId, caller: &Caller) -> Result<Ipv4Addr, DockerError> {
        let pool_cidr = self.pool_cidr(&id.pool).await?;
        let mut req = self.alloc_request(id, None, false, caller);
        req.range = id.range.or(id.subnet).filter(|r| *r != pool_cidr);
        if let Some(s) = id.subnet.filter(|s| *s != pool_cidr && s.prefix() <= 30) {
            req.exclude = BTreeSet::from([s.network(), s.broadcast()]);
        }
        self.end_stale_reservations();
        if let Some(ip) = self.ipam().reserve(&req).await? {
            let mut held = held_by(&req);
            held.reserved = Some(Instant::now());
            self.cache().held.insert(ip, held);
            info!(%ip, pool = %id.pool, handle = %req.handle, "dynamic address reserved (allocated with its endpoint)");
            return Ok(ip);
        }
        let a = self.ipam().allocate(&req).await?;
        self.cache().held.insert(a.ip, held_by(&req));
        info!(ip = %a.ip, pool = %id.pool, "dynamic address allocated");
        Ok(a.ip)
    }

    /// Forget reservations whose `CreateEndpoint` never came in time (a later one
    /// still allocates its address if that is free), and the reservations `keep`
    /// rejects: their addresses go back to dynamic requests.
    pub(super) fn end_reservations(&self, keep: impl Fn(&Held) -> bool) -> usize {
        let mut ended = Vec::new();
        self.cache().held.retain(|ip, h| {
            let stays = h.reserved.is_none() || (h.reserving() && keep(h));
            if !stays {
                ended.push(*ip);
            }
            stays
        });
        for ip in &ended {
            self.ipam().unreserve(*ip);
        }
        ended.len()
    }

    fn end_stale_reservations(&self) {
        self.end_reservations(|_| true);
    }

    /// A pool's CIDR, cached (pool CIDRs never change under a name).
    pub(super) async fn pool_cidr(&self, name: &str) -> Result<Ipv4Network, DockerError> {
        if let Some(c) = self.cache().pools.get(name) {
            return Ok(*c);
        }
        let pools = self.ipam().list_pools().await?;
        let mut cache = self.cache();
        for p in &pools {
            cache.pools.insert(p.name.clone(), p.cidr);
        }
        cache.pools.get(name).copied().ok_or_else(|| {
            DockerError::UnknownPool(format!(
                "pool {name} of this network no longer exists; pools: {}",
                pool_list(&pools)
            ))
        })
    }

    /// Release the address, unless the request is a late one of an earlier holder of
    /// it (see `stale_release` in `reclaim.rs`): Docker names only the address, and
    /// after a takeover that address belongs to another container.
    pub async fn release_address(
        self: &Arc<Self>,
        req: ReleaseAddressRequest,
        caller: &Caller,
    ) -> Result<(), DockerError> {
        let _id = PoolId::parse(&req.pool_id)?;
        let ip: Ipv4Addr = req.address.parse().map_err(|_| {
            DockerError::BadRequest(format!(
                "invalid address {:?}: expected an IPv4 address",
                req.address
            ))
        })?;
        if ip.is_link_local() {
            // The 169.254.1.1 next hop handed out as gateway: nothing was allocated.
            return Ok(());
        }
        let claim = self.lock_address(ip).await?;
        let cached = self.cache().held.get(&ip).cloned();
        if cached.as_ref().is_some_and(|h| h.reserved.is_some()) {
            // Only reserved (its `CreateEndpoint` failed or never came): nothing was
            // written, so nothing is, and etcd need not even answer.
            self.cache().held.remove(&ip);
            self.ipam().unreserve(ip);
            info!(%ip, "reservation released");
            return Ok(());
        }
        let held = match cached {
            Some(h) => h,
            None => {
                let report = self.ipam().address(ip).await?;
                let Some(handle) = report.handle else {
                    return Ok(());
                };
                let ours = report.attributes.get(ATTR_ORCHESTRATOR).map(String::as_str)
                    == Some(ORCHESTRATOR)
                    && report.node.as_deref() == Some(self.node());
                if !ours {
                    warn!(%ip, %handle, node = ?report.node, "ReleaseAddress for an address this node's Docker does not hold: left alone");
                    return Ok(());
                }
                Held {
                    handle,
                    dockerd: report.attributes.get(ATTR_DOCKERD).cloned(),
                    reserved: None,
                }
            }
        };
        if let Some(why) = self.stale_release(ip, &held, caller).await? {
            warn!(%ip, handle = %held.handle, "ReleaseAddress ignored: {why}");
            return Ok(());
        }
        // The record of the endpoint `DeleteEndpoint` took down goes in the same
        // transaction: no record outlives its address, and no second write.
        let record = self
            .cache()
            .unreleased
            .get(&ip)
            .filter(|u| u.handle == held.handle)
            .map(|u| u.endpoint.clone());
        self.release_after_answer(claim, ip, held.handle, record);
        Ok(())
    }

    /// Commit the release of `handle` (and the delete of `record`) after
    /// `ReleaseAddress` has answered (`write_behind.rs`). The address's claim lock goes
    /// with it: until the commit, a fixed claim of the address, a reclaim or a repeated
    /// release waits, and the allocator still sees the address taken. A store that
    /// keeps failing is retried for `write_behind::RETRY_FOR`; after that, or a kill, the
    /// allocation and its record stay together and the reconcile frees them.
    fn release_after_answer(
        self: &Arc<Self>,
        claim: KeyGuard<Ipv4Addr>,
        ip: Ipv4Addr,
        handle: String,
        record: Option<String>,
    ) {
        let driver = self.clone();
        let answered = Instant::now();
        self.backend.write_behind().spawn(async move {
            let _claim = claim;
            let also: Vec<Op> = record
                .iter()
                .map(|id| delete_endpoint_op(driver.keys(), driver.node(), id))
                .collect();
            // Exactly the allocation judged before the answer: a handle is never reused.
            let what = format!("release of {ip}");
            let committed = until_committed(answered, &what, || {
                driver.ipam().release_handle_with(&handle, &also)
            })
            .await;
            if let Err(e) = committed {
                warn!(%ip, %handle, error = %e, "release not committed; the reconcile frees the address and its record after its grace period");
                return;
            }
            let mut cache = driver.cache();
            cache.held.remove(&ip);
            if record.is_some() {
                cache.unreleased.remove(&ip);
            }
            info!(%ip, %handle, endpoint = ?record.as_deref().map(short), commit_us = answered.elapsed().as_micros() as u64, "address released");
        });
    }
}

/// What the cache remembers of an allocation the driver just made.
/// The attributes of a Docker allocation: whose it is, and which dockerd asked for it
/// (what the sweep and the reconcile go by).
pub(super) fn allocation_attrs(dockerd: Option<&str>) -> BTreeMap<String, String> {
    let mut attrs = BTreeMap::from([(ATTR_ORCHESTRATOR.to_string(), ORCHESTRATOR.to_string())]);
    if let Some(d) = dockerd {
        attrs.insert(ATTR_DOCKERD.to_string(), d.to_string());
    }
    attrs
}

fn held_by(req: &AllocRequest) -> Held {
    Held {
        handle: req.handle.clone(),
        dockerd: req.attrs.get(ATTR_DOCKERD).cloned(),
        reserved: None,
    }
}

/// The name of the pool created for `--subnet s`: `docker-10.1.0.0-24`.
pub(super) fn created_pool_name(s: Ipv4Network) -> String {
    format!("docker-{}-{}", s.network(), s.prefix())
}

fn pool_list(pools: &[Pool]) -> String {
    if pools.is_empty() {
        return "none".into();
    }
    pools
        .iter()
        .map(|p| format!("{} ({})", p.name, p.cidr))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The reason part of an IPAM CIDR error (its message repeats the value otherwise).
fn reason(e: &IpamError) -> String {
    match e {
        IpamError::InvalidCidr { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// A fresh handle: `docker-` + 32 random hex digits.
pub(super) fn new_handle() -> String {
    let bits: u128 = rand::rng().random();
    format!("docker-{bits:032x}")
}
