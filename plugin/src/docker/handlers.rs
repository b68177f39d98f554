//! One axum handler per Docker call: decode, call the driver, encode. No logic here.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use tracing::debug;

use super::error::DockerError;
use super::http::{Caller, DockerJson};
use super::wire::*;
use super::{Backend, Driver, GLOBAL_ADDRESS_SPACE, IMPLEMENTS, LOCAL_ADDRESS_SPACE};

type Reply<T> = Result<Json<T>, DockerError>;
type D<B> = State<Arc<Driver<B>>>;

pub async fn activate() -> Json<ActivateResponse> {
    debug!("Plugin.Activate");
    Json(ActivateResponse {
        implements: IMPLEMENTS.to_vec(),
    })
}

pub async fn net_capabilities() -> Json<NetworkCapabilities> {
    Json(NetworkCapabilities {
        scope: "local",
        connectivity_scope: "local",
    })
}

pub async fn ipam_capabilities() -> Json<IpamCapabilities> {
    Json(IpamCapabilities {
        requires_mac_address: false,
        requires_request_replay: false,
    })
}

pub async fn address_spaces() -> Json<AddressSpaces> {
    Json(AddressSpaces {
        local: LOCAL_ADDRESS_SPACE,
        global: GLOBAL_ADDRESS_SPACE,
    })
}

/// Calls that need no action: `{}`.
pub async fn empty() -> Json<Empty> {
    Json(Empty {})
}

/// Swarm only (global scope); echo the options so workers would get them.
pub async fn allocate_network(
    DockerJson(req): DockerJson<AllocateNetworkRequest>,
) -> Json<AllocateNetworkResponse> {
    debug!(network = %req.network_id, "AllocateNetwork");
    Json(AllocateNetworkResponse {
        options: req.options.unwrap_or_default(),
    })
}

pub async fn request_pool<B: Backend>(
    State(d): D<B>,
    DockerJson(req): DockerJson<RequestPoolRequest>,
) -> Reply<RequestPoolResponse> {
    d.request_pool(req).await.map(Json)
}

pub async fn release_pool<B: Backend>(
    State(d): D<B>,
    DockerJson(req): DockerJson<ReleasePoolRequest>,
) -> Reply<Empty> {
    d.release_pool(req).await.map(|()| Json(Empty {}))
}

pub async fn request_address<B: Backend>(
    State(d): D<B>,
    caller: Caller,
    DockerJson(req): DockerJson<RequestAddressRequest>,
) -> Reply<RequestAddressResponse> {
    d.observe(&caller);
    d.request_address(req, &caller).await.map(Json)
}

pub async fn release_address<B: Backend>(
    State(d): D<B>,
    caller: Caller,
    DockerJson(req): DockerJson<ReleaseAddressRequest>,
) -> Reply<Empty> {
    d.observe(&caller);
    d.release_address(req, &caller)
        .await
        .map(|()| Json(Empty {}))
}

pub async fn create_network<B: Backend>(
    State(d): D<B>,
    DockerJson(req): DockerJson<CreateNetworkRequest>,
) -> Reply<Empty> {
    d.create_network(req).await.map(|()| Json(Empty {}))
}

pub async fn delete_network<B: Backend>(
    State(d): D<B>,
    DockerJson(req): DockerJson<NetworkRequest>,
) -> Reply<Empty> {
    d.delete_network(req).await.map(|()| Json(Empty {}))
}

pub async fn create_endpoint<B: Backend>(
    State(d): D<B>,
    caller: Caller,
    DockerJson(req): DockerJson<CreateEndpointRequest>,
) -> Reply<CreateEndpointResponse> {
    d.observe(&caller);
    d.create_endpoint(req, &caller).await.map(Json)
}

pub async fn delete_endpoint<B: Backend>(
    State(d): D<B>,
    caller: Caller,
    DockerJson(req): DockerJson<EndpointRequest>,
) -> Reply<Empty> {
    d.observe(&caller);
    d.delete_endpoint(req).await.map(|()| Json(Empty {}))
}

pub async fn join<B: Backend>(
    State(d): D<B>,
    DockerJson(req): DockerJson<JoinRequest>,
) -> Reply<JoinResponse> {
    let (network, endpoint) = (req.network_id.clone(), req.endpoint_id.clone());
    let reply = d.join(req).await?;
    d.spawn_container_lookup(network, endpoint);
    Ok(Json(reply))
}

pub async fn leave<B: Backend>(
    State(d): D<B>,
    DockerJson(req): DockerJson<EndpointRequest>,
) -> Json<Empty> {
    d.leave(req);
    Json(Empty {})
}

pub async fn oper_info<B: Backend>(
    State(d): D<B>,
    DockerJson(req): DockerJson<EndpointRequest>,
) -> Json<OperInfoResponse> {
    Json(d.oper_info(&req))
}
