//! Which container an endpoint belongs to.
//!
//! Docker never tells a network driver the container: `Join`'s `SandboxKey` is named
//! after the sandbox id, not the container id. Docker's own API knows:
//! `GET /networks/<id>` lists `Containers` by container id with their `EndpointID`. The
//! driver asks after `Join` has been answered (in the background, never blocking
//! Docker), and records the container id for `brindle endpoints`.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::HOST;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::UnixStream;

/// How long one question to dockerd may take.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
struct NetworkInspect {
    #[serde(rename = "Containers", default)]
    containers: Option<std::collections::HashMap<String, NetworkContainer>>,
}

#[derive(Deserialize)]
struct NetworkContainer {
    #[serde(rename = "EndpointID", default)]
    endpoint_id: String,
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
    if !status.is_success() {
        return Err(format!(
            "GET {path} on {}: {status}: {}",
            socket.display(),
            String::from_utf8_lossy(&bytes).trim()
        ));
    }
    Ok(bytes)
}
