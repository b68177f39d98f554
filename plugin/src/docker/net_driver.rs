//! The NetworkDriver half: networks and endpoints on the routed dataplane.
//!
//! `CreateEndpoint` creates the veth pair on the host (host end `brl<id>` with MAC
//! ee:ee:ee:ee:ee:ee, proxy_arp and a /32 route; peer `tmp<id>` for Docker to move) and
//! persists the endpoint; `Join` hands Docker the peer and a next hop 169.254.1.N with a
//! connected /32 route to it. N is 1 for a container's first brindle network and the
//! lowest free number for each further one, because Docker refuses two routes with the
//! same destination in one container; the host veth answers ARP for any of them. Every
//! endpoint returns its own gateway, so whichever one Docker picks as the container's
//! gateway endpoint, the default route uses that endpoint's own interface and
//! disconnecting another network never takes it away.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use brindle_dataplane::{container_mac_for, host_ifname_for, temp_ifname_for, EndpointSpec};
use brindle_ipam::state::{self, cas_loop, cas_put, Attempt};
use brindle_ipam::{budget, IpamError};
use ipnetwork::Ipv4Network;
use tracing::{debug, info, warn};

use super::containers;
use super::error::DockerError;
use super::http::Caller;
use super::net_options::{segment_of, NetworkOptions};
use super::records::{self, DockerEndpoint, NetworkRecord, NetworkSubnet, ORCHESTRATOR};
use super::wire::{
    CreateEndpointRequest, CreateEndpointResponse, CreateNetworkRequest, EndpointInterface,
    EndpointRequest, InterfaceName, JoinRequest, JoinResponse, NetworkRequest, OperInfoResponse,
    StaticRoute,
};
use super::{Backend, Driver, Held, Unreleased};
use crate::endpoints::EndpointRecord;
use brindle_ipam::cidr::within;

/// `Options` keys of `CreateNetwork`.
const GENERIC: &str = "com.docker.network.generic";
const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
const ENABLE_IPV4: &str = "com.docker.network.enable_ipv4";
const INTERNAL: &str = "com.docker.network.internal";

/// Name prefix of the container interface (`eth0`, `eth1`, ...).
const DST_PREFIX: &str = "eth";

impl<B: Backend> Driver<B> {
    pub async fn create_network(&self, req: CreateNetworkRequest) -> Result<(), DockerError> {
        let id = req.network_id;
        if id.is_empty() {
            return Err(DockerError::BadRequest(
                "CreateNetwork without a NetworkID".into(),
            ));
        }
        let mut opts = NetworkOptions::default();
        for (key, value) in req.options.unwrap_or_default() {
            match key.as_str() {
                GENERIC => {
                    if let Some(generic) = value.as_object() {
                        opts = NetworkOptions::parse(generic)?;
                    }
                }
                ENABLE_IPV6 if value.as_bool() == Some(true) => {
                    return Err(DockerError::BadOption(
                        "brindle networks are IPv4 only: remove --ipv6".into(),
                    ))
                }
                ENABLE_IPV4 if value.as_bool() == Some(false) => {
                    return Err(DockerError::BadOption(
                        "brindle networks need IPv4: remove --ipv4=false".into(),
                    ))
                }
                INTERNAL if value.as_bool() == Some(true) => return Err(DockerError::BadOption(
                    "brindle does not support --internal: its containers are routed and reachable"
                        .into(),
                )),
                // Flags Docker always sends (enable_ipv6=false, ...) and newer daemons'
                // private keys: nothing to do.
                _ => {}
            }
        }
        if req.ipv6_data.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(DockerError::BadOption(
                "brindle networks are IPv4 only: remove the IPv6 --subnet".into(),
            ));
        }
        let data = req.ipv4_data.unwrap_or_default();
        if data.is_empty() {
            return Err(DockerError::BadOption(
                "the network has no IPv4 pool: create it with --ipam-driver brindle".into(),
            ));
        }
        let mut subnets = Vec::new();
        for d in &data {
            if !d.address_space.starts_with("brindle") {
                return Err(DockerError::BadOption(format!(
                    "the brindle network driver needs the brindle IPAM driver (this network uses address space {:?}): add --ipam-driver brindle",
                    d.address_space
                )));
            }
            let subnet: Ipv4Network = d.pool.parse().map_err(|_| {
                DockerError::BadRequest(format!("invalid pool {:?} in CreateNetwork", d.pool))
            })?;
            let gateway = match d.gateway.as_deref() {
                Some(g) => Some(cidr_ip(g)?).filter(|ip| !ip.is_link_local()),
                None => None,
            };
            let mut aux = BTreeMap::new();
            for (name, a) in d.aux_addresses.clone().unwrap_or_default() {
                aux.insert(name, cidr_ip(&a)?);
            }
            subnets.push(NetworkSubnet {
                subnet,
                gateway,
                aux,
            });
        }
        let shown: Vec<Ipv4Network> = subnets.iter().map(|s| s.subnet).collect();
        let pool_ids = self.take_pool_ids(&shown).await;
        // Everything is checked before the first write, so a refusal leaves nothing.
        let nat_changes = match opts.nat_outgoing {
            Some(want) => {
                self.nat_outgoing_changes(&id, &shown, &pool_ids, want)
                    .await?
            }
            None => Vec::new(),
        };
        let record = NetworkRecord {
            id: id.clone(),
            node: self.node().to_string(),
            subnets,
            mtu: opts.mtu,
            allow_from: opts.allow_from,
            segment: Some(segment_of(&shown, &pool_ids)),
        };
        if let Some(want) = opts.nat_outgoing {
            // Should the record write fail, Docker releases the pools, and with them
            // a pool created for this network.
            self.apply_nat_outgoing(&nat_changes, want).await?;
        }
        records::put(self.store(), self.keys().docker_network(&id), &record).await?;
        info!(network = %id, mtu = ?record.mtu, segment = ?record.segment, allow_from = ?record.allow_from, nat_outgoing = ?opts.nat_outgoing, "network created");
        self.cache().networks.insert(id, record);
        Ok(())
    }

    pub async fn delete_network(&self, req: NetworkRequest) -> Result<(), DockerError> {
        let id = req.network_id;
        let cached = self.cache().networks.remove(&id);
        let record = match cached {
            Some(r) => Some(r),
            None => {
                records::get::<_, NetworkRecord>(self.store(), self.keys().docker_network(&id))
                    .await?
            }
        };
        records::delete(self.store(), self.keys().docker_network(&id)).await?;
        info!(network = %id, "network deleted");
        // Docker released the network's pools before this call; pools created for
        // its subnets (or holding them) can go now that no record refers to them.
        let subnets: Vec<Ipv4Network> = record
            .map(|r| r.subnets.iter().map(|s| s.subnet).collect())
            .unwrap_or_default();
        if subnets.iter().any(|s| s.prefix() > 0) {
            let markers = match records::list_pool_markers(self.store(), self.keys()).await {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "cannot list the pools created for docker subnets");
                    Vec::new()
                }
            };
            for (pool, marker) in markers {
                if subnets
                    .iter()
                    .any(|s| s.prefix() > 0 && within(*s, marker.cidr))
                {
                    self.remove_created_pool(pool).await;
                }
            }
        }
        Ok(())
    }

    /// The network, from the cache or etcd.
    async fn network(&self, id: &str) -> Result<NetworkRecord, DockerError> {
        if let Some(n) = self.cache().networks.get(id) {
            return Ok(n.clone());
        }
        let record: Option<NetworkRecord> =
            records::get(self.store(), self.keys().docker_network(id)).await?;
        let mut record =
            record.ok_or_else(|| DockerError::UnknownNetwork { id: id.to_string() })?;
        if record.segment.is_none() {
            // Written before segments existed: the best identity the pools still give.
            let subnets: Vec<Ipv4Network> = record.subnets.iter().map(|s| s.subnet).collect();
            record.segment = Some(self.rebuilt_segment(&subnets).await);
        }
        self.cache().networks.insert(id.to_string(), record.clone());
        Ok(record)
    }

    pub async fn create_endpoint(
        &self,
        req: CreateEndpointRequest,
        caller: &Caller,
    ) -> Result<CreateEndpointResponse, DockerError> {
        let eid = req.endpoint_id;
        if eid.is_empty() {
            return Err(DockerError::BadRequest(
                "CreateEndpoint without an EndpointID".into(),
            ));
        }
        // Docker's own keys (port maps, DNS servers, MAC) are all `com.docker.*`; the
        // rest are the user's `--driver-opt`s, and brindle has none.
        for (k, v) in req.options.iter().flatten() {
            if !k.starts_with("com.docker.") {
                let v = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                return Err(DockerError::BadOption(format!(
                    "unsupported endpoint option {k}={v}: brindle takes no --driver-opt"
                )));
            }
        }
        let net = self.network(&req.network_id).await?;
        let iface = req.interface.unwrap_or_default();
        if !iface.address_ipv6.is_empty() {
            return Err(DockerError::BadOption(format!(
                "IPv6 address {} given, but brindle endpoints are IPv4 only",
                iface.address_ipv6
            )));
        }
        if iface.address.is_empty() {
            return Err(DockerError::BadOption(
                "the endpoint has no IPv4 address: the network must use --ipam-driver brindle"
                    .into(),
            ));
        }
        let ip = cidr_ip(&iface.address)?;
        let reply = |mac: &str| CreateEndpointResponse {
            // Only what Docker left empty: echoing a field it set makes it roll back.
            interface: iface.mac_address.is_empty().then(|| EndpointInterface {
                mac_address: mac.to_string(),
                ..Default::default()
            }),
        };
        let existing = self.cache().endpoints.get(&eid).cloned();
        if let Some(ep) = existing.filter(|e| e.base.ip == ip) {
            // A repeated call: the veth and the record exist already.
            return Ok(reply(ep.base.mac.as_deref().unwrap_or_default()));
        }
        // Until the record and the route are both in place, a `ReleaseAddress` of the
        // address (a late one of an earlier holder) waits: it would take a record
        // without its route for a deleted endpoint's (`stale_release`).
        let _claim = self.lock_address(ip).await?;
        let holder = self.holder_for_endpoint(ip, caller).await?;
        let handle = holder.handle().to_string();
        // A veth of a deleted endpoint that served this address may still be going.
        self.backend.reaper().settle_ip(ip).await;
        let mut spec = EndpointSpec::for_docker(&eid, ip, net.mtu);
        // A MAC known beforehand, so the record can be written while the veth is built.
        spec.container_mac = Some(container_mac_for(ip));
        let mac = if iface.mac_address.is_empty() {
            container_mac_for(ip).to_string()
        } else {
            iface.mac_address.clone()
        };
        let ep = DockerEndpoint {
            base: EndpointRecord {
                id: eid.clone(),
                node: self.node().to_string(),
                orchestrator: ORCHESTRATOR.to_string(),
                container_id: None,
                network: net.id.clone(),
                ip,
                mac: Some(mac.clone()),
                host_ifname: spec.host_ifname.clone(),
                handle,
                segment: net.segment.clone(),
                allow_from: net.allow_from.clone(),
            },
            sandbox: None,
            gateway: None,
            dockerd: caller.0.clone(),
        };
        if let Holder::Reserved(held) = &holder {
            self.create_reserved(&spec, &ep, held).await?;
            info!(endpoint = %short(&eid), network = %short(&net.id), %ip, host = %spec.host_ifname, "endpoint created");
            self.cache().endpoints.insert(eid, ep);
            return Ok(reply(&mac));
        }
        // The etcd write and the kernel's work overlap: either alone is what a kill
        // between two sequential steps would leave, which the retry and the reconcile
        // repair (see the table in `mod.rs`).
        let (wired, persisted) =
            tokio::join!(self.build_veth(&spec, true), self.persist_endpoint(&ep));
        // Not acknowledged, so Docker will not delete it: undo what was made.
        match (wired, persisted) {
            (Ok(()), Ok(())) => {}
            (Err(e), persisted) => {
                if persisted.is_ok() {
                    let key = self.keys().endpoint(self.node(), &eid);
                    if let Err(undo) = records::delete(self.store(), key).await {
                        warn!(endpoint = %short(&eid), error = %undo, "cannot remove the record of an endpoint that failed");
                    }
                }
                return Err(e);
            }
            (Ok(()), Err(e)) => {
                if let Err(undo) = self.dataplane().delete_endpoint(&spec.host_ifname).await {
                    warn!(host = %spec.host_ifname, error = %undo, "cannot remove the veth of an endpoint that failed");
                }
                return Err(e);
            }
        }
        info!(endpoint = %short(&eid), network = %short(&net.id), %ip, host = %spec.host_ifname, "endpoint created");
        self.cache().endpoints.insert(eid, ep);
        Ok(reply(&mac))
    }

    /// The endpoint's veth pair, and its /32 route when `routed`. The name derives
    /// from the endpoint id: a veth by that name is what an earlier attempt of this
    /// very call left when a kill interrupted it (Docker retries the call), so it is
    /// replaced.
    async fn build_veth(&self, spec: &EndpointSpec, routed: bool) -> Result<(), DockerError> {
        let dp = self.dataplane();
        let create = || async {
            if routed {
                dp.create_veth_on_host(spec).await
            } else {
                dp.create_unrouted_veth_on_host(spec).await
            }
        };
        match create().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.errno() == Some(libc::EEXIST)
                    && dp.host_veth(&spec.host_ifname).await?.is_some() =>
            {
                warn!(host = %spec.host_ifname, "replacing the veth an interrupted CreateEndpoint of this endpoint left");
                dp.delete_endpoint(&spec.host_ifname).await?;
                create().await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn persist_endpoint(&self, ep: &DockerEndpoint) -> Result<(), DockerError> {
        let key = self.keys().endpoint(&ep.base.node, &ep.base.id);
        records::put(self.store(), key, ep).await?;
        Ok(())
    }

    /// The IPAM handle holding `ip` for this node's Docker.
    async fn handle_of(&self, ip: Ipv4Addr) -> Result<String, DockerError> {
        if let Some(h) = self.cache().held.get(&ip) {
            return Ok(h.handle.clone());
        }
        let report = self.ipam().address(ip).await?;
        let Some(handle) = report.handle else {
            return Err(DockerError::AddressNotAllocated { ip });
        };
        let ours = report
            .attributes
            .get(super::ipam_driver::ATTR_ORCHESTRATOR)
            .map(String::as_str)
            == Some(ORCHESTRATOR)
            && report.node.as_deref() == Some(self.node());
        if !ours {
            return Err(DockerError::AddressNotOurs {
                ip,
                handle,
                node: report.node.unwrap_or_else(|| "unknown".into()),
            });
        }
        let dockerd = report
            .attributes
            .get(super::ipam_driver::ATTR_DOCKERD)
            .cloned();
        self.cache().held.insert(
            ip,
            Held {
                handle: handle.clone(),
                dockerd,
                reserved: None,
            },
        );
        Ok(handle)
    }

    /// The endpoint, from the cache or etcd.
    async fn endpoint(&self, id: &str) -> Result<Option<DockerEndpoint>, DockerError> {
        if let Some(ep) = self.cache().endpoints.get(id) {
            return Ok(Some(ep.clone()));
        }
        let key = self.keys().endpoint(self.node(), id);
        let ep: Option<DockerEndpoint> = records::get(self.store(), key).await?;
        if let Some(ep) = &ep {
            self.cache().endpoints.insert(id.to_string(), ep.clone());
        }
        Ok(ep)
    }

    /// Load every Docker endpoint of this node once (Join needs the whole picture).
    pub(super) async fn load_endpoints(&self) -> Result<(), DockerError> {
        if self.cache().endpoints_loaded {
            return Ok(());
        }
        let all = records::list_docker_endpoints(self.store(), self.keys(), self.node()).await?;
        let mut cache = self.cache();
        for ep in all {
            // Deleted already; the record only waits for its address's release.
            if cache.unreleased.values().any(|u| u.endpoint == ep.base.id) {
                continue;
            }
            cache.endpoints.entry(ep.base.id.clone()).or_insert(ep);
        }
        cache.endpoints_loaded = true;
        Ok(())
    }

    pub async fn join(&self, req: JoinRequest) -> Result<JoinResponse, DockerError> {
        let eid = req.endpoint_id;
        let Some(mut ep) = self.endpoint(&eid).await? else {
            return Err(DockerError::UnknownEndpoint { id: eid });
        };
        let sandbox = req.sandbox_key;
        let deadline = budget::deadline_after(budget::OPERATION);
        let _join = self
            .joins
            .lock(sandbox.clone(), deadline)
            .await
            .map_err(IpamError::from)?;
        let gateway = match (ep.sandbox.as_deref(), ep.gateway) {
            (Some(s), Some(gw)) if s == sandbox => gw,
            _ => self.free_next_hop(&eid, &sandbox).await?,
        };
        // In memory only: the sandbox itself holds the choice (Docker routes the next
        // hop there), so a restarted brindled learns it from the kernel, and Join costs
        // no etcd write.
        ep.sandbox = Some(sandbox.clone());
        ep.gateway = Some(gateway);
        info!(endpoint = %short(&eid), %sandbox, %gateway, "endpoint joined");
        self.cache().endpoints.insert(eid.clone(), ep);
        Ok(JoinResponse {
            interface_name: InterfaceName {
                src_name: temp_ifname_for(&eid),
                dst_prefix: DST_PREFIX.to_string(),
            },
            gateway: gateway.to_string(),
            static_routes: vec![StaticRoute {
                destination: format!("{gateway}/32"),
                route_type: 1,
                next_hop: String::new(),
            }],
            disable_gateway_service: true,
        })
    }

    /// The first 169.254.1.N next hop the sandbox does not use yet: neither routed in
    /// its namespace (interfaces Docker moved in after earlier `Join`s, whoever served
    /// them) nor chosen by a `Join` of this process whose interface is not in yet.
    async fn free_next_hop(&self, eid: &str, sandbox: &str) -> Result<Ipv4Addr, DockerError> {
        let mut used = self
            .dataplane()
            .next_hops_in_netns(Path::new(sandbox))
            .await?;
        used.extend(
            self.cache()
                .endpoints
                .values()
                .filter(|e| e.base.id != eid && e.sandbox.as_deref() == Some(sandbox))
                .filter_map(|e| e.gateway),
        );
        (1..=254u8)
            .map(|n| Ipv4Addr::new(169, 254, 1, n))
            .find(|gw| !used.contains(gw))
            .ok_or(DockerError::TooManyNetworks)
    }

    /// Docker moves the interface back to the host itself; forget the sandbox so its
    /// next hop is free again (the record follows at `DeleteEndpoint`).
    pub fn leave(&self, req: EndpointRequest) {
        if let Some(ep) = self.cache().endpoints.get_mut(&req.endpoint_id) {
            ep.sandbox = None;
            ep.gateway = None;
        }
        info!(endpoint = %short(&req.endpoint_id), "endpoint left");
    }

    pub async fn delete_endpoint(&self, req: EndpointRequest) -> Result<(), DockerError> {
        let eid = req.endpoint_id;
        // The name derives from the id: the veth goes even if the record is lost.
        let host = host_ifname_for(&eid);
        // An endpoint whose address was taken over: Docker's `ReleaseAddress` that
        // follows is stale (`reclaim.rs`).
        self.arm_stale_release(&eid);
        // etcd down and not cached: delete the slow, sure way.
        let ep = self.endpoint(&eid).await.unwrap_or_default();
        // The address's route is this endpoint's only while its allocation is: after a
        // takeover it routes the new holder's veth (delete just this veth then).
        let holder = ep.filter(|e| {
            self.cache()
                .held
                .get(&e.base.ip)
                .is_none_or(|h| h.handle == e.base.handle)
        });
        match &holder {
            Some(e) => {
                // Unroute the address at once; the kernel's teardown of the veth pair
                // (~20 ms, mostly waiting for RCU) need not hold Docker up. The reaper
                // deletes exactly this link; until it is gone, a `CreateEndpoint` of
                // the same address waits for it.
                self.dataplane().del_host_route(e.base.ip).await?;
                if let Some(link) = self.dataplane().host_veth(&host).await? {
                    self.backend.reaper().schedule(link, Some(e.base.ip));
                }
            }
            None => {
                self.dataplane().delete_endpoint(&host).await?;
            }
        }
        // Forgotten first: the endpoint is gone for `ReleaseAddress` (which ignores a
        // release of an address a live endpoint holds); a retried `DeleteEndpoint`
        // reads the record again.
        let waits_for_release = {
            let mut cache = self.cache();
            cache.endpoints.remove(&eid);
            holder.map(|e| {
                // Its record goes in the transaction that releases the address, which
                // Docker asks for next: one write for both. Should that never come, the
                // reconcile removes both once dockerd no longer lists the endpoint.
                let unreleased = Unreleased {
                    endpoint: eid.clone(),
                    handle: e.base.handle,
                };
                cache.unreleased.insert(e.base.ip, unreleased);
            })
        };
        if waits_for_release.is_some() {
            info!(endpoint = %short(&eid), %host, "endpoint deleted; its record goes with its address");
            return Ok(());
        }
        let key = self.keys().endpoint(self.node(), &eid);
        records::delete(self.store(), key).await.map_err(|source| {
            DockerError::RecordNotDeleted {
                endpoint: eid.clone(),
                source,
            }
        })?;
        info!(endpoint = %short(&eid), %host, "endpoint deleted");
        Ok(())
    }

    /// Learn the endpoint's container from Docker's API once `Join` is answered (Docker
    /// lists the container on the network only then), and record it.
    pub fn spawn_container_lookup(self: &Arc<Self>, network: String, endpoint: String) {
        let Some(socket) = self.backend.docker_api_socket().map(Path::to_path_buf) else {
            return;
        };
        let driver = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(20);
            for _ in 0..40 {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
                if !driver.cache().endpoints.contains_key(&endpoint) {
                    return; // deleted meanwhile
                }
                match containers::container_of(&socket, &network, &endpoint).await {
                    Ok(Some(id)) => {
                        if let Err(e) = driver.record_container(&endpoint, id).await {
                            warn!(endpoint = %short(&endpoint), error = %e, "cannot record the endpoint's container");
                        }
                        return;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(endpoint = %short(&endpoint), error = %e, "cannot ask dockerd for the endpoint's container (--docker-api-socket)");
                        return;
                    }
                }
            }
        });
    }

    /// Set the container id of an endpoint record, unless the record is gone (a
    /// compare-and-swap, so a concurrent delete is never undone).
    async fn record_container(&self, endpoint: &str, container: String) -> Result<(), DockerError> {
        let key = &self.keys().endpoint(self.node(), endpoint);
        let wanted = container.as_str();
        let (_, committed) = cas_loop::<IpamError, _, _>(self.store(), || async move {
            let Some(current) = state::read::<DockerEndpoint>(self.store(), key).await? else {
                return Ok(Attempt::Done(()));
            };
            if current.value.base.container_id.as_deref() == Some(wanted) {
                return Ok(Attempt::Done(()));
            }
            let mut ep = current.value;
            ep.base.container_id = Some(wanted.to_string());
            Ok(Attempt::Commit(
                cas_put(key, Some(current.revision), &ep),
                (),
            ))
        })
        .await?;
        if committed.is_some() {
            debug!(endpoint = %short(endpoint), container = %short(&container), "endpoint's container recorded");
            if let Some(cached) = self.cache().endpoints.get_mut(endpoint) {
                cached.base.container_id = Some(container);
            }
        }
        Ok(())
    }

    pub fn oper_info(&self, req: &EndpointRequest) -> OperInfoResponse {
        let mut value = BTreeMap::new();
        if let Some(ep) = self.cache().endpoints.get(&req.endpoint_id) {
            value.insert("brindle.host_interface".into(), ep.base.host_ifname.clone());
            value.insert("brindle.ip".into(), ep.base.ip.to_string());
            value.insert("brindle.node".into(), ep.base.node.clone());
            if let Some(gw) = ep.gateway {
                value.insert("brindle.next_hop".into(), gw.to_string());
            }
        }
        OperInfoResponse { value }
    }
}

/// The address of a CIDR string Docker sends (`10.0.0.5/32`); a bare address works too.
fn cidr_ip(s: &str) -> Result<Ipv4Addr, DockerError> {
    s.parse::<Ipv4Network>()
        .map(|n| n.ip())
        .or_else(|_| s.parse::<Ipv4Addr>())
        .map_err(|_| DockerError::BadRequest(format!("invalid IPv4 address {s:?}")))
}

/// The first 12 characters of a Docker id, as `docker ps` shows them.
pub(super) fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

mod reserved;
use reserved::Holder;

#[cfg(test)]
mod tests;
