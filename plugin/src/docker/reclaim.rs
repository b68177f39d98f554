//! Addresses a dockerd never released: the fixed-IP-after-restart problem (calico#746).
//!
//! Docker sends `ReleaseAddress` when a container stops. If brindled is unreachable at
//! that moment (restarting, or dockerd shutting down around it), the release is lost
//! and Docker forgets the endpoint; the address stays allocated in etcd. When the
//! container comes back (`--restart always`) its `RequestAddress` for the same `--ip`
//! would then fail with "already in use", forever.
//!
//! `RequestAddress` carries no container or endpoint id, so the new request cannot be
//! matched to the old allocation by name. Instead the old holder is proven dead:
//! 1. the allocation is a Docker one of this node (`orchestrator=docker`, `node`);
//! 2. it was made by a dockerd instance (`dockerd=PID:STARTTIME`) that is not the caller
//!    and no longer runs, so nobody will ever release it (a live daemon still may:
//!    a container may be starting with it, so a live daemon's allocations are not
//!    touched), or its endpoint was deleted and the release lost: the endpoint's
//!    record is there but its route is not (`DeleteEndpoint` unroutes first and leaves
//!    the record to the release; under the address's claim lock no `CreateEndpoint` is
//!    half-way, so nothing else leaves a record without its route);
//! 3. no interface on this host routes the address (no live container uses it, e.g.
//!    one kept running across the restart by `--live-restore`);
//! 4. it is not the `--gateway` or an `--aux-address` of an existing network.
//!
//! Only then is the old handle released (exactly the addresses that handle holds, so a
//! concurrent change elsewhere is never undone) and the address claimed for the caller.
//! The same test drives a sweep, run once per new dockerd instance, that frees the
//! dynamic addresses and endpoint records such a restart left behind.
//!
//! # Late releases of the previous holder
//!
//! Docker may still speak for the old endpoint after its address went to a new
//! container: the new daemon cleans up its predecessor's endpoints (with
//! `--live-restore` it adopts the old containers and stops them later), a failed
//! `DeleteEndpoint` is retried, a request of the old daemon was still in flight.
//! `ReleaseAddress` names only the address, so without care it would free the new
//! container's allocation and the next container would get the same address. A release
//! is judged against the allocation's identity, its handle and the `dockerd` that asked
//! for it, and against the endpoint using it ([`Driver::stale_release`]):
//! - an allocation that a live endpoint of this node holds (a record with the same
//!   address and handle, and the address routed to its veth) is not released: Docker
//!   deletes an endpoint before it releases its address, so the release belongs to
//!   someone else (a record whose route is gone is an endpoint `DeleteEndpoint` took
//!   down: its record waits for this release and goes with it);
//! - an allocation requested by another dockerd that still runs is not released by
//!   this one (a daemon releases what it, or a predecessor that is gone, asked for);
//! - between the takeover and the new container's `CreateEndpoint`, the old endpoint's
//!   `DeleteEndpoint` marks the address: the `ReleaseAddress` Docker sends right after
//!   it is ignored ([`Driver::arm_stale_release`]; kept in memory, for a minute).
//!
//! The release itself is by the handle judged: a handle is never reused, so the check
//! and the release cannot be about two different allocations.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brindle_dataplane::RouteTarget;
use tracing::{info, warn};

use super::dockerd;
use super::error::DockerError;
use super::http::Caller;
use super::ipam_driver::{ATTR_DOCKERD, ATTR_ORCHESTRATOR};
use super::net_driver::short;
use super::records::{self, NetworkRecord, ORCHESTRATOR};
use super::{Backend, Driver, Held, Unreleased};
use crate::endpoints::{delete_endpoint_op, list_endpoints};
use brindle_ipam::store::Op;

/// How long after an old endpoint's `DeleteEndpoint` its `ReleaseAddress` is expected
/// (Docker sends them back to back).
const STALE_RELEASE_WINDOW: Duration = Duration::from_secs(60);

impl<B: Backend> Driver<B> {
    /// `ip` is allocated to `holder`. Release it if its owner is provably gone (see the
    /// module doc) and return `None`; otherwise return who uses it, for the error.
    /// Called with `self.claims` held.
    pub(super) async fn try_reclaim(
        &self,
        ip: Ipv4Addr,
        holder: &str,
        caller: &Caller,
    ) -> Result<Option<String>, DockerError> {
        let report = self.ipam().address(ip).await?;
        let Some(handle) = report.handle.clone() else {
            return Ok(None); // released meanwhile
        };
        let node = report.node.clone().unwrap_or_default();
        let attrs = &report.attributes;
        let docker = attrs.get(ATTR_ORCHESTRATOR).map(String::as_str) == Some(ORCHESTRATOR);
        let live = self.live_routes().await?;
        let networks = self.local_networks().await?;

        // Who holds it, for the message (and step 4).
        let user = list_endpoints(self.store(), self.keys(), Some(&node))
            .await?
            .into_iter()
            .find(|e| e.ip == ip && e.handle == handle);
        let reserved = (docker && node == self.node())
            .then(|| reserved_by(&networks, ip))
            .flatten();
        let describe = || match (&user, &reserved) {
            (Some(e), _) => match &e.container_id {
                Some(c) => format!(
                    "container {} (endpoint {}) on node {node}",
                    short(c),
                    short(&e.id)
                ),
                None => format!("endpoint {} on node {node}", short(&e.id)),
            },
            (None, Some(r)) => r.clone(),
            (None, None) if docker => {
                format!("another Docker container of node {node} (handle {handle})")
            }
            (None, None) => format!(
                "handle {handle} ({} on node {node})",
                attrs
                    .get(ATTR_ORCHESTRATOR)
                    .map(String::as_str)
                    .unwrap_or("no orchestrator")
            ),
        };

        let owner = attrs.get(ATTR_DOCKERD);
        let ours_and_unused = handle == holder
            && docker
            && node == self.node()
            && reserved.is_none()
            && !live.contains_key(&ip);
        let dockerd_gone =
            matches!((&caller.0, owner), (Some(me), Some(o)) if me != o && !dockerd::alive(o));
        // Its endpoint's record without a route: `DeleteEndpoint` took it down and its
        // `ReleaseAddress` was lost (brindled was killed in between). With the claim
        // lock held no `CreateEndpoint` is half-way on this address, so nothing else
        // leaves a record without its route. (A caller whose dockerd is unknown never
        // takes anything over.)
        let release_lost = user.is_some() && caller.0.is_some();
        if !(ours_and_unused && (dockerd_gone || release_lost)) {
            return Ok(Some(describe()));
        }

        // The old endpoint's record goes in the release's transaction: a kill between
        // two writes would leave it without its address.
        let also: Vec<Op> = user
            .iter()
            .map(|e| delete_endpoint_op(self.keys(), self.node(), &e.id))
            .collect();
        self.ipam().release_handle_with(&handle, &also).await?;
        self.cache().held.remove(&ip);
        if let Some(e) = &user {
            self.remember_forgotten(&e.id, e.ip);
        }
        if dockerd_gone {
            info!(%ip, %handle, old_dockerd = ?owner, "took over an address its dockerd never released (it no longer runs and no container uses the address)");
        } else {
            info!(%ip, %handle, "took over the address of a deleted endpoint whose release was lost");
        }
        Ok(None)
    }

    /// Note the caller's dockerd; the first request of a new instance sweeps what
    /// earlier, no longer running instances left behind (in the background).
    pub fn observe(self: &Arc<Self>, caller: &Caller) {
        let Some(id) = caller.0.clone() else {
            return;
        };
        if !self.cache().dockerds.insert(id.clone()) {
            return;
        }
        let driver = self.clone();
        tokio::spawn(async move {
            match driver.sweep_orphans(&id).await {
                Ok((0, 0)) => {}
                Ok((addresses, endpoints)) => info!(
                    addresses,
                    endpoints, "released what dockerd instances that no longer run left behind"
                ),
                Err(e) => {
                    warn!(error = %e, "cannot sweep addresses left by earlier dockerd instances; will retry");
                    driver.cache().dockerds.remove(&id);
                }
            }
        });
    }

    /// Release Docker allocations and delete endpoint records of this node that belong
    /// to dockerd instances that no longer run and that no live interface uses.
    /// Returns (addresses released, endpoint records deleted).
    pub async fn sweep_orphans(&self, current: &str) -> Result<(usize, usize), DockerError> {
        let dead = |owner: Option<&String>| {
            owner.is_some_and(|o| o.as_str() != current && !dockerd::alive(o))
        };
        let networks = self.local_networks().await?;
        let live = self.live_routes().await?;
        // Reservations of dead instances: their `CreateEndpoint` will never come.
        let mut addresses = self.end_reservations(|h| !dead(h.dockerd.as_ref()));
        for block in self.ipam().all_blocks().await? {
            for (ip, a) in &block.allocations {
                let orphan = a.attrs.get(ATTR_ORCHESTRATOR).map(String::as_str)
                    == Some(ORCHESTRATOR)
                    && a.node() == Some(self.node())
                    && dead(a.attrs.get(ATTR_DOCKERD))
                    && !live.contains_key(ip)
                    && reserved_by(&networks, *ip).is_none();
                if orphan {
                    let _claim = self.lock_address(*ip).await?;
                    // Exactly what that handle holds: never an address claimed since.
                    let released = self.ipam().release_handle(&a.handle).await?;
                    if !released.is_empty() {
                        addresses += 1;
                        self.cache().held.remove(ip);
                        info!(%ip, handle = %a.handle, "released an address of a dockerd that no longer runs");
                    }
                }
            }
        }
        let mut endpoints = 0;
        for ep in records::list_docker_endpoints(self.store(), self.keys(), self.node()).await? {
            let in_use = live.get(&ep.base.ip) == Some(&ep.base.host_ifname);
            if dead(ep.dockerd.as_ref()) && !in_use {
                self.forget_endpoint(&ep.base.id, ep.base.ip).await?;
                endpoints += 1;
            }
        }
        Ok((addresses, endpoints))
    }

    /// Delete an endpoint record (its interface is already gone) whose address `ip` is
    /// free for others now; remember it for Docker's late requests about it.
    async fn forget_endpoint(&self, id: &str, ip: Ipv4Addr) -> Result<(), DockerError> {
        let key = self.keys().endpoint(self.node(), id);
        records::delete(self.store(), key).await?;
        self.remember_forgotten(id, ip);
        Ok(())
    }

    /// The record of endpoint `id` is deleted: forget it, and remember it for Docker's
    /// late requests about it.
    fn remember_forgotten(&self, id: &str, ip: Ipv4Addr) {
        let mut cache = self.cache();
        cache.endpoints.remove(id);
        cache.unreleased.retain(|_, u| u.endpoint != id);
        cache.reclaimed.insert(id.to_string(), ip);
        info!(endpoint = %short(id), "deleted the record of an endpoint whose container is gone");
    }

    /// `DeleteEndpoint` of an endpoint whose address was taken over: Docker releases its
    /// address next, and that release is stale.
    pub(super) fn arm_stale_release(&self, endpoint: &str) {
        let mut cache = self.cache();
        if let Some(ip) = cache.reclaimed.remove(endpoint) {
            info!(endpoint = %short(endpoint), %ip, "DeleteEndpoint of an endpoint whose address was taken over: its ReleaseAddress will be ignored");
            cache
                .stale_releases
                .insert(ip, (endpoint.to_string(), Instant::now()));
        }
    }

    /// Why a `ReleaseAddress` of `ip` from `caller` must not release `held`, if it
    /// must not (see the module doc). Called with `self.claims` held.
    pub(super) async fn stale_release(
        &self,
        ip: Ipv4Addr,
        held: &Held,
        caller: &Caller,
    ) -> Result<Option<String>, DockerError> {
        let armed = self.cache().stale_releases.remove(&ip);
        if let Some((endpoint, at)) = armed.filter(|(_, at)| at.elapsed() < STALE_RELEASE_WINDOW) {
            return Ok(Some(format!(
                "it follows the DeleteEndpoint of endpoint {} {} ms ago, whose address was taken over by another container",
                short(&endpoint),
                at.elapsed().as_millis()
            )));
        }
        if let (Some(me), Some(owner)) = (&caller.0, &held.dockerd) {
            if me != owner && dockerd::alive(owner) {
                return Ok(Some(format!(
                    "the address was requested by dockerd {owner}, which still runs, not by the caller (dockerd {me})"
                )));
            }
        }
        self.load_endpoints().await?;
        let user = self
            .cache()
            .endpoints
            .values()
            .find(|e| e.base.ip == ip && e.base.handle == held.handle)
            .map(|e| (e.base.id.clone(), e.base.host_ifname.clone()));
        let Some((id, host_ifname)) = user else {
            return Ok(None);
        };
        if self.live_routes().await?.get(&ip) == Some(&host_ifname) {
            return Ok(Some(format!(
                "endpoint {} still uses it (Docker deletes an endpoint before releasing its address): a late release of an earlier holder",
                short(&id)
            )));
        }
        // Its record without its route: `DeleteEndpoint` took it down before a restart
        // of brindled forgot that (the record waits for this release).
        let mut cache = self.cache();
        cache.endpoints.remove(&id);
        cache.unreleased.insert(
            ip,
            Unreleased {
                endpoint: id,
                handle: held.handle.clone(),
            },
        );
        Ok(None)
    }

    /// Addresses routed to an existing interface on this host, with that interface.
    async fn live_routes(&self) -> Result<HashMap<Ipv4Addr, String>, DockerError> {
        Ok(self
            .dataplane()
            .list_routes_with_our_protocol()
            .await?
            .into_iter()
            .filter(|r| r.dst.prefix() == 32)
            .filter_map(|r| match r.target {
                RouteTarget::Interface {
                    ifname: Some(name), ..
                } => Some((r.dst.ip(), name)),
                _ => None,
            })
            .collect())
    }

    async fn local_networks(&self) -> Result<Vec<NetworkRecord>, DockerError> {
        Ok(records::list_networks(self.store(), self.keys())
            .await?
            .into_iter()
            .filter(|n| n.node == self.node())
            .collect())
    }
}

/// `the gateway of network 0123456789ab` when a network reserves `ip`.
fn reserved_by(networks: &[NetworkRecord], ip: Ipv4Addr) -> Option<String> {
    networks.iter().find_map(|n| {
        n.reserves(ip)
            .map(|what| format!("the {what} of network {}", short(&n.id)))
    })
}
