//! ADD. In main mode the veth is built while the allocation's transaction is in
//! flight (the address is chosen before the transaction leaves, and the record needs
//! nothing from the kernel), and routed once the transaction has committed: nothing
//! outside the container reaches an address before it is ours.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use brindle_dataplane::{container_mac_for, Dataplane, DataplaneError, EndpointSpec, MacAddr};
use brindle_ipam::{AllocRequest, Assigned, Store};
use futures::future::BoxFuture;
use tracing::{debug, info, warn};

use super::{
    ensure_foreign_netns, micros, segment_for, AddReply, AddRequest, Ctx, Mode, ATTR_CNI_MODE,
    ATTR_CONTAINER, ATTR_IFNAME, ATTR_NETWORK, ORCHESTRATOR_CNI,
};
use super::{CniError, ATTR_ORCHESTRATOR};
use crate::endpoints::{delete_endpoint_op, put_endpoint, put_endpoint_op, EndpointRecord};

/// ADD: allocate (the same address again for a repeated request), in main mode with
/// the endpoint record in the allocation's own transaction and the veth built while
/// that transaction is in flight, then route the veth. On failure, what this call
/// allocated is released (its record in the same write); an address the handle
/// already held is kept (a repeated ADD must not take away a working container's
/// address).
pub async fn add<S: Store>(ctx: &Ctx<'_, S>, req: &AddRequest) -> Result<AddReply, CniError> {
    let started = Instant::now();
    let att = &req.attachment;
    let handle = att.handle();
    debug!(%handle, mode = req.mode.as_str(), "cni add");
    // Everything the veth needs is checked before anything is written.
    let netns = match req.mode {
        Mode::Main => {
            ctx.dataplane()?;
            let netns = req
                .netns
                .as_deref()
                .ok_or_else(|| CniError::env("required env variables [CNI_NETNS] missing"))?;
            ensure_foreign_netns(netns)?;
            Some(netns)
        }
        Mode::Ipam => None,
    };
    let alloc = AllocRequest {
        handle: handle.clone(),
        node: ctx.node.to_string(),
        ip: req.ip,
        pool: req.pool.clone(),
        attrs: BTreeMap::from([
            (ATTR_ORCHESTRATOR.to_string(), ORCHESTRATOR_CNI.to_string()),
            (ATTR_NETWORK.to_string(), req.network.clone()),
            (ATTR_CONTAINER.to_string(), att.container_id.clone()),
            (ATTR_IFNAME.to_string(), att.ifname.clone()),
            (ATTR_CNI_MODE.to_string(), req.mode.as_str().to_string()),
        ]),
        ..AllocRequest::default()
    };
    let Some(netns) = netns else {
        let assigned = ctx.ipam.allocate(&alloc).await?;
        info!(%handle, ip = %assigned.ip, existing = assigned.existing, allocate_us = micros(started.elapsed()), "cni add: address");
        return Ok(reply_for(&assigned));
    };
    let dp = ctx.dataplane()?;
    let built = Built::default();
    let record_op = |a: &Assigned| {
        vec![put_endpoint_op(
            ctx.ipam.keys(),
            &record_for(ctx, req, a.ip),
        )]
    };
    let alongside =
        |a: Assigned| -> BoxFuture<'_, ()> { Box::pin(build_unrouted(ctx, req, netns, a, &built)) };
    let assigned = match ctx
        .ipam
        .allocate_alongside(&alloc, &record_op, &alongside)
        .await
    {
        Ok(assigned) => assigned,
        Err(e) => {
            built.discard(dp).await;
            return Err(e.into());
        }
    };
    let allocated = started.elapsed();
    info!(%handle, ip = %assigned.ip, existing = assigned.existing, allocate_us = micros(allocated), "cni add: address");
    let wired = match built.take() {
        Some((spec, Ok(mac))) if !assigned.existing && spec.ip == assigned.ip => {
            route(dp, &spec).await.map(|()| (spec.host_ifname, mac))
        }
        Some((_, Err(e))) if !assigned.existing && e.errno() != Some(libc::EEXIST) => Err(e.into()),
        other => {
            // A repeated ADD (the address was held already), or a veth of this
            // attachment in the way: one step after the other, as before a write.
            if let Some((spec, Ok(_))) = other {
                discard(dp, &spec).await;
            }
            wire_sequentially(ctx, req, netns, &assigned).await
        }
    };
    match wired {
        Ok((host, mac)) => {
            // The step timings of an ADD (`make bench-cni` reads them from the log):
            // the allocation with the veth built alongside (`veth_us` of it), then
            // the route.
            info!(
                %handle,
                allocate_us = micros(allocated),
                veth_us = micros(built.took()),
                wire_us = micros(started.elapsed() - allocated),
                total_us = micros(started.elapsed()),
                "cni add: done"
            );
            let mut reply = reply_for(&assigned);
            reply.host_ifname = Some(host);
            reply.mac = Some(mac.to_string());
            Ok(reply)
        }
        Err(e) => {
            if !assigned.existing {
                let record = delete_endpoint_op(ctx.ipam.keys(), ctx.node, &handle);
                if let Err(cleanup) = ctx.ipam.release_handle_with(&handle, &[record]).await {
                    warn!(%handle, %cleanup, "cni add: releasing the address after a failure");
                }
            }
            Err(e)
        }
    }
}

fn reply_for(assigned: &Assigned) -> AddReply {
    AddReply {
        ip: assigned.ip,
        pool: assigned.pool.clone(),
        pool_cidr: assigned.pool_cidr,
        host_ifname: None,
        mac: None,
    }
}

/// The endpoint record of a main-plugin attachment at `ip`: everything in it is known
/// before the veth exists (its names from the attachment, its MAC from the address).
fn record_for<S: Store>(ctx: &Ctx<'_, S>, req: &AddRequest, ip: Ipv4Addr) -> EndpointRecord {
    let att = &req.attachment;
    EndpointRecord {
        id: att.handle(),
        node: ctx.node.to_string(),
        orchestrator: ORCHESTRATOR_CNI.to_string(),
        container_id: Some(att.container_id.clone()),
        network: req.network.clone(),
        ip,
        mac: Some(container_mac_for(ip).to_string()),
        host_ifname: att.host_ifname(),
        handle: att.handle(),
        // One network per conflist name, the same on every host.
        segment: Some(segment_for(&req.network)),
        allow_from: req.allow_from.clone(),
    }
}

/// The veth an allocation attempt built for its address, or why it could not, and
/// how long the last build took (logged: it runs under the transaction's time).
#[derive(Default)]
struct Built {
    attempt: Mutex<Option<(EndpointSpec, Result<MacAddr, DataplaneError>)>>,
    took: Mutex<Duration>,
}

impl Built {
    fn take(&self) -> Option<(EndpointSpec, Result<MacAddr, DataplaneError>)> {
        // Only ever held for a take or a put: never poisoned half-way.
        self.attempt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn put(&self, spec: EndpointSpec, made: Result<MacAddr, DataplaneError>, took: Duration) {
        *self.attempt.lock().unwrap_or_else(|e| e.into_inner()) = Some((spec, made));
        *self.took.lock().unwrap_or_else(|e| e.into_inner()) = took;
    }

    fn took(&self) -> Duration {
        *self.took.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delete the veth an attempt made, if it made one.
    async fn discard(&self, dp: &dyn Dataplane) {
        if let Some((spec, Ok(_))) = self.take() {
            discard(dp, &spec).await;
        }
    }
}

async fn discard(dp: &dyn Dataplane, spec: &EndpointSpec) {
    if let Err(cleanup) = dp.delete_endpoint(&spec.host_ifname).await {
        warn!(host = %spec.host_ifname, %cleanup, "cni add: removing a veth built for an address not kept");
    }
}

/// The work alongside the allocation's first transaction: the veth for `assigned.ip`,
/// unrouted. Should that transaction lose its compare, [`add`] finds the address
/// changed and builds the veth again after the allocation. A veth of this name already
/// there is left alone here: it may be a working container's, if this ADD turns out to
/// be a repeated one.
async fn build_unrouted<S: Store>(
    ctx: &Ctx<'_, S>,
    req: &AddRequest,
    netns: &str,
    assigned: Assigned,
    built: &Built,
) {
    let Ok(dp) = ctx.dataplane() else { return };
    let started = Instant::now();
    let att = &req.attachment;
    let spec = EndpointSpec::for_cni(&att.container_id, &att.ifname, netns, assigned.ip, req.mtu);
    if let Some(reaper) = ctx.reaper {
        reaper.settle(&spec.host_ifname).await;
    }
    let made = dp.create_unrouted_veth_into_netns(&spec).await;
    debug!(host = %spec.host_ifname, ok = made.is_ok(), "cni add: veth built alongside the allocation");
    built.put(spec, made, started.elapsed());
}

/// The host's `/32` of a veth built alongside: the endpoint is reachable from now on.
/// Should the route fail, the veth goes (the dataplane deletes it already; an injected
/// or half-made failure is covered all the same, deletes being idempotent).
async fn route(dp: &dyn Dataplane, spec: &EndpointSpec) -> Result<(), CniError> {
    let routed = dp.route_endpoint(spec).await;
    if routed.is_err() {
        discard(dp, spec).await;
    }
    routed.map_err(CniError::from)
}

/// Create the veth and its routes after the allocation. A repeated ADD (the address
/// was held already, so the allocation wrote nothing) writes the record here, after
/// the veth.
async fn wire_sequentially<S: Store>(
    ctx: &Ctx<'_, S>,
    req: &AddRequest,
    netns: &str,
    assigned: &Assigned,
) -> Result<(String, MacAddr), CniError> {
    let att = &req.attachment;
    let dp = ctx.dataplane()?;
    let spec = EndpointSpec::for_cni(&att.container_id, &att.ifname, netns, assigned.ip, req.mtu);
    if let Some(reaper) = ctx.reaper {
        reaper.settle(&spec.host_ifname).await;
    }
    let mac = create_veth(dp, &spec, assigned.existing).await?;
    debug!(host = %spec.host_ifname, "cni add: veth ready");
    if assigned.existing {
        let record = record_for(ctx, req, assigned.ip);
        if let Err(e) = put_endpoint(ctx.ipam.store(), ctx.ipam.keys(), &record).await {
            if let Err(cleanup) = dp.delete_endpoint(&spec.host_ifname).await {
                warn!(host = %spec.host_ifname, %cleanup, "cni add: removing veth after a failed record write");
            }
            return Err(CniError::from(e));
        }
    }
    Ok((spec.host_ifname, mac))
}

/// Create the veth; if the attachment held no address before this ADD, a veth already
/// there is a leftover of an unfinished deletion (a DEL's reaper that has not run yet,
/// in another process): remove it and create again. Should that reaper have removed it
/// in between, the name is free all the same.
async fn create_veth(
    dp: &dyn Dataplane,
    spec: &EndpointSpec,
    existing: bool,
) -> Result<MacAddr, CniError> {
    match dp.create_veth_into_netns(spec).await {
        Err(e) if !existing && e.errno() == Some(libc::EEXIST) => {
            if dp.delete_endpoint(&spec.host_ifname).await? {
                warn!(host = %spec.host_ifname, "cni add: removed a leftover veth of this attachment");
            }
            Ok(dp.create_veth_into_netns(spec).await?)
        }
        other => Ok(other?),
    }
}
