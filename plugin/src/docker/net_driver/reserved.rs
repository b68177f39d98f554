//! `CreateEndpoint` of a dynamic address `RequestAddress` only reserved: the
//! allocation and the endpoint's record go in one transaction, while the kernel
//! builds the veth without its route; the route comes once both are stored, so
//! nothing reaches the address before it is allocated.

use std::net::Ipv4Addr;
use std::time::Instant;

use brindle_dataplane::EndpointSpec;
use brindle_ipam::state;
use brindle_ipam::store::Op;
use brindle_ipam::AllocRequest;
use tracing::{info, warn};

use super::super::error::DockerError;
use super::super::http::Caller;
use super::super::ipam_driver::{allocation_attrs, new_handle};
use super::super::records::DockerEndpoint;
use super::super::{Backend, Driver, Held};
use super::short;

/// Who will hold an endpoint's address.
pub(in crate::docker) enum Holder {
    /// Allocated already (a fixed address, or one allocated when no block had room).
    Allocated(String),
    /// Reserved only: `CreateEndpoint` allocates it, to this handle.
    Reserved(Held),
}

impl Holder {
    pub(in crate::docker) fn handle(&self) -> &str {
        match self {
            Self::Allocated(h) => h,
            Self::Reserved(held) => &held.handle,
        }
    }
}

impl<B: Backend> Driver<B> {
    /// The holder of `ip` for a new endpoint. A free address of this node's own
    /// blocks that this process does not know is a reservation a restart of brindled
    /// forgot (Docker got it from `RequestAddress` just before): it is reserved again
    /// here. Any other address brindle did not hand out is refused.
    pub(super) async fn holder_for_endpoint(
        &self,
        ip: Ipv4Addr,
        caller: &Caller,
    ) -> Result<Holder, DockerError> {
        let cached = self.cache().held.get(&ip).cloned();
        match cached {
            Some(held) if held.reserved.is_some() => return Ok(Holder::Reserved(held)),
            Some(held) => return Ok(Holder::Allocated(held.handle)),
            None => {}
        }
        match self.handle_of(ip).await {
            Ok(handle) => Ok(Holder::Allocated(handle)),
            Err(DockerError::AddressNotAllocated { .. }) if self.in_own_block(ip).await? => {
                let held = Held {
                    handle: new_handle(),
                    dockerd: caller.0.clone(),
                    reserved: Some(Instant::now()),
                };
                warn!(%ip, handle = %held.handle, "CreateEndpoint of an address not allocated in this node's block: a reservation a restart forgot, allocated now");
                self.cache().held.insert(ip, held.clone());
                Ok(Holder::Reserved(held))
            }
            Err(e) => Err(e),
        }
    }

    async fn in_own_block(&self, ip: Ipv4Addr) -> Result<bool, DockerError> {
        let report = self.ipam().address(ip).await?;
        Ok(!report.allocated && report.node.as_deref() == Some(self.node()))
    }

    /// Allocate a reserved address with the endpoint's record, the veth built
    /// meanwhile, then route it. On failure nothing of it is left: the veth is
    /// deleted, and an allocation made is released with its record (the address is
    /// reserved again, for Docker's `ReleaseAddress` that follows).
    pub(super) async fn create_reserved(
        &self,
        spec: &EndpointSpec,
        ep: &DockerEndpoint,
        held: &Held,
    ) -> Result<(), DockerError> {
        let ip = ep.base.ip;
        let alloc = AllocRequest {
            handle: held.handle.clone(),
            node: self.node().to_string(),
            ip: Some(ip),
            attrs: allocation_attrs(held.dockerd.as_deref()),
            ..AllocRequest::default()
        };
        let record = Op::Put {
            key: self.keys().endpoint(&ep.base.node, &ep.base.id),
            value: state::encode(ep),
        };
        let also = |_: &brindle_ipam::Assigned| vec![record.clone()];
        let (built, allocated) = tokio::join!(
            self.build_veth(spec, false),
            self.ipam().allocate_with(&alloc, &also)
        );
        let routed = match (built, allocated) {
            (Ok(()), Ok(a)) => {
                if a.existing {
                    // Held already by this very handle: a retry after the commit.
                    self.persist_endpoint(ep).await
                } else {
                    Ok(())
                }
            }
            (built, Err(e)) => {
                if built.is_ok() {
                    self.discard_veth(spec).await;
                }
                return Err(e.into());
            }
            (Err(e), Ok(_)) => Err(e),
        };
        let routed = match routed {
            Ok(()) => self
                .dataplane()
                .route_endpoint(spec)
                .await
                .map_err(DockerError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = routed {
            self.discard_veth(spec).await;
            let delete =
                crate::endpoints::delete_endpoint_op(self.keys(), self.node(), &ep.base.id);
            if let Err(undo) = self
                .ipam()
                .release_handle_with(&held.handle, &[delete])
                .await
            {
                warn!(%ip, endpoint = %short(&ep.base.id), error = %undo, "cannot release the address of an endpoint that failed");
                // Allocated after all: Docker's `ReleaseAddress` must release it.
                self.mark_allocated(ip);
            }
            return Err(e);
        }
        self.mark_allocated(ip);
        info!(%ip, handle = %held.handle, "reserved address allocated with its endpoint");
        Ok(())
    }

    /// The reservation of `ip` became an allocation.
    fn mark_allocated(&self, ip: Ipv4Addr) {
        if let Some(h) = self.cache().held.get_mut(&ip) {
            h.reserved = None;
        }
        self.ipam().unreserve(ip);
    }

    async fn discard_veth(&self, spec: &EndpointSpec) {
        if let Err(undo) = self.dataplane().delete_endpoint(&spec.host_ifname).await {
            warn!(host = %spec.host_ifname, error = %undo, "cannot remove the veth of an endpoint that failed");
        }
    }
}
