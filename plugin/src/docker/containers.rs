//! Which container an endpoint belongs to.
//!
//! Docker never tells a network driver the container: `Join`'s `SandboxKey` is named
//! after the sandbox id, not the container id. Docker's own API knows:
//! `GET /networks/<id>` lists `Containers` by container id with their `EndpointID`. The
//! driver asks after `Join` has been answered (in the background, never blocking
//! Docker), and records the container id for `brindle endpoints`.
//!
//! brindled's reconcile asks the same question the other way round ([`network_view`]):
//! which endpoints and addresses dockerd still has on a network, to find the records
//! and allocations whose container is gone.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::HOST;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::UnixStream;

/// How long one question to dockerd may take.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
struct NetworkInspect {
    #[serde(rename = "Containers", default)]
    containers: Option<HashMap<String, NetworkContainer>>,
    #[serde(rename = "IPAM", default)]
    ipam: Option<NetworkIpam>,
}

#[derive(Deserialize)]
struct NetworkContainer {
    #[serde(rename = "EndpointID", default)]
    endpoint_id: String,
    #[serde(rename = "IPv4Address", default)]
    ipv4_address: String,
}

#[derive(Deserialize)]
struct NetworkIpam {
    #[serde(rename = "Config", default)]
    config: Option<Vec<IpamConfig>>,
}

#[derive(Deserialize)]
struct IpamConfig {
    #[serde(rename = "Gateway", default)]
    gateway: String,
    #[serde(rename = "AuxiliaryAddresses", default)]
    aux: Option<HashMap<String, String>>,
}

/// What dockerd has on one network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkView {
    /// Endpoint ids, of containers and of endpoints still being attached (`ep-...`).
    pub endpoints: BTreeSet<String>,
    /// The endpoints' addresses, the `--gateway` and the `--aux-address`es.
    pub addresses: BTreeSet<Ipv4Addr>,
}

/// What dockerd on `socket` has on `network`; `Ok(None)` when it has no such network,
/// `Err` when it did not answer.
pub async fn network_view(socket: &Path, network: &str) -> Result<Option<NetworkView>, String> {
    let path = format!("/networks/{network}");
    let (status, body) = tokio::time::timeout(TIMEOUT, request(socket, &path))
        .await
        .map_err(|_| format!("no answer from {} within {TIMEOUT:?}", socket.display()))??;
    if status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(format!(
            "GET {path} on {}: {status}: {}",
            socket.display(),
            String::from_utf8_lossy(&body).trim()
        ));
    }
    parse_view(&body)
        .map(Some)
        .map_err(|e| format!("unexpected answer from {}: {e}", socket.display()))
}

fn parse_view(body: &[u8]) -> Result<NetworkView, serde_json::Error> {
    let inspect: NetworkInspect = serde_json::from_slice(body)?;
    let mut view = NetworkView::default();
    for (key, c) in inspect.containers.unwrap_or_default() {
        if !c.endpoint_id.is_empty() {
            view.endpoints.insert(c.endpoint_id);
        } else if let Some(id) = key.strip_prefix("ep-") {
            view.endpoints.insert(id.to_string());
        }
        view.addresses.extend(address_of(&c.ipv4_address));
    }
    for config in inspect.ipam.and_then(|i| i.config).unwrap_or_default() {
        view.addresses.extend(address_of(&config.gateway));
        for a in config.aux.unwrap_or_default().values() {
            view.addresses.extend(address_of(a));
        }
    }
    Ok(view)
}

/// The address of `10.1.0.5/32` or `10.1.0.5`; `None` for anything else.
fn address_of(s: &str) -> Option<Ipv4Addr> {
    s.split('/').next()?.parse().ok()
}

/// The id of the container holding `endpoint` on `network`, from the Docker API on
/// `socket`; `Ok(None)` while Docker does not list it (yet).
pub async fn container_of(
    socket: &Path,
    network: &str,
    endpoint: &str,
) -> Result<Option<String>, String> {
    let body = tokio::time::timeout(TIMEOUT, get(socket, &format!("/networks/{network}")))
        .await
        .map_err(|_| format!("no answer from {} within {TIMEOUT:?}", socket.display()))??;
    let inspect: NetworkInspect = serde_json::from_slice(&body)
        .map_err(|e| format!("unexpected answer from {}: {e}", socket.display()))?;
    Ok(inspect
        .containers
        .unwrap_or_default()
        .into_iter()
        .find(|(id, c)| c.endpoint_id == endpoint && is_container_key(id))
        .map(|(id, _)| id))
}

/// dockerd lists an endpoint under `ep-<endpoint id>` until the container is fully
/// attached (`docker network connect`); only a real container id names the container.
fn is_container_key(key: &str) -> bool {
    !key.starts_with("ep-")
}

async fn get(socket: &Path, path: &str) -> Result<Bytes, String> {
    let (status, bytes) = request(socket, path).await?;
    if !status.is_success() {
        return Err(format!(
            "GET {path} on {}: {status}: {}",
            socket.display(),
            String::from_utf8_lossy(&bytes).trim()
        ));
    }
    Ok(bytes)
}

async fn request(socket: &Path, path: &str) -> Result<(StatusCode, Bytes), String> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect {}: {e}", socket.display()))?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake on {}: {e}", socket.display()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = Request::get(path)
        .header(HOST, "docker")
        .body(Empty::<Bytes>::new())
        .expect("static request parts are valid");
    let response = tx
        .send_request(request)
        .await
        .map_err(|e| format!("GET {path} on {}: {e}", socket.display()))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("GET {path} on {}: {e}", socket.display()))?
        .to_bytes();
    Ok((status, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_view_lists_endpoints_and_every_address_docker_holds() {
        let body = br#"{"Name":"n","Id":"abc","IPAM":{"Driver":"brindle","Config":[
            {"Subnet":"10.1.0.0/24","Gateway":"10.1.0.254","AuxiliaryAddresses":{"r":"10.1.0.10"}}]},
            "Containers":{"3fc0f555":{"EndpointID":"e1","IPv4Address":"10.1.0.5/32"},
                          "ep-e2":{"EndpointID":"","IPv4Address":"10.1.0.6/32"}}}"#;
        let view = parse_view(body).unwrap();
        assert_eq!(
            view.endpoints,
            BTreeSet::from(["e1".to_string(), "e2".to_string()])
        );
        let want: BTreeSet<Ipv4Addr> = ["10.1.0.5", "10.1.0.6", "10.1.0.254", "10.1.0.10"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(view.addresses, want);
        // A network without containers or IPAM details.
        assert_eq!(parse_view(b"{}").unwrap(), NetworkView::default());
    }
}
